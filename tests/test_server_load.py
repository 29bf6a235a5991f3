"""The server under load from hostile clients: pipelined requests, floods,
a stop in the middle of it all. Real servers on 127.0.0.1, raw sockets.

Rooms are a few hundred members at most, so that each test takes seconds;
every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.chat_server import ChatServer
from server.connection import SEND_CHUNK
from server.fanout import Outbox
from tests.wire import RawClient, frame

StartServer = Callable[..., ChatServer]
OpenClient = Callable[..., RawClient]

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on 127\.0\.0\.1, port (\d+)")


class Pump(threading.Thread):
    """One thread that writes each socket's data and reads every socket. It
    parses the frames of some (keeping each with the time it arrived) and
    only counts what the others get, keeping its tail."""

    def __init__(self) -> None:
        super().__init__(name="test-pump", daemon=True)
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._out: dict[socket.socket, bytes] = {}
        self._in: dict[socket.socket, bytes | None] = {}
        self.frames: dict[socket.socket, list[dict]] = {}
        self.received: dict[socket.socket, int] = {}
        self.tail: dict[socket.socket, bytes] = {}
        self.closed: set[socket.socket] = set()
        self.sockets: list[socket.socket] = []
        self._done = threading.Event()

    def connect(self, port: int, name: str, *, parse: bool = True) -> socket.socket:
        """A raw connection that says hello as ``name``."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        with self._lock:
            self.sockets.append(sock)
            self._out[sock] = frame({"type": "hello", "name": name, "protocol": 1})
            self._in[sock] = b"" if parse else None
            self.frames[sock] = []
            self.received[sock] = 0
            self.tail[sock] = b""
            self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        return sock

    def feed(self, sock: socket.socket, data: bytes) -> None:
        """Send ``data`` on ``sock`` too, as fast as the server takes it."""
        with self._lock:
            self._out[sock] += data
            if sock not in self.closed:
                self._selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def got(self, sock: socket.socket) -> list[dict]:
        with self._lock:
            return list(self.frames[sock])

    def run(self) -> None:
        while not self._done.is_set():
            with self._lock:
                events = self._selector.select(0.01) if self._selector.get_map() else []
                for key, mask in events:
                    self._serve(key.fileobj, mask)  # type: ignore[arg-type]
            if not events:
                time.sleep(0.002)

    def _serve(self, sock: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            try:
                sent = sock.send(self._out[sock][:SEND_CHUNK])
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = len(self._out[sock])
            self._out[sock] = self._out[sock][sent:]
            if not self._out[sock]:
                self._selector.modify(sock, selectors.EVENT_READ)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed.add(sock)
            self._selector.unregister(sock)
            sock.close()  # so that the server need not wait for our side
            return
        self.received[sock] += len(data)
        self.tail[sock] = (self.tail[sock] + data)[-256:]
        buffer = self._in[sock]
        if buffer is None:
            return
        buffer += data
        while len(buffer) >= 4:
            (length,) = struct.unpack(">I", buffer[:4])
            if len(buffer) < 4 + length:
                break
            self.frames[sock].append(json.loads(buffer[4 : 4 + length]))
            buffer = buffer[4 + length :]
        self._in[sock] = buffer

    def close(self) -> None:
        self._done.set()
        self.join(5.0)
        self._selector.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def pump() -> Iterator[Pump]:
    running = Pump()
    running.start()
    yield running
    running.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def fill_room(pump: Pump, port: int, count: int, prefix: str = "member") -> list[socket.socket]:
    """``count`` members whose frames the pump reads and parses."""
    members = [pump.connect(port, f"{prefix}{i}") for i in range(count)]
    wait_for(
        lambda: all(any(f["type"] == "welcome" for f in pump.got(s)) for s in members),
        30,
        "the room to fill",
    )
    return members


def start_flood(pump: Pump, port: int, count: int, pairs: int) -> list[socket.socket]:
    """``count`` joined flooders, each sending ``pairs`` pipelined `say` and `ping`
    (rate-limited says: a stream of errors) and reading all it gets back."""
    flooders = [pump.connect(port, f"flooder{i}", parse=False) for i in range(count)]
    wait_for(lambda: all(pump.received[s] for s in flooders), 10, "the flooders to join")
    data = (frame({"type": "say", "text": "flood"}) + frame({"type": "ping", "k": 1})) * pairs
    for sock in flooders:
        pump.feed(sock, data)
    return flooders


# Enough that one pass of a loop that handles all it reads would take
# seconds here, and a few milliseconds with a budget per pass.
FLOODERS = 40

SHUTDOWN = b'{"type":"shutdown","message":"The server is shutting down"}'


def assert_everyone_told(pump: Pump) -> None:
    """Every connection the pump serves got ``shutdown`` last, then was closed."""
    for sock in pump.sockets:
        assert sock in pump.closed, "a connection was left open"
        assert pump.tail[sock].endswith(SHUTDOWN), pump.tail[sock][-100:]
    told = sum(pump.tail[sock].endswith(SHUTDOWN) for sock in pump.sockets)
    assert told == len(pump.sockets)


def test_a_pipelined_who_flood_keeps_the_outbox_bounded_and_a_reset_copies_nothing(
    start_server: StartServer,
    open_client: OpenClient,
    pump: Pump,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = start_server()
    fill_room(pump, srv.port, 200, "member_with_a_long_name_")
    attacker = open_client(srv, "attacker")
    biggest = {"backlog": 0, "take": 0}
    put, take = Outbox.put, Outbox.take

    def watched_put(self: Outbox, log, frame_: bytes, **kwargs: object) -> None:
        put(self, log, frame_, **kwargs)
        biggest["backlog"] = max(biggest["backlog"], self.backlog(log))

    def watched_take(self: Outbox, log, max_bytes: int) -> bytes:
        data = take(self, log, max_bytes)
        biggest["take"] = max(biggest["take"], len(data))
        return data

    monkeypatch.setattr(Outbox, "put", watched_put)
    monkeypatch.setattr(Outbox, "take", watched_take)
    whos = 20_000  # 380 kB of requests for 150 MB of user lists
    attacker.send_raw(frame({"type": "who"}) * whos)
    time.sleep(1.0)  # the attacker reads nothing meanwhile
    # A reset: the server must not copy what it owed.
    attacker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    attacker.close()
    wait_for(lambda: srv.connection_count == 200, 10, "the attacker to be gone")
    assert biggest["backlog"] <= srv.config.max_queue, biggest
    assert biggest["take"] <= SEND_CHUNK, biggest
    with RawClient(srv.port) as probe:  # the room carries on
        probe.join("probe")
        probe.send({"type": "who"})
        assert len(probe.expect("users")["users"]) == 201


def test_pipelined_requests_are_all_answered_once_read(
    start_server: StartServer, open_client: OpenClient, pump: Pump
) -> None:
    # 200 user lists of 2 kB make 400 kB of replies, far beyond the 64 KiB
    # bound: the pipeliner is made to wait, not dropped as too slow.
    srv = start_server(max_queue=64 * 1024)
    fill_room(pump, srv.port, 60, "m" * 27 + "_")
    pipeliner = open_client(srv, "pipeliner")
    pipeliner.send_raw(frame({"type": "who"}) * 200 + frame({"type": "ping", "last": True}))
    time.sleep(0.5)  # it reads nothing meanwhile
    for _ in range(200):
        assert len(pipeliner.expect("users")["users"]) == 61
    pipeliner.expect("pong", last=True)
    pipeliner.send({"type": "say", "text": "still here"})
    pipeliner.skip_until("message")


def test_a_paused_pipeliner_that_never_reads_is_still_dropped_for_the_room_s_messages(
    start_server: StartServer, open_client: OpenClient
) -> None:
    # Back-pressure holds its requests, but the room's messages it fails to
    # read still count: it cannot make the room wait.
    srv = start_server(max_queue=64 * 1024, rate_limit=None)
    sender = open_client(srv, "sender")
    pipeliner = open_client(srv, "pipeliner")
    sender.expect("joined", name="pipeliner")
    pipeliner.send_raw(frame({"type": "who"}) * 2000)
    text = "x" * 3000
    for _ in range(200):
        sender.send_raw(frame({"type": "say", "text": text}) * 10)
        for _frame in range(10):
            obj = sender.recv()
            if obj["type"] == "left":
                assert obj["name"] == "pipeliner" and obj["reason"] == "too-slow", obj
                return
            assert obj["type"] == "message", obj
    raise AssertionError("the pipeliner was never dropped")


def test_a_paused_client_that_keeps_sending_is_too_slow_not_silent(
    start_server: StartServer, open_client: OpenClient
) -> None:
    # Paused, its frames are not read, so they cannot count as signs of
    # life; but it is not silent, it stopped reading: `too-slow`, and only
    # after the idle time, not `timeout` for a silence that was ours.
    srv = start_server(max_queue=64 * 1024, idle_timeout=2.0, idle_ping_after=1.0)
    observer = open_client(srv, "observer")
    with socket.socket() as alice:
        alice.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing
        alice.connect(("127.0.0.1", srv.port))
        alice.settimeout(0.2)
        alice.sendall(frame({"type": "hello", "name": "alice", "protocol": 1}))
        observer.expect("joined", name="alice")
        started = time.monotonic()
        deadline = started + 8
        left = None
        frames = frame({"type": "ping", "pad": "p" * 30_000}) + frame({"type": "pong"})
        sending = True
        while left is None and time.monotonic() < deadline:
            try:  # unread pongs pause it; then its pings and pongs keep coming
                if sending:
                    alice.sendall(frames)
            except TimeoutError:
                pass  # the server stopped reading it: back-pressure
            except OSError:
                sending = False  # the server closed it; the observer is told why
            observer.send({"type": "ping"})  # the observer is not idle
            try:
                obj = observer.recv(0.2)
            except TimeoutError:
                continue
            if obj["type"] == "left":
                left = obj
    assert left is not None, "alice was never dropped"
    assert left["name"] == "alice" and left["reason"] == "too-slow", left
    assert time.monotonic() - started >= 1.5  # not before the idle time


def test_flooders_delay_a_bystander_by_a_moment_at_most(
    start_server: StartServer, open_client: OpenClient, pump: Pump
) -> None:
    srv = start_server()
    fill_room(pump, srv.port, 100)
    alice = open_client(srv, "alice")
    bob = open_client(srv, "bob")
    flooders = start_flood(pump, srv.port, FLOODERS, 10_000)
    wait_for(lambda: len(srv.room) == 102 + FLOODERS, 10, "the flooders to join")
    worst = 0.0
    for attempt in range(5):
        time.sleep(0.2)
        text = f"bystander {attempt}"
        started = time.monotonic()
        alice.send({"type": "say", "text": text})
        deadline = started + 10
        while True:
            obj = bob.recv(max(0.01, deadline - time.monotonic()))
            if obj["type"] == "message" and obj["text"] == text:
                break
        worst = max(worst, time.monotonic() - started)
    assert worst < 0.5, f"a bystander's message took {worst:.2f} s"
    before = sum(pump.received[s] for s in flooders)
    time.sleep(0.2)
    assert sum(pump.received[s] for s in flooders) > before, "the flood ended too soon"


def test_shutdown_under_a_flood_tells_every_connection_in_time(
    start_server: StartServer, pump: Pump
) -> None:
    srv = start_server()
    fill_room(pump, srv.port, 300)
    start_flood(pump, srv.port, FLOODERS, 10_000)
    time.sleep(0.5)
    started = time.monotonic()
    srv.shutdown()
    # PROTOCOL.md's two seconds run from the stop request to the last close.
    remaining = started + 2.0 - time.monotonic()
    assert remaining > 0, "shutdown() took more than 2 s"
    wait_for(lambda: len(pump.closed) == len(pump.sockets), remaining, "every connection to close")
    assert_everyone_told(pump)
    assert all(not loop.thread.is_alive() for loop in srv._loops), "a loop outlived shutdown()"


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals (Windows: Ctrl+C)")
def test_sigint_under_a_flood_tells_every_connection_and_exits_zero(pump: Pump) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        port = None
        for _ in range(50):
            match = LISTENING.search(proc.stdout.readline())
            if match:
                port = int(match.group(1))
                break
        assert port is not None, "the server did not start"
        fill_room(pump, port, 300)
        start_flood(pump, port, FLOODERS, 10_000)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - started
        assert proc.returncode == 0, err
        assert took < 2.0, err
        assert "did not stop in time" not in err
        wait_for(lambda: len(pump.closed) == len(pump.sockets), 1.0, "every connection to close")
        assert_everyone_told(pump)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
