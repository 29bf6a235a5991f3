"""End-to-end tests of chatting over real sockets: say, private messages,
history, presence, the rate limit, ping, many clients at once, slow
readers and shutdown. Every expectation is taken from PROTOCOL.md; the
client side is ``tests.wire``, which shares no code with the server.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from server.chat_server import ChatServer
from tests.wire import RawClient, frame

StartServer = Callable[..., ChatServer]


# -- helpers ------------------------------------------------------------------


@pytest.fixture
def chat(start_server: StartServer) -> ChatServer:
    """A server without a rate limit, for tests that send many frames."""
    return start_server(rate_limit=None)


def say(client: RawClient, text: str, **fields: Any) -> None:
    client.send({"type": "say", "text": text, **fields})


def expect_message(client: RawClient, **fields: Any) -> dict[str, Any]:
    """The next frame is a well-formed live ``message`` with ``fields``."""
    msg = client.expect("message", **fields)
    assert type(msg["id"]) is int, msg
    assert isinstance(msg["from"], str), msg
    assert isinstance(msg["text"], str), msg
    assert type(msg["ts"]) in (int, float), msg
    assert abs(msg["ts"] - time.time()) < 5.0, msg
    assert "history" not in msg or msg["history"] is False, msg
    return msg


def raw_frame_utf8(obj: dict[str, Any]) -> bytes:
    """A frame whose payload carries non-ASCII text as raw UTF-8, not JSON escapes."""
    payload = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


# -- say / message ------------------------------------------------------------


def test_say_reaches_everyone_with_id_from_text_ts(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.expect("joined", name="bob")

    before = time.time()
    say(alice, "hi all")
    mine = expect_message(alice, **{"from": "alice", "text": "hi all"})
    theirs = expect_message(bob, **{"from": "alice", "text": "hi all"})
    after = time.time()
    assert mine == theirs
    assert before - 1.0 <= mine["ts"] <= after + 1.0
    assert "action" not in mine or mine["action"] is False
    assert "to" not in mine

    say(bob, "hello alice")
    second = expect_message(bob, **{"from": "bob", "text": "hello alice"})
    assert expect_message(alice) == second
    assert second["id"] > mine["id"]

    ids = [mine["id"], second["id"]]
    for n in range(5):
        say(alice if n % 2 else bob, f"n{n}")
        msg = expect_message(alice, text=f"n{n}")
        assert expect_message(bob) == msg
        ids.append(msg["id"])
    assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"


def test_action_is_copied_and_absent_when_not_given(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.expect("joined", name="bob")

    say(alice, "waves", action=True)
    for client in (alice, bob):
        msg = expect_message(client, text="waves")
        assert msg["action"] is True, msg

    say(alice, "plain")
    for client in (alice, bob):
        msg = expect_message(client, text="plain")
        assert "action" not in msg, msg

    # An optional field whose value is null counts as absent.
    say(alice, "nulls", action=None, to=None)
    for client in (alice, bob):
        msg = expect_message(client, text="nulls")
        assert "action" not in msg, msg
        assert "to" not in msg, msg


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("a\r\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\r\n\r\nb\r", "a\n\nb\n"),
        ("tab\there\nnew line", "tab\there\nnew line"),
        ("x\x00y\x07z\x1b[0m\x7f\x85\x9f!", "xyz[0m!"),
        ("left\u202eright", "leftright"),
        ("\u202aa\u202bb\u202cc\u202dd\u2066e\u2067f\u2068g\u2069h", "abcdefgh"),
        ("  padded  ", "  padded  "),
        ("caf\u00e9 \u5f20\u4f1f", "caf\u00e9 \u5f20\u4f1f"),
    ],
)
def test_text_normalisation(chat: ChatServer, open_client, sent: str, kept: str) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")
    say(alice, sent)
    assert expect_message(alice)["text"] == kept
    assert expect_message(bob)["text"] == kept


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "   \t\n  ",
        "\r\n",
        "\x00\x01\x1b",
        "\u202e",
        " \u2066\u2069 ",
        "a" * 4001,
        "\U0001f600" * 4001,
    ],
    ids=[
        "empty",
        "space",
        "whitespace",
        "crlf",
        "only-controls",
        "only-bidi",
        "bidi-and-space",
        "4001",
        "4001-emoji",
    ],
)
def test_text_invalid_keeps_connection_open(chat: ChatServer, open_client, text: str) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")
    say(alice, text)
    alice.expect_error("text-invalid", in_reply_to="say")
    # Nothing went to the room, and the connection still works.
    say(alice, "still here")
    expect_message(alice, text="still here")
    expect_message(bob, text="still here")


def test_text_length_limit_counts_code_points_after_cleaning(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    cases = [
        "a" * 4000,
        "\U0001f600" * 4000,  # 8,000 UTF-16 units, 16,000 UTF-8 bytes: still 4,000
        "a" * 3999 + "\r\n",  # 4,001 sent, 4,000 kept
        "b" * 4000 + "\x00\u202e",
    ]
    for text in cases:
        say(alice, text)
        msg = expect_message(alice)
        assert len(msg["text"]) == 4000
    say(alice, "c" * 4000 + "\t")
    alice.expect_error("text-invalid", in_reply_to="say")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"text": None},
        {"text": 5},
        {"text": ["hi"]},
        {"text": {"t": "hi"}},
        {"text": True},
        {"text": "hi", "action": "yes"},
        {"text": "hi", "action": 1},
        {"text": "hi", "action": 0},
        {"text": "hi", "to": 5},
        {"text": "hi", "to": ["bob"]},
        {"text": "hi", "to": True},
    ],
    ids=repr,
)
def test_say_bad_field(chat: ChatServer, open_client, fields: dict[str, Any]) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")
    alice.send({"type": "say", **fields})
    alice.expect_error("bad-field", in_reply_to="say")
    say(alice, "fine")
    expect_message(alice, text="fine")
    expect_message(bob, text="fine")


def test_emoji_round_trip(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")
    text = "smile \U0001f600!"

    say(alice, text)  # sent as a JSON surrogate-pair escape
    assert expect_message(alice)["text"] == text
    assert expect_message(bob)["text"] == text

    alice.send_raw(raw_frame_utf8({"type": "say", "text": text}))  # sent as raw UTF-8
    assert expect_message(alice)["text"] == text
    assert expect_message(bob)["text"] == text


def test_many_frames_in_one_send_and_split_frames(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    data = b"".join(frame({"type": "say", "text": f"m{n}"}) for n in range(10))
    alice.send_raw(data)
    for n in range(10):
        expect_message(alice, text=f"m{n}")
    one = frame({"type": "say", "text": "split"})
    for i in range(len(one)):
        alice.send_raw(one[i : i + 1])
        time.sleep(0.002)
    expect_message(alice, text="split")


# -- private messages ---------------------------------------------------------


def test_private_message_by_identity(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    carol = open_client(chat, "carol")
    alice.expect("joined", name="bob")
    alice.expect("joined", name="carol")
    bob.expect("joined", name="carol")

    for spelling in ("bob", "BOB", "\uff22\uff2f\uff22"):  # the last is fullwidth BOB
        say(alice, f"psst {spelling}", to=spelling)
        mine = expect_message(alice, **{"from": "alice", "to": "bob"})
        theirs = expect_message(bob, **{"from": "alice", "to": "bob"})
        assert mine == theirs
        assert mine["text"] == f"psst {spelling}"

    # Carol got none of them: her next frame is the next public message.
    say(bob, "public")
    public = expect_message(carol, text="public")
    assert "to" not in public
    expect_message(alice, text="public")
    expect_message(bob, text="public")

    # The recipient's name as the server keeps it, after a rename too.
    bob.send({"type": "rename", "name": "Bobby"})
    for client in (alice, bob, carol):
        client.expect("renamed", old="bob", new="Bobby")
    say(carol, "to bobby", to="BOBBY", action=True)
    for client in (carol, bob):
        msg = expect_message(client, to="Bobby", text="to bobby")
        assert msg["action"] is True, msg
    alice.expect_silence(0.3)


def test_private_message_to_oneself_gives_one_copy(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")
    say(alice, "note to self", to="ALICE")
    expect_message(alice, to="alice", text="note to self")
    say(alice, "after")
    # No second copy of the private message comes before the public one.
    expect_message(alice, text="after")
    expect_message(bob, text="after")


def test_private_message_to_nobody(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")
    say(alice, "hello?", to="zed")
    alice.expect_error("no-such-user", in_reply_to="say")
    say(alice, "hello?", to="")
    alice.expect_error("no-such-user", in_reply_to="say")
    say(alice, "after")
    expect_message(alice, text="after")
    expect_message(bob, text="after")


def test_private_messages_are_not_in_history(start_server: StartServer, open_client) -> None:
    srv = start_server(rate_limit=None, history=10)
    alice = open_client(srv, "alice")
    bob = open_client(srv, "bob")
    alice.expect("joined", name="bob")
    for speaker, text, to in (
        (alice, "public one", None),
        (alice, "secret", "bob"),
        (bob, "secret back", "alice"),
        (alice, "public two", None),
    ):
        say(speaker, text, to=to)
        for client in (alice, bob):
            expect_message(client, text=text)

    late = open_client(srv)
    welcome = late.join("late")
    assert welcome["history_count"] == 2, welcome
    assert [m["text"] for m in late.history] == ["public one", "public two"]
    assert all("to" not in m for m in late.history)


# -- history ------------------------------------------------------------------


def test_history_for_a_late_joiner(start_server: StartServer, open_client) -> None:
    srv = start_server(history=3, rate_limit=None)
    alice = open_client(srv, "alice")
    bob = open_client(srv, "bob")
    alice.expect("joined", name="bob")
    sent = []
    for n in range(5):
        say(alice, f"public {n}", action=(n == 3))
        sent.append(expect_message(alice, text=f"public {n}"))
    say(bob, "private", to="alice")  # after the public ones: never history
    expect_message(alice, text="private")

    late = RawClient(srv.port)
    try:
        late.send({"type": "hello", "name": "late", "protocol": 1})
        welcome = late.expect("welcome", name="late")
        assert welcome["history_count"] == 3, welcome
        history = [late.expect("message", history=True) for _ in range(3)]
        for got, original in zip(history, sent[2:], strict=True):
            assert {k: v for k, v in got.items() if k != "history"} == original
        assert [m["id"] for m in history] == sorted(m["id"] for m in history)
        assert history[1]["action"] is True
        assert "action" not in history[0]

        # The first live frame comes after the history.
        alice.expect("joined", name="late")
        say(bob, "live")
        live = expect_message(late, text="live")
        assert live["id"] > history[-1]["id"]
        assert "history" not in live or live["history"] is False
    finally:
        late.close()


def test_history_zero_when_nothing_said(start_server: StartServer, open_client) -> None:
    srv = start_server(history=3)
    alice = open_client(srv)
    welcome = alice.join("alice")
    assert welcome["history_count"] == 0
    say(alice, "first")
    expect_message(alice, text="first")


def test_a_full_history_larger_than_the_queue_bound_reaches_a_newcomer(
    start_server: StartServer, open_client
) -> None:
    # 100 messages of 4,000 three-byte characters: about 1.2 MB of replay,
    # more than the 1 MiB slow-reader bound, which must not drop the joiner.
    srv = start_server(rate_limit=None)
    alice = open_client(srv)
    alice.join("alice")
    texts = [f"{i:03d}" + "字" * 3997 for i in range(100)]
    for text in texts:
        say(alice, text)
    for text in texts:
        expect_message(alice, text=text)
    late = open_client(srv)
    welcome = late.join("late")
    assert welcome["history_count"] == 100
    assert [m["text"] for m in late.history] == texts
    say(alice, "live")
    expect_message(late, text="live")


# -- presence -----------------------------------------------------------------


def test_joined_and_left_go_to_the_right_people(server: ChatServer, open_client) -> None:
    alice = open_client(server)
    welcome = alice.join("alice")
    assert welcome["users"] == ["alice"]
    bob = open_client(server)
    welcome = bob.join("bob")
    assert welcome["users"] == ["alice", "bob"]
    joined = alice.expect("joined", name="bob")
    assert abs(joined["ts"] - time.time()) < 5.0
    carol = open_client(server, "carol")
    alice.expect("joined", name="carol")
    bob.expect("joined", name="carol")

    # The joined frame came before any message from the new user.
    say(carol, "hi from carol")
    for client in (alice, bob, carol):
        expect_message(client, text="hi from carol")

    bob.send({"type": "bye"})
    assert bob.expect_closed() == []
    for client in (alice, carol):
        left = client.expect("left", name="bob", reason="quit")
        assert abs(left["ts"] - time.time()) < 5.0

    carol.close()
    alice.expect("left", name="carol", reason="disconnected")
    alice.expect_silence(0.3)


def test_rename(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    bob = open_client(chat, "bob")
    alice.expect("joined", name="bob")

    bob.send({"type": "rename", "name": "robert"})
    for client in (alice, bob):
        renamed = client.expect("renamed", old="bob", new="robert")
        assert abs(renamed["ts"] - time.time()) < 5.0
    say(bob, "as robert")
    expect_message(alice, **{"from": "robert", "text": "as robert"})
    expect_message(bob, **{"from": "robert"})

    # Another spelling of one's own identity is allowed.
    bob.send({"type": "rename", "name": "Robert"})
    for client in (alice, bob):
        client.expect("renamed", old="robert", new="Robert")

    # The old name is free again.
    late = open_client(chat)
    assert late.join("BOB")["name"] == "BOB"
    for client in (alice, bob):
        client.expect("joined", name="BOB")

    bob.send({"type": "rename", "name": "ALICE"})
    bob.expect_error("name-taken", in_reply_to="rename")
    bob.send({"type": "rename", "name": "\uff41lice"})  # fullwidth a
    bob.expect_error("name-taken", in_reply_to="rename")
    for bad in ("a b", "x!", "", "\U0001f600", "n" * 33, "\u0301abc"):
        bob.send({"type": "rename", "name": bad})
        bob.expect_error("name-invalid", in_reply_to="rename")
    for fields in ({}, {"name": None}, {"name": 5}, {"name": ["x"]}):
        bob.send({"type": "rename", **fields})
        bob.expect_error("bad-field", in_reply_to="rename")

    # None of the failures changed anything.
    alice.expect_silence(0.3)
    bob.send({"type": "who"})
    assert bob.expect("users")["users"] == ["alice", "BOB", "Robert"]


def test_who_sorted_by_identity_and_reflects_changes(chat: ChatServer, open_client) -> None:
    zed = open_client(chat, "Zed")
    alice = open_client(chat, "alice")
    bob = open_client(chat, "Bob")
    emile = open_client(chat, "\u00c9mile")
    _ = (alice, emile)

    expected = ["alice", "Bob", "Zed", "\u00c9mile"]
    zed.send({"type": "who"})
    assert zed.skip_until("users")["users"] == expected

    bob.send({"type": "rename", "name": "aaron"})
    bob.skip_until("renamed")
    bob.send({"type": "who"})
    assert bob.expect("users")["users"] == ["aaron", "alice", "Zed", "\u00c9mile"]

    alice.close()
    zed.skip_until("left")
    zed.send({"type": "who"})
    assert zed.skip_until("users")["users"] == ["aaron", "Zed", "\u00c9mile"]

    late = open_client(chat)
    assert late.join("ALBERT")["users"] == ["aaron", "ALBERT", "Zed", "\u00c9mile"]


# -- rate limit ---------------------------------------------------------------


def test_rate_limit_burst_of_25(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    alice.send_raw(b"".join(frame({"type": "say", "text": f"b{n}"}) for n in range(25)))
    frames = [alice.recv() for _ in range(25)]
    messages = [f for f in frames if f["type"] == "message"]
    errors = [f for f in frames if f["type"] == "error"]
    assert len(messages) == 20, frames
    assert len(errors) == 5, frames
    assert [m["text"] for m in messages] == [f"b{n}" for n in range(20)]
    for error in errors:
        assert error["code"] == "rate-limited", error
        assert error["in_reply_to"] == "say", error
        assert error["message"], error
    alice.expect_silence(0.2)

    # The bucket refills at 5 a second.
    time.sleep(1.0)
    alice.send_raw(b"".join(frame({"type": "say", "text": f"c{n}"}) for n in range(10)))
    frames = [alice.recv() for _ in range(10)]
    accepted = [f["text"] for f in frames if f["type"] == "message"]
    assert 5 <= len(accepted) <= 7, frames
    assert accepted == [f"c{n}" for n in range(len(accepted))]
    assert all(
        f["code"] == "rate-limited" and f["in_reply_to"] == "say"
        for f in frames
        if f["type"] == "error"
    ), frames

    # The connection stays open.
    alice.send({"type": "who"})
    alice.expect("users", users=["alice"])


def test_rate_limit_counts_renames(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    burst = [frame({"type": "say", "text": f"s{n}"}) for n in range(10)]
    burst += [frame({"type": "rename", "name": f"alice{n}"}) for n in range(10)]
    burst += [frame({"type": "rename", "name": "late"}), frame({"type": "say", "text": "x"})]
    alice.send_raw(b"".join(burst))
    for n in range(10):
        expect_message(alice, text=f"s{n}")
    old = "alice"
    for n in range(10):
        alice.expect("renamed", old=old, new=f"alice{n}")
        old = f"alice{n}"
    alice.expect_error("rate-limited", in_reply_to="rename")
    alice.expect_error("rate-limited", in_reply_to="say")
    # who and ping are not limited.
    alice.send({"type": "who"})
    alice.expect("users", users=["alice9"])
    alice.send({"type": "ping"})
    alice.expect("pong")


def test_no_rate_limit_accepts_200_at_once(chat: ChatServer, open_client) -> None:
    alice = open_client(chat, "alice")
    alice.send_raw(b"".join(frame({"type": "say", "text": f"m{n}"}) for n in range(200)))
    last = 0
    for n in range(200):
        msg = expect_message(alice, text=f"m{n}")
        assert msg["id"] > last
        last = msg["id"]
    alice.expect_silence(0.2)


# -- ping ---------------------------------------------------------------------


def test_ping_pong_echoes_fields(server: ChatServer, open_client) -> None:
    alice = open_client(server, "alice")
    alice.send({"type": "ping"})
    assert alice.recv() == {"type": "pong"}
    extra = {"n": 7, "s": "x\U0001f600", "nested": {"a": [1, 2.5, None, True]}, "nil": None}
    alice.send({"type": "ping", **extra})
    assert alice.recv() == {"type": "pong", **extra}


# -- many clients -------------------------------------------------------------


def test_fifty_concurrent_clients(start_server: StartServer) -> None:
    clients_count, per_client = 50, 20
    total = clients_count * per_client
    srv = start_server(rate_limit=None)
    barrier = threading.Barrier(clients_count)
    deadline = time.monotonic() + 30.0
    results: dict[int, list[dict[str, Any]]] = {}
    failures: list[str] = []

    def run(index: int) -> None:
        try:
            with RawClient(srv.port, timeout=10.0) as client:
                client.join(f"user{index}")
                barrier.wait(timeout=20.0)
                client.send_raw(
                    b"".join(
                        frame({"type": "say", "text": f"{index}:{n}"}) for n in range(per_client)
                    )
                )
                got: list[dict[str, Any]] = []
                while len(got) < total:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"user{index} got {len(got)} of {total} in time")
                    obj = client.recv(remaining)
                    if obj["type"] == "message":
                        got.append(obj)
                    elif obj["type"] != "joined":
                        raise AssertionError(f"user{index} got {obj}")
                results[index] = got
        except BaseException as exc:  # reported by the test thread
            failures.append(f"user{index}: {exc!r}")
            barrier.abort()

    threads = [
        threading.Thread(target=run, args=(i,), name=f"chat-client-{i}")
        for i in range(clients_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, deadline + 5.0 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "client threads still running"
    assert not failures, failures[:5]
    assert len(results) == clients_count

    reference = [m["id"] for m in results[0]]
    for index, got in results.items():
        ids = [m["id"] for m in got]
        assert all(a < b for a, b in itertools.pairwise(ids)), f"user{index}: ids"
        assert ids == reference, f"user{index} saw another order than user0"
        by_sender: dict[str, list[str]] = {}
        for m in got:
            by_sender.setdefault(m["from"], []).append(m["text"])
        assert len(by_sender) == clients_count
        for sender, texts in by_sender.items():
            i = sender.removeprefix("user")
            assert texts == [f"{i}:{n}" for n in range(per_client)], f"{index} from {sender}"


# -- slow readers -------------------------------------------------------------


def test_slow_reader_is_dropped_and_others_lose_nothing(start_server: StartServer) -> None:
    srv = start_server(max_queue=64 * 1024, rate_limit=None)
    batch, max_messages = 20, 20_000
    deadline = time.monotonic() + 60.0
    with (
        RawClient(srv.port) as sender,
        RawClient(srv.port) as reader,
        RawClient(srv.port, timeout=15.0) as sleeper,
    ):
        sender.join("sender")
        reader.join("reader")
        sleeper.join("sleeper")
        sender.expect("joined", name="reader")
        sender.expect("joined", name="sleeper")
        reader.expect("joined", name="sleeper")
        # From here on the sleeper reads nothing until it is dropped.

        got: dict[str, list[dict[str, Any]]] = {"sender": [], "reader": []}
        lefts: dict[str, list[dict[str, Any]]] = {"sender": [], "reader": []}
        texts: list[str] = []
        extra_batches = 3  # keep sending after the drop

        def send_batch() -> None:
            start = len(texts)
            new = [f"{n:06d} " + "x" * 3000 for n in range(start, start + batch)]
            texts.extend(new)
            sender.send_raw(b"".join(frame({"type": "say", "text": t}) for t in new))

        def read_up_to(client: RawClient, key: str) -> None:
            while len(got[key]) < len(texts):
                obj = client.recv(max(0.1, deadline - time.monotonic()))
                if obj["type"] == "message":
                    got[key].append(obj)
                elif obj["type"] == "left":
                    lefts[key].append(obj)
                else:
                    raise AssertionError(f"{key} got {obj}")

        while extra_batches > 0:
            assert len(texts) < max_messages, "the sleeper was never dropped"
            assert time.monotonic() < deadline, "out of time before the sleeper was dropped"
            send_batch()
            read_up_to(sender, "sender")
            read_up_to(reader, "reader")
            if lefts["sender"] and lefts["reader"]:
                extra_batches -= 1

        for key in ("sender", "reader"):
            assert [m["text"] for m in got[key]] == texts, f"{key} lost or reordered messages"
            ids = [m["id"] for m in got[key]]
            assert all(a < b for a, b in itertools.pairwise(ids)), key
            assert len(lefts[key]) == 1, lefts[key]
            assert lefts[key][0]["name"] == "sleeper"
            assert lefts[key][0]["reason"] == "too-slow", lefts[key]
        sender.expect_silence(0.2)
        reader.expect_silence(0.1)

        # The server let go of the sleeper's connection...
        for _ in range(100):
            if srv.connection_count == 2:
                break
            time.sleep(0.02)
        assert srv.connection_count == 2
        # ...and its socket ends up closed: what the kernels still hold, then EOF.
        # (A frame cut short by the close is left in the buffer, unread.)
        received = sleeper.expect_closed(timeout=15.0)
        assert len(received) < len(texts)
        messages = [m["text"] for m in received if m["type"] == "message"]
        assert messages == texts[: len(messages)]

        sender.send({"type": "who"})
        assert sender.expect("users")["users"] == ["reader", "sender"]


# -- shutdown -----------------------------------------------------------------


def test_shutdown_tells_everyone_and_frees_the_port(start_server: StartServer) -> None:
    srv = start_server(shutdown_message="Going down for maintenance")
    port = srv.port
    with (
        RawClient(port) as alice,
        RawClient(port) as bob,
        RawClient(port) as greeting,
    ):
        alice.join("alice")
        bob.join("bob")
        alice.expect("joined", name="bob")
        greeting.send({"type": "ping", "n": 1})
        greeting.expect("pong", n=1)  # the server has taken this connection on

        took: list[float] = []

        def stop() -> None:
            start = time.monotonic()
            srv.shutdown()
            took.append(time.monotonic() - start)

        stopper = threading.Thread(target=stop, name="test-shutdown")
        stopper.start()
        try:
            for client in (alice, bob, greeting):
                frames = client.expect_closed(timeout=3.0)
                assert frames == [{"type": "shutdown", "message": "Going down for maintenance"}], (
                    frames
                )
                assert client.eof, "the connection was reset, not closed"
                client.close()
        finally:
            stopper.join(5.0)
        assert not stopper.is_alive()
        assert took and took[0] < 2.0, took

    srv.server_close()
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    finally:
        probe.close()


def test_shutdown_with_default_message(start_server: StartServer) -> None:
    srv = start_server()
    with RawClient(srv.port) as alice:
        alice.join("alice")
        start = time.monotonic()
        stopper = threading.Thread(target=srv.shutdown, name="test-shutdown")
        stopper.start()
        try:
            frames = alice.expect_closed(timeout=3.0)
        finally:
            stopper.join(5.0)
        assert not stopper.is_alive()
        assert time.monotonic() - start < 2.5
        assert frames == [{"type": "shutdown", "message": "The server is shutting down"}]


# -- I/O threads --------------------------------------------------------------


@pytest.mark.parametrize("io_threads", [1, 3])
def test_basic_exchange_with_io_threads(start_server: StartServer, io_threads: int) -> None:
    srv = start_server(io_threads=io_threads)
    clients: list[RawClient] = []
    try:
        for _ in range(4):
            clients.append(RawClient(srv.port))
        for n, client in enumerate(clients):
            client.join(f"c{n}")
        for n, client in enumerate(clients):
            for later in range(n + 1, len(clients)):
                client.expect("joined", name=f"c{later}")
        for n, client in enumerate(clients):
            say(client, f"from c{n}")
            for other in clients:
                expect_message(other, **{"from": f"c{n}", "text": f"from c{n}"})
        say(clients[0], "private", to="c3")
        expect_message(clients[0], to="c3")
        expect_message(clients[3], to="c3")
        clients[1].send({"type": "bye"})
        clients[1].expect_closed()
        for n in (0, 2, 3):
            clients[n].expect("left", name="c1", reason="quit")
    finally:
        for client in clients:
            client.close()
