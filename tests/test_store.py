"""Tests for server/store/: the room's stores on their own, then behind a room.

The memory stores are driven directly: names claimed and released by
identity and owner, ids continuing from a start, history pages walked back
to the first message, searches by words (case, accents, compatibility
forms), the errors a session will answer ``bad-field`` for, and readers on
another thread while the room appends. Then a room built with given
stores uses them, and only their non-blocking methods, under its lock.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Sequence

import pytest

from server.fanout import Outbox
from server.protocol import ChatMessage, FrameDecoder, LeaveReason, Users, encode, name_identity
from server.room import Member as RoomMember
from server.room import Room
from server.store import HistoryEntry, IdSource, NameRegistry, RecentHistory
from server.store.memory import MemoryHistory, MemoryIds, MemoryNames
from server.store.words import query_words, words

T0 = 1_763_900_000.0


def said(id_: int, text: str = "", sender: str = "alice") -> ChatMessage:
    return ChatMessage(id_, sender, text or f"message {id_}", T0 + id_)


def history_of(count: int, size: int = 100) -> MemoryHistory:
    history = MemoryHistory(size)
    for id_ in range(1, count + 1):
        history.append(said(id_))
    return history


def ids(messages: Sequence[ChatMessage]) -> list[int]:
    return [message.id for message in messages]


FULLWIDTH_PIZZA = "".join(chr(ord(char) + 0xFEE0) for char in "pizza")


class Owner:
    """Stands for a member: told apart by identity, not by value."""


# --------------------------------------------------------------------------
# Names


def test_a_name_identity_has_one_owner_until_released() -> None:
    names: MemoryNames[Owner] = MemoryNames()
    alice, other = Owner(), Owner()
    assert names.claim("alice", "Alice", alice)
    assert not names.claim("alice", "alice", other)  # the same identity, another spelling
    assert names.owner_of("alice") is alice
    assert not names.release("alice", other)  # only its owner frees it
    assert names.owner_of("alice") is alice and list(names.names) == ["Alice"]
    assert names.release("alice", alice)
    assert not names.release("alice", alice)  # twice is harmless
    assert names.owner_of("alice") is None and len(names) == 0
    assert names.claim("alice", "alice", other)
    assert names.owner_of("alice") is other


def test_rename_moves_an_owner_unless_the_new_identity_is_another_s() -> None:
    names: MemoryNames[Owner] = MemoryNames()
    alice, bob = Owner(), Owner()
    names.claim("alice", "alice", alice)
    names.claim("bob", "bob", bob)
    assert not names.rename("alice", "bob", "Bob", alice)
    assert list(names.names) == ["alice", "bob"] and names.owner_of("bob") is bob
    assert names.rename("alice", "alice", "ALICE", alice)  # its own identity, respelt
    assert names.rename("alice", "carol", "carol", alice)
    assert list(names.names) == ["bob", "carol"]
    assert names.owner_of("alice") is None and names.owner_of("carol") is alice
    assert len(names) == 2


def test_the_roster_is_sorted_by_identity_and_its_users_frame_kept_until_a_change() -> None:
    names: MemoryNames[Owner] = MemoryNames()
    for name in ["zed", "Émile", "bob", "Bob2"]:
        names.claim(name_identity(name), name, Owner())
    assert list(names.names) == ["bob", "Bob2", "zed", "Émile"]
    assert json.loads(names.names.json) == list(names.names)
    frame = names.users_frame
    assert frame == encode(Users(("bob", "Bob2", "zed", "Émile")))
    assert names.users_frame is frame
    names.claim("al", "al", Owner())
    assert names.users_frame is not frame
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(names.users_frame)
    assert decoder.next_payload() == {
        "type": "users",
        "users": ["al", "bob", "Bob2", "zed", "Émile"],
    }


# --------------------------------------------------------------------------
# Ids


def test_ids_count_up_from_the_last_one_used() -> None:
    fresh = MemoryIds()
    assert [fresh.next_id() for _ in range(3)] == [1, 2, 3]
    restarted = MemoryIds(start=41)  # a store that kept 41 as the last id used
    assert [restarted.next_id() for _ in range(2)] == [42, 43]


def test_ids_cannot_start_below_zero() -> None:
    with pytest.raises(ValueError, match="negative"):
        MemoryIds(start=-1)


# --------------------------------------------------------------------------
# History: the recent window and pages


def test_the_recent_window_is_the_last_size_messages_oldest_first() -> None:
    history = history_of(12, size=5)
    assert ids([entry.message for entry in history.recent()]) == [8, 9, 10, 11, 12]
    frame = history.recent()[0].frame
    assert frame == encode(ChatMessage(8, "alice", "message 8", T0 + 8, history=True))
    assert history.recent()[0].frame is frame  # encoded once


def test_a_long_history_keeps_exactly_the_last_size_through_its_trims() -> None:
    history = MemoryHistory(5)
    for id_ in range(1, 501):  # many times the slack: the list is replaced often
        history.append(said(id_))
        assert ids([entry.message for entry in history.recent()]) == list(
            range(max(1, id_ - 4), id_ + 1)
        )
        assert history.page(None, 50) == (
            [entry.message for entry in history.recent()],
            False,
        )


def test_pages_walk_back_to_the_first_message() -> None:
    history = history_of(10)
    walked = []
    before = None
    for _ in range(10):  # bounded: 4 pages are enough
        page, more = history.page(before, 3)
        walked.append((ids(page), more))
        if not more:
            break
        before = page[0].id
    assert walked == [
        ([8, 9, 10], True),
        ([5, 6, 7], True),
        ([2, 3, 4], True),
        ([1], False),
    ]


def test_a_page_that_ends_at_the_first_message_says_no_more() -> None:
    history = history_of(6)
    assert ids(history.page(4, 3)[0]) == [1, 2, 3]
    assert history.page(4, 3)[1] is False
    assert history.page(5, 3) == (history.page(5, 3)[0], True)
    assert history.page(None, 6)[1] is False
    assert history.page(None, 5)[1] is True
    assert history.page(1, 3) == ([], False)  # nothing before the first
    assert history.page(0, 3) == ([], False)


def test_a_page_never_reaches_past_the_messages_kept() -> None:
    history = history_of(30, size=10)
    page, more = history.page(None, 50)
    assert ids(page) == list(range(21, 31)) and more is False
    assert history.page(25, 50) == ([said(i) for i in range(21, 25)], False)
    assert history.page(21, 50) == ([], False)  # 1..20 are forgotten


def test_before_may_name_an_id_the_history_never_had() -> None:
    history = MemoryHistory(100)
    for id_ in (3, 7, 20):  # ids with gaps: private messages took the others
        history.append(said(id_))
    assert ids(history.page(10, 50)[0]) == [3, 7]
    assert ids(history.page(1000, 1)[0]) == [20]


def test_limits_below_one_are_refused() -> None:
    history = history_of(3)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit"):
            history.page(None, limit)
        with pytest.raises(ValueError, match="limit"):
            history.search("message", limit)


def test_a_history_of_size_zero_keeps_nothing() -> None:
    history = history_of(5, size=0)
    assert list(history.recent()) == []
    assert history.page(None, 10) == ([], False)
    assert history.search("message", 10) == ([], False)


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        MemoryHistory(-1)


# --------------------------------------------------------------------------
# History: search


def searching(*texts: str) -> MemoryHistory:
    history = MemoryHistory(100)
    for id_, text in enumerate(texts, start=1):
        history.append(said(id_, text))
    return history


def found(history: MemoryHistory, query: str, limit: int = 50) -> list[int]:
    messages, _ = history.search(query, limit)
    return ids(messages)


def test_search_needs_every_word_and_answers_newest_first() -> None:
    history = searching(
        "pizza on friday?",
        "pizza tonight",
        "FRIDAY: pizza again!",
        "no food friday",
    )
    assert found(history, "pizza friday") == [3, 1]
    assert found(history, "friday") == [4, 3, 1]
    assert found(history, "  Pizza,   FRIDAY. ") == [3, 1]  # punctuation is not a word
    assert found(history, "pizza sunday") == []


def test_search_matches_whole_words_only() -> None:
    history = searching("pizzas are great", "pizza_party", "pizza2go", "pizza")
    assert found(history, "pizza") == [4, 2]  # the underscore separates words
    assert found(history, "pizzas") == [1]
    assert found(history, "pizza2go") == [3]


def test_search_ignores_case_and_accents() -> None:
    history = searching("Crème Brûlée at Zoë's", "creme brulee", "Straße", FULLWIDTH_PIZZA + " ﬁne")
    assert found(history, "CREME brulee") == [2, 1]
    assert found(history, "crème BRÛLÉE") == [2, 1]
    assert found(history, "zoe") == [1]
    assert found(history, "STRASSE") == [3]  # case folding: ß is ss
    assert found(history, "pizza fine") == [4]  # fullwidth letters, the ﬁ ligature


def test_search_limits_with_more_and_before() -> None:
    history = searching(*["the same words"] * 5)
    assert history.search("same", 2) == (
        [said(5, "the same words"), said(4, "the same words")],
        True,
    )
    assert ids(history.search("same", 5)[0]) == [5, 4, 3, 2, 1]
    assert history.search("same", 5)[1] is False
    messages, more = history.search("same", 2, before=4)
    assert (ids(messages), more) == ([3, 2], True)
    messages, more = history.search("same", 2, before=3)
    assert (ids(messages), more) == ([2, 1], False)


@pytest.mark.parametrize("query", ["", "   ", "?!", "— … —", "_"])
def test_a_query_without_a_word_is_a_value_error(query: str) -> None:
    history = searching("something")
    with pytest.raises(ValueError, match="no word"):
        history.search(query, 10)
    with pytest.raises(ValueError, match="no word"):
        query_words(query)


def test_words_are_folded_the_same_in_both_paths() -> None:
    # ASCII takes a shortcut; with one accent the same words go the long way.
    assert words("Hello, WORLD_42 x") == {"hello", "world", "42", "x"}
    assert words("Hello, WORLD_42 x é") == {"hello", "world", "42", "x", "e"}
    # Compatibility forms: a digraph, a black-letter H, a fraction.
    assert words("ÅNGSTRÖM Ǆ \u210c ½") == {"angstrom", "dz", "h", "1", "2"}


# --------------------------------------------------------------------------
# History read from another thread while the room appends


def test_pages_and_searches_read_safely_while_messages_are_appended() -> None:
    size = 50
    history = MemoryHistory(size)
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        for _ in range(2000):
            if done.is_set():
                break
            try:
                page = ids(history.page(None, size)[0])
                hits = ids(history.search("word", size)[0])
            except Exception as exc:  # a reader must never see the list change under it
                problems.append(repr(exc))
                break
            if page and page != list(range(page[0], page[0] + len(page))):
                problems.append(f"a page with a gap: {page}")
            if hits and hits != list(range(hits[0], hits[0] - len(hits), -1)):
                problems.append(f"search results with a gap: {hits}")

    reader = threading.Thread(target=read, name="test-history-reader")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: in mid-read
    reader.start()
    try:
        for id_ in range(1, 20_001):
            history.append(said(id_, "a word"))
    finally:
        done.set()
        reader.join(10)
        sys.setswitchinterval(interval)
    assert not reader.is_alive()
    assert problems == []
    assert ids(history.page(None, size)[0]) == list(range(20_001 - size, 20_001))


# --------------------------------------------------------------------------
# Behind a room


class FakeMember:
    def __init__(self) -> None:
        self.name: str | None = None
        self.outbox = Outbox()

    def notify(self) -> None:
        pass


class WatchedHistory:
    """A ``RecentHistory`` that records each call and whether the room's lock was held."""

    def __init__(self, inner: MemoryHistory) -> None:
        self.inner = inner
        self.room: Room | None = None
        self.calls: list[tuple[str, bool]] = []

    def _held(self) -> bool:
        assert self.room is not None
        return self.room._lock.locked()

    def append(self, message: ChatMessage) -> bool:
        self.calls.append(("append", self._held()))
        return self.inner.append(message)

    def watch_durable(self, callback: Callable[[int], None]) -> None:
        self.calls.append(("watch_durable", False))

    def recent(self) -> Sequence[HistoryEntry]:
        self.calls.append(("recent", self._held()))
        return self.inner.recent()


def test_a_room_uses_the_stores_it_is_given() -> None:
    names: NameRegistry[RoomMember] = MemoryNames()
    id_source: IdSource = MemoryIds(start=41)
    store = MemoryHistory(10)
    history: RecentHistory = store
    room = Room(names=names, ids=id_source, history_store=history, history=0)
    alice, bob = FakeMember(), FakeMember()
    room.join(alice, "alice")
    assert names.owner_of("alice") is alice
    assert room.say(alice, "hello there") == 42  # ids go on from the store's last one
    room.join(bob, "bob")
    assert room.say(bob, "secret", to="alice") == 43
    assert room.say(bob, "hello again") == 44
    assert room.users() == names.names == ("alice", "bob")
    assert len(room) == len(names) == 2
    # Only public messages reach the store (history=0 is unused with a store).
    assert ids(store.page(None, 50)[0]) == [42, 44]
    assert store.search("secret", 50) == ([], False)
    assert ids(store.search("hello", 50)[0]) == [44, 42]
    room.leave(alice, LeaveReason.QUIT)
    assert names.owner_of("alice") is None


def test_the_room_calls_its_history_only_under_its_lock() -> None:
    watched = WatchedHistory(MemoryHistory(10))
    room = Room(history_store=watched)
    watched.room = room
    alice, bob = FakeMember(), FakeMember()
    room.join(alice, "alice")
    room.say(alice, "one")
    room.say(alice, "two", to="alice")
    room.join(bob, "bob")
    room.rename(bob, "robert")
    room.users()
    assert watched.calls == [
        ("watch_durable", False),  # once, as the room is made
        ("recent", True),
        ("append", True),
        ("recent", True),
    ]
