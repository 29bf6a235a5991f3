"""What can go wrong on the wire, and whose fault it is.

``RemoteProtocolError`` means the peer broke the rules (its ``code`` is the
wire error code to answer with); ``LocalProtocolError`` means we tried to
send something illegal. The name and text rules (``rules``) raise
``RuleViolation``, which blames nobody: the server answers it as the
peer's fault, the client shows it to the person who typed the name.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


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
    # Extensions: encryption, the room password, operators, per-address limits.
    TLS_REQUIRED = "tls-required"
    TLS_UNAVAILABLE = "tls-unavailable"
    PASSWORD_REQUIRED = "password-required"
    PASSWORD_WRONG = "password-wrong"
    TOO_MANY_ATTEMPTS = "too-many-attempts"
    TOO_MANY_CONNECTIONS = "too-many-connections"
    THROTTLED = "throttled"
    BANNED = "banned"
    KICKED = "kicked"
    NOT_OPERATOR = "not-operator"
    OP_PASSWORD_WRONG = "op-password-wrong"
    # Files and images: none of them closes the connection.
    FILE_TOO_LARGE = "file-too-large"
    FILES_DISABLED = "files-disabled"
    UPLOAD_INVALID = "upload-invalid"
    NO_SUCH_FILE = "no-such-file"
    # Several servers, one room: this server cannot reach the room's backplane.
    ROOM_UNAVAILABLE = "room-unavailable"


# Errors after which the server closes the connection; every other error
# leaves it open for the client to try again.
FATAL_ERRORS = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.PROTOCOL_VERSION,
        ErrorCode.TIMEOUT,
        ErrorCode.SERVER_FULL,
        ErrorCode.TLS_REQUIRED,
        ErrorCode.TLS_UNAVAILABLE,
        ErrorCode.TOO_MANY_ATTEMPTS,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.THROTTLED,
        ErrorCode.BANNED,
        ErrorCode.KICKED,
        ErrorCode.ROOM_UNAVAILABLE,
    }
)

# Errors after which a client does not reconnect by itself (PROTOCOL.md,
# "Operators and moderation"): trying again would only be refused again,
# or would override what a person decided.
NO_RECONNECT_ERRORS = frozenset(
    {
        ErrorCode.KICKED,
        ErrorCode.BANNED,
        ErrorCode.TOO_MANY_ATTEMPTS,
        ErrorCode.TLS_REQUIRED,
        ErrorCode.TLS_UNAVAILABLE,
    }
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

    def __init__(
        self,
        code: str,
        message: str,
        in_reply_to: str | None = None,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_reply_to = in_reply_to
        # More fields of the error frame (``banned``'s reason and until,
        # ``retry_after``); ``None`` values are left out.
        self.details: Mapping[str, Any] = details or {}

    @property
    def fatal(self) -> bool:
        """Whether the connection must be closed after this error."""
        return self.code in FATAL_ERRORS


class RemoteProtocolError(ProtocolError):
    """The peer broke the rules (a bad frame, field, name or text)."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow."""


class RuleViolation(ProtocolError):
    """A name or a text breaks a rule of PROTOCOL.md; the caller decides whose fault it is."""
