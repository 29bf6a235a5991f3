"""Fan-out: one byte stream for the whole room, and what each member is owed.

How this works: every frame meant for the whole room (a message, a join, a
leave, a rename) is encoded once and appended to a ``BroadcastLog``, one
byte stream for everybody. Each member's ``Outbox`` holds a cursor into
that log plus a short queue of frames for that member alone (its welcome,
replies, private messages), each tagged with the log position it must
follow, so every member receives its frames in the server's order. A
member that falls more than ``max_backlog`` bytes behind is *overrun*: the
room's ``pull`` answers ``None`` and its connection drops it as
``too-slow``. That bound also lets the log forget everything older than
``max_backlog`` (``Fanout.broadcast`` trims it). Replies (what a member's
connection asked for) are left out of that bound: its connection bounds
them by no longer reading requests while they pile up. A leaver keeps its
cursor up to where the log ended when it left, so leaving copies nothing,
however much it is owed; only a tail the log is about to forget is copied
first (at most ``max_backlog``).

``Fanout.broadcast`` also says whether a new frame is *urgent* (a message,
which people wait for) or presence (a join, leave or rename), which the
server may hold back for a moment so that a storm of joins costs one write
per member per moment rather than one per join. Presence becomes urgent
too once a quarter of the slow-reader bound of it is held back, so that
holding it back never makes a member that keeps up look slow.

Everything here is per process and does no I/O; all of it is guarded by
the room's lock. The room fills and drains outboxes itself, with the log
(``Fanout.log``), so that delivering a frame costs no call in between.
"""

from __future__ import annotations

from collections import deque


class BroadcastLog:
    """An append-only byte stream of frames, of which only the tail is kept.

    Positions are absolute offsets since the log began; ``base`` is the
    oldest position still held.
    """

    __slots__ = ("_base", "_buffer", "_held_from", "_last_read")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._base = 0
        self._last_read: tuple[int, int, bytes] = (0, 0, b"")
        self._held_from: int | None = None

    @property
    def visible(self) -> int:
        """Where what may be read ends: ``end``, unless a hold keeps the tail back."""
        held = self._held_from
        return self._base + len(self._buffer) if held is None else held

    def hold(self, position: int | None) -> None:
        """Keep everything from ``position`` on from being read (``None``: nothing)."""
        self._held_from = position

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
        """Where what it may read of the log now ends (a hold keeps the tail back)."""
        visible = log.visible
        until = self._until
        return visible if until is None or until > visible else until

    def backlog(self, log: BroadcastLog) -> int:
        """Bytes queued for this member."""
        end = log.end if self._until is None else self._until
        unread = 0 if self.cursor is None else end - self.cursor
        return unread + self._counted + self.replies

    def overrun(self, log: BroadcastLog, max_backlog: int) -> bool:
        """Whether more than ``max_backlog`` bytes but replies are queued (or were lost).

        What a hold keeps back is not counted: the member could not have read
        it (the room bounds the hold itself).
        """
        cursor = self.cursor
        if cursor is None:
            return self._counted > max_backlog
        if cursor < log.base:
            return True
        return self._log_end(log) - cursor + self._counted > max_backlog

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
                self._advance(stop)
            return log.read(start, stop)
        # A direct frame follows the log bytes before its position, and
        # waits while a hold keeps those back (it was queued after them);
        # one for a member that follows no log (not yet joined) never waits.
        visible = log.visible
        parts: list[bytes] = []
        size = 0
        while size < max_bytes:
            budget = max_bytes - size
            cursor = self.cursor
            first = direct[0][0] if direct else None
            if first is not None and (cursor is None or (first <= visible and first <= cursor)):
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
            elif cursor is not None and cursor < end:
                stop = min(end, cursor + budget)
                if first is not None:
                    stop = min(stop, first)
                piece = log.read(cursor, stop)
                self._advance(stop)
            else:
                break
            if piece:
                parts.append(piece)
                size += len(piece)
        return b"".join(parts)

    def _advance(self, stop: int) -> None:
        if self._until is not None and stop >= self._until:
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
        # Each piece keeps the position it ends at, so that a hold still keeps it back.
        direct: deque[tuple[int, bytes, bool]] = deque()
        for position, frame, reply in self._direct:
            if cursor < min(position, end):
                direct.append((min(position, end), log.read(cursor, min(position, end)), False))
                cursor = min(position, end)
            direct.append((position, frame, reply))
        if cursor < end:
            direct.append((end, log.read(cursor, end), False))
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


def take_tails(outboxes: list[Outbox], log: BroadcastLog, max_bytes: int) -> list[bytes | None]:
    """``Outbox.take`` for many members at once, in the case of a member that
    keeps up: all it is owed is the log's tail, at most ``max_bytes`` of it,
    and nothing of its own is queued. Each such one gets the log's bytes
    from its cursor to the end (the same object for every member at the
    same cursor; ``b""`` if it has all); ``None`` for the others, which
    ``take`` serves. Guarded by the room's lock, like the rest.

    It is the room's hot path at chat rates, where each message is a flush
    of its own: one loop over the members with nothing called per member.
    """
    end = log.visible
    base = log.base
    taken: list[bytes | None] = []
    # Nearly all are at one cursor: its tail read once, without a call per member.
    last_cursor, last_tail = end, b""
    for outbox in outboxes:
        cursor = outbox.cursor
        if (
            cursor is None
            or outbox._direct
            or outbox._until is not None
            or cursor < base
            or end - cursor > max_bytes
        ):
            taken.append(None)
        else:
            if cursor != last_cursor:
                last_cursor, last_tail = cursor, log.read(cursor, end)
            outbox.cursor = end
            taken.append(last_tail)
    return taken


class Fanout:
    """The log's life: appending, trimming it past the leavers, presence urgency.

    ``log`` is the room's ``BroadcastLog``; ``max_backlog`` the slow-reader
    bound. Guarded by the room's lock.
    """

    # The log is trimmed back to max_backlog bytes once it holds this many
    # times that, so trimming is rare and its memmove cost amortised.
    _TRIM_FACTOR = 2

    __slots__ = ("_leavers", "_presence_held", "log", "max_backlog")

    def __init__(self, max_backlog: int) -> None:
        self.log = BroadcastLog()
        self.max_backlog = max_backlog
        # Outboxes of those who left still reading their tail of the log,
        # until their connection is discarded (within its close grace).
        self._leavers: set[Outbox] = set()
        self._presence_held = 0  # bytes logged since the last urgent broadcast

    def join(self, outbox: Outbox) -> None:
        """``outbox`` follows the log from its end (its member joined)."""
        outbox.subscribe(self.log)

    def leave(self, outbox: Outbox) -> None:
        """``outbox`` stops following the log; it keeps what it is owed of it."""
        outbox.unsubscribe(self.log)
        if outbox.holds_log:
            self._leavers.add(outbox)

    def discard(self, outbox: Outbox) -> None:
        """Forget what ``outbox`` is owed: its connection is gone."""
        outbox.clear()
        self._leavers.discard(outbox)

    def broadcast(self, frame: bytes, *, urgent: bool) -> bool:
        """Log ``frame`` for everyone. Returns whether to flush it at once:
        when ``urgent``, or when so much presence is held back that a member
        who keeps up could come near the slow-reader bound."""
        log = self.log
        log.append(frame)
        if log.held > self._TRIM_FACTOR * self.max_backlog:
            self._trim(log.end - self.max_backlog)
        self._presence_held += len(frame)
        if urgent or self._presence_held > self.max_backlog // 4:
            self._presence_held = 0
            return True
        return False

    def _trim(self, base: int) -> None:
        log = self.log
        for leaver in list(self._leavers):
            # What a leaver is owed, its own echo and last error among it,
            # must outlive the log's trimming (a member is overrun instead).
            if not leaver.holds_log:
                self._leavers.discard(leaver)
            elif leaver.cursor is not None and leaver.cursor < base:
                # One owed more than the bound is left to be overrun (and dropped).
                if not leaver.overrun(log, self.max_backlog):
                    leaver.keep_owed_log(log)
                self._leavers.discard(leaver)
        log.forget_before(base)
