"""A tiny run of tests/bench/files_bench.py: it runs, and every part of it is measured."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_files_bench_tiny_run_measures_both_ways_the_canary_and_the_downloaders() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.files_bench", "--mb", "3", "--downloaders", "2",
         "--paced-seconds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"upload: [\d.]+ MB/s", output), output
    assert re.search(r"download: [\d.]+ MB/s \([\d.]+ s\), sha256 matches", output), output
    assert re.search(r"server RSS: [\d.]+ MB before, peak [\d.]+ MB uploading", output), output
    canary = re.search(r"canary: (\d+) seen, (\d+) missed", output)
    assert canary and int(canary.group(1)) > 0 and canary.group(2) == "0", output
    downloaders = re.search(
        r"2 downloaders: ([\d.]+) MB/s together over [\d.]+ s \((\d) finished", output
    )
    assert downloaders and float(downloaders.group(1)) > 0 and downloaders.group(2) == "2", output
    assert re.search(r"paced meanwhile .*losses 0", output), output
