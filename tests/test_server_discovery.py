"""The server's discovery responder over real UDP sockets on 127.0.0.1 (never a broadcast)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from server import discovery as discovery_module
from server.config import ServerConfig, default_room_name, features
from server.discovery import RATE, DiscoveryResponder
from server.protocol import MIN_QUERY, Announcement, encode_query, parse_reply
from tests.wire import RawClient


@pytest.fixture
def udp():
    sockets: list[socket.socket] = []

    def open_() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2.0)
        sockets.append(sock)
        return sock

    yield open_
    for sock in sockets:
        sock.close()


def ask(sock: socket.socket, port: int, query: bytes | None = None) -> bytes:
    sock.sendto(encode_query() if query is None else query, ("127.0.0.1", port))
    return sock.recvfrom(4096)[0]


def silent(sock: socket.socket, seconds: float = 0.3) -> bool:
    sock.settimeout(seconds)
    try:
        sock.recvfrom(4096)
    except TimeoutError:
        return True
    return False


def test_a_query_is_answered_with_the_room_as_it_is(start_server, udp):
    server = start_server(room_name="Room 101")
    sock = udp()
    found = parse_reply(ask(sock, server.port))
    assert found == Announcement(
        room="Room 101",
        port=server.port,
        users=0,
        tls="auto",
        password=False,
        version=found.version if found else "",
        fingerprint=server.identity.fingerprint if server.identity else None,
    )
    with RawClient(server.port) as alice:
        assert "discovery" in alice.join("alice")["features"]
        assert parse_reply(ask(sock, server.port)).users == 1


def test_the_reply_is_never_longer_than_the_query(start_server, udp):
    server = start_server(room_name="é" * 64)
    sock = udp()
    reply = ask(sock, server.port, encode_query(MIN_QUERY))
    assert len(reply) <= MIN_QUERY
    assert json.loads(reply)["room"].endswith("…")
    assert len(ask(sock, server.port)) > len(reply)  # a bigger query: the whole name


def test_short_and_foreign_datagrams_get_nothing(start_server, udp):
    server = start_server()
    sock = udp()
    sock.sendto(b'{"type":"discover","protocol":1}', ("127.0.0.1", server.port))
    sock.sendto(b"x" * 1024, ("127.0.0.1", server.port))
    assert silent(sock)
    assert parse_reply(ask(sock, server.port)) is not None  # still answering


def test_at_most_five_answers_a_second_per_address(start_server, udp):
    server = start_server()
    sock = udp()
    for _ in range(RATE + 5):
        sock.sendto(encode_query(), ("127.0.0.1", server.port))
    answers = 0
    while not silent(sock, 0.3):
        answers += 1
    assert answers == RATE
    time.sleep(1.05)
    assert parse_reply(ask(sock, server.port)) is not None  # a new second


def test_a_password_room_says_so_and_requires_tls(start_server, udp):
    server = start_server(room_password="open sesame")
    found = parse_reply(ask(udp(), server.port))
    assert found is not None and found.password and found.tls == "required"


def test_no_discovery_answers_nothing_and_does_not_offer_it(start_server, udp):
    server = start_server(discovery=False)
    sock = udp()
    sock.sendto(encode_query(), ("127.0.0.1", server.port))
    assert silent(sock)
    with RawClient(server.port) as alice:
        assert "discovery" not in alice.join("alice")["features"]
    assert "discovery" not in features(ServerConfig(discovery=False))


def test_a_port_taken_for_udp_leaves_the_chat_working(start_server, udp):
    # Something else holds the UDP port: the server runs, without discovery.
    holder = udp()
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        server = start_server(port=port)
    except OSError:
        pytest.fail("a taken UDP port must not stop the server")
    assert server.discovery is None
    with RawClient(server.port) as alice:
        assert "discovery" not in alice.join("alice")["features"]


def test_a_windows_reset_on_receive_is_skipped():
    class Resetting:
        def __init__(self) -> None:
            self.calls = 0

        def recvfrom(self, size: int):
            self.calls += 1
            if self.calls == 1:
                raise ConnectionResetError("an earlier reply's ICMP port unreachable")
            raise BlockingIOError

    fake = Resetting()
    responder = DiscoveryResponder([], lambda: None)  # type: ignore[arg-type, return-value]
    responder.on_readable(fake)  # type: ignore[arg-type]
    assert fake.calls == 2  # it went on reading after the reset


def test_room_name_flag_and_its_default(tmp_path):
    assert default_room_name().startswith("Chat on ")
    bad = subprocess.run(
        [sys.executable, "-m", "server", "--room-name", "two\nlines\u202e" + "x" * 80],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "at most 64 characters" in bad.stderr


def test_junk_from_an_address_spends_its_allowance_before_any_parsing(monkeypatch):
    parsed: list[bytes] = []
    real = discovery_module.parse_query

    def counting(datagram: bytes) -> bool:
        parsed.append(datagram)
        return real(datagram)

    monkeypatch.setattr(discovery_module, "parse_query", counting)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b:
        a.bind(("127.0.0.1", 0))
        for _ in range(50):
            b.sendto(b"{" + b"x" * 500, a.getsockname())
        time.sleep(0.1)  # all of them in a's buffer
        a.setblocking(False)
        responder = DiscoveryResponder([a], lambda: None, clock=lambda: 100.0)  # type: ignore[arg-type, return-value]
        responder.on_readable(a)
    assert len(parsed) == RATE  # the other 45 were read and dropped unparsed
