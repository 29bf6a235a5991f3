"""The hostile-load and soak benchmarks (tests/bench/hostile.py, soak.py) run at tiny sizes.

Like tests/test_server_bench.py: each runs as a subprocess leading a process
group of its own, which the server it starts joins (and hostile's bystander
process); whatever of that group outlives it is killed by group id, and the
test fails. The numbers they print
are parsed and checked against each other (a count that does not add up, a
delay longer than the run), not against speed goals: the goals belong to the
benchmarks' own "goal met / goal missed" column.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.test_server_bench import run_module, table

ROOT = Path(__file__).resolve().parents[1]
MEMBERS, FLOODERS, SECONDS, INTERVAL, WHO_MEMBERS, ATTACKERS = 20, 3, 2.0, 0.05, 30, 2
HOSTILE = [
    "--members", str(MEMBERS), "--flooders", str(FLOODERS), "--seconds", str(SECONDS),
    "--interval", str(INTERVAL), "--shutdown-after", "1", "--who-members", str(WHO_MEMBERS),
    "--attackers", str(ATTACKERS), "--who-watch", "1", "--timeout", "30",
]  # fmt: skip
SOAK_MINUTES, SOAK_CLIENTS, REPORT_EVERY = 0.1, 16, 2.0
SOAK = [
    "--minutes", str(SOAK_MINUTES), "--clients", str(SOAK_CLIENTS),
    "--report-every", str(REPORT_EVERY),
]  # fmt: skip
LIMIT_S = 60


def run(module: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return run_module(module, args, LIMIT_S)


def test_hostile_tiny_run_reports_consistent_numbers(tmp_path: Path) -> None:
    report = tmp_path / "hostile.json"
    done = run("tests.bench.hostile", [*HOSTILE, "--json", str(report)])
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    rows = table(done.stdout)
    assert set(rows) == {"flood", "shutdown", "who"}, output
    for row in rows.values():
        assert row["verdict"] in ("goal met", "goal missed"), row
    results: dict[str, dict[str, Any]] = {r["scenario"]: r for r in json.loads(report.read_text())}
    for result in results.values():
        assert result["failures"] == [], result

    # flood: every bystander message is accounted for once, each delay within the run.
    flood = results["flood"]
    sent, seen, missed = flood["sent"], flood["seen"], flood["missed"]
    assert abs(sent - SECONDS / INTERVAL) <= 3, flood
    assert seen + missed == sent and 0 <= seen <= sent, flood
    assert missed == 0, f"the server lost a message it was sent under the rate limit: {flood}"
    delay = flood["delay_ms"]
    assert 0 < delay["p50"] <= delay["p99"] <= delay["max"] < (SECONDS + 2.5) * 1000, flood
    assert flood["watcher_messages"] >= seen, flood  # the watcher sees the flood's messages too
    assert flood["members_dropped"] == 0, flood
    assert flood["flooder_pongs_per_s"] > 0, flood
    measured = re.fullmatch(
        r"bystander delay ([0-9.]+) / ([0-9.]+) / ([0-9.]+) ms \(p50 / p99 / max\), "
        r"([0-9]+) of ([0-9]+) missed; its own process stalled ([0-9.]+) ms at most",
        rows["flood"]["measured"],
    )
    assert measured, rows["flood"]
    # The bystander's process measured its own stalls, each within the run.
    stall = flood["bystander_stall_ms"]
    assert 0 <= stall["p50"] <= stall["p99"] <= stall["max"] < (SECONDS + 2.5) * 1000, flood
    assert list(map(float, measured.groups())) == [
        round(delay["p50"], 1), round(delay["p99"], 1), round(delay["max"], 1), missed, sent,
        round(stall["max"], 1),
    ], (measured, flood)  # fmt: skip
    assert 0 <= flood["bystander_cpu_pct"] <= 200, flood
    met = delay["max"] < 100 and missed == 0
    assert rows["flood"]["verdict"] == ("goal met" if met else "goal missed"), rows["flood"]

    # shutdown: everyone of the room was counted, and the server's exit was seen.
    shutdown = results["shutdown"]
    everyone = MEMBERS + FLOODERS
    told = shutdown["told"]
    assert 0 <= told <= everyone == shutdown["open_at_signal"], shutdown
    assert sum(shutdown["closed_how"].values()) == everyone, shutdown
    assert shutdown["exit_status"] == 0 and 0 < shutdown["exit_s"] < 5, shutdown
    measured = re.match(r"([0-9]+) of ([0-9]+) got shutdown", rows["shutdown"]["measured"])
    assert measured and list(map(int, measured.groups())) == [told, everyone], rows["shutdown"]

    # who: the peak is the growth over the baseline, judged against the bound.
    who = results["who"]
    assert 0 < who["baseline_rss_kb"] <= who["peak_rss_kb"], who
    assert who["growth_kb"] == who["peak_rss_kb"] - who["baseline_rss_kb"], who
    assert who["bound_kb"] == ATTACKERS * 1024, who
    met = who["growth_kb"] <= who["bound_kb"]
    assert rows["who"]["verdict"] == ("goal met" if met else "goal missed"), rows["who"]
    assert "Command: python3 -m tests.bench.hostile" in done.stdout


def test_hostile_bystander_process_stops_when_its_parent_is_gone() -> None:
    # Its stdin is the parent's pipe; here it is closed from the start, and the
    # server (a listener that never answers) would keep it waiting until --timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        command = [
            sys.executable, "-m", "tests.bench.hostile", "--bystander-port", str(port),
            "--bystander-token", "t0", "--timeout", str(LIMIT_S),
        ]  # fmt: skip
        done = subprocess.run(
            command, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=LIMIT_S / 3,
        )  # fmt: skip
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert "the benchmark's main process is gone" in report["failures"], report
    assert "sent" not in report, report


def test_soak_tiny_run_reports_every_interval_and_a_whole_canary() -> None:
    done = run("tests.bench.soak", SOAK)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    reports = re.findall(
        r"^t= *([0-9]+)s rss ([0-9.]+) MB, fds ([0-9]+), threads ([0-9]+), cycles ([0-9]+), "
        r"canary sent ([0-9]+), missed ([0-9]+), worst latency ([0-9.]+) ms$",
        done.stdout,
        re.MULTILINE,
    )
    seconds = SOAK_MINUTES * 60
    assert len(reports) == int(seconds // REPORT_EVERY), output
    times = [int(r[0]) for r in reports]
    assert times == sorted(times) and times[-1] <= seconds + 1, output
    canary_sent = [int(r[5]) for r in reports]
    assert canary_sent == sorted(canary_sent) and canary_sent[0] > 0, output
    for _, rss, fds, threads, _, _, missed, worst in reports:
        assert float(rss) > 0 and int(fds) > 0 and int(threads) >= 1, output
        assert int(missed) == 0 and 0 < float(worst) < 2000, output
    assert int(reports[-1][4]) > 0, output  # clients did come and go

    # Both canaries say every 200 ms: about 2 x seconds / 0.2 messages.
    canary = re.search(
        r"^canary: sent ([0-9]+), missed ([0-9]+), latency p50 / p99 / max "
        r"([0-9.]+) / ([0-9.]+) / ([0-9.]+) ms",
        done.stdout,
        re.MULTILINE,
    )
    assert canary, output
    sent, missed = int(canary[1]), int(canary[2])
    assert abs(sent - 2 * seconds / 0.2) <= 15, output  # and some more while it settles
    assert missed == 0, output
    p50, p99, worst = map(float, canary.groups()[2:])
    assert 0 < p50 <= p99 <= worst, output

    cells = dict(re.findall(r"^\| (server [a-zA-Z ]+) \| (.+) \|$", done.stdout, re.MULTILINE))
    start, end = cells["server open fds"].split(" | ")
    assert int(start) == int(end), f"the server holds fds after the churn:\n{output}"
    cycles = re.search(r"^churn cycles: ([0-9]+) (\{.*\})$", done.stdout, re.MULTILINE)
    assert cycles, output
    ways = ast.literal_eval(cycles[2])
    assert sum(ways.values()) == int(cycles[1]), output
    fast = ("bye", "close", "reset", "half-close", "never-reading", "partial")
    assert all(ways.get(way, 0) > 0 for way in fast), output
    assert "closed by the server unexpectedly: none" in done.stdout, output
    assert "refused at hello: none" in done.stdout, output
