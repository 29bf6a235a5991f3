"""History pages and search against a real server (PROTOCOL.md, "History pages and search").

Each test starts a real server on a free port and speaks to it through
``tests.wire``'s independent client. The store here is whatever the server
keeps by default; ``tests/test_store_sqlite.py`` covers the disk store on
its own, and ``tests/test_server_store.py`` its life across restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from server.chat_server import ChatServer
from tests.wire import RawClient

Open = Callable[..., RawClient]


def say_all(client: RawClient, texts: list[str]) -> list[int]:
    """Say each text and wait for its echo; the ids, in order."""
    ids = []
    for text in texts:
        client.send({"type": "say", "text": text})
        ids.append(client.skip_until("message")["id"])
    return ids


def ask(client: RawClient, frame: dict[str, Any], answer: str) -> dict[str, Any]:
    client.send(frame)
    return client.skip_until(answer)


def test_welcome_lists_history_pages_and_search(server: ChatServer, open_client: Open) -> None:
    welcome = open_client(server).join("alice")
    assert {"history-pages", "search"} <= set(welcome["features"])


def test_pages_go_back_through_every_public_message(
    start_server: Callable[..., ChatServer], open_client: Open
) -> None:
    server = start_server(history=300, rate_limit=None)
    alice = open_client(server, "alice")
    ids = say_all(alice, [f"message {n}" for n in range(120)])
    page = ask(alice, {"type": "history", "limit": 50}, "history-page")
    assert [m["id"] for m in page["messages"]] == ids[-50:]  # the newest, oldest first
    assert page["more"] is True
    assert all(m["type"] == "message" and m["history"] is True for m in page["messages"])
    assert page["messages"][-1]["text"] == "message 119"
    older = ask(alice, {"type": "history", "before": ids[-50], "limit": 200}, "history-page")
    assert [m["id"] for m in older["messages"]] == ids[:-50]
    assert older["more"] is False
    assert older["before"] == ids[-50]


def test_the_default_limit_is_fifty(
    start_server: Callable[..., ChatServer], open_client: Open
) -> None:
    server = start_server(history=300, rate_limit=None)
    alice = open_client(server, "alice")
    ids = say_all(alice, [f"m{n}" for n in range(60)])
    page = ask(alice, {"type": "history"}, "history-page")
    assert [m["id"] for m in page["messages"]] == ids[-50:]


def test_a_private_message_is_never_paged_or_found(server: ChatServer, open_client: Open) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.skip_until("joined")
    bob.send({"type": "say", "text": "secret pizza", "to": "alice"})
    bob.skip_until("message")
    bob.send({"type": "say", "text": "public pizza"})
    bob.skip_until("message")
    page = ask(bob, {"type": "history"}, "history-page")
    assert [m["text"] for m in page["messages"]] == ["public pizza"]
    found = ask(alice, {"type": "search", "query": "pizza"}, "search-results")
    assert [m["text"] for m in found["messages"]] == ["public pizza"]


def test_search_finds_every_word_without_case_or_accents_newest_first(
    start_server: Callable[..., ChatServer], open_client: Open
) -> None:
    server = start_server(rate_limit=None)
    alice = open_client(server, "alice")
    texts = ["Pizza on Friday?", "crème brûlée friday", "PIZZA friday!", "pizza", "Friday PÌZZA"]
    ids = say_all(alice, texts)
    found = ask(alice, {"type": "search", "query": "pizza FRIDAY"}, "search-results")
    assert found["query"] == "pizza FRIDAY"
    assert [m["id"] for m in found["messages"]] == [ids[4], ids[2], ids[0]]
    assert all(m["history"] is True for m in found["messages"])
    assert found["more"] is False
    found = ask(alice, {"type": "search", "query": "creme", "limit": 1}, "search-results")
    assert [m["id"] for m in found["messages"]] == [ids[1]]
    # the limit, then more, then on from before
    found = ask(alice, {"type": "search", "query": "pizza", "limit": 2}, "search-results")
    assert [m["id"] for m in found["messages"]] == [ids[4], ids[3]]
    assert found["more"] is True
    rest = ask(alice, {"type": "search", "query": "pizza", "before": ids[3]}, "search-results")
    assert [m["id"] for m in rest["messages"]] == [ids[2], ids[0]]
    assert rest["more"] is False


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "history", "limit": 0}, "limit"),
        ({"type": "history", "limit": 201}, "limit"),
        ({"type": "history", "limit": "5"}, "limit"),
        ({"type": "history", "before": 0}, "before"),
        ({"type": "history", "before": -3}, "before"),
        ({"type": "history", "before": 2**70}, "before"),
        ({"type": "history", "before": 1.5}, "before"),
        ({"type": "search", "query": ""}, "query"),
        ({"type": "search", "query": "  ?! --  "}, "query"),
        ({"type": "search", "query": "x" * 4001}, "query"),
        ({"type": "search", "query": " ".join(f"w{n}" for n in range(17))}, "query"),
        ({"type": "search", "query": 5}, "query"),
        ({"type": "search"}, "query"),
        ({"type": "search", "query": "pizza", "limit": 500}, "limit"),
    ],
)
def test_bad_fields_are_bad_field_and_the_connection_stays(
    server: ChatServer, open_client: Open, frame: dict[str, Any], field: str
) -> None:
    alice = open_client(server, "alice")
    error = alice_error = ask(alice, frame, "error")
    assert error["code"] == "bad-field"
    assert error["in_reply_to"] == frame["type"]
    assert f"`{field}`" in alice_error["message"]
    alice.send({"type": "say", "text": "still here"})
    assert alice.skip_until("message")["text"] == "still here"


def test_before_the_join_history_is_not_joined(server: ChatServer, open_client: Open) -> None:
    client = open_client(server)
    client.send({"type": "history"})
    assert client.expect_error("not-joined")["in_reply_to"] == "history"


def test_questions_take_no_rate_limit_token_and_keep_their_order(
    server: ChatServer, open_client: Open
) -> None:
    alice = open_client(server, "alice")
    # Far more questions than the burst of 20, each followed by a ping:
    # every one answered, none rate-limited, each answer before its ping's pong.
    for n in range(60):
        alice.send({"type": "history", "limit": 1})
        alice.send({"type": "ping", "n": n})
    for n in range(60):
        assert alice.recv()["type"] == "history-page"
        assert alice.recv() == {"type": "pong", "n": n}


def test_a_page_never_outgrows_a_frame(
    start_server: Callable[..., ChatServer], open_client: Open
) -> None:
    server = start_server(history=300, rate_limit=None)
    alice = open_client(server, "alice")
    # 200 texts of 4,000 characters of three UTF-8 bytes each: 2.4 MB as one page.
    ids = say_all(alice, [f"{n} " + "€" * 3990 for n in range(200)])
    page = ask(alice, {"type": "history", "limit": 200}, "history-page")
    got = [m["id"] for m in page["messages"]]
    assert 0 < len(got) < 200
    assert got == ids[-len(got) :]  # the newest ones, none skipped
    assert page["more"] is True
    found = ask(alice, {"type": "search", "query": "€", "limit": 200}, "error")
    assert found["code"] == "bad-field"  # a euro sign is no letter or number
    results = ask(alice, {"type": "search", "query": "0 1 2", "limit": 200}, "search-results")
    assert results["messages"] == []


def test_a_leaver_with_a_question_out_goes_cleanly(server: ChatServer, open_client: Open) -> None:
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    alice.send({"type": "search", "query": "anything"})
    alice.send({"type": "bye"})
    alice.expect_closed()
    left = bob.skip_until("left")
    assert left["name"] == "alice"
    bob.send({"type": "history"})
    assert bob.skip_until("history-page")["more"] is False
