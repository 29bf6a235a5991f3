"""The one shared room: the facade every connection calls, with one lock.

How this works: a connection calls ``join``, ``say``, ``pull`` and the rest
from its own thread; each takes the room's lock, asks the stores and the
fan-out, and releases it. The stores (``server.store``) hold the room's
domain state: who holds each name, the next message id, and the public
history. The fan-out (``server.fanout``) holds the broadcast log and each
member's outbox, and decides how far behind a member may fall.

Under the lock the room calls only what never blocks: the stores'
``claim``, ``rename``, ``release``, ``owner_of``, ``next_id``, ``append``
and ``recent`` (a store that writes to disk does so from its own thread),
and the fan-out, which does no I/O. It holds its history as a
``RecentHistory``, so it cannot even ask for a page or a search, which
may read a disk: those go to the store, outside the room. No method does
socket I/O either: a connection pulls its next bytes under the lock and
writes them outside it. The room calls ``Member.notify`` (private frames waiting) and the
``on_broadcast`` hook (the log grew) after releasing the lock; the hook is
told whether the new frame is urgent (see ``server.fanout``).

Operators and moderation: each member has a ``Seat`` (when it joined, its
address, whether it is an operator, and how to have its own thread kick
it). Kicks never touch another member's connection from here: the room
looks the member up under the lock and calls its seat's ``kick``, which
hands the work to that member's thread. Name bans are checked by
``_admit_name``, the one check every path that sets a name (join, rename)
goes through; the ``ops`` list is kept sorted and encoded, like the users,
and is left out of ``welcome`` and ``users`` while there are none (absent
means none, and old peers see the frames they always saw).

What is seen is kept: when the history store says a public message is on
its way to disk (``RecentHistory.append``), the room holds the broadcast
log from that message's frame on (``BroadcastLog.hold``), so that nobody,
its sender included, receives it, or anything the room said after it,
until the store's thread says it is kept (``_saved``). The store commits
in batches, so the wait is about one commit, shared by everyone who spoke
meanwhile.

Unless the server's TLS mode is ``off``, the room also keeps who is
connected in plaintext (``Member.secure`` false) as a second ``Roster``,
sorted like the users, so that ``welcome`` and ``users`` carry
``insecure`` without re-encoding either list per join.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from server.config import DEFAULT_HISTORY, DEFAULT_MAX_QUEUE, TlsMode
from server.fanout import Fanout, Outbox, take_tails
from server.passwords import GuessCounter, Secret
from server.protocol import (
    MAX_NAME_INPUT,
    ChatMessage,
    ErrorCode,
    FileInfo,
    Joined,
    LeaveReason,
    Left,
    LocalProtocolError,
    Message,
    NameList,
    Notice,
    OpChanged,
    ProtocolError,
    RemoteProtocolError,
    Renamed,
    Users,
    Welcome,
    WhoisResult,
    clean_text,
    encode,
    json_string,
    name_identity,
    normalize_name,
    show_wire,
    sort_names,
)
from server.store import IdSource, NameRegistry, RecentHistory
from server.store.bans import MAX_REASON, Ban, BanStore, BanStoreError, address_group
from server.store.memory import MemoryHistory, MemoryIds, MemoryNames, Roster

# Outbox too: a connection holds one to be a Member.
__all__ = ["Done", "Member", "Outbox", "Room", "Seat"]


class Member(Protocol):
    """What the room needs of a connection (a fake one will do in tests)."""

    name: str | None
    outbox: Outbox
    secure: bool  # connected over TLS (read only when the TLS mode is not off)

    def notify(self) -> None:
        """Private frames are waiting: have the owning thread flush them. Any thread."""


Done = Callable[[ProtocolError | None], None]
"""How a change ordered elsewhere ended (``None``: done), for a room shared by
several servers (``server.shared_room``); called from any thread."""


@dataclass(slots=True)
class Seat:
    """What the room knows of a member beyond its name (operators extension).

    ``kick(by, message)`` has the member's own thread remove it (``by``
    ``None``: the server's console); ``close(message)`` has it sent
    ``shutdown`` with ``message`` and closed (its server lost the room).
    Any thread may call either.
    """

    host: str
    kick: Callable[[str | None, str], None]
    secure: bool = False
    since: float = 0.0  # when it joined, seconds since the epoch
    op: bool = False
    close: Callable[[str], None] = field(default=lambda message: None)


def _no_kick(by: str | None, message: str) -> None:
    """The kick of a member that cannot be kicked (a test's, or the console's)."""


class Room:
    """The chat room: its members, their names, what is said and owed.

    Every public method is thread-safe and may be called from any thread.
    Names passed in must already be normalised (``protocol.normalize_name``)
    and text cleaned (``protocol.clean_text``).

    ``names``, ``ids`` and ``history_store`` are the stores (see
    ``server.store``); by default they are in memory, the history keeping
    the last ``history`` public messages (``history`` is not used when a
    ``history_store`` is given). The room only appends to the history and
    reads its recent window: pages and searches go to the store itself.

    Operators extension: ``bans`` (in memory by default), ``op_secret`` (the
    operator password; ``None``: no ``op`` succeeds), ``guesses`` (wrong
    passwords per address). ``by`` ``None`` in the moderation methods is
    the server's console.

    ``tls`` is the server's TLS mode: unless it is ``off``, welcomes and
    user lists name the plaintext members (``insecure``), and in ``auto``
    a plaintext welcome says TLS is available.

    ``features`` is what every welcome lists as offered (``config.features``).
    """

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        motd: str | None = None,
        max_backlog: int = DEFAULT_MAX_QUEUE,
        on_broadcast: Callable[[bool], None] = lambda urgent: None,
        clock: Callable[[], float] = time.time,
        names: NameRegistry[Member] | None = None,
        ids: IdSource | None = None,
        history_store: RecentHistory | None = None,
        bans: BanStore | None = None,
        op_secret: Secret | None = None,
        guesses: GuessCounter | None = None,
        tls: TlsMode = TlsMode.OFF,
        features: tuple[str, ...] = (),
        room_secret: Secret | None = None,
    ) -> None:
        self.motd = motd
        self.max_backlog = max_backlog
        self._on_broadcast = on_broadcast
        self._clock = clock
        self._lock = threading.Lock()
        self._fanout = Fanout(max_backlog)
        # The same log, read straight from here by pull: no call in between.
        self._log = self._fanout.log
        self._names: NameRegistry[Member] = MemoryNames() if names is None else names
        self._ids: IdSource = MemoryIds() if ids is None else ids
        self._history: RecentHistory = (
            MemoryHistory(history) if history_store is None else history_store
        )
        # Public messages on their way to disk: (id, where its frame starts in the log).
        self._unsaved: deque[tuple[int, int]] = deque()
        self._history.watch_durable(self._saved)
        self._closed = False
        # operators extension
        self.bans = BanStore() if bans is None else bans
        self.op_secret = op_secret  # None: nobody can become an operator but by the console
        self.guesses = GuessCounter() if guesses is None else guesses
        self.room_secret = room_secret  # room password extension; None: no password
        self._seats: dict[Member, Seat] = {}
        self._ops = NameList((), ())
        self._insecure: Roster | None = None if tls is TlsMode.OFF else Roster()
        self._tls_available = tls is TlsMode.AUTO
        self._features = features or None  # every welcome's ``features``
        # The users frame, and the lists it was made of (each list is a new
        # NameList at each change, so identity says whether it is stale).
        self._users: tuple[NameList, NameList | None, NameList, bytes] | None = None

    # -- queries ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._names)

    def users(self) -> tuple[str, ...]:
        """Everyone in the room, sorted by identity, then name."""
        with self._lock:
            return self._names.names

    def pull(self, member: Member, max_bytes: int) -> bytes | None:
        """Take up to about ``max_bytes`` owed to ``member``, or ``None`` if it is overrun."""
        with self._lock:
            outbox = member.outbox
            if outbox.overrun(self._log, self.max_backlog):
                return None
            return outbox.take(self._log, max_bytes)

    def pull_tails(self, members: Sequence[Member], max_bytes: int) -> list[bytes | None]:
        """``pull`` for many members, those that keep up (``fanout.take_tails``):
        for each, the log's tail it is owed, or ``None`` to ``pull`` it alone."""
        with self._lock:
            return take_tails([member.outbox for member in members], self._log, max_bytes)

    def owes(self, member: Member) -> bool:
        """Whether anything is still queued for ``member``, held back or not."""
        with self._lock:
            return member.outbox.backlog(self._log) > 0

    def overrun(self, member: Member, unsent: int) -> bool:
        """Whether ``member`` is more than ``max_backlog`` behind.

        ``unsent`` counts bytes the caller pulled earlier but could not yet
        write; they are part of the member's backlog too (replies aside).
        """
        with self._lock:
            return member.outbox.overrun(self._log, self.max_backlog - unsent)

    # -- changes ---------------------------------------------------------

    def join(
        self, member: Member, name: str, seat: Seat | None = None, done: Done | None = None
    ) -> int | None:
        """Add ``member`` as ``name``: ``joined`` to the others, ``welcome`` and history to it.

        ``seat`` is what else the room keeps of it (none: an address of
        ``?`` and no kick). Returns how many are in the room now. Raises
        ``RemoteProtocolError`` ``name-taken``, or ``banned`` (fatal).

        A room shared with other servers returns ``None`` instead: the join
        is on its way, and ``done`` is told how it ended (``done`` is
        ignored here: this room decides at once).
        """
        with self._lock:
            identity = name_identity(name)
            self._admit_name(identity)
            if not self._names.claim(identity, name, member):
                raise name_taken_error(name)
            insecure = self._insecure
            secure = insecure is not None and member.secure
            if insecure is not None and not secure:
                insecure.add(identity, name)
            recent = self._history.recent()
            try:
                welcome = self._welcome(name, secure, len(recent))
            except RemoteProtocolError:
                self._names.release(identity, member)
                if insecure is not None and not secure:
                    insecure.remove(identity, name)
                raise
            member.name = name
            seat = Seat("?", _no_kick) if seat is None else seat
            seat.since = self._now()
            seat.op = False
            self._seats[member] = seat
            urgent = self._broadcast(Joined(name, self._now()))
            outbox = member.outbox
            self._fanout.join(outbox)
            outbox.put(self._log, welcome, reply=True)
            for entry in recent:
                outbox.put(self._log, entry.frame, reply=True)
            online = len(self._names)
        self._on_broadcast(urgent)
        member.notify()
        return online

    def leave(
        self,
        member: Member,
        reason: LeaveReason,
        *,
        by: str | None = None,
        message: str | None = None,
    ) -> int | None:
        """Remove ``member`` and tell the others why (a kick: ``by`` whom, ``message``).

        Returns how many are left in the room, or ``None`` if ``member``
        was not in it (so calling it twice is harmless).
        """
        with self._lock:
            name = member.name
            if name is None:
                return None
            identity = name_identity(name)
            if not self._names.release(identity, member):
                return None
            if self._insecure is not None and not member.secure:
                self._insecure.remove(identity, name)
            self._fanout.leave(member.outbox)
            seat = self._seats.pop(member, None)
            if seat is not None and seat.op:
                self._ops_changed()
            urgent = False
            if not self._closed:
                urgent = self._broadcast(Left(name, reason, self._now(), by=by, message=message))
            online = len(self._names)
        self._on_broadcast(urgent)
        return online

    def rename(self, member: Member, name: str, done: Done | None = None) -> str | None:
        """Rename ``member``; every member gets ``renamed``. Returns the old name.

        Raises ``RemoteProtocolError`` ``name-taken``. (A shared room: ``None``,
        and ``done`` later, as for ``join``.)
        """
        with self._lock:
            old = member.name
            assert old is not None, "only a member can rename"
            old_identity, identity = name_identity(old), name_identity(name)
            self._admit_name(identity)
            if not self._names.rename(old_identity, identity, name, member):
                raise name_taken_error(name)
            if self._insecure is not None and not member.secure:
                self._insecure.remove(old_identity, old)
                self._insecure.add(identity, name)
            member.name = name
            seat = self._seats.get(member)
            if seat is not None and seat.op:
                self._ops_changed()
            urgent = self._broadcast(Renamed(old, name, self._now()))
        self._on_broadcast(urgent)
        return old

    def say(
        self,
        member: Member,
        text: str,
        *,
        action: bool = False,
        to: str | None = None,
        file: FileInfo | None = None,
        done: Done | None = None,
    ) -> int | None:
        """Send a message from ``member`` to the room, or privately ``to`` a user,
        with ``file`` if it carries one.

        Returns the message id. Raises ``RemoteProtocolError`` ``no-such-user``.
        (A shared room: ``None``, and ``done`` later, as for ``join``.)
        """
        # Outside the lock; and a `to` longer than any spelling of a name
        # names nobody, so it is not normalised at all.
        wanted = None if to is None or len(to) > MAX_NAME_INPUT else name_identity(to)
        with self._lock:
            sender = member.name
            assert sender is not None, "only a member can speak"
            recipient = None
            if to is not None:
                recipient = None if wanted is None else self._names.owner_of(wanted)
                if recipient is None:
                    raise RemoteProtocolError(
                        ErrorCode.NO_SUCH_USER,
                        f"Nobody called {show_wire(to)} is in the room.",
                        "say",
                    )
            message = ChatMessage(
                self._ids.next_id(),
                sender,
                text,
                self._now(),
                action,
                None if recipient is None else recipient.name,
                file=file,
            )
            if recipient is None:
                flush = self._post(message)
            else:
                frame = encode(message)
                member.outbox.put(self._log, frame, reply=True)  # the sender's echo
                if recipient is not member:
                    recipient.outbox.put(self._log, frame)
        if recipient is None:
            if flush:  # a held one is flushed when it is saved (_saved)
                self._on_broadcast(True)
        else:
            member.notify()
            if recipient is not member:
                recipient.notify()
        return message.id

    def send(self, member: Member, message: Message, *, reply: bool = False) -> None:
        """Queue ``message`` for ``member`` alone (a reply, an error, a ping).

        ``reply``: ``member``'s connection asked for it, so it is bounded by
        that connection's back-pressure rather than the slow-reader bound.
        Only ``member``'s own thread may queue replies.
        """
        self.send_frame(member, encode(message), reply=reply)

    def send_frame(self, member: Member, frame: bytes, *, reply: bool = False) -> None:
        """``send`` for a frame encoded already (a history page, off the loops)."""
        with self._lock:
            member.outbox.put(self._log, frame, reply=reply)
        member.notify()

    def send_users(self, member: Member) -> None:
        """Answer ``who``: queue the user list for ``member``."""
        with self._lock:
            member.outbox.put(self._log, self._users_frame(), reply=True)
        member.notify()

    # -- operators and moderation ------------------------------------------

    def seat(self, name: str) -> tuple[str, Seat] | None:
        """The member called ``name`` (any spelling of its identity): its name and seat."""
        if len(name) > MAX_NAME_INPUT:
            return None
        identity = name_identity(name)
        with self._lock:
            member = self._names.owner_of(identity)
            if member is None or member.name is None:
                return None
            return member.name, self._seats[member]

    def is_op(self, member: Member) -> bool:
        with self._lock:
            seat = self._seats.get(member)
            return seat is not None and seat.op

    def ops(self) -> tuple[str, ...]:
        """The operators' names, sorted like the users."""
        with self._lock:
            return self._ops

    def set_op(self, name: str, op: bool, by: str | None) -> str | None:
        """Make the member ``name`` an operator (``op``) or no longer one, by ``by``
        (``None``: the console); everyone gets ``op-changed``, even when nothing
        changed (it is the answer). Returns its name, ``None`` if nobody has it."""
        identity = None if len(name) > MAX_NAME_INPUT else name_identity(name)
        with self._lock:
            member = None if identity is None else self._names.owner_of(identity)
            if member is None or member.name is None:
                return None
            seat = self._seats[member]
            if seat.op != op:
                seat.op = op
                self._ops_changed()
            urgent = self._broadcast(OpChanged(member.name, op, self._now(), by=by), urgent=True)
            found = member.name
        self._on_broadcast(urgent)
        return found

    def kick(self, name: str, reason: str | None, by: str | None) -> str:
        """Have the member ``name`` removed, for ``reason``; returns its name.

        Raises ``RemoteProtocolError`` ``no-such-user``.
        """
        found = self.seat(name)
        if found is None:
            raise no_such_user_error(name)
        target, seat = found
        seat.kick(by, _removal(target, by, _clean_reason(reason), "removed"))
        return target

    def ban(
        self,
        *,
        name: str | None = None,
        address: str | None = None,
        duration: float | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> Ban:
        """Ban a name's identity, an address or prefix, or both, for ``duration``
        seconds (``None``: for ever); its present matches are kicked.

        Raises ``RemoteProtocolError`` ``bad-field`` and ``RuleViolation``
        ``name-invalid``; ``LocalProtocolError`` when the bans file cannot be
        written (the ban is then not made).
        """
        if name is None and address is None:
            raise RemoteProtocolError(ErrorCode.BAD_FIELD, "Give a name, an address or both.")
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise RemoteProtocolError(
                ErrorCode.BAD_FIELD, "`duration` must be a positive number of seconds."
            )
        shown = None if name is None else normalize_name(name)
        reason = _clean_reason(reason)
        try:
            ban = self.bans.add(
                name=shown,
                identity=None if shown is None else name_identity(shown),
                address=address,
                duration=duration,
                reason=reason,
                by=by,
            )
        except ValueError as exc:
            raise RemoteProtocolError(ErrorCode.BAD_FIELD, str(exc)) from None
        except BanStoreError as exc:
            raise LocalProtocolError("bans-unwritable", str(exc)) from exc
        for target, seat in self.seats_banned(ban):
            seat.kick(by, _removal(target, by, ban.reason, "banned"))
        return ban

    def unban(self, ban_id: int) -> Ban | None:
        """Lift the ban ``ban_id``; the ban, or ``None`` if there was none."""
        try:
            return self.bans.remove(ban_id)
        except BanStoreError as exc:
            raise LocalProtocolError("bans-unwritable", str(exc)) from exc

    def whois(self, name: str) -> WhoisResult:
        """What the room knows of the member ``name``. Raises ``no-such-user``."""
        found = self.seat(name)
        if found is None:
            raise no_such_user_error(name)
        target, seat = found
        return WhoisResult(target, seat.host, seat.secure, seat.since, seat.op)

    def notice(self, text: str, by: str | None) -> None:
        """A server line ``text`` (cleaned here) to everyone, from the operator ``by``.

        Raises ``RuleViolation`` ``text-invalid``.
        """
        text = clean_text(text)
        with self._lock:
            self._broadcast(Notice(text, self._now(), by=by), urgent=True)
        self._on_broadcast(True)

    def seats_banned(self, ban: Ban) -> list[tuple[str, Seat]]:
        """The members ``ban`` matches now, operators included."""
        network = ban.network()
        with self._lock:
            found = []
            for member, seat in self._seats.items():
                name = member.name
                if name is None:
                    continue
                if ban.identity is not None and name_identity(name) == ban.identity:
                    found.append((name, seat))
                    continue
                group = None if network is None else address_group(seat.host)
                if (
                    network is not None
                    and group is not None
                    and group.version == network.version
                    and group.subnet_of(network)  # type: ignore[arg-type]
                ):
                    found.append((name, seat))
            return found

    def _admit_name(self, identity: str) -> None:
        """Refuse a banned name: the one check of every path that sets a name. Lock held."""
        ban = self.bans.match_name(identity)
        if ban is not None:
            raise banned_error(ban, "That name is banned from this room")

    def _ops_changed(self) -> None:
        """The operators or their names changed: sort them again. Lock held."""
        names = sort_names(
            [m.name for m, seat in self._seats.items() if seat.op and m.name is not None]
        )
        self._ops = NameList(names, (json_string(n) for n in names))

    def discard(self, member: Member) -> None:
        """Forget what ``member`` is owed: its connection is gone. Call ``leave`` first."""
        with self._lock:
            self._fanout.discard(member.outbox)

    def close(self) -> None:
        """The server is stopping: later departures are not announced."""
        with self._lock:
            self._closed = True

    # -- helpers (the lock is held) ---------------------------------------

    def _welcome(self, name: str, secure: bool, replayed: int) -> bytes:
        """The ``welcome`` frame for ``name``; ``server-full`` if it outgrows a frame."""
        insecure = self._insecure
        try:
            return encode(
                Welcome(
                    name,
                    self._names.names,
                    replayed,
                    self.motd,
                    ops=self._ops or None,
                    secure=secure,
                    tls_available=self._tls_available and not secure,
                    insecure=None if insecure is None else insecure.names,
                    features=self._features,
                )
            )
        except LocalProtocolError:
            # Only a huge room of long names outgrows a frame.
            raise RemoteProtocolError(
                ErrorCode.SERVER_FULL, "The room is too big to join; try again later."
            ) from None

    def _post(self, message: ChatMessage) -> bool:
        """Log a public message and keep it; whether to flush now (else ``_saved`` will)."""
        start = self._log.end
        holding = bool(self._unsaved)
        self._broadcast(message, urgent=True)
        gave_up = holding and not self._unsaved  # what was held is shown now
        if self._history.append(message):
            if not self._unsaved:
                self._log.hold(start)
            self._unsaved.append((message.id, start))
            return gave_up
        return True

    def _users_frame(self) -> bytes:
        """The ``users`` frame, encoded again only after a list in it changed."""
        names, ops = self._names.names, self._ops
        insecure = None if self._insecure is None else self._insecure.names
        cached = self._users
        if (
            cached is None
            or cached[0] is not names
            or cached[1] is not insecure
            or cached[2] is not ops
        ):
            frame = encode(Users(names, ops=ops or None, insecure=insecure))
            cached = self._users = (names, insecure, ops, frame)
        return cached[3]

    def _now(self) -> float:
        # Milliseconds are all anyone shows; the digits beyond them would
        # add an eighth to every presence frame a join storm sends.
        return round(self._clock(), 3)

    def _broadcast(self, message: Message, *, urgent: bool = False) -> bool:
        """Log ``message`` for everyone; whether to flush it at once (``Fanout.broadcast``)."""
        urgent = self._fanout.broadcast(encode(message), urgent=urgent)
        log = self._log
        if self._unsaved and log.end - log.visible > self.max_backlog * 3 // 4:
            # The disk has fallen behind by most of what a slow reader may
            # lag: show what waits, before trimming the log could take it
            # from members who keep up. The store still keeps it (and its
            # thread says that its disk is slow); only its promise to keep a
            # message before it is seen is broken.
            self._unsaved.clear()
            log.hold(None)
            urgent = True
        return urgent

    def _saved(self, last_id: int) -> None:
        """The store's thread: every message up to ``last_id`` is kept; show them."""
        with self._lock:
            unsaved = self._unsaved
            if not unsaved or unsaved[0][0] > last_id:
                return
            while unsaved and unsaved[0][0] <= last_id:
                unsaved.popleft()
            self._log.hold(unsaved[0][1] if unsaved else None)
        self._on_broadcast(True)


def banned_error(ban: Ban, what: str) -> RemoteProtocolError:
    """The fatal ``banned`` error for ``ban`` (with its reason and end): ``what`` is banned."""
    because = f": {ban.reason}" if ban.reason else ""
    until = "" if ban.expires is None else f" until {time.ctime(ban.expires)}"
    return RemoteProtocolError(
        ErrorCode.BANNED,
        f"{what}{until}{because}.",
        details={"reason": ban.reason, "until": ban.expires},
    )


def _clean_reason(reason: str | None) -> str | None:
    """A kick's or ban's reason as one short line people may be shown, or ``None``."""
    if reason is None or not reason.strip():
        return None
    return " ".join(clean_text(reason).split())[:MAX_REASON]


def _removal(target: str, by: str | None, reason: str | None, what: str) -> str:
    """Who removed ``target`` and why, for people: a kick's or a ban's message."""
    who = "the server" if by is None else by
    because = f": {reason}" if reason else ""
    return f"{target} was {what} by {who}{because}."


def no_such_user_error(name: str) -> RemoteProtocolError:
    """``no-such-user`` for ``name``."""
    return RemoteProtocolError(
        ErrorCode.NO_SUCH_USER, f"Nobody called {show_wire(name)} is in the room."
    )


def name_taken_error(name: str) -> RemoteProtocolError:
    """``name-taken`` for ``name``."""
    return RemoteProtocolError(ErrorCode.NAME_TAKEN, f"The name {name} is already in use.")
