"""What a line typed in the input box means: a message or a command.

Pure functions of the text, so every rule is testable without a window.
"""

from __future__ import annotations

from dataclasses import dataclass

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
Start a message with // to send a line that begins with /.
Enter sends; Shift+Enter starts a new line; Up recalls what you sent."""


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


Command = SendText | ChangeName | ListUsers | ShowHelp | Quit | Hint


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
    return Hint(f"There is no command /{word}. Type /help to see the commands.")
