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
``call_soon``. A store's ``page`` and ``search`` bound their own work, so
one hostile search holds one worker for a fraction of a second at most,
and questions from everyone else go on to the other workers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Final

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
"""Threads answering questions: two, so that a slow search leaves one for pages."""

Answer = bytes | RemoteProtocolError
"""A question's answer: the encoded frame, or the error to send instead."""

_STOP: Final = None


class HistoryService:
    """Worker threads answering ``history`` and ``search`` from ``store``.

    ``ask`` may be called from any thread; its ``reply`` is called from a
    worker thread with the answer, exactly once per question asked before
    ``close`` (questions asked after it are not answered).
    """

    def __init__(self, store: HistoryStore, workers: int = DEFAULT_WORKERS) -> None:
        self.store = store
        self._questions: queue.SimpleQueue[
            tuple[Callable[[], bytes], HistoryPage | SearchResults, Callable[[Answer], None]] | None
        ] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"history-{index}", daemon=True)
            for index in range(max(1, workers))
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
        if not self._closed:
            self._questions.put((answer, empty, reply))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the workers once the questions asked so far are answered."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._questions.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)

    def _work(self) -> None:
        while (question := self._questions.get()) is not _STOP:
            answer, empty, reply = question
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
