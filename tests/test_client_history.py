"""The client's side of history pages and search, without a display: the
network thread's senders and its checks of what comes back (against
``tests.fake_room``'s scripted server and a real one), the last ids seen
(``app/last_seen.py``) and the search pane's word folding.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.last_seen import MAX_SERVERS, LastSeen, server_key
from app.network import ChatClient, HistoryLoaded, Received, SearchFound, Welcomed
from app.search_panel import excerpt, fold, hits, query_words
from app.trust import Pin
from server.chat_server import ChatServer
from server.protocol import MAX_PAGE, MAX_TEXT_LENGTH, Error
from server.store.words import words
from tests.fake_room import FakeRoom, message
from tests.test_network import expect_no, last
from tests.trust_helpers import PlaintextAgreed
from tests.wire import RawClient, frame

HOST = "127.0.0.1"


@pytest.fixture
def rooms() -> Iterator[Callable[..., FakeRoom]]:
    running: list[FakeRoom] = []

    def start(messages: list[dict[str, Any]], **options: Any) -> FakeRoom:
        running.append(FakeRoom(messages, **options))
        return running[-1]

    yield start
    for room in running:
        room.stop()


@pytest.fixture
def connect() -> Iterator[Callable[[int], ChatClient]]:
    clients: list[ChatClient] = []

    def make(port: int) -> ChatClient:
        client = ChatClient(HOST, port, "alice", known=PlaintextAgreed())
        clients.append(client)
        client.start()
        assert isinstance(last(client, Welcomed), Welcomed)
        return client

    yield make
    for client in clients:
        client.close(3.0)


def numbered(count: int, first: int = 1) -> list[dict[str, Any]]:
    return [message(number) for number in range(first, first + count)]


# -- the senders, and what comes back --------------------------------------------------


def test_history_and_search_are_sent_and_answered_made_safe(
    rooms: Callable[..., FakeRoom], connect: Callable[[int], ChatClient]
) -> None:
    nasty = message(7, "evil\u202e\x07text " + "z" * 9000, "b\nad\u202ename", ts=-5.0)
    room = rooms([*numbered(6), nasty, *numbered(3, first=8)], replay=0)
    client = connect(room.port)
    assert client.history(9, 5)
    page = last(client, HistoryLoaded)
    assert room.requests == [{"type": "history", "before": 9, "limit": 5}]
    assert not page.refused and page.page.more
    assert [m.id for m in page.page.messages] == [4, 5, 6, 7, 8]
    shown = page.page.messages[3]
    assert "\u202e" not in shown.text and "\x07" not in shown.text
    assert len(shown.text) == MAX_TEXT_LENGTH and shown.text.endswith("\u2026")
    assert "\n" not in shown.sender and "\u202e" not in shown.sender
    assert shown.ts > 0  # clamped into what every platform can show

    assert client.search("EVIL", 10)
    found = last(client, SearchFound)
    assert room.requests[-1] == {"type": "search", "query": "EVIL", "limit": 10}
    assert [m.id for m in found.results.messages] == [7] and found.results.query == "EVIL"
    assert client.search("message", 2, before=5)
    found = last(client, SearchFound)
    assert [m.id for m in found.results.messages] == [4, 3] and found.results.more


def bad_pages(before: int) -> dict[str, list[int]]:
    below = list(range(before - 20, before))
    return {
        "wrong order": below[::-1],
        "not below before": [*below[1:], before],
        "duplicate ids": [*below[:10], *below[9:19]],
        "more than a page": list(range(1, MAX_PAGE + 2)),
        "id out of range": [*below[:-1], 2**60],
    }


@pytest.mark.parametrize("kind", list(bad_pages(100)))
def test_a_page_that_breaks_the_rules_is_refused_empty(
    rooms: Callable[..., FakeRoom], connect: Callable[[int], ChatClient], kind: str
) -> None:
    def answer(obj: dict[str, Any]) -> dict[str, Any]:
        ids = bad_pages(obj["before"])[kind]
        messages = [{**message(n), "history": True} for n in ids]
        return {"type": "history-page", "before": obj["before"], "messages": messages, "more": True}

    room = rooms(numbered(10), replay=0, answer=answer)
    client = connect(room.port)
    client.history(100, 20)
    loaded = last(client, HistoryLoaded)
    assert loaded.refused and loaded.page.messages == () and not loaded.page.more
    assert client.joined  # dropped quietly: the connection goes on


@pytest.mark.parametrize("kind", ["wrong order", "a private one"])
def test_search_results_that_break_the_rules_are_refused_empty(
    rooms: Callable[..., FakeRoom], connect: Callable[[int], ChatClient], kind: str
) -> None:
    def answer(obj: dict[str, Any]) -> dict[str, Any]:
        ids = [1, 2, 3] if kind == "wrong order" else [3, 2, 1]
        messages = [message(n) for n in ids]
        if kind == "a private one":
            messages[1]["to"] = "alice"
        query = obj["query"]
        return {"type": "search-results", "query": query, "messages": messages, "more": False}

    room = rooms(numbered(10), replay=0, answer=answer)
    client = connect(room.port)
    client.search("message", 10)
    found = last(client, SearchFound)
    assert found.refused and found.results.messages == ()


def test_pages_nobody_asked_for_never_reach_the_ui(
    rooms: Callable[..., FakeRoom], connect: Callable[[int], ChatClient]
) -> None:
    stray_page = {"type": "history-page", "before": 3, "messages": [message(1)], "more": True}
    stray_results = {"type": "search-results", "query": "other", "messages": [], "more": False}

    def answer(obj: dict[str, Any]) -> bytes:
        stray = frame(stray_page) * 500 + frame(stray_results) * 500
        proper = room.page(obj) if obj["type"] == "history" else room.found(obj)
        return stray + frame(proper)

    room = rooms(numbered(30), replay=0, answer=answer)
    client = connect(room.port)
    client.history(20, 5)
    loaded = last(client, HistoryLoaded)
    assert loaded.page.before == 20 and [m.id for m in loaded.page.messages] == [15, 16, 17, 18, 19]
    client.search("message", 3)
    found = last(client, SearchFound)
    assert found.results.query == "message" and len(found.results.messages) == 3
    expect_no(client, HistoryLoaded | SearchFound, 0.3)
    assert client.events.qsize() < 10  # 2,000 stray pages were not queued


def test_an_error_answers_its_request_and_a_late_page_is_then_dropped(
    rooms: Callable[..., FakeRoom], connect: Callable[[int], ChatClient]
) -> None:
    def answer(obj: dict[str, Any]) -> bytes:
        error = {"type": "error", "code": "bad-field", "message": "No.", "in_reply_to": "history"}
        return frame(error) + frame(room.page(obj))

    room = rooms(numbered(30), replay=0, answer=answer)
    client = connect(room.port)
    client.history(10, 5)
    error = last(client, Received)
    assert isinstance(error.message, Error) and error.message.in_reply_to == "history"
    expect_no(client, HistoryLoaded, 0.5)


# -- against the real server --------------------------------------------------------


def test_pages_and_search_from_a_real_server(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    connect: Callable[[int], ChatClient],
) -> None:
    server = start_server(rate_limit=None)
    bob = open_client(server, "bob")
    for number in range(1, 31):
        text = "Pizza Friday?" if number in (3, 17) else f"line {number}"
        bob.send({"type": "say", "text": text})
        bob.skip_until("message")
    client = connect(server.port)
    client.history(None, 10)
    page = last(client, HistoryLoaded)
    assert not page.refused and [m.text for m in page.page.messages][-1] == "line 30"
    oldest = page.page.messages[0].id
    client.history(oldest, 200)
    page = last(client, HistoryLoaded)
    assert not page.refused and not page.page.more and len(page.page.messages) == 20
    client.search("PIZZA", 50)
    found = last(client, SearchFound)
    assert not found.refused and [m.text for m in found.results.messages] == ["Pizza Friday?"] * 2
    ids = [m.id for m in found.results.messages]
    assert ids == sorted(ids, reverse=True)


# -- the last ids seen ----------------------------------------------------------------


def test_last_seen_is_kept_by_fingerprint_else_address_atomically_and_bounded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last_seen.json"
    fingerprint = "sha256:" + "ab" * 32
    pin = Pin(fingerprint, 0.0, ("10.0.0.5:7000",))
    assert server_key("10.0.0.9", 7000, pin) == fingerprint  # a new address, the same room
    assert server_key("LocalHost", 7000, None) == "localhost:7000"
    seen = LastSeen(path)
    seen.saw(fingerprint, 40)
    seen.saw(fingerprint, 12)  # an older id never takes the place of a newer one
    seen.saw("localhost:7000", 3)
    seen.save()
    assert [p.name for p in tmp_path.iterdir()] == ["last_seen.json"]  # no temporary left
    again = LastSeen(path)
    assert again.get(fingerprint) == 40 and again.get("localhost:7000") == 3
    for number in range(MAX_SERVERS + 50):
        again.saw(f"10.1.{number // 256}.{number % 256}:1", number + 1)
    again.save()
    kept = json.loads(path.read_text())["servers"]
    assert len(kept) == MAX_SERVERS and "localhost:7000" not in kept


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"version": 2, "servers": {}}',
        b'{"version": 1, "servers": []}',
        json.dumps({"version": 1, "servers": {"a:1": "12", "b:1": -1, "c:1": 2**60}}).encode(),
        b"[" * 300_000,
    ],
)
def test_a_damaged_last_seen_file_counts_as_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "last_seen.json"
    path.write_bytes(content)
    seen = LastSeen(path)
    assert seen.get("a:1") is None and seen.get("b:1") is None and seen.get("c:1") is None


# -- the search pane's words ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Crème BRÛLÉE, ﬁne!",
        "\uff26\uff55\uff4c\uff4c \uff21\uff22\uff23",  # fullwidth "Full ABC"
        unicodedata.normalize("NFD", "Ça va, Zoë? naïve_café"),
        "İstanbul straße ΣΊΣΥΦΟΣ",
        "numbers 42 and ٤٢ and x²",
    ],
)
def test_folding_finds_the_words_the_server_finds(text: str) -> None:
    assert query_words(text) == words(text)
    found = {fold(text[start:end]) for start, end in hits(text, query_words(text))}
    assert {w for f in found for w in query_words(f)} == words(text)


def test_hits_are_whole_words_and_excerpts_start_near_the_first() -> None:
    text = "pizzas and pizza, PIZZA-time: piz za"
    assert [text[a:b] for a, b in hits(text, query_words("pizza"))] == ["pizza", "PIZZA"]
    assert query_words("?! ...") == frozenset()
    long = "x " * 1000 + "the PIZZA is here " + "y " * 1000
    shown = excerpt(long, query_words("pizza"))
    assert shown.startswith("\u2026") and shown.endswith("\u2026") and "PIZZA" in shown
    assert len(shown) <= 400
