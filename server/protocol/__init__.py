"""The chat wire protocol, version 1 (PROTOCOL.md), without any I/O.

How this works: a TCP stream carries frames, each a 4-byte big-endian
length and a UTF-8 JSON object with a string ``type``. ``FrameDecoder``
buffers whatever bytes arrive and hands back whole payload objects;
``parse_message`` turns a payload into one of the frozen dataclasses below
(or ``Unknown``); ``encode`` turns a dataclass back into frame bytes.
Nothing here touches a socket, a thread or Tk, so the server, the desktop
client and any test harness share it.

Every input from the wire is bounded before work whose cost grows
faster than its length (``MAX_NAME_INPUT``, ``MAX_NESTING``), and an error
message or log line shows one only through ``show_wire``.

Errors say whose fault they are: ``RemoteProtocolError`` means the peer
broke the rules (its ``code`` is the wire error code to answer with),
``LocalProtocolError`` means we tried to send something illegal.
"""

from __future__ import annotations

import json
import math
import re
import struct
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, Self

PROTOCOL_VERSION = 1
DEFAULT_PORT = 12345

# Frame limits. A client's largest honest frame is a `say` of 4,000 code
# points of up to 4 UTF-8 bytes each (~24 KiB if every one is escaped), so
# 64 KiB leaves room. The server's largest frame is a welcome listing a big
# room: 10,000 names of 32 code points fit in 1 MiB unless most of them use
# 4-byte characters (the room refuses a join it cannot welcome).
HEADER = struct.Struct(">I")
MAX_CLIENT_FRAME = 64 * 1024
MAX_SERVER_FRAME = 1024 * 1024

MAX_NAME_LENGTH = 32
MAX_TEXT_LENGTH = 4000

# Normalising a long run of combining marks costs time quadratic in its
# length (CPython sorts them by insertion), so a name or `to` is measured
# before it is normalised. No code point's canonical decomposition is
# longer than 4 code points (U+1F82 is one of 4), and every spelling of a
# name decomposes to that name's decomposition, never shorter than the
# spelling; so every canonically equivalent spelling of a valid name,
# fully decomposed included, is at most 4 * 32 code points. Longer input
# is refused as a name, and as a `to` it names nobody (a compatibility
# spelling, such as U+FDFA written out as its 18 letters, could be longer,
# but clients address people by the name the server gave them).
MAX_NAME_INPUT = 4 * MAX_NAME_LENGTH

# How deep arrays and objects may nest in a frame, the frame's own object
# being level 1. Our frames need 3; a ping may carry more, and this is what
# the server promises to echo. Far deeper ones would fail to encode again.
MAX_NESTING = 32

# The longest `type` an error's `in_reply_to` repeats (every type there is
# or will be is far shorter), and how much of any other wire string an
# error message or a log line shows (see ``show_wire``).
MAX_ECHOED_TYPE = 64
SHOWN_LENGTH = 40

# Server policy numbers that PROTOCOL.md fixes, shared so that clients can
# pace themselves (rate limit) and notice a dead peer (keep-alive) alike.
RATE_BURST = 20
RATE_PER_SECOND = 5.0
HANDSHAKE_TIMEOUT = 10.0
IDLE_PING_AFTER = 30.0
IDLE_TIMEOUT = 90.0
DEFAULT_HISTORY = 100
DEFAULT_MAX_QUEUE = 1024 * 1024


class ErrorCode(StrEnum):
    """The stable, machine-readable ``code`` of an ``error`` frame."""

    BAD_FRAME = "bad-frame"
    BAD_FIELD = "bad-field"
    NAME_TAKEN = "name-taken"
    NAME_INVALID = "name-invalid"
    PROTOCOL_VERSION = "protocol-version"
    NOT_JOINED = "not-joined"
    ALREADY_JOINED = "already-joined"
    TIMEOUT = "timeout"
    TEXT_INVALID = "text-invalid"
    NO_SUCH_USER = "no-such-user"
    RATE_LIMITED = "rate-limited"
    UNKNOWN_TYPE = "unknown-type"
    SERVER_FULL = "server-full"


# Errors after which the server closes the connection; every other error
# leaves it open for the client to try again.
FATAL_ERRORS = frozenset(
    {ErrorCode.BAD_FRAME, ErrorCode.PROTOCOL_VERSION, ErrorCode.TIMEOUT, ErrorCode.SERVER_FULL}
)


class LeaveReason(StrEnum):
    """Why a user left the room: the ``reason`` of a ``left`` frame."""

    QUIT = "quit"
    DISCONNECTED = "disconnected"
    TIMEOUT = "timeout"
    TOO_SLOW = "too-slow"
    ERROR = "error"
    KICKED = "kicked"


class ProtocolError(Exception):
    """A rule of the protocol was broken; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str, in_reply_to: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_reply_to = in_reply_to

    @property
    def fatal(self) -> bool:
        """Whether the connection must be closed after this error."""
        return self.code in FATAL_ERRORS


class RemoteProtocolError(ProtocolError):
    """The peer broke the rules (a bad frame, field, name or text)."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow."""


# --------------------------------------------------------------------------
# Names and text


NAME_PUNCTUATION = frozenset("_-.")

# Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt,
# the same list in Unicode 14.0 to 15.1), which
# Python's unicodedata does not offer: code points that render as nothing
# (fillers, variation selectors, joiners, tags), so that a name holding one
# would look like another name or like no name at all. Inclusive ranges.
DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, direction marks
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, isolates, deprecated formats
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors 1 to 16
    (0xFEFF, 0xFEFF),  # zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # unassigned, reserved as ignorable
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol beam and phrase controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors 17 to 256, reserved
)
_DEFAULT_IGNORABLE = re.compile(
    "[" + "".join(f"{chr(first)}-{chr(last)}" for first, last in DEFAULT_IGNORABLE_RANGES) + "]"
)


def _name_invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.NAME_INVALID, message)


def normalize_name(name: str) -> str:
    """Return ``name`` in the form the server keeps (NFC), or raise.

    Raises ``RemoteProtocolError`` with code ``name-invalid`` and a reason
    written for people when the name breaks the rules of PROTOCOL.md.
    """
    too_long = f"A name can be at most {MAX_NAME_LENGTH} characters long."
    if len(name) > MAX_NAME_INPUT:
        raise _name_invalid(too_long)  # before normalising it: see MAX_NAME_INPUT
    nfc = unicodedata.normalize("NFC", name)
    if not nfc:
        raise _name_invalid("A name cannot be empty.")
    if len(nfc) > MAX_NAME_LENGTH:
        raise _name_invalid(too_long)
    invisible = _DEFAULT_IGNORABLE.search(nfc)
    if invisible is not None:
        raise _name_invalid(
            f"A name cannot hold invisible characters (U+{ord(invisible.group()):04X})."
        )
    if unicodedata.category(nfc[0]).startswith("M"):
        raise _name_invalid("A name cannot start with a combining mark.")
    has_letter_or_digit = False
    for char in nfc:
        category = unicodedata.category(char)[0]
        if category not in "LMN" and char not in NAME_PUNCTUATION:
            shown = "a space" if char == " " else repr(char)
            raise _name_invalid(f"A name can only hold letters, digits and _ - . (not {shown}).")
        has_letter_or_digit = has_letter_or_digit or category in "LN"
    if not has_letter_or_digit:
        raise _name_invalid("A name needs at least one letter or digit.")
    return nfc


def name_identity(name: str) -> str:
    """The key under which two spellings of a name are the same name.

    Its cost grows faster than the length of ``name``: bound input from the
    wire first (``MAX_NAME_INPUT``).
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def sort_names(names: list[str]) -> list[str]:
    """Sort names the way every user list is sorted: identity, then name.

    A string longer than any spelling of a name (which no honest server
    sends) is not normalised, and sorts by itself.
    """
    return sorted(
        names, key=lambda name: (name_identity(name) if len(name) <= MAX_NAME_INPUT else name, name)
    )


def show_wire(text: str) -> str:
    """``text`` from the wire as an error message or a log line may show it.

    It is quoted, cut to ``SHOWN_LENGTH`` code points (an ellipsis and its
    length say so), and every character that could start a line, hide,
    or reorder what is around it (controls, formats, separators,
    surrogates, unassigned and default-ignorable code points) is written
    as an escape.
    """
    body = "".join(map(_shown_char, text[:SHOWN_LENGTH]))
    if len(text) > SHOWN_LENGTH:
        return f"'{body}…' ({len(text)} characters)"
    return f"'{body}'"


def _shown_char(char: str) -> str:
    if char in "'\\":
        return "\\" + char
    if char.isprintable() and not _DEFAULT_IGNORABLE.match(char):
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# Cc characters but tab and newline, and the bidi overrides and isolates:
# what the server removes from text (and the client from what it shows).
TEXT_REMOVED = dict.fromkeys(
    [c for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)]
    + [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
# A JSON escape can smuggle in a lone surrogate, which no UTF-8 peer can
# receive; the server refuses such text (the client shows U+FFFD instead).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Return message text as the server keeps it, or raise ``text-invalid``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(TEXT_REMOVED)
    if LONE_SURROGATE.search(text):
        raise RemoteProtocolError(ErrorCode.TEXT_INVALID, "The text holds invalid characters.")
    if not text or text.isspace():
        raise RemoteProtocolError(ErrorCode.TEXT_INVALID, "The message is empty.")
    if len(text) > MAX_TEXT_LENGTH:
        raise RemoteProtocolError(
            ErrorCode.TEXT_INVALID,
            f"The message is {len(text)} characters long; the limit is {MAX_TEXT_LENGTH}.",
        )
    return text


# --------------------------------------------------------------------------
# Messages


class _Field(NamedTuple):
    attr: str
    key: str  # the name on the wire (``from`` is a Python keyword)
    kind: str  # a key of _KIND_CHECKS
    required: bool


# JSON booleans are Python bools, which are ints too: every check is exact.
_KIND_CHECKS = {
    "str": lambda v: type(v) is str,
    "int": lambda v: type(v) is int,
    "bool": lambda v: type(v) is bool,
    "number": lambda v: type(v) is int or type(v) is float,
    "names": lambda v: type(v) is list and all(type(x) is str for x in v),
}
_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "number": "a number",
    "names": "a list of strings",
}


def _req(attr: str, kind: str, key: str | None = None) -> _Field:
    return _Field(attr, key or attr, kind, True)


def _opt(attr: str, kind: str) -> _Field:
    return _Field(attr, attr, kind, False)


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message; ``TYPE`` is its wire ``type``."""

    TYPE: ClassVar[str] = ""
    FIELDS: ClassVar[tuple[_Field, ...]] = ()

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Self:
        """Build the message from a decoded payload, or raise ``bad-field``."""
        values = {}
        for f in cls.FIELDS:
            value = obj.get(f.key)
            if value is None:  # an optional field whose value is null is absent
                if f.required:
                    raise _bad_field(cls.TYPE, f"`{f.key}` is missing.")
                continue
            if not _KIND_CHECKS[f.kind](value):
                raise _bad_field(cls.TYPE, f"`{f.key}` must be {_KIND_WORDS[f.kind]}.")
            values[f.attr] = tuple(value) if f.kind == "names" else value
        return cls(**values)

    def to_wire(self) -> dict[str, Any]:
        """The payload object; optional fields that are unset are left out."""
        obj: dict[str, Any] = {"type": self.TYPE}
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if f.required or (value is not None and value is not False):
                obj[f.key] = value
        return obj


def _bad_field(type_: str, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_FIELD, message, in_reply_to=type_)


@dataclass(frozen=True, slots=True)
class _Echo(Message):
    """A ping or pong; every field but ``type`` is carried in ``extra``."""

    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Self:
        return cls({k: v for k, v in obj.items() if k != "type"})

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE} | {k: v for k, v in self.extra.items() if k != "type"}


@dataclass(frozen=True, slots=True)
class Ping(_Echo):
    """``ping``: either side asks for a ``pong`` that echoes ``extra``."""

    TYPE = "ping"


@dataclass(frozen=True, slots=True)
class Pong(_Echo):
    """``pong``: the answer to a ping, echoing the ping's ``extra`` fields."""

    TYPE = "pong"


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """``hello`` (client): ask to join as ``name`` speaking ``protocol``."""

    TYPE = "hello"
    FIELDS = (_req("name", "str"), _req("protocol", "int"))
    name: str
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Say(Message):
    """``say`` (client): ``text`` to the room, or to the user ``to``; ``action`` for /me."""

    TYPE = "say"
    FIELDS = (_req("text", "str"), _opt("action", "bool"), _opt("to", "str"))
    text: str
    action: bool = False
    to: str | None = None


@dataclass(frozen=True, slots=True)
class Rename(Message):
    """``rename`` (client): change one's own name to ``name``."""

    TYPE = "rename"
    FIELDS = (_req("name", "str"),)
    name: str


@dataclass(frozen=True, slots=True)
class Who(Message):
    """``who`` (client): ask for the ``users`` list."""

    TYPE = "who"


@dataclass(frozen=True, slots=True)
class Bye(Message):
    """``bye`` (client): leave the room and close."""

    TYPE = "bye"


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """``welcome`` (server): joined as ``name``; ``history_count`` history messages follow."""

    TYPE = "welcome"
    FIELDS = (
        _req("name", "str"),
        _req("users", "names"),
        _req("history_count", "int"),
        _opt("motd", "str"),
    )
    name: str
    users: tuple[str, ...]
    history_count: int = 0
    motd: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage(Message):
    """``message`` (server): message ``id`` from ``sender`` (wire ``from``) at ``ts``.

    ``action`` marks a /me, ``to`` a private message, ``history`` a replay
    sent right after ``welcome``.
    """

    TYPE = "message"
    FIELDS = (
        _req("id", "int"),
        _req("sender", "str", key="from"),
        _req("text", "str"),
        _req("ts", "number"),
        _opt("action", "bool"),
        _opt("to", "str"),
        _opt("history", "bool"),
    )
    id: int
    sender: str
    text: str
    ts: float
    action: bool = False
    to: str | None = None
    history: bool = False


@dataclass(frozen=True, slots=True)
class Joined(Message):
    """``joined`` (server): ``name`` entered the room at ``ts``."""

    TYPE = "joined"
    FIELDS = (_req("name", "str"), _req("ts", "number"))
    name: str
    ts: float


@dataclass(frozen=True, slots=True)
class Left(Message):
    """``left`` (server): ``name`` left the room at ``ts`` for ``reason`` (a ``LeaveReason``)."""

    TYPE = "left"
    FIELDS = (_req("name", "str"), _req("reason", "str"), _req("ts", "number"))
    name: str
    reason: str
    ts: float


@dataclass(frozen=True, slots=True)
class Renamed(Message):
    """``renamed`` (server): the user ``old`` is now called ``new``."""

    TYPE = "renamed"
    FIELDS = (_req("old", "str"), _req("new", "str"), _req("ts", "number"))
    old: str
    new: str
    ts: float


@dataclass(frozen=True, slots=True)
class Users(Message):
    """``users`` (server): everyone in the room, sorted."""

    TYPE = "users"
    FIELDS = (_req("users", "names"),)
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Error(Message):
    """``error`` (server): ``code`` (an ``ErrorCode``), a human ``message``, and
    the ``in_reply_to`` type of the frame that caused it, when known."""

    TYPE = "error"
    FIELDS = (_req("code", "str"), _req("message", "str"), _opt("in_reply_to", "str"))
    code: str
    message: str
    in_reply_to: str | None = None

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> Error:
        """The error frame that answers ``exc``."""
        return cls(exc.code, exc.message, exc.in_reply_to)


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """``shutdown`` (server): the server is stopping; ``message`` says why."""

    TYPE = "shutdown"
    FIELDS = (_req("message", "str"),)
    message: str


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    """A payload whose ``type`` the receiver does not know; ``fields`` is all of it."""

    type: str
    fields: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {**self.fields, "type": self.type}


def _table(*classes: type[Message]) -> Mapping[str, type[Message]]:
    return {cls.TYPE: cls for cls in classes}


CLIENT_MESSAGES = _table(Hello, Say, Rename, Who, Ping, Pong, Bye)
"""The types a client sends, by wire ``type``."""

SERVER_MESSAGES = _table(
    Welcome, ChatMessage, Joined, Left, Renamed, Users, Error, Shutdown, Ping, Pong
)
"""The types the server sends, by wire ``type``."""


def parse_message(payload: Mapping[str, Any], table: Mapping[str, type[Message]]) -> Message:
    """Turn a decoded payload into a message from ``table`` (or ``Unknown``).

    Raises ``RemoteProtocolError`` code ``bad-field`` (not fatal) when a
    known type has a missing or mistyped field.
    """
    cls = table.get(payload["type"])
    if cls is None:
        return Unknown(payload["type"], payload)
    return cls.from_wire(payload)


# --------------------------------------------------------------------------
# Framing


class NameList(tuple[str, ...]):
    """Names (a tuple) with their JSON array text kept beside them.

    ``encode`` writes ``json`` as it is rather than encoding the names
    again: the room's user list goes into every ``welcome``, and in a room
    of thousands, encoding it afresh for each join would cost more than
    the rest of the join. ``items`` holds each name already as a JSON
    string (``json_string``), in the same order as ``names``.
    """

    json: str

    def __new__(cls, names: Iterable[str], items: Iterable[str]) -> Self:
        self = super().__new__(cls, names)
        self.json = "[" + ",".join(items) + "]"
        return self


def json_string(text: str) -> str:
    """``text`` as a JSON string, written as ``encode`` writes strings."""
    return json.dumps(text, ensure_ascii=False)


def encode(message: Message, max_frame: int = MAX_SERVER_FRAME) -> bytes:
    """The frame (length prefix and payload) that carries ``message``.

    Raises ``LocalProtocolError`` when the payload would exceed ``max_frame``.
    """
    obj = message.to_wire()
    ready = [(key, value.json) for key, value in obj.items() if isinstance(value, NameList)]
    for key, _ in ready:
        del obj[key]
    try:
        try:
            text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            payload = _splice(text, ready).encode()
        except UnicodeEncodeError:
            # A lone surrogate (say, echoed in a ping) has no UTF-8 form; JSON's
            # \u escapes carry it faithfully.
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
            payload = _splice(text, ready).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        # Not the message itself in the text: it may be a large echo.
        raise LocalProtocolError(
            "bad-message", f"Cannot encode a {message.TYPE or 'message'} frame: {exc}"
        ) from exc
    if len(payload) > max_frame:
        raise LocalProtocolError(
            "frame-too-large",
            f"A {message.TYPE} frame of {len(payload)} bytes exceeds {max_frame}.",
        )
    return HEADER.pack(len(payload)) + payload


def _splice(text: str, ready: list[tuple[str, str]]) -> str:
    """Add fields already in JSON to the JSON object ``text`` (never empty: it has a type)."""
    if not ready:
        return text
    return text[:-1] + "".join(f",{json_string(key)}:{value}" for key, value in ready) + "}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 is valid JSON, but as a float it is infinity, which no JSON
    # encoder may send back (a ping's echo, say).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode one frame's payload bytes into a JSON object with a string ``type``.

    Raises ``RemoteProtocolError`` code ``bad-frame`` when it is not one.
    """
    try:
        obj = json.loads(
            payload.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "The frame is not UTF-8.") from None
    except (ValueError, RecursionError):
        # ValueError covers malformed JSON and over-long integers;
        # RecursionError, arrays nested thousands deep.
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "The frame is not valid JSON.") from None
    if type(obj) is not dict:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "The frame is not a JSON object.")
    if type(obj.get("type")) is not str:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "The frame has no string `type`.")
    # Counting brackets, those inside strings too, bounds the depth for
    # next to nothing; only a frame with many of them is walked.
    if payload.count(b"[") + payload.count(b"{") > MAX_NESTING and _nests_deeper(obj, MAX_NESTING):
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"The frame nests deeper than {MAX_NESTING} levels."
        )
    return obj


def _nests_deeper(obj: dict[str, Any], limit: int) -> bool:
    """Whether arrays and objects in ``obj`` nest more than ``limit`` levels
    (``obj`` is level 1). A walk level by level, not a recursion."""
    level: list[Any] = [obj]
    for _ in range(limit):
        level = [
            child
            for value in level
            for child in (value.values() if type(value) is dict else value)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


class FrameDecoder:
    """Reassembles frames from a byte stream split anywhere.

    Feed bytes with ``receive_data``; call ``next_payload`` until it returns
    ``None`` (more data needed). A broken frame raises
    ``RemoteProtocolError`` (code ``bad-frame``); the stream cannot be
    resynchronised after that, so every later call raises it again.
    """

    # Consumed bytes are dropped from the front of the buffer in bulk, not
    # per frame, so many small frames in one read cost one memmove.
    _COMPACT_AT = 64 * 1024

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Add bytes that arrived from the peer."""
        if self._pos >= self._COMPACT_AT:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_payload(self) -> dict[str, Any] | None:
        """The next whole payload object, or ``None`` until more data arrives."""
        if self._error is not None:
            raise self._error
        start = self._pos
        if len(self._buffer) - start < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buffer, start)
        if not 1 <= length <= self.max_frame:
            self._error = RemoteProtocolError(
                ErrorCode.BAD_FRAME,
                f"A frame must be 1 to {self.max_frame} bytes long, not {length}.",
            )
            raise self._error
        end = start + HEADER.size + length
        if len(self._buffer) < end:
            return None
        self._pos = end
        try:
            return decode_payload(bytes(self._buffer[start + HEADER.size : end]))
        except RemoteProtocolError as exc:
            self._error = exc
            raise
