"""Benchmark: whether the client's memory stays flat over 100,000 messages.

Run under a display (Xvfb works):

    xvfb-run -a python3 -m tests.bench.client_memory --messages 100000
    xvfb-run -a python3 -m tests.bench.client_memory --messages 100000 --tracemalloc
    xvfb-run -a python3 -m tests.bench.client_memory --messages 100000 --background

A real server on 127.0.0.1 (rate limit off), the real ChatApp joined as
``reader`` with its window shown and ``mainloop`` running, and a raw
client, ``sender``, fed from a thread of its own. The sender sends a fixed
mix (short lines, long ones up to the 4,000-character limit, links,
messages naming ``reader``, ``/me`` actions, a few private ones to
``reader``) in batches of ``BATCH``, never more than ``AHEAD`` messages
ahead of what the window has shown, so that the app's event queue stays
small and what is measured is the app, not a backlog. Under Xvfb the
window has the focus; ``--background`` makes the app take itself for a
window in the background (its focus check answers no), as a chat left
open all day is: then every message counts as unread in the title, and
mentions and private messages ring and show a toast. Every ``MARK``
messages the sender waits until the window has shown them all, and the Tk
thread records one row of the table:

- RSS MB: the whole process's resident memory (VmRSS), after
  ``gc.collect()``: Python, Tcl/Tk and Xlib buffers (the server runs in a
  process of its own).
- Python heap MB: what tracemalloc traces at that moment, with
  ``--tracemalloc`` only: it slows the run about twofold and its own
  bookkeeping counts in RSS. It also prints the lines whose allocations
  grew most between the first row and the end.
- transcript lines: lines in the transcript widget, which ``ChatView``
  trims to ``MAX_LINES``.

The verdict compares RSS at ``BASELINE`` (20,000 messages: the transcript
has been at its cap for 10,000 messages, so everything that should stay
flat has reached its size) with RSS at the end. It fails (exit status 1)
when the growth exceeds the larger of ``LIMIT_MB`` (10 MB) and
``LIMIT_SHARE`` (10 %) of the baseline, or when the transcript ends
over its cap. Freed memory does not all go
back to the system at once (glibc's arenas, pymalloc's pools, Tk's text
B-tree), so RSS wanders by a few MB with no leak at all; 10 MB over the
80,000 messages after the baseline is still only about 130 bytes a
message, which one leaked small object per message (a tuple in a dict,
a Tcl object) exceeds. The 10 % share covers a Tk whose baseline is much
bigger than this one's. Exit status 2: the run did not finish (timeout,
or the app's connection failed).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import select
import socket
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ttkbootstrap as ttk

from app.chat_app import ChatApp
from app.chat_view import MAX_LINES
from app.settings import Settings
from tests.bench.server_bench import Server
from tests.wire import RawClient, frame

READER = "reader"
MARK = 10_000  # messages between two rows of the table
BASELINE = 20_000
BATCH = 500  # messages per send
AHEAD = 2_000  # most messages sent and not yet shown
LIMIT_MB = 10.0
LIMIT_SHARE = 0.10
WATCH_MS = 20
MB = 1024 * 1024

WORDS = ("lunch", "build", "deploy", "coffee", "review", "ticket", "later", "thanks", "fixed")
# Share of each kind of message, in percent.
MIX = {"plain": 60, "link": 12, "action": 10, "mention": 8, "long": 6, "private": 4}


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of the table."""

    shown: int
    rss_mb: float
    heap_mb: float | None
    lines: int


class Progress:
    """What the Tk thread has done, read by the feeder: plain ints, written by one thread."""

    def __init__(self) -> None:
        self.shown = 0
        self.sampled = 0  # messages shown at the last row recorded


def rss_mb() -> float:
    """This process's resident set size, in MB (Linux: /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def message_mix(seed: int = 5) -> Iterator[dict[str, Any]]:
    """``say`` frames from ``sender``, numbered ``[0]``, ``[1]``... at the start of the text."""
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=1000)
    for number in itertools.count():
        words = " ".join(rng.choices(WORDS, k=rng.randint(3, 15)))
        say: dict[str, Any] = {"type": "say"}
        match kinds[number % len(kinds)]:
            case "link":
                text = f"{words} https://intranet.example.org/tickets/{number}?tab=log, {words}"
            case "action":
                text, say["action"] = words, True
            case "mention":
                text = f"{READER}, {words}?"
            case "long":
                text = " ".join(rng.choices(WORDS, k=rng.randint(150, 600)))[:3900]
            case "private":
                text, say["to"] = words, READER
            case _:
                text = words
        say["text"] = f"[{number}] {text}"
        yield say


def _discard_incoming(sock: socket.socket) -> None:
    """Read and drop what the server sent the sender (the echoes of its own
    messages): unread, they would fill its queue and the server would drop it."""
    for _ in range(64):
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return
        if not sock.recv(1 << 20):
            raise ConnectionError("the server closed the sender's connection")


def feed(
    sender: RawClient, total: int, progress: Progress, stop: threading.Event, deadline: float
) -> None:
    """Send ``total`` messages in batches, keeping pace with the window (see the docstring)."""

    def wait_for(count: Callable[[], int], at_least: int) -> None:
        while count() < at_least:
            _discard_incoming(sender.sock)
            if stop.is_set() or time.monotonic() > deadline:
                raise TimeoutError("the window did not keep up before the deadline")
            stop.wait(0.005)

    frames = (frame(say) for say in message_mix())
    sent = 0
    while sent < total:
        mark = min(total, (sent // MARK + 1) * MARK)
        batch = min(BATCH, mark - sent)
        wait_for(lambda: progress.shown, sent + batch - AHEAD)
        sender.send_raw(b"".join(itertools.islice(frames, batch)))
        sent += batch
        _discard_incoming(sender.sock)
        if sent == mark:
            wait_for(lambda: progress.sampled, mark)


def run(
    messages: int, timeout: float, scratch: Path, *, trace: bool = False, background: bool = False
) -> tuple[list[Sample], float, list[str]]:
    """Feed ``messages`` to a joined ChatApp; returns the rows, the seconds
    it took, and (with ``trace``) the biggest Python heap growths. ``scratch``
    is a folder for the baseline's tracemalloc snapshot."""
    if trace:
        tracemalloc.start()
    deadline = time.monotonic() + timeout
    # In a process of its own, as for a user: in this one, its threads
    # would take turns with the window's for the interpreter lock.
    server = Server.start(socket.AF_INET, "127.0.0.1", [])
    root = ttk.App(title="memory", theme="bootstrap-light", size=(920, 640))
    app = ChatApp(root, Settings(), save_settings=lambda _s: None, on_exit=lambda: None)
    if background:
        app._has_focus = lambda: False  # type: ignore[method-assign]
    progress = Progress()
    stop = threading.Event()
    failures: list[BaseException] = []
    samples: list[Sample] = []
    marks = [*range(MARK, messages, MARK), messages]
    baseline = scratch / "baseline.tracemalloc"
    growth: list[str] = []
    add_message = app.view.add_message

    def counting_add_message(message: Any) -> bool:
        progress.shown += 1
        return add_message(message)

    def record() -> None:
        gc.collect()  # garbage waiting for a collection is not a leak
        heap = tracemalloc.get_traced_memory()[0] / MB if trace else None
        lines = int(app.view.transcript.index("end-1c").split(".")[0])
        samples.append(Sample(progress.shown, rss_mb(), heap, lines))
        if trace and progress.shown == MARK:
            # Taken before BASELINE: taking it raises RSS for good by a few
            # MB (freed, not returned), which must not count as growth. Kept
            # on disk, as in memory it would be megabytes more.
            tracemalloc.take_snapshot().dump(str(baseline))
        elif trace and progress.shown == messages:
            top = tracemalloc.take_snapshot().compare_to(
                tracemalloc.Snapshot.load(str(baseline)), "lineno"
            )
            growth.extend(str(stat) for stat in top[:10])
        progress.sampled = progress.shown

    def watch() -> None:
        if failures or time.monotonic() > deadline:
            root.quit()
            return
        if progress.shown >= marks[len(samples)]:
            record()
            if len(samples) == len(marks):
                root.quit()
                return
        watching[0] = root.after(WATCH_MS, watch)

    def feed_safely(sender: RawClient) -> None:
        try:
            feed(sender, messages, progress, stop, deadline)
        except BaseException as exc:  # reported on the main thread
            failures.append(exc)

    app.view.add_message = counting_add_message  # type: ignore[method-assign]
    feeder: threading.Thread | None = None
    watching = [""]
    sender: RawClient | None = None
    try:
        app.connect("127.0.0.1", server.port, READER)
        while not (app.client and app.client.joined) and time.monotonic() < deadline:
            root.update()
            time.sleep(0.01)
        if not (app.client and app.client.joined):
            raise TimeoutError("the app did not join the server")
        sender = RawClient(server.port)
        sender.join("sender")
        started = time.perf_counter()
        feeder = threading.Thread(target=feed_safely, args=(sender,), name="bench-feed")
        feeder.start()
        watching[0] = root.after(WATCH_MS, watch)
        root.mainloop()
        elapsed = time.perf_counter() - started
        if failures:
            raise failures[0]
        if len(samples) < len(marks):
            raise TimeoutError(f"only {progress.shown:,} of {messages:,} shown in {timeout} s")
        last = app.view.transcript_text().rsplit("\n", 1)[-1]
        if f"[{messages - 1}] " not in last:
            raise AssertionError(f"the last message is not the last line: {last[:80]!r}")
    finally:
        stop.set()
        if feeder is not None:
            feeder.join(5)
        if watching[0]:
            root.after_cancel(watching[0])
        app.close()
        root.destroy()
        if sender is not None:
            sender.close()
        server.stop(None)
        tracemalloc.stop()
    return samples, elapsed, growth


def table(samples: list[Sample]) -> str:
    """The rows as a Markdown table."""
    rows = [
        "| messages shown | RSS MB | Python heap MB | transcript lines |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for sample in samples:
        heap = "off" if sample.heap_mb is None else f"{sample.heap_mb:.1f}"
        rows.append(f"| {sample.shown:,} | {sample.rss_mb:.1f} | {heap} | {sample.lines:,} |")
    return "\n".join(rows)


def verdict(samples: list[Sample]) -> tuple[bool, str]:
    """Whether RSS stayed flat from ``BASELINE`` to the end, and the line saying so."""
    base = next(sample for sample in samples if sample.shown == BASELINE)
    end = samples[-1]
    growth = end.rss_mb - base.rss_mb
    limit = max(LIMIT_MB, LIMIT_SHARE * base.rss_mb)
    flat = growth <= limit and end.lines <= MAX_LINES
    words = "flat" if flat else "NOT flat"
    return flat, (
        f"RSS from {BASELINE:,} to {end.shown:,} messages: {growth:+.1f} MB "
        f"({100 * growth / base.rss_mb:+.1f} %), limit {limit:.1f} MB; "
        f"transcript {end.lines:,} lines (cap {MAX_LINES:,}): {words}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also trace the Python heap (slower)"
    )
    parser.add_argument(
        "--background", action="store_true", help="the window is not focused: mentions alert"
    )
    args = parser.parse_args()
    if args.messages <= BASELINE:
        parser.error(f"--messages must be over {BASELINE:,}: the verdict starts there")
    with tempfile.TemporaryDirectory() as config:
        os.environ["LAN_CHAT_CONFIG_DIR"] = config  # the user's settings stay untouched
        try:
            samples, elapsed, growth = run(
                args.messages,
                args.timeout,
                Path(config),
                trace=args.tracemalloc,
                background=args.background,
            )
        except (TimeoutError, ConnectionError, AssertionError) as exc:
            print(f"client_memory: the run did not finish: {exc}", file=sys.stderr)
            return 2
    print(table(samples))
    print()
    flat, line = verdict(samples)
    print(f"{line} ({elapsed:.0f} s, {args.messages / elapsed:,.0f} messages/s)")
    if growth:
        print(f"\nLargest Python heap growth from {MARK:,} messages to the end:")
        print("\n".join(growth))
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
