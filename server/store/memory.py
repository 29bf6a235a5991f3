"""The stores as the server has always kept them: in memory, gone at exit.

How this works: ``MemoryNames`` maps each name identity to its owner and
keeps a ``Roster``, the sorted names with their JSON ready, so that a join
in a room of thousands copies the user list rather than encoding it.
``MemoryIds`` counts up from the last id used. ``MemoryHistory`` keeps the
last ``size`` public messages (the server's configured history): the
window a welcome replays is also all that pages and search can find.

Only the room writes, under its lock; pages and searches read from any
thread without a lock. They can, because the history's list only grows:
once it holds a quarter more than ``size`` (at least 64 more), it is
replaced by a copy of its newest ``size`` entries, and a reader that took
the old list keeps reading it, unchanged. Trimming so copies a few
references per message, amortised.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from server.protocol import ChatMessage, NameList, Users, encode, json_string
from server.store import HistoryEntry, HistoryStore, IdSource, NameRegistry, Owner
from server.store.words import message_words, query_words


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


class MemoryNames(NameRegistry[Owner]):
    """A ``NameRegistry`` in a dict, with the sorted ``Roster`` beside it."""

    __slots__ = ("_held", "_roster")

    def __init__(self) -> None:
        self._held: dict[str, tuple[Owner, str]] = {}  # identity -> (owner, name)
        self._roster = Roster()

    def claim(self, identity: str, name: str, owner: Owner) -> bool:
        if identity in self._held:
            return False
        self._held[identity] = (owner, name)
        self._roster.add(identity, name)
        return True

    def rename(self, old: str, identity: str, name: str, owner: Owner) -> bool:
        held_owner, old_name = self._held[old]
        assert held_owner is owner, "only the holder of a name renames from it"
        if identity != old and identity in self._held:
            return False
        del self._held[old]
        self._roster.remove(old, old_name)
        self._held[identity] = (owner, name)
        self._roster.add(identity, name)
        return True

    def release(self, identity: str, owner: Owner) -> bool:
        held = self._held.get(identity)
        if held is None or held[0] is not owner:
            return False
        del self._held[identity]
        self._roster.remove(identity, held[1])
        return True

    def owner_of(self, identity: str) -> Owner | None:
        held = self._held.get(identity)
        return None if held is None else held[0]

    def __len__(self) -> int:
        return len(self._held)

    @property
    def names(self) -> NameList:
        return self._roster.names

    @property
    def users_frame(self) -> bytes:
        return self._roster.users_frame


class MemoryIds(IdSource):
    """An ``IdSource`` counting up from ``start``, the last id used (0: none yet)."""

    __slots__ = ("_last",)

    def __init__(self, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"the last id used cannot be negative, not {start}")
        self._last = start

    def next_id(self) -> int:
        self._last += 1
        return self._last


class _Entry(HistoryEntry):
    """A history entry whose words are worked out on the first search."""

    __slots__ = ("_words",)

    def __init__(self, message: ChatMessage) -> None:
        super().__init__(message)
        self._words: frozenset[str] | None = None

    @property
    def words(self) -> frozenset[str]:
        # Two searches may both work them out: the same words, either kept.
        if self._words is None:
            self._words = message_words(self.message)
        return self._words


def _message_id(entry: _Entry) -> int:
    return entry.message.id


class MemoryHistory(HistoryStore):
    """A ``HistoryStore`` of the last ``size`` public messages (0: none)."""

    __slots__ = ("_entries", "_size", "_slack")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"a history cannot hold fewer than 0 messages, not {size}")
        self._size = size
        self._slack = max(size // 4, 64)
        self._entries: list[_Entry] = []

    def append(self, message: ChatMessage) -> bool:
        if self._size == 0:
            return False
        entries = self._entries
        entries.append(_Entry(message))
        if len(entries) > self._size + self._slack:
            self._entries = entries[-self._size :]
        return False

    def watch_durable(self, callback: Callable[[int], None]) -> None:
        """Nothing to watch: nothing here is ever on its way to disk."""

    def recent(self) -> Sequence[HistoryEntry]:
        entries, start, end = self._window()
        return entries[start:end]

    def page(self, before: int | None, limit: int) -> tuple[list[ChatMessage], bool]:
        _check_limit(limit)
        entries, start, end = self._window(before)
        first = max(start, end - limit)
        return [entry.message for entry in entries[first:end]], first > start

    def search(
        self, query: str, limit: int, before: int | None = None
    ) -> tuple[list[ChatMessage], bool]:
        _check_limit(limit)
        wanted = query_words(query)
        entries, start, end = self._window(before)
        found: list[ChatMessage] = []
        for index in range(end - 1, start - 1, -1):
            entry = entries[index]
            if wanted <= entry.words:
                if len(found) == limit:
                    return found, True
                found.append(entry.message)
        return found, False

    def _window(self, before: int | None = None) -> tuple[list[_Entry], int, int]:
        """The list read, and where in it the last ``size`` messages (those
        below ``before``, if given) start and end."""
        entries = self._entries  # this list's first ``end`` entries never change
        end = len(entries)
        start = max(0, end - self._size)
        if before is not None:
            end = bisect.bisect_left(entries, before, start, end, key=_message_id)
        return entries, start, end


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"a limit is at least 1, not {limit}")
