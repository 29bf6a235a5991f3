"""The socket adapter over a scripted transport and a fake loop: what a TLS
transport will answer (a read that wants to write, a write that wants to
read, bytes held that the selector will not report, a dead connection);
and, in a real loop, a broadcast's write cut short or failing."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.config import ServerConfig
from server.connection import Connection
from server.io_loop import IOLoop
from server.protocol import MAX_SERVER_FRAME, FrameDecoder
from server.protocol.transport import TransportClosed, Want
from server.room import Room
from server.session import State
from tests.wire import frame

HELLO = frame({"type": "hello", "name": "alice", "protocol": 1})


class ScriptedTransport:
    """Answers ``recv`` and ``send`` from scripts; records what was sent."""

    def __init__(
        self,
        reads: list[bytes | Want | Exception],
        writes: tuple[Want | Exception | int, ...] = (),
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
        if self.writes:  # a Want to say, an error to raise, or at most so many bytes to take
            answer = self.writes.popleft()
            if isinstance(answer, Exception):
                raise answer
            if isinstance(answer, Want):
                return answer
            data = bytes(data)[:answer]
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


class LoopTransport(ScriptedTransport):
    """A scripted transport a real loop's selector can watch (a socket's number)."""

    def __init__(self, sock: socket.socket, reads: list[bytes | Want | Exception]) -> None:
        super().__init__(reads)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def real_loop() -> Iterator[tuple[IOLoop, Callable[[list[bytes | Want | Exception]], Connection]]]:
    """A real loop and room (not running: the test runs its passes), and a way to
    add connections over scripted transports to it."""
    loops: list[IOLoop] = []
    room = Room(on_broadcast=lambda urgent: loops[0].broadcast_pending(urgent))  # noqa: PLW0108 - the loop comes after
    loop = IOLoop(0, room, ServerConfig(), lambda address: None)
    loops.append(loop)
    sockets: list[socket.socket] = []

    def add(reads: list[bytes | Want | Exception]) -> Connection:
        ours, theirs = socket.socketpair()
        sockets.extend((ours, theirs))
        transport = LoopTransport(ours, reads)
        conn = Connection(transport, ("10.0.0.1", 5000), loop, room, ServerConfig())
        loop._connections.add(conn)
        conn.on_readable()
        conn.serve_input()
        conn.flush()
        return conn

    yield loop, add
    loop.close()
    for sock in sockets:
        sock.close()


def test_a_broadcast_the_socket_takes_part_of_is_finished_when_it_has_room(
    real_loop: tuple[IOLoop, Callable[[list[bytes | Want | Exception]], Connection]],
) -> None:
    loop, add = real_loop
    bob = add([frame({"type": "hello", "name": "bob", "protocol": 1})])
    alice = add([HELLO, frame({"type": "say", "text": "hello, bob"})])
    transport = bob.transport
    assert isinstance(transport, LoopTransport)
    loop._broadcast = True  # alice's join, held back a moment: now
    loop._run_queues()
    welcome_and_join = transport.sent
    transport.writes.append(10)  # the socket has room for 10 bytes of the next write
    alice.on_readable()
    alice.serve_input()
    loop._run_queues()  # the message, written to both by the loop itself
    assert len(transport.sent) == len(welcome_and_join) + 10
    assert not bob.keeps_up  # the rest waits for room
    bob.on_writable()
    assert [f["type"] for f in frames(transport.sent)] == ["welcome", "joined", "message"]
    assert frames(transport.sent)[-1]["text"] == "hello, bob"


def test_a_broadcast_write_that_fails_drops_that_member_only(
    real_loop: tuple[IOLoop, Callable[[list[bytes | Want | Exception]], Connection]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop, add = real_loop
    bob = add([frame({"type": "hello", "name": "bob", "protocol": 1})])
    alice = add([HELLO, frame({"type": "say", "text": "anyone there?"})])
    loop._broadcast = True
    loop._run_queues()
    transport = bob.transport
    assert isinstance(transport, LoopTransport)
    transport.writes.extend([TransportClosed("reset"), TransportClosed("reset")])
    alice.on_readable()
    alice.serve_input()
    loop._run_queues()
    assert bob.state is State.CLOSED
    assert loop.room.users() == ("alice",)
    assert "internal error" not in caplog.text  # a peer gone, not a bug
    alice_transport = alice.transport
    assert isinstance(alice_transport, LoopTransport)
    assert frames(alice_transport.sent)[-1]["text"] == "anyone there?"
