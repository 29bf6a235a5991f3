"""The room's domain state behind small interfaces: names, message ids, history.

How this works: the room asks three stores for what outlives a single
frame: who holds each name (``NameRegistry``), the next message id
(``IdSource``) and the public messages said so far (``HistoryStore``).
``server.store.memory`` keeps all three in memory, as the server always
has; a disk or shared store implements the same Protocols, and the room
never knows which one it has.

The contract is about the room's lock. The room calls ``claim``,
``rename``, ``release``, ``owner_of``, ``next_id``, ``append`` and
``recent`` while it holds its lock, so none of them may block: a disk
store hands its writes to a thread of its own and keeps the recent window
in memory. Its ``append`` says that the message is on its way to disk, and
the room holds that message's broadcast (its echo included) until the
store's thread says it is kept (``watch_durable``): what anyone has seen
then survives the server being killed. ``HistoryStore.page`` and ``search`` may block (they may read
a disk); the room cannot call them, since it holds its history as a
``RecentHistory``, and whoever does runs them off the selector loops (a
worker thread hands the answer back with ``call_soon``).

The stores hold public messages only: a private message is never appended,
so no page or search can return one.

An implementation subclasses its Protocol, so that mypy checks it against
the contract; the Protocols declare empty ``__slots__`` so that one which
declares its own keeps to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from server.protocol import ChatMessage, NameList, encode

Owner = TypeVar("Owner")

MAX_ID = 2**63 - 1
"""No message id is ever above it: SQLite's largest integer."""


class NameRegistry(Protocol[Owner]):
    """Who holds each name, by name identity (``protocol.name_identity``).

    An owner is what the room tells apart (its member); a name identity has
    at most one. ``names`` is everyone's name sorted by identity, then name.
    Every method is called under the room's lock and never blocks.
    """

    __slots__ = ()

    def claim(self, identity: str, name: str, owner: Owner) -> bool:
        """Give ``identity`` (spelt ``name``) to ``owner``; ``False`` if it is taken."""
        ...

    def rename(self, old: str, identity: str, name: str, owner: Owner) -> bool:
        """Move ``owner`` from identity ``old`` to ``identity``, spelt ``name``.

        ``False`` (nothing changed) if another owner holds ``identity``; the
        same identity in another spelling is always ``owner``'s to take.
        """
        ...

    def release(self, identity: str, owner: Owner) -> bool:
        """Free ``identity`` if ``owner`` holds it; whether it did."""
        ...

    def owner_of(self, identity: str) -> Owner | None:
        """Who holds ``identity``, if anyone."""
        ...

    def __len__(self) -> int:
        """How many names are held."""
        ...

    @property
    def names(self) -> NameList:
        """Every name held, sorted by identity, then name."""
        ...

    @property
    def users_frame(self) -> bytes:
        """The ``users`` frame listing ``names``, encoded."""
        ...


class IdSource(Protocol):
    """Message ids: each greater than every one before, across restarts if
    the store keeps them. Called under the room's lock; never blocks."""

    __slots__ = ()

    def next_id(self) -> int:
        """A new id, one above the last one given."""
        ...


class HistoryEntry:
    """A past public message; its history frame is encoded on first demand."""

    __slots__ = ("_frame", "message")

    def __init__(self, message: ChatMessage) -> None:
        self.message = message
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        """The ``message`` frame marked ``history``, as a welcome replays it."""
        if self._frame is None:
            self._frame = encode(as_history(self.message))
        return self._frame


def as_history(message: ChatMessage) -> ChatMessage:
    """``message`` as replayed from history (``history`` true)."""
    return ChatMessage(
        message.id,
        message.sender,
        message.text,
        message.ts,
        message.action,
        history=True,
        file=message.file,
    )


class RecentHistory(Protocol):
    """The part of a history the room uses, under its lock: never blocks."""

    __slots__ = ()

    def append(self, message: ChatMessage) -> bool:
        """Keep a public message, newer than every one kept so far.

        Returns whether it is still on its way to disk: the store then calls
        the ``watch_durable`` callback with its id, or a later one, once it
        is kept (or once the store has given up keeping it: the room must not
        wait for ever). A memory store returns ``False``.
        """
        ...

    def watch_durable(self, callback: Callable[[int], None]) -> None:
        """Have ``callback(last_id)`` called, from the store's own thread and
        without any lock of the caller's held, once every message up to
        ``last_id`` that ``append`` said was on its way is kept. Called once,
        before the first ``append``."""
        ...

    def recent(self) -> Sequence[HistoryEntry]:
        """The window a welcome replays, oldest first; read, never changed."""
        ...


class HistoryStore(RecentHistory, Protocol):
    """The public messages said in the room, in id order.

    ``page`` and ``search`` may block; they are never called under the
    room's lock (the room sees only a ``RecentHistory``), and may be called
    from any thread while the room appends. They return messages as they
    were said (``history`` false); ``more`` says whether older ones that
    fit the request remain. They raise ``ValueError`` for a ``limit`` below
    1, and ``search`` for a query without a word in it
    (``server.store.words``).
    """

    __slots__ = ()

    def page(self, before: int | None, limit: int) -> tuple[list[ChatMessage], bool]:
        """The newest ``limit`` messages with an id below ``before`` (``None``:
        the newest of all), oldest first; and whether older ones remain."""
        ...

    def search(
        self, query: str, limit: int, before: int | None = None
    ) -> tuple[list[ChatMessage], bool]:
        """Up to ``limit`` messages holding every word of ``query``, with an id
        below ``before`` if given, newest first; and whether more match."""
        ...
