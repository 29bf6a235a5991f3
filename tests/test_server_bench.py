"""The server benchmark (tests/bench/server_bench.py) runs end to end at tiny sizes.

It runs as a subprocess leading a process group of its own, which the servers
it starts join: whatever of that group outlives it (a hang, a server it failed
to stop) is killed by group id, and the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENTS, SENDERS, MESSAGES, RATE, DURATION, CONNS = 6, 2, 50, 50, 1, 30
TINY = [
    "--clients", str(CLIENTS), "--senders", str(SENDERS), "--messages", str(MESSAGES),
    "--window", "10", "--rate", str(RATE), "--duration", str(DURATION),
    "--conns", str(CONNS), "--timeout", "15",
]  # fmt: skip
LIMIT_S = 25


def run_bench(json_path: Path) -> subprocess.CompletedProcess[str]:
    return run_module("tests.bench.server_bench", [*TINY, "--json", str(json_path)], LIMIT_S)


def run_module(module: str, args: list[str], limit_s: float) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module`` to its end within ``limit_s``, in a session of
    its own; fail if it runs over or leaves any process behind."""
    command = [sys.executable, "-m", module, *args]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"{module} took over {limit_s} s:\n{out}\n{err}") from None
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing left: the good case
    else:
        raise AssertionError(f"{module} left processes running:\n{out}\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def table(stdout: str) -> dict[str, dict[str, str]]:
    """The Markdown table's rows by workload, each a mapping of column to cell."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, rule, *body = rows
    assert set(rule) == {"---"}, rule
    return {row[0]: dict(zip(header, row, strict=True)) for row in body}


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_tiny_run_reports_every_workload_without_losses(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    run = run_bench(report_path)
    assert run.returncode == 0, run.stdout + run.stderr

    rows = table(run.stdout)
    assert set(rows) == {"fanout", "paced", "conns"}, run.stdout
    for name, row in rows.items():
        assert row["result"] == "ok", row
        assert row["losses"] == "0", row
        assert row["reorders / gaps"] == "0 / 0", row
        if name != "conns":
            assert number(row["deliveries/s"]) > 0, row
    assert number(rows["conns"]["probe ms"]) > 0, rows["conns"]
    assert "Command: python3 -m tests.bench.server_bench" in run.stdout

    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    results: dict[str, dict[str, Any]] = {r["workload"]: r for r in report["results"]}
    fanout, paced, conns = results["fanout"], results["paced"], results["conns"]
    assert fanout["delivered"] == fanout["expected"] == SENDERS * MESSAGES * CLIENTS
    assert paced["delivered"] == paced["expected"] == RATE * DURATION * CLIENTS
    for result in (fanout, paced):
        assert result["joined"] == CLIENTS
        assert result["latency_ms"]["p50"] > 0
    assert conns["joined"] == conns["probe_reached"] == CONNS
    assert conns["kb_per_conn"] is not None
    for result in results.values():
        assert (result["losses"], result["reorders"], result["gaps"]) == (0, 0, 0), result
        assert result["failures"] == [], result
