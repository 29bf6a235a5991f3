"""Backplane benchmark: one room on two servers through Redis, against one server alone.

Run from the project root::

    python3 -m tests.bench.backplane_bench                  # paced, conns and fanout
    python3 -m tests.bench.backplane_bench --clients 20 --senders 4 --duration 2 \\
        --conns 200 --messages 200                         # a quick run
    python3 -m tests.bench.backplane_bench --workloads paced,conns --conns 10000

It starts its own ``redis-server`` (tests/redis_server.py: 127.0.0.1, a free
port, a temporary folder, nothing persisted) and its servers as
subprocesses, each ``python -m server --host 127.0.0.1 --port <free>
--no-rate-limit --tls off`` in a temporary ``--data-dir``, the shared ones
with ``--redis URL --redis-room <fresh name>``. Every process is stopped
before the next workload starts (servers with SIGINT, then killed; Redis
with SHUTDOWN NOSAVE, then killed). The load comes from server_bench's
one-thread client engine, here with each client connected to the server
its place says.

Workloads (the issue's numbers; ``--timeout`` bounds each run):

- ``paced``: ``--clients`` in one room, ``--senders`` of them on server A
  sending ``--rate`` messages a second in total for ``--duration`` seconds
  (server_bench's paced: on schedule whether or not the servers keep up);
  half the receivers on server B, the rest on A. The same run on ONE server
  without ``--redis`` comes first, so the latency Redis adds shows. Printed:
  p50 / p99 / max latency (send to receipt) for all receivers, and for those
  on A and on B; the CPU of Redis per message and of each server per message
  and per delivery (a delivery is one message reaching one of its clients).
- ``conns``: ``--conns`` clients, alternately on A and on B, join (at most
  8 logins in progress at once, as server_bench's conns); then the first
  one sends one message. Printed: the time to join them all, the CPU per
  join of each process, and the time from the send until the last client
  has it (the issue's goal: within 500 ms), on A and on B.
- ``fanout``: server_bench's fanout (``--clients``, ``--senders``,
  ``--messages`` each with ``--window`` in flight) on one server without
  ``--redis``, then on one server with it. Printed: deliveries/s, latency and
  CPU per million deliveries of the server and of Redis.

CPU is user + system time from /proc/<pid>/stat over the measured stretch
(from the first send; in conns, from the first connect). On a 2-core
machine Redis, the servers and this generator share both cores: compare
numbers within a run, and read the generator's CPU % (near 100 % means it,
not the servers, set the pace). The raw numbers go to ``--json FILE``. The
exit status is 1 when a run failed or lost, reordered or skipped anything;
a goal missed is printed as MISSED, not a failure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.bench import server_bench
from tests.bench.server_bench import Engine, Server, ServerStartError, percentiles_ms
from tests.redis_server import RedisServer

WORKLOADS = ("paced", "conns", "fanout")
HOST = "127.0.0.1"
PACED_GOAL_P99_MS = 5.0
PROBE_GOAL_MS = 500.0
# What a server says besides --port and --data-dir (server_bench adds those).
SERVER_ARGS = ["--tls", "off"]


class SpreadEngine(Engine):
    """server_bench's Engine with each client on the server ``place(index)``
    names, and the latencies also kept per server (``latencies_at``)."""

    def __init__(
        self,
        ports: Sequence[int],
        place: Callable[[int], int],
        gone: Callable[[], str | None],
    ) -> None:
        super().__init__(socket.AF_INET, (HOST, ports[0]), gone)
        self.ports, self.place = list(ports), place
        self.home: dict[str, int] = {}
        self.latencies_at = [array("q") for _ in ports]
        self.received_at = [0 for _ in ports]

    def add_clients(self, count: int, senders: int) -> None:
        super().add_clients(count, senders)
        self.home = {client.name: self.place(i) for i, client in enumerate(self.clients)}

    def _connect(self, client: server_bench.Client) -> None:
        self.sockaddr = (HOST, self.ports[self.home[client.name]])
        super()._connect(client)

    def _account(
        self, client: server_bench.Client, found: list[tuple[bytes, bytes, bytes]], now: int
    ) -> None:
        super()._account(client, found, now)
        at = self.home[client.name]
        self.latencies_at[at].extend([now - int(sent) for _, _, sent in found])
        self.received_at[at] += len(found)


class Group:
    """Several processes (servers, Redis) as the one ``server`` that server_bench's
    runners measure: ``cpu_s`` is their sum, and each call also keeps every
    member's own figure in ``samples``, so that the stretch a runner measured
    (its first call to its last) can be split by process."""

    def __init__(self, members: dict[str, Server]) -> None:
        self.members = members
        self.samples: list[dict[str, float | None]] = []

    def cpu_s(self) -> float | None:
        sample = {name: member.cpu_s() for name, member in self.members.items()}
        self.samples.append(sample)
        values = list(sample.values())
        return None if None in values else sum(values)  # type: ignore[arg-type]

    def cpu_by_member(self, first: int = 0, last: int = -1) -> dict[str, float | None]:
        """Each member's CPU seconds between two of ``samples``."""
        start, end = self.samples[first], self.samples[last]
        return {
            name: None if start[name] is None or end[name] is None else end[name] - start[name]
            for name in self.members
        }

    def memory_kb(self, field: str) -> int | None:
        values = [member.memory_kb(field) for member in self.members.values()]
        return None if None in values else sum(values)  # type: ignore[arg-type]

    def gone(self) -> str | None:
        for name, member in self.members.items():
            why = member.gone()
            if why is not None:
                return f"{name}: {why}"
        return None


class Setup:
    """One run's processes: ``servers`` server subprocesses (on one Redis when
    ``redis``), started in order and all stopped by ``stop``."""

    def __init__(self, servers: int, *, redis: bool) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="backplane-bench-")
        self.redis: RedisServer | None = None
        self.servers: list[Server] = []
        members: dict[str, Server] = {}
        try:
            extra = list(SERVER_ARGS)
            if redis:
                self.redis = RedisServer(Path(self.folder.name) / "redis")
                self.redis.start()
                room = f"bench-{uuid.uuid4().hex[:8]}"
                extra += ["--redis", self.redis.url, "--redis-room", room]
            for i in range(servers):
                server = Server.start(socket.AF_INET, HOST, extra)
                self.servers.append(server)
                members["AB"[i] if servers > 1 else "server"] = server
            if self.redis is not None:
                members["redis"] = Server(self.redis.port, self.redis.pid)  # type: ignore[arg-type]
        except BaseException:
            self.stop(None)
            raise
        self.group = Group(members)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def stop(self, engine: Engine | None) -> list[str]:
        """Stop every server together (SIGINT; the engine keeps reading meanwhile,
        so that no server waits on an unread socket), then Redis; close the
        engine's sockets. Returns what went wrong."""
        problems: list[str] = []
        if engine is not None:
            engine.stopping = True
        running = [s for s in self.servers if s.process is not None and s.process.poll() is None]
        for server in running:
            server.process.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        deadline = time.monotonic() + server_bench.STOP_GRACE_S
        while any(s.process.poll() is None for s in running) and time.monotonic() < deadline:  # type: ignore[union-attr]
            if engine is not None:
                engine.pump(0.05)
            else:
                time.sleep(0.05)
        for server in running:
            if server.process.poll() is None:  # type: ignore[union-attr]
                problems.append(f"server on port {server.port} still running after SIGINT: killed")
            elif server.process.returncode != 0:  # type: ignore[union-attr]
                problems.append(
                    f"server on port {server.port} exit status "
                    f"{server.process.returncode} after SIGINT"  # type: ignore[union-attr]
                )
        for server in self.servers:
            tail = server.log_tail()
            problems.extend(server.stop(None))  # kills and reaps what is still running
            if tail:
                print(
                    f"server on port {server.port}: its standard error ends:{tail}", file=sys.stderr
                )
        if engine is not None:
            engine.close()
        if self.redis is not None:
            self.redis.close()
        self.folder.cleanup()
        return problems


# --------------------------------------------------------------------------
# Runs


def run(
    name: str,
    args: argparse.Namespace,
    servers: int,
    *,
    redis: bool,
    place: Callable[[int], int],
    runner: Callable[[Engine, Any, argparse.Namespace, float], dict[str, Any]],
) -> dict[str, Any]:
    """One server_bench runner on a fresh ``Setup``: its numbers, plus each
    process's CPU over the runner's measured stretch and the latencies and
    deliveries per server."""
    result: dict[str, Any] = {"run": name, "servers": servers, "redis": redis}
    failures: list[str] = []
    try:
        setup = Setup(servers, redis=redis)
    except (ServerStartError, OSError, RuntimeError) as exc:
        return {**result, "failures": [f"could not start: {exc}"], "ok": False}
    engine = SpreadEngine(setup.ports, place, setup.group.gone)
    try:
        result.update(runner(engine, setup.group, args, time.monotonic() + args.timeout))
        if len(setup.group.samples) >= 2:
            result["cpu_s"] = setup.group.cpu_by_member()
            if len(setup.group.samples) >= 3:  # conns: joined, then probed
                result["join_cpu_s"] = setup.group.cpu_by_member(0, 1)
        names = list(setup.group.members)[:servers]
        result["latency_ms_at"] = {
            n: percentiles_ms(engine.latencies_at[i]) for i, n in enumerate(names)
        }
        result["received_at"] = dict(zip(names, engine.received_at, strict=True))
        result["clients_at"] = {
            n: sum(1 for home in engine.home.values() if home == i) for i, n in enumerate(names)
        }
    except Exception as exc:
        traceback.print_exc()
        failures.append(f"benchmark error: {type(exc).__name__}: {exc}")
    finally:
        if (why := setup.group.gone()) is not None:
            failures.append(why)
        failures.extend(f"{n}x {why}" if n > 1 else why for why, n in engine.failures.items())
        failures.extend(engine.drops())
        failures.extend(setup.stop(engine))
    for key, what in (("losses", "lost"), ("reorders", "reordered"), ("gaps", "in gaps")):
        if result.get(key):
            failures.append(f"{result[key]:,} {what}")
    result["failures"] = failures
    result["ok"] = not failures
    return result


def paced_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    on_b = args.clients // 2
    # Senders first, on A; the last half of the room on B.
    spread = lambda i: 1 if i >= args.clients - on_b else 0  # noqa: E731
    return [
        run("paced, one server", args, 1, redis=False, place=lambda i: 0,
            runner=server_bench.run_paced),
        run("paced, two servers", args, 2, redis=True, place=spread,
            runner=server_bench.run_paced),
    ]  # fmt: skip


def conns_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        run("conns, two servers", args, 2, redis=True, place=lambda i: i % 2,
            runner=server_bench.run_conns),
    ]  # fmt: skip


def fanout_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [
        run("fanout, one server", args, 1, redis=False, place=lambda i: 0,
            runner=server_bench.run_fanout),
        run("fanout, one server + redis", args, 1, redis=True, place=lambda i: 0,
            runner=server_bench.run_fanout),
    ]  # fmt: skip


RUNS = {"paced": paced_runs, "conns": conns_runs, "fanout": fanout_runs}


# --------------------------------------------------------------------------
# Report


def _n(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _lat(latency: dict[str, float] | None) -> str:
    return (
        "-" if latency is None else " / ".join(f"{latency[k]:.2f}" for k in ("p50", "p99", "max"))
    )


def _status(result: dict[str, Any]) -> str:
    return "ok" if result["ok"] else "FAILED: " + "; ".join(result["failures"])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = [list(header), ["---"] * len(header), *rows]
    return [
        "| " + " | ".join(" ".join(c.split()).replace("|", "/") for c in r) + " |" for r in lines
    ]


def _cpu_rows(result: dict[str, Any], messages: int) -> list[list[str]]:
    """Per process: CPU s, µs per message sent, µs per delivery to its clients."""
    rows = []
    for name, cpu in (result.get("cpu_s") or {}).items():
        deliveries = result.get("received_at", {}).get(name)
        per_message = None if cpu is None or not messages else 1e6 * cpu / messages
        per_delivery = None if cpu is None or not deliveries else 1e6 * cpu / deliveries
        rows.append([
            result["run"], name, _n(cpu, ".3f"), _n(per_message, ".1f"), _n(per_delivery, ".2f"),
        ])  # fmt: skip
    return rows


def report_paced(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## paced: latency, one server against two through Redis", ""]
    rows = []
    for r in results:
        rows.append([r["run"], "all", _n(r.get("clients"), "d"), _n(r.get("delivered"), ",d"),
                     _n(r.get("losses"), ",d"), _lat(r.get("latency_ms")), _status(r)])  # fmt: skip
        if r["servers"] > 1:
            for name, latency in r.get("latency_ms_at", {}).items():
                rows.append([r["run"], f"on {name}", _n(r["clients_at"][name], "d"),
                             _n(r["received_at"][name], ",d"), "", _lat(latency), ""])  # fmt: skip
    header = ["run", "receivers", "clients", "deliveries", "losses",
              "latency p50 / p99 / max ms", "result"]  # fmt: skip
    lines += _table(header, rows)
    one, two = (r.get("latency_ms") for r in results)
    if one and two:
        p99 = two["p99"]
        goal = "met" if p99 < PACED_GOAL_P99_MS else "MISSED"
        lines += ["", f"Added by Redis: p50 {two['p50'] - one['p50']:+.2f} ms, p99 "
                  f"{p99 - one['p99']:+.2f} ms; p99 through two servers {p99:.2f} ms "
                  f"(goal under {PACED_GOAL_P99_MS:g} ms: {goal})."]  # fmt: skip
    lines += ["", "CPU over the paced stretch (per message sent; per delivery to that "
              "process's own clients):", ""]  # fmt: skip
    rows = [row for r in results for row in _cpu_rows(r, r.get("messages") or 0)]
    lines += _table(["run", "process", "CPU s", "µs/message", "µs/delivery"], rows)
    gen = ", ".join(f"{r['run']} {_n(r.get('generator_cpu_pct'), '.0f')} %" for r in results)
    lines += ["", f"Generator CPU: {gen}."]
    return lines


def report_conns(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## conns: many clients over two servers, then one message to all", ""]
    for r in results:
        count = r.get("clients") or 0
        joined_in = r.get("joined_in_s")
        rate = None if not joined_in else count / joined_in
        lines.append(
            f"{r['run']}: {count:,} clients "
            f"({', '.join(f'{n} {c:,}' for n, c in r.get('clients_at', {}).items())}): "
            f"joined in {_n(joined_in, '.2f')} s ({_n(rate, ',.0f')} joins/s), "
            f"presence settled in {_n(r.get('presence_settled_in_s'), '.2f')} s."
        )
        join_cpu = r.get("join_cpu_s") or {}
        per_join = ", ".join(
            f"{n} {_n(None if c is None or not count else 1e3 * c / count, '.3f')}"
            for n, c in join_cpu.items()
        )
        lines.append(f"CPU ms per join (until every joined frame arrived): {per_join}.")
        probe = r.get("probe_ms")
        goal = "-" if probe is None else ("met" if probe <= PROBE_GOAL_MS else "MISSED")
        at = ", ".join(
            f"on {n} {_n(None if lat is None else lat['max'], '.1f')} ms"
            for n, lat in r.get("latency_ms_at", {}).items()
        )
        lines.append(f"One message to all: the last client had it {_n(probe, '.1f')} ms after "
                     f"the send ({at}); reached {_n(r.get('probe_reached'), ',d')}; goal within "
                     f"{PROBE_GOAL_MS:g} ms: {goal}. Result: {_status(r)}.")  # fmt: skip
    return lines


def report_fanout(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## fanout: one server, without and with --redis", ""]
    rows = []
    for r in results:
        cpu = r.get("cpu_s") or {}
        delivered = r.get("delivered") or 0
        per_m = {
            n: None if c is None or not delivered else c / (delivered / 1e6) for n, c in cpu.items()
        }
        rows.append([r["run"], _n(r.get("delivered"), ",d"), _n(r.get("losses"), ",d"),
                     _n(r.get("deliveries_per_s"), ",.0f"), _lat(r.get("latency_ms")),
                     _n(per_m.get("server"), ".2f"), _n(per_m.get("redis"), ".3f"),
                     _n(r.get("generator_cpu_pct"), ".0f"), _status(r)])  # fmt: skip
    header = ["run", "deliveries", "losses", "deliveries/s", "latency p50 / p99 / max ms",
              "server CPU s/M deliveries", "redis CPU s/M deliveries", "generator CPU %",
              "result"]  # fmt: skip
    lines += _table(header, rows)
    one, two = (r.get("deliveries_per_s") for r in results)
    if one and two:
        lines += ["", f"With --redis: {100 * (two / one - 1):+.0f} % deliveries/s."]
    return lines


REPORTS = {"paced": report_paced, "conns": report_conns, "fanout": report_fanout}


# --------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.bench.backplane_bench",
        description="Benchmark one room on two servers through Redis against one server alone.",
        epilog="Leave the machine otherwise idle while it runs.",
    )
    add = parser.add_argument
    positive = server_bench._positive
    add("--workloads", type=_workloads, default=list(WORKLOADS), help="comma-separated, of "
        f"{', '.join(WORKLOADS)} (default: all)")  # fmt: skip
    add("--clients", type=positive(int), default=100, help="room size in paced and fanout")
    add("--senders", type=positive(int), default=10, help="clients that send, of --clients")
    add("--rate", type=positive(float), default=200.0, help="messages a second in paced")
    add("--duration", type=positive(float), default=10.0, help="seconds of paced sending")
    add("--conns", type=positive(int), default=10_000, help="clients over two servers in conns")
    add("--messages", type=positive(int), default=2000, help="messages per sender in fanout")
    add("--window", type=positive(int), default=50, help="most messages in flight per sender")
    add("--timeout", type=positive(float), default=180.0, help="seconds per run at most")
    add("--json", type=Path, metavar="FILE", help="also write the raw numbers here")
    return parser


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in WORKLOADS for name in names):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(WORKLOADS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.senders > args.clients:
        parser.error("--senders cannot be more than --clients")
    server_bench.raise_open_file_limit(max(args.conns, args.clients) + 256)
    results: dict[str, list[dict[str, Any]]] = {}
    lines: list[str] = []
    for name in args.workloads:
        results[name] = RUNS[name](args)
        lines += [*REPORTS[name](results[name]), ""]
    words = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python3", "-m", "tests.bench.backplane_bench", *words])
    server = [*server_bench.server_command(HOST, "<free port>"), *SERVER_ARGS]
    lines += [f"Command: {command}", f"Servers: {' '.join(server)} [--redis URL --redis-room NAME]"]
    print("\n".join(lines))
    ok = all(r["ok"] for runs in results.values() for r in runs)
    if args.json is not None:
        report = {"command": command, "ok": ok, "results": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
