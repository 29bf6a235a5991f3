"""The per-client session without a socket: payloads in, a real room, a fake
clock (plain numbers) and a fake connection that records what it is asked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from server.config import RateLimit, ServerConfig
from server.fanout import Outbox
from server.protocol import MAX_SERVER_FRAME, FrameDecoder
from server.room import Room
from server.session import LOGGED_ERRORS, Session, State

T0 = 1000.0  # the fake clock's start


class FakeConnection:
    """The room's member and the session's link at once, as a real connection is."""

    secure = False

    def __init__(self) -> None:
        self.name: str | None = None
        self.outbox = Outbox()
        self.asked: list[str] = []
        self.calls: list[Callable[[], object]] = []  # run by the test, as a loop would

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.calls.append(callback)

    def notify(self) -> None:
        pass  # what was queued is read with pull

    def on_closing(self) -> None:
        self.asked.append("closing")

    def on_closed(self) -> None:
        self.asked.append("closed")


def open_session(room: Room, **config: Any) -> tuple[Session, FakeConnection]:
    conn = FakeConnection()
    session = Session(room, ServerConfig(**config), conn, conn, peer="10.0.0.1:5000", now=T0)
    return session, conn


def queued(room: Room, conn: FakeConnection) -> list[dict[str, Any]]:
    """The frames the room holds for ``conn``, taken."""
    data = room.pull(conn, 1 << 24)
    assert data is not None, "overrun"
    decoder = FrameDecoder(MAX_SERVER_FRAME)
    decoder.receive_data(data)
    frames = []
    while (payload := decoder.next_payload()) is not None:
        frames.append(payload)
    return frames


def hello(name: str) -> dict[str, Any]:
    return {"type": "hello", "name": name, "protocol": 1}


@pytest.fixture
def room() -> Room:
    return Room(clock=lambda: 0.0)


def joined(room: Room, name: str, **config: Any) -> tuple[Session, FakeConnection]:
    session, conn = open_session(room, **config)
    session.receive(hello(name), T0)
    assert session.state is State.JOINED
    queued(room, conn)  # the welcome
    return session, conn


def test_hello_is_welcomed_and_joins_the_room(room: Room) -> None:
    session, conn = open_session(room)
    session.receive(hello("alice"), T0)
    assert session.state is State.JOINED
    assert conn.name == "alice"  # set by the room
    assert room.users() == ("alice",)
    frames = queued(room, conn)
    assert [f["type"] for f in frames] == ["welcome"]
    assert frames[0]["name"] == "alice"
    assert conn.asked == []
    assert session.who == "alice (10.0.0.1:5000)"


def test_say_before_hello_is_not_joined_and_keeps_the_session_open(room: Room) -> None:
    session, conn = open_session(room)
    session.receive({"type": "say", "text": "hi"}, T0)
    frames = queued(room, conn)
    assert [(f["type"], f["code"], f["in_reply_to"]) for f in frames] == [
        ("error", "not-joined", "say")
    ]
    assert session.state is State.GREETING
    assert conn.asked == []
    assert room.users() == ()


def test_a_second_hello_is_already_joined(room: Room) -> None:
    session, conn = joined(room, "alice")
    session.receive(hello("bob"), T0)
    assert [(f["type"], f["code"]) for f in queued(room, conn)] == [("error", "already-joined")]
    assert room.users() == ("alice",)


def test_says_beyond_the_burst_are_rate_limited_until_tokens_refill(room: Room) -> None:
    session, conn = joined(room, "alice", rate_limit=RateLimit(burst=2, per_second=1.0))
    for text in ("one", "two", "three"):
        session.receive({"type": "say", "text": text}, T0)
    frames = queued(room, conn)
    assert [f.get("text") or f.get("code") for f in frames] == ["one", "two", "rate-limited"]
    session.receive({"type": "say", "text": "four"}, T0 + 0.5)  # half a token
    assert [f.get("code") for f in queued(room, conn)] == ["rate-limited"]
    session.receive({"type": "say", "text": "five"}, T0 + 1.5)
    assert [f.get("text") for f in queued(room, conn)] == ["five"]
    assert session.state is State.JOINED


def test_no_hello_in_time_is_a_timeout_and_a_close(room: Room) -> None:
    session, conn = open_session(room, handshake_timeout=10.0)
    session.check_timers(T0 + 9.9)
    assert queued(room, conn) == [] and conn.asked == []
    session.check_timers(T0 + 10.0)
    assert [(f["type"], f["code"]) for f in queued(room, conn)] == [("error", "timeout")]
    assert session.state is State.CLOSING
    assert conn.asked == ["closing"]


def test_an_idle_member_is_pinged_then_timed_out(room: Room) -> None:
    session, conn = joined(room, "idle", idle_ping_after=30.0, idle_timeout=90.0)
    _, other = joined(room, "other")
    assert [f["type"] for f in queued(room, conn)] == ["joined"]
    session.check_timers(T0 + 29.0)
    assert queued(room, conn) == []
    session.check_timers(T0 + 30.0)
    assert [f["type"] for f in queued(room, conn)] == ["ping"]
    session.check_timers(T0 + 59.0)  # the next ping is not due yet
    assert queued(room, conn) == []
    session.receive({"type": "pong"}, T0 + 60.0)  # a sign of life restarts the clock
    session.check_timers(T0 + 149.0)
    assert [f["type"] for f in queued(room, conn)] == ["ping"]  # due 30 s after the pong
    assert conn.asked == []
    session.check_timers(T0 + 150.0)
    assert [(f["type"], f.get("code")) for f in queued(room, conn)][-1] == ("error", "timeout")
    assert conn.asked == ["closing"]
    assert room.users() == ("other",)
    left = [f for f in queued(room, other) if f["type"] == "left"]
    assert [(f["name"], f["reason"]) for f in left] == [("idle", "timeout")]


def test_bye_closes_as_quit(room: Room) -> None:
    session, conn = joined(room, "alice")
    _, other = joined(room, "other")
    queued(room, other)
    session.receive({"type": "bye"}, T0)
    assert session.state is State.CLOSING
    assert conn.asked == ["closing"]
    assert [(f["type"], f["name"], f["reason"]) for f in queued(room, other)] == [
        ("left", "alice", "quit")
    ]
    session.receive({"type": "say", "text": "too late"}, T0)  # closing: not served
    session.close(None)  # closing twice changes nothing
    assert conn.asked == ["closing"]


def test_abort_leaves_once_and_releases_the_connection(room: Room) -> None:
    session, conn = joined(room, "alice")
    _, other = joined(room, "other")
    queued(room, other)
    session.abort()
    session.abort()
    assert session.state is State.CLOSED
    assert conn.asked == ["closed"]
    assert [(f["type"], f["reason"]) for f in queued(room, other)] == [("left", "disconnected")]
    assert room.pull(conn, 1 << 20) == b""  # what it was owed is discarded


def test_a_paused_session_is_too_slow_once_its_replies_stay_unread(room: Room) -> None:
    session, conn = joined(room, "slow", idle_timeout=90.0)
    session.pause(T0 + 10.0)
    session.check_timers(T0 + 99.0)  # silent 99 s, but paused: the silence is ours
    assert conn.asked == []
    session.check_timers(T0 + 100.0)
    assert conn.asked == ["closed"]
    assert room.users() == ()


def test_resuming_restarts_the_idle_clock(room: Room) -> None:
    session, conn = joined(room, "paced", idle_ping_after=1000.0, idle_timeout=90.0)
    session.pause(T0 + 10.0)
    session.resume(T0 + 80.0)
    session.check_timers(T0 + 169.0)
    assert conn.asked == []
    session.check_timers(T0 + 170.0)
    assert conn.asked == ["closing"]
    assert [f.get("code") for f in queued(room, conn)] == ["timeout"]


def test_a_fatal_error_closes_with_the_reason_given(room: Room) -> None:
    session, conn = open_session(room)
    session.receive({"type": "hello", "name": "alice", "protocol": 2}, T0)
    assert [(f["code"], f["in_reply_to"]) for f in queued(room, conn)] == [
        ("protocol-version", "hello")
    ]
    assert conn.asked == ["closing"]


def test_shut_down_sends_shutdown_last(room: Room) -> None:
    session, conn = joined(room, "alice")
    session.shut_down("bye all")
    assert [(f["type"], f["message"]) for f in queued(room, conn)] == [("shutdown", "bye all")]
    assert conn.asked == ["closing"]


def test_only_the_first_errors_of_a_client_are_logged_at_info(
    room: Room, caplog: pytest.LogCaptureFixture
) -> None:
    session, conn = joined(room, "noisy")
    with caplog.at_level(logging.INFO, logger="server"):
        for _ in range(LOGGED_ERRORS + 5):
            session.receive({"type": "nonsense"}, T0)
    codes = [f["code"] for f in queued(room, conn)]
    assert codes == ["unknown-type"] * (LOGGED_ERRORS + 5)  # every one is answered
    logged = [r for r in caplog.records if "unknown-type" in r.getMessage()]
    assert len(logged) == LOGGED_ERRORS
    assert session.state is State.JOINED


def test_a_closing_session_handles_no_more_frames(room: Room) -> None:
    # Its member has left but keeps its name: a frame handled now would speak
    # as someone who is gone, or as whoever took the name since.
    alice, _alice_conn = joined(room, "alice")
    _bob, bob_conn = joined(room, "bob")
    alice.receive({"type": "bye"}, T0)
    assert alice.state is State.CLOSING
    _carol, carol_conn = joined(room, "Alice")
    queued(room, bob_conn)
    alice.receive({"type": "say", "text": "I am alice"}, T0)
    alice.receive({"type": "rename", "name": "mallory"}, T0)
    assert queued(room, bob_conn) == [] and queued(room, carol_conn) == []
    assert room.users() == ("Alice", "bob")


def test_frames_wait_behind_a_wrong_operator_password_boundedly(room: Room) -> None:
    from server.session import HELD_FRAMES, OP_WRONG_DELAY  # noqa: PLC0415

    session, conn = joined(room, "alice")
    session.receive({"type": "op", "password": "guess"}, T0)
    for n in range(HELD_FRAMES + 6):
        session.receive({"type": "ping", "n": n}, T0)
    session.check_timers(T0 + OP_WRONG_DELAY / 2)
    assert queued(room, conn) == []  # nothing yet: not even the pongs
    session.check_timers(T0 + OP_WRONG_DELAY)
    frames = queued(room, conn)
    assert frames[0]["code"] == "op-password-wrong" and frames[0]["in_reply_to"] == "op"
    assert [f["n"] for f in frames[1:-1]] == list(range(HELD_FRAMES))
    assert frames[-1]["code"] == "rate-limited" and "6 frames" in frames[-1]["message"]
    assert session.state is State.JOINED


def test_a_second_wrong_password_holds_the_frames_after_it(room: Room) -> None:
    from server.session import OP_WRONG_DELAY  # noqa: PLC0415

    session, conn = joined(room, "alice")
    session.receive({"type": "op", "password": "one"}, T0)
    session.receive({"type": "op", "password": "two"}, T0)
    session.receive({"type": "ping", "n": 1}, T0)
    session.check_timers(T0 + OP_WRONG_DELAY)
    assert [f.get("code") for f in queued(room, conn)] == ["op-password-wrong"]
    session.check_timers(T0 + 2 * OP_WRONG_DELAY)
    frames = queued(room, conn)
    assert [f["type"] for f in frames] == ["error", "pong"]
