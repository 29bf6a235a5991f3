"""File names from the network, made safe to show and to save; no Tk here.

How this works: a file's name comes from whoever uploaded it, so it is
never used as it is. ``shown_file_name`` makes it one bounded line, with
every character that could break or reorder the line shown as an escape
(``\\u202e``), so the name people see cannot pass for another.
``safe_file_name`` makes it a single file name that Windows, macOS and
Linux all accept: the last component of any path, without controls,
format or direction characters, without the characters Windows forbids,
no reserved device name (``CON``, ``COM1.txt``: ``_`` goes in front), no
trailing dot or space, at most ``MAX_SAVED_BYTES`` of UTF-8 with its
extension kept. ``unique_path`` finds a name not taken in a folder, and
``human_size`` says a size in SI units (kB = 1,000 bytes), as file
managers on macOS and Linux's GNOME do.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

MAX_SAVED_BYTES = 200  # under every file system's 255, with room for " (12)" and ".part"
MAX_SHOWN = 80  # characters of a name shown on one line
MAX_EXTENSION = 16  # characters after the last dot still counted as an extension
MAX_TRIES = 10_000  # names unique_path tries before giving up

# Categories of the characters no name keeps: controls, format characters
# (the bidi overrides and marks among them), surrogates, line and paragraph
# separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"/\\|?*]')
_SEPARATORS = re.compile(r"[/\\]")
# Device names Windows reserves in any folder, with any extension and any case.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"}
)


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in _HIDDEN


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown_file_name(name: str, limit: int = MAX_SHOWN) -> str:
    """``name`` as one line of at most ``limit`` characters: line breaks,
    controls and direction marks shown as escapes, a long name cut in the
    middle with an ellipsis so that its extension still shows."""
    limit = max(limit, 8)
    if len(name) > 4 * limit:  # bound the work: only the ends can be shown
        name = name[: 2 * limit] + "\u2026" + name[-2 * limit :]
    shown = "".join(_escape(c) if _hidden(c) else c for c in name).strip() or "file"
    if len(shown) <= limit:
        return shown
    _, dot, extension = shown.rpartition(".")
    if not dot or len(extension) > MAX_EXTENSION:
        return shown[: limit - 1] + "\u2026"
    tail = "." + extension
    return shown[: limit - 1 - len(tail)] + "\u2026" + tail


def _reserved(name: str) -> bool:
    """Whether Windows takes ``name`` for a device (it ignores what follows the
    first dot, and spaces before it)."""
    return name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED


def _trimmed(name: str) -> str:
    """No dots or spaces at either end: Windows drops them at the end, and a
    leading dot hides the file on macOS and Linux."""
    return name.strip(" .")


def _fitted(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` bytes of UTF-8, from the end of its stem."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    tail = dot + extension
    if not dot or not stem or len(extension) > MAX_EXTENSION:
        stem, tail = name, ""
    cut = _trimmed(_cut(stem, limit - len(tail.encode("utf-8"))))
    return cut + tail if cut else _trimmed(_cut(name, limit))


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character's edge."""
    return text.encode("utf-8")[: max(limit, 0)].decode("utf-8", "ignore")


def safe_file_name(name: str) -> str:
    """A file name for saving what was sent as ``name`` (see the module docstring)."""
    name = name[-16 * MAX_SAVED_BYTES :]  # bound the work; the end holds the name and extension
    parts = [p for p in _SEPARATORS.split(name) if _trimmed(p)]
    name = parts[-1] if parts else ""
    # Composed after the removals, which may bring a letter and its accent together.
    name = unicodedata.normalize("NFC", "".join(c for c in name if not _hidden(c)))
    name = _WINDOWS_FORBIDDEN.sub("_", name)
    name = _fitted(_trimmed(name), MAX_SAVED_BYTES) or "file"
    if _reserved(name):
        name = _fitted("_" + name, MAX_SAVED_BYTES)
    return name


def human_size(size: int) -> str:
    """``size`` bytes for people, in SI units: "512 bytes", "183 kB", "1.4 MB"."""
    size = max(size, 0)
    if size < 1000:
        return "1 byte" if size == 1 else f"{size} bytes"
    value, units = size / 1000, ["kB", "MB", "GB", "TB", "PB"]
    # Rounded first: 999,999 bytes is "1.0 MB", never "1000 kB".
    while round(value) >= 1000 and len(units) > 1:
        value /= 1000
        units.pop(0)
    shown = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
    return f"{shown} {units[0]}"


def unique_path(folder: Path, name: str) -> Path:
    """``folder / name``, or ``name (1).ext``, ``(2)`` ... when that is taken.

    Raises ``FileExistsError`` after ``MAX_TRIES`` names."""
    candidate = folder / name
    if not candidate.exists():
        return candidate
    stem, suffix = candidate.stem, candidate.suffix
    for number in range(1, MAX_TRIES):
        candidate = folder / f"{stem} ({number}){suffix}"
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"{name} and {MAX_TRIES} names like it are taken in {folder}.")
