"""What a line typed in the input box means: a message or a command.

Pure functions of the text, so every rule is testable without a window.
The operator commands (PROTOCOL.md, "Operators and moderation") become
typed commands here; the app turns each into its frame. The protocol has
no frame to stop being an operator, so there is no /deop.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from server.protocol import Ban, Bans, Kick, Message, Op, Unban, Whois, clean_text
from server.protocol import SendNotice as NoticeFrame

# Command and meaning are split by a tab: the view lines the meanings up
# in a column (spaces cannot, in a proportional font).
HELP = """\
Commands:
  /me ACTION\tshow an action: /me waves
  /msg NAME TEXT\ta private message to NAME (or double-click a name)
  /nick NAME\tchange your name
  /who\tlist who is online
  /help\tthis help
  /quit or quit\tleave the room and close the app
Operators (the server tells you if you are not one):
  /op PASSWORD\tbecome an operator (the line is not kept for Up)
  /kick NAME [REASON]\tremove someone from the room
  /ban WHO [TIME] [REASON]\tkeep a name or an address (192.168.1.7, 192.168.1.0/24) \
out for TIME (90s, 30m, 2h, 7d; none: for ever)
  /unban ID\tlift the ban numbered ID (see /bans)
  /bans\tlist the bans
  /whois NAME\twhere NAME is connected from, since when
  /notice TEXT\ta server notice to everyone
Start a message with // to send a line that begins with /.
Enter sends; Shift+Enter starts a new line; Up recalls what you sent."""

# The units /ban's TIME may end with, in seconds; a bare number is seconds.
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,9})([smhdw]?)", re.IGNORECASE)
# Commands whose line holds a secret: never kept for Up to recall.
SECRET_COMMANDS = frozenset({"op"})


@dataclass(frozen=True, slots=True)
class SendText:
    """A message for the room, an action (/me), or a private message (``to``)."""

    text: str
    action: bool = False
    to: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeName:
    name: str


@dataclass(frozen=True, slots=True)
class ListUsers:
    pass


@dataclass(frozen=True, slots=True)
class ShowHelp:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Hint:
    """Nothing to send: tell the user ``message`` (a typo, a missing argument)."""

    message: str


@dataclass(frozen=True, slots=True)
class BecomeOperator:
    password: str

    def __repr__(self) -> str:  # never the password, in a log line or a traceback
        return "BecomeOperator(password=...)"


@dataclass(frozen=True, slots=True)
class KickUser:
    name: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BanUser:
    """A ban of a name identity or of an ``address`` (or prefix), for
    ``duration`` seconds (``None``: for ever)."""

    name: str | None = None
    address: str | None = None
    duration: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LiftBan:
    id: int


@dataclass(frozen=True, slots=True)
class ListBans:
    pass


@dataclass(frozen=True, slots=True)
class AskWhois:
    name: str


@dataclass(frozen=True, slots=True)
class SendNotice:
    """A server notice to everyone (operators only)."""

    text: str


Command = (
    SendText
    | ChangeName
    | ListUsers
    | ShowHelp
    | Quit
    | Hint
    | BecomeOperator
    | KickUser
    | BanUser
    | LiftBan
    | ListBans
    | AskWhois
    | SendNotice
)


def kept_in_history(line: str) -> bool:
    """Whether Up may recall ``line``: not a line that holds a password."""
    parts = line[1:].split(None, 1) if line.startswith("/") else []
    return not parts or parts[0].lower() not in SECRET_COMMANDS


def parse_duration(word: str) -> int | None:
    """Seconds for ``90s``, ``30m``, ``2h``, ``7d``, ``1w`` or ``3600``; ``None``
    for a word that is no duration (or zero)."""
    match = _DURATION.fullmatch(word)
    if match is None:
        return None
    seconds = int(match.group(1)) * DURATION_UNITS[match.group(2).lower()]
    return seconds or None


def is_address(word: str) -> bool:
    """Whether ``word`` is an IP address or prefix (``192.168.1.0/24``); a name
    that is written like one (names may hold digits and dots) is taken as one."""
    try:
        ipaddress.ip_network(word, strict=False)
    except ValueError:
        return False
    return True


def _operator_command(command: str, rest: str) -> Command | None:
    """The operator commands; ``None`` when ``command`` is none of them."""
    first, _, after = rest.partition(" ")
    after = after.strip()
    if command == "op":
        return BecomeOperator(rest) if rest else Hint("Usage: /op PASSWORD")
    if command == "kick":
        return KickUser(first, after or None) if first else Hint("Usage: /kick NAME [REASON]")
    if command == "ban":
        if not first:
            return Hint("Usage: /ban NAME|ADDRESS [TIME] [REASON], as in /ban bob 2h spam")
        when, _, reason = after.partition(" ")
        duration = parse_duration(when) if when else None
        if duration is None and _DURATION.fullmatch(when):
            return Hint("A ban's TIME is more than 0 (90s, 30m, 2h, 7d), or none for ever.")
        if duration is None:  # no TIME: the rest is the reason, and the ban is for ever
            reason = after
        reason = reason.strip()
        if is_address(first):
            return BanUser(address=first, duration=duration, reason=reason or None)
        return BanUser(name=first, duration=duration, reason=reason or None)
    if command == "unban":
        if not rest.isdecimal() or not rest.isascii() or len(rest) > 18:
            return Hint("Usage: /unban ID, with the number /bans shows")
        return LiftBan(int(rest))
    if command == "bans":
        return ListBans()
    if command == "whois":
        return AskWhois(first) if first else Hint("Usage: /whois NAME")
    if command == "notice":
        return SendNotice(rest) if rest else Hint("Usage: /notice TEXT")
    return None


def private_recipient(line: str) -> str | None:
    """NAME, for a draft that begins ``/msg NAME``: a file sent meanwhile goes to
    NAME alone (double-clicking a name starts such a draft)."""
    parts = line.split(None, 2)
    if len(parts) >= 2 and parts[0].lower() == "/msg":
        return parts[1]
    return None


def parse_input(line: str) -> Command | None:
    """The command for what the user typed; ``None`` for nothing (blank input)."""
    if not line.strip():
        return None
    if line.strip() == "quit":
        return Quit()
    if not line.startswith("/"):
        return SendText(line)
    if line.startswith("//"):
        return SendText(line[1:])
    parts = line[1:].split(None, 1)
    if not parts:
        return Hint("Type a command after the /, or /help to see them.")
    word, *others = parts
    command = word.lower()
    rest = others[0].strip() if others else ""
    if command == "me":
        return SendText(rest, action=True) if rest else Hint("Usage: /me ACTION, as in /me waves")
    if command == "msg":
        name, _, text = rest.partition(" ")
        if not name or not text.strip():
            return Hint("Usage: /msg NAME TEXT")
        return SendText(text.strip(), to=name)
    if command == "nick":
        return ChangeName(rest) if rest else Hint("Usage: /nick NEWNAME")
    if command == "who":
        return ListUsers()
    if command == "help":
        return ShowHelp()
    if command == "quit":
        return Quit()
    operator = _operator_command(command, rest)
    if operator is not None:
        return operator
    return Hint(f"There is no command /{word}. Type /help to see the commands.")


def operator_frame(command: Command) -> Message | None:
    """The frame of PROTOCOL.md's "Operators and moderation" that ``command``
    sends; ``None`` for a command that is none of them. Raises
    ``RuleViolation`` for a notice the server would refuse."""
    match command:
        case BecomeOperator(password=password):
            return Op(password)
        case KickUser(name=name, reason=reason):
            return Kick(name, reason)
        case BanUser(name=name, address=address, duration=duration, reason=reason):
            return Ban(name, address, duration, reason)
        case LiftBan(id=number):
            return Unban(number)
        case ListBans():
            return Bans()
        case AskWhois(name=name):
            return Whois(name)
        case SendNotice(text=text):
            return NoticeFrame(clean_text(text))
    return None
