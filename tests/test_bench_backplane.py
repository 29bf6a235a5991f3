"""The backplane benchmark (tests/bench/backplane_bench.py) runs end to end at tiny sizes.

It runs as server_bench's test runs its benchmark (``run_module``): in a
process group of its own, which must be empty when it ends, so that a
server or a redis-server it failed to stop fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_server_bench import run_module

CLIENTS, SENDERS, RATE, DURATION, CONNS, MESSAGES = 6, 2, 50, 1, 30, 50
TINY = [
    "--clients", str(CLIENTS), "--senders", str(SENDERS), "--rate", str(RATE),
    "--duration", str(DURATION), "--conns", str(CONNS), "--messages", str(MESSAGES),
    "--window", "10", "--timeout", "15",
]  # fmt: skip
LIMIT_S = 90


def test_tiny_run_measures_every_run_and_delivers_everything(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    run = run_module("tests.bench.backplane_bench", [*TINY, "--json", str(report_path)], LIMIT_S)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    for heading in ("## paced", "## conns", "## fanout"):
        assert heading in run.stdout, output
    assert "Added by Redis: p50" in run.stdout, output
    assert "FAILED" not in run.stdout, output

    report = json.loads(report_path.read_text())
    assert report["ok"] is True, output
    runs: dict[str, dict[str, Any]] = {
        r["run"]: r for results in report["results"].values() for r in results
    }
    assert set(runs) == {
        "paced, one server",
        "paced, two servers",
        "conns, two servers",
        "fanout, one server",
        "fanout, one server + redis",
    }
    for r in runs.values():
        assert r["failures"] == [], r
        assert (r["losses"], r["reorders"], r["gaps"]) == (0, 0, 0), r

    one, two = runs["paced, one server"], runs["paced, two servers"]
    for r in (one, two):
        assert r["delivered"] == r["expected"] == RATE * DURATION * CLIENTS, r
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    # Senders on A, half the room on B: both servers delivered, and Redis worked.
    assert two["clients_at"] == {"A": CLIENTS - CLIENTS // 2, "B": CLIENTS // 2}
    assert two["received_at"] == {n: c * RATE * DURATION for n, c in two["clients_at"].items()}
    assert two["latency_ms_at"]["B"]["p50"] > 0
    assert set(two["cpu_s"]) == {"A", "B", "redis"}
    assert two["cpu_s"]["A"] > 0 and two["cpu_s"]["B"] > 0 and two["cpu_s"]["redis"] >= 0
    assert set(one["cpu_s"]) == {"server"}

    conns = runs["conns, two servers"]
    assert conns["joined"] == conns["probe_reached"] == CONNS
    assert conns["clients_at"] == {"A": CONNS // 2, "B": CONNS // 2}
    assert conns["received_at"] == conns["clients_at"]  # the one message, once each
    assert 0 < conns["probe_ms"] < 15_000
    # CPU is counted in clock ticks (10 ms): 30 joins may take less than one on a server.
    assert set(conns["join_cpu_s"]) == {"A", "B", "redis"}
    assert all(cpu is not None and cpu >= 0 for cpu in conns["join_cpu_s"].values())

    for name, members in (("fanout, one server", {"server"}), ("fanout, one server + redis",
                          {"server", "redis"})):  # fmt: skip
        r = runs[name]
        assert r["delivered"] == r["expected"] == SENDERS * MESSAGES * CLIENTS, r
        assert r["deliveries_per_s"] > 0
        assert set(r["cpu_s"]) == members
