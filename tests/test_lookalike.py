"""Look-alike names (app/lookalike.py), without a display: the keys under which
names that could pass for one another meet, scripts that a name mixes, and the
index the online list keeps, whose every change costs the same in any room."""

from __future__ import annotations

import pytest

from app import lookalike
from app.lookalike import LookalikeIndex, lookalike_key, mixes_scripts, scripts, skeleton
from server.protocol import MAX_NAME_INPUT, name_identity

CYRILLIC_A = "\u0430"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (f"{CYRILLIC_A}lice", "alice"),  # Cyrillic small a
        ("AIice", "alice"),  # capital i for small L
        ("Alice", f"{CYRILLIC_A}lice"),  # case, which the identity rule ignores
        ("rnary", "mary"),  # a sequence: m looks like rn
        ("0scar", "Oscar"),  # digit zero
        ("\u13aalice", "Alice"),  # Cherokee A
        ("\u0251lice", "alice"),  # Latin alpha
        ("\u2160van", "lvan"),  # Roman numeral one
        ("\u0399van", "lvan"),  # Greek capital iota
        ("b\u043eb", "bob"),  # Cyrillic small o
        ("\u05c0ena", "lena"),  # Hebrew paseq, written between marks in the data
    ],
)
def test_names_that_look_alike_share_a_key(one: str, other: str) -> None:
    assert name_identity(one) != name_identity(other)  # two names by the protocol's rule
    assert lookalike_key(one) == lookalike_key(other)


@pytest.mark.parametrize(
    ("one", "other"), [("alice", "bob"), ("alice", "alicia"), ("ana", "anna"), ("vv", "v")]
)
def test_names_that_look_different_do_not(one: str, other: str) -> None:
    assert lookalike_key(one) != lookalike_key(other)


def test_the_prototypes_come_from_unicodes_data_not_a_hand_made_table() -> None:
    table = lookalike._prototypes()
    assert len(table) > 5000  # confusables.txt pairs thousands of characters
    assert skeleton("\U0001d41a") == "a"  # mathematical bold a
    assert skeleton(CYRILLIC_A) == "a"
    assert all("\u200e" not in target for target in table.values())


def test_the_ascii_shortcut_agrees_with_the_full_key() -> None:
    for code in range(128):
        for name in (chr(code), f"a{chr(code)}B", chr(code) * 2):
            full = skeleton(name_identity(skeleton(name)))
            assert lookalike_key(name) == full, repr(name)
            assert scripts(name) == frozenset(map(lookalike._script, name)) - {
                "COMMON",
                "INHERITED",
            }


def test_a_string_longer_than_any_name_is_its_own_key() -> None:
    long = "a" + "\u0301" * MAX_NAME_INPUT  # would cost quadratic time to normalise
    assert lookalike_key(long) == long


@pytest.mark.parametrize(
    ("name", "mixed"),
    [
        ("alice", False),
        ("\u041f\u0451\u0442\u0440", False),  # Пётр: Cyrillic alone
        ("\u03a9\u03bc\u03ad\u03b3\u03b1", False),  # Greek alone
        ("\u5c71\u7530\u305f\u308d\u3046", False),  # Han with Hiragana: Japanese
        ("\uae40\ucca0\uc218Han", False),  # Hangul with Latin: Korean
        ("bob_2.x", False),  # digits and punctuation belong to every script
        (f"p{CYRILLIC_A}ypal", True),
        ("\u03a9mega", True),  # Greek with Latin
        ("\u0430\u03b1", True),  # Cyrillic with Greek
    ],
)
def test_names_mixing_scripts_a_name_would_not_are_flagged(name: str, mixed: bool) -> None:
    assert mixes_scripts(name) is mixed


def test_the_index_marks_both_look_alikes_and_unmarks_them_when_one_leaves() -> None:
    index = LookalikeIndex()
    index.reset(["alice", "bob"])
    assert index.mark("alice") is None
    impostor = f"{CYRILLIC_A}lice"
    assert index.add(impostor) == "alice"  # alice's mark changes
    mark = index.mark(impostor)
    assert mark is not None
    assert mark.looks_like == ("alice",)
    assert mark.mixed == {"CYRILLIC", "LATIN"}
    assert "looks like alice" in mark.explain(impostor)
    assert "Cyrillic and Latin" in mark.explain(impostor)
    alice = index.mark("alice")
    assert alice is not None and alice.looks_like == (impostor,) and not alice.mixed
    assert index.remove(impostor) == "alice"
    assert index.mark("alice") is None
    assert index.mark(impostor) is None  # gone


def test_a_name_mixing_scripts_is_marked_alone() -> None:
    index = LookalikeIndex()
    index.reset([f"p{CYRILLIC_A}ypal"])
    mark = index.mark(f"p{CYRILLIC_A}ypal")
    assert mark is not None and mark.looks_like == () and mark.count == 0


def test_a_change_redraws_at_most_one_other_name_however_many_look_alike() -> None:
    """500 names of one key (l, I and 1 share a prototype): a join names one
    other row at most (the first, when it stops being alone), and so does a
    leave, so a flood of look-alikes costs the same per change as any name."""
    names = ["".join("lI1"[(n // 3**place) % 3] for place in range(9)) for n in range(500)]
    assert len({lookalike_key(name) for name in names}) == 1
    index = LookalikeIndex()
    returned = [index.add(name) for name in names]
    assert returned == [None, names[0], *[None] * 498]
    mark = index.mark(names[0])
    assert mark is not None and mark.count == 499 and len(mark.looks_like) == 3
    left = [index.remove(name) for name in names[:-1]]
    assert left == [*[None] * 498, names[-1]]  # the last one is alone again
    assert index.mark(names[-1]) is None


def test_many_look_alikes_are_counted_not_all_named() -> None:
    index = LookalikeIndex()
    names = ["lee", "Iee", "1ee", "l" + "e" + "\u0435", "\u04c0ee"]  # Cyrillic ie, palochka
    index.reset(names)
    mark = index.mark("lee")
    assert mark is not None
    assert mark.count == len(names) - 1
    assert len(mark.looks_like) == lookalike.SHOWN_LOOKALIKES
    assert f"and {mark.count - lookalike.SHOWN_LOOKALIKES} more" in mark.explain("lee")


def test_reset_keeps_the_keys_of_those_still_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """A /who reply or a reconnect's welcome lists the room again: only names
    not seen before are worked out."""
    index = LookalikeIndex()
    index.reset(["alice", "bob"])
    worked: list[str] = []
    real = lookalike._entry
    monkeypatch.setattr(lookalike, "_entry", lambda name: (worked.append(name), real(name))[1])
    index.reset(["alice", "bob", "carol"])
    assert worked == ["carol"]
    index.reset(["carol"])
    assert len(index) == 1 and index.mark("carol") is None
