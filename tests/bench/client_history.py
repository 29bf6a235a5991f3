"""Benchmark: how long the chat window stalls while an older page of 200
messages goes in at the top, and while 50 search results show, all of the
longest texts a message may hold.

Run under a display (Xvfb works):

    xvfb-run -a python3 -m tests.bench.client_history --rounds 3

A scripted server (``tests.fake_room``, in a process of its own, as a
server is for a user: in this one its threads would take turns with the
window's for the interpreter lock) keeps 1,000 messages of
``MAX_TEXT_LENGTH`` characters (words, so that lines wrap). The real
``ChatApp`` joins it, and each round scrolls to the top of the transcript
(a page of ``MAX_PAGE`` messages is asked for and put in above), then
searches a word every message holds (50 results) and opens the first
result's context. A 5 ms ``after`` heartbeat on the Tk thread records the
gaps between its runs: the longest is the longest time the window could
not react to the person. Prints one table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import Any

import ttkbootstrap as ttk

from app import room_history
from app.chat_app import ChatApp
from app.settings import Settings
from server.protocol import MAX_PAGE, MAX_TEXT_LENGTH
from tests.trust_helpers import PlaintextAgreed

MESSAGES = 1000


def longest_text(number: int) -> str:
    words = f"pizza friday number{number} lorem ipsum dolor sit amet consectetur "
    return (words * (MAX_TEXT_LENGTH // len(words) + 1))[:MAX_TEXT_LENGTH]


def serve(ports: Any, stop: Any) -> None:
    """In the server's process: a fake room until ``stop`` is set."""
    from tests.fake_room import FakeRoom, message  # noqa: PLC0415 - in the child only

    room = FakeRoom([message(n, longest_text(n)) for n in range(1, MESSAGES + 1)], replay=100)
    ports.put(room.port)
    stop.wait(600)
    room.stop()


class Heartbeat:
    """Gaps between runs of a 5 ms ``after`` on the Tk thread, in phases."""

    def __init__(self, root: ttk.Window) -> None:
        self.root = root
        self.gaps: dict[str, list[float]] = {}
        self.phase = "idle"
        self._last = time.perf_counter()
        root.after(5, self._beat)

    def _beat(self) -> None:
        now = time.perf_counter()
        self.gaps.setdefault(self.phase, []).append(now - self._last)
        self._last = now
        self.root.after(5, self._beat)


def crank(root: ttk.Window, until: Any, seconds: float, what: str) -> float:
    """Run Tk until ``until()`` (then a half second more, for the layout that
    follows); returns how long it took."""
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    while not until():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        root.update()
    took = time.perf_counter() - started
    settle = time.monotonic() + 0.5
    while time.monotonic() < settle:
        root.update()
    return took


def run(rounds: int) -> dict[str, float]:
    os.environ["LAN_CHAT_CONFIG_DIR"] = tempfile.mkdtemp()
    room_history.PAGE_SIZE = MAX_PAGE
    ports: Any = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(ports, stop), daemon=True)
    server.start()
    port = ports.get(timeout=60)
    root = ttk.App(title="history", theme="bootstrap-light", size=(920, 640))
    app = ChatApp(
        root,
        Settings(),
        save_settings=lambda _s: None,
        on_exit=lambda: None,
        known=PlaintextAgreed(),
    )
    view = app.view
    timings: dict[str, list[float]] = {"page": [], "results": [], "context": []}
    try:
        app.connect("127.0.0.1", port, "reader")
        crank(root, lambda: app.client is not None and app.client.joined, 10, "the welcome")
        crank(root, lambda: app.history.replay_left == 0, 10, "the replay")
        beat = Heartbeat(root)
        panel = view.open_search()
        view.close_search()
        for _ in range(rounds):
            oldest = view.oldest_id
            beat.phase = "page"
            view.transcript.yview_moveto(0.0)
            view.ask_older()  # as the wheel at the top does
            timings["page"].append(
                crank(root, lambda o=oldest: view.oldest_id != o, 30, "the page")
            )
            beat.phase = "results"
            view.open_search()
            panel.status_label.configure(text="")
            panel.on_search("pizza", None)  # what Enter in the box does
            timings["results"].append(
                crank(root, lambda: "newest first" in panel.status_text(), 30, "the results")
            )
            beat.phase = "context"
            panel.on_choose(panel.shown_results[0])
            timings["context"].append(crank(root, lambda: panel.showing_context, 30, "context"))
            beat.phase = "idle"
            view.close_search()
            crank(root, lambda: True, 1, "")
        shown = len(view.transcript_text().splitlines())
    finally:
        app.close()
        root.destroy()
        stop.set()
        server.join(10)
    page_gaps, result_gaps = beat.gaps.get("page", [0.0]), beat.gaps.get("results", [0.0])
    context_gaps = beat.gaps.get("context", [0.0])
    return {
        "rounds": rounds,
        "lines in the transcript": shown,
        f"page of {MAX_PAGE}: shown after (ms, worst)": 1000 * max(timings["page"]),
        "page: longest stall (ms)": 1000 * max(page_gaps),
        "page: median gap (ms)": 1000 * statistics.median(page_gaps),
        f"{room_history.SEARCH_LIMIT} results: shown after (ms, worst)": 1000
        * max(timings["results"]),
        "results: longest stall (ms)": 1000 * max(result_gaps),
        "context: longest stall (ms)": 1000 * max(context_gaps),
        "stalls over 100 ms": sum(g > 0.1 for g in [*page_gaps, *result_gaps, *context_gaps]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    result = run(parser.parse_args().rounds)
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown}")


if __name__ == "__main__":
    main()
