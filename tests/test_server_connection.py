"""The socket adapter over a scripted transport and a fake loop: what a TLS
transport will answer (a read that wants to write, a write that wants to
read, bytes held that the selector will not report, a dead connection)."""

from __future__ import annotations

from collections import deque
from typing import Any

from server.config import ServerConfig
from server.connection import Connection
from server.protocol import MAX_SERVER_FRAME, FrameDecoder
from server.protocol.transport import TransportClosed, Want
from server.room import Room
from server.session import State
from tests.wire import frame

HELLO = frame({"type": "hello", "name": "alice", "protocol": 1})


class ScriptedTransport:
    """Answers ``recv`` and ``send`` from scripts; records what was sent."""

    def __init__(
        self, reads: list[bytes | Want | Exception], writes: tuple[Want, ...] = ()
    ) -> None:
        self.reads: deque[bytes | Want | Exception] = deque(reads)
        self.writes = deque(writes)  # answered before any bytes are taken
        self.held = 0
        self.sent = b""
        self.closed = False
        self.eof_sent = False

    def fileno(self) -> int:
        return -1

    def recv(self, max_bytes: int) -> bytes | Want:
        answer = self.reads.popleft() if self.reads else Want.READ
        if isinstance(answer, Exception):
            raise answer
        return answer

    def send(self, data: bytes | memoryview) -> int | Want:
        if self.writes:
            return self.writes.popleft()
        self.sent += bytes(data)
        return len(data)

    def pending(self) -> int:
        return self.held

    def shutdown_write(self) -> Want | None:
        self.eof_sent = True
        return None

    def close(self) -> None:
        self.closed = True


class FakeLoop:
    """Records what a connection asks of its loop."""

    def __init__(self) -> None:
        self.events: tuple[bool, bool] | None = None
        self.waiting = False
        self.discarded = False

    def watch(self, conn: Connection, *, read: bool, write: bool) -> None:
        self.events = (read, write)

    def wait_input(self, conn: Connection, waiting: bool) -> None:
        self.waiting = waiting

    def mark_dirty(self, conn: Connection) -> None:
        pass  # the test flushes by hand

    def discard(self, conn: Connection) -> None:
        self.discarded = True


def connect(transport: ScriptedTransport) -> tuple[Connection, FakeLoop, Room]:
    loop, room = FakeLoop(), Room()
    return Connection(transport, ("10.0.0.1", 5000), loop, room, ServerConfig()), loop, room


def frames(data: bytes) -> list[dict[str, Any]]:
    decoder = FrameDecoder(MAX_SERVER_FRAME)
    decoder.receive_data(data)
    found = []
    while (payload := decoder.next_payload()) is not None:
        found.append(payload)
    return found


def test_a_read_that_wants_to_write_is_retried_when_writable() -> None:
    transport = ScriptedTransport([Want.WRITE, HELLO])
    conn, loop, _ = connect(transport)
    conn.on_readable()
    assert loop.events == (True, True)  # watching for room to write, for the read's sake
    assert not loop.waiting
    conn.on_writable()
    assert loop.waiting  # the retried read brought the hello
    conn.serve_input()
    assert conn.state is State.JOINED
    assert loop.events == (True, False)
    conn.flush()
    assert [f["type"] for f in frames(transport.sent)] == ["welcome"]


def test_a_write_that_wants_to_read_is_retried_when_readable() -> None:
    transport = ScriptedTransport([HELLO], (Want.READ,))
    conn, loop, _ = connect(transport)
    conn.on_readable()
    conn.serve_input()
    conn.flush()
    assert transport.sent == b""
    assert loop.events == (True, False)  # input, for the write's sake
    conn.flush()  # a flush request meanwhile writes nothing: the write waits for input
    assert transport.sent == b""
    conn.on_readable()
    assert [f["type"] for f in frames(transport.sent)] == ["welcome"]


def test_bytes_the_transport_holds_are_read_without_waiting_for_the_selector() -> None:
    say = frame({"type": "say", "text": "hi"})
    transport = ScriptedTransport([HELLO, say])
    conn, loop, _ = connect(transport)
    conn.on_readable()
    transport.held = len(say)
    conn.serve_input()  # hello handled, the decoder drained: the held bytes are read
    assert conn.state is State.JOINED
    assert loop.waiting
    transport.held = 0
    conn.serve_input()
    conn.flush()
    assert [f["type"] for f in frames(transport.sent)] == ["welcome", "message"]
    assert not loop.waiting


def test_a_closed_transport_drops_the_member() -> None:
    transport = ScriptedTransport([HELLO, TransportClosed("reset")])
    conn, loop, room = connect(transport)
    conn.on_readable()
    conn.serve_input()
    assert room.users() == ("alice",)
    conn.on_readable()
    assert conn.state is State.CLOSED
    assert room.users() == ()
    assert loop.discarded and transport.closed


def test_the_peer_s_fin_closes_after_what_is_owed() -> None:
    transport = ScriptedTransport([HELLO, b""], (Want.WRITE,))  # the socket is full at first
    conn, loop, room = connect(transport)
    conn.on_readable()
    conn.serve_input()
    conn.on_readable()  # the FIN, before the welcome could be written
    assert room.users() == ()
    assert conn.state is State.CLOSING
    assert loop.events == (False, True)  # no more reading: write what is owed
    conn.on_writable()
    assert [f["type"] for f in frames(transport.sent)] == ["welcome"]
    assert transport.eof_sent and transport.closed
    assert conn.state is State.CLOSED
