"""Server benchmark: the real chat server under load from a one-process client engine.

Run from the project root::

    python3 -m tests.bench.server_bench                   # fanout, paced and conns
    python3 -m tests.bench.server_bench --workloads fanout --server-arg=--io-threads=2
    python3 -m tests.bench.server_bench --clients 20 --senders 4 --messages 200 \\
        --duration 2 --conns 200                          # a quick run
    python3 -m tests.bench.server_bench --port 5050 --server-pid 1234   # a server you started

Each workload gets a fresh ``python -m server --host 127.0.0.1 --port <free>
--no-rate-limit --log-level warning`` (plus every ``--server-arg``), stopped
with SIGINT afterwards. With ``--port`` and ``--server-pid`` it uses that
server instead, and leaves it running. Only loopback addresses are accepted.

The numbers mean something only when the machine is otherwise idle: on a
2-core machine the server takes one core and this generator the other. Where
the generator's CPU is near 100 %, the generator, not the server, set the pace.

Workloads (sizes are flags; ``--timeout`` bounds each one, joins included):

- ``fanout``: ``--clients`` join one room; ``--senders`` of them send
  ``--messages`` each as fast as the server takes them, at most ``--window``
  in flight per sender (until the sender reads its own echo); everyone reads
  everything. Its latency is mostly the window waiting its turn (about
  window / each sender's rate): compare it between runs, and read ``paced``
  for the latency of a room that is not saturated.
- ``paced``: the same room, ``--rate`` messages a second in total for
  ``--duration`` seconds, spread over the senders, sent on schedule whether
  or not the server keeps up.
- ``conns``: ``--conns`` clients connect and join, at most 8 logins in
  progress at once (a crowd arriving); then the first one sends one message.
  10,000 works: the open-file limit is raised, and the server's default
  ``--max-clients`` is 10,000.

``--tls tls`` makes every benchmark client speak TLS 1.3 (the server in its
default ``--tls auto``), ``--tls both`` runs each workload plaintext, then
over TLS, the rows named ``fanout`` and ``fanout+tls``. ``--store off`` starts
each server with ``--no-store`` (history in memory only), ``--store both``
runs each workload with the history on disk, then without (rows named
``fanout`` and ``fanout no-store``). Each server started
gets a temporary ``--data-dir``, so its identity is made afresh and the
user's own is never touched. A TLS client is an ``ssl.SSLObject`` over two
memory buffers on the same non-blocking socket: it encrypts per write and
decrypts per read, as the server does.

Every client reads all along and answers the server's ``ping``: a client that
stopped reading would be dropped as too slow. Before sending, each workload
waits until every ``joined`` frame has arrived (N(N-1)/2 of them), so that
presence traffic is not in the measured stretch. Once everything is sent, a
run ends when everything has arrived, or after 5 s without a delivery.

Columns of the table:

- deliveries/s: messages received, summed over all clients (the sender's echo
  counts), from the first send to the last delivery.
- latency: send to receipt, as this process saw it (the send time travels in
  the text ``b<run> <sender> <seq> <ns>``); p50 / p99 / max in ms.
- losses: deliveries expected but never seen. reorders / gaps: a message that
  came after a later one from its sender (or twice) / a jump over missing
  ones. Both are checked per receiver and per sender.
- server CPU s (%): the server's user + system time (/proc/PID/stat) over
  the measured stretch (from the first send; in ``conns``, from the first
  connect), and that as a share of one core; s/M: CPU seconds per million
  deliveries. generator CPU %: the same share for this process.
- server peak RSS: VmHWM at the end of the workload.
- joined in s: from the first connect until every client has its welcome.
- ms/join: in ``conns``, the server's CPU over that stretch, per client (its
  TLS handshake included, over TLS).
- kB/conn: growth of the server's RSS from before the first connect to after
  every ``joined`` frame has arrived, per connection.
- probe ms: from the one message in ``conns`` to the moment the last client
  has it.

The raw numbers go to ``--json FILE``. The exit status is 1 when a workload
failed (the server died or refused a client, a client was dropped, time ran
out) or anything was lost or reordered.

The engine shares no code with ``server.protocol``, so that it checks the
server rather than mirroring it. It runs every connection from one thread
with non-blocking sockets: a read takes up to 256 KiB, walks the length
prefixes, and finds the benchmark's messages with one regular-expression
scan of all complete frames; JSON is parsed only for the rare chunk that
holds anything else (welcome, error, ping, left, shutdown).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import math
import os
import re
import resource
import selectors
import shlex
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("fanout", "paced", "conns")

# PROTOCOL.md: the largest payload a server frame may carry.
MAX_SERVER_FRAME = 1 << 20
# One system call then carries a few thousand message frames.
RECV_SIZE = 256 * 1024
# Like a crowd arriving: a few logins at a time, not all at once.
LOGINS_AT_ONCE = 8
# Once everything is sent, this long without a delivery means the rest is lost.
QUIET_S = 5.0
# How often the event loop looks at the server process (select's longest wait).
CHECK_EVERY_S = 0.25
# SIGINT to exit, after which the server is killed (PROTOCOL.md promises 2 s).
STOP_GRACE_S = 5.0
# From start to accepting; the server needs well under a second.
READY_WAIT_S = 15.0

CONNECTING, HANDSHAKE, LOGIN, JOINED, CLOSED = range(5)
STATE_NAMES = ("connecting", "in the TLS handshake", "logging in", "joined", "closed")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_unpack_length = struct.Struct(">I").unpack_from
SAY = b'{"type":"say","text":"b%s %d %d %d"}'


def frame(obj: dict[str, Any]) -> bytes:
    """``obj`` as one frame: a 4-byte big-endian length, then UTF-8 JSON."""
    payload = json.dumps(obj).encode()
    return len(payload).to_bytes(4, "big") + payload


def frames_end(buf: bytes) -> tuple[int, int]:
    """Where the last complete frame in ``buf`` ends, and how many frames end there.

    Raises ValueError on a length the protocol forbids.
    """
    pos = count = 0
    size = len(buf)
    while size - pos >= 4:
        (length,) = _unpack_length(buf, pos)
        if not 0 < length <= MAX_SERVER_FRAME:
            raise ValueError(f"the server sent a frame length of {length}")
        end = pos + 4 + length
        if end > size:
            break
        pos = end
        count += 1
    return pos, count


class _Successor(dict[bytes, bytes]):
    """``b"41"`` -> ``b"42"``, remembered: the order check compares digits as bytes."""

    def __missing__(self, key: bytes) -> bytes:
        value = b"%d" % (int(key) + 1)
        self[key] = value
        return value


class Client:
    """One connection. ``expect`` maps a sender id to the sequence number due
    next from it, both as the ASCII digits the message text carries."""

    __slots__ = (
        "expect",
        "name",
        "rbuf",
        "received",
        "sent",
        "sid",
        "sid_key",
        "sock",
        "state",
        "tls",
        "tls_in",
        "tls_out",
        "wbuf",
        "writing",
    )

    def __init__(self, name: str, sid: int | None, senders: int) -> None:
        self.name = name
        self.sid = sid
        self.sid_key = None if sid is None else b"%d" % sid
        self.expect = {b"%d" % s: b"0" for s in range(senders)}
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.rbuf = b""
        self.wbuf = bytearray()
        self.writing = False
        self.received = self.sent = 0
        self.tls: ssl.SSLObject | None = None
        self.tls_in = self.tls_out = None


class Engine:
    """Every client connection of one workload, driven from this one thread.

    ``gone`` says why the server is no longer there (None while it is).
    """

    def __init__(
        self,
        family: int,
        sockaddr: tuple[Any, ...],
        gone: Callable[[], str | None],
        *,
        tls: bool = False,
    ) -> None:
        self.family, self.sockaddr, self.gone = family, sockaddr, gone
        self.tls_context: ssl.SSLContext | None = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the benchmark trusts its own server
            self.tls_context = context
        token = os.urandom(3).hex()
        self.token = token.encode()
        self.name_prefix = f"u{token}-"
        self.text_re = re.compile(rb'"b' + self.token + rb' ([0-9]+) ([0-9]+) ([0-9]+)"')
        self.slow_text_re = re.compile(f"b{token} ([0-9]+) ([0-9]+) ([0-9]+)", re.ASCII)
        self.selector = selectors.DefaultSelector()
        self.clients: list[Client] = []
        self.successor = _Successor()
        self.t0 = time.perf_counter_ns()
        self.latencies = array("q")
        self.delivered = self.joined_frames = self.welcomed = self.shutdowns = 0
        self.logins = self.next_login = 0
        self.last_delivery = self.last_send = 0
        self.window = self.quota = 0
        self.gaps: Counter[int] = Counter()
        self.reorders: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.left: dict[str, str] = {}
        self.stopping = False

    # -- the clock: nanoseconds since the engine started, as the texts carry it

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.t0

    def idle_s(self) -> float:
        """Seconds since the last send or delivery."""
        return (self.now_ns() - max(self.last_delivery, self.last_send)) / 1e9

    # -- connections

    def add_clients(self, count: int, senders: int) -> None:
        """``count`` clients, not yet connected; the first ``senders`` send."""
        self.clients = [
            Client(f"{self.name_prefix}{i}", i if i < senders else None, senders)
            for i in range(count)
        ]

    def start_logins(self) -> None:
        while (
            self.logins < LOGINS_AT_ONCE
            and self.next_login < len(self.clients)
            and not self.failures
        ):
            self._connect(self.clients[self.next_login])
            self.next_login += 1

    def _connect(self, client: Client) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.sockaddr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            client.state = CLOSED
            self.failures[f"connect failed: {os.strerror(err)}"] += 1
            return
        client.sock = sock
        client.writing = True
        self.selector.register(sock, WRITE, client)
        self.logins += 1

    def _drop(self, client: Client, why: str) -> None:
        if client.sock is None:
            return
        if client.state in (CONNECTING, HANDSHAKE, LOGIN):
            self.logins -= 1
        if not self.stopping:
            self.failures[f"{why} ({STATE_NAMES[client.state]})"] += 1
        self.selector.unregister(client.sock)
        client.sock.close()
        client.sock = None
        client.state = CLOSED

    def close(self) -> None:
        """Close every socket and the selector."""
        self.stopping = True
        for client in self.clients:
            if client.sock is not None:
                self.selector.unregister(client.sock)
                client.sock.close()
                client.sock = None
                client.state = CLOSED
        self.selector.close()

    # -- the event loop

    def timed_out(self, what: str) -> None:
        """Record that ``what`` ran out of time, unless something else failed first."""
        if not self.failures:
            self.failures[f"timeout while {what}"] += 1

    def run_until(
        self, done: Callable[[], bool], deadline: float, tick: Callable[[], float] | None = None
    ) -> bool:
        """Serve events until ``done()``: False on a failure or at ``deadline``
        (monotonic). ``tick`` runs every round and says how soon it wants the
        next one, in seconds."""
        next_check = 0.0
        while not done():
            now = time.monotonic()
            if self.failures or now >= deadline:
                return False
            if now >= next_check:
                why = self.gone()
                if why is not None:
                    self.failures[why] += 1
                    return False
                next_check = now + CHECK_EVERY_S
            wait = min(deadline - now, CHECK_EVERY_S)
            if tick is not None:
                wait = min(wait, tick())
            self.pump(max(wait, 0.0))
        return True

    def pump(self, timeout: float) -> None:
        """Handle whatever is ready, waiting at most ``timeout`` seconds."""
        for key, mask in self.selector.select(timeout):
            client = key.data
            if mask & READ:
                self._read(client)
            if mask & WRITE and client.sock is not None:
                self._write(client)

    def _write(self, client: Client) -> None:
        if client.state == CONNECTING:
            err = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._drop(client, f"connect failed: {os.strerror(err)}")
                return
            self.selector.modify(client.sock, READ, client)
            client.writing = False
            if self.tls_context is None:
                self._hello(client)
                return
            client.state = HANDSHAKE
            client.tls_in, client.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            client.tls = self.tls_context.wrap_bio(client.tls_in, client.tls_out)
            self._handshake(client)
        else:
            self._flush(client)

    def _hello(self, client: Client) -> None:
        client.state = LOGIN
        self._queue(client, frame({"type": "hello", "name": client.name, "protocol": 1}))

    def _handshake(self, client: Client) -> None:
        try:
            client.tls.do_handshake()
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            self._drop(client, f"TLS handshake failed: {exc.reason or exc}")
            return
        else:
            done = True
        client.wbuf += client.tls_out.read()
        self._flush(client)
        if done and client.sock is not None:
            self._hello(client)

    def _queue(self, client: Client, data: bytes) -> None:
        if client.tls is not None:
            client.tls.write(data)
            data = client.tls_out.read()
        client.wbuf += data
        self._flush(client)

    def _flush(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.wbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._drop(client, f"send failed: {exc.strerror or exc}")
            return
        del client.wbuf[:sent]
        want = bool(client.wbuf)
        if want != client.writing:
            self.selector.modify(client.sock, READ | WRITE if want else READ, client)
            client.writing = want

    # -- receiving

    def _read(self, client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, f"receive failed: {exc.strerror or exc}")
            return
        if not data:
            self._drop(client, "closed by the server")
            return
        if client.tls is not None:
            data = self._decrypt(client, data)
            if not data:
                return
        now = self.now_ns()
        buf = client.rbuf + data if client.rbuf else data
        try:
            end, count = frames_end(buf)
        except ValueError as exc:
            self._drop(client, str(exc))
            return
        client.rbuf = buf[end:]
        if not count:
            return
        if client.state == JOINED:
            # The hot path: a chunk of nothing but our messages and presence.
            # Names cannot hold a quote, so '"joined"' is only ever a type.
            found = self.text_re.findall(buf, 0, end)
            joined = buf.count(b'"joined"', 0, end)
            if len(found) + joined == count:
                if found:
                    self._account(client, found, now)
                self.joined_frames += joined
                self._top_up(client)
                return
        self._slow(client, buf, end, now)
        if client.sock is not None:
            self._top_up(client)

    def _decrypt(self, client: Client, data: bytes) -> bytes:
        """What TLS records in ``data`` (and before it) carry; b"" for none yet."""
        client.tls_in.write(data)
        if client.state == HANDSHAKE:
            self._handshake(client)
            if client.state == HANDSHAKE or client.sock is None:
                return b""
        parts = []
        while True:
            try:
                part = client.tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as exc:
                self._drop(client, f"TLS failed: {exc.reason or exc}")
                return b""
            if not part:
                break
            parts.append(part)
        return b"".join(parts)

    def _account(self, client: Client, found: list[tuple[bytes, bytes, bytes]], now: int) -> None:
        expect, successor = client.expect, self.successor
        for sid, seq, _ in found:
            if expect.get(sid) == seq:
                expect[sid] = successor[seq]
            else:
                self._out_of_order(client, sid, seq)
        self.latencies.extend([now - int(sent) for _, _, sent in found])
        client.received += len(found)
        self.delivered += len(found)
        self.last_delivery = now

    def _out_of_order(self, client: Client, sid: bytes, seq: bytes) -> None:
        due = client.expect.get(sid)
        if due is None:
            self.failures[f"a message from sender {sid.decode()}, who does not exist"] += 1
        elif int(seq) > int(due):
            self.gaps[int(sid)] += int(seq) - int(due)
            client.expect[sid] = self.successor[seq]
        else:
            self.reorders[int(sid)] += 1

    def _slow(self, client: Client, buf: bytes, end: int, now: int) -> None:
        """Every frame of ``buf[:end]`` parsed as JSON and handled by type."""
        pos = 0
        while pos < end and client.sock is not None:
            (length,) = _unpack_length(buf, pos)
            payload = buf[pos + 4 : pos + 4 + length]
            pos += 4 + length
            try:
                obj = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self._drop(client, "the server sent a frame that is not UTF-8 JSON")
                return
            kind = obj.get("type") if isinstance(obj, dict) else None
            if not isinstance(kind, str):
                self._drop(client, "the server sent a frame without a string type")
                return
            if kind == "message":
                text = obj.get("text")
                match = self.slow_text_re.fullmatch(text) if isinstance(text, str) else None
                if match and not obj.get("history"):
                    sid, seq, sent = (group.encode() for group in match.groups())
                    self._account(client, [(sid, seq, sent)], now)
            elif kind == "joined":
                self.joined_frames += 1
            elif kind == "welcome" and client.state == LOGIN:
                client.state = JOINED
                self.logins -= 1
                self.welcomed += 1
                self.start_logins()
            elif kind == "error":
                self.failures[f"error {obj.get('code')} ({STATE_NAMES[client.state]})"] += 1
            elif kind == "ping":
                self._queue(client, frame({**obj, "type": "pong"}))
            elif kind == "left":
                name = obj.get("name")
                if isinstance(name, str) and name.startswith(self.name_prefix):
                    self.left[name] = str(obj.get("reason"))
            elif kind == "shutdown":
                self.shutdowns += 1

    # -- sending

    def say(self, client: Client, count: int) -> None:
        """Send ``count`` benchmark messages from ``client``, each stamped as it is made."""
        parts = []
        for seq in range(client.sent, client.sent + count):
            payload = SAY % (self.token, client.sid, seq, self.now_ns())
            parts.append(len(payload).to_bytes(4, "big") + payload)
        client.sent += count
        self.last_send = self.now_ns()
        self._queue(client, b"".join(parts))

    def _top_up(self, client: Client) -> None:
        """fanout: refill a sender's window from the echoes it has read."""
        if self.window and client.sid_key is not None:
            acked = int(client.expect[client.sid_key])
            room = min(self.window - (client.sent - acked), self.quota - client.sent)
            if room > 0:
                self.say(client, room)

    # -- results

    def drops(self) -> list[str]:
        """The server's reasons for dropping our clients, as its ``left`` frames said."""
        return [f"{n}x left as {why}" for why, n in Counter(self.left.values()).items()]


# --------------------------------------------------------------------------
# The server under test


class ServerStartError(Exception):
    """The server did not come up."""


def _proc_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


class Server:
    """The server under test: one this benchmark started (``process``) or one it was given."""

    def __init__(
        self,
        port: int,
        pid: int,
        process: subprocess.Popen[bytes] | None = None,
        log: BinaryIO | None = None,
        data_dir: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.port, self.pid, self.process, self.log = port, pid, process, log
        self.data_dir = data_dir

    @classmethod
    def start(cls, family: int, host: str, extra: Sequence[str]) -> Server:
        """``python -m server`` on a free port of ``host``, once it accepts connections."""
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        # The server's identity and whatever else it keeps: never the user's.
        data_dir = tempfile.TemporaryDirectory(prefix="server-bench-")  # stop() removes it
        command = [*server_command(host, str(port)), "--data-dir", data_dir.name, *extra]
        log = tempfile.TemporaryFile()  # noqa: SIM115 - stop() closes it
        process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )
        server = cls(port, process.pid, process, log, data_dir)
        deadline = time.monotonic() + READY_WAIT_S
        while True:
            if process.poll() is not None:
                tail = server.log_tail()
                server.stop(None)
                print(f"The server's standard error ends:{tail}", file=sys.stderr)
                last = tail.rsplit("\n", 1)[-1]
                raise ServerStartError(
                    f"the server exited with status {process.returncode}: {last}"
                )
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return server
            except OSError:
                if time.monotonic() >= deadline:
                    server.stop(None)
                    raise ServerStartError(
                        f"the server did not accept connections in {READY_WAIT_S:.0f} s"
                    ) from None
                time.sleep(0.05)

    def gone(self) -> str | None:
        """Why the server is not running, or None while it is."""
        if self.process is not None:
            status = self.process.poll()
            return None if status is None else f"server died (exit status {status})"
        try:
            state = _proc_fields(self.pid)[0]
        except OSError:
            state = "Z"
        return f"server process {self.pid} is gone" if state in ("Z", "X") else None

    def cpu_s(self) -> float | None:
        """The server's user + system CPU seconds so far (None once it is gone)."""
        try:
            fields = _proc_fields(self.pid)
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kb(self, field: str) -> int | None:
        """A /proc/PID/status figure in kB: VmRSS (now) or VmHWM (peak)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's standard error, or ""."""
        if self.log is None:
            return ""
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace").strip()
        return "\n" + "\n".join(text.splitlines()[-lines:]) if text else ""

    def stop(self, engine: Engine | None) -> list[str]:
        """Stop a server this benchmark started (SIGINT, then kill) and close
        ``engine``'s sockets; a given server is left running. Returns what
        went wrong."""
        if engine is not None:
            engine.stopping = True
        problems = []
        if self.process is not None and self.process.poll() is None:
            sent = time.monotonic()
            self.process.send_signal(signal.SIGINT)
            # The clients stay open and keep reading: the server's shutdown
            # frames must not fill up unread buffers.
            while engine is not None and self.process.poll() is None:
                if time.monotonic() - sent >= STOP_GRACE_S:
                    break
                engine.pump(0.05)
            try:
                self.process.wait(max(0.0, sent + STOP_GRACE_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                problems.append(f"server still running {STOP_GRACE_S:.0f} s after SIGINT: killed")
            else:
                if self.process.returncode != 0:
                    problems.append(f"server exit status {self.process.returncode} after SIGINT")
        if engine is not None:
            engine.close()
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.data_dir is not None:
            self.data_dir.cleanup()
            self.data_dir = None
        return problems


def server_command(host: str, port: str) -> list[str]:
    return [
        sys.executable, "-m", "server", "--host", host, "--port", port,
        "--no-rate-limit", "--log-level", "warning",
    ]  # fmt: skip


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall time and the CPU time of the server and of this process over one stretch."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.wall = time.perf_counter()
        self.server_cpu = server.cpu_s()
        self.own_cpu = _own_cpu_s()

    def read(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.wall
        server_now = self.server.cpu_s()
        server_cpu = (
            None if server_now is None or self.server_cpu is None else server_now - self.server_cpu
        )
        return {
            "measured_s": wall,
            "server_cpu_s": server_cpu,
            "server_cpu_pct": None if server_cpu is None else 100 * server_cpu / wall,
            "generator_cpu_pct": 100 * (_own_cpu_s() - self.own_cpu) / wall,
        }


# --------------------------------------------------------------------------
# Workloads


def percentiles_ms(samples: Sequence[int]) -> dict[str, float] | None:
    """p50, p99 (nearest rank) and max of nanosecond samples, in ms."""
    if not samples:
        return None
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1e6

    return {"p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1] / 1e6}


def _join(
    engine: Engine, count: int, senders: int, deadline: float, result: dict[str, Any]
) -> bool:
    """Bring ``count`` clients in; then wait until every ``joined`` frame has
    arrived, so that what follows is measured without presence traffic."""
    engine.add_clients(count, senders)
    started = time.monotonic()
    engine.start_logins()
    if not engine.run_until(lambda: engine.welcomed == count, deadline):
        engine.timed_out("joining")
        result["joined"] = engine.welcomed
        return False
    result["joined"] = count
    result["joined_in_s"] = time.monotonic() - started
    pairs = count * (count - 1) // 2
    if not engine.run_until(lambda: engine.joined_frames >= pairs, deadline):
        engine.timed_out("waiting for joined frames")
        return False
    result["presence_settled_in_s"] = time.monotonic() - started
    return True


def _delivery_stats(
    engine: Engine, messages: int, started_ns: int, meter: dict[str, Any]
) -> dict[str, Any]:
    """The numbers of a run in which every client should receive ``messages``."""
    span_s = (engine.last_delivery - started_ns) / 1e9
    cpu = meter["server_cpu_s"]
    return {
        "expected": messages * len(engine.clients),
        "delivered": engine.delivered,
        # Per client, so that one client's duplicate cannot hide another's loss.
        "losses": sum(max(0, messages - client.received) for client in engine.clients),
        "reorders": sum(engine.reorders.values()),
        "gaps": sum(engine.gaps.values()),
        "per_sender": {
            str(sid): {"reorders": engine.reorders[sid], "gaps": engine.gaps[sid]}
            for sid in sorted(engine.reorders.keys() | engine.gaps.keys())
        },
        "deliveries_per_s": engine.delivered / span_s if engine.delivered and span_s > 0 else None,
        "latency_ms": percentiles_ms(engine.latencies),
        "server_cpu_s_per_m": (
            cpu / (engine.delivered / 1e6) if cpu is not None and engine.delivered else None
        ),
        **meter,
    }


def _settled(engine: Engine, expected: int, all_sent: Callable[[], bool]) -> Callable[[], bool]:
    """Done when everything arrived, or when nothing more came for a while after the last send."""
    return lambda: engine.delivered >= expected or (engine.idle_s() > QUIET_S and all_sent())


def run_fanout(
    engine: Engine, server: Server, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "clients": args.clients,
        "senders": args.senders,
        "messages_per_sender": args.messages,
        "window": args.window,
    }
    if not _join(engine, args.clients, args.senders, deadline, result):
        return result
    senders = engine.clients[: args.senders]
    expected = args.senders * args.messages * args.clients
    engine.window, engine.quota = args.window, args.messages
    meter = Meter(server)
    started = engine.now_ns()
    for client in senders:
        engine.say(client, min(args.window, args.messages))
    finished = engine.run_until(
        _settled(engine, expected, lambda: all(c.sent == args.messages for c in senders)),
        deadline,
    )
    result.update(_delivery_stats(engine, args.senders * args.messages, started, meter.read()))
    if not finished:
        engine.timed_out("delivering")
    return result


def run_paced(
    engine: Engine, server: Server, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    total = round(args.rate * args.duration)
    result: dict[str, Any] = {
        "clients": args.clients,
        "senders": args.senders,
        "rate": args.rate,
        "duration_s": args.duration,
        "messages": total,
    }
    if not _join(engine, args.clients, args.senders, deadline, result):
        return result
    senders = engine.clients[: args.senders]
    expected = total * args.clients
    meter = Meter(server)
    started, started_ns = time.monotonic(), engine.now_ns()
    sent = 0

    def tick() -> float:
        # Open loop: whatever is due goes out now, even when the server lags.
        nonlocal sent
        now = time.monotonic()
        while sent < total and started + sent / args.rate <= now:
            engine.say(senders[sent % len(senders)], 1)
            sent += 1
        return started + sent / args.rate - now if sent < total else CHECK_EVERY_S

    finished = engine.run_until(_settled(engine, expected, lambda: sent == total), deadline, tick)
    result.update(_delivery_stats(engine, total, started_ns, meter.read()))
    if not finished:
        engine.timed_out("delivering")
    return result


def run_conns(
    engine: Engine, server: Server, args: argparse.Namespace, deadline: float
) -> dict[str, Any]:
    count = args.conns
    result: dict[str, Any] = {"clients": count, "rss_before_kb": server.memory_kb("VmRSS")}
    meter = Meter(server)
    if not _join(engine, count, 1, deadline, result):
        result.update(meter.read())
        return result
    joining = meter.read()["server_cpu_s"]
    if joining is not None:
        result["server_cpu_ms_per_join"] = 1000 * joining / count
    result["rss_after_kb"] = after = server.memory_kb("VmRSS")
    before = result["rss_before_kb"]
    if before is not None and after is not None:
        result["kb_per_conn"] = (after - before) / count
    engine.say(engine.clients[0], 1)
    finished = engine.run_until(_settled(engine, count, lambda: True), deadline)
    result.update(meter.read())
    result["probe_reached"] = reached = sum(1 for client in engine.clients if client.received)
    result["losses"] = count - reached
    result["reorders"] = sum(engine.reorders.values())
    result["gaps"] = sum(engine.gaps.values())
    if engine.latencies:
        # Every client's latency runs from the same send: the largest is the last arrival.
        result["probe_ms"] = max(engine.latencies) / 1e6
    if not finished:
        engine.timed_out("probing")
    return result


RUNNERS = {"fanout": run_fanout, "paced": run_paced, "conns": run_conns}


def run_workload(
    name: str,
    args: argparse.Namespace,
    family: int,
    sockaddr: tuple[Any, ...],
    *,
    tls: bool,
    store: bool = True,
) -> dict[str, Any]:
    """One workload on a fresh server (or the given one at ``args.port``) at
    ``sockaddr``'s address, its clients over TLS if ``tls``, its history on
    disk if ``store`` (else ``--no-store``); its numbers and failures."""
    label = name + ("+tls" if tls else "") + ("" if store else " no-store")
    result: dict[str, Any] = {"workload": label, "tls": tls, "store": store}
    failures: list[str] = []
    try:
        if args.port is None:
            extra = args.server_arg if store else [*args.server_arg, "--no-store"]
            server = Server.start(family, sockaddr[0], extra)
        else:
            server = Server(args.port, args.server_pid)
    except ServerStartError as exc:
        result["failures"] = [str(exc)]
        result["ok"] = False
        return result
    result["server_pid"] = server.pid
    engine = Engine(family, (sockaddr[0], server.port, *sockaddr[2:]), server.gone, tls=tls)
    try:
        result.update(RUNNERS[name](engine, server, args, time.monotonic() + args.timeout))
        result["server_peak_rss_kb"] = server.memory_kb("VmHWM")
    except Exception as exc:
        traceback.print_exc()
        failures.append(f"benchmark error: {type(exc).__name__}: {exc}")
    finally:
        # Its clients may have seen the server go before the engine looked at it.
        if (why := server.gone()) is not None and why not in engine.failures:
            failures.append(why)
        result["left_seen"] = engine.left
        failures.extend(f"{n}x {why}" if n > 1 else why for why, n in engine.failures.items())
        failures.extend(engine.drops())
        tail = server.log_tail()
        failures.extend(server.stop(engine))
        result["shutdown_frames"] = engine.shutdowns
        if tail:
            print(f"{name}: the server's standard error ends:{tail}", file=sys.stderr)
    for key, what in (("losses", "lost"), ("reorders", "reordered"), ("gaps", "in gaps")):
        if result.get(key):
            failures.append(f"{result[key]:,} {what}")
    result["failures"] = failures
    result["ok"] = not failures
    return result


# --------------------------------------------------------------------------
# Report

COLUMNS = (
    "workload",
    "clients",
    "deliveries/s",
    "latency p50 / p99 / max ms",
    "losses",
    "reorders / gaps",
    "server CPU s (%)",
    "server CPU s/M deliveries",
    "generator CPU %",
    "server peak RSS MB",
    "joined in s",
    "ms/join",
    "kB/conn",
    "probe ms",
    "result",
)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cpu(seconds: float | None, percent: float | None) -> str:
    return "-" if seconds is None or percent is None else f"{seconds:.2f} ({percent:.0f} %)"


def table_row(result: dict[str, Any]) -> list[str]:
    latency = result.get("latency_ms")
    peak = result.get("server_peak_rss_kb")
    reorders = result.get("reorders")
    status = "ok" if result["ok"] else "FAILED: " + "; ".join(result["failures"])
    return [
        result["workload"],
        _number(result.get("clients"), "d"),
        _number(result.get("deliveries_per_s"), ",.0f"),
        "-" if latency is None else " / ".join(f"{latency[k]:.1f}" for k in ("p50", "p99", "max")),
        _number(result.get("losses"), ",d"),
        "-" if reorders is None else f"{reorders} / {result['gaps']}",
        _cpu(result.get("server_cpu_s"), result.get("server_cpu_pct")),
        _number(result.get("server_cpu_s_per_m"), ".2f"),
        _number(result.get("generator_cpu_pct"), ".0f"),
        _number(None if peak is None else peak / 1024, ".1f"),
        _number(result.get("joined_in_s"), ".2f"),
        _number(result.get("server_cpu_ms_per_join"), ".3f"),
        _number(result.get("kb_per_conn"), ".1f"),
        _number(result.get("probe_ms"), ".1f"),
        " ".join(status.split()).replace("|", "/"),
    ]


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), ["---"] * len(COLUMNS), *map(table_row, results)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


# --------------------------------------------------------------------------
# Command line


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value

    return parse


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(WORKLOADS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.bench.server_bench",
        description="Benchmark the chat server on loopback: fan-out, paced latency, many joins.",
        epilog="Leave the machine's other core free while it runs.",
    )
    add = parser.add_argument
    add("--workloads", type=_workloads, default=list(WORKLOADS), help="comma-separated, of "
        f"{', '.join(WORKLOADS)} (default: all)")  # fmt: skip
    add("--clients", type=_positive(int), default=100, help="room size in fanout and paced")
    add("--senders", type=_positive(int), default=10, help="clients that send, of --clients")
    add("--messages", type=_positive(int), default=2000, help="messages per sender in fanout")
    add("--window", type=_positive(int), default=50, help="most messages in flight per sender")
    add("--rate", type=_positive(float), default=200.0, help="messages a second in paced")
    add("--duration", type=_positive(float), default=10.0, help="seconds of paced sending")
    add("--conns", type=_positive(int), default=1000, help="clients that join in conns")
    add("--timeout", type=_positive(float), default=120.0, help="seconds per workload at most")
    add("--host", default="127.0.0.1", help="a loopback address (default: %(default)s)")
    add("--port", type=int, help="use the server already listening here (needs --server-pid)")
    add("--server-pid", type=int, help="that server's process id (for its CPU and memory)")
    add("--server-arg", action="append", default=[], metavar="ARG",
        help="one more argument for the server, as --server-arg=--io-threads=2")  # fmt: skip
    add("--tls", choices=("plain", "tls", "both"), default="plain", help="clients in "
        "plaintext, over TLS, or each workload both ways (default: %(default)s)")  # fmt: skip
    add("--store", choices=("on", "off", "both"), default="on", help="the server's history "
        "on disk (its default), in memory (--no-store), or each workload both ways "
        "(default: %(default)s)")  # fmt: skip
    add("--json", type=Path, metavar="FILE", help="also write the raw numbers here")
    return parser


def loopback_address(host: str) -> tuple[int, tuple[Any, ...]]:
    """The address family and socket address of ``host``; ValueError unless loopback."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host}: {exc}") from None
    for _, _, _, _, sockaddr in infos:
        if not ipaddress.ip_address(sockaddr[0]).is_loopback:
            raise ValueError(f"{host} is not a loopback address: this benchmark stays on loopback")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def raise_open_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        print(f"warning: at most {target} open files (hard limit)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.port is None) != (args.server_pid is None):
        parser.error("--port and --server-pid go together")
    if args.port is not None and args.server_arg:
        parser.error("--server-arg is for a server the benchmark starts, not with --port")
    if args.senders > args.clients:
        parser.error("--senders cannot be more than --clients")
    try:
        family, sockaddr = loopback_address(args.host)
    except ValueError as exc:
        parser.error(str(exc))
    # Every client is a file descriptor here (and the server raises its own limit).
    raise_open_file_limit(max(args.conns, args.clients) + 256)
    kinds = {"plain": [False], "tls": [True], "both": [False, True]}[args.tls]
    stores = {"on": [True], "off": [False], "both": [True, False]}[args.store]
    results = [
        run_workload(name, args, family, sockaddr, tls=tls, store=store)
        for name in args.workloads
        for tls in kinds
        for store in stores
    ]
    words = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python3", "-m", "tests.bench.server_bench", *words])
    print(markdown_table(results))
    print()
    print("Command:", command)
    if args.port is None:
        server = [*server_command(sockaddr[0], "<free port>"), *args.server_arg]
        print("Server (one per workload):", " ".join(server))
    ok = all(result["ok"] for result in results)
    if args.json is not None:
        report = {"command": command, "ok": ok, "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
