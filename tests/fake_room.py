"""A scripted server for the client's history tests: it keeps a room's
messages and answers ``history`` and ``search`` as PROTOCOL.md says, or as
a test tells it to (a hostile page, an error, an answer held back).

It speaks the wire through ``tests.wire``'s frames and runs on one thread,
accepting one connection after another on 127.0.0.1 until ``stop``; every
wait is bounded. Search folds words with the server's own ``words``: the
client's folding (app/search_panel.py) is written apart from it, so the
tests compare the two.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from server.store.words import words
from tests.wire import frame

Answer = Callable[[dict[str, Any]], dict[str, Any] | bytes | None]


def an_hour_ago_today() -> float:
    """An hour ago, or midnight if that was yesterday: a time the client shows
    under no day heading, whenever the test runs."""
    midnight = time.mktime((*time.localtime()[:3], 0, 0, 0, 0, 0, -1))
    return max(time.time() - 3600, midnight)


def message(
    number: int, text: str | None = None, sender: str = "bob", ts: float | None = None
) -> dict[str, Any]:
    """A public message of the room, as the server keeps it."""
    return {
        "type": "message",
        "id": number,
        "from": sender,
        "text": f"message {number}" if text is None else text,
        "ts": an_hour_ago_today() if ts is None else ts,
    }


class ScriptedServer:
    """Listens on 127.0.0.1 and serves one connection after another with
    ``_serve``, on a thread of its own, until ``stop``, which raises what went
    wrong there in the test's thread. ``hold``, set at first, is for the
    script: while it is clear, answers wait. A subclass sets up what
    ``_serve`` uses before calling ``__init__``, which starts the thread."""

    def __init__(self, name: str) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self._stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.hold.set()
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop"
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    sock, _ = self.listener.accept()
                except TimeoutError:
                    continue
                with sock:
                    self._serve(sock)
        except BaseException as exc:  # reported by stop(), in the test's thread
            self.failure = exc

    def _frames(self, sock: socket.socket, *, ticks: bool = False) -> Iterator[dict[str, Any]]:
        """The client's frames, one at a time, until it closes or ``stop``;
        with ``ticks``, ``{}`` whenever 0.1 s passed without one."""
        buffer = b""
        sock.settimeout(0.1)
        while not self._stop.is_set():
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                length = struct.unpack(">I", buffer[:4])[0]
                yield json.loads(buffer[4 : 4 + length])
                buffer = buffer[4 + length :]
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                if ticks:
                    yield {}
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data

    def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError


class FakeRoom(ScriptedServer):
    """Listens on 127.0.0.1; each connection gets a welcome (with ``features``)
    and the newest ``replay`` of ``messages``, then its ``history`` and
    ``search`` answered. ``answer(frame)`` may replace an answer (a dict or
    raw bytes to send, ``None``: the proper one). While ``hold`` is clear,
    answers wait for it. ``requests``: the history and search frames received."""

    def __init__(
        self,
        messages: list[dict[str, Any]],
        *,
        replay: int = 100,
        features: tuple[str, ...] = ("history-pages", "search"),
        answer: Answer | None = None,
    ) -> None:
        self.messages = sorted(messages, key=lambda m: m["id"])
        self.replay = replay
        self.features = features
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        super().__init__("fake-room")

    def _serve(self, sock: socket.socket) -> None:
        for obj in self._frames(sock):
            kind = obj.get("type")
            if kind == "hello":
                shown = self.messages[-self.replay :] if self.replay else []
                welcome = {
                    "type": "welcome",
                    "name": obj["name"],
                    "users": [obj["name"], "bob"],
                    "history_count": len(shown),
                    "features": list(self.features),
                }
                replayed = b"".join(frame({**m, "history": True}) for m in shown)
                sock.sendall(frame(welcome) + replayed)
            elif kind == "ping":
                sock.sendall(frame({"type": "pong"}))
            elif kind in ("history", "search"):
                self.requests.append(obj)
                while not self.hold.wait(0.1):
                    if self._stop.is_set():
                        return
                reply = self.answer(obj) if self.answer is not None else None
                if reply is None:
                    reply = self.page(obj) if kind == "history" else self.found(obj)
                try:
                    sock.sendall(reply if isinstance(reply, bytes) else frame(reply))
                except OSError:
                    return
            elif kind == "say":
                number = self.messages[-1]["id"] + 1 if self.messages else 1
                said = message(number, obj["text"], "alice", time.time())
                self.messages.append(said)
                sock.sendall(frame(said))
            elif kind == "bye":
                return

    def page(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The proper ``history-page`` for ``obj``."""
        before, limit = obj.get("before"), obj.get("limit", 50)
        older = [m for m in self.messages if before is None or m["id"] < before]
        chosen = older[-limit:]
        reply: dict[str, Any] = {
            "type": "history-page",
            "messages": [{**m, "history": True} for m in chosen],
            "more": len(older) > len(chosen),
        }
        if before is not None:
            reply["before"] = before
        return reply

    def found(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The proper ``search-results`` for ``obj`` (or ``bad-field``)."""
        wanted = words(obj["query"])
        if not wanted:
            return {
                "type": "error",
                "code": "bad-field",
                "message": "A search needs a word.",
                "in_reply_to": "search",
            }
        before, limit = obj.get("before"), obj.get("limit", 50)
        matches = [
            m
            for m in reversed(self.messages)
            if (before is None or m["id"] < before) and wanted <= words(m["text"])
        ]
        return {
            "type": "search-results",
            "query": obj["query"],
            "messages": [{**m, "history": True} for m in matches[:limit]],
            "more": len(matches) > limit,
        }
