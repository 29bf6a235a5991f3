"""The seam between a room served by several servers and what orders its events.

How this works: with a backplane (PROTOCOL.md, "Several servers, one room")
no server changes the room by itself. A server *submits* each change (a
join, a message, a rename, a leave, an operator's change, a kick) as a
``Command``; the backplane checks its rule against the room's shared state
(the name is free, the recipient is there, this server is still one of the
room's), gives it its place in one log, its id and the room's time, and
answers the command (``Reply``). Every server then reads that log and
*applies* each ``Event`` in order, its own included, to its own copy of
the room (``Replica``): its members' names, its broadcast log, its recent
history. So every client on every server sees one order, its own echo
included.

A server joins the log by registering: it gets a new server id and a
``Snapshot`` of the shared state (who holds each name, the operators, the
recent public messages, the log's position), and applies events from that
position on. A server that loses the backplane for longer than its
cut-off is *fenced*: it tells its clients to go (``Replica.fence``) and
registers again, as a new server, once it can.

``server.store.redis_log`` implements it on Redis; ``server.shared_room``
is the replica.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.protocol import ChatMessage


class Kind:
    """The kinds of commands and events (the log's ``k`` field)."""

    JOIN = "join"
    LEAVE = "leave"
    RENAME = "rename"
    SAY = "say"
    OP = "op"
    NOTICE = "notice"
    KICK = "kick"
    BAN = "ban"  # a ban made on one server, kept by all (its ``identity``: the ban's key)
    UNBAN = "unban"
    GONE = "gone"  # a server's users, all at once: it stopped, or was reaped


@dataclass(frozen=True, slots=True)
class Command:
    """A change a server asks the backplane to order.

    ``identity`` is who it is about (the joiner, the speaker, the renamer,
    an operator change's or a kick's target); ``token`` tells this server's
    members apart (it is the submitter's, for a join, leave, rename or
    say); ``target`` is a rename's new identity or a private message's
    recipient; ``body`` is the JSON the event carries, which the backplane
    does not read.
    """

    kind: str
    body: str
    identity: str = ""
    token: int = 0
    target: str = ""


@dataclass(frozen=True, slots=True)
class Reply:
    """The backplane's answer to a command: ``status`` ``ok``, or why not.

    The statuses: ``ok``; ``name-taken``; ``no-such-user``; ``gone`` (the
    submitter no longer holds the name it spoke as); ``unavailable`` (the
    backplane could not be reached, or this server is fenced).
    """

    status: str
    seq: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the room's log, in order (``seq`` strictly increasing).

    ``server`` and ``token`` are who submitted it; ``ts`` is the room's
    clock (seconds since the epoch, milliseconds kept); ``msg_id`` is a
    message's id; ``identity`` and ``target`` are the command's.
    """

    seq: int
    kind: str
    ts: float
    server: str
    token: int
    body: Any  # the command's JSON: an object, or for ``gone`` a list of identities
    identity: str = ""
    target: str = ""
    msg_id: int = 0


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a name, as the shared state keeps it."""

    identity: str
    server: str
    token: int
    name: str
    host: str
    secure: bool
    since: float
    op: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The shared state at one position of the log, taken at registration."""

    server: str  # this server's new id
    seq: int  # the log's position: events after it are to be applied
    last_id: int  # the last message id given
    holders: Sequence[Holder]
    history: Sequence[ChatMessage]  # the public messages the backplane keeps, oldest first
    bans: Sequence[Any] = ()  # the bans in force, as the ``ban`` events' bodies


class Replica(Protocol):
    """What the backplane drives: a server's copy of the room.

    Each method is called from one of the backplane's threads, never
    under a lock of the backplane's, and may take the room's lock.
    """

    def reset(self, snapshot: Snapshot) -> None:
        """Start over from ``snapshot``: this server registered (again)."""
        ...

    def apply(self, server: str, events: Sequence[Event]) -> None:
        """Apply ``events`` in order (those read after registering as ``server``)."""
        ...

    def fence(self, why: str) -> None:
        """The backplane is out of reach or disowned this server: close every
        client with ``why``, refuse new ones until ``reset``."""
        ...

    def floors(self) -> tuple[int, int]:
        """The highest log position and message id this server has seen."""
        ...


class Backplane(Protocol):
    """Orders a room's changes for every server that serves it."""

    def start(self, replica: Replica) -> None:
        """Register and begin applying events to ``replica`` (threads of its own)."""
        ...

    def submit(self, server: str, command: Command, done: Callable[[Reply], None]) -> bool:
        """Order ``command`` for this server as registered under ``server``;
        ``done`` is called from the backplane's thread with the answer.
        ``False``: not taken (no room in the queue; ``done`` is not called)."""
        ...

    def close(self) -> None:
        """Announce this server's users as gone, and stop."""
        ...
