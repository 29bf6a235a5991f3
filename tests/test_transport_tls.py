"""TlsTransport over real loopback sockets: handshake, bytes both ways, its answers.

Both ends are non-blocking; ``pump`` drives them in turns until a condition
holds, bounded in rounds and time.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.identity import load_identity
from server.protocol.transport import (
    TLS_RECORD,
    TLS_WRITE_MAX,
    TlsTransport,
    TransportClosed,
    Want,
    client_context,
    server_context,
)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A server identity (a P-256 certificate and its key in one PEM file), and its DER."""
    made = load_identity(tmp_path_factory.mktemp("tls"))
    return made.path, made.certificate


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected, non-blocking (server side, client side) pair over 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for sock in (server, client):
        sock.setblocking(False)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def pump(done: Callable[[], bool], *steps: Callable[[], object], limit_s: float = 5.0) -> None:
    """Run ``steps`` in turns until ``done()``; fail after ``limit_s`` or 100,000 rounds."""
    deadline = time.monotonic() + limit_s
    for _ in range(100_000):
        if done():
            return
        if time.monotonic() > deadline:
            break
        for step in steps:
            step()
        time.sleep(0.0005)
    pytest.fail("the transports made no progress")


def pair(
    sockets: tuple[socket.socket, socket.socket], identity: tuple[Path, bytes]
) -> tuple[TlsTransport, TlsTransport]:
    server_sock, client_sock = sockets
    server = TlsTransport(server_sock, server_context(str(identity[0])), server_side=True)
    client = TlsTransport(client_sock, client_context(), server_side=False)
    return server, client


def handshake(server: TlsTransport, client: TlsTransport) -> None:
    answers: dict[str, Want | None] = {"client": Want.READ, "server": Want.READ}

    def client_step() -> None:
        answers["client"] = client.handshake()

    def server_step() -> None:
        answers["server"] = server.handshake()

    pump(lambda: answers["client"] is None and answers["server"] is None, client_step, server_step)


def test_handshake_shows_the_servers_certificate(sockets, identity) -> None:
    server, client = pair(sockets, identity)
    assert client.peer_certificate() is None or client.peer_certificate() == b""
    handshake(server, client)
    assert client.peer_certificate() == identity[1]
    assert server.secure and client.secure
    assert client.handshake() is None  # done is done


def test_bytes_go_both_ways_and_reads_do_the_handshake(sockets, identity) -> None:
    server, client = pair(sockets, identity)
    handshake_free = bytearray()

    def client_step() -> None:
        if client.handshake() is None and not sent:
            sent.append(client.send(b"hello over tls"))

    def server_step() -> None:
        got = server.recv(1024)
        if isinstance(got, bytes):
            handshake_free.extend(got)

    sent: list[int | Want] = []
    # The server never calls handshake(): its reads do it.
    pump(lambda: bytes(handshake_free) == b"hello over tls", client_step, server_step)
    assert sent == [len(b"hello over tls")]


def test_a_big_write_fills_the_socket_then_wants_write(sockets, identity) -> None:
    server, client = pair(sockets, identity)
    handshake(server, client)
    data = bytes(range(256)) * 64 * 1024  # 16 MiB: more than any socket buffer
    view = memoryview(data)  # no 16 MiB copy per call, which a loaded machine would feel
    answers = []
    offset = 0
    for _ in range(10_000):
        answer = server.send(view[offset:])
        answers.append(answer)
        if answer is Want.WRITE:
            break
        assert isinstance(answer, int) and answer > 0
        offset += answer
    assert answers[-1] is Want.WRITE
    assert offset < len(data)
    # What it holds unsent is about one piece, not the whole write.
    assert len(server._unsent) <= TLS_WRITE_MAX + 4096
    received = bytearray()

    def client_step() -> None:
        got = client.recv(256 * 1024)
        if isinstance(got, bytes):
            received.extend(got)

    def server_step() -> None:
        nonlocal offset
        if offset < len(data):
            answer = server.send(view[offset:])
            if isinstance(answer, int):
                offset += answer

    pump(lambda: len(received) == len(data), client_step, server_step, limit_s=30)
    assert bytes(received) == data


def test_pending_tells_of_bytes_the_selector_will_not_report(sockets, identity) -> None:
    server, client = pair(sockets, identity)
    handshake(server, client)
    assert server.send(b"x" * 5000) == 5000
    first = bytearray()

    def step() -> None:
        if not first:
            got = client.recv(100)
            if isinstance(got, bytes):
                first.extend(got)

    pump(lambda: bool(first), step)
    assert bytes(first) == b"x" * 100
    assert client.pending() > 0
    rest = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(client.fileno(), selectors.EVENT_READ)
        assert selector.select(0) == []  # the socket is empty: only pending() knows
    for _ in range(100):
        got = client.recv(1000)
        assert isinstance(got, bytes)
        rest.extend(got)
        if not client.pending():
            break
    assert bytes(rest) == b"x" * 4900


def test_a_clienthello_a_byte_at_a_time_after_the_sniffed_first_byte(sockets, identity) -> None:
    server_sock, client_sock = sockets
    client = TlsTransport(client_sock, client_context(), server_side=False)
    assert client.handshake() is Want.READ  # the ClientHello is on its way
    first = b""
    for _ in range(1000):
        try:
            first = server_sock.recv(1)
            break
        except BlockingIOError:
            time.sleep(0.001)
    assert first == bytes([TLS_RECORD])
    # The rest of the ClientHello reaches the server one byte per read.
    hello = bytearray()
    for _ in range(1000):
        try:
            hello.extend(server_sock.recv(65536))
        except BlockingIOError:
            if hello:
                break
            time.sleep(0.001)
    assert len(hello) > 100
    inner = socket.socketpair()
    feeder, server_end = inner
    server_end.setblocking(False)
    try:
        server = TlsTransport(
            server_end, server_context(str(identity[0])), server_side=True, received=first
        )
        for byte in hello:
            assert server.recv(1024) is Want.READ  # never a whole ClientHello yet
            feeder.send(bytes([byte]))
        answers = [server.recv(1024) for _ in range(50)]
        assert Want.READ in answers  # it answered the ClientHello and waits for Finished
        assert all(answer is Want.READ for answer in answers)
        feeder.setblocking(False)
        assert len(feeder.recv(65536)) > 100  # the ServerHello and the certificate
    finally:
        feeder.close()
        server_end.close()


def test_close_notify_and_a_bare_fin_both_read_as_the_end(sockets, identity) -> None:
    server, client = pair(sockets, identity)
    handshake(server, client)
    assert server.send(b"last words") == 10
    assert server.shutdown_write() is None
    got = bytearray()
    ended = []

    def step() -> None:
        answer = client.recv(1024)
        if answer == b"":
            ended.append(True)
        elif isinstance(answer, bytes):
            got.extend(answer)

    pump(lambda: bool(ended), step)
    assert bytes(got) == b"last words"
    # The client closes its TCP side without a close_notify: still the end.
    client.sock.shutdown(socket.SHUT_WR)
    drained: list[bytes | Want] = []
    pump(lambda: b"" in drained, lambda: drained.append(server.recv(1024)))


def test_the_peers_fin_without_close_notify_is_the_end(sockets, identity) -> None:
    server, client = pair(sockets, identity)
    handshake(server, client)
    client.sock.shutdown(socket.SHUT_WR)
    answers: list[bytes | Want] = []
    pump(lambda: b"" in answers, lambda: answers.append(server.recv(1024)))


def test_plaintext_where_tls_is_expected_is_transport_closed(sockets, identity) -> None:
    server_sock, client_sock = sockets
    server = TlsTransport(server_sock, server_context(str(identity[0])), server_side=True)
    client_sock.sendall(b"\x00\x00\x00\x10" + b"{}" * 8)
    with pytest.raises(TransportClosed):
        pump(lambda: False, lambda: server.recv(1024))


def test_tls_12_is_refused(sockets, identity) -> None:
    server_sock, client_sock = sockets
    server = TlsTransport(server_sock, server_context(str(identity[0])), server_side=True)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    client = TlsTransport(client_sock, old, server_side=False)
    with pytest.raises(TransportClosed):
        pump(lambda: False, client.handshake, lambda: server.recv(1024))
