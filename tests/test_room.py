"""Tests for server/room.py: the room, driven by fake members, no sockets.

A fake member is what ``Room`` asks of a connection: a ``name``, an
``Outbox`` and a ``notify`` that counts calls. What a member would receive
is read with ``room.pull`` and decoded with the real protocol module, so
every assertion is about frames as PROTOCOL.md describes them. The
sections: join, history, say, rename, leave, direct frames, slow readers,
Outbox/BroadcastLog on their own (with Hypothesis), a model-based
property over random room activity, and threads.
"""

from __future__ import annotations

import sys
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import DEFAULT_HISTORY, DEFAULT_MAX_QUEUE
from server.fanout import BroadcastLog, Fanout, Outbox
from server.protocol import (
    MAX_SERVER_FRAME,
    MAX_TEXT_LENGTH,
    SERVER_MESSAGES,
    ChatMessage,
    Error,
    FrameDecoder,
    Joined,
    LeaveReason,
    Left,
    Message,
    Ping,
    RemoteProtocolError,
    Renamed,
    Users,
    Welcome,
    encode,
    parse_message,
)
from server.room import Room

# No example database: the suite leaves nothing behind in the checkout.
PROPERTY = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

T0 = 1_763_900_000.0
EVERYTHING = 1 << 30


# --------------------------------------------------------------------------
# Helpers


class FakeClock:
    """The room's clock: returns ``now``, which a test sets; counts calls."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


class FakeMember:
    """Everything ``Room`` needs of a connection, plus a decoder for what it got."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.outbox = Outbox()
        self.notified = 0
        self._notify_lock = threading.Lock()
        self.decoder = FrameDecoder(MAX_SERVER_FRAME)

    def notify(self) -> None:
        with self._notify_lock:
            self.notified += 1


class Harness:
    """A room with a fake clock and a counted ``on_broadcast`` hook."""

    def __init__(self, **kwargs: Any) -> None:
        self.clock = FakeClock()
        self.urgency: list[bool] = []  # one entry per on_broadcast call
        kwargs.setdefault("clock", self.clock)
        self.room = Room(on_broadcast=self.urgency.append, **kwargs)

    @property
    def broadcasts(self) -> int:
        return len(self.urgency)

    def join(self, name: str, *, drain: bool = True) -> FakeMember:
        member = FakeMember()
        self.room.join(member, name)
        if drain:
            payloads(self.room, member)
        return member


def fullwidth(ascii_text: str) -> str:
    """The fullwidth form of ASCII letters: "alice" -> U+FF41 U+FF4C ..."""
    return "".join(chr(ord(char) + 0xFEE0) for char in ascii_text)


CAROL = fullwidth("carol")


def payloads(room: Room, member: FakeMember, max_bytes: int = EVERYTHING) -> list[dict[str, Any]]:
    """Pull what ``member`` is owed and return the whole payloads it completes."""
    data = room.pull(member, max_bytes)
    assert data is not None, "the member is overrun"
    member.decoder.receive_data(data)
    out = []
    while (payload := member.decoder.next_payload()) is not None:
        out.append(payload)
    return out


def inbox(room: Room, member: FakeMember, max_bytes: int = EVERYTHING) -> list[Message]:
    """Pull what ``member`` is owed, as parsed server messages."""
    return [parse_message(p, SERVER_MESSAGES) for p in payloads(room, member, max_bytes)]


def chat(messages: list[Message]) -> list[ChatMessage]:
    return [m for m in messages if isinstance(m, ChatMessage)]


def summary(message: Message) -> str:
    """A short, comparable description of a server message."""
    match message:
        case Welcome():
            return f"welcome {message.name} {message.history_count}"
        case ChatMessage(history=True):
            return f"history {message.id}"
        case ChatMessage():
            return f"message {message.id}"
        case Joined():
            return f"joined {message.name}"
        case Left():
            return f"left {message.name} {message.reason}"
        case Renamed():
            return f"renamed {message.old} {message.new}"
        case Users():
            return "users " + ",".join(message.users)
        case Ping():
            return f"ping {message.extra.get('n')}"
        case _:
            return repr(message)


def summaries(room: Room, member: FakeMember) -> list[str]:
    return [summary(m) for m in inbox(room, member)]


# --------------------------------------------------------------------------
# Join


def test_welcome_to_the_joiner_with_motd():
    h = Harness(motd="Welcome to the room")
    alice = FakeMember()
    assert h.room.join(alice, "alice") == 1
    assert alice.name == "alice"
    [raw] = payloads(h.room, alice)
    assert raw == {
        "type": "welcome",
        "name": "alice",
        "users": ["alice"],
        "history_count": 0,
        "motd": "Welcome to the room",
    }


def test_welcome_without_motd_has_no_motd_field():
    h = Harness()
    alice = FakeMember()
    h.room.join(alice, "alice")
    [raw] = payloads(h.room, alice)
    assert raw == {"type": "welcome", "name": "alice", "users": ["alice"], "history_count": 0}


def test_welcome_keeps_the_name_as_given():
    h = Harness()
    member = FakeMember()
    h.room.join(member, "Ｊｏｓé")
    [welcome] = inbox(h.room, member)
    assert welcome == Welcome("Ｊｏｓé", ("Ｊｏｓé",), 0)
    assert h.room.users() == ("Ｊｏｓé",)


def test_welcome_users_sorted_by_identity():
    h = Harness()
    names = ["zed", "Émile", "bob", fullwidth("carol"), "Alice", "anna", "Ärger", "10x"]
    for name in names:
        h.join(name)
    newcomer = FakeMember()
    assert h.room.join(newcomer, "Bea") == len(names) + 1
    [welcome] = inbox(h.room, newcomer)
    # Identities: 10x alice anna bea bob carol zed ärger émile (code point order).
    expected = ("10x", "Alice", "anna", "Bea", "bob", fullwidth("carol"), "zed", "Ärger", "Émile")
    assert welcome.users == expected
    assert h.room.users() == expected
    assert len(h.room) == 9


def test_joined_goes_to_the_others_but_not_the_joiner():
    h = Harness()
    alice = h.join("alice")
    carol = h.join("carol")
    payloads(h.room, alice)
    h.clock.now = T0 + 7.5
    bob = FakeMember()
    assert h.room.join(bob, "bob") == 3
    assert inbox(h.room, alice) == [Joined("bob", T0 + 7.5)]
    assert inbox(h.room, carol) == [Joined("bob", T0 + 7.5)]
    assert inbox(h.room, bob) == [Welcome("bob", ("alice", "bob", "carol"), 0)]


def test_joined_reaches_others_before_the_new_users_messages():
    h = Harness()
    alice = h.join("alice")
    bob = FakeMember()
    h.room.join(bob, "bob")
    h.room.say(bob, "first words")
    h.room.say(bob, "psst", to="alice")
    assert summaries(h.room, alice) == ["joined bob", "message 1", "message 2"]
    assert summaries(h.room, bob) == ["welcome bob 0", "message 1", "message 2"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Alice", "ALICE"),
        ("Alice", "alice"),
        ("Alice", fullwidth("alice")),
        (fullwidth("ALICE"), "alice"),
        ("Strasse", "straße"),
        ("straße", "STRASSE"),
        ("Strasse", fullwidth("STRASSE")),
    ],
)
def test_join_name_taken_by_identity(first: str, second: str):
    h = Harness()
    holder = h.join(first)
    broadcasts = h.broadcasts
    intruder = FakeMember()
    with pytest.raises(RemoteProtocolError) as info:
        h.room.join(intruder, second)
    assert info.value.code == "name-taken"
    assert info.value.fatal is False
    assert intruder.name is None
    assert intruder.notified == 0
    assert h.room.users() == (first,)
    assert len(h.room) == 1
    assert h.broadcasts == broadcasts
    assert inbox(h.room, holder) == []
    assert h.room.pull(intruder, EVERYTHING) == b""
    # The refused member may try again under a free name.
    assert h.room.join(intruder, "bob") == 2
    assert inbox(h.room, holder) == [Joined("bob", T0)]


def test_join_calls_on_broadcast_and_notifies_the_joiner():
    h = Harness()
    alice = FakeMember()
    h.room.join(alice, "alice")
    assert h.broadcasts == 1
    assert alice.notified == 1
    bob = FakeMember()
    h.room.join(bob, "bob")
    assert h.broadcasts == 2
    assert bob.notified == 1
    assert alice.notified == 1  # alice learns of bob through the log, not notify
    assert h.urgency == [False, False]  # presence may wait to share a write


def test_leave_and_rename_are_presence_not_urgent():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.rename(bob, "robert")
    h.room.leave(alice, LeaveReason.QUIT)
    assert h.urgency == [False, False, False, False]


# --------------------------------------------------------------------------
# History


def test_history_replays_the_last_public_messages_after_welcome():
    h = Harness(history=3)
    alice = h.join("alice")
    sent = []
    for i in range(5):
        h.clock.now = T0 + i
        sent.append(h.room.say(alice, f"m{i}", action=i == 3))
    assert sent == [1, 2, 3, 4, 5]
    live = chat(inbox(h.room, alice))
    bob = FakeMember()
    h.room.join(bob, "bob")
    welcome, *history = inbox(h.room, bob)
    assert welcome == Welcome("bob", ("alice", "bob"), 3)
    assert history == [
        ChatMessage(3, "alice", "m2", T0 + 2, history=True),
        ChatMessage(4, "alice", "m3", T0 + 3, action=True, history=True),
        ChatMessage(5, "alice", "m4", T0 + 4, history=True),
    ]
    # The same messages the room saw live, but for the history flag.
    assert [(m.id, m.sender, m.text, m.ts, m.action) for m in history] == [
        (m.id, m.sender, m.text, m.ts, m.action) for m in live[2:]
    ]
    assert all(m.history is False for m in live)
    # Existing members are not sent the replay.
    assert inbox(h.room, alice) == [Joined("bob", T0 + 4)]


def test_history_payload_marks_history_true():
    h = Harness(history=5)
    alice = h.join("alice")
    h.room.say(alice, "hello")
    bob = FakeMember()
    h.room.join(bob, "bob")
    _, raw = payloads(h.room, bob)
    assert raw == {
        "type": "message",
        "id": 1,
        "from": "alice",
        "text": "hello",
        "ts": T0,
        "history": True,
    }


def test_private_messages_never_enter_history():
    h = Harness(history=10)
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.say(alice, "public one")
    h.room.say(alice, "secret", to="bob")
    h.room.say(bob, "to myself", to="bob")
    h.room.say(bob, "public two")
    carol = FakeMember()
    h.room.join(carol, "carol")
    welcome, *history = inbox(h.room, carol)
    assert welcome.history_count == 2
    assert [(m.id, m.text, m.to, m.history) for m in history] == [
        (1, "public one", None, True),
        (4, "public two", None, True),
    ]


def test_history_zero_keeps_nothing():
    h = Harness(history=0)
    alice = h.join("alice")
    for i in range(3):
        h.room.say(alice, f"m{i}")
    bob = FakeMember()
    h.room.join(bob, "bob")
    assert inbox(h.room, bob) == [Welcome("bob", ("alice", "bob"), 0)]


def test_history_default_is_one_hundred():
    h = Harness()
    alice = h.join("alice")
    for i in range(DEFAULT_HISTORY + 20):
        h.room.say(alice, f"m{i}")
    bob = FakeMember()
    h.room.join(bob, "bob")
    welcome, *history = inbox(h.room, bob)
    assert welcome.history_count == DEFAULT_HISTORY
    assert [m.id for m in history] == list(range(21, DEFAULT_HISTORY + 21))


def test_joiner_with_a_full_history_of_long_messages_is_not_overrun():
    # PROTOCOL.md allows 100 history messages of 4,000 code points each and
    # a 1 MiB queue per connection by default. 100 messages of 4,000 CJK
    # characters (3 UTF-8 bytes each) make a replay of about 1.2 MB, which
    # join() queues as direct frames: the newcomer is "overrun" before it
    # could read a byte, so its connection drops it as too-slow, and so
    # does every later joiner until the history rotates.
    h = Harness()
    alice = h.join("alice")
    text = "字" * MAX_TEXT_LENGTH
    for _ in range(DEFAULT_HISTORY):
        h.room.say(alice, text)
        payloads(h.room, alice)
    bob = FakeMember()
    h.room.join(bob, "bob")
    assert h.room.overrun(bob, 0) is False
    data = h.room.pull(bob, EVERYTHING)
    assert data is not None, "a fresh joiner is overrun by its own history replay"


# --------------------------------------------------------------------------
# Say


def test_ts_is_rounded_to_the_millisecond_everywhere():
    h = Harness()
    h.clock.now = T0 + 0.123456789
    alice = h.join("alice")
    bob = h.join("bob", drain=False)
    h.room.say(bob, "hi")
    h.room.rename(bob, "robert")
    h.room.leave(bob, LeaveReason.QUIT)
    stamps = [frame["ts"] for frame in payloads(h.room, alice)]
    assert stamps == [T0 + 0.123] * 4  # joined, message, renamed, left


def test_say_ids_increase_from_one_and_ts_comes_from_the_clock():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    ids = []
    for i, (speaker, text) in enumerate([(alice, "a"), (bob, "b"), (alice, "c"), (bob, "d")]):
        h.clock.now = T0 + 10 * i + 0.125
        ids.append(h.room.say(speaker, text))
    assert ids == [1, 2, 3, 4]
    expected = [
        ChatMessage(1, "alice", "a", T0 + 0.125),
        ChatMessage(2, "bob", "b", T0 + 10.125),
        ChatMessage(3, "alice", "c", T0 + 20.125),
        ChatMessage(4, "bob", "d", T0 + 30.125),
    ]
    # The echo to the sender is the same frame everyone else gets.
    assert inbox(h.room, alice) == expected
    assert inbox(h.room, bob) == expected


def test_say_wire_payload():
    h = Harness()
    alice = h.join("alice")
    h.clock.now = 1763900000.123
    h.room.say(alice, "hi all")
    assert payloads(h.room, alice) == [
        {"type": "message", "id": 1, "from": "alice", "text": "hi all", "ts": 1763900000.123}
    ]


def test_say_calls_on_broadcast_not_notify():
    h = Harness()
    alice = h.join("alice")
    before = (h.broadcasts, alice.notified)
    h.room.say(alice, "hi")
    assert (h.broadcasts, alice.notified) == (before[0] + 1, before[1])
    assert h.urgency[-1] is True  # people wait for messages: flush at once


def test_action_is_copied():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    h.room.say(alice, "waves", action=True)
    h.room.say(alice, "plain")
    for member in (alice, bob):
        first, second = payloads(h.room, member)
        assert first["action"] is True
        assert "action" not in second


def test_private_message_goes_only_to_sender_and_recipient():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("Bob")
    carol = h.join("carol")
    payloads(h.room, alice)
    payloads(h.room, bob)
    broadcasts = h.broadcasts
    notified = (alice.notified, bob.notified, carol.notified)
    h.clock.now = T0 + 3
    assert h.room.say(alice, "psst", to=fullwidth("BOB")) == 1
    expected = [ChatMessage(1, "alice", "psst", T0 + 3, to="Bob")]
    assert inbox(h.room, alice) == expected
    assert inbox(h.room, bob) == expected
    assert inbox(h.room, carol) == []
    assert h.broadcasts == broadcasts
    assert (alice.notified, bob.notified, carol.notified) == (
        notified[0] + 1,
        notified[1] + 1,
        notified[2],
    )


def test_private_message_matched_by_identity_strasse():
    h = Harness()
    alice = h.join("alice")
    strasse = h.join("Straße")
    h.room.say(alice, "hallo", to="STRASSE", action=True)
    [raw] = payloads(h.room, strasse)
    assert raw["to"] == "Straße"
    assert raw["action"] is True


def test_private_message_to_oneself_is_one_copy():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    notified = alice.notified
    h.room.say(alice, "note to self", to="ALICE")
    assert inbox(h.room, alice) == [ChatMessage(1, "alice", "note to self", T0, to="alice")]
    assert inbox(h.room, bob) == []
    assert alice.notified == notified + 1


def test_private_message_to_nobody_raises_no_such_user():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    assert h.room.say(alice, "first") == 1
    payloads(h.room, alice)
    payloads(h.room, bob)
    broadcasts = h.broadcasts
    with pytest.raises(RemoteProtocolError) as info:
        h.room.say(alice, "hello?", to="zed")
    assert info.value.code == "no-such-user"
    assert info.value.fatal is False
    assert inbox(h.room, alice) == []
    assert inbox(h.room, bob) == []
    assert h.broadcasts == broadcasts
    # Ids still increase afterwards.
    assert h.room.say(alice, "again") > 1
    [message] = chat(inbox(h.room, bob))
    assert message.text == "again"


def test_private_message_to_someone_who_left_raises():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.leave(bob, LeaveReason.QUIT)
    with pytest.raises(RemoteProtocolError) as info:
        h.room.say(alice, "still there?", to="bob")
    assert info.value.code == "no-such-user"


def test_one_global_order_through_joins_leaves_renames_and_private_messages():
    h = Harness(history=2)
    alice = h.join("alice", drain=False)
    bob = h.join("bob", drain=False)
    carol = h.join("carol", drain=False)
    h.room.say(bob, "one")  # 1
    h.room.say(alice, "two", to="carol")  # 2
    dave = h.join("dave", drain=False)
    h.room.rename(carol, "caroline")
    h.room.say(dave, "three")  # 3
    h.room.leave(bob, LeaveReason.DISCONNECTED)
    h.room.say(alice, "four", action=True)  # 4
    h.room.say(carol, "five", to="caroline")  # 5
    h.room.say(dave, "six", to="alice")  # 6
    h.room.send(alice, Ping({"n": 1}))
    eve = h.join("eve", drain=False)
    h.room.say(eve, "seven")  # 7

    assert summaries(h.room, alice) == [
        "welcome alice 0",
        "joined bob",
        "joined carol",
        "message 1",
        "message 2",
        "joined dave",
        "renamed carol caroline",
        "message 3",
        "left bob disconnected",
        "message 4",
        "message 6",
        "ping 1",
        "joined eve",
        "message 7",
    ]
    assert summaries(h.room, bob) == [
        "welcome bob 0",
        "joined carol",
        "message 1",
        "joined dave",
        "renamed carol caroline",
        "message 3",
    ]
    assert summaries(h.room, carol) == [
        "welcome carol 0",
        "message 1",
        "message 2",
        "joined dave",
        "renamed carol caroline",
        "message 3",
        "left bob disconnected",
        "message 4",
        "message 5",
        "joined eve",
        "message 7",
    ]
    assert summaries(h.room, dave) == [
        "welcome dave 1",
        "history 1",
        "renamed carol caroline",
        "message 3",
        "left bob disconnected",
        "message 4",
        "message 6",
        "joined eve",
        "message 7",
    ]
    assert summaries(h.room, eve) == ["welcome eve 2", "history 3", "history 4", "message 7"]


# --------------------------------------------------------------------------
# Rename


def test_renamed_goes_to_everyone_including_the_renamer():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    broadcasts = h.broadcasts
    h.clock.now = T0 + 42
    assert h.room.rename(bob, "robert") == "bob"
    assert bob.name == "robert"
    assert inbox(h.room, alice) == [Renamed("bob", "robert", T0 + 42)]
    assert inbox(h.room, bob) == [Renamed("bob", "robert", T0 + 42)]
    assert h.broadcasts == broadcasts + 1
    h.room.say(bob, "hi")
    [message] = chat(inbox(h.room, alice))
    assert message.sender == "robert"


def test_rename_to_another_spelling_of_ones_own_identity():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    assert h.room.rename(bob, "BOB") == "bob"
    assert h.room.rename(bob, fullwidth("bob")) == "BOB"
    assert inbox(h.room, alice) == [
        Joined("bob", T0),
        Renamed("bob", "BOB", T0),
        Renamed("BOB", fullwidth("bob"), T0),
    ]
    assert h.room.users() == ("alice", fullwidth("bob"))
    # The member is still found under its identity.
    h.room.say(alice, "hi", to="Bob")
    [message] = chat(inbox(h.room, bob))
    assert message.to == fullwidth("bob")


@pytest.mark.parametrize("taken", ["ALICE", fullwidth("alice"), "alice"])
def test_rename_to_a_taken_identity_raises(taken: str):
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    broadcasts = h.broadcasts
    with pytest.raises(RemoteProtocolError) as info:
        h.room.rename(bob, taken)
    assert info.value.code == "name-taken"
    assert bob.name == "bob"
    assert alice.name == "alice"
    assert h.room.users() == ("alice", "bob")
    assert h.broadcasts == broadcasts
    assert inbox(h.room, alice) == []
    assert inbox(h.room, bob) == []


def test_rename_to_strasse_when_someone_is_strasse_with_eszett():
    h = Harness()
    h.join("straße")
    other = h.join("other")
    with pytest.raises(RemoteProtocolError) as info:
        h.room.rename(other, "Strasse")
    assert info.value.code == "name-taken"


def test_rename_updates_the_sorted_users_list():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.join("carol")
    h.room.rename(bob, "zach")
    assert h.room.users() == ("alice", "carol", "zach")
    h.room.rename(bob, "Aaron")
    assert h.room.users() == ("Aaron", "alice", "carol")
    payloads(h.room, alice)
    h.room.send_users(alice)
    assert inbox(h.room, alice) == [Users(("Aaron", "alice", "carol"))]
    newcomer = FakeMember()
    h.room.join(newcomer, "bea")
    [welcome] = inbox(h.room, newcomer)
    assert welcome.users == ("Aaron", "alice", "bea", "carol")


def test_the_old_name_becomes_free_after_rename():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.rename(bob, "robert")
    newcomer = FakeMember()
    assert h.room.join(newcomer, "BOB") == 3
    assert h.room.users() == ("alice", "BOB", "robert")
    # A private message to "bob" now reaches the newcomer, not robert.
    h.room.say(alice, "which bob?", to="bob")
    assert [m.text for m in chat(inbox(h.room, newcomer))] == ["which bob?"]
    assert chat(inbox(h.room, bob)) == []


# --------------------------------------------------------------------------
# Leave


def test_left_with_reason_goes_to_those_who_stay():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    carol = h.join("carol")
    payloads(h.room, alice)
    payloads(h.room, bob)
    broadcasts = h.broadcasts
    h.clock.now = T0 + 9
    assert h.room.leave(bob, LeaveReason.TOO_SLOW) == 2
    assert inbox(h.room, alice) == [Left("bob", "too-slow", T0 + 9)]
    assert inbox(h.room, carol) == [Left("bob", "too-slow", T0 + 9)]
    assert inbox(h.room, bob) == []
    assert h.broadcasts == broadcasts + 1
    assert h.room.users() == ("alice", "carol")
    assert len(h.room) == 2


@pytest.mark.parametrize("reason", list(LeaveReason))
def test_left_carries_every_reason(reason: LeaveReason):
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    h.room.leave(bob, reason)
    [raw] = payloads(h.room, alice)
    assert raw == {"type": "left", "name": "bob", "reason": str(reason), "ts": T0}


def test_leave_is_idempotent():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    assert h.room.leave(bob, LeaveReason.QUIT) == 1
    assert h.room.leave(bob, LeaveReason.QUIT) is None
    assert h.room.leave(bob, LeaveReason.ERROR) is None
    assert inbox(h.room, alice) == [Left("bob", "quit", T0)]
    assert h.room.users() == ("alice",)


def test_leave_of_a_member_that_never_joined_is_harmless():
    h = Harness()
    alice = h.join("alice")
    stranger = FakeMember()
    assert h.room.leave(stranger, LeaveReason.DISCONNECTED) is None
    assert inbox(h.room, alice) == []


def test_a_stale_member_cannot_remove_the_new_holder_of_its_name():
    h = Harness()
    alice = h.join("alice")
    old_bob = h.join("bob")
    h.room.leave(old_bob, LeaveReason.QUIT)
    h.join("BOB")
    payloads(h.room, alice)
    assert h.room.leave(old_bob, LeaveReason.QUIT) is None
    assert h.room.users() == ("alice", "BOB")
    assert inbox(h.room, alice) == []


def test_after_close_leaves_are_silent():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    payloads(h.room, alice)
    h.room.close()
    assert h.room.leave(bob, LeaveReason.DISCONNECTED) == 1
    assert inbox(h.room, alice) == []
    assert h.room.users() == ("alice",)
    assert h.room.leave(alice, LeaveReason.DISCONNECTED) == 0
    assert h.room.users() == ()


def test_a_leaver_gets_what_it_was_owed_but_nothing_after():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.say(bob, "one")
    h.room.send(alice, Ping({"n": 1}))
    h.room.say(bob, "two")
    h.room.say(bob, "to alice", to="alice")
    h.room.leave(alice, LeaveReason.QUIT)
    h.room.say(bob, "after")
    h.room.rename(bob, "robert")
    assert summaries(h.room, alice) == [
        "joined bob",
        "message 1",
        "ping 1",
        "message 2",
        "message 3",
    ]
    assert summaries(h.room, alice) == []
    assert summaries(h.room, bob) == [
        "message 1",
        "message 2",
        "message 3",
        "left alice quit",
        "message 4",
        "renamed bob robert",
    ]


def test_a_leaver_can_take_what_it_was_owed_in_pieces():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    for i in range(20):
        h.room.say(bob, f"message number {i}")
    h.room.leave(alice, LeaveReason.QUIT)
    h.room.say(bob, "too late")
    got: list[Message] = []
    for _ in range(2000):
        got.extend(inbox(h.room, alice, 7))
        if alice.outbox.backlog(h.room._log) == 0:
            break
    assert [m.text for m in chat(got)] == [f"message number {i}" for i in range(20)]
    assert got[0] == Joined("bob", T0)
    assert alice.decoder.buffered == 0


def test_a_direct_frame_after_leaving_still_arrives():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.say(bob, "one")
    h.room.leave(alice, LeaveReason.QUIT)
    h.room.send(alice, Error("timeout", "bye now"))
    h.room.say(bob, "two")
    assert summaries(h.room, alice) == [
        "joined bob",
        "message 1",
        repr(Error("timeout", "bye now")),
    ]


def test_rejoin_after_leaving_keeps_owed_frames_first():
    h = Harness(history=0)
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.say(bob, "before")
    h.room.leave(alice, LeaveReason.QUIT)
    h.room.say(bob, "while away")
    h.room.join(alice, "alice2")
    h.room.say(bob, "back")
    assert summaries(h.room, alice) == [
        "joined bob",
        "message 1",
        "welcome alice2 0",
        "message 3",
    ]


# --------------------------------------------------------------------------
# Direct frames: send and send_users


def test_send_arrives_between_what_was_broadcast_before_and_after():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.room.say(bob, "before")
    notified = alice.notified
    h.room.send(alice, Ping({"n": 7}))
    assert alice.notified == notified + 1
    h.room.say(bob, "after")
    raw = payloads(h.room, alice)
    assert raw[1:] == [
        {"type": "message", "id": 1, "from": "bob", "text": "before", "ts": T0},
        {"type": "ping", "n": 7},
        {"type": "message", "id": 2, "from": "bob", "text": "after", "ts": T0},
    ]
    assert summaries(h.room, bob) == ["message 1", "message 2"]


def test_send_users_arrives_in_order_with_the_current_list():
    h = Harness()
    alice = h.join("alice")
    bob = h.join("bob")
    h.join(fullwidth("carol"))
    h.room.say(bob, "before")
    notified = alice.notified
    h.room.send_users(alice)
    assert alice.notified == notified + 1
    h.room.leave(bob, LeaveReason.QUIT)
    h.room.send_users(alice)
    assert summaries(h.room, alice) == [
        "joined bob",
        "joined " + CAROL,
        "message 1",
        "users alice,bob," + CAROL,
        "left bob quit",
        "users alice," + CAROL,
    ]


def test_send_to_a_connection_not_in_the_room():
    h = Harness()
    h.join("alice")
    stranger = FakeMember()
    h.room.send(stranger, Error("name-taken", "The name alice is already in use.", "hello"))
    assert payloads(h.room, stranger) == [
        {
            "type": "error",
            "code": "name-taken",
            "message": "The name alice is already in use.",
            "in_reply_to": "hello",
        }
    ]
    assert stranger.notified == 1


def test_replies_queued_before_joining_come_before_the_welcome():
    h = Harness()
    alice = h.join("alice")
    hopeful = FakeMember()
    h.room.send(hopeful, Error("name-taken", "taken", "hello"))
    h.room.say(alice, "meanwhile")
    h.room.join(hopeful, "bob")
    h.room.say(alice, "welcome bob")
    assert summaries(h.room, hopeful) == [
        repr(Error("name-taken", "taken", "hello")),
        "welcome bob 1",
        "history 1",
        "message 2",
    ]


# --------------------------------------------------------------------------
# Slow readers


def test_a_reader_that_never_pulls_is_overrun_while_others_carry_on():
    max_backlog = 4096
    h = Harness(max_backlog=max_backlog, history=0)
    slow = h.join("slow")
    fast = h.join("fast")
    payloads(h.room, slow)  # slow starts with nothing owed
    owed = 0
    overrun_at = None
    for i in range(300):
        h.room.say(fast, f"message {i:04d} " + "x" * 40)
        data = h.room.pull(fast, EVERYTHING)
        assert data is not None
        owed += len(data)  # exactly the broadcast frame slow is owed too
        fast.decoder.receive_data(data)
        assert h.room.overrun(fast, 0) is False
        assert h.room.overrun(slow, 0) is (owed > max_backlog)
        if overrun_at is None and owed > max_backlog:
            overrun_at = i
    assert overrun_at is not None
    assert 20 < overrun_at < 60  # frames of about 110 bytes against 4096
    assert h.room.pull(slow, EVERYTHING) is None
    assert h.room.pull(slow, 1) is None
    got = []
    while (payload := fast.decoder.next_payload()) is not None:
        got.append(payload)
    assert [p["id"] for p in got] == list(range(1, 301))
    # The slow member is dropped; the others hear why and carry on.
    assert h.room.leave(slow, LeaveReason.TOO_SLOW) == 1
    h.room.say(fast, "still here")
    assert summaries(h.room, fast) == ["left slow too-slow", "message 301"]


def test_overrun_counts_unsent_bytes():
    max_backlog = 4096
    h = Harness(max_backlog=max_backlog)
    reader = h.join("reader")
    speaker = h.join("speaker")
    payloads(h.room, reader)
    h.room.say(speaker, "hello")
    h.room.send(reader, Ping({"n": 1}))
    owed = reader.outbox.backlog(h.room._log)
    assert owed == len(encode(ChatMessage(1, "speaker", "hello", T0))) + len(encode(Ping({"n": 1})))
    assert h.room.overrun(reader, 0) is False
    assert h.room.overrun(reader, max_backlog - owed) is False
    assert h.room.overrun(reader, max_backlog - owed + 1) is True
    # Asking does not consume anything.
    assert summaries(h.room, reader) == ["message 1", "ping 1"]
    assert h.room.overrun(reader, max_backlog) is False
    assert h.room.overrun(reader, max_backlog + 1) is True


def test_direct_frames_count_towards_the_backlog():
    h = Harness(max_backlog=4096)
    alice = h.join("alice")
    frame_size = len(encode(Ping({"n": 100, "pad": "y" * 20})))
    sent = 0
    while not h.room.overrun(alice, 0):
        h.room.send(alice, Ping({"n": 100 + sent, "pad": "y" * 20}))
        sent += 1
        assert sent < 1000
    assert sent == 4096 // frame_size + 1
    assert h.room.pull(alice, EVERYTHING) is None


def test_the_log_stays_bounded_and_a_puller_keeps_everything():
    max_backlog = 4096
    h = Harness(max_backlog=max_backlog, history=0)
    slow = h.join("slow")
    fast = h.join("fast")
    payloads(h.room, fast)
    biggest = 0
    texts = []
    got: list[Message] = []
    for i in range(3000):
        text = f"{i}:" + "z" * (i % 97)
        texts.append(text)
        h.room.say(fast, text)
        biggest = max(biggest, len(encode(ChatMessage(i + 1, "fast", text, T0))))
        held = h.room._log.held
        assert held <= 2 * max_backlog + biggest, (i, held)
        if i % 3 == 0:
            got.extend(inbox(h.room, fast, 1000))
    got = chat(got + inbox(h.room, fast))
    assert fast.decoder.buffered == 0
    assert [m.id for m in got] == list(range(1, 3001))
    assert [m.text for m in got] == texts
    assert h.room._log.base > 0  # old bytes were actually forgotten
    assert h.room.overrun(slow, 0) is True
    assert h.room.pull(slow, EVERYTHING) is None


def test_a_reader_lagging_less_than_max_backlog_is_never_overrun():
    max_backlog = 4096
    h = Harness(max_backlog=max_backlog, history=0)
    lagging = h.join("lagging")
    speaker = h.join("speaker")
    got: list[Message] = []
    for i in range(2000):
        h.room.say(speaker, f"{i}:" + "q" * (i % 61))
        payloads(h.room, speaker)
        assert h.room.overrun(lagging, 0) is False, i
        # Read only once nearly max_backlog behind, so that the log is
        # trimmed while this reader still needs most of what it keeps.
        if lagging.outbox.backlog(h.room._log) > max_backlog - 200:
            got.extend(inbox(h.room, lagging, 300))
    got.extend(inbox(h.room, lagging))
    assert [m.id for m in chat(got)] == list(range(1, 2001))
    assert h.room._log.base > 0


def test_pull_returns_at_most_max_bytes_of_broadcasts():
    h = Harness(history=0)
    reader = h.join("reader")
    speaker = h.join("speaker")
    for i in range(50):
        h.room.say(speaker, f"message {i}")
    owed = reader.outbox.backlog(h.room._log)
    stream = b""
    while owed > len(stream):
        piece = h.room.pull(reader, 100)
        assert piece is not None
        assert len(piece) == min(100, owed - len(stream))
        stream += piece
    assert h.room.pull(reader, 100) == b""
    reader.decoder.receive_data(stream)
    ids = []
    while (payload := reader.decoder.next_payload()) is not None:
        ids.append(payload.get("id"))
    assert ids == [None, *range(1, 51)]  # joined speaker, then the messages


def test_an_overrun_leaver_is_owed_nothing():
    h = Harness(max_backlog=4096)
    slow = h.join("slow")
    fast = h.join("fast")
    for i in range(200):
        h.room.say(fast, f"flood {i} " + "w" * 60)
    assert h.room.overrun(slow, 0) is True
    assert h.room.leave(slow, LeaveReason.TOO_SLOW) == 1
    assert slow.outbox.backlog(h.room._log) == 0
    assert h.room.pull(slow, EVERYTHING) == b""


def _room_owing_user_lists(lists: int) -> tuple[Harness, FakeMember, int]:
    """A room of 200 long names whose member ``attacker`` is owed ``lists`` user lists."""
    h = Harness(history=0)
    for i in range(200):
        h.join(f"member_with_a_long_name_{i:05d}")
    attacker = h.join("attacker")
    for _ in range(lists):
        h.room.send_users(attacker)
    users_size = len(encode(Users(h.room.users())))
    assert users_size > 6000
    return h, attacker, users_size


def test_leaving_owing_many_user_lists_copies_none_of_them():
    # Each `who` queues a reference to the one cached users frame. Leaving
    # used to join everything owed into one buffer, under the room's lock:
    # 2,000 lists of 6 kB here, hundreds of MB in a big room.
    h, attacker, users_size = _room_owing_user_lists(2000)
    owed = attacker.outbox.backlog(h.room._log)
    assert owed >= 2000 * users_size
    tracemalloc.start()
    try:
        assert h.room.leave(attacker, LeaveReason.QUIT) == 200
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"leaving allocated {peak} bytes"
    # A graceful leaver still gets all it was owed, in order.
    got = []
    for _ in range(2 * owed // (256 * 1024) + 10):
        got.extend(payloads(h.room, attacker, 256 * 1024))
        if attacker.outbox.backlog(h.room._log) == 0:
            break
    assert [p["type"] for p in got] == ["users"] * 2000
    assert all(len(p["users"]) == 201 for p in got)


def test_a_discarded_member_is_owed_nothing():
    h, attacker, _ = _room_owing_user_lists(50)
    h.room.leave(attacker, LeaveReason.DISCONNECTED)
    h.room.discard(attacker)
    assert attacker.outbox.backlog(h.room._log) == 0
    assert h.room.pull(attacker, EVERYTHING) == b""


def test_replies_do_not_count_towards_the_slow_reader_bound():
    # A client that pipelines requests is slowed down by its connection
    # (it stops reading them), not dropped: its replies are bounded there.
    h = Harness(max_backlog=4096, history=0)
    alice = h.join("alice")
    for _ in range(300):
        h.room.send_users(alice)
    assert alice.outbox.backlog(h.room._log) > 2 * 4096
    assert h.room.overrun(alice, 0) is False
    # What others send it still counts.
    bob = h.join("bob")
    payloads(h.room, alice)
    for i in range(60):
        h.room.say(bob, f"psst {i} " + "p" * 60, to="alice")
    assert h.room.overrun(alice, 0) is True


def test_a_leaver_keeps_its_tail_when_the_log_forgets_it():
    h = Harness(max_backlog=4096, history=0)
    leaver = h.join("leaver")
    speaker = h.join("speaker")
    h.room.say(speaker, "owed")
    h.room.say(leaver, "its own last words")  # the echo it is still owed
    h.room.leave(leaver, LeaveReason.QUIT)
    assert h.room.overrun(leaver, 0) is False
    for i in range(200):  # the room goes on: the log forgets what the leaver has not read
        h.room.say(speaker, f"later {i} " + "l" * 60)
        payloads(h.room, speaker)
    assert [m.text for m in chat(inbox(h.room, leaver))] == ["owed", "its own last words"]
    assert h.room.pull(leaver, EVERYTHING) == b""


def test_a_leaver_owed_more_than_the_bound_is_overrun():
    h = Harness(max_backlog=4096, history=0)
    leaver = h.join("leaver")
    speaker = h.join("speaker")
    for i in range(50):  # the leaver reads none of it: more than the bound
        h.room.say(speaker, f"before {i} " + "b" * 60)
        payloads(h.room, speaker)
    h.room.leave(leaver, LeaveReason.QUIT)
    for i in range(200):
        h.room.say(speaker, f"later {i} " + "l" * 60)
        payloads(h.room, speaker)
    assert h.room.pull(leaver, EVERYTHING) is None


def test_a_leaver_gets_the_log_up_to_its_leaving_and_no_further():
    h = Harness(history=0)
    leaver = h.join("leaver")
    speaker = h.join("speaker")
    h.room.say(speaker, "before")
    h.room.send(leaver, Ping({"n": 1}))
    h.room.say(speaker, "just before")
    h.room.leave(leaver, LeaveReason.QUIT)
    h.room.send(leaver, Ping({"n": 2}))
    h.room.say(speaker, "after")
    assert summaries(h.room, leaver) == [
        "joined speaker",
        "message 1",
        "ping 1",
        "message 2",
        "ping 2",
    ]


# --------------------------------------------------------------------------
# Outbox, BroadcastLog and Fanout on their own


def ping(n: int, pad: int = 0) -> bytes:
    return encode(Ping({"n": n, "pad": "p" * pad}))


def test_broadcast_log_positions():
    log = BroadcastLog()
    assert (log.base, log.end, log.held) == (0, 0, 0)
    log.append(b"abcdef")
    log.append(b"ghij")
    assert (log.base, log.end, log.held) == (0, 10, 10)
    assert log.read(2, 7) == b"cdefg"
    log.forget_before(4)
    assert (log.base, log.end, log.held) == (4, 10, 6)
    assert log.read(4, 10) == b"efghij"
    assert log.read(8, 10) == b"ij"
    log.forget_before(3)  # already forgotten: nothing changes
    assert (log.base, log.end, log.held) == (4, 10, 6)


def test_outbox_take_in_pieces_equals_one_big_take():
    frames = [ping(i, i % 13) for i in range(40)]

    def build() -> tuple[BroadcastLog, Outbox, bytes]:
        log = BroadcastLog()
        outbox = Outbox()
        outbox.put(log, b"pre-join")
        log.append(b"not for us")
        outbox.subscribe(log)
        expected = [b"pre-join"]
        for i, frame in enumerate(frames):
            if i % 5 == 2:
                outbox.put(log, frame)
            else:
                log.append(frame)
            expected.append(frame)
        return log, outbox, b"".join(expected)

    log = BroadcastLog()
    only_log = Outbox()
    only_log.subscribe(log)
    for frame in frames:
        log.append(frame)
    assert only_log.take(log, 10) == b"".join(frames)[:10]
    assert only_log.take(log, 1) == b"".join(frames)[10:11]

    log, outbox, expected = build()
    assert outbox.backlog(log) == len(expected)
    assert outbox.take(log, EVERYTHING) == expected
    assert outbox.take(log, EVERYTHING) == b""
    for size in (1, 2, 3, 7, 50):
        log, outbox, expected = build()
        pieces = []
        while piece := outbox.take(log, size):
            pieces.append(piece)
        assert b"".join(pieces) == expected
        assert outbox.backlog(log) == 0


operations = st.lists(
    st.one_of(
        st.tuples(st.just("broadcast"), st.integers(0, 40)),
        st.tuples(st.just("put"), st.integers(0, 40)),
        st.tuples(st.just("take"), st.integers(0, 120)),
        st.tuples(st.just("subscribe"), st.just(0)),
        st.tuples(st.just("unsubscribe"), st.just(0)),
        st.tuples(st.just("forget"), st.just(0)),
    ),
    max_size=60,
)


@PROPERTY
@given(operations)
def test_outbox_reproduces_the_frame_order(ops: list[tuple[str, int]]):
    log = BroadcastLog()
    outbox = Outbox()
    expected = bytearray()  # everything the outbox owes, in order
    taken = bytearray()
    for n, (op, arg) in enumerate(ops):
        frame = ping(n, arg)
        if op == "broadcast":
            log.append(frame)
            if outbox.subscribed:
                expected += frame
        elif op == "put":
            outbox.put(log, frame)
            expected += frame
        elif op == "take":
            piece = outbox.take(log, arg)
            if arg == 0:
                assert piece == b""
            elif len(expected) > len(taken):
                assert piece, "a take with bytes owed returned nothing"
            taken += piece
        elif op == "subscribe" and not outbox.subscribed:
            outbox.subscribe(log)
        elif op == "unsubscribe":
            outbox.unsubscribe(log)
            assert not outbox.subscribed
        elif op == "forget" and outbox.cursor is not None:
            # What the room may do: drop what this reader has already read.
            log.forget_before(outbox.cursor)
        assert outbox.backlog(log) == len(expected) - len(taken)
        assert bytes(taken) == bytes(expected[: len(taken)])
    taken += outbox.take(log, EVERYTHING)
    assert bytes(taken) == bytes(expected)
    assert outbox.backlog(log) == 0
    # And the bytes are whole frames, in order.
    decoder = FrameDecoder(MAX_SERVER_FRAME)
    decoder.receive_data(bytes(taken))
    numbers = []
    while (payload := decoder.next_payload()) is not None:
        numbers.append(payload["n"])
    assert numbers == sorted(numbers)
    assert decoder.buffered == 0


def test_fanout_presence_turns_urgent_past_a_quarter_of_the_bound():
    fanout = Fanout(max_backlog=400)
    frame = b"p" * 30
    assert [fanout.broadcast(frame, urgent=False) for _ in range(4)] == [False] * 3 + [True]
    assert fanout.broadcast(frame, urgent=False) is False  # held bytes start again
    assert fanout.broadcast(b"m", urgent=True) is True
    assert fanout.broadcast(frame, urgent=False) is False


def test_fanout_trims_the_log_past_what_a_leaver_is_owed():
    fanout = Fanout(max_backlog=100)
    log = fanout.log
    leaver, greedy, stayer = Outbox(), Outbox(), Outbox()
    for outbox in (leaver, greedy, stayer):
        fanout.join(outbox)
    fanout.broadcast(b"a" * 40, urgent=True)
    fanout.leave(leaver)  # owed 40 bytes: within the bound
    fanout.broadcast(b"b" * 80, urgent=True)
    fanout.leave(greedy)  # owed 120: past the bound
    assert stayer.take(log, EVERYTHING) == b"a" * 40 + b"b" * 80
    for _ in range(3):
        fanout.broadcast(b"c" * 30, urgent=True)
    assert log.base > 0 and log.held <= 2 * 100  # trimmed
    assert leaver.take(log, EVERYTHING) == b"a" * 40  # copied before the trim
    assert not leaver.holds_log
    assert greedy.overrun(log, 100)  # its connection drops it as too slow
    assert stayer.take(log, EVERYTHING) == b"c" * 90


def test_fanout_discard_forgets_a_leaver():
    fanout = Fanout(max_backlog=100)
    leaver = Outbox()
    fanout.join(leaver)
    fanout.broadcast(b"x" * 10, urgent=True)
    fanout.leave(leaver)
    assert leaver.holds_log
    fanout.discard(leaver)
    assert leaver.backlog(fanout.log) == 0 and leaver.take(fanout.log, EVERYTHING) == b""
    fanout.broadcast(b"y" * 250, urgent=True)  # trimming has no leaver left to visit
    assert leaver.take(fanout.log, EVERYTHING) == b""


# --------------------------------------------------------------------------
# A model of the room: random activity, every member's exact stream


room_actions = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "say", "whisper", "rename", "ping", "who", "pull"]),
        st.integers(0, 3),  # the acting member
        st.integers(0, 3),  # another member, or a pull size
        st.booleans(),  # action flag / leave-without-reading
    ),
    max_size=50,
)


@PROPERTY
@given(room_actions, st.integers(0, 3))
def test_every_member_gets_exactly_its_frames_in_global_order(
    actions: list[tuple[str, int, int, bool]], history_size: int
):
    h = Harness(history=history_size)
    room = h.room
    members = [FakeMember() for _ in range(4)]
    inside = [False] * 4
    expected: list[list[str]] = [[] for _ in range(4)]
    received: list[list[str]] = [[] for _ in range(4)]
    history: list[int] = []
    last_id = 0

    def everyone_inside(line: str, but: int | None = None) -> None:
        for j in range(4):
            if inside[j] and j != but:
                expected[j].append(line)

    for serial, (op, i, other, flag) in enumerate(actions, 1):
        member = members[i]
        if op == "join" and not inside[i]:
            name = f"m{i}x{serial}"
            everyone_inside(f"joined {name}")
            inside[i] = True
            assert room.join(member, name) == sum(inside)
            expected[i].append(f"welcome {name} {len(history)}")
            expected[i].extend(f"history {n}" for n in history)
        elif op == "leave" and inside[i]:
            inside[i] = False
            assert room.leave(member, LeaveReason.QUIT) == sum(inside)
            everyone_inside(f"left {member.name} quit")
        elif op == "say" and inside[i]:
            assert room.say(member, f"text {serial}", action=flag) == last_id + 1
            last_id += 1
            everyone_inside(f"message {last_id}")
            history = [*history, last_id][-history_size:] if history_size else []
        elif op == "whisper" and inside[i] and inside[other]:
            target = members[other].name
            assert target is not None
            assert room.say(member, "psst", to=target.upper()) == last_id + 1
            last_id += 1
            expected[i].append(f"message {last_id}")
            if other != i:
                expected[other].append(f"message {last_id}")
        elif op == "rename" and inside[i]:
            old = member.name
            new = f"m{i}y{serial}"
            assert room.rename(member, new) == old
            everyone_inside(f"renamed {old} {new}")
        elif op == "ping":
            room.send(member, Ping({"n": serial}))
            expected[i].append(f"ping {serial}")
        elif op == "who" and inside[i]:
            names = room.users()
            room.send_users(member)
            expected[i].append("users " + ",".join(names))
        elif op == "pull":
            received[i].extend(summary(m) for m in inbox(room, member, other * 17 + 1))
        assert room.users() == tuple(
            sorted((m.name for j, m in enumerate(members) if inside[j]), key=str.casefold)
        )

    for i, member in enumerate(members):
        received[i].extend(summary(m) for m in inbox(room, member))
        assert member.decoder.buffered == 0
        assert received[i] == expected[i]
        ids = [int(line.split()[1]) for line in received[i] if line.startswith("message")]
        assert ids == sorted(set(ids))


# --------------------------------------------------------------------------
# Threads


@pytest.fixture
def eager_thread_switching() -> Iterator[None]:
    """Switch threads far more often than usual, so that races show up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("eager_thread_switching")
def test_concurrent_speakers_keep_one_order_for_everyone():
    threads_count, per_thread = 8, 200
    h = Harness(history=10)
    members = [h.join(f"user{i}") for i in range(threads_count)]
    streams: list[list[dict[str, Any]]] = [[] for _ in members]
    returned_ids: list[list[int]] = [[] for _ in members]
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count, timeout=10)

    def speak(index: int) -> None:
        member = members[index]
        try:
            start.wait()
            for k in range(per_thread):
                returned_ids[index].append(h.room.say(member, f"{index}:{k}"))
                if k % 16 == 0:  # read concurrently with the other speakers
                    streams[index].extend(payloads(h.room, member, 512))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start.abort()

    threads = [
        threading.Thread(target=speak, args=(i,), name=f"speaker-{i}") for i in range(threads_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not [t.name for t in threads if t.is_alive()], "speakers did not finish"
    assert errors == []

    total = threads_count * per_thread
    all_ids = sorted(i for ids in returned_ids for i in ids)
    assert all_ids == list(range(1, total + 1))
    for ids in returned_ids:
        assert ids == sorted(ids)

    for index, member in enumerate(members):
        streams[index].extend(payloads(h.room, member))
        assert member.decoder.buffered == 0
        messages = [p for p in streams[index] if p["type"] == "message"]
        # Members who joined later were announced to those before them.
        others = [p["name"] for p in streams[index] if p["type"] == "joined"]
        assert others == [f"user{j}" for j in range(index + 1, threads_count)]
        ids = [p["id"] for p in messages]
        assert ids == list(range(1, total + 1))
        for sender in range(threads_count):
            texts = [p["text"] for p in messages if p["from"] == f"user{sender}"]
            assert texts == [f"{sender}:{k}" for k in range(per_thread)]
        # Each sender's ids as it saw them returned match where they appear.
        mine = [p["id"] for p in messages if p["from"] == f"user{index}"]
        assert mine == returned_ids[index]
    assert len(h.room) == threads_count


@pytest.mark.usefixtures("eager_thread_switching")
def test_concurrent_private_messages_and_pulls():
    count, per_thread = 8, 150
    h = Harness()
    members = [h.join(f"user{i}") for i in range(count)]
    for member in members:
        payloads(h.room, member)  # the joined frames of later members
    streams: list[list[dict[str, Any]]] = [[] for _ in members]
    errors: list[BaseException] = []
    start = threading.Barrier(count, timeout=10)

    def whisper(index: int) -> None:
        member = members[index]
        try:
            start.wait()
            for k in range(per_thread):
                h.room.say(member, f"{index}:{k}", to=f"USER{(index + 1) % count}")
                streams[index].extend(payloads(h.room, member, 64))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            start.abort()

    threads = [
        threading.Thread(target=whisper, args=(i,), name=f"whisper-{i}") for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not [t.name for t in threads if t.is_alive()], "whisperers did not finish"
    assert errors == []
    for index, member in enumerate(members):
        streams[index].extend(payloads(h.room, member))
        assert member.decoder.buffered == 0
        assert member.outbox.backlog(h.room._log) == 0
        assert {p["type"] for p in streams[index]} == {"message"}
        ids = [p["id"] for p in streams[index]]
        assert ids == sorted(set(ids))
        assert len(ids) == 2 * per_thread
        previous = (index - 1) % count
        mine = [p for p in streams[index] if p["from"] == f"user{index}"]
        theirs = [p for p in streams[index] if p["from"] == f"user{previous}"]
        assert [p["text"] for p in mine] == [f"{index}:{k}" for k in range(per_thread)]
        assert [p["text"] for p in theirs] == [f"{previous}:{k}" for k in range(per_thread)]
        assert {p["to"] for p in mine} == {f"user{(index + 1) % count}"}
        assert {p["to"] for p in theirs} == {f"user{index}"}


@pytest.mark.usefixtures("eager_thread_switching")
def test_concurrent_joins_leaves_and_messages_stay_consistent():
    h = Harness(history=5)
    observer = h.join("observer")
    errors: list[BaseException] = []
    rounds = 60

    def churn(index: int) -> None:
        member = FakeMember()
        try:
            for r in range(rounds):
                h.room.join(member, f"churn{index}")
                h.room.say(member, f"{index}:{r}")
                h.room.rename(member, f"churn{index}r")
                h.room.leave(member, LeaveReason.QUIT)
                payloads(h.room, member)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,), name=f"churn-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    seen: list[Message] = []
    while any(t.is_alive() for t in threads):
        seen.extend(inbox(h.room, observer, 4096))
    for thread in threads:
        thread.join(10)
    assert not [t.name for t in threads if t.is_alive()]
    assert errors == []
    seen.extend(inbox(h.room, observer))
    ids = [m.id for m in chat(seen)]
    assert ids == list(range(1, 4 * rounds + 1))
    present: set[str] = set()
    for message in seen:
        match message:
            case Joined():
                assert message.name not in present
                present.add(message.name)
            case ChatMessage():
                assert message.sender in present
            case Renamed():
                present.remove(message.old)
                present.add(message.new)
            case Left():
                present.remove(message.name)
    assert present == set()
    assert h.room.users() == ("observer",)


def test_default_max_backlog_is_the_protocol_default():
    h = Harness()
    assert h.room.max_backlog == DEFAULT_MAX_QUEUE == 1024 * 1024
