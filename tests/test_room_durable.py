"""What is seen is kept: the room holds a message's broadcast until its store says it is saved.

A fake store says every public message is on its way to disk (``append``
returns True) and reports them saved only when the test says so; what
each fake member would receive is pulled from the room as in
``tests/test_room.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from server.protocol import ChatMessage, LeaveReason
from server.room import Room
from server.store import HistoryEntry
from server.store.memory import MemoryHistory
from tests.test_room import PROPERTY, FakeMember, payloads


class SlowDisk:
    """A history whose messages are saved when ``save`` says so."""

    def __init__(self) -> None:
        self.inner = MemoryHistory(100)
        self.saved: Callable[[int], None] | None = None
        self.appended: list[int] = []

    def append(self, message: ChatMessage) -> bool:
        self.inner.append(message)
        self.appended.append(message.id)
        return True

    def recent(self) -> Sequence[HistoryEntry]:
        return self.inner.recent()

    def watch_durable(self, callback: Callable[[int], None]) -> None:
        self.saved = callback

    def save(self, last_id: int) -> None:
        assert self.saved is not None
        self.saved(last_id)


def kinds(room: Room, member: FakeMember) -> list[str]:
    out = []
    for payload in payloads(room, member):
        text = payload.get("text") or payload.get("name") or payload.get("code") or ""
        out.append(f"{payload['type']} {text}".strip())
    return out


def make() -> tuple[Room, SlowDisk, list[bool]]:
    disk = SlowDisk()
    flushes: list[bool] = []
    room = Room(history_store=disk, on_broadcast=flushes.append)
    return room, disk, flushes


def test_nobody_sees_a_message_its_sender_included_until_it_is_saved() -> None:
    room, disk, flushes = make()
    alice, bob = FakeMember(), FakeMember()
    room.join(alice, "alice")
    room.join(bob, "bob")
    payloads(room, alice), payloads(room, bob)
    flushes.clear()
    first = room.say(alice, "one")
    assert kinds(room, alice) == [] and kinds(room, bob) == []
    assert flushes == []  # no wake-up for what nobody may read yet
    disk.save(first)
    assert flushes == [True]
    assert kinds(room, alice) == ["message one"]
    assert kinds(room, bob) == ["message one"]


def test_what_the_room_said_after_a_held_message_waits_behind_it_in_order() -> None:
    room, disk, _ = make()
    alice, bob = FakeMember(), FakeMember()
    room.join(alice, "alice")
    payloads(room, alice)
    one = room.say(alice, "one")
    room.join(bob, "bob")  # joined (broadcast), then bob's welcome and replay (direct)
    room.say(alice, "psst", to="alice")  # direct, after the held message
    two = room.say(alice, "two")
    assert kinds(room, alice) == [] and kinds(room, bob) == []
    disk.save(one)
    # Up to the next held message: one, bob joined, the private echo.
    assert kinds(room, alice) == ["message one", "joined bob", "message psst"]
    # bob's welcome waited for "one", which its replay holds.
    got = kinds(room, bob)
    assert got[0] == "welcome bob"
    assert got[1:] == ["message one"]
    disk.save(two)
    assert kinds(room, alice) == ["message two"]
    assert kinds(room, bob) == ["message two"]


def test_saving_a_later_id_releases_everything_before_it() -> None:
    room, disk, _ = make()
    alice = FakeMember()
    room.join(alice, "alice")
    payloads(room, alice)
    ids = [room.say(alice, f"m{n}") for n in range(5)]
    disk.save(ids[2])
    assert kinds(room, alice) == ["message m0", "message m1", "message m2"]
    disk.save(ids[1])  # late and stale: changes nothing
    assert kinds(room, alice) == []
    disk.save(ids[4])
    assert kinds(room, alice) == ["message m3", "message m4"]


def test_a_leaver_is_still_owed_what_was_held_when_it_left() -> None:
    room, disk, _ = make()
    alice, bob = FakeMember(), FakeMember()
    room.join(alice, "alice")
    room.join(bob, "bob")
    payloads(room, alice), payloads(room, bob)
    said = room.say(alice, "before you go")
    room.leave(bob, LeaveReason.QUIT)
    assert kinds(room, bob) == []
    disk.save(said)
    assert kinds(room, bob) == ["message before you go"]
    assert kinds(room, alice) == ["message before you go", "left bob"]


def test_a_stalled_disk_is_given_up_on_before_anyone_would_be_too_slow() -> None:
    disk = SlowDisk()
    flushes: list[bool] = []
    room = Room(history_store=disk, max_backlog=64 * 1024, on_broadcast=flushes.append)
    alice = FakeMember()
    room.join(alice, "alice")
    payloads(room, alice)
    flushes.clear()
    text = "x" * 1000
    got = []
    for _ in range(100):  # 100 kB, more than the bound, never saved
        room.say(alice, text)
        if flushes:  # the loops are told to flush what is shown (no save will tell them)
            got += payloads(room, alice)  # a member that keeps up is never overrun
            flushes.clear()
    assert len(got) >= 60, "a stalled disk held the room back for ever"


@PROPERTY
@given(st.lists(st.sampled_from(["say", "save", "join", "leave", "pm"]), max_size=40))
def test_every_member_gets_what_it_would_without_holding_once_all_is_saved(
    steps: list[str],
) -> None:
    """Holding only delays: once every message is saved, each member has
    received exactly what a room without a disk would have sent it."""
    held_room, disk, _ = make()
    plain_room = Room()
    rooms = (held_room, plain_room)
    members: list[tuple[FakeMember, FakeMember]] = []
    everyone: list[tuple[FakeMember, FakeMember]] = []  # leavers are still owed their tail
    got: dict[int, tuple[list[str], list[str]]] = {}

    def pull_all() -> None:
        for pair in everyone:
            for index, (room, member) in enumerate(zip(rooms, pair, strict=True)):
                got[id(pair)][index].extend(kinds(room, member))

    for n, step in enumerate(steps):
        if step == "join" or not members:
            pair = (FakeMember(), FakeMember())
            for room, member in zip(rooms, pair, strict=True):
                room.join(member, f"user{n}")
            members.append(pair)
            everyone.append(pair)
            got[id(pair)] = ([], [])
        elif step == "say":
            for room, member in zip(rooms, members[-1], strict=True):
                room.say(member, f"text {n}")
        elif step == "pm":
            for room, member in zip(rooms, members[0], strict=True):
                room.say(member, f"pm {n}", to=members[-1][0].name)
        elif step == "save" and disk.appended:
            disk.save(disk.appended[-1])
        elif step == "leave" and len(members) > 1:
            for room, member in zip(rooms, members.pop(0), strict=True):
                room.leave(member, LeaveReason.QUIT)
        pull_all()
    if disk.appended:
        disk.save(disk.appended[-1])
    pull_all()
    for held, plain in got.values():
        assert held == plain


def test_a_burst_that_the_disk_is_behind_on_stays_held() -> None:
    """Only most of the slow-reader bound held back gives the hold up: a burst
    of big messages (here 60 % of the bound) waits for the disk as any other."""
    disk = SlowDisk()
    room = Room(history_store=disk, max_backlog=64 * 1024)
    alice = FakeMember()
    room.join(alice, "alice")
    payloads(room, alice)
    for _ in range(38):
        room.say(alice, "x" * 1000)
    assert kinds(room, alice) == []
    disk.save(disk.appended[-1])
    assert len(kinds(room, alice)) == 38
