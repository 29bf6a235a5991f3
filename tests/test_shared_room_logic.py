"""The shared room's replica against a scripted backplane: the orders of
answers and events that real servers produce only by luck."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.protocol import ErrorCode, LeaveReason, ProtocolError
from server.room import Seat
from server.shared_room import SharedRoom
from server.store.backplane import Command, Event, Holder, Kind, Replica, Reply, Snapshot
from tests.test_room import FakeMember, payloads


class ScriptedBackplane:
    """Records what the room submits; the test answers and applies by hand."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, Command, Callable[[Reply], None]]] = []
        self.replica: Replica | None = None
        self.closed = False
        self.seq = 0

    def start(self, replica: Replica) -> None:
        self.replica = replica

    def submit(self, server: str, command: Command, done: Callable[[Reply], None]) -> bool:
        self.submitted.append((server, command, done))
        return True

    def close(self) -> None:
        self.closed = True

    def event(self, command: Command, server: str = "me", **fields: Any) -> Event:
        """The event the log would hold for ``command``, submitted by ``server``."""
        self.seq += 1
        return Event(
            self.seq, command.kind, 1000.0 + self.seq, server, command.token,
            fields.pop("body", None) or __import__("json").loads(command.body),
            command.identity, command.target, **fields,
        )  # fmt: skip


def room_with(backplane: ScriptedBackplane, *holders: Holder) -> SharedRoom:
    room = SharedRoom(backplane)
    room.start()
    room.reset(Snapshot("me", 0, 0, holders, ()))
    return room


class Outcome:
    def __init__(self) -> None:
        self.errors: list[ProtocolError | None] = []

    def __call__(self, error: ProtocolError | None) -> None:
        self.errors.append(error)


def test_a_join_is_done_when_its_event_is_applied_not_when_redis_answers() -> None:
    backplane = ScriptedBackplane()
    room = room_with(backplane, Holder("bob", "other", 1, "bob", "10.0.0.2", False, 5.0, True))
    alice, done = FakeMember(), Outcome()
    assert room.join(alice, "alice", Seat("127.0.0.1", lambda by, m: None), done) is None
    ((_server, command, answer),) = backplane.submitted
    assert (command.kind, command.identity) == (Kind.JOIN, "alice")
    answer(Reply("ok", 1))
    assert done.errors == [] and alice.name is None  # not yet: the log decides
    room.apply("me", [backplane.event(command)])
    assert done.errors == [None] and alice.name == "alice"
    welcome = payloads(room, alice)[0]
    assert welcome["users"] == ["alice", "bob"] and welcome["ops"] == ["bob"]


def test_a_name_refused_by_redis_is_name_taken_and_frees_the_member() -> None:
    backplane = ScriptedBackplane()
    room = room_with(backplane)
    alice, done = FakeMember(), Outcome()
    room.join(alice, "alice", None, done)
    backplane.submitted[0][2](Reply("name-taken"))
    (error,) = done.errors
    assert error is not None and error.code == ErrorCode.NAME_TAKEN
    assert room.leave(alice, LeaveReason.QUIT) is None  # it never joined
    assert len(backplane.submitted) == 1


def test_leaving_while_the_join_is_on_its_way_leaves_as_soon_as_it_arrives() -> None:
    backplane = ScriptedBackplane()
    room = room_with(backplane)
    alice = FakeMember()
    room.join(alice, "alice", None, Outcome())
    _server, join, _answer = backplane.submitted[0]
    assert room.leave(alice, LeaveReason.DISCONNECTED) is None  # nothing to announce yet
    room.apply("me", [backplane.event(join)])
    leave = backplane.submitted[-1][1]
    assert (leave.kind, leave.identity, leave.token) == (Kind.LEAVE, "alice", join.token)
    room.apply("me", [backplane.event(leave)])
    assert room.users() == ()


def test_a_fence_refuses_joins_on_their_way_and_closes_every_local_member() -> None:
    backplane = ScriptedBackplane()
    room = room_with(backplane)
    closed: list[str] = []
    alice, waiting = FakeMember(), Outcome()
    seat = Seat("127.0.0.1", lambda by, m: None, close=closed.append)
    room.join(alice, "alice", seat, Outcome())
    room.apply("me", [backplane.event(backplane.submitted[0][1])])
    bob = FakeMember()
    room.join(bob, "bob", None, waiting)
    room.fence("Redis is gone")
    assert closed == ["Redis is gone"]
    (error,) = waiting.errors
    assert error is not None and error.code == ErrorCode.ROOM_UNAVAILABLE
    assert room.users() == ()
    carol = FakeMember()
    try:
        room.join(carol, "carol", None, Outcome())
    except ProtocolError as exc:
        assert exc.code == ErrorCode.ROOM_UNAVAILABLE and exc.fatal
    else:
        raise AssertionError("a fenced room took a join")
    # Events read before the fence are not applied to what comes after it.
    room.reset(Snapshot("me-again", 5, 9, (), ()))
    room.apply("me", [Event(6, Kind.NOTICE, 1.0, "x", 0, {"x": "stale", "b": None})])
    dave = FakeMember()
    room.join(dave, "dave", None, Outcome())
    backplane.seq = 6
    room.apply("me-again", [backplane.event(backplane.submitted[-1][1], server="me-again")])
    assert [p["type"] for p in payloads(room, dave)] == ["welcome"]


def test_being_announced_gone_fences_this_server() -> None:
    """A server the others took for dead (it was stopped past the clean-up)
    closes its clients rather than keep a second "alice"."""
    backplane = ScriptedBackplane()
    room = room_with(backplane)
    closed: list[str] = []
    alice = FakeMember()
    room.join(alice, "alice", Seat("?", lambda by, m: None, close=closed.append), Outcome())
    room.apply("me", [backplane.event(backplane.submitted[0][1])])
    backplane.seq += 1
    room.apply("me", [Event(backplane.seq, Kind.GONE, 2.0, "me", 0, ["alice"])])
    assert closed and room.users() == ()
    try:
        room.join(FakeMember(), "alice", None, Outcome())
    except ProtocolError as exc:
        assert exc.code == ErrorCode.ROOM_UNAVAILABLE
    else:
        raise AssertionError("a reaped server took a join")


def test_a_private_message_reaches_only_its_local_ends() -> None:
    backplane = ScriptedBackplane()
    room = room_with(backplane, Holder("bob", "other", 1, "bob", "10.0.0.2", False, 5.0, False))
    alice, carol = FakeMember(), FakeMember()
    for member, name in ((alice, "alice"), (carol, "carol")):
        room.join(member, name, None, Outcome())
        room.apply("me", [backplane.event(backplane.submitted[-1][1])])
    payloads(room, alice), payloads(room, carol)
    said = Outcome()
    room.say(alice, "psst", to="BOB", done=said)
    say = backplane.submitted[-1][1]
    assert (say.identity, say.target) == ("alice", "bob")
    room.apply("me", [backplane.event(say, msg_id=7)])
    (echo,) = payloads(room, alice)
    assert (echo["id"], echo["to"], echo["text"]) == (7, "bob", "psst")
    assert payloads(room, carol) == []
    # Someone else's private message to carol, from bob on the other server.
    bob_says = Command(Kind.SAY, '{"n":"bob","x":"hey","a":false}', "bob", 1, "carol")
    room.apply("me", [backplane.event(bob_says, server="other", msg_id=8)])
    assert [(p["from"], p["to"]) for p in payloads(room, carol)] == [("bob", "carol")]
    assert payloads(room, alice) == []


def test_a_member_from_before_a_fence_cannot_speak_after_the_server_is_back() -> None:
    """Its shutdown is on its way to its thread; meanwhile what it sends is
    refused as room-unavailable, not a crash of its connection."""
    backplane = ScriptedBackplane()
    room = room_with(backplane)
    alice = FakeMember()
    room.join(alice, "alice", None, Outcome())
    room.apply("me", [backplane.event(backplane.submitted[0][1])])
    room.fence("lost")
    room.reset(Snapshot("me-again", 0, 0, (), ()))
    for attempt in (
        lambda: room.say(alice, "hi", done=Outcome()),
        lambda: room.rename(alice, "alicia", Outcome()),
    ):
        try:
            attempt()
        except ProtocolError as exc:
            assert exc.code == ErrorCode.ROOM_UNAVAILABLE
        else:
            raise AssertionError("a member of the old registration was served")
    assert len(backplane.submitted) == 1


def test_a_private_message_to_an_empty_name_is_refused_not_said_to_everyone() -> None:
    """The script reads an empty target as "everyone"; no name is empty."""
    backplane = ScriptedBackplane()
    room = room_with(backplane)
    alice = FakeMember()
    room.join(alice, "alice", None, Outcome())
    room.apply("me", [backplane.event(backplane.submitted[0][1])])
    for to in ("", "x" * 1000):
        try:
            room.say(alice, "psst", to=to, done=Outcome())
        except ProtocolError as exc:
            assert exc.code == ErrorCode.NO_SUCH_USER and exc.in_reply_to == "say"
        else:
            raise AssertionError(f"a message to {to[:5]!r} was taken")
    assert len(backplane.submitted) == 1
