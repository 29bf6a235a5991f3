"""The one shared room: who is in it, what they said, and what each is owed.

How this works: every frame meant for the whole room (a message, a join, a
leave, a rename) is encoded once and appended to a ``BroadcastLog``, one
byte stream for everybody. Each member's ``Outbox`` holds a cursor into
that log plus a short queue of frames for that member alone (its welcome,
replies, private messages), each tagged with the log position it must
follow, so every member receives its frames in the server's order. A
member that falls more than ``max_backlog`` bytes behind is *overrun*:
``pull`` answers ``None`` and its connection drops it as ``too-slow``. That
bound also lets the log forget everything older than ``max_backlog``.
Replies (what a member's connection asked for) are left out of that bound:
its connection bounds them by no longer reading requests while they pile
up. A leaver keeps its cursor up to where the log ended when it left,
so leaving copies nothing, however much it is owed; only a tail the log
is about to forget is copied first (at most ``max_backlog``).

All state here is guarded by one lock. No method does socket I/O: a
connection pulls its next bytes under the lock and writes them outside it.
The room calls ``Member.notify`` (private frames waiting) and the
``on_broadcast`` hook (the log grew) after releasing the lock. The hook is
told whether the new frame is *urgent* (a message, which people wait for)
or presence (a join, leave or rename), which the server may hold back for
a moment so that a storm of joins costs one write per member per moment
rather than one per join. Presence becomes urgent too once a quarter of
the slow-reader bound of it is held back, so that holding it back never
makes a member that keeps up look slow.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from server.config import DEFAULT_HISTORY, DEFAULT_MAX_QUEUE
from server.protocol import (
    MAX_NAME_INPUT,
    ChatMessage,
    ErrorCode,
    Joined,
    LeaveReason,
    Left,
    LocalProtocolError,
    Message,
    NameList,
    RemoteProtocolError,
    Renamed,
    Users,
    Welcome,
    encode,
    json_string,
    name_identity,
    show_wire,
)


class BroadcastLog:
    """An append-only byte stream of frames, of which only the tail is kept.

    Positions are absolute offsets since the log began; ``base`` is the
    oldest position still held.
    """

    __slots__ = ("_base", "_buffer", "_last_read")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._base = 0
        self._last_read: tuple[int, int, bytes] = (0, 0, b"")

    @property
    def base(self) -> int:
        return self._base

    @property
    def end(self) -> int:
        return self._base + len(self._buffer)

    @property
    def held(self) -> int:
        """Bytes currently kept in memory."""
        return len(self._buffer)

    def append(self, frame: bytes) -> None:
        self._buffer += frame

    def read(self, start: int, stop: int) -> bytes:
        """The bytes between two positions, both at or after ``base``."""
        # Members that keep up all read the same slice after each append:
        # copy it once and hand every one of them the same bytes. Positions
        # are absolute and the log only grows, so a slice never goes stale.
        last_start, last_stop, data = self._last_read
        if start != last_start or stop != last_stop:
            data = bytes(self._buffer[start - self._base : stop - self._base])
            self._last_read = (start, stop, data)
        return data

    def forget_before(self, position: int) -> None:
        """Drop the bytes before ``position``; nobody may read them again."""
        count = position - self._base
        if count > 0:
            del self._buffer[:count]
            self._base = position


class Outbox:
    """What one member has yet to receive, in order. Guarded by the room's lock.

    ``cursor`` is the next position owed in the broadcast log (``None``:
    nothing is owed from it) and ``_until`` where what is owed from the log
    ends (``None`` while a member, which follows the log to its end; on
    leaving, the end at that moment). ``_direct`` holds frames for this
    member alone, each after the log position it was queued at.

    Direct frames are counted in bytes as they are queued, in two kinds.
    *Replies* are what the connection asked for (its welcome and history,
    a user list, a pong, an error): they do not count towards the
    slow-reader bound, since the connection stops reading requests while
    they exceed a fraction of it (back-pressure), which bounds them
    instead; only the owning connection's thread adds or takes them, so
    it may read ``replies`` without the lock. The others (private messages
    from other members, the server's pings) count, like the log.

    Leaving copies nothing: the owed tail of the log stays where it is,
    to be read from there. Only if the log is about to forget it before it
    is read is it copied (``keep_owed_log``, at most the slow-reader bound).
    """

    __slots__ = ("_counted", "_direct", "_until", "cursor", "replies")

    def __init__(self) -> None:
        self.cursor: int | None = None
        self._until: int | None = None
        self._direct: deque[tuple[int, bytes, bool]] = deque()  # (position, frame, reply)
        self._counted = 0
        self.replies = 0

    @property
    def subscribed(self) -> bool:
        """Whether it follows the log as it grows (its member is in the room)."""
        return self.cursor is not None and self._until is None

    def _log_end(self, log: BroadcastLog) -> int:
        return log.end if self._until is None else self._until

    def backlog(self, log: BroadcastLog) -> int:
        """Bytes queued for this member."""
        unread = 0 if self.cursor is None else self._log_end(log) - self.cursor
        return unread + self._counted + self.replies

    def overrun(self, log: BroadcastLog, max_backlog: int) -> bool:
        """Whether more than ``max_backlog`` bytes but replies are queued (or were lost)."""
        cursor = self.cursor
        if cursor is None:
            return self._counted > max_backlog
        if cursor < log.base:
            return True
        end = log.end if self._until is None else self._until
        return end - cursor + self._counted > max_backlog

    def put(self, log: BroadcastLog, frame: bytes, *, reply: bool = False) -> None:
        """Queue a frame for this member alone, after everything logged so far.

        ``reply``: the connection asked for it (see the class docstring).
        """
        self._direct.append((log.end, frame, reply))
        if reply:
            self.replies += len(frame)
        else:
            self._counted += len(frame)

    def take(self, log: BroadcastLog, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes`` of what is queued, in order.

        A frame longer than what is left of ``max_bytes`` is split, its rest
        kept first in line, so that what a connection holds unsent (and so
        outside this backlog) stays small.
        """
        direct = self._direct
        end = self._log_end(log)
        if not direct:
            # The common case, a member that keeps up: one slice of the log.
            start = self.cursor
            if start is None or start >= end:
                return b""
            stop = min(end, start + max_bytes)
            if self._until is None:
                self.cursor = stop
            else:
                self._advance(stop, end)
            return log.read(start, stop)
        parts: list[bytes] = []
        size = 0
        while size < max_bytes:
            budget = max_bytes - size
            cursor = self.cursor
            if cursor is not None and cursor < end and (not direct or direct[0][0] > cursor):
                stop = min(end, cursor + budget)
                if direct:
                    stop = min(stop, direct[0][0])
                piece = log.read(cursor, stop)
                self._advance(stop, end)
            elif direct:
                position, frame, reply = direct[0]
                if len(frame) > budget:
                    piece = frame[:budget]
                    direct[0] = (position, frame[budget:], reply)
                else:
                    piece = frame
                    direct.popleft()
                if reply:
                    self.replies -= len(piece)
                else:
                    self._counted -= len(piece)
            else:
                break
            if piece:
                parts.append(piece)
                size += len(piece)
        return b"".join(parts)

    def _advance(self, stop: int, end: int) -> None:
        if stop >= end and self._until is not None:
            # A leaver has read all the log owed it: it no longer holds the log.
            self.cursor = self._until = None
        else:
            self.cursor = stop

    @property
    def holds_log(self) -> bool:
        """Whether a leaver still has part of the log to read."""
        return self.cursor is not None and self._until is not None

    def subscribe(self, log: BroadcastLog) -> None:
        """Start receiving the log from its current end."""
        if self.cursor is not None:
            self.keep_owed_log(log)
        self.cursor = log.end

    def keep_owed_log(self, log: BroadcastLog) -> None:
        """Turn what a leaver is still owed of the log into direct frames: the
        log is about to forget it, or the member follows the log again
        (rejoining). At most ``max_backlog``, or it would be overrun."""
        assert self.cursor is not None and self._until is not None
        if self.cursor < log.base:
            self.clear()
            return
        cursor, end = self.cursor, self._until
        direct: deque[tuple[int, bytes, bool]] = deque()
        for position, frame, reply in self._direct:
            if cursor < min(position, end):
                direct.append((0, log.read(cursor, min(position, end)), False))
                cursor = min(position, end)
            direct.append((0, frame, reply))
        if cursor < end:
            direct.append((0, log.read(cursor, end), False))
        self._counted += end - self.cursor
        self._direct = direct
        self.cursor = self._until = None

    def unsubscribe(self, log: BroadcastLog) -> None:
        """Stop following the log; what it was owed up to now stays owed."""
        if not self.subscribed:
            return
        assert self.cursor is not None
        if self.cursor < log.base:  # overrun: what it was owed is gone
            self.clear()
        elif self.cursor == log.end:
            self.cursor = None
        else:
            self._until = log.end

    def clear(self) -> None:
        """Forget everything owed (its connection is gone)."""
        self._direct.clear()
        self._counted = self.replies = 0
        self.cursor = self._until = None


class Roster:
    """The room's names, sorted by identity, then name, each kept as JSON too.

    ``names`` is built once per change, with its JSON text ready for
    ``encode`` (see ``protocol.NameList``): a join in a room of thousands
    then copies the list instead of encoding it. So is the ``users`` frame,
    since ``who`` is not rate-limited.
    """

    __slots__ = ("_items", "_keys", "_names", "_snapshot", "_users_frame")

    def __init__(self) -> None:
        self._keys: list[tuple[str, str]] = []  # (identity, name)
        self._names: list[str] = []
        self._items: list[str] = []  # each name as a JSON string
        self._snapshot: NameList | None = None
        self._users_frame: bytes | None = None

    @property
    def names(self) -> NameList:
        if self._snapshot is None:
            self._snapshot = NameList(self._names, self._items)
        return self._snapshot

    @property
    def users_frame(self) -> bytes:
        if self._users_frame is None:
            self._users_frame = encode(Users(self.names))
        return self._users_frame

    def add(self, identity: str, name: str) -> None:
        index = bisect.bisect(self._keys, (identity, name))
        self._keys.insert(index, (identity, name))
        self._names.insert(index, name)
        self._items.insert(index, json_string(name))
        self._snapshot = self._users_frame = None

    def remove(self, identity: str, name: str) -> None:
        index = bisect.bisect_left(self._keys, (identity, name))
        del self._keys[index], self._names[index], self._items[index]
        self._snapshot = self._users_frame = None


class Member(Protocol):
    """What the room needs of a connection (a fake one will do in tests)."""

    name: str | None
    outbox: Outbox

    def notify(self) -> None:
        """Private frames are waiting: have the owning thread flush them. Any thread."""


class _HistoryEntry:
    """A past public message; its history frame is encoded on first demand."""

    __slots__ = ("_frame", "message")

    def __init__(self, message: ChatMessage) -> None:
        self.message = message
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = encode(_as_history(self.message))
        return self._frame


def _as_history(message: ChatMessage) -> ChatMessage:
    return ChatMessage(
        message.id, message.sender, message.text, message.ts, message.action, history=True
    )


class Room:
    """The chat room: members by name identity, public history, message ids.

    Every public method is thread-safe and may be called from any thread.
    Names passed in must already be normalised (``protocol.normalize_name``)
    and text cleaned (``protocol.clean_text``).
    """

    # The log is trimmed back to max_backlog bytes once it holds this many
    # times that, so trimming is rare and its memmove cost amortised.
    _TRIM_FACTOR = 2

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        motd: str | None = None,
        max_backlog: int = DEFAULT_MAX_QUEUE,
        on_broadcast: Callable[[bool], None] = lambda urgent: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.motd = motd
        self.max_backlog = max_backlog
        self._on_broadcast = on_broadcast
        self._clock = clock
        self._lock = threading.Lock()
        self._log = BroadcastLog()
        self._members: dict[str, Member] = {}
        # Those who left still reading their tail of the log, until their
        # connection is discarded (within its close grace).
        self._leavers: set[Member] = set()
        self._roster = Roster()
        self._history: deque[_HistoryEntry] = deque(maxlen=history)
        self._last_id = 0
        self._closed = False
        self._presence_held = 0  # bytes logged since the last urgent broadcast

    # -- queries ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._members)

    def users(self) -> tuple[str, ...]:
        """Everyone in the room, sorted by identity, then name."""
        with self._lock:
            return self._roster.names

    def pull(self, member: Member, max_bytes: int) -> bytes | None:
        """Take up to about ``max_bytes`` owed to ``member``, or ``None`` if it is overrun."""
        with self._lock:
            outbox = member.outbox
            if outbox.overrun(self._log, self.max_backlog):
                return None
            return outbox.take(self._log, max_bytes)

    def overrun(self, member: Member, unsent: int) -> bool:
        """Whether ``member`` is more than ``max_backlog`` behind.

        ``unsent`` counts bytes the caller pulled earlier but could not yet
        write; they are part of the member's backlog too (replies aside).
        """
        with self._lock:
            return member.outbox.overrun(self._log, self.max_backlog - unsent)

    # -- changes ---------------------------------------------------------

    def join(self, member: Member, name: str) -> int:
        """Add ``member`` as ``name``: ``joined`` to the others, ``welcome`` and history to it.

        Returns how many are in the room now. Raises ``RemoteProtocolError``
        ``name-taken``.
        """
        with self._lock:
            identity = name_identity(name)
            if identity in self._members:
                raise _name_taken(name)
            self._roster.add(identity, name)
            try:
                welcome = encode(Welcome(name, self._roster.names, len(self._history), self.motd))
            except LocalProtocolError:
                # Only a huge room of long names outgrows a frame.
                self._roster.remove(identity, name)
                raise RemoteProtocolError(
                    ErrorCode.SERVER_FULL, "The room is too big to join; try again later."
                ) from None
            member.name = name
            self._members[identity] = member
            urgent = self._broadcast(Joined(name, self._now()))
            member.outbox.subscribe(self._log)
            outbox = member.outbox
            outbox.put(self._log, welcome, reply=True)
            for entry in self._history:
                outbox.put(self._log, entry.frame, reply=True)
            online = len(self._members)
        self._on_broadcast(urgent)
        member.notify()
        return online

    def leave(self, member: Member, reason: LeaveReason) -> int | None:
        """Remove ``member`` and tell the others why.

        Returns how many are left in the room, or ``None`` if ``member``
        was not in it (so calling it twice is harmless).
        """
        with self._lock:
            if member.name is None or self._members.get(name_identity(member.name)) is not member:
                return None
            identity = name_identity(member.name)
            del self._members[identity]
            self._roster.remove(identity, member.name)
            member.outbox.unsubscribe(self._log)
            if member.outbox.holds_log:
                self._leavers.add(member)
            urgent = False
            if not self._closed:
                urgent = self._broadcast(Left(member.name, reason, self._now()))
            online = len(self._members)
        self._on_broadcast(urgent)
        return online

    def rename(self, member: Member, name: str) -> str:
        """Rename ``member``; every member gets ``renamed``. Returns the old name.

        Raises ``RemoteProtocolError`` ``name-taken``.
        """
        with self._lock:
            old = member.name
            assert old is not None, "only a member can rename"
            old_identity, identity = name_identity(old), name_identity(name)
            if identity != old_identity and identity in self._members:
                raise _name_taken(name)
            del self._members[old_identity]
            self._roster.remove(old_identity, old)
            member.name = name
            self._members[identity] = member
            self._roster.add(identity, name)
            urgent = self._broadcast(Renamed(old, name, self._now()))
        self._on_broadcast(urgent)
        return old

    def say(self, member: Member, text: str, *, action: bool = False, to: str | None = None) -> int:
        """Send a message from ``member`` to the room, or privately ``to`` a user.

        Returns the message id. Raises ``RemoteProtocolError`` ``no-such-user``.
        """
        # Outside the lock; and a `to` longer than any spelling of a name
        # names nobody, so it is not normalised at all.
        wanted = None if to is None or len(to) > MAX_NAME_INPUT else name_identity(to)
        with self._lock:
            sender = member.name
            assert sender is not None, "only a member can speak"
            recipient = None
            if to is not None:
                recipient = None if wanted is None else self._members.get(wanted)
                if recipient is None:
                    raise RemoteProtocolError(
                        ErrorCode.NO_SUCH_USER,
                        f"Nobody called {show_wire(to)} is in the room.",
                        "say",
                    )
            self._last_id += 1
            message = ChatMessage(
                self._last_id,
                sender,
                text,
                self._now(),
                action,
                None if recipient is None else recipient.name,
            )
            if recipient is None:
                self._broadcast(message, urgent=True)
                self._history.append(_HistoryEntry(message))
            else:
                frame = encode(message)
                member.outbox.put(self._log, frame, reply=True)  # the sender's echo
                if recipient is not member:
                    recipient.outbox.put(self._log, frame)
        if recipient is None:
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
        frame = encode(message)
        with self._lock:
            member.outbox.put(self._log, frame, reply=reply)
        member.notify()

    def send_users(self, member: Member) -> None:
        """Answer ``who``: queue the user list for ``member``."""
        with self._lock:
            member.outbox.put(self._log, self._roster.users_frame, reply=True)
        member.notify()

    def discard(self, member: Member) -> None:
        """Forget what ``member`` is owed: its connection is gone. Call ``leave`` first."""
        with self._lock:
            member.outbox.clear()
            self._leavers.discard(member)

    def close(self) -> None:
        """The server is stopping: later departures are not announced."""
        with self._lock:
            self._closed = True

    # -- helpers (the lock is held) ---------------------------------------

    def _now(self) -> float:
        # Milliseconds are all anyone shows; the digits beyond them would
        # add an eighth to every presence frame a join storm sends.
        return round(self._clock(), 3)

    def _broadcast(self, message: Message, *, urgent: bool = False) -> bool:
        """Log ``message`` for everyone. Returns whether to flush it at once:
        when ``urgent``, or when so much presence is held back that a member
        who keeps up could come near the slow-reader bound."""
        log = self._log
        frame = encode(message)
        log.append(frame)
        if log.held > self._TRIM_FACTOR * self.max_backlog:
            base = log.end - self.max_backlog
            for leaver in list(self._leavers):
                # What a leaver is owed, its own echo and last error among it,
                # must outlive the log's trimming (a member is overrun instead).
                if not leaver.outbox.holds_log:
                    self._leavers.discard(leaver)
                elif leaver.outbox.cursor is not None and leaver.outbox.cursor < base:
                    # One owed more than the bound is left to be overrun (and dropped).
                    if not leaver.outbox.overrun(log, self.max_backlog):
                        leaver.outbox.keep_owed_log(log)
                    self._leavers.discard(leaver)
            log.forget_before(base)
        self._presence_held += len(frame)
        if urgent or self._presence_held > self.max_backlog // 4:
            self._presence_held = 0
            return True
        return False


def _name_taken(name: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.NAME_TAKEN, f"The name {name} is already in use.")
