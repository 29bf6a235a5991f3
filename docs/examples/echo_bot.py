#!/usr/bin/env python3
"""A chat bot that answers every message mentioning it, with the standard library only.

    python3 docs/examples/echo_bot.py --host 127.0.0.1 --port 12345 --name echo

It speaks the core of the chat protocol (docs/protocol.md) in plain
TCP, and a starting point for your own bot: change ``answer``.

How this works: one thread, one blocking socket read with a short timeout,
so that a stop (Ctrl+C, SIGTERM) or a silence is noticed within a moment.
After ``hello`` the server sends ``welcome`` and then replays recent
messages marked ``history``: the bot answers none of those, nor its own
messages, which the server echoes back to it like everyone else's. It
answers the server's ``ping`` with ``pong`` (a bot that does not is
dropped after 90 seconds), pings the server itself when it has heard
nothing for a while, and spends at most a few answers a second, below
the server's rate limit. When the connection ends (the server's
``shutdown``, a lost network) it connects again after a pause that grows
from one second to thirty; after an error that says not to (``kicked``,
``banned``, ...) it stops.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

HEADER = struct.Struct(">I")  # every frame: a 4-byte big-endian length, then JSON
MAX_SERVER_FRAME = 1024 * 1024
MAX_TEXT = 4000  # code points in one message
READ_TIMEOUT = 0.25  # seconds a read waits, so that a stop is seen soon
PING_AFTER = 20.0  # silence before the bot asks whether the server is still there
DEAD_AFTER = 45.0  # silence after which it gives the connection up
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
HEALTHY_AFTER = 30.0  # a connection this old resets the pause between attempts
ANSWERS_PER_SECOND = 2.0  # the server allows 5 a second after a burst of 20
PENDING_ANSWERS = 20  # answers waiting for their turn; beyond it the oldest are dropped
# After these the server does not want the bot back (a person decided, or
# trying again would be refused again); or the bot cannot do better.
STOP_ERRORS = {
    "kicked",
    "banned",
    "too-many-attempts",
    "tls-required",
    "tls-unavailable",
    "password-required",
    "protocol-version",
}
LOG_LENGTH = 200  # characters of a log line shown at most
NAME_TRIES = 5  # names tried (echo, echo-2, ...) while the one asked for is taken


class Stop(Exception):
    """The bot is not to connect again; ``args[0]`` says why."""


class Lost(Exception):
    """This connection is over; connecting again may help."""


STOPPING = threading.Event()  # set by a signal: leave politely at the next chance


def on_signal(_signum: int, _frame: object) -> None:
    STOPPING.set()


def answer(text: str, sender: str) -> str:
    """What the bot says back to ``sender``'s ``text`` (change this)."""
    return f"@{sender} you said: {text}"[:MAX_TEXT]


def mentions(text: str, name: str) -> bool:
    """Whether ``text`` names ``name`` as a word of its own, in any case."""
    return (
        re.search(rf"(?<![\w.-]){re.escape(name.casefold())}(?![\w-])", text.casefold()) is not None
    )


class Connection:
    """One TCP connection speaking frames."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10.0)
        self.sock.settimeout(READ_TIMEOUT)
        self.buffer = bytearray()
        self.heard = time.monotonic()

    def send(self, obj: dict[str, Any]) -> None:
        payload = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        try:
            self.sock.sendall(HEADER.pack(len(payload)) + payload)
        except OSError as exc:
            raise Lost(f"cannot send: {exc}") from None

    def receive(self) -> dict[str, Any] | None:
        """The next frame, or ``None`` if none came within ``READ_TIMEOUT``."""
        while True:
            if len(self.buffer) >= HEADER.size:
                (length,) = HEADER.unpack_from(self.buffer)
                if not 1 <= length <= MAX_SERVER_FRAME:
                    raise Lost(f"the server sent a frame of {length} bytes")
                if len(self.buffer) >= HEADER.size + length:
                    payload = bytes(self.buffer[HEADER.size : HEADER.size + length])
                    del self.buffer[: HEADER.size + length]
                    try:
                        obj = json.loads(payload)
                    except (ValueError, RecursionError):  # RecursionError: nested too deep
                        raise Lost("the server sent a frame that is not JSON") from None
                    if type(obj) is not dict or type(obj.get("type")) is not str:
                        raise Lost("the server sent a frame without a type")
                    self.heard = time.monotonic()
                    return obj
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise Lost(f"connection lost: {exc}") from None
            if not data:
                raise Lost("the server closed the connection")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def log(line: str) -> None:
    """Print a line that may hold what the server sent: short, and with nothing a
    terminal would act on (escape sequences, line breaks) left as it came."""
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line[:LOG_LENGTH])
    print(shown + ("…" if len(line) > LOG_LENGTH else ""), flush=True)


class Bot:
    """One connection's chat: join, then answer mentions until it ends."""

    def __init__(self, conn: Connection, wanted: str) -> None:
        self.conn = conn
        self.wanted = wanted
        self.name: str | None = None  # the name as the server keeps it, once welcomed
        self.tries = 1
        self.pending: deque[dict[str, Any]] = deque(maxlen=PENDING_ANSWERS)
        self.next_send = 0.0

    def chat(self) -> None:
        """Returns when the bot was stopped (after saying ``bye``); raises ``Lost`` or ``Stop``."""
        conn = self.conn
        conn.send({"type": "hello", "name": self.wanted, "protocol": 1})
        pinged = False
        while not STOPPING.is_set():
            now = time.monotonic()
            if self.pending and now >= self.next_send:
                conn.send(self.pending.popleft())
                self.next_send = now + 1.0 / ANSWERS_PER_SECOND
            silent = now - conn.heard
            if silent >= DEAD_AFTER:
                raise Lost(f"the server said nothing for {silent:.0f} seconds")
            if silent >= PING_AFTER and not pinged:
                conn.send({"type": "ping"})
                pinged = True
            frame = conn.receive()
            if frame is not None:
                pinged = False
                self.handle(frame)
        conn.send({"type": "bye"})  # the others see "left" with reason "quit"

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "ping":  # echo every field of the ping but its type
            self.conn.send({**frame, "type": "pong"})
        elif kind == "welcome":
            name, users = frame.get("name"), frame.get("users")
            if type(name) is not str or type(users) is not list:
                raise Lost("the server sent a welcome without a name or users")
            self.name = name
            log(f"joined as {name}; {len(users)} in the room")
        elif kind == "message" and self.name is not None:
            sender, text = frame.get("from"), frame.get("text")
            if type(sender) is not str or type(text) is not str:
                return  # not a message this bot understands
            if frame.get("history") or sender == self.name:
                return  # a replay from before we came, or our own echo
            if frame.get("to") is not None:  # a private message: answer in private
                self.pending.append({"type": "say", "text": answer(text, sender), "to": sender})
            elif mentions(text, self.name):
                self.pending.append({"type": "say", "text": answer(text, sender)})
        elif kind == "shutdown":
            raise Lost(f"the server is stopping: {frame.get('message')}")
        elif kind == "error":
            self.on_error(frame)
        # Every other frame (joined, left, users, notices, frames of
        # extensions or of later versions) is none of this bot's business.

    def on_error(self, frame: dict[str, Any]) -> None:
        code = frame.get("code")
        log(f"error {code}: {frame.get('message')}")
        if code in STOP_ERRORS:
            raise Stop(f"the server said {code}")
        if code == "name-taken" and self.name is None and self.tries < NAME_TRIES:
            self.tries += 1  # after a reconnect our old connection may still hold the name
            self.conn.send({"type": "hello", "name": f"{self.wanted}-{self.tries}", "protocol": 1})
        elif code in ("name-taken", "name-invalid") and self.name is None:
            raise Stop(f"cannot join as {self.wanted}: {frame.get('message')}")
        elif code == "rate-limited":
            self.next_send = time.monotonic() + 1.0  # the bucket refills at 5 a second


def pause(seconds: float) -> None:
    """Sleep, but wake at once for a stop."""
    # In short steps: on Windows a signal's handler runs only between them.
    end = time.monotonic() + seconds
    while not STOPPING.is_set() and time.monotonic() < end:
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def run(host: str, port: int, name: str) -> int:
    """Connect, chat, and connect again after a pause whenever it ends. The exit status."""
    delay = BACKOFF_FIRST
    while not STOPPING.is_set():
        started = time.monotonic()
        try:
            conn = Connection(host, port)
        except OSError as exc:
            log(f"cannot connect to {host}:{port}: {exc}")
        else:
            log(f"connected to {host}:{port}")
            try:
                Bot(conn, name).chat()
                return 0
            except Lost as exc:
                log(str(exc))
            except Stop as exc:
                log(f"{exc}; not connecting again")
                return 1
            finally:
                conn.close()
        if time.monotonic() - started >= HEALTHY_AFTER:
            delay = BACKOFF_FIRST
        wait = delay * random.uniform(0.5, 1.0)  # jitter: bots started together spread out
        log(f"connecting again in {wait:.1f} s")
        pause(wait)
        delay = min(delay * 2, BACKOFF_MAX)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="A chat bot that answers messages mentioning it.")
    parser.add_argument("--host", default="127.0.0.1", help="the server's address")
    parser.add_argument("--port", type=int, default=12345, help="the server's port")
    parser.add_argument("--name", default="echo", help="the name to join as")
    args = parser.parse_args()
    # Names and messages from the room may hold characters the console's
    # encoding lacks (a Windows code page): shown escaped, not a crash.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGBREAK"):  # Windows: Ctrl+Break, and how a parent stops a console child
        signal.signal(signal.SIGBREAK, on_signal)
    return run(args.host, args.port, args.name)


if __name__ == "__main__":
    sys.exit(main())
