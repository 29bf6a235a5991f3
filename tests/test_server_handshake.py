"""End-to-end tests of the handshake, framing and connection life cycle over
real sockets: hello and welcome, hello failures, what is allowed before and
after welcome, the handshake and idle timeouts, broken frames, the
connection limit, leaving. Every expectation is taken from PROTOCOL.md; the
client side is ``tests.wire``, which shares no code with the server.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest

from server.chat_server import ChatServer
from tests.wire import Closed, RawClient, frame

StartServer = Callable[..., ChatServer]
OpenClient = Callable[..., RawClient]

TICK = 0.25  # the server checks its timers this often
MAX_CLIENT_FRAME = 65536  # PROTOCOL.md: frames a client sends are 1 to 64 KiB


# -- helpers ------------------------------------------------------------------


def raw_frame(payload: bytes) -> bytes:
    """A frame with an arbitrary payload (which need not be valid)."""
    return struct.pack(">I", len(payload)) + payload


def hello(name: Any, protocol: Any = 1) -> dict[str, Any]:
    return {"type": "hello", "name": name, "protocol": protocol}


def fullwidth(text: str) -> str:
    """ASCII letters as their fullwidth compatibility forms (U+FF01...)."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


def identity(name: str) -> str:
    """PROTOCOL.md's identity of a name, written out independently of the server."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def assert_ts(obj: dict[str, Any]) -> None:
    ts = obj.get("ts")
    assert type(ts) in (int, float), obj
    assert abs(ts - time.time()) < 60, obj


def assert_open(client: RawClient, token: int = 4242) -> None:
    """The connection still works: a ping gets its pong (other frames are skipped)."""
    client.send({"type": "ping", "token": token})
    pong = client.skip_until("pong", timeout=3.0)
    assert pong == {"type": "pong", "token": token}


def join_room(open_client: OpenClient, srv: ChatServer, names: list[str]) -> list[RawClient]:
    """Join ``names`` in turn; every earlier member's ``joined`` frames are consumed."""
    clients: list[RawClient] = []
    for name in names:
        client = open_client(srv)
        welcome = client.join(name)
        for other in clients:
            other.expect("joined", name=welcome["name"])
        clients.append(client)
    return clients


def expect_left(client: RawClient, name: str, reason: str) -> dict[str, Any]:
    left = client.expect("left", name=name, reason=reason)
    assert_ts(left)
    return left


def chat_still_works(speaker: RawClient, listener: RawClient, text: str = "still here") -> None:
    speaker.send({"type": "say", "text": text})
    speaker.expect("message", text=text)
    listener.expect("message", text=text)


def pump(
    clients: list[RawClient], seconds: float, answer: list[RawClient]
) -> tuple[dict[RawClient, list[dict[str, Any]]], set[RawClient]]:
    """Read ``clients`` for ``seconds``, answering the server's pings on those in
    ``answer``. Returns every frame read per client, and the clients closed.
    """
    frames: dict[RawClient, list[dict[str, Any]]] = {c: [] for c in clients}
    closed: set[RawClient] = set()
    end = time.monotonic() + seconds
    for _ in range(100_000):
        now = time.monotonic()
        if now >= end:
            break
        for client in clients:
            if client in closed:
                continue
            try:
                obj = client.recv(min(0.02, max(0.001, end - now)))
            except TimeoutError:
                continue
            except Closed:
                closed.add(client)
                continue
            frames[client].append(obj)
            if obj["type"] == "ping" and client in answer:
                client.send({**obj, "type": "pong"})
    return frames, closed


# -- hello and welcome ---------------------------------------------------------


def test_welcome_fields_on_an_empty_room(server: ChatServer, open_client: OpenClient) -> None:
    client = open_client(server)
    client.send({**hello("alice"), "client": "an unknown field is ignored"})
    welcome = client.expect("welcome")
    assert welcome["name"] == "alice"
    assert welcome["users"] == ["alice"]
    assert type(welcome["history_count"]) is int
    assert welcome["history_count"] == 0
    assert welcome.get("motd") is None, "motd must be absent when the server has none"
    client.expect_silence(0.3)


def test_welcome_carries_the_motd_when_configured(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(motd="Welcome to the room")
    client = open_client(srv)
    client.send(hello("alice"))
    welcome = client.expect("welcome", name="alice", users=["alice"], history_count=0)
    assert welcome["motd"] == "Welcome to the room"


def test_name_is_kept_nfc_normalised(server: ChatServer, open_client: OpenClient) -> None:
    bob = open_client(server, "bob")
    client = open_client(server)
    client.send(hello("e\u0301"))
    welcome = client.expect("welcome")
    assert welcome["name"] == "\u00e9"
    assert welcome["users"] == ["bob", "\u00e9"]
    joined = bob.expect("joined", name="\u00e9")
    assert_ts(joined)
    bob.send({"type": "who"})
    bob.expect("users", users=["bob", "\u00e9"])


def test_welcome_users_include_the_joiner_sorted_by_identity(
    server: ChatServer, open_client: OpenClient
) -> None:
    anna = fullwidth("A") + "nna"  # identity "anna": first, though its code points sort last
    names = ["carol", "\u00e9mile", "Bob", anna]
    clients = join_room(open_client, server, names)
    dave = open_client(server)
    dave.send(hello("dave"))
    welcome = dave.expect("welcome", name="dave")
    expected = [anna, "Bob", "carol", "dave", "\u00e9mile"]
    assert welcome["users"] == expected
    for client in clients:
        joined = client.expect("joined", name="dave")
        assert_ts(joined)
        assert set(joined) >= {"type", "name", "ts"}
    clients[0].send({"type": "who"})
    clients[0].expect("users", users=expected)


def test_history_count_and_history_follow_welcome(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(history=2)
    alice = open_client(srv, "alice")
    for text in ("one", "two", "three"):
        alice.send({"type": "say", "text": text})
        alice.expect("message", text=text)
    bob = open_client(srv)
    welcome = bob.join("bob")
    assert welcome["history_count"] == 2
    assert [m["text"] for m in bob.history] == ["two", "three"]
    assert all(m["from"] == "alice" and m["history"] is True for m in bob.history)
    assert bob.history[0]["id"] < bob.history[1]["id"]
    bob.expect_silence(0.3)


def test_joined_reaches_others_before_the_new_users_messages(
    server: ChatServer, open_client: OpenClient
) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server)
    bob.send_raw(frame(hello("bob")) + frame({"type": "say", "text": "hi"}))
    bob.expect("welcome", name="bob")
    bob.expect("message", text="hi")
    alice.expect("joined", name="bob")
    alice.expect("message", text="hi", **{"from": "bob"})


@pytest.mark.parametrize(
    "name", ["Jos\u00e9", "\u5f20\u4f1f", "\u0928\u092e\u0938\u094d\u0924\u0947", "bob_2", "a.b-c"]
)
def test_valid_names_join(server: ChatServer, open_client: OpenClient, name: str) -> None:
    client = open_client(server)
    client.send(hello(name))
    client.expect("welcome", name=name, users=[name])


def test_a_name_of_32_code_points_after_nfc_is_valid(
    server: ChatServer, open_client: OpenClient
) -> None:
    client = open_client(server)
    client.send(hello("a" * 32))
    client.expect("welcome", name="a" * 32)
    other = open_client(server)
    # 33 code points as sent, 32 once NFC composes e + U+0301.
    other.send(hello("e\u0301" + "b" * 31))
    other.expect("welcome", name="\u00e9" + "b" * 31)


# -- hello failures --------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "attempt"),
    [
        ("alice", "ALICE"),
        ("alice", fullwidth("alice")),
        ("fullwidth", fullwidth("fullwidth")),
        ("stra\u00dfe", "Strasse"),
        ("Strasse", "STRASSE"),
        ("Strasse", "stra\u00dfe"),
        ("\u00e9", "E\u0301"),
        ("\ufb01sh", "FISH"),
    ],
)
def test_name_taken_keeps_the_connection_open(
    server: ChatServer, open_client: OpenClient, held: str, attempt: str
) -> None:
    holder = open_client(server, held)
    client = open_client(server)
    client.send(hello(attempt))
    client.expect_error("name-taken", in_reply_to="hello")
    holder.expect_silence(0.2)  # nobody joined
    client.send(hello("other"))
    client.expect("welcome", name="other", users=sorted([held, "other"], key=identity))
    holder.expect("joined", name="other")


def test_a_name_is_free_again_once_its_user_left(
    server: ChatServer, open_client: OpenClient
) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    alice.send({"type": "bye"})
    alice.expect_closed()
    expect_left(bob, "alice", "quit")
    again = open_client(server)
    again.send(hello("ALICE"))
    again.expect("welcome", name="ALICE", users=["ALICE", "bob"])


@pytest.mark.parametrize(
    "name",
    [
        "a b",
        "a\u00a0b",
        "x!",
        "a/b",
        "smile\U0001f600",
        "\U0001f600",
        "a\x07b",
        "a\x00",
        "a\nb",
        "a" * 33,
        "\u0301abc",
        "",
    ],
    ids=[
        "space",
        "nbsp",
        "bang",
        "slash",
        "emoji-inside",
        "emoji",
        "bell",
        "nul",
        "newline",
        "33-chars",
        "combining-first",
        "empty",
    ],
)
def test_name_invalid_keeps_the_connection_open(
    server: ChatServer, open_client: OpenClient, name: str
) -> None:
    client = open_client(server)
    client.send(hello(name))
    client.expect_error("name-invalid", in_reply_to="hello")
    client.send(hello("valid"))
    client.expect("welcome", name="valid", users=["valid"])


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "hello", "protocol": 1},
        {"type": "hello", "name": None, "protocol": 1},
        {"type": "hello", "name": 5, "protocol": 1},
        {"type": "hello", "name": ["alice"], "protocol": 1},
        {"type": "hello", "name": {"n": "alice"}, "protocol": 1},
        {"type": "hello", "name": "alice"},
        {"type": "hello", "name": "alice", "protocol": None},
        {"type": "hello", "name": "alice", "protocol": "1"},
        {"type": "hello", "name": "alice", "protocol": True},
        {"type": "hello", "name": "alice", "protocol": 1.0},
        {"type": "hello", "name": "alice", "protocol": [1]},
    ],
    ids=[
        "name-missing",
        "name-null",
        "name-int",
        "name-list",
        "name-object",
        "protocol-missing",
        "protocol-null",
        "protocol-string",
        "protocol-true",
        "protocol-1.0",
        "protocol-list",
    ],
)
def test_bad_field_in_hello_keeps_the_connection_open(
    server: ChatServer, open_client: OpenClient, payload: dict[str, Any]
) -> None:
    client = open_client(server)
    client.send(payload)
    client.expect_error("bad-field", in_reply_to="hello")
    assert_open(client)
    client.send(hello("alice"))
    client.expect("welcome", name="alice", users=["alice"])


def test_protocol_as_raw_json_true_and_float_is_bad_field(
    server: ChatServer, open_client: OpenClient
) -> None:
    """The same, written by hand, so that the JSON on the wire is exactly ``true`` / ``1.0``."""
    client = open_client(server)
    client.send_raw(raw_frame(b'{"type":"hello","name":"alice","protocol":true}'))
    client.expect_error("bad-field", in_reply_to="hello")
    client.send_raw(raw_frame(b'{"type":"hello","name":"alice","protocol":1.0}'))
    client.expect_error("bad-field", in_reply_to="hello")
    client.send_raw(raw_frame(b'{"type":"hello","name":"alice","protocol":1}'))
    client.expect("welcome", name="alice")


@pytest.mark.parametrize("version", [2, 0, -1, 99])
def test_protocol_version_closes_the_connection(
    server: ChatServer, open_client: OpenClient, version: int
) -> None:
    alice = open_client(server, "alice")
    client = open_client(server)
    client.send(hello("bob", version))
    client.expect_error("protocol-version", in_reply_to="hello")
    assert client.expect_closed(3.0) == []
    alice.expect_silence(0.2)  # bob never joined
    assert_open(alice)


# -- before welcome ----------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "say", "text": "hi"},
        {"type": "say"},
        {"type": "rename", "name": "bob"},
        {"type": "who"},
        {"type": "pong"},
        {"type": "frobnicate"},
        {"type": "welcome", "name": "x", "users": [], "history_count": 0},
    ],
    ids=["say", "say-without-text", "rename", "who", "pong", "unknown", "welcome"],
)
def test_not_joined_before_welcome(
    server: ChatServer, open_client: OpenClient, payload: dict[str, Any]
) -> None:
    client = open_client(server)
    client.send(payload)
    client.expect_error("not-joined", in_reply_to=payload["type"])
    assert_open(client)
    client.send(hello("alice"))
    client.expect("welcome", name="alice")


def test_ping_before_welcome_echoes_every_field(
    server: ChatServer, open_client: OpenClient
) -> None:
    client = open_client(server)
    client.send({"type": "ping", "n": 7})
    assert client.recv() == {"type": "pong", "n": 7}
    client.send({"type": "ping"})
    assert client.recv() == {"type": "pong"}
    extra = {"s": "\u00e9\u4e2d", "list": [1, {"x": None}], "obj": {"k": True}, "f": 1.5}
    client.send({"type": "ping", **extra})
    assert client.recv() == {"type": "pong", **extra}


def test_bye_before_welcome_just_closes(server: ChatServer, open_client: OpenClient) -> None:
    alice = open_client(server, "alice")
    client = open_client(server)
    client.send({"type": "bye"})
    assert client.expect_closed(3.0) == []
    alice.expect_silence(0.3)  # no left for someone who never joined


# -- after welcome -------------------------------------------------------------------


def test_hello_after_welcome_is_already_joined(server: ChatServer, open_client: OpenClient) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    alice.send(hello("carol"))
    alice.expect_error("already-joined", in_reply_to="hello")
    bob.expect_silence(0.2)
    alice.send({"type": "who"})
    alice.expect("users", users=["alice", "bob"])
    chat_still_works(alice, bob)


@pytest.mark.parametrize("kind", ["frobnicate", "", "\u00f1", "HELLO"])
def test_unknown_type_after_welcome(server: ChatServer, open_client: OpenClient, kind: str) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    alice.send({"type": kind, "text": "x"})
    alice.expect_error("unknown-type", in_reply_to=kind)
    assert_open(alice)
    chat_still_works(alice, bob)


# -- handshake timeout -----------------------------------------------------------------


def test_silent_connection_times_out(start_server: StartServer, open_client: OpenClient) -> None:
    srv = start_server(handshake_timeout=0.5)
    start = time.monotonic()
    client = open_client(srv)
    error = client.expect_error("timeout")
    errored = time.monotonic() - start
    assert error.get("in_reply_to") is None, error
    assert client.expect_closed(2.0) == []
    closed = time.monotonic() - start
    assert errored >= 0.45, f"timed out after {errored:.2f} s, before 0.5 s"
    assert closed <= 0.5 + TICK + 0.45, f"closed only after {closed:.2f} s"


def test_handshake_timeout_counts_from_connecting_not_from_activity(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(handshake_timeout=0.5)
    start = time.monotonic()
    client = open_client(srv)
    client.send(hello("a b"))
    client.expect_error("name-invalid", in_reply_to="hello")
    error = None
    for n in range(40):  # pings every 0.05 s do not count as being welcomed
        client.send({"type": "ping", "n": n})
        obj = client.recv(2.0)
        if obj["type"] == "error":
            error = obj
            break
        assert obj == {"type": "pong", "n": n}
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    assert error is not None and error["code"] == "timeout", error
    assert 0.45 <= elapsed <= 0.5 + TICK + 0.45, elapsed
    client.expect_closed(2.0)


def test_welcomed_connection_does_not_time_out(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(handshake_timeout=0.5)
    client = open_client(srv)
    time.sleep(0.3)
    client.join("alice")
    client.expect_silence(1.2)
    assert_open(client)


def test_default_handshake_timeout_is_ten_seconds(
    server: ChatServer, open_client: OpenClient
) -> None:
    start = time.monotonic()
    client = open_client(server, timeout=12.0)
    client.expect_silence(8.9)
    client.send({"type": "ping", "n": 9})
    assert client.recv(0.5) == {"type": "pong", "n": 9}
    assert time.monotonic() - start < 9.8, "the check at ~9 s came too late to mean anything"
    error = client.expect_error("timeout")
    errored = time.monotonic() - start
    client.expect_closed(start + 11.0 - time.monotonic())
    closed = time.monotonic() - start
    assert errored >= 9.95, f"timed out after {errored:.2f} s"
    assert closed <= 11.0, f"closed only after {closed:.2f} s"
    assert error.get("in_reply_to") is None, error


# -- idle connections ----------------------------------------------------------------------

IDLE = {"idle_ping_after": 0.3, "idle_timeout": 1.0}


def test_silent_joined_client_is_pinged(start_server: StartServer, open_client: OpenClient) -> None:
    srv = start_server(**IDLE)
    client = open_client(srv)
    start = time.monotonic()
    client.join("alice")
    ping = client.expect("ping", timeout=2.0)
    elapsed = time.monotonic() - start
    assert ping.get("type") == "ping"
    assert 0.29 <= elapsed <= 0.3 + TICK + 0.4, elapsed
    client.send({**ping, "type": "pong"})


def test_answering_pings_keeps_a_client_alive(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(**IDLE)
    observer, alive = join_room(open_client, srv, ["observer", "alive"])
    frames, closed = pump([observer, alive], 2.8, answer=[observer, alive])
    assert not closed, "a client that answers pings was dropped"
    pings = [f for f in frames[alive] if f["type"] == "ping"]
    assert len(pings) >= 3, frames[alive]
    assert [f for f in frames[alive] if f["type"] != "ping"] == []
    assert [f for f in frames[observer] if f["type"] != "ping"] == []
    assert_open(alive)
    chat_still_works(alive, observer)


def test_any_frame_counts_as_a_sign_of_life(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(**IDLE)
    observer, busy = join_room(open_client, srv, ["observer", "busy"])
    for _ in range(7):  # 2.8 s, never a pong from busy, but a who every 0.4 s
        busy.send({"type": "who"})
        frames, closed = pump([observer, busy], 0.4, answer=[observer])
        assert not closed, frames
        assert [f for f in frames[observer] if f["type"] == "left"] == []
        assert {f["type"] for f in frames[busy]} <= {"users", "ping"}, frames[busy]


def test_client_that_never_answers_is_dropped(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(**IDLE)
    observer = open_client(srv, "observer")
    silent = open_client(srv)
    start = time.monotonic()
    silent.join("silent")
    left = None
    seen = []
    for _ in range(200):
        if time.monotonic() - start > 3.0:
            break
        frames, closed = pump([observer], 0.05, answer=[observer])
        assert not closed, "the observer was dropped though it answers pings"
        seen += frames[observer]
        lefts = [f for f in frames[observer] if f["type"] == "left"]
        if lefts:
            left = lefts[0]
            break
    elapsed = time.monotonic() - start
    assert left is not None, f"no left for the silent client; observer saw {seen}"
    assert left["name"] == "silent" and left["reason"] == "timeout", left
    assert_ts(left)
    assert 0.95 <= elapsed <= 1.0 + TICK + 0.6, elapsed
    got = silent.expect_closed(2.0)
    assert any(f["type"] == "ping" for f in got), got
    assert {f["type"] for f in got} <= {"ping", "error"}, got


# -- bad frames ------------------------------------------------------------------------------

BAD_FRAMES = {
    "length-0": b"\x00\x00\x00\x00",
    "length-65537-header-only": struct.pack(">I", MAX_CLIENT_FRAME + 1),
    "length-max-header-only": b"\xff\xff\xff\xff",
    "not-utf8": raw_frame(b'{"type":"ping","x":"\xff"}'),
    "utf8-surrogate": raw_frame(b'{"type":"ping","x":"\xed\xa0\x80"}'),
    "utf8-overlong": raw_frame(b'{"type":"ping","x":"\xc0\xaf"}'),
    "not-json": raw_frame(b"hello"),
    "json-truncated": raw_frame(b'{"type":"ping"'),
    "json-single-quotes": raw_frame(b"{'type':'ping'}"),
    "json-two-values": raw_frame(b'{"type":"ping"} {"type":"ping"}'),
    "json-array": raw_frame(b'[{"type":"ping"}]'),
    "json-string": raw_frame(b'"ping"'),
    "json-number": raw_frame(b"7"),
    "json-null": raw_frame(b"null"),
    "object-without-type": raw_frame(b'{"name":"x"}'),
    "empty-object": raw_frame(b"{}"),
    "type-int": raw_frame(b'{"type":1}'),
    "type-null": raw_frame(b'{"type":null}'),
    "type-list": raw_frame(b'{"type":["ping"]}'),
    "type-true": raw_frame(b'{"type":true}'),
    "nan": raw_frame(b'{"type":"ping","n":NaN}'),
    "infinity": raw_frame(b'{"type":"ping","n":Infinity}'),
    "minus-infinity": raw_frame(b'{"type":"ping","n":-Infinity}'),
}


def expect_bad_frame_and_close(client: RawClient) -> None:
    error = client.recv(3.0)
    assert error["type"] == "error" and error["code"] == "bad-frame", error
    assert isinstance(error.get("message"), str) and error["message"], error
    assert error.get("in_reply_to") is None, error  # no well-formed frame caused it
    assert client.expect_closed(3.0) == []


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frame_before_welcome_closes_only_that_connection(
    server: ChatServer, open_client: OpenClient, data: bytes
) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    bystander = open_client(server)
    client = open_client(server)
    client.send_raw(data)  # a header alone must be refused without waiting for a payload
    expect_bad_frame_and_close(client)
    chat_still_works(alice, bob)  # and no left came first: the client never joined
    assert_open(bystander)
    bystander.send(hello("carol"))
    bystander.expect("welcome", name="carol", users=["alice", "bob", "carol"])


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frame_from_a_joined_client_is_left_error(
    server: ChatServer, open_client: OpenClient, data: bytes
) -> None:
    alice, bob, carol = join_room(open_client, server, ["alice", "bob", "carol"])
    carol.send_raw(data)
    expect_bad_frame_and_close(carol)
    expect_left(alice, "carol", "error")
    expect_left(bob, "carol", "error")
    chat_still_works(alice, bob)
    alice.send({"type": "who"})
    alice.expect("users", users=["alice", "bob"])


def test_frames_before_a_bad_one_are_handled(server: ChatServer, open_client: OpenClient) -> None:
    alice = open_client(server, "alice")
    client = open_client(server)
    client.send_raw(frame({"type": "ping", "n": 1}) + raw_frame(b"[]") + frame(hello("bob")))
    assert client.recv() == {"type": "pong", "n": 1}
    expect_bad_frame_and_close(client)
    alice.expect_silence(0.3)  # the hello after the bad frame was not handled


def test_largest_client_frame_is_accepted(server: ChatServer, open_client: OpenClient) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    say = {"type": "say", "text": "big", "padding": ""}
    say["padding"] = "x" * (MAX_CLIENT_FRAME - len(json.dumps(say).encode()))
    data = frame(say)
    assert len(data) == 4 + MAX_CLIENT_FRAME
    alice.send_raw(data + frame({"type": "ping", "n": 2}))
    message = alice.expect("message", text="big")
    assert "padding" not in message
    assert alice.recv() == {"type": "pong", "n": 2}
    bob.expect("message", text="big", **{"from": "alice"})


def test_largest_ping_before_welcome_is_echoed(server: ChatServer, open_client: OpenClient) -> None:
    client = open_client(server)
    ping = {"type": "ping", "padding": ""}
    room = MAX_CLIENT_FRAME - len(json.dumps(ping).encode())
    ping["padding"] = "\u00e9" * (room // 2) + "x" * (room % 2)  # two UTF-8 bytes each
    payload = json.dumps(ping, ensure_ascii=False).encode()
    assert len(payload) == MAX_CLIENT_FRAME
    client.send_raw(raw_frame(payload))
    assert client.recv() == {**ping, "type": "pong"}
    client.send(hello("alice"))
    client.expect("welcome", name="alice")


def test_frames_split_into_single_bytes(server: ChatServer, open_client: OpenClient) -> None:
    alice = open_client(server, "alice")
    client = open_client(server)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = frame(hello("bob")) + frame({"type": "ping", "n": 3}) + frame({"type": "who"})
    for i in range(len(data)):
        client.send_raw(data[i : i + 1])
        time.sleep(0.002)
    client.expect("welcome", name="bob", users=["alice", "bob"])
    assert client.recv() == {"type": "pong", "n": 3}
    client.expect("users", users=["alice", "bob"])
    alice.expect("joined", name="bob")


def test_many_frames_in_one_send_are_handled_in_order(
    server: ChatServer, open_client: OpenClient
) -> None:
    client = open_client(server)
    data = b"".join(frame({"type": "ping", "n": n}) for n in range(100))
    data += frame(hello("alice")) + frame({"type": "who"})
    data += b"".join(frame({"type": "ping", "n": n}) for n in range(100, 200))
    client.send_raw(data)
    for n in range(100):
        assert client.recv() == {"type": "pong", "n": n}
    client.expect("welcome", name="alice", history_count=0)
    client.expect("users", users=["alice"])
    for n in range(100, 200):
        assert client.recv() == {"type": "pong", "n": n}
    client.expect_silence(0.2)


def test_replies_come_in_order(server: ChatServer, open_client: OpenClient) -> None:
    alice = open_client(server, "alice")
    alice.send_raw(
        frame({"type": "ping", "n": 1}) + frame({"type": "who"}) + frame({"type": "ping", "n": 2})
    )
    assert alice.recv() == {"type": "pong", "n": 1}
    alice.expect("users", users=["alice"])
    assert alice.recv() == {"type": "pong", "n": 2}


# -- the connection limit ---------------------------------------------------------------------


def test_max_clients_refuses_with_server_full(
    start_server: StartServer, open_client: OpenClient
) -> None:
    srv = start_server(max_clients=2)
    alice = open_client(srv, "alice")
    waiting = open_client(srv)  # not joined, but it counts
    assert_open(waiting)
    refused = open_client(srv)
    error = refused.recv(1.0)  # sent at once, without our saying anything
    assert error["type"] == "error" and error["code"] == "server-full", error
    assert isinstance(error.get("message"), str) and error["message"], error
    assert error.get("in_reply_to") is None, error
    assert refused.expect_closed(3.0) == []
    assert_open(alice)
    assert_open(waiting)

    waiting.close()
    welcome = None
    for attempt in range(50):  # the slot frees once the server has seen the close
        retry = open_client(srv)
        retry.send(hello("bob"))
        first = retry.recv(3.0)
        if first["type"] == "welcome":
            welcome = first
            break
        assert first["type"] == "error" and first["code"] == "server-full", first
        retry.close()
        assert attempt < 49
        time.sleep(0.1)
    assert welcome is not None and welcome["users"] == ["alice", "bob"], welcome
    alice.expect("joined", name="bob")


# -- leaving ---------------------------------------------------------------------------------


def test_bye_after_welcome(server: ChatServer, open_client: OpenClient) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    bob.send({"type": "bye"})
    assert bob.expect_closed(3.0) == []
    expect_left(alice, "bob", "quit")
    alice.send({"type": "who"})
    alice.expect("users", users=["alice"])


def test_frames_before_bye_are_answered(server: ChatServer, open_client: OpenClient) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    bob.send_raw(frame({"type": "ping", "n": 5}) + frame({"type": "bye"}))
    assert bob.expect_closed(3.0) == [{"type": "pong", "n": 5}]
    expect_left(alice, "bob", "quit")


@pytest.mark.parametrize("how", ["close", "half-close", "reset"])
def test_disconnect_without_bye(server: ChatServer, open_client: OpenClient, how: str) -> None:
    alice, bob = join_room(open_client, server, ["alice", "bob"])
    if how == "close":
        bob.close()
    elif how == "half-close":
        bob.sock.shutdown(socket.SHUT_WR)
    else:
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        bob.close()
    expect_left(alice, "bob", "disconnected")
    if how == "half-close":
        assert bob.expect_closed(3.0) == []
    alice.send({"type": "who"})
    alice.expect("users", users=["alice"])
