"""The chat wire protocol, version 1 (PROTOCOL.md), without any I/O of its own.

How this works: a TCP stream carries frames, each a 4-byte big-endian
length and a UTF-8 JSON object with a string ``type`` (``framing``).
``parse_message`` turns a payload into one of the frozen dataclasses of
``messages`` (or ``Unknown``); ``encode`` turns a dataclass back into frame
bytes. ``rules`` holds what makes a name or a text valid, ``errors`` what
can go wrong and whose fault it is, and ``transport`` the one vocabulary in
which both sides read and write a socket. Nothing here starts a thread or
touches Tk, and nothing imports the rest of the server: this package is
all of the server that the desktop client carries.

Everything the two sides share is importable from here; policy (rate
limits, timeouts, queue sizes) is the server's own (``server.config``).
"""

from __future__ import annotations

from server.protocol.errors import (
    FATAL_ERRORS,
    NO_RECONNECT_ERRORS,
    ErrorCode,
    LeaveReason,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RuleViolation,
)
from server.protocol.framing import (
    HEADER,
    MAX_CLIENT_FRAME,
    MAX_NESTING,
    MAX_SERVER_FRAME,
    FrameDecoder,
    decode_payload,
)
from server.protocol.messages import (
    CLIENT_MESSAGES,
    PROTOCOL_VERSION,
    SERVER_MESSAGES,
    Bye,
    ChatMessage,
    Error,
    Hello,
    Joined,
    Left,
    Message,
    NameList,
    Ping,
    Pong,
    Rename,
    Renamed,
    Say,
    Shutdown,
    Unknown,
    Users,
    Welcome,
    Who,
    encode,
    json_string,
    parse_message,
)
from server.protocol.rules import (
    DEFAULT_IGNORABLE_RANGES,
    LONE_SURROGATE,
    MAX_ECHOED_TYPE,
    MAX_NAME_INPUT,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    NAME_PUNCTUATION,
    SHOWN_LENGTH,
    TEXT_REMOVED,
    clean_text,
    name_identity,
    normalize_name,
    show_wire,
    sort_names,
)

DEFAULT_PORT = 12345

__all__ = [
    "CLIENT_MESSAGES",
    "DEFAULT_IGNORABLE_RANGES",
    "DEFAULT_PORT",
    "FATAL_ERRORS",
    "HEADER",
    "LONE_SURROGATE",
    "MAX_CLIENT_FRAME",
    "MAX_ECHOED_TYPE",
    "MAX_NAME_INPUT",
    "MAX_NAME_LENGTH",
    "MAX_NESTING",
    "MAX_SERVER_FRAME",
    "MAX_TEXT_LENGTH",
    "NAME_PUNCTUATION",
    "NO_RECONNECT_ERRORS",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGES",
    "SHOWN_LENGTH",
    "TEXT_REMOVED",
    "Bye",
    "ChatMessage",
    "Error",
    "ErrorCode",
    "FrameDecoder",
    "Hello",
    "Joined",
    "LeaveReason",
    "Left",
    "LocalProtocolError",
    "Message",
    "NameList",
    "Ping",
    "Pong",
    "ProtocolError",
    "RemoteProtocolError",
    "Rename",
    "Renamed",
    "RuleViolation",
    "Say",
    "Shutdown",
    "Unknown",
    "Users",
    "Welcome",
    "Who",
    "clean_text",
    "decode_payload",
    "encode",
    "json_string",
    "name_identity",
    "normalize_name",
    "parse_message",
    "show_wire",
    "sort_names",
]
