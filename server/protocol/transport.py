"""Bytes in and out of a connected non-blocking socket, in one vocabulary for
plain TCP and (later) TLS. Both the server and the client read and write
through it.

How this works: ``recv`` and ``send`` never block and never raise for what
is normal on a non-blocking socket. Instead of bytes (or a count) they
answer ``Want.READ`` or ``Want.WRITE``: try again once the socket is
readable, or writable. ``recv`` answers ``b""`` when the peer closed its
side cleanly; both raise ``TransportClosed`` when the connection is gone
(reset, broken pipe, and for TLS a bad record or alert).

The answer names the event to wait for, rather than saying only "would
block", because TLS needs both kinds: a read can wait for room to write
(a handshake step) and a write for input. A plain socket only ever wants
to read when reading and to write when writing. And TLS may already hold
decrypted bytes that the selector will never report: ``pending`` says how
many, and a reader reads again, without waiting, while it is not zero.
A TLS transport does its handshake inside its first reads and writes, so
that the code above it never knows which kind it has.
"""

from __future__ import annotations

import enum
import socket
from typing import Protocol


class Want(enum.Enum):
    """What a transport must wait for before the same call can make progress."""

    READ = "read"
    WRITE = "write"


class TransportClosed(Exception):
    """The connection is gone: reset, broken pipe, or a protocol failure below ours."""


class Transport(Protocol):
    """A connected, non-blocking byte stream."""

    def fileno(self) -> int:
        """The socket's descriptor, for a selector (``-1`` once closed)."""
        ...

    def recv(self, max_bytes: int) -> bytes | Want:
        """Up to ``max_bytes`` received; ``b""``: the peer closed its side."""
        ...

    def send(self, data: bytes | memoryview) -> int | Want:
        """Write what the socket takes now; the count may be short."""
        ...

    def pending(self) -> int:
        """Bytes held already, to be read without waiting for the socket."""
        ...

    def shutdown_write(self) -> Want | None:
        """Say we will send no more (TCP FIN; TLS close_notify first)."""
        ...

    def close(self) -> None:
        """Release the socket at once, whatever is unsent."""
        ...


class PlainTransport:
    """A ``Transport`` over a plain TCP socket, which must be non-blocking."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, max_bytes: int) -> bytes | Want:
        try:
            return self.sock.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            return Want.READ
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc

    def send(self, data: bytes | memoryview) -> int | Want:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return Want.WRITE
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc

    def pending(self) -> int:
        return 0

    def shutdown_write(self) -> Want | None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc
        return None

    def close(self) -> None:
        self.sock.close()
