"""Hostile-load benchmark: what flooders, a shutdown under load and a ``who`` attack cost.

Run from the project root::

    python3 -m tests.bench.hostile                        # flood, shutdown, who
    python3 -m tests.bench.hostile --scenario flood --members 200 --flooders 10
    python3 -m tests.bench.hostile --server-cwd /work/main   # another checkout's server

Each scenario gets a fresh ``python -m server --host 127.0.0.1 --port <free>
--log-level warning`` started in ``--server-cwd`` (default: this checkout), so
with the server's default settings: the rate limit is on, the history is on
disk, in a temporary data folder of its own. It is stopped with SIGINT
afterwards.

Scenarios:

- ``flood``: ``--members`` join and read everything; then ``--flooders``
  pipeline ``say`` and ``ping`` frames as fast as their sockets take them (and
  read whatever comes back) for ``--seconds``. Meanwhile a bystander says a
  numbered message every ``--interval`` s and a watcher measures the delay
  until it sees each one (and ``flood_lag_ms``: how old the flood's messages
  are when it sees them, counted from when the flooder queued them, so it
  includes the wait in the flooder's own pipeline, not just the room's). The
  rate limit (5 a second by default) would refuse a sender that says 20 a
  second, so the bystander's messages go out in turn from ``SPEAKERS``
  connections, each under the limit: every message is one the server should
  deliver. Goal: the worst delay under 100 ms, none missed.

  The bystander (speakers and watcher) runs in a child process of its own,
  ``python3 -m tests.bench.hostile --bystander-port PORT``: the members read
  every message, which keeps this process busy enough to stall for hundreds
  of milliseconds, and that stall must not count as the server's delay. The
  child joins once the room has, writes ``ready``, starts speaking when it
  reads ``go`` (the flood starts then too), and writes its numbers as one JSON
  line; ``bystander_stall_ms`` is its own longest time away from its
  selector, so a reader can see whether the delays are the server's. Its
  stdin closing (this process gone) stops it; this process kills it on any
  failure.
- ``shutdown``: the same members and flood (no bystander), then SIGINT to the
  server. Goal: every connection gets ``shutdown``, exit status 0 within 2 s.
- ``who``: ``--who-members`` join; then ``--attackers`` clients each pipeline
  ``--who-bytes`` of ``who`` frames, never read, and close (half of them
  reset). The server's VmRSS is sampled meanwhile. Goal: the peak growth no
  more than the slow-reader bound (``--queue-bound``, 1 MiB) per attacker.

Each process drives its connections from one selector with non-blocking
sockets; every wait has a timeout and every phase a deadline
(``--timeout``). Bulk readers never parse JSON: they count markers such as
``"type":"shutdown"`` with ``bytes.count``. On a busy 2-core machine the
delays still include the scheduler's: read them with the CPU shares beside
them. The framing code is this file's own (with
``tests.bench.server_bench``'s), not ``server.protocol``, so that it checks the
server rather than mirroring it. The output is a Markdown table; a missed goal
is reported in it, never by the exit status (1 only when a scenario could not
run at all).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.bench.server_bench import (
    READY_WAIT_S,
    ROOT,
    ServerStartError,
    _own_cpu_s,
    frame,
    frames_end,
    percentiles_ms,
    raise_open_file_limit,
)
from tests.bench.server_bench import Server as BenchServer

SCENARIOS = ("flood", "shutdown", "who")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
RECV_SIZE = 256 * 1024
LOGINS_AT_ONCE = 8
# Connections the bystander's messages go out from in turn (see the docstring).
SPEAKERS = 5
# A flooder tops its send buffer up to this much whenever the socket has room.
FLOOD_BUFFER = 64 * 1024
FLOOD_BATCH = 200  # say + ping pairs added at once
# How long after the last send a message may still arrive before it counts as missed.
GRACE_S = 2.0
SHUTDOWN_GOAL_S = 2.0
DELAY_GOAL_MS = 100.0
STOP_GRACE_S = 5.0
SAMPLE_EVERY_S = 0.01
FLOOD_TICK_S = 0.05
# How long the bystander's process may take to exit once it has reported.
CHILD_EXIT_S = 5.0
CHILD_READY_S = 30.0  # for six connections to join, even on a loaded machine
PIPE_LIMIT = 1 << 20  # more than the child's report, so a runaway child cannot fill memory

# Markers a bulk reader counts; the server writes compact JSON, but a space
# after the colon would be valid JSON too.
_MARKER = {
    kind: re.compile(rb'"type":\s?"' + kind.encode() + rb'"')
    for kind in ("welcome", "joined", "error", "ping", "shutdown", "pong")
}
_MARKER_TAIL = 24  # longer than any marker, so none is missed across reads


# --------------------------------------------------------------------------
# The server under test


def server_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", *extra,
    ]  # fmt: skip


def start_server(cwd: Path, extra: Sequence[str] = ()) -> BenchServer:
    """``python -m server`` (rate limit on) in ``cwd``, once it accepts connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - Server.stop() closes it
    # Its own data folder (history, identity), never the user's: stop() removes it.
    data_dir = tempfile.TemporaryDirectory(prefix="hostile-bench-")
    process = subprocess.Popen(
        [*server_command(port, extra), "--data-dir", data_dir.name],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    server = BenchServer(port, process.pid, process, log, data_dir)
    deadline = time.monotonic() + READY_WAIT_S
    while True:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop(None)
            raise ServerStartError(f"the server exited with status {process.returncode}:{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            if time.monotonic() >= deadline:
                server.stop(None)
                raise ServerStartError("the server did not accept connections") from None
            time.sleep(0.05)


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# --------------------------------------------------------------------------
# The connection engine


class Conn:
    """One client connection; ``on_*`` say what its role does with events."""

    def __init__(
        self,
        name: str,
        on_open: Callable[[Conn], None],
        on_data: Callable[[Conn, bytes], None],
        on_close: Callable[[Conn, str], None],
    ) -> None:
        self.name = name
        self.on_open, self.on_data, self.on_close = on_open, on_data, on_close
        self.sock: socket.socket | None = None
        self.connecting = True
        self.reading = True
        self.registered = 0  # the events the selector watches
        self.wbuf = bytearray()
        self.rbuf = b""
        self.tail = b""
        self.joined = False
        self.counts: dict[str, int] = dict.fromkeys(_MARKER, 0)
        self.received = 0
        self.closed_why: str | None = None
        self.closed_at: float | None = None
        self.state: Any = None  # role data


class Loop:
    """Every connection of one run, served from this thread."""

    def __init__(self, port: int, gone: Callable[[], str | None]) -> None:
        self.port, self.gone = port, gone
        self.selector = selectors.DefaultSelector()
        self.conns: set[Conn] = set()
        self.stopping = False
        self.failures: list[str] = []
        # When a list: the time between a select's return and the next select,
        # i.e. how long this process could not have read a socket.
        self.stalls: list[int] | None = None
        self._woke: int | None = None

    def connect(self, conn: Conn) -> Conn:
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            conn.closed_why = f"connect failed: {os.strerror(err)}"
            conn.on_close(conn, conn.closed_why)
            return conn
        conn.sock = sock
        self.conns.add(conn)
        self._interest(conn)
        return conn

    def _interest(self, conn: Conn) -> None:
        if conn.sock is None:
            return
        events = (READ if conn.reading and not conn.connecting else 0) | (
            WRITE if conn.wbuf or conn.connecting else 0
        )
        if events == conn.registered:
            return
        if not events:
            self.selector.unregister(conn.sock)
        elif not conn.registered:
            self.selector.register(conn.sock, events, conn)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.registered = events

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.sock is None:
            return
        conn.wbuf += data
        if not conn.connecting:
            self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.wbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.close(conn, f"send failed: {exc.strerror or exc}")
            return
        del conn.wbuf[:sent]
        self._interest(conn)

    def set_reading(self, conn: Conn, reading: bool) -> None:
        conn.reading = reading
        self._interest(conn)

    def close(self, conn: Conn, why: str, reset: bool = False) -> None:
        """Close ``conn`` (with a TCP reset when ``reset``) and tell its role why."""
        if conn.sock is None:
            return
        if conn.registered:
            self.selector.unregister(conn.sock)
        if reset:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.sock.close()
        conn.sock = None
        conn.registered = 0
        conn.closed_why = why
        conn.closed_at = time.monotonic()
        self.conns.discard(conn)
        conn.on_close(conn, why)

    def close_all(self) -> None:
        for conn in list(self.conns):
            self.close(conn, "closed by the benchmark")

    def pump(self, timeout: float) -> None:
        if self.stalls is not None:
            now = time.perf_counter_ns()
            if self._woke is not None:
                self.stalls.append(now - self._woke)
        events = self.selector.select(timeout)
        self._woke = time.perf_counter_ns()
        for key, mask in events:
            conn = key.data
            if conn.sock is None:
                continue
            if conn.connecting:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.close(conn, f"connect failed: {os.strerror(err)}")
                    continue
                conn.connecting = False
                self._interest(conn)
                conn.on_open(conn)
                continue
            if mask & READ:
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError as exc:
                    self.close(conn, f"receive failed: {exc.strerror or exc}")
                    continue
                if data == b"":
                    self.close(conn, "closed by the server")
                    continue
                if data:
                    conn.received += len(data)
                    conn.on_data(conn, data)
            if mask & WRITE and conn.sock is not None and conn.wbuf:
                self._flush(conn)

    def run_until(
        self,
        done: Callable[[], bool],
        deadline: float,
        tick: Callable[[], float] | None = None,
    ) -> bool:
        """Serve events until ``done()``; False at ``deadline`` or when the server is gone."""
        next_check = 0.0
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_check:
                why = self.gone()
                if why is not None:
                    self.failures.append(why)
                    return False
                next_check = now + 0.25
            wait = min(deadline - now, 0.25)
            if tick is not None:
                wait = min(wait, tick())
            self.pump(max(wait, 0.0))
        return True


class _StopAdapter:
    """What ``BenchServer.stop(engine)`` drives while the server exits: it
    pumps the loop (the clients keep reading) and then closes everything."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.stopping = False

    def pump(self, timeout: float) -> None:
        self.loop.pump(timeout)

    def close(self) -> None:
        self.loop.close_all()
        self.loop.selector.close()


# --------------------------------------------------------------------------
# Roles: bulk readers count markers, parsed readers decode every frame

_MARKS = {kind: b'"type":"' + kind.encode() + b'"' for kind in _MARKER}
PONG = frame({"type": "pong"})


def frames(conn: Conn, data: bytes) -> Iterator[dict[str, Any]]:
    """The complete frames ``data`` finishes on ``conn``, decoded."""
    buf = conn.rbuf + data if conn.rbuf else data
    end, _ = frames_end(buf)
    conn.rbuf = buf[end:]
    pos = 0
    while pos < end:
        length = int.from_bytes(buf[pos : pos + 4], "big")
        payload = buf[pos + 4 : pos + 4 + length]
        pos += 4 + length
        obj = json.loads(payload)
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise ValueError("a server frame without a string type")
        yield obj


class Crowd:
    """Connections joining a room, at most ``LOGINS_AT_ONCE`` logins at a time."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.token = os.urandom(3).hex()
        self.waiting: list[Conn] = []
        self.in_flight = self.welcomed = self.joined_frames = 0
        self.refused: list[str] = []
        self.dropped: list[str] = []
        self.all: list[Conn] = []

    def _hello(self, conn: Conn) -> None:
        self.loop.send(conn, frame({"type": "hello", "name": conn.name, "protocol": 1}))

    def _welcome(self, conn: Conn) -> None:
        conn.joined = True
        self.welcomed += 1
        self.in_flight -= 1
        self.start_logins()

    def _closed(self, conn: Conn, why: str) -> None:
        if not self.loop.stopping and conn.state != "leaving":
            self.dropped.append(f"{conn.name}: {why}")
        if not conn.joined and conn.closed_why != "closed by the benchmark":
            self.in_flight -= 1
            self.start_logins()

    def bulk(self, name: str) -> Conn:
        conn = Conn(name, self._hello, self._bulk_data, self._closed)
        self.all.append(conn)
        return conn

    def parsed(self, name: str, on_frame: Callable[[Conn, dict[str, Any]], None]) -> Conn:
        def on_data(conn: Conn, data: bytes) -> None:
            try:
                for obj in frames(conn, data):
                    self._parsed_frame(conn, obj, on_frame)
                    if conn.sock is None:
                        return
            except ValueError as exc:
                self.loop.close(conn, f"bad frame from the server: {exc}")

        conn = Conn(name, self._hello, on_data, self._closed)
        self.all.append(conn)
        return conn

    def _parsed_frame(
        self, conn: Conn, obj: dict[str, Any], on_frame: Callable[[Conn, dict[str, Any]], None]
    ) -> None:
        kind = obj["type"]
        if kind in conn.counts:
            conn.counts[kind] += 1
        if kind == "welcome" and not conn.joined:
            self._welcome(conn)
        elif kind == "joined":
            self.joined_frames += 1
        elif kind == "ping":
            self.loop.send(conn, frame({**obj, "type": "pong"}))
        elif kind == "error" and not conn.joined:
            self.refused.append(f"{conn.name}: {obj.get('code')}")
        on_frame(conn, obj)

    def _bulk_data(self, conn: Conn, data: bytes) -> None:
        window = conn.tail + data
        counts = conn.counts
        for kind, mark in _MARKS.items():
            found = window.count(mark)
            if found and conn.tail:
                found -= conn.tail.count(mark)
            if found:
                counts[kind] += found
                if kind == "joined":
                    self.joined_frames += found
                elif kind == "ping":
                    self.loop.send(conn, PONG * found)
                elif kind == "error" and not conn.joined:
                    self.refused.append(f"{conn.name}: error before welcome")
        conn.tail = window[-_MARKER_TAIL:]
        if counts["welcome"] and not conn.joined:
            self._welcome(conn)

    def start_logins(self) -> None:
        while self.in_flight < LOGINS_AT_ONCE and self.waiting and not self.refused:
            self.in_flight += 1
            self.loop.connect(self.waiting.pop(0))

    def join(self, conns: Sequence[Conn], deadline: float) -> float | None:
        """Bring ``conns`` in, then wait for every ``joined`` frame (N(N-1)/2 in
        all, the room being empty before); the seconds it took, or None."""
        started = time.monotonic()
        self.waiting = list(conns)
        self.start_logins()
        count = len(conns)
        if not self.loop.run_until(
            lambda: self.welcomed >= count or bool(self.refused or self.dropped), deadline
        ):
            return None
        pairs = count * (count - 1) // 2
        if self.refused or self.dropped:
            return None
        if not self.loop.run_until(
            lambda: self.joined_frames >= pairs or bool(self.dropped), deadline
        ):
            return None
        return None if self.dropped else time.monotonic() - started


# --------------------------------------------------------------------------
# Scenarios


class Flood:
    """The flood scenario's room in this process: members and flooders."""

    def __init__(self, crowd: Crowd, args: argparse.Namespace) -> None:
        self.crowd, self.loop = crowd, crowd.loop
        token = crowd.token
        self.members = [crowd.bulk(f"m{token}-{i}") for i in range(args.members)]
        self.flooders = [crowd.bulk(f"f{token}-{i}") for i in range(args.flooders)]
        self.ping = frame({"type": "ping", "n": 1})
        self.flooding = False
        self.last_tick: float | None = None
        self.rounds: list[int] = []

    def everyone(self) -> list[Conn]:
        return [*self.members, *self.flooders]

    def start(self) -> None:
        self.flooding = True

    def tick(self) -> float:
        now = time.monotonic()
        if self.last_tick is not None and self.flooding:
            self.rounds.append(int((now - self.last_tick) * 1e9))
        self.last_tick = now
        if not self.flooding:
            return 0.25
        for conn in self.flooders:
            if conn.sock is not None and len(conn.wbuf) < FLOOD_BUFFER:
                say = frame(
                    {"type": "say", "text": f"fl{self.crowd.token} {time.perf_counter_ns()}"}
                )
                self.loop.send(conn, (say + self.ping) * FLOOD_BATCH)
        # A flooder's drained buffer wakes the selector anyway; this only bounds the wait.
        return FLOOD_TICK_S


class Bystander:
    """The bystander's speakers and its watcher, in the child process."""

    def __init__(self, crowd: Crowd, interval: float) -> None:
        self.crowd, self.loop, self.interval = crowd, crowd.loop, interval
        token = crowd.token
        self.speakers = [crowd.parsed(f"s{token}-{i}", self._speaker) for i in range(SPEAKERS)]
        self.watcher = crowd.parsed(f"w{token}", self._watched)
        self.text_re = re.compile(f"by{token} ([0-9]+) ([0-9]+)", re.ASCII)
        self.flood_re = re.compile(f"fl{token} ([0-9]+)", re.ASCII)
        self.lags: list[int] = []  # how old each flood message was when the watcher saw it
        self.watched = 0  # message frames the watcher saw, of any sender
        self.speaking = False
        self.sent = 0
        self.next_due = 0.0
        self.delays: dict[int, int] = {}
        self.speaker_errors: dict[str, int] = {}

    def everyone(self) -> list[Conn]:
        return [*self.speakers, self.watcher]

    def _speaker(self, conn: Conn, obj: dict[str, Any]) -> None:
        if obj["type"] == "error" and conn.joined:
            code = str(obj.get("code"))
            self.speaker_errors[code] = self.speaker_errors.get(code, 0) + 1

    def _watched(self, conn: Conn, obj: dict[str, Any]) -> None:
        if obj["type"] != "message" or obj.get("history"):
            return
        self.watched += 1
        text = obj.get("text")
        if not isinstance(text, str):
            return
        flood = self.flood_re.fullmatch(text)
        if flood:
            # perf_counter is CLOCK_MONOTONIC: the flooders' process stamps on the same clock.
            self.lags.append(time.perf_counter_ns() - int(flood[1]))
            return
        match = self.text_re.fullmatch(text)
        if match:
            seq, sent = int(match[1]), int(match[2])
            self.delays.setdefault(seq, time.perf_counter_ns() - sent)

    def start(self) -> None:
        self.speaking = True
        self.next_due = time.monotonic()

    def tick(self) -> float:
        if not self.speaking:
            return 0.25
        now = time.monotonic()
        while self.next_due <= now:
            speaker = self.speakers[self.sent % SPEAKERS]
            text = f"by{self.crowd.token} {self.sent} {time.perf_counter_ns()}"
            self.loop.send(speaker, frame({"type": "say", "text": text}))
            self.sent += 1
            self.next_due += self.interval
        return max(0.0, self.next_due - now)


class Pipe:
    """Whole lines from a non-blocking pipe, read whenever asked; ``eof`` once it closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.buf = b""
        self.eof = False

    def lines(self) -> list[bytes]:
        while not self.eof and len(self.buf) <= PIPE_LIMIT:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
            self.buf += chunk
        *whole, self.buf = self.buf.split(b"\n")
        return whole


def run_bystander(args: argparse.Namespace) -> dict[str, Any]:
    """The child's side: join, say ``ready``, speak from ``go`` for ``--seconds``,
    wait up to GRACE_S for the rest; the numbers, for the parent to print.

    Stdin is the parent's: its end (the parent gone) stops the run."""
    deadline = time.monotonic() + args.timeout
    stdin = Pipe(sys.stdin.fileno())
    told: list[bytes] = []

    def parent_gone() -> str | None:
        told.extend(stdin.lines())
        return "the benchmark's main process is gone" if stdin.eof else None

    def heard_go() -> bool:
        told.extend(stdin.lines())  # at once: the flood starts with the go
        return b"go" in told

    loop = Loop(args.bystander_port, parent_gone)
    crowd = Crowd(loop)
    crowd.token = args.bystander_token
    room = Bystander(crowd, args.interval)
    result: dict[str, Any] = {"failures": loop.failures}
    try:
        if crowd.join(room.everyone(), deadline) is None:
            loop.failures += ["the bystander could not join", *crowd.refused, *crowd.dropped[:5]]
            return result
        print("ready", flush=True)
        if not loop.run_until(heard_go, deadline):
            loop.failures.append("no go from the benchmark's main process")
            return result
        loop.stalls = []
        cpu, wall = _own_cpu_s(), time.perf_counter()
        room.start()
        speak_end = time.monotonic() + args.seconds
        loop.run_until(lambda: time.monotonic() >= speak_end, deadline, room.tick)
        room.speaking = False
        result["bystander_cpu_pct"] = 100 * (_own_cpu_s() - cpu) / (time.perf_counter() - wall)
        settle = min(deadline, time.monotonic() + GRACE_S)
        loop.run_until(lambda: len(room.delays) >= room.sent, settle, room.tick)
        result.update(
            sent=room.sent,
            seen=len(room.delays),
            missed=room.sent - len(room.delays),
            watcher_messages=room.watched,
            watcher_closed=room.watcher.closed_why,
            flood_lag_ms=percentiles_ms(room.lags),
            delay_ms=percentiles_ms(list(room.delays.values())),
            speaker_errors=room.speaker_errors,
            bystander_stall_ms=percentiles_ms(loop.stalls),
        )
        return result
    finally:
        loop.stopping = True
        loop.close_all()
        loop.selector.close()


def bystander_main(args: argparse.Namespace) -> int:
    result = run_bystander(args)
    print(json.dumps(result), flush=True)
    return 0


class Child:
    """The bystander's process, as the parent sees it: started, read, and killed if need be."""

    def __init__(self, port: int, token: str, args: argparse.Namespace, deadline: float) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - stop() closes it
        command = [
            sys.executable, "-m", "tests.bench.hostile", "--bystander-port", str(port),
            "--bystander-token", token, "--interval", str(args.interval),
            "--seconds", str(args.seconds), "--timeout", str(max(1.0, deadline - time.monotonic())),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log
        )
        assert self.process.stdout is not None
        self.out = Pipe(self.process.stdout.fileno())
        self.lines: list[bytes] = []

    def said(self) -> int:
        """How many lines the child has written so far."""
        self.lines += self.out.lines()
        return len(self.lines)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def go(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(b"go\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it has exited: the wait for its report sees that

    def stop(self, reported: bool) -> list[str]:
        """Once it has ``reported``, wait a little for the child to exit; kill it
        at once otherwise, or when it does not exit; what went wrong."""
        failures = []
        killed = False
        try:
            self.process.wait(CHILD_EXIT_S if reported else 0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            killed = True
            if reported:
                failures.append("the bystander's process did not exit; killed")
        if self.process.returncode and not killed:
            self.log.seek(0)
            tail = self.log.read()[-2000:].decode(errors="replace").strip().splitlines()[-5:]
            failures.append(f"the bystander exited with status {self.process.returncode}: {tail}")
        for stream in (self.process.stdin, self.process.stdout):
            assert stream is not None
            try:
                stream.close()
            except BrokenPipeError:
                pass
        self.log.close()
        return failures


def _verdict(met: bool) -> str:
    return "goal met" if met else "goal missed"


def _cpu_meter(server: BenchServer) -> Callable[[], tuple[float | None, float]]:
    """A stopwatch of the server's and this process's CPU share (%)."""
    wall, server_cpu, own = time.perf_counter(), server.cpu_s(), _own_cpu_s()

    def read() -> tuple[float | None, float]:
        span = time.perf_counter() - wall
        now = server.cpu_s()
        theirs = None if now is None or server_cpu is None else 100 * (now - server_cpu) / span
        return theirs, 100 * (_own_cpu_s() - own) / span

    return read


def _gone_members(conns: Sequence[Conn]) -> int:
    return sum(1 for conn in conns if conn.sock is None)


def run_flood(
    server: BenchServer, loop: Loop, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    crowd = Crowd(loop)
    room = Flood(crowd, args)
    result: dict[str, Any] = {
        "scenario": "flood",
        "sizes": f"{args.members} members, {args.flooders} flooders, {args.seconds:g} s, "
        f"a message every {args.interval * 1000:g} ms",
    }
    joined_in = crowd.join(room.everyone(), deadline)
    if joined_in is None:
        result["failures"] = ["could not join the room", *crowd.refused, *crowd.dropped[:5]]
        return result
    result["joined_in_s"] = joined_in
    child = Child(server.port, crowd.token, args, deadline)
    report: dict[str, Any] = {}
    try:
        ready_by = min(deadline, time.monotonic() + CHILD_READY_S)
        if not loop.run_until(lambda: child.said() >= 1 or child.exited(), ready_by):
            result["failures"] = ["the bystander did not join in time"]
            return result
        child.said()  # what it wrote before it exited
        if child.lines[:1] != [b"ready"]:
            result["failures"] = ["the bystander could not join", *map(repr, child.lines[-1:])]
            return result
        meter = _cpu_meter(server)
        room.start()
        child.go()
        flood_end = time.monotonic() + args.seconds
        loop.run_until(lambda: time.monotonic() >= flood_end, deadline, room.tick)
        room.flooding = False
        server_cpu, own_cpu = meter()
        # The members go on reading while the watcher catches up with what was sent.
        report_by = min(deadline, time.monotonic() + GRACE_S + CHILD_EXIT_S)
        loop.run_until(lambda: child.said() >= 2 or child.exited(), report_by, room.tick)
        child.said()
        try:
            report = json.loads(child.lines[1])
        except (IndexError, ValueError):
            result["failures"] = ["the bystander did not report", *map(repr, child.lines[1:2])]
            return result
    finally:
        result.setdefault("failures", []).extend(child.stop(reported=bool(report)))
    result["failures"] += report.pop("failures")
    if "sent" not in report:
        return result
    delays, sent, missed = report["delay_ms"], report["sent"], report["missed"]
    pongs = sum(conn.counts["pong"] for conn in room.flooders)
    result.update(
        sent=sent,
        seen=report["seen"],
        missed=missed,
        watcher_messages=report["watcher_messages"],
        watcher_closed=report["watcher_closed"],
        flood_lag_ms=report["flood_lag_ms"],
        delay_ms=delays,
        speaker_errors=report["speaker_errors"],
        flooder_pongs_per_s=pongs / args.seconds,
        members_dropped=_gone_members(room.members),
        flooders_dropped=_gone_members(room.flooders),
        generator_round_ms=percentiles_ms(room.rounds),
        server_cpu_pct=server_cpu,
        generator_cpu_pct=own_cpu,
        bystander_stall_ms=report["bystander_stall_ms"],
        bystander_cpu_pct=report.get("bystander_cpu_pct"),
    )
    worst = None if delays is None else delays["max"]
    stall = report["bystander_stall_ms"]
    result["measured"] = (
        "bystander delay "
        + ("-" if delays is None else " / ".join(f"{delays[k]:.1f}" for k in ("p50", "p99", "max")))
        + f" ms (p50 / p99 / max), {missed} of {sent} missed"
        + ("" if stall is None else f"; its own process stalled {stall['max']:.1f} ms at most")
    )
    result["goal"] = f"max < {DELAY_GOAL_MS:g} ms, none missed"
    result["verdict"] = _verdict(worst is not None and worst < DELAY_GOAL_MS and missed == 0)
    return result


def run_shutdown(
    server: BenchServer, loop: Loop, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    crowd = Crowd(loop)
    room = Flood(crowd, args)
    result: dict[str, Any] = {
        "scenario": "shutdown",
        "sizes": f"{args.members} members, {args.flooders} flooders, SIGINT after "
        f"{args.shutdown_after:g} s of flood",
    }
    everyone = room.everyone()
    if crowd.join(everyone, deadline) is None:
        result["failures"] = ["could not join the room", *crowd.refused, *crowd.dropped[:5]]
        return result
    room.start()
    flood_end = time.monotonic() + args.shutdown_after
    loop.run_until(lambda: time.monotonic() >= flood_end, deadline, room.tick)
    open_before = sum(1 for conn in everyone if conn.sock is not None)
    loop.stopping = True  # from here on, the server closing a connection is expected
    process = server.process
    assert process is not None
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    exited_at: float | None = None

    def finished() -> bool:
        nonlocal exited_at
        if exited_at is None and process.poll() is not None:
            exited_at = time.monotonic()
        return exited_at is not None and not loop.conns

    # The flood goes on during the shutdown: the server must stop anyway.
    end = signalled + STOP_GRACE_S
    while not finished() and time.monotonic() < end:
        room.tick()
        loop.pump(0.01)
    told = sum(1 for conn in everyone if conn.counts["shutdown"])
    how = Counter(conn.closed_why or "still open" for conn in everyone)
    result.update(
        closed_how=dict(how),
        open_at_signal=open_before,
        told=told,
        exit_status=process.poll(),
        exit_s=None if exited_at is None else exited_at - signalled,
    )
    exit_s = result["exit_s"]
    result["measured"] = (
        f"{told} of {len(everyone)} got shutdown ({open_before} open at SIGINT), exit status "
        f"{result['exit_status']}, exit in "
        + (f"more than {STOP_GRACE_S:g} s" if exit_s is None else f"{exit_s:.2f} s")
    )
    result["goal"] = f"all get shutdown, exit 0 within {SHUTDOWN_GOAL_S:g} s"
    result["verdict"] = _verdict(
        told == len(everyone)
        and result["exit_status"] == 0
        and exit_s is not None
        and exit_s <= SHUTDOWN_GOAL_S
    )
    return result


def run_who(
    server: BenchServer, loop: Loop, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    crowd = Crowd(loop)
    token = crowd.token
    members = [crowd.bulk(f"m{token}-{i}") for i in range(args.who_members)]
    attackers = [crowd.bulk(f"a{token}-{i}") for i in range(args.attackers)]
    who = frame({"type": "who"})
    attack = who * max(1, args.who_bytes // len(who))
    result: dict[str, Any] = {
        "scenario": "who",
        "sizes": f"{args.who_members + args.attackers} in the room, {args.attackers} attackers "
        f"x {len(attack):,} bytes of who ({len(attack) // len(who)} frames)",
    }
    if crowd.join([*members, *attackers], deadline) is None:
        result["failures"] = ["could not join the room", *crowd.refused, *crowd.dropped[:5]]
        return result
    # Let the joins' garbage settle before the baseline.
    quiet = time.monotonic() + 1.0
    loop.run_until(lambda: time.monotonic() >= quiet, deadline)
    baseline = server.memory_kb("VmRSS")
    hwm_before = server.memory_kb("VmHWM")
    samples: list[int] = []
    for conn in attackers:
        loop.set_reading(conn, False)  # never reads again
        conn.state = "leaving"
        loop.send(conn, attack)
    sent_at = time.monotonic()
    close_at = sent_at + args.who_hold
    end = close_at + args.who_watch
    closed = False

    def tick() -> float:
        nonlocal closed
        rss = server.memory_kb("VmRSS")
        if rss is not None:
            samples.append(rss)
        if not closed and time.monotonic() >= close_at:
            closed = True
            for i, conn in enumerate(attackers):
                loop.close(conn, "the attacker left", reset=i % 2 == 1)
        return SAMPLE_EVERY_S

    loop.run_until(lambda: time.monotonic() >= end, deadline, tick)
    hwm_after = server.memory_kb("VmHWM")
    if baseline is None or hwm_after is None or hwm_before is None or not samples:
        result["failures"] = ["could not read the server's memory"]
        return result
    peak = max(samples)
    if hwm_after > hwm_before:
        peak = max(peak, hwm_after)  # the kernel saw a peak between two samples
    growth_kb = peak - baseline
    bound_kb = args.attackers * args.queue_bound // 1024
    result.update(
        baseline_rss_kb=baseline,
        peak_rss_kb=peak,
        growth_kb=growth_kb,
        bound_kb=bound_kb,
        end_rss_kb=samples[-1],
        members_dropped=_gone_members(members),
    )
    result["measured"] = (
        f"peak RSS {peak / 1024:.1f} MB, growth {growth_kb / 1024:.1f} MB "
        f"(from {baseline / 1024:.1f} MB; {samples[-1] / 1024:.1f} MB at the end)"
    )
    result["goal"] = f"growth <= {bound_kb / 1024:g} MB ({args.attackers} x the slow-reader bound)"
    result["verdict"] = _verdict(growth_kb <= bound_kb)
    return result


RUNNERS = {"flood": run_flood, "shutdown": run_shutdown, "who": run_who}


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    try:
        server = start_server(args.server_cwd)
    except ServerStartError as exc:
        return {"scenario": name, "failures": [str(exc)]}
    loop = Loop(server.port, server.gone)
    result: dict[str, Any] = {"scenario": name}
    try:
        result = RUNNERS[name](server, loop, args, time.monotonic() + args.timeout)
    finally:
        if name != "shutdown":
            loop.stopping = True
        failures = result.setdefault("failures", [])
        failures.extend(loop.failures)
        tail = server.log_tail()
        failures.extend(server.stop(_StopAdapter(loop)))
        if tail:
            result["server_stderr"] = tail.strip().splitlines()[-5:]
    return result


# --------------------------------------------------------------------------
# Report and command line

COLUMNS = ("scenario", "sizes", "measured", "goal", "verdict")


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)]
    for result in results:
        cells = [str(result.get(key, "-")) for key in COLUMNS]
        if result.get("failures") and "verdict" not in result:
            cells[-1] = "did not run: " + "; ".join(result["failures"])
        rows.append([" ".join(cell.split()).replace("|", "/") for cell in cells])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def details(result: dict[str, Any]) -> str:
    """The other numbers of a scenario, one line."""
    ranges = ("delay_ms", "flood_lag_ms", "generator_round_ms", "bystander_stall_ms")
    skip = {*COLUMNS, *ranges}
    parts = [
        f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in result.items()
        if key not in skip and value is not None
    ]
    for key in ranges:
        value = result.get(key)
        if value:
            parts.append(f"{key}=" + "/".join(f"{value[k]:.1f}" for k in ("p50", "p99", "max")))
    return f"- {result['scenario']}: " + ", ".join(parts)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value

    return parse


def _scenarios(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in SCENARIOS for name in names):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SCENARIOS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.bench.hostile",
        description="Measure the chat server under hostile load on loopback.",
    )
    add = parser.add_argument
    add("--scenario", type=_scenarios, default=list(SCENARIOS), help="comma-separated, of "
        f"{', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    add("--members", type=_positive(int), default=2000, help="room size in flood and shutdown")
    add("--flooders", type=_positive(int), default=50, help="flooding clients")
    add("--seconds", type=_positive(float), default=20.0, help="seconds of flood")
    add("--interval", type=_positive(float), default=0.05, help="seconds between the "
        "bystander's messages")  # fmt: skip
    add("--shutdown-after", type=_positive(float), default=5.0, help="seconds of flood before "
        "SIGINT in shutdown")  # fmt: skip
    add("--who-members", type=_positive(int), default=4000, help="room size in who")
    add("--attackers", type=_positive(int), default=2, help="clients sending who in who")
    add("--who-bytes", type=_positive(int), default=4096, help="bytes of who frames per attacker")
    add("--who-hold", type=_positive(float), default=0.5, help="seconds an attacker stays "
        "before it closes")  # fmt: skip
    add("--who-watch", type=_positive(float), default=3.0, help="seconds of RSS sampling after")
    add("--queue-bound", type=_positive(int), default=1 << 20, help="the server's slow-reader "
        "bound in bytes (default: 1 MiB, the server's default)")  # fmt: skip
    add("--timeout", type=_positive(float), default=300.0, help="seconds per scenario at most")
    add("--server-cwd", type=Path, default=ROOT, help="where to run python -m server "
        "(default: this checkout)")  # fmt: skip
    add("--json", type=Path, metavar="FILE", help="also write the raw numbers here")
    add("--bystander-port", type=_positive(int), help="(internal) be the flood's bystander "
        "process, for the server on this port")  # fmt: skip
    add("--bystander-token", default="", help="(internal) the flood's name token")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bystander_port is not None:
        return bystander_main(args)
    raise_open_file_limit(max(args.members + args.flooders, args.who_members) + 512)
    results = [run_scenario(name, args) for name in args.scenario]
    words = sys.argv[1:] if argv is None else argv
    print(markdown_table(results))
    print()
    for result in results:
        print(details(result))
    print()
    print("Command:", shlex.join(["python3", "-m", "tests.bench.hostile", *words]))
    server = shlex.join(server_command(0)).replace(" 0 ", " <free> ")
    print("Server:", server, "in", args.server_cwd)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 1 if any("verdict" not in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
