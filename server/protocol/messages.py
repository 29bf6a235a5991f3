"""The messages of PROTOCOL.md as frozen dataclasses, and their encoding.

``parse_message`` turns a decoded payload into one of them (or
``Unknown``), checking every field's presence and JSON type exactly;
``encode`` turns one back into frame bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple, Self

from server.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from server.protocol.framing import HEADER, MAX_SERVER_FRAME

PROTOCOL_VERSION = 1


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
    "file": lambda v: type(v) is dict,
}
_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "number": "a number",
    "names": "a list of strings",
    "file": "an object",
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
            if f.kind == "names":
                value = tuple(value)
            elif f.kind == "file":
                value = FileInfo.from_wire(value)
            values[f.attr] = value
        return cls(**values)

    def to_wire(self) -> dict[str, Any]:
        """The payload object; optional fields that are unset are left out."""
        obj: dict[str, Any] = {"type": self.TYPE}
        for f in self.FIELDS:
            value = getattr(self, f.attr)
            if f.required or (value is not None and value is not False):
                obj[f.key] = value.to_wire() if isinstance(value, Message) else value
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
    FIELDS = (_req("name", "str"), _req("protocol", "int"), _opt("password", "str"))
    name: str
    protocol: int = PROTOCOL_VERSION
    # room password extension: never in a log line or a traceback
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Say(Message):
    """``say`` (client): ``text`` to the room, or to the user ``to``; ``action`` for /me;
    ``file``, an uploaded file's id, posts that file with the text (which may then be empty)."""

    TYPE = "say"
    FIELDS = (_req("text", "str"), _opt("action", "bool"), _opt("to", "str"), _opt("file", "str"))
    text: str
    action: bool = False
    to: str | None = None
    file: str | None = None


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
        _opt("ops", "names"),  # operators extension
        # Encryption (PROTOCOL.md, "Encryption"): ``secure`` on a TLS
        # connection; ``tls_available`` in a plaintext welcome from a server
        # that could do TLS; ``insecure`` (the plaintext members, sorted like
        # ``users``) whenever the server's mode is not ``off``.
        _opt("secure", "bool"),
        _opt("tls_available", "bool"),
        _opt("insecure", "names"),
        _opt("features", "names"),  # extensions: what the server offers as configured
    )
    name: str
    users: tuple[str, ...]
    history_count: int = 0
    motd: str | None = None
    ops: tuple[str, ...] | None = None  # operators extension: the operators, sorted
    secure: bool = False
    tls_available: bool = False
    insecure: tuple[str, ...] | None = None
    features: tuple[str, ...] | None = None


class _Item(Message):
    """An object inside a frame, not a frame: its wire form has no ``type``.

    ``TYPE`` names the frame a bad field of it is blamed on.
    """

    __slots__ = ()

    def to_wire(self) -> dict[str, Any]:
        obj = Message.to_wire(self)
        del obj["type"]
        return obj


@dataclass(frozen=True, slots=True)
class FileInfo(_Item):
    """A posted file, the ``file`` of a ``message``: ``width`` and ``height`` for an
    image the server could read."""

    TYPE = "message"
    FIELDS = (
        _req("id", "str"),
        _req("name", "str"),
        _req("size", "int"),
        _req("mime", "str"),
        _req("sha256", "str"),
        _opt("width", "int"),
        _opt("height", "int"),
    )
    id: str
    name: str
    size: int
    mime: str
    sha256: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage(Message):
    """``message`` (server): message ``id`` from ``sender`` (wire ``from``) at ``ts``.

    ``action`` marks a /me, ``to`` a private message, ``history`` a replay
    sent right after ``welcome``, ``file`` a file posted with it.
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
        _opt("file", "file"),
    )
    id: int
    sender: str
    text: str
    ts: float
    action: bool = False
    to: str | None = None
    history: bool = False
    file: FileInfo | None = None


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
    FIELDS = (
        _req("name", "str"),
        _req("reason", "str"),
        _req("ts", "number"),
        _opt("by", "str"),  # operators extension: who kicked (absent for the console)
        _opt("message", "str"),  # operators extension: why, for people
    )
    name: str
    reason: str
    ts: float
    by: str | None = None
    message: str | None = None


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
    """``users`` (server): everyone in the room, sorted; ``insecure`` as in ``Welcome``."""

    TYPE = "users"
    FIELDS = (
        _req("users", "names"),
        _opt("ops", "names"),  # operators extension
        _opt("insecure", "names"),  # encryption
    )
    users: tuple[str, ...]
    ops: tuple[str, ...] | None = None  # operators extension: the operators, sorted
    insecure: tuple[str, ...] | None = None  # as in ``Welcome``


@dataclass(frozen=True, slots=True)
class Error(Message):
    """``error`` (server): ``code`` (an ``ErrorCode``), a human ``message``, and
    the ``in_reply_to`` type of the frame that caused it, when known."""

    TYPE = "error"
    FIELDS = (
        _req("code", "str"),
        _req("message", "str"),
        _opt("in_reply_to", "str"),
        # operators extension: a ban's reason and end (``banned``), when to try
        # again (``too-many-attempts``)
        _opt("reason", "str"),
        _opt("until", "number"),
        _opt("retry_after", "number"),
    )
    code: str
    message: str
    in_reply_to: str | None = None
    reason: str | None = None
    until: float | None = None
    retry_after: float | None = None

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> Error:
        """The error frame that answers ``exc``."""
        details = {f.attr: exc.details.get(f.key) for f in cls.FIELDS[3:]}
        return cls(exc.code, exc.message, exc.in_reply_to, **details)


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """``shutdown`` (server): the server is stopping; ``message`` says why."""

    TYPE = "shutdown"
    FIELDS = (_req("message", "str"),)
    message: str


# -- operators and moderation (PROTOCOL.md, "Operators and moderation") ------


@dataclass(frozen=True, slots=True)
class Op(Message):
    """``op`` (client): become an operator with the operator ``password``."""

    TYPE = "op"
    FIELDS = (_req("password", "str"),)
    password: str = field(repr=False)  # never in a log line or a traceback


@dataclass(frozen=True, slots=True)
class Kick(Message):
    """``kick`` (client, operators only): remove ``name`` from the room, for ``reason``."""

    TYPE = "kick"
    FIELDS = (_req("name", "str"), _opt("reason", "str"))
    name: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ban(Message):
    """``ban`` (client, operators only): ban a name identity, an ``address`` or
    prefix (``192.168.1.0/24``), or both, for ``duration`` seconds (absent: for ever)."""

    TYPE = "ban"
    FIELDS = (
        _opt("name", "str"),
        _opt("address", "str"),
        _opt("duration", "number"),
        _opt("reason", "str"),
    )
    name: str | None = None
    address: str | None = None
    duration: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unban(Message):
    """``unban`` (client, operators only): lift the ban ``id``."""

    TYPE = "unban"
    FIELDS = (_req("id", "int"),)
    id: int


@dataclass(frozen=True, slots=True)
class Bans(Message):
    """``bans`` (client, operators only): ask for the ``ban-list``."""

    TYPE = "bans"


@dataclass(frozen=True, slots=True)
class Whois(Message):
    """``whois`` (client, operators only): ask about the member ``name``."""

    TYPE = "whois"
    FIELDS = (_req("name", "str"),)
    name: str


@dataclass(frozen=True, slots=True)
class SendNotice(Message):
    """``notice`` (client, operators only): a server line ``text`` to everyone."""

    TYPE = "notice"
    FIELDS = (_req("text", "str"),)
    text: str


@dataclass(frozen=True, slots=True)
class OpChanged(Message):
    """``op-changed`` (server): ``name`` is (``op``) or is no longer an operator, by ``by``
    (absent: the server's console)."""

    TYPE = "op-changed"
    FIELDS = (_req("name", "str"), _req("op", "bool"), _opt("by", "str"), _req("ts", "number"))
    name: str
    op: bool
    ts: float
    by: str | None = None


@dataclass(frozen=True, slots=True)
class BanEntry(_Item):
    """One ban, an item of a ``ban-list`` (not a frame: it has no ``type``).

    ``created`` and ``expires`` are seconds since the epoch; ``expires``
    absent is for ever, ``by`` absent is the console.
    """

    TYPE = "ban-list"  # what a bad field of an item is blamed on
    FIELDS = (
        _req("id", "int"),
        _opt("name", "str"),
        _opt("address", "str"),
        _opt("reason", "str"),
        _opt("by", "str"),
        _req("created", "number"),
        _opt("expires", "number"),
    )
    id: int
    created: float
    name: str | None = None
    address: str | None = None
    reason: str | None = None
    by: str | None = None
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class BanList(Message):
    """``ban-list`` (server): every ban in force, oldest first."""

    TYPE = "ban-list"
    bans: tuple[BanEntry, ...] = ()

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Self:
        bans = obj.get("bans")
        if type(bans) is not list or not all(type(item) is dict for item in bans):
            raise _bad_field(cls.TYPE, "`bans` must be a list of objects.")
        return cls(tuple(BanEntry.from_wire(item) for item in bans))

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "bans": [entry.to_wire() for entry in self.bans]}


@dataclass(frozen=True, slots=True)
class WhoisResult(Message):
    """``whois-result`` (server): the member ``name``, connected from ``address``
    (over TLS when ``secure``) since ``since``, an operator when ``op``."""

    TYPE = "whois-result"
    FIELDS = (
        _req("name", "str"),
        _req("address", "str"),
        _req("secure", "bool"),
        _req("since", "number"),
        _req("op", "bool"),
    )
    name: str
    address: str
    secure: bool
    since: float
    op: bool


@dataclass(frozen=True, slots=True)
class Notice(Message):
    """``notice`` (server): a server line ``text`` at ``ts``, by the operator ``by``
    (absent: the server's console); no user message can look like it."""

    TYPE = "notice"
    FIELDS = (_req("text", "str"), _opt("by", "str"), _req("ts", "number"))
    text: str
    ts: float
    by: str | None = None


# -- history pages and search (PROTOCOL.md, "History pages and search") -----

DEFAULT_PAGE = 50
"""How many messages a ``history`` or ``search`` asks for when it gives no ``limit``."""
MAX_PAGE = 200
"""The most a ``history`` or ``search`` may ask for."""


@dataclass(frozen=True, slots=True)
class History(Message):
    """``history`` (client): up to ``limit`` public messages with an id below
    ``before`` (absent: the newest of all)."""

    TYPE = "history"
    FIELDS = (_opt("before", "int"), _opt("limit", "int"))
    before: int | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Search(Message):
    """``search`` (client): up to ``limit`` public messages holding every word of
    ``query``, newest first; ``before`` (an id) continues a search further back."""

    TYPE = "search"
    FIELDS = (_req("query", "str"), _opt("limit", "int"), _opt("before", "int"))
    query: str
    limit: int | None = None
    before: int | None = None


class _CarriesMessages:
    """A frame with ``messages`` (``ChatMessage`` objects) besides its ``FIELDS``."""

    __slots__ = ()
    TYPE: ClassVar[str]
    messages: tuple[ChatMessage, ...]

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> Self:
        # The mixin is no dataclass itself: mypy sees neither its super nor
        # that what comes back is one.
        head: Self = super().from_wire(obj)  # type: ignore[misc]
        items = obj.get("messages")
        if type(items) is not list or not all(type(item) is dict for item in items):
            raise _bad_field(cls.TYPE, "`messages` must be a list of objects.")
        messages = tuple(ChatMessage.from_wire(item) for item in items)
        return replace(head, messages=messages)  # type: ignore[type-var]

    def to_wire(self) -> dict[str, Any]:
        obj: dict[str, Any] = super().to_wire()  # type: ignore[misc]
        obj["messages"] = [message.to_wire() for message in self.messages]
        return obj


@dataclass(frozen=True, slots=True)
class HistoryPage(_CarriesMessages, Message):
    """``history-page`` (server): ``messages`` (marked ``history``, oldest first)
    answering a ``history`` with this ``before``; ``more``: older ones remain."""

    TYPE = "history-page"
    FIELDS = (_opt("before", "int"), _req("more", "bool"))
    before: int | None = None
    messages: tuple[ChatMessage, ...] = ()
    more: bool = False


@dataclass(frozen=True, slots=True)
class SearchResults(_CarriesMessages, Message):
    """``search-results`` (server): ``messages`` holding every word of ``query``,
    newest first; ``more``: older ones match too."""

    TYPE = "search-results"
    FIELDS = (_req("query", "str"), _req("more", "bool"))
    query: str = ""
    messages: tuple[ChatMessage, ...] = ()
    more: bool = False


# -- files and images (PROTOCOL.md, "Files and images") ----------------------

MAX_CHUNK = 32_768
"""The most bytes one ``upload-data`` carries (before base64)."""
MAX_DOWNLOAD = 262_144
"""The longest range one ``download`` asks for."""
MAX_UPLOADS = 4
"""Uploads one connection may have in progress at once."""


@dataclass(frozen=True, slots=True)
class Upload(Message):
    """``upload`` (client): start sending the file ``name`` of ``size`` bytes."""

    TYPE = "upload"
    FIELDS = (_req("name", "str"), _req("size", "int"), _opt("mime", "str"))
    name: str
    size: int
    mime: str | None = None


@dataclass(frozen=True, slots=True)
class UploadReady(Message):
    """``upload-ready`` (server): send the data of ``upload`` in chunks of at most ``chunk``."""

    TYPE = "upload-ready"
    FIELDS = (_req("upload", "int"), _req("chunk", "int"))
    upload: int
    chunk: int


@dataclass(frozen=True, slots=True)
class UploadData(Message):
    """``upload-data`` (client): base64 ``data`` of ``upload`` starting at ``offset``."""

    TYPE = "upload-data"
    FIELDS = (_req("upload", "int"), _req("offset", "int"), _req("data", "str"))
    upload: int
    offset: int
    data: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class UploadDone(Message):
    """``upload-done`` (client): all of ``upload`` is sent; its SHA-256 is ``sha256`` (hex)."""

    TYPE = "upload-done"
    FIELDS = (_req("upload", "int"), _req("sha256", "str"))
    upload: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Uploaded(Message):
    """``uploaded`` (server): ``upload`` is kept, as ``file``, ready to be posted."""

    TYPE = "uploaded"
    FIELDS = (_req("upload", "int"), _req("file", "str"))
    upload: int
    file: str


@dataclass(frozen=True, slots=True)
class Download(Message):
    """``download`` (client): ``length`` bytes of ``file`` from ``offset``."""

    TYPE = "download"
    FIELDS = (_req("file", "str"), _opt("offset", "int"), _opt("length", "int"))
    file: str
    offset: int | None = None
    length: int | None = None


@dataclass(frozen=True, slots=True)
class FileData(Message):
    """``file-data`` (server): base64 ``data`` of ``file`` from ``offset``; ``eof`` at its end."""

    TYPE = "file-data"
    FIELDS = (_req("file", "str"), _req("offset", "int"), _req("data", "str"), _req("eof", "bool"))
    file: str
    offset: int
    data: str = field(repr=False)
    eof: bool = False


@dataclass(frozen=True, slots=True)
class Unknown(Message):
    """A payload whose ``type`` the receiver does not know; ``fields`` is all of it."""

    type: str
    fields: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {**self.fields, "type": self.type}


def _table(*classes: type[Message]) -> Mapping[str, type[Message]]:
    return {cls.TYPE: cls for cls in classes}


CLIENT_MESSAGES = _table(
    Hello,
    Say,
    Rename,
    Who,
    Ping,
    Pong,
    Bye,
    # operators extension
    Op,
    Kick,
    Ban,
    Unban,
    Bans,
    Whois,
    SendNotice,
    # history pages and search
    History,
    Search,
    # files and images
    Upload,
    UploadData,
    UploadDone,
    Download,
)
"""The types a client sends, by wire ``type``."""

SERVER_MESSAGES = _table(
    Welcome,
    ChatMessage,
    Joined,
    Left,
    Renamed,
    Users,
    Error,
    Shutdown,
    Ping,
    Pong,
    # operators extension
    OpChanged,
    BanList,
    WhoisResult,
    Notice,
    # history pages and search
    HistoryPage,
    SearchResults,
    # files and images
    UploadReady,
    Uploaded,
    FileData,
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


# The encoders ``encode`` uses, made once: json.dumps with options builds a
# new encoder per call (2.5 against 1.9 us for a chat line; 0.63 against
# 0.07 us for a name, which every join in a big room encodes once).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ENCODER_ASCII = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def json_string(text: str) -> str:
    """``text`` as a JSON string, written as ``encode`` writes strings."""
    return _ENCODER.encode(text)


def compact_json(value: object) -> str:
    """``value`` as JSON the way ``encode`` writes a payload: no spaces, non-ASCII
    as itself. Raises ``ValueError`` for a NaN or infinity, ``TypeError`` for
    what JSON cannot hold."""
    return _ENCODER.encode(value)


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
            text = compact_json(obj)
            payload = _splice(text, ready).encode()
        except UnicodeEncodeError:
            # A lone surrogate (say, echoed in a ping) has no UTF-8 form; JSON's
            # \u escapes carry it faithfully.
            text = _ENCODER_ASCII.encode(obj)
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


def encode_page(page: HistoryPage | SearchResults, max_frame: int = MAX_SERVER_FRAME) -> bytes:
    """The frame carrying ``page``, without its oldest messages if all would not fit.

    A page that loses messages says ``more``, since older ones then remain.
    Raises ``LocalProtocolError`` only if not even an empty page fits.
    """
    try:
        return encode(page, max_frame)
    except LocalProtocolError as exc:
        if exc.code != "frame-too-large":
            raise
    newest_first = page.messages[::-1] if isinstance(page, HistoryPage) else page.messages
    # Each message costs its own JSON and a comma; a frame's 4 header bytes are not payload.
    room = max_frame - (len(encode(replace(page, messages=(), more=True), max_frame)) - 4)
    kept = 0
    for message in newest_first:
        room -= len(encode(message, max_frame)) - 4 + 1
        if room < 0:
            break
        kept += 1
    chosen = newest_first[:kept]
    if isinstance(page, HistoryPage):
        chosen = chosen[::-1]
    return encode(replace(page, messages=chosen, more=True), max_frame)


def _splice(text: str, ready: list[tuple[str, str]]) -> str:
    """Add fields already in JSON to the JSON object ``text`` (never empty: it has a type)."""
    if not ready:
        return text
    return text[:-1] + "".join(f",{json_string(key)}:{value}" for key, value in ready) + "}"
