"""How things read in the transcript: times, reasons, links, characters Tk can show."""

from __future__ import annotations

import re
import time
import tkinter

from server.protocol import LeaveReason

LEAVE_REASONS = {
    LeaveReason.QUIT: "left",
    LeaveReason.DISCONNECTED: "lost their connection",
    LeaveReason.TIMEOUT: "timed out",
    LeaveReason.TOO_SLOW: "was disconnected (not keeping up)",
    LeaveReason.ERROR: "was disconnected (a client error)",
    LeaveReason.KICKED: "was removed by the server",
}

_SCHEME = re.compile(r"https?://", re.IGNORECASE)
_LINK = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]}]", re.IGNORECASE)
# Tk before 8.6.10 cannot show characters beyond U+FFFF (most emoji).
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def tk_shows_astral(widget: tkinter.Misc) -> bool:
    """Whether this Tk can show characters beyond U+FFFF (8.6.10 and later)."""
    level = str(widget.tk.call("info", "patchlevel"))
    return tuple(int(part) for part in re.findall(r"\d+", level)[:3]) >= (8, 6, 10)


def left_words(name: str, reason: str) -> str:
    """``bob left``, ``bob timed out``... for a ``left`` frame's reason."""
    return f"{name} {LEAVE_REASONS.get(reason, f'left ({reason})')}"


def clock(ts: float) -> str:
    """The local time of a server timestamp, as HH:MM."""
    return time.strftime("%H:%M", time.localtime(ts))


# What else reads as a line break: each shows as a new, indented line.
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")


def one_kind_of_newline(text: str) -> str:
    """``text`` with every kind of line break as ``\\n`` (the view indents after each)."""
    return _LINE_BREAKS.sub("\n", text)


def split_links(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (piece, is_link) runs, in order."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in _LINK.finditer(text):
        if match.start() > position:
            pieces.append((text[position : match.start()], False))
        pieces.append((match.group(), True))
        position = match.end()
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces


def link_target(link: str) -> str:
    """The address to open for a link as written (``www.`` links get ``http://``)."""
    return link if _SCHEME.match(link) else f"http://{link}"


def displayable(text: str, *, astral_ok: bool) -> str:
    """``text`` as this Tk can show it: on old Tk, characters beyond U+FFFF become U+FFFD."""
    return text if astral_ok else _ASTRAL.sub("\N{REPLACEMENT CHARACTER}", text)


def mentions(text: str, name: str | None) -> bool:
    """Whether ``text`` names ``name`` as a word, ignoring case.

    Names may hold ``-`` and ``.``, so ``bob-2`` and ``bob.smith`` are
    someone else, while ``bob.`` at the end of a sentence is bob.
    """
    if not name:
        return False
    pattern = rf"(?<![\w-])(?<!\w\.){re.escape(name)}(?![\w-]|\.\w)"
    return re.search(pattern, text, re.IGNORECASE) is not None
