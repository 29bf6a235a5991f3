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

Unless the server's TLS mode is ``off``, the room also keeps who is
connected in plaintext (``Member.secure`` false) as a second ``Roster``,
sorted like the users, so that ``welcome`` and ``users`` carry
``insecure`` without re-encoding either list per join.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from server.config import DEFAULT_HISTORY, DEFAULT_MAX_QUEUE, TlsMode
from server.fanout import Fanout, Outbox
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
    name_identity,
    show_wire,
)
from server.store import IdSource, NameRegistry, RecentHistory
from server.store.memory import MemoryHistory, MemoryIds, MemoryNames, Roster

# Outbox too: a connection holds one to be a Member.
__all__ = ["Member", "Outbox", "Room"]


class Member(Protocol):
    """What the room needs of a connection (a fake one will do in tests)."""

    name: str | None
    outbox: Outbox
    secure: bool  # connected over TLS (read only when the TLS mode is not off)

    def notify(self) -> None:
        """Private frames are waiting: have the owning thread flush them. Any thread."""


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

    ``tls`` is the server's TLS mode: unless it is ``off``, welcomes and
    user lists name the plaintext members (``insecure``), and in ``auto``
    a plaintext welcome says TLS is available.
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
        tls: TlsMode = TlsMode.OFF,
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
        self._closed = False
        self._insecure: Roster | None = None if tls is TlsMode.OFF else Roster()
        self._tls_available = tls is TlsMode.AUTO
        # The users frame with ``insecure``, and the two lists it was made of.
        self._users: tuple[NameList, NameList, bytes] | None = None

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
            if not self._names.claim(identity, name, member):
                raise _name_taken(name)
            insecure = self._insecure
            secure = insecure is not None and member.secure
            if insecure is not None and not secure:
                insecure.add(identity, name)
            recent = self._history.recent()
            try:
                welcome = encode(
                    Welcome(
                        name,
                        self._names.names,
                        len(recent),
                        self.motd,
                        secure=secure,
                        tls_available=self._tls_available and not secure,
                        insecure=None if insecure is None else insecure.names,
                    )
                )
            except LocalProtocolError:
                # Only a huge room of long names outgrows a frame.
                self._names.release(identity, member)
                if insecure is not None and not secure:
                    insecure.remove(identity, name)
                raise RemoteProtocolError(
                    ErrorCode.SERVER_FULL, "The room is too big to join; try again later."
                ) from None
            member.name = name
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

    def leave(self, member: Member, reason: LeaveReason) -> int | None:
        """Remove ``member`` and tell the others why.

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
            urgent = False
            if not self._closed:
                urgent = self._broadcast(Left(name, reason, self._now()))
            online = len(self._names)
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
            if not self._names.rename(old_identity, identity, name, member):
                raise _name_taken(name)
            if self._insecure is not None and not member.secure:
                self._insecure.remove(old_identity, old)
                self._insecure.add(identity, name)
            member.name = name
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
            )
            if recipient is None:
                self._broadcast(message, urgent=True)
                self._history.append(message)
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
            member.outbox.put(self._log, self._users_frame(), reply=True)
        member.notify()

    def discard(self, member: Member) -> None:
        """Forget what ``member`` is owed: its connection is gone. Call ``leave`` first."""
        with self._lock:
            self._fanout.discard(member.outbox)

    def close(self) -> None:
        """The server is stopping: later departures are not announced."""
        with self._lock:
            self._closed = True

    # -- helpers (the lock is held) ---------------------------------------

    def _users_frame(self) -> bytes:
        """The ``users`` frame, encoded again only after the lists changed."""
        if self._insecure is None:
            return self._names.users_frame
        names, insecure = self._names.names, self._insecure.names
        cached = self._users
        if cached is None or cached[0] is not names or cached[1] is not insecure:
            cached = self._users = (names, insecure, encode(Users(names, insecure)))
        return cached[2]

    def _now(self) -> float:
        # Milliseconds are all anyone shows; the digits beyond them would
        # add an eighth to every presence frame a join storm sends.
        return round(self._clock(), 3)

    def _broadcast(self, message: Message, *, urgent: bool = False) -> bool:
        """Log ``message`` for everyone; whether to flush it at once (``Fanout.broadcast``)."""
        return self._fanout.broadcast(encode(message), urgent=urgent)


def _name_taken(name: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.NAME_TAKEN, f"The name {name} is already in use.")
