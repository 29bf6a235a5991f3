"""The server's console: an operator at the server's own terminal.

How this works: ``Console.handle`` runs one typed line, a command like
``/kick bob spam``, through the same room methods as the network's
operator frames (``Room.kick``, ``Room.ban``, ...), with ``by`` ``None``:
the console is always an operator, cannot be banned, and is named "the
server" in what people see. The room is thread-safe, and a kick reaches
its target's loop through the target's seat (``IOLoop.call_soon``), so
the console's own thread never touches a connection. ``start_console``
reads standard input on a daemon thread when it is a terminal; a test
feeds lines to ``Console.handle`` or ``Console.run`` instead.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import ClassVar, TextIO

from server.protocol import ProtocolError, name_identity
from server.room import Room
from server.store.bans import Ban, parse_network

HELP = """\
/who                          who is in the room (* marks operators)
/kick NAME [REASON]           remove someone
/ban NAME|ADDRESS[/BITS] [DURATION] [REASON]
                              ban a name, an address or a prefix; DURATION
                              like 90s, 30m, 2h, 7d (default: for ever)
/unban ID                     lift a ban
/bans                         the bans in force
/op NAME, /deop NAME          make someone an operator, or no longer one
/notice TEXT                  a server line to everyone
/fingerprint                  the server's fingerprint, to read out to people
/help                         this list
/quit                         stop the server"""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """``90``, ``90s``, ``30m``, ``2h``, ``7d`` as seconds; ``None`` if it is not one."""
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        return None
    return float(match[1]) * _UNITS[match[2]]


def _looks_like_address(text: str) -> bool:
    try:
        parse_network(text)
    except ValueError:
        return False
    return True


def _describe(ban: Ban) -> str:
    what = " ".join(part for part in (ban.name, ban.address) if part)
    until = "for ever" if ban.expires is None else f"until {time.ctime(ban.expires)}"
    by = ban.by or "the server"
    because = f" ({ban.reason})" if ban.reason else ""
    return f"#{ban.id} {what} {until}, by {by}{because}"


class Console:
    """One console: commands in, one or more lines of answer out (``write``)."""

    def __init__(
        self,
        room: Room,
        write: Callable[[str], None],
        *,
        stop: Callable[[], None] = lambda: None,
        fingerprint: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.room = room
        self._write = write
        self._stop = stop
        self._fingerprint = fingerprint

    def run(self, lines: Iterable[str]) -> None:
        """Handle ``lines`` until they end or one is ``/quit``."""
        for line in lines:
            if not self.handle(line):
                return

    def handle(self, line: str) -> bool:
        """Run one command; ``False`` after ``/quit``."""
        command, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if not command:
            return True
        handler = self._COMMANDS.get(command.lower())
        if handler is None:
            self._write(f"Unknown command {command}; /help lists them.")
            return True
        try:
            return handler(self, rest) is not False
        except ProtocolError as exc:
            self._write(exc.message)
            return True

    # -- commands ------------------------------------------------------------

    def _who(self, _rest: str) -> None:
        users = self.room.users()
        ops = {name_identity(name) for name in self.room.ops()}
        shown = [f"*{name}" if name_identity(name) in ops else name for name in users]
        self._write(f"{len(users)} in the room: {', '.join(shown) or 'nobody'}")

    def _kick(self, rest: str) -> None:
        name, _, reason = rest.partition(" ")
        if not name:
            self._write("Usage: /kick NAME [REASON]")
            return
        target = self.room.kick(name, reason.strip() or None, None)
        self._write(f"Removing {target}.")

    def _ban(self, rest: str) -> None:
        words = rest.split()
        if not words:
            self._write("Usage: /ban NAME|ADDRESS[/BITS] [DURATION] [REASON]")
            return
        target, words = words[0], words[1:]
        duration = parse_duration(words[0]) if words else None
        if duration is not None:
            words = words[1:]
        reason = " ".join(words) or None
        if _looks_like_address(target):
            ban = self.room.ban(address=target, duration=duration, reason=reason)
        else:
            ban = self.room.ban(name=target, duration=duration, reason=reason)
        self._write(f"Banned: {_describe(ban)}")

    def _unban(self, rest: str) -> None:
        try:
            ban_id = int(rest.lstrip("#"))
        except ValueError:
            self._write("Usage: /unban ID (see /bans)")
            return
        ban = self.room.unban(ban_id)
        self._write(f"No ban #{ban_id}." if ban is None else f"Lifted: {_describe(ban)}")

    def _bans(self, _rest: str) -> None:
        bans = self.room.bans.in_force()
        self._write("\n".join(_describe(ban) for ban in bans) if bans else "No bans.")

    def _set_op(self, rest: str, op: bool) -> None:
        if not rest:
            self._write(f"Usage: /{'op' if op else 'deop'} NAME")
            return
        name = self.room.set_op(rest, op, None)
        if name is None:
            self._write(f"Nobody called {rest} is in the room.")
        else:
            self._write(f"{name} is {'now' if op else 'no longer'} an operator.")

    def _op(self, rest: str) -> None:
        self._set_op(rest, True)

    def _deop(self, rest: str) -> None:
        self._set_op(rest, False)

    def _notice(self, rest: str) -> None:
        self.room.notice(rest, None)

    def _show_fingerprint(self, _rest: str) -> None:
        fp = self._fingerprint()
        self._write(fp if fp is not None else "This server has no TLS identity.")

    def _help(self, _rest: str) -> None:
        self._write(HELP)

    def _quit(self, _rest: str) -> bool:
        self._write("Stopping the server.")
        self._stop()
        return False

    _COMMANDS: ClassVar[dict[str, Callable[[Console, str], bool | None]]] = {
        "/who": _who,
        "/kick": _kick,
        "/ban": _ban,
        "/unban": _unban,
        "/bans": _bans,
        "/op": _op,
        "/deop": _deop,
        "/notice": _notice,
        "/fingerprint": _show_fingerprint,
        "/help": _help,
        "/quit": _quit,
    }


def start_console(console: Console, stdin: TextIO = sys.stdin) -> threading.Thread | None:
    """Read commands from ``stdin`` on a daemon thread, if it is a terminal.

    A daemon: a thread blocked reading a terminal cannot be stopped, and
    the server must be able to exit while it waits.
    """
    if not stdin.isatty():
        return None
    thread = threading.Thread(target=console.run, args=(stdin,), name="console", daemon=True)
    thread.start()
    return thread
