"""A tiny run of tests/bench/history_bench.py: it runs, and every part of it is measured."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_history_bench_tiny_run_measures_pages_searches_and_the_canary() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.history_bench", "--messages", "3000",
         "--flooders", "2", "--seconds", "1.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "filled 3,000 messages" in output
    pages = re.search(r"pages of 200: (\d+) in", output)
    searches = re.search(r"searches \(2 flooders\): (\d+),", output)
    canary = re.search(r"canary: (\d+) seen, (\d+) missed", output)
    assert pages and int(pages.group(1)) > 0, output
    assert searches and int(searches.group(1)) > 0, output
    assert canary and int(canary.group(1)) > 0 and canary.group(2) == "0", output
    assert "a questioner stopped" not in output
