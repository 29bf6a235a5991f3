"""End-to-end tests of hostile input: names, `to`, types and nesting that
cost the server more than their size, or that would be echoed or logged.

Each test speaks to a real server over sockets (``tests.wire``, which
shares no code with the server). The timing bounds are generous: the
work they guard against took seconds (normalising 64 KiB of combining
marks took about 1.3 s of the I/O thread, holding the GIL), the fixed
server answers in milliseconds.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
import unicodedata
from typing import Any

import pytest

from server.chat_server import ChatServer
from server.protocol import MAX_NESTING, Pong
from tests.wire import RawClient

PROMPT = 0.5  # seconds: far above what the server needs, far below the stalls

# Combining marks of two classes, all of one then all of the other: the
# worst order for NFC's reordering, 64,001 UTF-8 bytes.
MARKS = "a" + "\u0301" * 16000 + "\u0316" * 16000


def raw_frame(obj: dict[str, Any]) -> bytes:
    """A frame with non-ASCII text as raw UTF-8, so that 64 KiB hold 32,000 marks."""
    payload = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    assert len(payload) <= 64 * 1024
    return struct.pack(">I", len(payload)) + payload


def assert_prompt_pong(client: RawClient) -> None:
    """``client`` pings and has its pong within PROMPT seconds."""
    started = time.monotonic()
    client.send({"type": "ping", "n": 1})
    client.expect("pong", timeout=5.0, n=1)
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT, f"a ping waited {elapsed:.2f} s for its pong"


def expect_prompt_error(
    client: RawClient, code: str, started: float, in_reply_to: str | None = None
) -> dict[str, Any]:
    error = client.expect_error(code, in_reply_to)
    elapsed = time.monotonic() - started
    assert elapsed < PROMPT, f"the {code} answer took {elapsed:.2f} s"
    assert len(error["message"]) < 200, error["message"][:300]
    return error


# -- 1. sizes bounded before normalising --------------------------------------


def test_hellos_with_huge_names_stall_nobody(server: ChatServer, open_client) -> None:
    bob = open_client(server, "bob")
    mallory = open_client(server)
    started = time.monotonic()
    mallory.send_raw(raw_frame({"type": "hello", "name": MARKS, "protocol": 1}) * 3)
    assert_prompt_pong(bob)
    for _ in range(3):
        expect_prompt_error(mallory, "name-invalid", started, "hello")
    # name-invalid leaves the connection open for another try.
    assert mallory.join("mallory")["name"] == "mallory"


def test_a_rename_to_a_huge_name_stalls_nobody(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.expect("joined", name="bob")
    started = time.monotonic()
    alice.send_raw(raw_frame({"type": "rename", "name": MARKS}))
    assert_prompt_pong(bob)
    expect_prompt_error(alice, "name-invalid", started, "rename")
    bob.expect_silence(0.2)  # no renamed


def test_a_huge_to_names_nobody_and_is_not_echoed(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.expect("joined", name="bob")
    started = time.monotonic()
    alice.send_raw(raw_frame({"type": "say", "text": "psst", "to": MARKS}))
    assert_prompt_pong(bob)
    error = expect_prompt_error(alice, "no-such-user", started, "say")
    assert "\u0316" not in error["message"]  # only a short start of it is shown
    bob.expect_silence(0.2)


@pytest.mark.parametrize(
    "nfc",
    ["\u1f82" * 32, "\uac01" * 32, "\u00e9" * 32],
    ids=["greek-4-each", "hangul-3-each", "e-acute-2-each"],
)
def test_every_decomposed_valid_name_joins_and_can_be_addressed(
    server: ChatServer, open_client, nfc: str
) -> None:
    decomposed = unicodedata.normalize("NFD", nfc)
    assert len(decomposed) > 32
    alice = open_client(server)
    assert alice.join(decomposed)["name"] == nfc
    bob = open_client(server, "bob")
    bob.send({"type": "say", "text": "hi", "to": decomposed})
    assert bob.expect("message", to=nfc)["text"] == "hi"
    alice.skip_until("message")


# -- 6. nesting ---------------------------------------------------------------


def nested_ping(depth: int) -> bytes:
    """A ping whose frame object and arrays nest ``depth`` levels deep."""
    payload = b'{"type":"ping","n":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    return struct.pack(">I", len(payload)) + payload


def test_nesting_at_the_limit_is_echoed(server: ChatServer, open_client) -> None:
    client = open_client(server)
    client.send_raw(nested_ping(MAX_NESTING))
    value = client.expect("pong")["n"]
    lists = 0
    while isinstance(value, list):
        lists += 1
        value = value[0] if value else None
    assert lists == MAX_NESTING - 1  # and the pong's object is the last level


def test_deeper_nesting_is_bad_frame_at_every_depth(
    server: ChatServer, open_client, caplog: pytest.LogCaptureFixture
) -> None:
    # Near the recursion limit, a ping used to decode and then fail to
    # encode its pong: a traceback and a close without bad-frame.
    limit = sys.getrecursionlimit()
    depths = [MAX_NESTING + 1, 100, *range(limit - 40, limit + 5)]
    with caplog.at_level(logging.WARNING, logger="server"):
        for depth in depths:
            client = open_client(server)
            client.send_raw(nested_ping(depth))
            frames = client.expect_closed()
            assert [(f["type"], f.get("code")) for f in frames] == [("error", "bad-frame")], depth
            client.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()


def test_a_member_sending_deep_nesting_leaves_with_error(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.expect("joined", name="bob")
    bob.send_raw(nested_ping(MAX_NESTING + 1))
    assert [f.get("code") for f in bob.expect_closed()] == ["bad-frame"]
    alice.expect("left", name="bob", reason="error")


def test_a_reply_the_server_cannot_encode_blames_nobody(
    server: ChatServer, open_client, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stands for any bug of ours that makes a reply unencodable.
    real = Pong.to_wire

    def to_wire(self: Pong) -> dict[str, Any]:
        wire = real(self)
        return wire | {"bug": object()} if self.extra.get("bug") else wire

    monkeypatch.setattr(Pong, "to_wire", to_wire)
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.expect("joined", name="bob")
    with caplog.at_level(logging.INFO, logger="server"):
        bob.send({"type": "ping", "bug": True})
        bob.send({"type": "who"})
        # Not bad-frame, not closed: the next answer is the one to `who`.
        assert bob.expect("users")["users"] == ["alice", "bob"]
    alice.expect_silence(0.3)  # no `left`, least of all with reason error
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(bugs) == 1, [r.getMessage() for r in caplog.records]
    assert "server bug" in bugs[0].getMessage()
    assert "bob" in bugs[0].getMessage()


# -- 7. wire strings in error messages and log lines -------------------------


FORGED = "\n2026-12-01 INFO forged"


def test_a_to_cannot_forge_a_log_line(
    server: ChatServer, open_client, caplog: pytest.LogCaptureFixture
) -> None:
    alice = open_client(server, "alice")
    with caplog.at_level(logging.DEBUG, logger="server"):
        alice.send({"type": "say", "text": "hi", "to": FORGED})
        error = alice.expect_error("no-such-user", "say")
    assert "\n" not in error["message"]
    lines = caplog.text.splitlines()
    assert any("no-such-user" in line for line in lines)  # it was logged
    assert not [line for line in lines if line.startswith(FORGED.strip())]
    for record in caplog.records:
        assert "\n" not in record.getMessage()


def test_an_unknown_type_cannot_forge_a_log_line(
    server: ChatServer, open_client, caplog: pytest.LogCaptureFixture
) -> None:
    alice = open_client(server, "alice")
    with caplog.at_level(logging.DEBUG, logger="server"):
        alice.send({"type": FORGED})
        error = alice.expect_error("unknown-type", FORGED)  # a short type is named back
    assert "\n" not in error["message"]
    for record in caplog.records:
        assert "\n" not in record.getMessage()


@pytest.mark.parametrize("joined", [False, True], ids=["greeting", "joined"])
def test_a_huge_type_is_not_echoed(server: ChatServer, open_client, joined: bool) -> None:
    client = open_client(server, "alice" if joined else None)
    huge = "x" * 65000
    client.send({"type": huge})
    error = client.expect_error("unknown-type" if joined else "not-joined")
    assert "in_reply_to" not in error
    assert len(error["message"]) < 200
    assert_prompt_pong(client)  # still open


def test_a_huge_protocol_number_is_not_echoed(server: ChatServer, open_client) -> None:
    client = open_client(server)
    payload = b'{"type":"hello","name":"alice","protocol":' + b"9" * 4000 + b"}"
    client.send_raw(struct.pack(">I", len(payload)) + payload)
    frames = client.expect_closed()
    assert [f.get("code") for f in frames] == ["protocol-version"]
    assert len(frames[0]["message"]) < 200


# -- 8. names that look blank or like another ---------------------------------


@pytest.mark.parametrize(
    "name",
    ["\u3164", ".", "alice\ufe0f", "alice\u034f", "alice\U000e0100", "_-.", "a\u200db"],
    ids=["hangul-filler", "dot", "vs16", "cgj", "vs17", "punctuation", "zwj"],
)
def test_lookalike_names_cannot_join_or_be_taken(
    server: ChatServer, open_client, name: str
) -> None:
    alice = open_client(server, "alice")
    mallory = open_client(server)
    mallory.send({"type": "hello", "name": name, "protocol": 1})
    error = mallory.expect_error("name-invalid", "hello")
    assert "letter or digit" in error["message"] or "invisible" in error["message"]
    mallory.join("mallory")
    alice.expect("joined", name="mallory")
    mallory.send({"type": "rename", "name": name})
    mallory.expect_error("name-invalid", "rename")
    alice.expect_silence(0.2)
