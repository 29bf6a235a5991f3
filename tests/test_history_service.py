"""server/history.py: questions answered on worker threads, pages never behind searches."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from server.history import Answer, HistoryService
from server.protocol import ChatMessage, RemoteProtocolError
from server.store import HistoryEntry, HistoryStore
from server.store.memory import MemoryHistory

WAIT = 5.0


class GatedStore(HistoryStore):
    """A memory history whose searches wait until ``release`` (or fail as told)."""

    def __init__(self) -> None:
        self.inner = MemoryHistory(100)
        self.gate = threading.Event()
        self.searching = threading.Semaphore(0)
        self.fail: BaseException | None = None

    def append(self, message: ChatMessage) -> bool:
        return self.inner.append(message)

    def watch_durable(self, callback: Any) -> None:
        pass

    def recent(self) -> Sequence[HistoryEntry]:
        return self.inner.recent()

    def page(self, before: int | None, limit: int) -> tuple[list[ChatMessage], bool]:
        if self.fail is not None:
            raise self.fail
        return self.inner.page(before, limit)

    def search(
        self, query: str, limit: int, before: int | None = None
    ) -> tuple[list[ChatMessage], bool]:
        self.searching.release()
        assert self.gate.wait(WAIT)
        return self.inner.search(query, limit, before)


class Replies:
    """Collects answers, from whichever thread, and waits for them."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self._arrived = threading.Condition()

    def __call__(self, answer: Answer) -> None:
        with self._arrived:
            self.answers.append(answer)
            self._arrived.notify_all()

    def wait_for(self, count: int) -> list[Answer]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.answers) >= count, WAIT)
            return list(self.answers)


def payload(answer: Answer) -> dict[str, Any]:
    assert isinstance(answer, bytes)
    return json.loads(answer[4:])


@pytest.fixture
def store() -> GatedStore:
    gated = GatedStore()
    for n in range(1, 11):
        gated.append(ChatMessage(n, "alice", f"pizza {n}", 1.0))
    return gated


def test_a_page_is_answered_while_searches_hold_the_other_worker(store: GatedStore) -> None:
    service = HistoryService(store)
    searches, pages = Replies(), Replies()
    try:
        for _ in range(5):
            service.search("pizza", 3, None, searches)
        assert store.searching.acquire(timeout=WAIT)  # one search is being worked on
        service.page(None, 4, pages)
        (page,) = pages.wait_for(1)
        assert [m["id"] for m in payload(page)["messages"]] == [7, 8, 9, 10]
        assert searches.answers == []  # still waiting at the gate
    finally:
        store.gate.set()
        service.close()
    assert len(searches.wait_for(5)) == 5
    assert all([m["id"] for m in payload(a)["messages"]] == [10, 9, 8] for a in searches.answers)


def test_answers_are_marked_history_and_within_a_frame(store: GatedStore) -> None:
    service = HistoryService(store)
    replies = Replies()
    store.gate.set()
    try:
        service.page(5, 2, replies)
        service.search("PIZZA", 2, 9, replies)
        answers = replies.wait_for(2)
    finally:
        service.close()
    # Two workers: either may answer first.
    page, found = sorted(answers, key=lambda answer: payload(answer)["type"])
    assert payload(page) == {
        "type": "history-page",
        "before": 5,
        "more": True,
        "messages": [
            {"type": "message", "id": n, "from": "alice", "text": f"pizza {n}", "ts": 1.0,
             "history": True}
            for n in (3, 4)
        ],
    }  # fmt: skip
    assert payload(found)["query"] == "PIZZA"
    assert [m["id"] for m in payload(found)["messages"]] == [8, 7]


def test_a_store_that_cannot_answer_still_answers(
    store: GatedStore, caplog: pytest.LogCaptureFixture
) -> None:
    service = HistoryService(store)
    replies = Replies()
    try:
        store.fail = ValueError("a query holds at most 16 different words")
        service.page(None, 5, replies)
        replies.wait_for(1)
        store.fail = OSError("disk I/O error")
        service.page(3, 5, replies)
        refused, broken = replies.wait_for(2)
    finally:
        service.close()
    assert isinstance(refused, RemoteProtocolError)
    assert (refused.code, refused.in_reply_to) == ("bad-field", "history")
    assert "16 different words" in refused.message
    # An empty page that says older ones may remain, not a silence.
    assert payload(broken) == {"type": "history-page", "before": 3, "more": True, "messages": []}
    assert "disk I/O error" in caplog.text


def test_close_answers_what_was_asked_and_nothing_after(store: GatedStore) -> None:
    service = HistoryService(store)
    replies = Replies()
    for n in range(20):
        service.page(None, 1 + n % 5, replies)
    service.close()
    assert len(replies.answers) == 20
    service.page(None, 1, replies)
    service.close()  # twice is harmless
    assert len(replies.answers) == 20
    assert not any(thread.is_alive() for thread in service._threads)
