"""Soak benchmark: clients come and go in every way for a while; does the server stay whole?

Run from the project root (not part of the unit tests)::

    python3 -m tests.bench.soak --minutes 10
    python3 -m tests.bench.soak --minutes 10 --server-cwd /work/main   # another checkout

A fresh ``python -m server --host 127.0.0.1 --port <free> --log-level
warning`` (default settings, rate limit on) runs in ``--server-cwd``.
``--clients`` slots churn: each opens a connection, does one thing and leaves
in its slot's way, then starts again. The slots are dealt the ways in turn,
so that each way has an eighth of them (taking turns instead, the ways that
wait for a server timeout would hold most slots most of the time). The ways:

- ``bye``: says one message, sends ``bye``, waits for the server to close.
- ``close`` / ``reset``: closes (FIN) / resets (RST) after a moment.
- ``half-close``: shuts its sending side; the server should close the rest.
- ``never-reading``: joins, stops reading, closes after a moment with unread
  data (which Linux turns into a reset).
- ``partial``: sends half of a frame, then closes.
- ``no-hello``: connects and says nothing; the server's handshake timeout
  (10 s) should close it.
- ``idle``: joins and neither sends nor answers ``ping``; the server's idle
  timeout (90 s) should drop it.

Where the server should close the connection, the slot waits for that (up to
``CAP_S`` past the timeout) and counts it when it does not.

Meanwhile a canary pair stays joined: each says a message every 200 ms, the
two offset by 100 ms (an exchange every 100 ms, each under the rate limit),
and both check they see every message of both. Every ``--report-every``
seconds (30) a line gives the server's RSS, open fds and threads, and the
canaries' missed messages and worst latency. At the end the churn stops, the
server is given a moment to close what it holds, and a summary compares the
start with the end: after the churn the server should be back to the fds it
had with only the canaries joined.

The engine and framing are ``tests.bench.hostile``'s (one selector, this
thread, every wait bounded).
"""

from __future__ import annotations

import argparse
import random
import shlex
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench.hostile import (
    _MARKER_TAIL,
    _MARKS,
    PONG,
    ROOT,
    Conn,
    Crowd,
    Loop,
    ServerStartError,
    _StopAdapter,
    frame,
    open_fds,
    percentiles_ms,
    raise_open_file_limit,
    server_command,
    start_server,
)
from tests.bench.server_bench import Server as BenchServer

WAYS = ("bye", "close", "reset", "half-close", "never-reading", "partial", "no-hello", "idle")
# The server closes these itself; the seconds its timeout takes (0: at once).
SERVER_CLOSES = {"bye": 0.0, "half-close": 0.0, "no-hello": 10.0, "idle": 90.0}
CAP_S = 10.0  # how long past that a slot waits before it counts a miss
LIFETIME_S = (0.2, 2.0)  # how long a client stays before it leaves its way
CANARY_EVERY_S = 0.2
GRACE_S = 2.0  # a canary message not seen this long after it was sent is missed
SETTLE_S = 5.0  # after the churn, how long the server gets to close what it holds


class Slot:
    """One churn client's current connection and what it is doing."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.cycle = 0
        self.way = WAYS[index % len(WAYS)]
        self.conn: Conn | None = None
        self.due = 0.0  # when it acts next (leaves, or gives up waiting)
        self.waiting_for_server = False


class Soak:
    def __init__(self, server: BenchServer, loop: Loop, args: argparse.Namespace) -> None:
        self.server, self.loop, self.args = server, loop, args
        self.random = random.Random(args.seed)
        self.crowd = Crowd(loop)
        self.token = token = self.crowd.token
        self.slots = [Slot(i) for i in range(args.clients)]
        self.cycles: Counter[str] = Counter()
        self.server_closed: Counter[str] = Counter()
        self.not_closed: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.churning = False
        # The canaries: messages sent (sender, seq) -> ns, and what each saw.
        self.canaries = self._canaries(token)
        self.canary_sent: dict[tuple[int, int], int] = {}
        self.canary_seen: list[dict[tuple[int, int], int]] = [{}, {}]
        self.canary_errors: Counter[str] = Counter()
        self.canary_lost = 0  # a canary connection the server closed
        self.canary_next = [0.0, 0.0]
        self.canary_seq = [0, 0]
        self.interval_worst_ns = 0

    # -- canaries

    def _canaries(self, token: str) -> list[Conn]:
        return [self.crowd.parsed(f"c{token}-{i}", self._canary_frame) for i in range(2)]

    def _canary_frame(self, conn: Conn, obj: dict[str, Any]) -> None:
        me = self.canaries.index(conn)
        kind = obj["type"]
        if kind == "error" and conn.joined:
            self.canary_errors[str(obj.get("code"))] += 1
        elif kind == "message" and not obj.get("history"):
            text = obj.get("text")
            parts = text.split() if isinstance(text, str) else []
            if len(parts) == 4 and parts[0] == f"c{self.token}":
                key = (int(parts[1]), int(parts[2]))
                latency = time.perf_counter_ns() - int(parts[3])
                self.canary_seen[me].setdefault(key, latency)
                self.interval_worst_ns = max(self.interval_worst_ns, latency)

    def canary_tick(self, now: float) -> float:
        wait = 1.0
        for i, conn in enumerate(self.canaries):
            if conn.sock is None:
                continue
            if now >= self.canary_next[i]:
                seq = self.canary_seq[i]
                sent = time.perf_counter_ns()
                text = f"c{self.token} {i} {seq} {sent}"
                self.loop.send(conn, frame({"type": "say", "text": text}))
                self.canary_sent[(i, seq)] = sent
                self.canary_seq[i] += 1
                self.canary_next[i] += CANARY_EVERY_S
            wait = min(wait, self.canary_next[i] - now)
        return max(0.0, wait)

    def canary_missed(self, older_than_ns: int) -> int:
        """Messages sent before ``older_than_ns`` that a canary has not seen."""
        return sum(
            1
            for key, sent in self.canary_sent.items()
            if sent < older_than_ns
            for seen in self.canary_seen
            if key not in seen
        )

    # -- churn

    def _start(self, slot: Slot, now: float) -> None:
        slot.cycle += 1
        slot.waiting_for_server = False
        slot.due = float("inf")  # set once joined (or connected, for no-hello)
        name = f"x{self.token}-{slot.index}-{slot.cycle % 1000}"
        conn = Conn(name, self._opened, self._data, self._closed)
        conn.state = slot
        slot.conn = conn
        self.loop.connect(conn)

    def _opened(self, conn: Conn) -> None:
        slot: Slot = conn.state
        if slot.way == "no-hello":
            self._wait_for_server(slot)
        else:
            self.loop.send(conn, frame({"type": "hello", "name": conn.name, "protocol": 1}))

    def _wait_for_server(self, slot: Slot) -> None:
        slot.waiting_for_server = True
        slot.due = time.monotonic() + SERVER_CLOSES[slot.way] + CAP_S

    def _data(self, conn: Conn, data: bytes) -> None:
        slot: Slot = conn.state
        window = conn.tail + data
        for kind, mark in _MARKS.items():
            found = window.count(mark) - (conn.tail.count(mark) if conn.tail else 0)
            conn.counts[kind] += found
            # idle never answers; a half-closed socket cannot.
            if kind == "ping" and found and slot.way != "idle" and not slot.waiting_for_server:
                self.loop.send(conn, PONG * found)
        conn.tail = window[-_MARKER_TAIL:]
        if slot.waiting_for_server:
            return  # an error now is the server's timeout, before it closes
        if not conn.joined and conn.counts["error"]:
            self.refused[slot.way] += 1
            self.loop.close(conn, "refused")
        elif not conn.joined and conn.counts["welcome"]:
            conn.joined = True
            self._joined(slot, conn)

    def _joined(self, slot: Slot, conn: Conn) -> None:
        low, high = LIFETIME_S
        if slot.way == "idle":
            self._wait_for_server(slot)
            return
        slot.due = time.monotonic() + self.random.uniform(low, high)
        if slot.way == "never-reading":
            self.loop.set_reading(conn, False)

    def _leave(self, slot: Slot) -> None:
        conn = slot.conn
        assert conn is not None and conn.sock is not None
        way = slot.way
        if slot.waiting_for_server:
            self.not_closed[way] += 1
            self.loop.close(conn, "the server did not close it")
        elif way == "bye":
            self.loop.send(conn, frame({"type": "say", "text": f"churn {slot.index}"}))
            self.loop.send(conn, frame({"type": "bye"}))
            self._wait_for_server(slot)
        elif way == "half-close":
            conn.sock.shutdown(socket.SHUT_WR)
            self._wait_for_server(slot)
        elif way == "partial":
            payload = b'{"type":"say","text":"never finished"}'
            self.loop.send(conn, len(payload).to_bytes(4, "big") + payload[:10])
            self.loop.close(conn, "left")
        else:
            self.loop.close(conn, "left", reset=way == "reset")

    def _closed(self, conn: Conn, why: str) -> None:
        slot: Slot = conn.state
        if why == "closed by the server" or why.startswith("receive failed"):
            if slot.waiting_for_server:
                self.server_closed[slot.way] += 1
            elif not self.loop.stopping:
                self.unexpected[f"{slot.way}: {why}"] += 1
        self.cycles[slot.way] += 1
        slot.conn = None
        slot.due = 0.0  # start again on the next tick

    def churn_tick(self, now: float) -> float:
        wait = 1.0
        for slot in self.slots:
            if slot.conn is None:
                if self.churning:
                    self._start(slot, now)
                continue
            if now >= slot.due and slot.conn.sock is not None:
                self._leave(slot)
            wait = min(wait, slot.due - now)
        return max(0.0, wait)

    def stop_churn(self) -> None:
        self.churning = False
        for slot in self.slots:
            if slot.conn is not None and slot.conn.sock is not None:
                self.loop.close(slot.conn, "the soak ended")


def sample(server: BenchServer) -> dict[str, int | None]:
    threads = None
    try:
        for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    return {"rss_kb": server.memory_kb("VmRSS"), "fds": open_fds(server.pid), "threads": threads}


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MB"


def run(args: argparse.Namespace) -> int:
    try:
        server = start_server(args.server_cwd)
    except ServerStartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 1
    loop = Loop(server.port, server.gone)
    soak = Soak(server, loop, args)
    failures: list[str] = []
    try:
        if soak.crowd.join(soak.canaries, time.monotonic() + 30) is None:
            failures.append("the canaries could not join")
            return 1
        start = sample(server)
        began = time.monotonic()
        print(
            f"start: rss {_mb(start['rss_kb'])}, fds {start['fds']}, threads {start['threads']}"
            f" (server pid {server.pid}, {args.clients} churning clients, canaries joined)",
            flush=True,
        )
        soak.churning = True
        soak.canary_next = [began, began + CANARY_EVERY_S / 2]
        end = began + args.minutes * 60
        next_report = began + args.report_every

        def tick() -> float:
            now = time.monotonic()
            return min(soak.canary_tick(now), soak.churn_tick(now), 0.05)

        while time.monotonic() < end:
            stop_at = min(end, next_report)
            loop.run_until(lambda: time.monotonic() >= stop_at, stop_at + 1, tick)  # noqa: B023
            if loop.failures:
                failures.extend(loop.failures)
                break
            if time.monotonic() >= next_report:
                now_ns = time.perf_counter_ns()
                numbers = sample(server)
                missed = soak.canary_missed(now_ns - int(GRACE_S * 1e9))
                print(
                    f"t={time.monotonic() - began:5.0f}s rss {_mb(numbers['rss_kb'])}, "
                    f"fds {numbers['fds']}, threads {numbers['threads']}, "
                    f"cycles {sum(soak.cycles.values())}, canary sent "
                    f"{len(soak.canary_sent)}, missed {missed}, "
                    f"worst latency {soak.interval_worst_ns / 1e6:.1f} ms",
                    flush=True,
                )
                soak.interval_worst_ns = 0
                next_report += args.report_every
        # The canaries go on while the churn stops and the server settles.
        soak.stop_churn()
        loop.stopping = True
        settle = time.monotonic() + SETTLE_S
        loop.run_until(
            lambda: time.monotonic() >= settle or open_fds(server.pid) == start["fds"],
            settle + 1,
            lambda: soak.canary_tick(time.monotonic()),
        )
        grace = time.monotonic() + GRACE_S
        sent_before = time.perf_counter_ns()
        loop.run_until(lambda: time.monotonic() >= grace, grace + 1)
        finish = sample(server)
        report(
            soak,
            start=start,
            finish=finish,
            sent_before=sent_before,
            seconds=time.monotonic() - began,
            failures=failures,
        )
    finally:
        loop.stopping = True
        failures.extend(server.stop(_StopAdapter(loop)))
        for problem in failures:
            print("problem:", problem)
    return 1 if failures else 0


def report(
    soak: Soak,
    *,
    start: dict[str, int | None],
    finish: dict[str, int | None],
    sent_before: int,
    seconds: float,
    failures: list[str],
) -> None:
    latencies = [ns for seen in soak.canary_seen for ns in seen.values()]
    lat = percentiles_ms(latencies)
    missed = soak.canary_missed(sent_before)
    worst = "-" if lat is None else f"{lat['max']:.1f}"
    print()
    print(f"Summary after {seconds:.0f} s:")
    print()
    print("| measure | start | end |")
    print("| --- | --- | --- |")
    print(f"| server RSS | {_mb(start['rss_kb'])} | {_mb(finish['rss_kb'])} |")
    print(f"| server open fds | {start['fds']} | {finish['fds']} |")
    print(f"| server threads | {start['threads']} | {finish['threads']} |")
    print()
    print(
        f"canary: sent {len(soak.canary_sent)}, missed {missed}, latency p50 / p99 / max "
        + ("-" if lat is None else f"{lat['p50']:.1f} / {lat['p99']:.1f} / {worst}")
        + f" ms, errors {dict(soak.canary_errors) or 'none'}"
    )
    print(f"worst canary latency: {worst} ms")
    print(f"canary missed: {missed}")
    print(f"churn cycles: {sum(soak.cycles.values())} {dict(sorted(soak.cycles.items()))}")
    print(f"closed by the server as it should: {dict(sorted(soak.server_closed.items()))}")
    print(f"not closed by the server in time: {dict(sorted(soak.not_closed.items())) or 'none'}")
    print(f"closed by the server unexpectedly: {dict(soak.unexpected) or 'none'}")
    print(f"refused at hello: {dict(soak.refused) or 'none'}")
    canaries_open = sum(1 for conn in soak.canaries if conn.sock is not None)
    if canaries_open != 2:
        failures.append(f"the server closed {2 - canaries_open} canary connection(s)")
    if finish["fds"] is not None and start["fds"] is not None and finish["fds"] > start["fds"]:
        print(f"fds left over after the churn: {finish['fds'] - start['fds']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.bench.soak",
        description="Churn clients against the chat server for a while; watch it and a canary.",
    )
    add = parser.add_argument
    add("--minutes", type=float, default=10.0, help="how long to churn (default: 10)")
    add("--clients", type=int, default=200, help="churning clients at once (default: 200)")
    add("--report-every", type=float, default=30.0, help="seconds between reports")
    add("--seed", type=int, default=1, help="for the clients' lifetimes")
    add("--server-cwd", type=Path, default=ROOT, help="where to run python -m server "
        "(default: this checkout)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0 or args.clients <= 0 or args.report_every <= 0:
        build_parser().error("--minutes, --clients and --report-every must be more than 0")
    raise_open_file_limit(args.clients + 256)
    words = sys.argv[1:] if argv is None else argv
    print("Command:", shlex.join(["python3", "-m", "tests.bench.soak", *words]))
    command = shlex.join(server_command(0)).replace(" 0 ", " <free> ")
    print("Server:", command, "in", args.server_cwd, flush=True)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
