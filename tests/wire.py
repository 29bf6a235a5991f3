"""A deliberately independent client side of PROTOCOL.md for tests.

It shares no code with ``server.protocol`` (a bug there would otherwise be
mirrored here and go unseen): frames are built with ``struct`` and ``json``
directly. Every wait is bounded by a timeout.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

DEFAULT_TIMEOUT = 5.0


def frame(obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    """One TCP connection to the server, speaking the protocol by hand."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self._buffer = b""
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(frame(obj))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame from the server in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError as exc:
            raise Closed("reset by the server") from exc
        except TimeoutError as exc:
            raise TimeoutError("no frame from the server in time") from exc
        if not data:
            self.eof = True
            raise Closed("closed by the server")
        self._buffer += data

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame's payload; raises TimeoutError or Closed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self._buffer) >= 4:
                (length,) = struct.unpack(">I", self._buffer[:4])
                assert 1 <= length <= 1 << 20, f"server sent a frame of {length} bytes"
                if len(self._buffer) >= 4 + length:
                    payload = self._buffer[4 : 4 + length]
                    self._buffer = self._buffer[4 + length :]
                    obj = json.loads(payload.decode("utf-8"))
                    assert isinstance(obj, dict) and isinstance(obj.get("type"), str), obj
                    return obj
            self._fill(deadline)

    def expect(self, type_: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """The next frame, which must be of ``type_`` and have ``fields``."""
        obj = self.recv(timeout)
        assert obj["type"] == type_, f"expected {type_}, got {obj}"
        for key, value in fields.items():
            assert obj.get(key) == value, f"expected {key}={value!r} in {obj}"
        return obj

    def expect_error(self, code: str, in_reply_to: str | None = None) -> dict[str, Any]:
        obj = self.expect("error", code=code)
        assert isinstance(obj.get("message"), str) and obj["message"], obj
        if in_reply_to is not None:
            assert obj.get("in_reply_to") == in_reply_to, obj
        return obj

    def skip_until(self, type_: str, timeout: float | None = None) -> dict[str, Any]:
        """Read frames until one of ``type_`` (within the timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            obj = self.recv(max(0.0, deadline - time.monotonic()))
            if obj["type"] == type_:
                return obj

    def expect_closed(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Read until the server closes; return the frames that came before."""
        frames = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                frames.append(self.recv(max(0.0, deadline - time.monotonic())))
            except Closed:
                return frames

    def expect_silence(self, seconds: float = 0.3) -> None:
        """Nothing arrives for ``seconds``."""
        try:
            obj = self.recv(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {obj}")

    def join(self, name: str) -> dict[str, Any]:
        """hello, then welcome and its history; returns the welcome."""
        self.send({"type": "hello", "name": name, "protocol": 1})
        welcome = self.expect("welcome")
        self.history = [
            self.expect("message", history=True) for _ in range(welcome["history_count"])
        ]
        return welcome
