"""Frames on a TCP stream: a 4-byte big-endian length, then a UTF-8 JSON object.

``FrameDecoder`` buffers whatever bytes arrive and hands back whole payload
objects, each bounded in length and in nesting (``MAX_NESTING``) before
any work whose cost grows faster than that.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from server.protocol.errors import ErrorCode, RemoteProtocolError

# Frame limits. A client's largest honest frame is a `say` of 4,000 code
# points of up to 4 UTF-8 bytes each (~24 KiB if every one is escaped), so
# 64 KiB leaves room. The server's largest frame is a welcome listing a big
# room: 10,000 names of 32 code points fit in 1 MiB unless most of them use
# 4-byte characters (the room refuses a join it cannot welcome).
HEADER = struct.Struct(">I")
MAX_CLIENT_FRAME = 64 * 1024
MAX_SERVER_FRAME = 1024 * 1024

# How deep arrays and objects may nest in a frame, the frame's own object
# being level 1. Our frames need 3; a ping may carry more, and this is what
# the server promises to echo. Far deeper ones would fail to encode again.
MAX_NESTING = 32


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e999 is valid JSON, but as a float it is infinity, which no JSON
    # encoder may send back (a ping's echo, say).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


# One decoder for every frame: json.loads with options builds a new one per
# call, which cost more than decoding a chat line does (1.8 against 0.7 us).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode one frame's payload bytes into a JSON object with a string ``type``.

    Raises ``RemoteProtocolError`` code ``bad-frame`` when it is not one.
    """
    try:
        obj = _DECODER.decode(payload.decode("utf-8"))
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
