"""Benchmark: how long the client takes to show its first window.

Run under a display (Xvfb works):

    xvfb-run -a python3 -m tests.bench.client_startup              # python -m app
    xvfb-run -a python3 -m tests.bench.client_startup --binary pyinstaller-dist/lan-chat/lan-chat

Each run starts the client as a new process, with its settings and its
log in a fresh temporary folder (``LAN_CHAT_CONFIG_DIR``,
``XDG_STATE_HOME``), and measures the wall time from just before the
process is started to the moment its first window, the connect dialog
(``WINDOW_TITLE``), is mapped on the X display. The window is found by
running ``xwininfo -root -tree`` every ``POLL_S`` until a window has that
title, then ``xwininfo -id`` until it is viewable (Tk names a window when
it maps it, so the second step is short); each poll takes a few ms, which
bounds the resolution. The client is then stopped with SIGTERM (it leaves
politely), or SIGKILL if it lingers.

The first run is reported apart: it is the coldest (files not yet in the
OS cache, if they were not already). The median and the maximum are over
the other runs. Exit status 1 if that median exceeds ``LIMIT_S`` (the
project's goal: the frozen client shows its window within 1 s), 2 if a
run showed no window within ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WINDOW_TITLE = "Join a chat"  # the connect dialog's title (app/connect_dialog.py)
POLL_S = 0.005
LIMIT_S = 1.0
STOP_S = 3.0  # for SIGTERM to end the client before SIGKILL does


class NoWindow(Exception):
    """The client showed no window in time (or exited first)."""


def _xwininfo(*args: str) -> str:
    return subprocess.run(
        ["xwininfo", *args], capture_output=True, text=True, check=False, timeout=5
    ).stdout


def _window_id(title: str) -> str | None:
    """The id of a window named ``title``, mapped or not, if there is one."""
    match = re.search(rf'^\s*(0x[0-9a-f]+) "{re.escape(title)}"', _xwininfo("-root", "-tree"), re.M)
    return match.group(1) if match else None


def _viewable(window: str) -> bool:
    return "Map State: IsViewable" in _xwininfo("-id", window)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _no_window_left() -> None:
    """Wait until no window has our title: the X server removes a stopped
    client's windows on its own time, and one must not be taken for the next."""
    deadline = time.perf_counter() + STOP_S
    while _window_id(WINDOW_TITLE) is not None:
        if time.perf_counter() > deadline:
            raise NoWindow(f"a {WINDOW_TITLE!r} window is open before the client starts")
        time.sleep(POLL_S)


def time_to_window(command: list[str], wait: float) -> float:
    """Seconds from starting ``command`` to its ``WINDOW_TITLE`` window being viewable."""
    _no_window_left()
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "LAN_CHAT_CONFIG_DIR": os.path.join(home, "config"),
            "XDG_STATE_HOME": os.path.join(home, "state"),  # the client's log
        }
        with open(os.path.join(home, "stderr"), "w+b") as errors:
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=errors)
            try:
                window = None
                while time.perf_counter() - started < wait:
                    window = window or _window_id(WINDOW_TITLE)
                    if window and _viewable(window):
                        return time.perf_counter() - started
                    if process.poll() is not None:
                        break
                    time.sleep(POLL_S)
                exited = process.poll()
            finally:
                _stop(process)
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip()[-500:]
    status = "still running" if exited is None else f"exited with status {exited}"
    raise NoWindow(f"no {WINDOW_TITLE!r} window within {wait} s ({status}) {tail}".strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", type=Path, help="a frozen client (default: python -m app)")
    parser.add_argument("--runs", type=int, default=10, help="at least 2 (default 10)")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds per run (default 15)")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2: the first run is reported apart")
    if not os.environ.get("DISPLAY"):
        parser.error("no DISPLAY: run it under xvfb-run -a")
    if args.binary and not os.access(args.binary, os.X_OK):
        parser.error(f"{args.binary} is not an executable file")
    if args.binary:
        command, label = [str(args.binary.resolve())], str(args.binary)
    else:
        command, label = [sys.executable, "-m", "app"], "python -m app"
    try:
        times = [time_to_window(command, args.wait) for _ in range(args.runs)]
    except NoWindow as exc:
        print(f"client_startup: {exc}", file=sys.stderr)
        return 2
    first, rest = times[0], times[1:]
    median = statistics.median(rest)
    print(f"| client | first run (s) | median of {len(rest)} more (s) | max of them (s) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| {label} | {first:.3f} | {median:.3f} | {max(rest):.3f} |")
    print()
    verdict = "within" if median <= LIMIT_S else "OVER"
    print(f"Median {median:.3f} s: {verdict} the {LIMIT_S:g} s goal.")
    return 0 if median <= LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
