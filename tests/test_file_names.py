"""Tests of ``app.file_names``: hostile names from the network, shown and saved safely."""

from __future__ import annotations

import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.file_names import (
    MAX_SAVED_BYTES,
    MAX_SHOWN,
    human_size,
    safe_file_name,
    shown_file_name,
    unique_path,
)

RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"
}
WINDOWS_FORBIDDEN = set('<>:"/\\|?*')


def assert_valid_everywhere(name: str) -> None:
    """One file name that Windows, macOS and Linux all take as it is."""
    assert name
    assert len(name.encode("utf-8")) <= MAX_SAVED_BYTES, name
    assert name not in (".", "..")
    assert not WINDOWS_FORBIDDEN & set(name), name
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name), name
    assert not name.endswith((".", " ")), name
    assert not name.startswith((".", " ")), name
    assert name.split(".", 1)[0].rstrip(" ").upper() not in RESERVED, name
    assert PurePosixPath(name).name == name
    assert PureWindowsPath(name).name == name
    assert unicodedata.normalize("NFC", name) == name


@pytest.mark.parametrize(
    ("sent", "saved"),
    [
        ("../../x", "x"),
        ("..\\..\\x", "x"),
        ("/etc/passwd", "passwd"),
        ("C:\\Windows\\win.ini", "win.ini"),
        ("x/..", "x"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("Aux.tar.gz", "_Aux.tar.gz"),
        ("COM1", "_COM1"),
        ("lpt9.doc", "_lpt9.doc"),
        ("COM\u00b9.txt", "_COM\u00b9.txt"),
        ("NUL .txt", "_NUL .txt"),
        ("CONSOLE.txt", "CONSOLE.txt"),
        ("COM10", "COM10"),
        ("report.", "report"),
        ("report. . ", "report"),
        ("  spaced  ", "spaced"),
        (".bashrc", "bashrc"),
        ("...", "file"),
        ("", "file"),
        ("\n\r\t", "file"),
        ("cat\npicture.jpg", "catpicture.jpg"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        ("a\u200fb\u2066c\u2069.txt", "abc.txt"),
        ('what?<is>:this"|*.txt', "what__is__this___.txt"),
        ("caf\u0065\u0301.png", "caf\u00e9.png"),
        ("caf\u0065\u200b\u0301.png", "caf\u00e9.png"),
        ("ok name (1).tar.gz", "ok name (1).tar.gz"),
    ],
)
def test_hostile_names_are_saved_safely(sent: str, saved: str) -> None:
    assert safe_file_name(sent) == saved
    assert_valid_everywhere(safe_file_name(sent))


def test_a_long_name_is_cut_to_200_bytes_keeping_its_extension() -> None:
    for char in ("x", "\u00e9", "\u4e2d", "\U0001f600"):
        name = safe_file_name(char * 10_000 + ".pdf")
        assert name.endswith(".pdf"), name
        assert len(name.encode("utf-8")) <= MAX_SAVED_BYTES
        assert len(name.encode("utf-8")) > MAX_SAVED_BYTES - 8  # cut, not emptied
        assert set(name[:-4]) == {char}
        assert_valid_everywhere(name)


def test_a_long_extension_is_cut_like_the_rest() -> None:
    name = safe_file_name("a." + "b" * 1000)
    assert len(name.encode("utf-8")) <= MAX_SAVED_BYTES
    assert name.startswith("a.b")


def test_a_reserved_name_long_enough_to_be_cut_stays_under_the_bound() -> None:
    name = safe_file_name("CON." + "x" * 500)
    assert name.startswith("_CON.")
    assert_valid_everywhere(name)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=600))
def test_any_name_gives_one_file_name_valid_everywhere(sent: str) -> None:
    assert_valid_everywhere(safe_file_name(sent))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("./\\ :CONULPTM1.txt\u202e\n"), max_size=40))
def test_names_made_of_dangerous_pieces_are_valid_everywhere(sent: str) -> None:
    assert_valid_everywhere(safe_file_name(sent))


def test_a_saved_name_never_leaves_its_folder(tmp_path: Path) -> None:
    for sent in ("../../x", "..", "/", "\\..\\..\\boot.ini", "a/../../b"):
        path = (tmp_path / safe_file_name(sent)).resolve()
        assert path.parent == tmp_path.resolve(), sent


# -- shown_file_name --------------------------------------------------------------


def test_a_shown_name_is_one_line_with_controls_and_bidi_as_escapes() -> None:
    shown = shown_file_name("evil\u202egpj.exe")
    assert shown == "evil\\u202egpj.exe"
    assert shown_file_name("two\nlines.txt") == "two\\u000alines.txt"
    assert shown_file_name("a\u2028b") == "a\\u2028b"
    assert shown_file_name("\ud800x") == "\\ud800x"  # a lone surrogate Tk cannot draw
    assert shown_file_name("") == "file"


def test_a_shown_name_is_bounded_and_keeps_its_extension() -> None:
    shown = shown_file_name("x" * 10_000 + ".pdf")
    assert len(shown) == MAX_SHOWN
    assert shown.endswith("\u2026.pdf")
    no_extension = shown_file_name("y" * 10_000)
    assert len(no_extension) == MAX_SHOWN
    assert no_extension.endswith("\u2026")


def test_a_shown_name_of_escapes_only_is_bounded() -> None:
    shown = shown_file_name("\u202e" * 100_000)
    assert len(shown) <= MAX_SHOWN
    assert "\u202e" not in shown


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_shown_name_is_one_bounded_line(sent: str) -> None:
    shown = shown_file_name(sent)
    assert 0 < len(shown) <= MAX_SHOWN
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in shown)


def test_an_ordinary_name_is_shown_as_it_is() -> None:
    assert shown_file_name("cat picture (2).jpg") == "cat picture (2).jpg"
    assert shown_file_name("\u732b.png") == "\u732b.png"


# -- human_size and unique_path -------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (-5, "0 bytes"),
        (0, "0 bytes"),
        (1, "1 byte"),
        (999, "999 bytes"),
        (1000, "1.0 kB"),
        (1499, "1.5 kB"),
        (9_949, "9.9 kB"),
        (9_960, "10 kB"),
        (183_201, "183 kB"),
        (999_499, "999 kB"),
        (999_999, "1.0 MB"),
        (1_400_000, "1.4 MB"),
        (104_857_600, "105 MB"),
        (3 * 10**9, "3.0 GB"),
        (10**18, "1000 PB"),
    ],
)
def test_human_size_in_si_units(size: int, shown: str) -> None:
    assert human_size(size) == shown


def test_unique_path_numbers_a_taken_name(tmp_path: Path) -> None:
    assert unique_path(tmp_path, "cat.jpg") == tmp_path / "cat.jpg"
    (tmp_path / "cat.jpg").write_bytes(b"1")
    assert unique_path(tmp_path, "cat.jpg") == tmp_path / "cat (1).jpg"
    (tmp_path / "cat (1).jpg").write_bytes(b"2")
    assert unique_path(tmp_path, "cat.jpg") == tmp_path / "cat (2).jpg"
    (tmp_path / "README").write_bytes(b"3")
    assert unique_path(tmp_path, "README") == tmp_path / "README (1)"
