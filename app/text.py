"""How things read in the transcript: times, reasons, links, characters Tk can show."""

from __future__ import annotations

import colorsys
import datetime
import re
import time
import tkinter
import zlib

from server.protocol import (
    LONE_SURROGATE,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    TEXT_REMOVED,
    BanEntry,
    Error,
    ErrorCode,
    LeaveReason,
    WhoisResult,
    name_identity,
)

LEAVE_REASONS: dict[str, str] = {
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


def left_words(name: str, reason: str, by: str | None = None, message: str | None = None) -> str:
    """``bob left``, ``bob timed out``... for a ``left`` frame's reason; a kick
    says by whom (``by``, absent for the server's console) and why (``message``)."""
    if reason == LeaveReason.KICKED:
        if message:  # the server's words for people, naming who and why
            said = shown(message, 300)
            return said if name in said else f"{name} was removed: {said}"
        who = f"by {shown(by, MAX_NAME_LENGTH)}" if by else "by the server"
        return f"{name} was removed {who}"
    return f"{name} {LEAVE_REASONS.get(reason, f'left ({reason})')}"


# The operators extension's frames reach the view as the server sent them
# (the network layer makes only the core frames safe), so what they show
# passes through ``shown`` here: nothing that breaks, hides or reorders a line.
_ONE_LINE = str.maketrans("\n\t\u2028\u2029", "    ")
BANS_SHOWN = 50  # bans a ban-list shows; the rest are counted


def shown(text: str, limit: int = MAX_TEXT_LENGTH, *, one_line: bool = True) -> str:
    """``text`` from the server as a line may show it: without controls or
    direction overrides, lone surrogates as U+FFFD, cut to ``limit``."""
    text = LONE_SURROGATE.sub("\ufffd", text[: limit + 1].translate(TEXT_REMOVED))
    if one_line:
        text = text.translate(_ONE_LINE)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def when(ts: float, now: float | None = None) -> str:
    """A moment for a ban or a whois: ``14:05`` today, else its date too."""
    if datetime.date.fromtimestamp(ts) == datetime.date.fromtimestamp(now or time.time()):
        return clock(ts)
    return time.strftime("%d %b %Y %H:%M", time.localtime(ts))


def _safe_time(ts: float) -> float:
    return min(max(ts, 0.0), 253402300799.0)  # within what localtime can show: year 9999


def ban_list_lines(bans: tuple[BanEntry, ...]) -> list[str]:
    """A ``ban-list`` as lines for people, the first ``BANS_SHOWN`` of them."""
    if not bans:
        return ["No bans."]
    lines = [f"Bans ({len(bans):,}); /unban ID lifts one:"]
    for ban in bans[:BANS_SHOWN]:
        target = " and ".join(
            shown(part, MAX_NAME_LENGTH * 4) for part in (ban.name, ban.address) if part
        )
        until = f"until {when(_safe_time(ban.expires))}" if ban.expires is not None else "for ever"
        by = f" by {shown(ban.by, MAX_NAME_LENGTH)}" if ban.by else " by the server"
        reason = f": {shown(ban.reason, 200)}" if ban.reason else ""
        lines.append(f"#{ban.id}  {target or '?'}, {until}{by}{reason}")
    if len(bans) > BANS_SHOWN:
        lines.append(f"… and {len(bans) - BANS_SHOWN:,} more.")
    return lines


def whois_words(result: WhoisResult) -> str:
    """A ``whois-result`` for people."""
    how = "encrypted" if result.secure else "not encrypted"
    op = ", an operator" if result.op else ""
    return (
        f"{shown(result.name, MAX_NAME_LENGTH)}{op}: connected from "
        f"{shown(result.address, 64)} since {when(_safe_time(result.since))} ({how})"
    )


def removed_words(error: Error) -> str:
    """The ``kicked`` or ``banned`` error that ends our connection, in clear words."""
    said = shown(error.message, 300)
    if error.code == ErrorCode.BANNED:
        until = error.until
        end = f" until {when(_safe_time(until))}" if until is not None else ""
        reason = shown(error.reason, 200) if error.reason else ""
        why = f" (reason: {reason})" if reason and reason not in said else ""
        return f"You are banned from this server{end}: {said}{why}"
    return f"You were removed from the room: {said}"


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


def day_label(ts: float, now: float | None = None) -> str:
    """The day of a server timestamp, for a separator: Today, Yesterday or a date."""
    day = datetime.date.fromtimestamp(ts)
    today = datetime.date.fromtimestamp(time.time() if now is None else now)
    if day == today:
        return "Today"
    if day == today - datetime.timedelta(days=1):
        return "Yesterday"
    return f"{day.strftime('%A')}, {day.day} {day.strftime('%B %Y')}"


# People's names get one of these hues, spread around the colour wheel; a
# fixed few, so a room of thousands makes a dozen text tags, not thousands.
NAME_HUES = (0, 25, 45, 95, 140, 165, 190, 210, 235, 265, 290, 325)
MIN_CONTRAST = 4.5  # WCAG AA for body text


def name_slot(name: str) -> int:
    """Which of ``NAME_HUES`` a name gets: stable across runs, the same for Bob and bob."""
    return zlib.crc32(name_identity(name).encode()) % len(NAME_HUES)


def _rgb(color: str) -> tuple[float, float, float]:
    value = color.lstrip("#")
    if len(value) == 3:
        value = "".join(char * 2 for char in value)
    red, green, blue = (int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return red, green, blue


def relative_luminance(color: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb`` (0 black, 1 white)."""

    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(channel) for channel in _rgb(color))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two colours, from 1 (same) to 21 (black on white)."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)))[::-1]
    return (lighter + 0.05) / (darker + 0.05)


def name_color(slot: int, background: str) -> str:
    """The colour of names in ``slot`` on ``background`` (see ``readable``)."""
    red, green, blue = colorsys.hls_to_rgb(NAME_HUES[slot] / 360, 0.5, 0.7)
    return readable(_hex(red, green, blue), background)


def readable(color: str, background: str) -> str:
    """``color``, made darker on a light background or lighter on a dark one
    until it reads at ``MIN_CONTRAST`` (its hue kept). Black or white, the
    ends of that walk, always do on a theme's background."""
    on_dark = relative_luminance(background) < 0.18
    hue, lightness, saturation = colorsys.rgb_to_hls(*_rgb(color))
    step = 0.02 if on_dark else -0.02
    for _ in range(60):  # lightness walks to 0 or 1 at most
        candidate = _hex(*colorsys.hls_to_rgb(hue, lightness, saturation))
        if contrast_ratio(candidate, background) >= MIN_CONTRAST:
            return candidate
        lightness = min(1.0, max(0.0, lightness + step))
    return "#ffffff" if on_dark else "#000000"


def _hex(red: float, green: float, blue: float) -> str:
    return "#" + "".join(f"{round(channel * 255):02x}" for channel in (red, green, blue))
