"""The plain transport over real loopback sockets: every answer of its vocabulary."""

from __future__ import annotations

import selectors
import socket
import struct
from collections.abc import Iterator

import pytest

from server.protocol.transport import PlainTransport, TransportClosed, Want


@pytest.fixture
def pair() -> Iterator[tuple[PlainTransport, socket.socket]]:
    """A non-blocking transport and its blocking peer, connected over 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        sock, _ = listener.accept()
    sock.setblocking(False)
    transport = PlainTransport(sock)
    try:
        yield transport, peer
    finally:
        transport.close()
        peer.close()


def test_recv_wants_read_until_bytes_arrive(pair: tuple[PlainTransport, socket.socket]) -> None:
    transport, peer = pair
    assert transport.recv(1024) is Want.READ
    peer.sendall(b"hello")
    assert _recv_within(transport) == b"hello"
    assert transport.pending() == 0


def test_recv_answers_empty_bytes_when_the_peer_closes(
    pair: tuple[PlainTransport, socket.socket],
) -> None:
    transport, peer = pair
    peer.shutdown(socket.SHUT_WR)
    assert _recv_within(transport) == b""


def test_send_wants_write_when_the_socket_is_full(
    pair: tuple[PlainTransport, socket.socket],
) -> None:
    transport, _peer = pair
    chunk = b"x" * 65536
    answers = [transport.send(chunk) for _ in range(2000)]  # far beyond any buffer
    assert Want.WRITE in answers
    assert all(
        isinstance(a, int) and 0 < a <= len(chunk) for a in answers[: answers.index(Want.WRITE)]
    )


def test_a_reset_is_transport_closed(pair: tuple[PlainTransport, socket.socket]) -> None:
    transport, peer = pair
    transport.send(b"unread")  # unread data makes the peer's close a reset
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    with pytest.raises(TransportClosed):
        for _ in range(500):
            if transport.recv(1024) == b"":
                break  # some kernels report the reset only on the next send
        for _ in range(500):
            transport.send(b"more")


def test_shutdown_write_sends_our_fin(pair: tuple[PlainTransport, socket.socket]) -> None:
    transport, peer = pair
    assert transport.shutdown_write() is None
    peer.settimeout(5)
    assert peer.recv(10) == b""
    transport.close()
    assert transport.fileno() == -1
    with pytest.raises(TransportClosed):
        transport.shutdown_write()


def _recv_within(transport: PlainTransport) -> bytes:
    with selectors.DefaultSelector() as selector:
        selector.register(transport.fileno(), selectors.EVENT_READ)
        assert selector.select(5), "nothing arrived within 5 s"
    got = transport.recv(1024)
    assert isinstance(got, bytes)
    return got


def test_plain_tcp_has_no_handshake_and_no_certificate(
    pair: tuple[PlainTransport, socket.socket],
) -> None:
    transport, _peer = pair
    assert transport.handshake() is None
    assert transport.peer_certificate() is None
    assert transport.secure is False


def test_reads_are_copies_out_of_one_buffer_per_thread(
    pair: tuple[PlainTransport, socket.socket],
) -> None:
    """Reads go through a buffer kept per thread (no fresh 256 KiB object per
    read), so what a read returned must not change with the next one."""
    transport, peer = pair
    peer.sendall(b"first")
    first = _wait_for_bytes(transport)
    peer.sendall(b"2nd")
    second = _wait_for_bytes(transport)
    assert (first, second) == (b"first", b"2nd")
    assert type(first) is bytes
    large = bytes(range(256)) * 1024  # bigger than any buffer so far: it grows
    peer.sendall(large)
    got = b""
    while len(got) < len(large):
        got += _wait_for_bytes(transport, len(large))
    assert got == large and first == b"first"


def _wait_for_bytes(transport: PlainTransport, size: int = 256 * 1024) -> bytes:
    selector = selectors.DefaultSelector()
    selector.register(transport.sock, selectors.EVENT_READ)
    try:
        assert selector.select(5), "nothing arrived"
    finally:
        selector.close()
    data = transport.recv(size)
    assert isinstance(data, bytes)
    return data
