"""Benchmark: how long the chat window stalls while a burst of messages arrives.

Run under a display (Xvfb works):

    xvfb-run -a python3 -m tests.bench.client_burst --messages 5000

A real server on 127.0.0.1 (its own process, rate limit off), the real ChatApp, and a raw
client that sends the burst. A 5 ms ``after`` heartbeat on the Tk thread
records the gaps between its runs: the longest gap is the longest time
the window could not react to the user. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import ttkbootstrap as ttk

from app.chat_app import ChatApp
from app.settings import Settings
from tests.bench.server_bench import Server
from tests.wire import RawClient, frame


def run(messages: int) -> dict[str, float]:
    os.environ["LAN_CHAT_CONFIG_DIR"] = tempfile.mkdtemp()
    # In a process of its own, as for a user: in this one, its threads
    # would take turns with the window's for the interpreter lock.
    server = Server.start(socket.AF_INET, "127.0.0.1", [])
    root = ttk.App(title="burst", theme="bootstrap-light", size=(920, 640))
    app = ChatApp(root, Settings(), save_settings=lambda _s: None, on_exit=lambda: None)
    gaps: list[float] = []
    last = [time.perf_counter()]

    def heartbeat() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now
        root.after(5, heartbeat)

    shown = 0
    add_message = app.view.add_message

    def counting_add_message(message: object) -> bool:
        nonlocal shown
        shown += 1
        return add_message(message)  # type: ignore[arg-type]

    app.view.add_message = counting_add_message  # type: ignore[method-assign]
    try:
        app.connect("127.0.0.1", server.port, "reader")
        deadline = time.monotonic() + 10
        while not (app.client and app.client.joined) and time.monotonic() < deadline:
            root.update()
        with RawClient(server.port) as sender:
            sender.join("sender")
            burst = b"".join(
                frame({"type": "say", "text": f"burst message {i} " + "x" * 60})
                for i in range(messages)
            )
            root.after(5, heartbeat)
            started = time.perf_counter()
            sender.send_raw(burst)
            deadline = time.monotonic() + 120
            while shown < messages and time.monotonic() < deadline:
                root.update()
            elapsed = time.perf_counter() - started
            assert app.view.transcript_text().count("burst message") == shown
    finally:
        app.close()
        root.destroy()
        server.stop(None)
    return {
        "messages": messages,
        "shown": shown,
        "all shown after (s)": elapsed,
        "messages/s shown": shown / elapsed,
        "longest stall (ms)": 1000 * max(gaps),
        "median stall (ms)": 1000 * statistics.median(gaps),
        "stalls over 100 ms": sum(gap > 0.1 for gap in gaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    result = run(parser.parse_args().messages)
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
        print(f"{key:<{width}}  {shown}")


if __name__ == "__main__":
    main()
