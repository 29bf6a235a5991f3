"""The client's connection to the server, on a thread of its own; no Tk here.

How this works: ``ChatClient`` runs one thread that connects, says hello,
reads frames, writes what the user asked for, keeps the connection alive
and, once it has been welcomed, reconnects with exponential backoff when
the connection drops, claiming the same name again. Everything waits in
one selector that also watches a wake-up socket, so ``close`` and
``reconnect_now`` take effect at once, even in the middle of a
connect or a backoff pause. Once connected, it reads and writes only
through a ``Transport`` (``server.protocol.transport``; plain TCP unless
``transport_factory`` makes another), and each direction waits for what
the transport last asked for: TLS may read only once it could write, or
write once it has read, and bytes it holds already are read without
waiting, as no selector reports them.

Every connection is TLS (``transport_factory``) unless the person agreed
to plaintext with that address before (``known``, the trusted servers).
The handshake runs to its end before anything is sent, and the server's
certificate decides: a fingerprint already trusted goes on (at a new
address too: addresses are only hints), one an invite's code names is
pinned and goes on, an unknown one is a ``TrustNeeded`` question, and a
known address with another identity (or no encryption any more) is an
``IdentityChanged`` hard stop, after which nothing reconnects. A server
that answers the ClientHello in plaintext (its first byte 0x00, read
before the TLS layer may take it: ``_FirstByte``) with ``tls-unavailable``
or ``bad-frame``, or closes, is a ``PlaintextNeeded`` question. The person
answers through ``trust``; each answer ends the connection it was asked
on (a server gives up on a silent one in 10 seconds) and the next one, at
once, applies it. A plaintext welcome with ``tls_available`` (or a
``tls-required``) ends the plaintext agreement and tries TLS.

A room password (``password``, and whatever the person gives later) goes
in every hello, so reconnecting needs no question. A ``password-required``
or ``password-wrong`` is a ``PasswordNeeded`` question, answered through
``give_password``: the next hello goes on the same connection while the
server still waits for one (it gives up 10 seconds after the connection
opened, and closes after the third wrong password), on a fresh one
otherwise; no answer or Cancel ends the attempt for good.

The UI talks to it with plain method calls (any thread) and hears back
through ``events``, an ``EventQueue`` of the small frozen dataclasses
below, which the Tk thread drains with ``after()``. Nothing here touches
a widget, so tests drive it without a display.

Nothing the user typed is lost: every ``say`` stays pending until the
server's echo confirms it, every ``rename`` until the server answers it
(``renamed`` from our name, or an error); a say the server refused
(rate-limited, text invalid), and a say or rename the connection dropped
before it was answered, comes back in an ``Unsent`` event for the UI to
put back in front of the user. A ``users`` list that answers our ``who``
is marked ``asked``: the server may send lists nobody asked for, and the
UI must not show each of them to the user.

The server is not trusted. Everything this side holds for it is bounded:
the events waiting for the UI (``EVENT_LIMIT``, and ``EVENT_NAMES`` for
the names in user lists: when the UI falls behind, the thread stops
reading the socket rather than drop anything; a second ``welcome`` on one
connection breaks the protocol and drops it), the bytes
waiting to be sent (``MAX_OUTGOING``: a server that never reads is
dropped), the pongs (only those that fit a client frame). Every field the
UI will show is made safe here (``_made_safe``): times it can convert,
text and names Tk can draw, that cannot break or fake a line. A
``history-page`` or ``search-results`` reaches the UI only when it answers
a request still open on this connection (by its ``before`` or ``query``):
one that breaks the protocol's rules (more than ``MAX_PAGE`` messages, a
private one, ids out of order, repeated, or not below ``before``) is
handed over refused and empty, so the UI stops asking without a word. Liveness
counts whole frames, so a server that dribbles bytes is found dead; and a
connection counts as healthy, resetting the backoff, only once it has
lasted ``HEALTHY_AFTER``. While the server is plainly restarting (it said
``shutdown``, or refuses connections), retries come every ``FAST_RETRY``
seconds at most for the first ``FAST_FOR`` seconds of the outage.

Files go through the same connection (``upload``, ``download``, ``cancel``):
``app.transfers`` keeps their state and checks every answer; this thread
runs it, sends its upload data only behind every chat frame queued, and
fails every transfer when the connection is lost. A message's file is made
safe like the rest (``_safe_file``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import selectors
import socket
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from queue import Queue
from typing import Any, cast

from app.file_names import shown_file_name
from app.transfers import (
    DATA_AHEAD,
    FILE_FRAMES,
    LOST,
    TransferDone,
    TransferFailed,
    TransferProgress,
    Transfers,
    TransferStarted,
    file_id_fits,
)
from app.trust import KnownServers, Pin
from app.trust import address as address_of
from server.protocol import (
    DEFAULT_MIME,
    LONE_SURROGATE,
    MAX_CLIENT_FRAME,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_SERVER_FRAME,
    MAX_TEXT_LENGTH,
    NAME_PUNCTUATION,
    NO_RECONNECT_ERRORS,
    SERVER_MESSAGES,
    TEXT_REMOVED,
    Bye,
    ChatMessage,
    Error,
    ErrorCode,
    FileData,
    FileInfo,
    FrameDecoder,
    Hello,
    History,
    HistoryPage,
    Joined,
    Left,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    ProtocolError,
    RemoteProtocolError,
    Rename,
    Renamed,
    RuleViolation,
    Say,
    Search,
    SearchResults,
    Shutdown,
    Unknown,
    Uploaded,
    UploadReady,
    Users,
    Welcome,
    Who,
    clean_mime,
    clean_sha256,
    encode,
    parse_message,
)
from server.protocol.fingerprint import Invite, fingerprint
from server.protocol.transport import (
    PlainTransport,
    TlsTransport,
    Transport,
    TransportClosed,
    Want,
    client_context,
)

logger = logging.getLogger("app.network")

CONNECT_TIMEOUT = 8.0
# The server pings a client that is silent for 30 s, so a live server is
# never silent for much longer than that; a client that hears nothing for
# PING_AFTER pings, and gives up after DEAD_AFTER: under a minute.
PING_AFTER = 20.0
DEAD_AFTER = 45.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A connection resets the backoff only once it has lasted this long: one
# that gets in and breaks at once (a server sending garbage) would
# otherwise be retried every second for ever. As long as the longest
# pause, so a server that breaks every connection costs at most about one
# connection per BACKOFF_MAX either way.
HEALTHY_AFTER = BACKOFF_MAX
# A server that said `shutdown`, or whose port refuses connections, is
# most likely restarting: retry at least this often for the first FAST_FOR
# seconds of the outage, so that the user is back within about FAST_RETRY
# of its return (refused connects on a LAN cost next to nothing).
FAST_RETRY = 2.0
FAST_FOR = 60.0

# Events waiting for the UI before the network thread stops reading the
# socket. The Tk thread handles about 6,000 a second (chat_app's pump), so
# this is a fraction of a second of work; each event is small (the text
# and name limits below) but for user lists, which EVENT_NAMES bounds.
EVENT_LIMIT = 2000
# Bytes held for a server that is not reading them, beyond what the OS
# buffers. What the user typed waits in its own queue until the socket
# takes it, so only our answers to the server's pings can fill this: a
# server that pings and never reads is dropped when they would overflow.
MAX_OUTGOING = 1024 * 1024
# A room larger than this is listed only in part: sorting and showing more
# would hold the Tk thread for seconds (a 1 MiB frame fits 250,000 names).
MAX_USERS = 50_000
# Names in the user lists (welcomes and ``users``) of the events waiting:
# a list is the one event that is not small (MAX_USERS names, about 4 MB),
# so the queue also stops taking frames once it holds this many names.
EVENT_NAMES = 2 * MAX_USERS
# Times that every platform's localtime() converts (Windows refuses times
# before 1970 in local time and after the year 3000); a server's ``ts``
# is clamped into this range.
MIN_TS = 86_400.0
MAX_TS = 32_503_680_000.0

# How long the network thread waits for the person to answer a trust
# question before it gives up (they may be calling whoever runs the server).
TRUST_TIMEOUT = 600.0
# Connections one attempt may open: after each answer to a question (trust
# this server? talk without encryption?) the next one applies the answer,
# fresh, as the server gives up on a silent connection after 10 seconds.
DECISIONS = 3
# A password given later than this after the connection opened goes on a
# fresh one: the server gives up on a connection without a welcome at 10 s.
SAME_CONNECTION_FOR = 7.0
PASSWORD_TRIES = 3  # wrong passwords after which the server closes the connection

# While an upload's data goes, the OS holds at most this much of it unsent
# (where it can: TCP_NOTSENT_LOWAT), so that a chat frame waits behind no
# more than this in the OS; the server does the same for downloads.
UPLOAD_UNSENT = 128 * 1024

NAME_ERRORS = frozenset({ErrorCode.NAME_TAKEN, ErrorCode.NAME_INVALID, ErrorCode.BAD_FIELD})
# What the selector watches for a transport that answered ``Want``.
_SELECT = {Want.READ: selectors.EVENT_READ, Want.WRITE: selectors.EVENT_WRITE}


# -- events for the UI --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connecting:
    """A connection attempt started (``attempt`` 0 is the first)."""

    host: str
    port: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The server let us in; ``reconnected`` after a drop. History and live
    frames follow as ``Received`` events.

    ``pin``: the trusted identity on a TLS connection, ``None`` in plaintext.
    ``insecure``: the members connected without encryption, ``None`` when
    the server said nothing about it."""

    welcome: Welcome
    reconnected: bool
    pin: Pin | None = None
    insecure: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TrustNeeded:
    """A server never seen before: show its fingerprint's safety words and
    answer with ``ChatClient.trust``. Nothing has been sent to it."""

    host: str
    port: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class PlaintextNeeded:
    """The server offers no encryption: ask whether to talk to it anyway,
    and answer with ``ChatClient.trust``. Nothing has been sent to it."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class IdentityChanged:
    """A hard stop: the server is not the one trusted at this address (or
    named by the invite). ``fingerprint`` is what it showed, ``None`` when
    a server once seen with encryption now offers none; ``pin`` is the
    identity trusted before, if any. Nothing was sent; no reconnecting."""

    host: str
    port: int
    fingerprint: str | None
    pin: Pin | None
    invite: bool = False


@dataclass(frozen=True, slots=True)
class PasswordNeeded:
    """The server wants the room's password (``wrong``: the one sent was not
    it): answer with ``ChatClient.give_password``; the attempt waits for it."""

    host: str
    port: int
    wrong: bool


@dataclass(frozen=True, slots=True)
class NameRefused:
    """Hello failed over the name; call ``choose_name`` (the connection stays)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """The first connection failed; ``message`` is one plain sentence. The thread ends."""

    message: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """A welcomed connection ended; the next try is in ``retry_in`` seconds.

    ``again``: this outage has been reported with this ``message`` already
    (a retry failed the same way), so there is nothing new to tell."""

    message: str
    retry_in: float
    again: bool = False


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """The server said it is shutting down (``ConnectionLost`` follows)."""

    message: str


@dataclass(frozen=True, slots=True)
class Received:
    """A frame from the server for the UI: a message, presence, users, error.

    ``asked``: a ``users`` list that answers our own ``who``; ``insecure``:
    with a ``users`` list, who is in the room without encryption (``None``:
    the server did not say)."""

    message: Message
    asked: bool = False
    insecure: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class HistoryLoaded:
    """A ``history-page`` answering one of our ``history`` requests, its
    messages made safe and checked (public, oldest first, below ``before``,
    at most ``MAX_PAGE``). ``refused``: the server's page broke those rules
    and was dropped (``messages`` empty, ``more`` false)."""

    page: HistoryPage
    refused: bool = False


@dataclass(frozen=True, slots=True)
class SearchFound:
    """``search-results`` answering one of our ``search`` requests, checked
    as ``HistoryLoaded`` is (but newest first); ``refused`` likewise."""

    results: SearchResults
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Unsent:
    """Says (and renames) the server never confirmed; give them back to the
    user, in the order they were typed."""

    says: tuple[Say | Rename, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The network thread has ended."""


Event = (
    Connecting
    | Welcomed
    | TrustNeeded
    | PlaintextNeeded
    | IdentityChanged
    | PasswordNeeded
    | NameRefused
    | ConnectFailed
    | ConnectionLost
    | ServerShutdown
    | Received
    | HistoryLoaded
    | SearchFound
    | Unsent
    | Stopped
    | TransferStarted
    | TransferProgress
    | TransferDone
    | TransferFailed
)


class _Dropped(Exception):
    """The current connection is over; ``message`` says why, for people."""

    def __init__(self, message: str, *, final: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.final = final  # no point in reconnecting
        self.restarting = refused  # or the server said shutdown: retry soon
        self.healthy = False  # welcomed, and lasted HEALTHY_AFTER


class _Stop(Exception):
    """close() was called."""


class _Again(Exception):
    """This connection is over by a decision (the person answered a question,
    the server offers TLS now): the next one applies it, at once."""


class _FirstByte:
    """The socket as the TLS layer sees it: until the server's first byte is
    known (``first``), reads only peek at it, and if it is not TLS's (0x00
    starts a plaintext frame; ``b""`` is the end) TLS is never given any of
    it, only told to wait, so the client can read that plaintext error itself.
    Looking first, rather than after TLS choked on it, leaves no race with a
    server that answers at once."""

    __slots__ = ("first", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.first: bytes | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, buffer: bytearray, max_bytes: int) -> int:
        if self.first is None:
            self.first = self.sock.recv(1, socket.MSG_PEEK)  # BlockingIOError: nothing yet
        if self.first in (b"", b"\0"):
            raise BlockingIOError  # not TLS: the client reads it, TLS never does
        return self.sock.recv_into(buffer, max_bytes)

    def send(self, data: bytes | memoryview) -> int:
        return self.sock.send(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.sock.setsockopt(level, option, value)

    def close(self) -> None:
        self.sock.close()


_tls_context = None


def tls_transport(sock: socket.socket) -> Transport:
    """The client's side of TLS over a connected socket (one context for all)."""
    global _tls_context  # noqa: PLW0603 - made once, at the first connection
    if _tls_context is None:
        _tls_context = client_context()
    return TlsTransport(sock, _tls_context, server_side=False)


def error_words(code: str, message: str) -> str | None:
    """Plain words for the errors after which the client does not reconnect
    by itself (and the ones before TLS); ``None`` for any other code."""
    said = f" The server said: {message}" if message else ""
    words: dict[str, str] = {
        ErrorCode.TLS_REQUIRED: "This server accepts only encrypted connections.",
        ErrorCode.TLS_UNAVAILABLE: "This server offers no encryption.",
        ErrorCode.KICKED: f"You were removed from the room.{said}",
        ErrorCode.BANNED: f"You are banned from this server.{said}",
        ErrorCode.TOO_MANY_ATTEMPTS: (
            "Too many wrong passwords came from this computer. Try again later."
        ),
        ErrorCode.TOO_MANY_CONNECTIONS: (
            "Too many connections from this computer are open to the server."
        ),
        ErrorCode.THROTTLED: "Too many connections from this computer, too fast. Try again later.",
        ErrorCode.SERVER_FULL: "The server is full. Try again later.",
        ErrorCode.ROOM_UNAVAILABLE: "The server cannot reach the room just now.",
    }
    return words.get(code)


def describe_connect_error(exc: OSError, host: str, port: int) -> str:
    """One plain sentence for a failed connect."""
    if isinstance(exc, socket.gaierror):
        return f"Cannot find the computer {host!r}. Check the server address."
    if isinstance(exc, ConnectionRefusedError):
        return f"Nothing is listening at {host}:{port}. Is the server running?"
    if isinstance(exc, TimeoutError):
        return (
            f"{host}:{port} did not answer. Check the address, and that the server's "
            "firewall lets connections in."
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"Cannot reach {host}. Check that you are on the same network as the server."
    return f"Cannot connect to {host}:{port}: {exc.strerror or exc}."


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before reconnection ``attempt`` (1, 2, 4 ... 30, with jitter)."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(attempt, 10))
    return base * rng.uniform(0.5, 1.0)


class EventQueue(Queue[Event]):
    """``ChatClient.events``: what the network thread tells the UI, in order,
    bounded without losing anything. Any thread may take from it.

    The network thread asks ``has_room`` before it handles each frame from
    the server and, while there is none, reads no more from the socket: TCP
    then holds the server back (and a server may drop a client that slow,
    which is right). Events about the connection itself are never held
    back, so the queue holds at most ``limit`` and a handful more. The
    user lists in the events waiting count too: there is no room either
    while they hold ``names`` names or more, so the queue holds at most
    that many and one frame's worth more (``MAX_USERS``). When a full
    queue has been drained to half of both, ``on_room`` is called (with
    the queue's lock held: it must only wake the network thread up).

    A ``users`` list replaces one still waiting: the later list is the
    room's state after everything queued before it, so the UI ends up the
    same, and a server sending lists in a loop holds one list here, not
    thousands. The list that replaces one ``asked`` for is its answer.
    """

    def __init__(self, limit: int | None = None, names: int | None = None) -> None:
        super().__init__()
        self.limit = EVENT_LIMIT if limit is None else limit
        self.names = EVENT_NAMES if names is None else names
        self.on_room: Callable[[], None] | None = None
        self._held_back = False
        self._waiting_users: Received | None = None
        self._names_waiting = 0

    def has_room(self) -> bool:
        """Whether another frame's event may be queued now."""
        with self.mutex:
            if self._qsize() < self.limit and self._names_waiting < self.names:
                return True
            self._held_back = True
            return False

    def _put(self, item: Event) -> None:
        if isinstance(item, Received) and isinstance(item.message, Users):
            old = self._waiting_users
            if old is not None:
                for index, waiting in enumerate(self.queue):
                    if waiting is old:
                        del self.queue[index]
                        self._names_waiting -= _names_in(old)
                        break
                if old.asked and not item.asked:
                    item = replace(item, asked=True)
            self._waiting_users = item
        self._names_waiting += _names_in(item)
        super()._put(item)

    def _get(self) -> Event:
        item = super()._get()
        self._names_waiting -= _names_in(item)
        if item is self._waiting_users:
            self._waiting_users = None
        if (
            self._held_back
            and self._qsize() <= self.limit // 2
            and self._names_waiting <= self.names // 2
        ):
            self._held_back = False
            if self.on_room is not None:
                self.on_room()
        return item


def _names_in(event: Event) -> int:
    """How many names ``event`` holds in a user list."""
    if isinstance(event, Welcomed):
        return len(event.welcome.users)
    if isinstance(event, Received) and isinstance(event.message, Users):
        return len(event.message.users)
    return 0


# -- what the UI may show of the server's frames ---------------------------------------

# What the server strips from what clients say is stripped here too; lone
# surrogates (a JSON escape can carry one) make Tk raise, so they become U+FFFD.
_LINE_BREAKS = str.maketrans("\n\t\u2028\u2029", "    ")
# Frames whose `ts` the UI may show: a mistyped one is replaced by our clock
# rather than losing the frame.
_TIMED = frozenset({ChatMessage.TYPE, Joined.TYPE, Left.TYPE, Renamed.TYPE})


def _safe_ts(ts: float) -> float:
    return float(min(max(ts, MIN_TS), MAX_TS))


def _safe_text(text: str, limit: int = MAX_TEXT_LENGTH, *, one_line: bool = False) -> str:
    """``text`` cut to ``limit`` characters, with nothing Tk cannot draw or
    that would reorder the line; ``one_line`` also turns line breaks into spaces."""
    text = LONE_SURROGATE.sub("\ufffd", text.translate(TEXT_REMOVED))
    if one_line:
        text = text.translate(_LINE_BREAKS)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _name_char(char: str) -> bool:
    return char in NAME_PUNCTUATION or unicodedata.category(char)[0] in "LMN"


def _safe_name(name: str) -> str:
    """A name as the server's rules allow is kept as it is; in any other, the
    characters no name may hold become U+FFFD and the rest is cut to
    ``MAX_NAME_LENGTH``. The same bad name always comes out the same, so the
    online list still finds it when it leaves, and no name can break a
    line or pass for another line of the transcript."""
    if len(name) <= MAX_NAME_LENGTH and name and (name.isalnum() or all(map(_name_char, name))):
        return name
    return "".join(c if _name_char(c) else "\ufffd" for c in name[:MAX_NAME_LENGTH]) or "\ufffd"


def _safe_names(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_safe_name(name) for name in names[:MAX_USERS])


# A file a message may carry: no larger (a terabyte: no chat server keeps
# more), and an image no wider or taller, in pixels.
MAX_FILE_SIZE = 2**40
MAX_IMAGE_SIDE = 100_000


def _safe_file(info: FileInfo | None) -> FileInfo | None:
    """A message's file made safe to show and to ask for: its name one short
    line (``shown_file_name``); a width or height out of range dropped; an
    unknown media type the default. A file whose id, size or SHA-256 is
    unfit is dropped (``None``): it could not be downloaded and checked,
    and the message's text still shows."""
    if info is None or not file_id_fits(info.id) or not 0 <= info.size <= MAX_FILE_SIZE:
        return None
    try:
        sha256 = clean_sha256(info.sha256)
    except RuleViolation:
        return None
    try:
        mime = clean_mime(info.mime)
    except RuleViolation:
        mime = DEFAULT_MIME
    width, height = info.width, info.height
    if not (
        width is not None
        and height is not None
        and 0 < width <= MAX_IMAGE_SIDE
        and 0 < height <= MAX_IMAGE_SIDE
    ):
        width = height = None
    name = shown_file_name(info.name)
    return replace(info, name=name, sha256=sha256, mime=mime, width=width, height=height)


def _made_safe(message: Message) -> Message:
    """``message`` with every field the UI shows made safe to show (see above)."""
    match message:
        case ChatMessage():
            return replace(
                message,
                sender=_safe_name(message.sender),
                text=_safe_text(message.text),
                ts=_safe_ts(message.ts),
                to=None if message.to is None else _safe_name(message.to),
                file=_safe_file(message.file),
            )
        case Joined():
            return replace(message, name=_safe_name(message.name), ts=_safe_ts(message.ts))
        case Left():
            reason = _safe_text(message.reason, MAX_NAME_LENGTH, one_line=True)
            name = _safe_name(message.name)
            return replace(message, name=name, reason=reason, ts=_safe_ts(message.ts))
        case Renamed():
            old, new = _safe_name(message.old), _safe_name(message.new)
            return replace(message, old=old, new=new, ts=_safe_ts(message.ts))
        case Users():
            return replace(message, users=_safe_names(message.users))
        case Welcome():
            motd = None if message.motd is None else _safe_text(message.motd)
            name, users = _safe_name(message.name), _safe_names(message.users)
            return replace(message, name=name, users=users, motd=motd)
        case Error():
            return replace(message, message=_safe_text(message.message, one_line=True))
        case Shutdown():
            return replace(message, message=_safe_text(message.message, one_line=True))
        case HistoryPage() | SearchResults():
            # Checked before the work of making each safe: at most MAX_PAGE of them.
            if len(message.messages) > MAX_PAGE:
                return message
            safe = tuple(cast(ChatMessage, _made_safe(each)) for each in message.messages)
            if isinstance(message, SearchResults):
                query = _safe_text(message.query, one_line=True)
                return replace(message, query=query, messages=safe)
            return replace(message, messages=safe)
    return message


# Ids a page (or the last one seen) may carry: JSON's exact integers, so
# that ``before`` built from one is one the server can read back.
MAX_ID = 2**53


def _page_fits(page: HistoryPage | SearchResults) -> bool:
    """Whether a page keeps the protocol's rules: at most ``MAX_PAGE`` public
    messages, ids in range and in order (oldest first for ``history``, newest
    first for ``search``, so none twice), a history page's below its ``before``."""
    messages = page.messages
    if len(messages) > MAX_PAGE:
        return False
    ids = [message.id for message in messages]
    if any(message.to is not None for message in messages):
        return False
    if not all(0 < each < MAX_ID for each in ids):
        return False
    if isinstance(page, SearchResults):
        ids.reverse()
    if any(a >= b for a, b in itertools.pairwise(ids)):
        return False
    return not (
        isinstance(page, HistoryPage) and page.before is not None and ids and ids[-1] >= page.before
    )


def _security(payload: dict[str, Any]) -> tuple[tuple[str, ...] | None, bool]:
    """A welcome's or users list's ``insecure`` names (``None``: absent or not
    a list of names) and a welcome's ``tls_available``."""
    if payload["type"] not in (Welcome.TYPE, Users.TYPE):
        return None, False
    names = payload.get("insecure")
    insecure = None
    if isinstance(names, list) and all(isinstance(name, str) for name in names[:MAX_USERS]):
        insecure = _safe_names(tuple(names[:MAX_USERS]))
    return insecure, payload.get("tls_available") is True


def _parse(payload: dict[str, Any]) -> Message:
    """A frame from the server as a message whose fields are safe to show."""
    if payload["type"] in _TIMED and type(payload.get("ts")) not in (int, float):
        payload["ts"] = time.time()
    return _made_safe(parse_message(payload, SERVER_MESSAGES))


class ChatClient:
    """One user's connection to one server. See the module docstring.

    Public methods may be called from any thread. ``events`` receives
    events from the network thread only.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        events: EventQueue | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        ping_after: float = PING_AFTER,
        dead_after: float = DEAD_AFTER,
        rng: random.Random | None = None,
        known: KnownServers | None = None,
        invite: Invite | None = None,
        transport_factory: Callable[[socket.socket], Transport] = tls_transport,
        plain_factory: Callable[[socket.socket], Transport] = PlainTransport,
        trust_timeout: float = TRUST_TIMEOUT,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        # Trusted servers (in memory only when not given) and the invite the
        # person pasted, whose code the server's fingerprint must match.
        self.known = known if known is not None else KnownServers()
        self.invite = invite
        self._plain_factory = plain_factory
        self._trust_timeout = trust_timeout
        self._answer: bool | None = None  # the person's answer to the open question
        self._pin: Pin | None = None  # on this connection: the identity it proved
        # The room password, sent in every hello; the person's answer to the
        # open password question (a 1-tuple: None inside is Cancel).
        self._password = password
        self._password_answer: tuple[str | None] | None = None
        self._opened_at = 0.0  # when this connection opened
        self._wrong_passwords = 0  # on this connection
        self.events = events if events is not None else EventQueue()
        self._wanted_name = name
        self._connect_timeout = connect_timeout
        self._ping_after = ping_after
        self._dead_after = dead_after
        self._rng = rng or random.Random()
        self._transport_factory = transport_factory
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self.events.on_room = self._wake
        self._outgoing: deque[tuple[Message, bytes]] = deque()  # from the UI, encoded
        # Held while checking "in the room?" and queueing, and while leaving the
        # room and taking back unsent says: no say slips between the two.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._retry_now = threading.Event()
        self._name: str | None = None  # as the server keeps it, once welcomed
        self._joined = False
        self._greeting = False  # connected, not yet welcomed: a hello may be retried
        self._pending: deque[Say | Rename] = deque()  # sent, not yet answered
        self._whos = 0  # on this connection: who sent, not yet answered by users
        # On this connection: history and search requests sent, not yet answered,
        # oldest first. A page that answers none (its ``before`` or ``query``) is
        # dropped here, so that the queue of events holds at most one page (up
        # to a frame's worth) per request.
        self._asked: deque[History | Search] = deque()
        self._welcomed_at: float | None = None  # on this connection
        self._shutdown_said = False  # on this connection
        self._refused_ping = False  # on this connection: a ping too large to answer
        self._features: tuple[str, ...] = ()  # the last welcome's
        self._unsent_limited = False  # on this connection: the OS holds UPLOAD_UNSENT at most
        # Uploads and downloads, run by the network thread; the UI's calls reach
        # them as commands (under ``_lock``), run at the top of its loop.
        self._transfers = Transfers(self._post, self._queue_say, self.events.has_room)
        self._commands: deque[Callable[[], None]] = deque()
        self._thread = threading.Thread(target=self._run, name="chat-network", daemon=True)

    # -- the UI's side (any thread) -----------------------------------------

    @property
    def name(self) -> str | None:
        """Our name as the server keeps it; ``None`` until welcomed."""
        return self._name

    @property
    def running(self) -> bool:
        """Whether the network thread is still at work (connecting, chatting or waiting)."""
        return self._thread.is_alive()

    @property
    def joined(self) -> bool:
        """Whether we are in the room right now."""
        return self._joined

    def start(self) -> None:
        self._thread.start()

    def say(self, text: str, *, action: bool = False, to: str | None = None) -> bool:
        """Send a message; ``False`` (nothing sent) while not in the room.

        Raises ``LocalProtocolError`` for text too large for a frame; check
        it with ``protocol.clean_text`` first.
        """
        return self._send(Say(text, action, to), joined_only=True)

    def rename(self, name: str) -> bool:
        """Ask for a new name; ``False`` while not in the room."""
        return self._send(Rename(name), joined_only=True)

    def who(self) -> bool:
        """Ask for the user list; ``False`` while not in the room."""
        return self._send(Who(), joined_only=True)

    def history(self, before: int | None, limit: int) -> bool:
        """Ask for up to ``limit`` public messages older than id ``before``
        (``None``: the newest); answered by ``HistoryLoaded``. ``False`` while
        not in the room. Only for a server whose welcome lists ``history-pages``."""
        return self._send(History(before, limit), joined_only=True)

    def search(self, query: str, limit: int, before: int | None = None) -> bool:
        """Search the room's public messages (``before``: an id, to go on further
        back); answered by ``SearchFound``, or an error ``in_reply_to`` search.
        ``False`` while not in the room. Only for a server whose welcome lists ``search``."""
        return self._send(Search(query, limit, before), joined_only=True)

    def upload(
        self, path: Path, *, name: str | None = None, to: str | None = None, text: str = ""
    ) -> int | None:
        """Upload the file at ``path`` (shown as ``name``, by default its own) and
        post it, with ``text``, to the room or to ``to``; returns the transfer's
        id, told about in ``Transfer*`` events. ``None`` (nothing done) while
        not in the room or when the server's welcome does not offer ``files``.

        Raises ``LocalProtocolError`` for text too large for a frame, as ``say`` does.
        """
        encode(Say(text, to=to, file="f-" + "0" * 24), MAX_CLIENT_FRAME)
        transfer = self._transfers.new_id()
        started = self._command(
            lambda: self._transfers.start_upload(transfer, Path(path), name, to, text)
        )
        return transfer if started else None

    def download(self, file: FileInfo, dest: Path) -> int | None:
        """Download ``file`` (a message's) into ``dest``, checked against its size
        and SHA-256; returns the transfer's id, or ``None`` as ``upload`` does."""
        transfer = self._transfers.new_id()
        started = self._command(lambda: self._transfers.start_download(transfer, file, dest))
        return transfer if started else None

    def cancel(self, transfer: int) -> None:
        """Stop ``transfer``: ``TransferFailed`` ("Cancelled.") follows, unless it
        is over already (or its file's message is out)."""
        with self._lock:
            self._commands.append(lambda: self._transfers.cancel(transfer))
        self._wake()

    def _command(self, command: Callable[[], None]) -> bool:
        with self._lock:
            if not self._joined or "files" not in self._features:
                return False
            self._commands.append(command)
        self._wake()
        return True

    def choose_name(self, name: str) -> None:
        """Try another name after ``NameRefused`` (on the next connection if
        this one is gone)."""
        self._wanted_name = name
        if self._greeting:
            self._send(self._hello(), joined_only=False)

    def trust(self, accept: bool) -> None:
        """Answer ``TrustNeeded`` or ``PlaintextNeeded``: go on (``True``) or stop."""
        self._answer = accept
        self._wake()

    def give_password(self, password: str | None) -> None:
        """Answer ``PasswordNeeded``: the room's password, or ``None`` to stop."""
        self._password_answer = (password,)
        self._wake()

    def _hello(self) -> Hello:
        return Hello(self._wanted_name, password=self._password)

    def reconnect_now(self) -> None:
        """Skip the rest of a backoff pause."""
        self._retry_now.set()
        self._wake()

    def close(self, timeout: float = 1.0) -> None:
        """Say bye (when in the room), stop the thread and wait for it."""
        self._stop.set()
        self._wake()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._release()

    def _send(self, message: Message, *, joined_only: bool) -> bool:
        frame = encode(message, MAX_CLIENT_FRAME)
        with self._lock:
            if joined_only and not self._joined:
                return False
            self._outgoing.append((message, frame))
        self._wake()
        return True

    def _queue_say(self, say: Say) -> None:
        """Queue a file's say (from the network thread: the transfers')."""
        with self._lock:
            self._outgoing.append((say, encode(say, MAX_CLIENT_FRAME)))

    def _run_commands(self) -> None:
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        for command in commands:
            command()

    def _wake(self) -> None:
        try:
            self._wake_out.send(b"\0")
        except OSError:
            pass  # a wake-up is pending already, or the client is closed

    def _release(self) -> None:
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    # -- the network thread ----------------------------------------------------

    def _post(self, event: Event) -> None:
        self.events.put(event)

    def _run(self) -> None:
        attempt = 0  # of the backoff, which restarts after a healthy connection
        outage_since: float | None = None  # when the last healthy connection ended
        told: set[str] = set()  # what the UI has heard about this outage
        welcomed_before = False
        try:
            for number in itertools.count():
                self._post(Connecting(self.host, self.port, number))
                try:
                    self._session(welcomed_before)
                except _Dropped as dropped:
                    if self._stop.is_set():
                        raise _Stop from None
                    got_in = self._leave_room(dropped.message)
                    welcomed_before = welcomed_before or got_in
                    if not welcomed_before:
                        self._post(ConnectFailed(dropped.message))
                        return
                    if dropped.final:
                        self._post(ConnectionLost(dropped.message, -1.0))
                        return
                    now = time.monotonic()
                    if dropped.healthy or outage_since is None:
                        outage_since = now
                    if dropped.healthy:
                        attempt = 0
                    if got_in:  # the UI said "reconnected": a loss is news again
                        told.clear()
                    delay = backoff_delay(attempt, self._rng)
                    if dropped.restarting and now - outage_since < FAST_FOR:
                        delay = min(delay, FAST_RETRY)
                    attempt += 1
                    again = dropped.message in told
                    told.add(dropped.message)
                    self._post(ConnectionLost(dropped.message, delay, again))
                    self._pause(delay)
        except _Stop:
            pass
        except Exception:
            logger.exception("network thread failed")
            self._post(ConnectFailed("Something went wrong; see the log file for details."))
        finally:
            self._leave_room("The app was closed.")
            self._post(Stopped())
            if self._stop.is_set():
                self._release()  # close() may have stopped waiting for us

    def _pause(self, seconds: float) -> None:
        """Wait before reconnecting, unless told to stop or to retry now."""
        deadline = time.monotonic() + seconds
        self._retry_now.clear()
        while not self._retry_now.is_set():
            if self._stop.is_set():
                raise _Stop
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wait(remaining)

    def _wait(self, timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._selector.select(timeout)
        ready = []
        for key, mask in events:
            if key.data is None:
                try:
                    while self._wake_in.recv(4096):
                        pass
                except OSError:
                    pass  # drained
            else:
                ready.append((key, mask))
        if self._stop.is_set():
            raise _Stop
        return ready

    def _session(self, reconnecting: bool) -> None:
        """One attempt, from connect to its end (raises ``_Dropped`` or ``_Stop``):
        a connection, or a few when questions answered on one call for another."""
        for _ in range(DECISIONS):
            try:
                self._connection(reconnecting)
            except _Again:
                continue
        raise _Dropped("The connection to the server could not be set up.")

    def _connection(self, reconnecting: bool) -> None:
        """One connection, from connect to its end (raises ``_Dropped``, ``_Stop``
        or ``_Again``). Over TLS, nothing is sent before the server is trusted."""
        self._welcomed_at = None
        self._opened_at = time.monotonic()
        self._wrong_passwords = 0
        self._shutdown_said = self._refused_ping = self._unsent_limited = False
        self._whos = 0
        self._asked.clear()
        self._pin = None
        plain = self._plaintext_agreed()
        sniffers: list[_FirstByte] = []

        def secure(sock: socket.socket) -> Transport:
            sniffers.append(_FirstByte(sock))
            return self._transport_factory(cast(socket.socket, sniffers[-1]))

        transport, sock = self._connect(self._plain_factory if plain else secure)
        out = bytearray()
        try:
            if not plain:
                self._pin = self._verify(transport, sock, sniffers[-1])
            self._converse(transport, out, reconnecting)
        except _Dropped as dropped:
            since = self._welcomed_at
            dropped.healthy = since is not None and time.monotonic() - since >= HEALTHY_AFTER
            dropped.restarting = dropped.restarting or self._shutdown_said
            raise
        except _Stop:
            self._greeting = False
            if self._joined:  # leave politely, with whatever was still unsent
                try:
                    transport.send(bytes(out) + encode(Bye()))
                except TransportClosed:
                    pass  # the connection is going anyway
            raise
        finally:
            self._greeting = False
            self._watch(transport, 0)
            transport.close()

    def _plaintext_agreed(self) -> bool:
        """Whether to connect in plaintext: only where the person agreed to, and
        never to a server once seen with TLS (or named by an invite)."""
        known = self.known
        return (
            self.invite is None
            and known.pinned_at(self.host, self.port) is None
            and known.plaintext_allowed(self.host, self.port)
        )

    def _verify(self, transport: Transport, sock: socket.socket, sniffer: _FirstByte) -> Pin | None:
        """Drive the TLS handshake to its end and decide whether to go on with
        this server; returns its pin (``None``: the transport is a test's,
        with no certificate). A server that answers in plaintext is
        ``_no_tls``'s; every question ends this connection (``_Again``)."""
        deadline = time.monotonic() + self._connect_timeout
        try:
            want = transport.handshake()
            while want is not None:
                if sniffer.first == b"\0":
                    self._no_tls(self._plaintext_error(transport, sock, deadline))
                if sniffer.first == b"":
                    self._no_tls(None)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Dropped("The server did not finish setting up encryption.")
                self._watch(transport, _SELECT[want])
                self._wait(remaining)
                want = transport.handshake()
        except TransportClosed:
            raise _Dropped("The server broke off setting up encryption.") from None
        except OSError:
            raise _Dropped("The connection to the server was lost.") from None
        finally:
            self._watch(transport, 0)
        der = transport.peer_certificate()
        if der is None:
            return None
        return self._decide(fingerprint(der))

    def _plaintext_error(
        self, transport: Transport, sock: socket.socket, deadline: float
    ) -> Error | None:
        """The plaintext frame a server sent instead of TLS (an error, by the
        protocol); ``None`` if it sent no whole one."""
        decoder = FrameDecoder(MAX_CLIENT_FRAME)  # one error frame: small
        self._watch(transport, selectors.EVENT_READ)  # its socket, read here past TLS
        try:
            while (payload := decoder.next_payload()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if not self._wait(remaining):
                    continue
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    return None
                decoder.receive_data(data)
            message = _parse(payload)
        except (ProtocolError, OSError):
            return None
        return message if isinstance(message, Error) else None

    def _no_tls(self, error: Error | None) -> None:
        """The server answered the TLS handshake in plaintext (``error``) or
        closed (``None``). Always raises."""
        host, port = self.host, self.port
        code = error.code if error is not None else None
        if code not in (None, ErrorCode.TLS_UNAVAILABLE, ErrorCode.BAD_FRAME):
            assert error is not None
            words = error_words(error.code, error.message) or "The server refused the connection."
            raise _Dropped(words, final=error.code in NO_RECONNECT_ERRORS)
        pin = self.known.pinned_at(host, port)
        if pin is not None or self.invite is not None:
            if code is None:  # only closed: most likely a server going away
                raise _Dropped("The server closed the connection.")
            self._post(IdentityChanged(host, port, None, pin, invite=pin is None))
            raise _Dropped(
                "This server used to be encrypted and now offers no encryption. "
                "Someone may be pretending to be it.",
                final=True,
            )
        if not self._ask(PlaintextNeeded(host, port)):
            raise _Dropped("Not connected: the server offers no encryption.", final=True)
        self.known.allow_plaintext(host, port)
        raise _Again

    def _decide(self, seen: str) -> Pin:
        """Go on with the server whose fingerprint is ``seen`` (its pin), or stop."""
        host, port, known = self.host, self.port, self.known
        pin = known.lookup(seen)
        if self.invite is not None and not self.invite.matches(seen):
            self._post(IdentityChanged(host, port, seen, known.pinned_at(host, port), invite=True))
            raise _Dropped(
                "This server is not the one the invite names. Someone may be pretending to be it.",
                final=True,
            )
        if self.invite is not None or pin is not None:
            if pin is None or address_of(host, port) not in pin.addresses:
                pin = known.pin(seen, host, port)  # a new server, or a new address of one
            return pin
        old = known.pinned_at(host, port)
        if old is not None:
            self._post(IdentityChanged(host, port, seen, old))
            raise _Dropped(
                "This server's identity has changed. Someone may be pretending to be it.",
                final=True,
            )
        if not self._ask(TrustNeeded(host, port, seen)):
            raise _Dropped("Not connected: you did not confirm the server's identity.", final=True)
        known.pin(seen, host, port)
        raise _Again

    def _ask(self, question: TrustNeeded | PlaintextNeeded) -> bool:
        """Post ``question`` and wait (bounded) for the person's answer."""
        self._answer = None
        self._post(question)
        deadline = time.monotonic() + self._trust_timeout
        while self._answer is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wait(remaining)
        return self._answer

    def _connect(
        self, factory: Callable[[socket.socket], Transport]
    ) -> tuple[Transport, socket.socket]:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _Dropped(describe_connect_error(exc, self.host, self.port)) from None
        error: OSError = TimeoutError()
        deadline = time.monotonic() + self._connect_timeout
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_WRITE, sock)
            try:
                self._finish_connect(sock, address, deadline)
            except OSError as exc:
                error = exc
            except BaseException:
                self._selector.unregister(sock)
                sock.close()
                raise
            else:
                self._selector.unregister(sock)  # the transport is watched from now on
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    # Wrapped only once connected: a TLS transport does its
                    # handshake in its first reads and writes, as the data flows.
                    return factory(sock), sock
                except BaseException:
                    sock.close()
                    raise
            self._selector.unregister(sock)
            sock.close()
        raise _Dropped(
            describe_connect_error(error, self.host, self.port),
            refused=isinstance(error, ConnectionRefusedError),
        )

    def _finish_connect(self, sock: socket.socket, address: tuple, deadline: float) -> None:
        code = sock.connect_ex(address)
        # 10035 is Windows' WSAEWOULDBLOCK: a non-blocking connect under way.
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, 10035):
            if code in (errno.ECONNREFUSED, 10061):
                raise ConnectionRefusedError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        while code:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if self._wait(remaining):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code in (errno.ECONNREFUSED, 10061):  # 10061: WSAECONNREFUSED
                    raise ConnectionRefusedError(code, os.strerror(code))
                if code:
                    raise OSError(code, os.strerror(code))
                return

    def _converse(self, transport: Transport, out: bytearray, reconnecting: bool) -> None:
        decoder = FrameDecoder(MAX_SERVER_FRAME)
        with self._lock:  # a retry meant for an earlier connection: this one says hello itself
            kept = [item for item in self._outgoing if not isinstance(item[0], Hello)]
            self._outgoing.clear()
            self._outgoing.extend(kept)
        out += encode(self._hello())
        self._greeting = True
        last_heard = time.monotonic()  # when the last whole frame arrived
        pinged = False
        # What each direction waits for before it is tried again: a plain
        # socket reads on input and writes on room, TLS may need either for either.
        read_waits, write_waits = Want.READ, Want.WRITE
        while True:
            self._run_commands()
            if self._handle_frames(decoder, out, reconnecting):
                last_heard = time.monotonic()
                pinged = False
            self._queue(out, transport)
            if out:
                write_waits = self._transmit(transport, out)
            reading = self.events.has_room()
            if not reading:  # the server is not silent: we are not listening
                last_heard = time.monotonic()
            self._watch(
                transport,
                (_SELECT[read_waits] if reading else 0) | (_SELECT[write_waits] if out else 0),
            )
            now = time.monotonic()
            silent = now - last_heard
            if silent >= self._dead_after:
                raise _Dropped("The server stopped answering.")
            if silent >= self._ping_after and not pinged:
                pinged = True
                out += encode(Ping())
                continue
            # Input the transport holds already (TLS) is never reported by the
            # selector: it is read without waiting.
            held = reading and transport.pending() > 0
            if held or (not out and self._transfers.has_data()):  # or data to read from a file
                wait = 0.0
            else:
                wait = (self._dead_after if pinged else self._ping_after) - silent
            ready = 0
            for _key, mask in self._wait(max(0.0, wait)):
                ready |= mask
            if held or (reading and ready & _SELECT[read_waits]):
                read_waits = self._receive(transport, decoder)

    def _queue(self, out: bytearray, transport: Transport) -> None:
        """Queue what the UI asked for in ``out``; says and renames wait for the
        server's answer. The rest waits in _outgoing until the socket has taken
        what is here. Upload data goes only behind every chat frame, and only
        a few chunks ahead; while it goes, the OS is asked to hold no more
        than ``UPLOAD_UNSENT`` unsent (it would take megabytes, ahead of
        anything typed meanwhile)."""
        while self._outgoing and len(out) < MAX_CLIENT_FRAME:
            message, frame = self._outgoing.popleft()
            if isinstance(message, Say | Rename):
                self._pending.append(message)
            elif isinstance(message, Who):
                self._whos += 1
            elif isinstance(message, History | Search):
                self._asked.append(message)
            out += frame
        for control in self._transfers.control():
            out += control
        while not self._outgoing and len(out) < DATA_AHEAD:
            if (data := self._transfers.data()) is None:
                break
            out += data
        uploading = self._transfers.has_data()
        if uploading != self._unsent_limited:
            self._unsent_limited = uploading
            transport.limit_unsent(UPLOAD_UNSENT if uploading else 0)

    def _watch(self, transport: Transport, events: int) -> None:
        """Have the selector watch ``transport`` for ``events`` (none: not at all)."""
        key = self._selector.get_map().get(transport)
        if key is None:
            if events:
                self._selector.register(transport, events, transport)
        elif not events:
            self._selector.unregister(transport)
        elif key.events != events:
            self._selector.modify(transport, events, transport)

    def _transmit(self, transport: Transport, out: bytearray) -> Want:
        """Send what the transport takes of ``out`` now; returns what to wait for
        before sending the rest."""
        try:
            with memoryview(out) as unsent:  # released before ``out`` is cut
                sent = transport.send(unsent)
        except TransportClosed:
            raise _Dropped("The connection to the server was lost.") from None
        if isinstance(sent, Want):
            return sent
        del out[:sent]
        return Want.WRITE

    def _receive(self, transport: Transport, decoder: FrameDecoder) -> Want:
        """Read what arrived into ``decoder``; returns what to wait for before the
        next read."""
        try:
            data = transport.recv(256 * 1024)
        except TransportClosed:
            raise _Dropped("The connection to the server was lost.") from None
        if isinstance(data, Want):
            return data
        if not data:
            raise _Dropped("The server closed the connection.")
        decoder.receive_data(data)
        return Want.READ

    def _handle_frames(self, decoder: FrameDecoder, out: bytearray, reconnecting: bool) -> bool:
        """Handle the whole frames read so far, as far as the UI has room for their
        events, queueing answers in ``out``; ``False``: none."""
        handled = False
        try:
            while self.events.has_room() and (payload := decoder.next_payload()) is not None:
                handled = True
                insecure, tls_available = _security(payload)
                reply = self._handle(_parse(payload), reconnecting, insecure, tls_available)
                if reply is not None:
                    if len(out) + len(reply) > MAX_OUTGOING:
                        raise _Dropped("The server stopped reading what this app sends.")
                    out += reply
        except ProtocolError as exc:
            logger.warning("bad frame from the server: %s", exc)
            raise _Dropped("The server sent something this app does not understand.") from None
        return handled

    def _handle(
        self,
        message: Message,
        reconnecting: bool,
        insecure: tuple[str, ...] | None = None,
        tls_available: bool = False,
    ) -> bytes | None:
        """Act on one frame from the server; return the frame to answer with.
        ``insecure`` and ``tls_available``: the frame's fields of those names."""
        if isinstance(message, Ping):
            return self._pong(message)
        if isinstance(message, Welcome):
            if self._joined:  # and each welcome may carry MAX_USERS names for the UI
                raise RemoteProtocolError(ErrorCode.ALREADY_JOINED, "welcome after welcome")
            if tls_available and self._pin is None and self._plaintext_agreed():
                # The server can do TLS now: from here on only TLS, asked afresh.
                self.known.forbid_plaintext(self.host, self.port)
                raise _Again
            self._name = self._wanted_name = message.name
            self._greeting = False
            self._joined = True
            self._welcomed_at = time.monotonic()
            self._features = message.features or ()
            self._post(Welcomed(message, reconnecting, self._pin, insecure))
        elif isinstance(message, Error):
            return self._on_error(message)
        elif isinstance(message, Shutdown):
            self._shutdown_said = True
            self._post(ServerShutdown(message.message))
        elif isinstance(message, Unknown | Pong):
            return None
        elif isinstance(message, HistoryPage | SearchResults):
            self._answer_page(message)
        elif isinstance(message, UploadReady):
            return b"".join(self._transfers.on_upload_ready(message))
        elif isinstance(message, Uploaded):
            return b"".join(self._transfers.on_uploaded(message))
        elif isinstance(message, FileData):
            return b"".join(self._transfers.on_file_data(message))
        else:
            asked = False
            if isinstance(message, ChatMessage) and not message.history:
                # The echo confirms our oldest say, and a file's say its upload.
                said = self._answered(Say) if message.sender == self._name else None
                if isinstance(said, Say) and said.file is not None:
                    self._transfers.posted(said, message.file)
            elif isinstance(message, Renamed) and message.old == self._name:
                self._answered(Rename)
                self._name = self._wanted_name = message.new  # and reclaimed after a drop
            elif isinstance(message, Users) and self._whos:
                self._whos -= 1
                asked = True
            self._post(Received(message, asked, insecure if isinstance(message, Users) else None))
        return None

    def _answer_page(self, page: HistoryPage | SearchResults) -> None:
        """Hand the UI a page that answers one of our requests; one that breaks
        the rules goes as refused, empty; one nobody asked for not at all."""
        for request in self._asked:
            if (
                isinstance(request, History)
                and isinstance(page, HistoryPage)
                and request.before == page.before
            ) or (
                isinstance(request, Search)
                and isinstance(page, SearchResults)
                and _safe_text(request.query, one_line=True) == page.query
            ):
                self._asked.remove(request)
                break
        else:
            logger.warning("dropped a %s nobody asked for", page.TYPE)
            return
        refused = not _page_fits(page)
        if refused:
            logger.warning("dropped a %s that breaks the protocol's rules", page.TYPE)
            page = replace(page, messages=(), more=False)
        if isinstance(page, HistoryPage):
            self._post(HistoryLoaded(page, refused))
        else:
            self._post(SearchFound(page, refused))

    def _answered(self, kind: type[Say] | type[Rename]) -> Say | Rename | None:
        """Take the oldest pending frame of ``kind``, which the server has just
        answered, off ``_pending``; ``None``: there is none."""
        for index, message in enumerate(self._pending):
            if isinstance(message, kind):
                del self._pending[index]
                return message
        return None

    def _pong(self, ping: Ping) -> bytes | None:
        """The answer to ``ping``, unless it would not fit a client frame: the
        server would drop us for sending it, and a ping that large is not meant well."""
        try:
            return encode(Pong(ping.extra), MAX_CLIENT_FRAME)
        except LocalProtocolError as exc:
            if not self._refused_ping:
                self._refused_ping = True
                logger.warning("not answering a ping from the server: %s", exc.message)
            return None

    def _on_error(self, error: Error) -> bytes | None:
        """Act on an error from the server; return the frame to answer with."""
        if not self._joined and error.in_reply_to == Hello.TYPE:
            if error.code in NAME_ERRORS:
                self._post(NameRefused(error.code, error.message))
                return None
            if error.code in (ErrorCode.PASSWORD_REQUIRED, ErrorCode.PASSWORD_WRONG):
                return self._password_asked(error.code == ErrorCode.PASSWORD_WRONG)
            if error.code == ErrorCode.PROTOCOL_VERSION:
                raise _Dropped(
                    "This server speaks another version of the chat protocol; "
                    "update the app or the server.",
                    final=True,
                )
        if error.code == ErrorCode.TLS_REQUIRED and self._pin is None and self._plaintext_agreed():
            # Agreed to plaintext once; the server now wants TLS: try it, asked afresh.
            self.known.forbid_plaintext(self.host, self.port)
            raise _Again
        if error.code in NO_RECONNECT_ERRORS:
            words = error_words(error.code, error.message) or error.message
            raise _Dropped(words, final=True)
        if error.code == ErrorCode.SERVER_FULL:
            raise _Dropped("The server is full. Try again later.")
        if error.code == ErrorCode.ROOM_UNAVAILABLE:
            # Several servers, one room: this one lost the room for a moment; try again.
            raise _Dropped("The server cannot reach the room just now. Trying again.")
        if error.code == ErrorCode.TIMEOUT and not self._joined:
            raise _Dropped("The server stopped waiting for a name. Connect again.")
        if error.in_reply_to in FILE_FRAMES:  # about a transfer: it says so itself
            return b"".join(self._transfers.on_error(error))
        if error.in_reply_to == Say.TYPE and (say := self._answered(Say)) is not None:
            if not (isinstance(say, Say) and self._transfers.refused(say, error.message)):
                self._post(Unsent((say,), error.message))
            return None
        if error.in_reply_to == Rename.TYPE:
            self._answered(Rename)  # the error says why; the name stays as it was
        for request in self._asked:
            if error.in_reply_to == request.TYPE:  # answered, by this error
                self._asked.remove(request)
                break
        self._post(Received(error))
        return None

    def _password_asked(self, wrong: bool) -> bytes:
        """Ask the person for the room's password (bounded); returns the hello
        that carries it, or raises ``_Again`` to send it on a fresh connection."""
        self._wrong_passwords += wrong
        self._password_answer = None
        self._post(PasswordNeeded(self.host, self.port, wrong))
        deadline = time.monotonic() + self._trust_timeout
        while self._password_answer is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wait(remaining)
        password = None if self._password_answer is None else self._password_answer[0]
        if password is None:
            raise _Dropped("Not connected: the room's password was not given.", final=True)
        self._password = password
        late = time.monotonic() - self._opened_at >= SAME_CONNECTION_FOR
        if late or self._wrong_passwords >= PASSWORD_TRIES:
            raise _Again  # the server is closing this connection
        return encode(self._hello(), MAX_CLIENT_FRAME)

    def _leave_room(self, reason: str) -> bool:
        """We are out of the room: give back every say and rename not answered.
        Returns whether we had been in it."""
        with self._lock:
            was_in, self._joined = self._joined, False
            queued = [m for m, _ in self._outgoing if isinstance(m, Say | Rename)]
            self._outgoing.clear()
            says = (*self._pending, *queued)
            self._pending.clear()
            commands = list(self._commands)
            self._commands.clear()
        for command in commands:  # transfers asked for just now: they fail with the rest
            command()
        # A file's say is given back by its transfer's failure, with its words.
        transfers = self._transfers
        says = tuple(s for s in says if not (isinstance(s, Say) and transfers.unsent(s)))
        transfers.lost(reason if self._stop.is_set() else LOST)
        if says:
            self._post(Unsent(says, reason))
        return was_in


__all__ = [
    "ChatClient",
    "ConnectFailed",
    "Connecting",
    "ConnectionLost",
    "Event",
    "EventQueue",
    "HistoryLoaded",
    "IdentityChanged",
    "NameRefused",
    "PasswordNeeded",
    "PlaintextNeeded",
    "Received",
    "SearchFound",
    "ServerShutdown",
    "Stopped",
    "TransferDone",
    "TransferFailed",
    "TransferProgress",
    "TransferStarted",
    "TrustNeeded",
    "Unsent",
    "Welcomed",
    "backoff_delay",
    "describe_connect_error",
    "error_words",
    "tls_transport",
]
