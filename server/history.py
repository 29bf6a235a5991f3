"""History pages and searches, answered off the I/O loops (PROTOCOL.md, "History pages and search").

How this works: a session that receives ``history`` or ``search`` checks
its fields, then hands the question to ``HistoryService.ask`` and stops
serving its own input until the answer comes (``Session.waiting``), so a
connection has at most one question in flight and its later frames keep
their order behind it. A few worker threads take questions in the order
asked, run them against the ``HistoryStore`` (which may read a disk; never
under the room's lock, never on a loop), encode the answer with
``encode_page`` (which keeps it within one frame) and hand it to the
asking connection's own thread through the callback it gave, which uses
``call_soon``.

Pages are cheap (an index lookup) and searches may not be: a store bounds
a search's work to a fraction of a second, but many searches could still
keep every worker busy. So pages and searches wait in two queues; the
first worker answers pages only, the others searches first and pages when
no search waits: however many searches people send, a page waits at most
for the pages before it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from server.protocol import (
    ErrorCode,
    History,
    HistoryPage,
    RemoteProtocolError,
    Search,
    SearchResults,
    encode_page,
)
from server.store import HistoryStore, as_history

logger = logging.getLogger("server")

DEFAULT_WORKERS = 2
"""Threads answering questions: one for pages only, one for searches (and pages)."""

Answer = bytes | RemoteProtocolError
"""A question's answer: the encoded frame, or the error to send instead."""

_Question = tuple[Callable[[], bytes], HistoryPage | SearchResults, Callable[[Answer], None]]


class HistoryService:
    """Worker threads answering ``history`` and ``search`` from ``store``.

    ``ask`` may be called from any thread; its ``reply`` is called from a
    worker thread with the answer, exactly once per question asked before
    ``close`` (questions asked after it are not answered).
    """

    def __init__(self, store: HistoryStore, workers: int = DEFAULT_WORKERS) -> None:
        self.store = store
        self._pages: deque[_Question] = deque()
        self._searches: deque[_Question] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, args=(index == 0,), name=f"history-{index}")
            for index in range(max(2, workers))
        ]
        for thread in self._threads:
            thread.start()

    def page(self, before: int | None, limit: int, reply: Callable[[Answer], None]) -> None:
        """Answer a ``history`` (fields already checked) through ``reply``."""

        def answer() -> bytes:
            messages, more = self.store.page(before, limit)
            found = tuple(as_history(message) for message in messages)
            return encode_page(HistoryPage(before, found, more))

        self._ask(answer, HistoryPage(before, (), True), reply)

    def search(
        self, query: str, limit: int, before: int | None, reply: Callable[[Answer], None]
    ) -> None:
        """Answer a ``search`` (fields already checked) through ``reply``."""

        def answer() -> bytes:
            messages, more = self.store.search(query, limit, before)
            found = tuple(as_history(message) for message in messages)
            return encode_page(SearchResults(query, found, more))

        self._ask(answer, SearchResults(query, (), True), reply)

    def _ask(
        self,
        answer: Callable[[], bytes],
        empty: HistoryPage | SearchResults,
        reply: Callable[[Answer], None],
    ) -> None:
        queue = self._pages if isinstance(empty, HistoryPage) else self._searches
        with self._ready:
            if self._closed:
                return
            queue.append((answer, empty, reply))
            self._ready.notify_all()  # the page worker would not take a search

    def close(self, timeout: float = 2.0) -> None:
        """Stop the workers once the questions asked so far are answered."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _work(self, pages_only: bool) -> None:
        nothing: deque[_Question] = deque()  # the page worker's second queue
        first, second = (self._pages, nothing) if pages_only else (self._searches, self._pages)
        while True:
            with self._ready:
                while not first and not second and not self._closed:
                    self._ready.wait()
                if not first and not second:
                    return  # closed, and every question asked is answered
                answer, empty, reply = (first or second).popleft()
            reply(_answer(answer, empty))


def _answer(answer: Callable[[], bytes], empty: HistoryPage | SearchResults) -> Answer:
    kind = History.TYPE if isinstance(empty, HistoryPage) else Search.TYPE
    try:
        return answer()
    except ValueError as exc:  # the store's word for a question it cannot answer
        return RemoteProtocolError(ErrorCode.BAD_FIELD, f"That cannot be asked: {exc}.", kind)
    except Exception:
        # A bug, or a store that could not read: the asker still gets an
        # answer (an empty one that says older messages may remain), or it
        # would wait for ever; the log says what happened.
        logger.exception("history: cannot answer a %s", kind)
        return encode_page(empty)
