"""Edge cases found in review: half-closes, early stops, bugs in one connection."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from server.chat_server import ChatServer
from server.config import ServerConfig
from server.connection import Connection
from tests.wire import Closed, RawClient


def _small_send_buffers(srv: ChatServer) -> None:
    # Accepted sockets inherit the listener's buffer size on Linux: with a
    # small one, what a client is owed stays queued in the server, as it
    # would on a slow link.
    for listener in srv._listeners:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)


def test_a_half_closed_client_still_gets_every_reply(start_server) -> None:
    srv = start_server()
    _small_send_buffers(srv)
    client = RawClient.__new__(RawClient)  # a RawClient with a small receive buffer
    client.sock = socket.socket()
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    client.sock.connect(("127.0.0.1", srv.port))
    client.timeout, client._buffer, client.eof = 10.0, b"", False
    with client:
        padding = "x" * 60_000
        for n in range(10):
            client.send({"type": "ping", "n": n, "pad": padding})
        client.sock.shutdown(socket.SHUT_WR)
        time.sleep(0.3)  # the server sees our FIN while most pongs are still queued
        frames = client.expect_closed(timeout=10)
    assert [f["n"] for f in frames] == list(range(10))
    assert all(f["type"] == "pong" and f["pad"] == padding for f in frames)


def test_hello_and_bye_together_deliver_a_big_history(start_server) -> None:
    srv = start_server(rate_limit=None)
    _small_send_buffers(srv)
    texts = [f"{i:03d}" + "\N{GRINNING FACE}" * 3997 for i in range(100)]  # ~16 KB each
    with RawClient(srv.port) as alice, RawClient(srv.port) as late:
        alice.join("alice")
        for text in texts:  # reading each echo: alice must not be a slow reader herself
            alice.send({"type": "say", "text": text})
            alice.expect("message")
        # About 1.6 MB of replay, over the 1 MiB bound, queued as this client leaves.
        late.send({"type": "hello", "name": "late", "protocol": 1})
        late.send({"type": "bye"})
        frames = late.expect_closed(timeout=10)
    assert frames[0]["type"] == "welcome"
    assert [f["text"] for f in frames[1:]] == texts


def test_a_frame_that_never_ends_is_no_sign_of_life(start_server) -> None:
    srv = start_server(idle_ping_after=0.3, idle_timeout=1.0)
    with RawClient(srv.port) as watcher, RawClient(srv.port) as drip:
        watcher.join("watcher")
        drip.join("drip")
        watcher.expect("joined", name="drip")
        drip.send_raw(b"\x00\x00\x01\x00")  # a 256-byte frame, sent a byte at a time
        deadline = time.monotonic() + 5
        dropped = None
        while time.monotonic() < deadline and dropped is None:
            try:
                drip.send_raw(b" ")
            except OSError:
                break  # closed by the server
            watcher.send({"type": "who"})  # the watcher itself stays alive
            while dropped is None:
                try:
                    frame = watcher.recv(timeout=0.05)
                except TimeoutError:
                    break
                if frame["type"] == "left":
                    dropped = frame
        assert dropped == {"type": "left", "name": "drip", "reason": "timeout", "ts": dropped["ts"]}


def test_shutdown_before_serve_forever_starts() -> None:
    srv = ChatServer(ServerConfig(host="127.0.0.1", port=0))
    srv.shutdown()
    started = time.monotonic()
    srv.serve_forever(0.05)  # returns at once: it was stopped before it began
    assert time.monotonic() - started < 1.0
    srv.server_close()


def test_a_bug_in_one_connection_closes_only_that_one(start_server, monkeypatch) -> None:
    original = Connection.check_timers

    def check_timers(self: Connection, now: float) -> None:
        if self.name == "victim":
            raise RuntimeError("injected")
        original(self, now)

    monkeypatch.setattr(Connection, "check_timers", check_timers)
    srv = start_server(io_threads=1)
    with RawClient(srv.port) as other, RawClient(srv.port) as victim:
        other.join("other")
        victim.join("victim")
        other.expect("joined", name="victim")
        assert other.skip_until("left", timeout=3)["reason"] == "error"
        with pytest.raises(Closed):
            victim.skip_until("never", timeout=3)
        # The thread that served the victim still serves everyone else.
        with RawClient(srv.port) as newcomer:
            newcomer.join("newcomer")
            other.send({"type": "say", "text": "still here"})
            newcomer.expect("message", text="still here")


def test_one_client_cannot_flood_the_log(start_server, caplog) -> None:
    srv = start_server()
    with caplog.at_level(logging.INFO, logger="server"), RawClient(srv.port) as client:
        client.join("noisy")
        for _ in range(50):
            client.send({"type": "nonsense"})
        for _ in range(50):
            client.expect_error("unknown-type")
    noisy = [r for r in caplog.records if "noisy" in r.getMessage() and r.levelno >= logging.INFO]
    unknown = [r for r in noisy if "unknown-type" in r.getMessage()]
    assert len(unknown) == 10
    assert any("further errors" in r.getMessage() for r in noisy)


def test_many_clients_are_told_and_closed_within_two_seconds(start_server) -> None:
    srv = start_server()
    clients = []
    try:
        for i in range(300):
            client = RawClient(srv.port)
            clients.append(client)
            client.send({"type": "hello", "name": f"user{i}", "protocol": 1})
        clients[-1].expect("welcome")
        stopper = threading.Thread(target=srv.shutdown)
        started = time.monotonic()
        stopper.start()
        stopper.join(5)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"shutdown took {elapsed:.2f} s"
        assert clients[0].skip_until("shutdown")["message"] == "The server is shutting down"
    finally:
        for client in clients:
            client.close()
