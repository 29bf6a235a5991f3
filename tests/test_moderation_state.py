"""Impersonation cannot happen: a Hypothesis state machine drives random frame
sequences from several sessions over fake links into a real ``Room`` (joins,
renames, says, operator passwords right and wrong, kicks, name bans, byes) and
checks after every step what each member has been told against the room:

- every ``message.from`` is the sender's name when it spoke;
- every member's view of who is present (welcome, joined, left, renamed) is
  the room's list, and no two members share a name identity;
- everyone's view of the operators (welcome.ops, op-changed, left, renamed)
  and the room's ``ops`` are exactly those who gave the password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from server.config import ServerConfig
from server.fanout import Outbox
from server.passwords import GuessCounter, Secret
from server.protocol import MAX_SERVER_FRAME, FrameDecoder, name_identity, sort_names
from server.room import Room
from server.session import OP_WRONG_DELAY, Session, State

PASSWORD = "pw"
SECRET = Secret.from_password(PASSWORD)  # once: the slow hash costs tens of milliseconds
SLOTS = 4
NAMES = ["alice", "ALICE", "bob", "Bob", "carol", "\uff43arol", "dave"]


class FakeLink:
    """A connection for the room and the session: records closes and kicks' hand-overs."""

    secure = False

    def __init__(self) -> None:
        self.name: str | None = None
        self.outbox = Outbox()
        self.calls: list[Callable[[], object]] = []
        self.closed = False

    def notify(self) -> None:
        pass

    def on_closing(self) -> None:
        self.closed = True

    def on_closed(self) -> None:
        self.closed = True

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.calls.append(callback)


class View:
    """What one member has been told of the room."""

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.ops: set[str] = set()
        self.welcomed = False


class RoomMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.now = 1000.0
        self.room = Room(
            clock=lambda: self.now,
            op_secret=SECRET,
            guesses=GuessCounter(exempt=lambda host: True),
        )
        self.config = ServerConfig(rate_limit=None)
        self.links: list[FakeLink] = []
        self.sessions: list[Session] = []
        self.views: list[View] = []
        self.is_op: list[bool] = []
        self.said: dict[str, str] = {}  # text -> the sender's name when it spoke
        self.count = 0
        for slot in range(SLOTS):
            self._open(slot)

    def _open(self, slot: int) -> None:
        link = FakeLink()
        session = Session(
            self.room, self.config, link, link, peer=f"10.0.0.{slot}:5000", now=self.now
        )
        if slot < len(self.links):
            self.links[slot], self.sessions[slot] = link, session
            self.views[slot], self.is_op[slot] = View(), False
        else:
            self.links.append(link)
            self.sessions.append(session)
            self.views.append(View())
            self.is_op.append(False)

    def _send(self, slot: int, payload: dict[str, Any]) -> None:
        self.sessions[slot].receive(payload, self.now)

    def _joined(self, slot: int) -> bool:
        return self.sessions[slot].state is State.JOINED

    # -- rules ---------------------------------------------------------------

    @rule(slot=st.integers(0, SLOTS - 1), name=st.sampled_from(NAMES))
    def hello(self, slot: int, name: str) -> None:
        self._send(slot, {"type": "hello", "name": name, "protocol": 1})

    @rule(slot=st.integers(0, SLOTS - 1), name=st.sampled_from(NAMES))
    def rename(self, slot: int, name: str) -> None:
        self._send(slot, {"type": "rename", "name": name})

    @rule(slot=st.integers(0, SLOTS - 1))
    def say(self, slot: int) -> None:
        session = self.sessions[slot]
        if session._held is not None:  # it would be handled later, under a later name
            return
        self.count += 1
        text = f"t{self.count}"
        if self._joined(slot):
            self.said[text] = self.links[slot].name  # type: ignore[assignment]
        self._send(slot, {"type": "say", "text": text})

    @rule(slot=st.integers(0, SLOTS - 1), right=st.booleans())
    def op(self, slot: int, right: bool) -> None:
        if self.sessions[slot]._held is not None:
            return  # it would be handled later: the model could not tell when
        self._send(slot, {"type": "op", "password": PASSWORD if right else "wrong"})
        if right and self._joined(slot):
            self.is_op[slot] = True

    @rule(slot=st.integers(0, SLOTS - 1), name=st.sampled_from(NAMES))
    def kick(self, slot: int, name: str) -> None:
        self._send(slot, {"type": "kick", "name": name})

    @rule(slot=st.integers(0, SLOTS - 1), name=st.sampled_from(NAMES))
    def ban(self, slot: int, name: str) -> None:
        self._send(slot, {"type": "ban", "name": name, "duration": 30})

    @rule(slot=st.integers(0, SLOTS - 1))
    def bye(self, slot: int) -> None:
        self._send(slot, {"type": "bye"})

    @rule(slot=st.integers(0, SLOTS - 1))
    def run_calls(self, slot: int) -> None:
        """The slot's loop runs what was handed to it (a kick)."""
        calls, self.links[slot].calls = self.links[slot].calls, []
        for call in calls:
            call()

    @rule()
    def time_passes(self) -> None:
        self.now += OP_WRONG_DELAY + 0.5
        for session in self.sessions:
            session.check_timers(self.now)

    @precondition(lambda self: any(link.closed for link in self.links))
    @rule()
    def reconnect(self) -> None:
        for slot, link in enumerate(self.links):
            if link.closed:
                self._open(slot)

    # -- what everyone was told --------------------------------------------

    def _drain(self, slot: int) -> None:
        link = self.links[slot]
        data = self.room.pull(link, 1 << 24)
        assert data is not None, "overrun"
        decoder = FrameDecoder(MAX_SERVER_FRAME)
        decoder.receive_data(data)
        view = self.views[slot]
        while (frame := decoder.next_payload()) is not None:
            kind = frame["type"]
            if kind == "welcome":
                view.users, view.ops = set(frame["users"]), set(frame.get("ops") or ())
                view.welcomed = True
            elif kind == "joined":
                view.users.add(frame["name"])
            elif kind == "left":
                view.users.discard(frame["name"])
                view.ops.discard(frame["name"])
            elif kind == "renamed":
                view.users.discard(frame["old"])
                view.users.add(frame["new"])
                if frame["old"] in view.ops:
                    view.ops.discard(frame["old"])
                    view.ops.add(frame["new"])
            elif kind == "op-changed":
                (view.ops.add if frame["op"] else view.ops.discard)(frame["name"])
            elif kind == "message":
                assert frame["from"] == self.said[frame["text"]], frame

    @invariant()
    def everyone_is_told_the_truth(self) -> None:
        if not hasattr(self, "room"):
            return
        for slot in range(SLOTS):
            self._drain(slot)
            if not self._joined(slot):
                self.is_op[slot] = False
        users = self.room.users()
        identities = [name_identity(name) for name in users]
        assert len(set(identities)) == len(identities)
        members = [link.name for slot, link in enumerate(self.links) if self._joined(slot)]
        assert sorted(members) == sorted(users)  # type: ignore[type-var]
        ops = sort_names(
            [self.links[s].name for s in range(SLOTS) if self.is_op[s]]  # type: ignore[misc]
        )
        assert list(self.room.ops()) == ops
        for slot in range(SLOTS):
            if self._joined(slot):
                assert self.views[slot].users == set(users), slot
                assert self.views[slot].ops == set(ops), slot
                assert self.room.is_op(self.links[slot]) == self.is_op[slot]


RoomMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_room_state = RoomMachine.TestCase
