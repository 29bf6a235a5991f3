"""Names that could pass for one another, and names that mix scripts. No Tk here.

How this works: alice spelt with a Cyrillic a (U+0430) and ``alice`` are two
names by the protocol's identity rule, yet look the same. Unicode's confusables data
(UTS #39's confusables.txt, as the confusable-homoglyphs package ships and
updates it) pairs each look-alike character with a *prototype*; a name's
*skeleton* is its NFD form with every character replaced by its prototype.
Names with equal keys (the skeleton, case-folded as the identity rule
folds, then skeletonised again: ``AIice`` with a capital I and ``alice``
meet there) look alike. The package keeps the pairs as a symmetric graph
(each source lists its prototype, each prototype its sources), so the
prototypes are read off it once (``_prototypes``): the one member of a
pair that many list, or the longer one (``m`` → ``rn``).

A name also gets a warning when its letters come from scripts a name
would not mix (UTS #39's "highly restrictive" level: one script, or
Latin with Han and the Japanese, Korean or Chinese scripts that go with
it), as paypal with a Cyrillic a does even alone in the room.

``LookalikeIndex`` keeps each present name's key once and the names per
key, so a join or a leave costs one key and a few dictionary operations
whatever the room's size; the data loads on first use (about 60 ms).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from itertools import islice

from server.protocol import MAX_NAME_INPUT, name_identity

# Scripts that belong to every script (digits, _ - .) or to the letter before.
_ANY_SCRIPT = frozenset({"COMMON", "INHERITED"})
_LATIN = frozenset({"LATIN"})
# UTS #39 5.2 "highly restrictive": one of these sets, or one script, may mix.
_HAN_SETS = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),  # Japanese
    frozenset({"LATIN", "HAN", "HANGUL"}),  # Korean
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),  # Chinese with zhuyin
)
# The package writes right-to-left characters between left-to-right marks
# (as confusables.txt's comments show them); they are not part of them.
_LRM = "\u200e"


def _unwrapped(text: str) -> str:
    return text.strip(_LRM) if len(text) > 1 else text


@cache
def _prototypes() -> dict[int, str]:
    """Each look-alike character's prototype (itself skeletonised), as a
    ``str.translate`` table."""
    # Imported here: it reads its 0.9 MB of JSON at import (about 40 ms),
    # which the first list pays rather than every start of the app.
    from confusable_homoglyphs import confusables  # noqa: PLC0415

    graph: dict[str, set[str]] = {}
    for key, glyphs in confusables.confusables_data.items():
        node = _unwrapped(key)
        graph.setdefault(node, set()).update(_unwrapped(glyph["c"]) for glyph in glyphs)
    found: dict[str, str] = {}
    for node, linked in graph.items():
        if len(node) != 1:
            continue  # a sequence is always a prototype: sources are one character
        if len(linked) != 1:
            continue  # listing many: a prototype
        (other,) = linked
        # A pair on its own: the longer one, or the one others list too,
        # is the prototype; between two lone characters, either will do
        # as long as both pick the same one.
        if len(other) > 1 or len(graph.get(other, ())) > 1 or other < node:
            found[node] = other
    # Close the map: a prototype's own characters may have prototypes.
    for _ in range(4):
        changed = False
        for node, target in found.items():
            again = "".join(found.get(char, char) for char in target)
            if again != target:
                found[node] = again
                changed = True
        if not changed:
            break
    return {ord(char): target for char, target in found.items()}


@cache
def _script(char: str) -> str:
    # Memoised: the package's look-up is a binary search in Python, and the
    # characters of a room's names are few.
    from confusable_homoglyphs import categories  # noqa: PLC0415 - see _prototypes

    return str(categories.aliases_categories(char)[0])


def skeleton(text: str) -> str:
    """UTS #39's skeleton of ``text``: equal for strings that look alike."""
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFD", decomposed.translate(_prototypes()))


def lookalike_key(name: str) -> str:
    """The key under which names that could pass for one another meet.

    Bounded like every name from the wire: a longer string is its own key.
    """
    if len(name) > MAX_NAME_INPUT:
        return name
    if name.isascii():  # the same, without the normal forms that change no ASCII
        table = _prototypes()
        key = name.translate(table).lower().translate(table)
        if key.isascii():
            return key
    return skeleton(name_identity(skeleton(name)))


def scripts(name: str) -> frozenset[str]:
    """The scripts of ``name``'s letters (``LATIN``, ``CYRILLIC``...), digits and
    punctuation not counted."""
    if name.isascii():
        return _LATIN if any(char.isalpha() for char in name) else frozenset()
    return frozenset(map(_script, set(name[:MAX_NAME_INPUT]))) - _ANY_SCRIPT


def mixes_scripts(name: str) -> bool:
    """Whether ``name`` mixes scripts that a name would not (see the module)."""
    return _mixed(scripts(name))


def _mixed(found: frozenset[str]) -> bool:
    return len(found) > 1 and not any(found <= allowed for allowed in _HAN_SETS)


@dataclass(frozen=True, slots=True)
class Mark:
    """Why a name is marked: a few of the present names it looks like and how
    many there are, and the scripts it mixes (empty when it mixes none)."""

    looks_like: tuple[str, ...]
    count: int
    mixed: frozenset[str]

    def explain(self, name: str) -> str:
        """The mark in words, for a tooltip or a notice."""
        said = []
        if self.looks_like:
            others = ", ".join(self.looks_like)
            more = self.count - len(self.looks_like)
            others += f" and {more} more" if more > 0 else ""
            said.append(f"{name} looks like {others}, also here: a different person.")
        if self.mixed:
            mixed = " and ".join(script.title().replace("_", " ") for script in sorted(self.mixed))
            said.append(f"{name} mixes letters of {mixed}.")
        return " ".join(said)


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    mixed: frozenset[str]


SHOWN_LOOKALIKES = 3  # names a mark names; the rest are counted


class LookalikeIndex:
    """The present names, indexed by ``lookalike_key``; the names are those the
    server sent (unique identities), added and removed one at a time, each at
    a cost that does not grow with the room."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._by_key: dict[str, dict[str, None]] = {}  # key -> names, in order of arrival

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self, names: Iterable[str]) -> None:
        """Exactly ``names``, keeping the keys already worked out for those present."""
        old = self._entries
        self._entries = {}
        self._by_key = {}
        for name in names:
            entry = old.get(name) or _entry(name)
            self._entries[name] = entry
            self._by_key.setdefault(entry.key, {})[name] = None

    def add(self, name: str) -> str | None:
        """Add ``name``; returns the one present name that looked like nobody
        until now (its mark changes), if there is one."""
        if name in self._entries:
            return None
        entry = self._entries[name] = _entry(name)
        same = self._by_key.setdefault(entry.key, {})
        same[name] = None
        return next(iter(same)) if len(same) == 2 else None

    def remove(self, name: str) -> str | None:
        """Remove ``name``; returns the one name left that it alone looked like
        (its mark changes), if there is one."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return None
        same = self._by_key[entry.key]
        del same[name]
        if not same:
            del self._by_key[entry.key]
            return None
        return next(iter(same)) if len(same) == 1 else None

    def is_marked(self, name: str) -> bool:
        """Whether ``name`` has a mark (``mark`` says why), at the cost of two look-ups."""
        entry = self._entries.get(name)
        return entry is not None and (bool(entry.mixed) or len(self._by_key[entry.key]) > 1)

    def mark(self, name: str) -> Mark | None:
        """Why ``name`` is marked, or ``None`` when it is not (or not present)."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        same = self._by_key[entry.key]
        if len(same) == 1 and not entry.mixed:
            return None
        shown = tuple(islice((other for other in same if other != name), SHOWN_LOOKALIKES))
        return Mark(shown, len(same) - 1, entry.mixed)


def _entry(name: str) -> _Entry:
    found = scripts(name)
    return _Entry(lookalike_key(name), found if _mixed(found) else frozenset())
