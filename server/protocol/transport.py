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
that the code above it never knows which kind it has; a client that must
check the server's certificate before it sends anything drives the
handshake on its own first (``handshake``), then reads ``peer_certificate``.

``TlsTransport`` is TLS as bytes in, bytes out (``ssl.SSLObject`` over two
``ssl.MemoryBIO``): the socket stays a plain non-blocking one, read and
written here only, and the bytes a server read to tell TLS from plaintext
(the first byte of a TLS connection is 0x16) are handed back to it. It
holds at most one write's ciphertext (``TLS_WRITE_MAX`` and its records)
that the socket did not take; until that is sent, ``send`` wants to write.
This is the project's only ``import ssl``.
"""

from __future__ import annotations

import enum
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Protocol

# Plaintext a TLS ``send`` encrypts at a time: what it holds unsent when the
# socket is full stays about this big. And what a socket read takes at least.
TLS_WRITE_MAX = 64 * 1024
TLS_READ_SIZE = 64 * 1024
TLS_RECORD = 0x16  # the first byte of a TLS connection (a handshake record)
# Plaintext TLS puts in one record. A memory BIO's buffer keeps the largest
# size it ever held, so ciphertext leaves it a record at a time: otherwise
# every connection that was once sent a big frame (a welcome in a room of
# thousands) would keep a TLS_WRITE_MAX buffer for good.
TLS_RECORD_MAX = 16 * 1024


class Want(enum.Enum):
    """What a transport must wait for before the same call can make progress."""

    READ = "read"
    WRITE = "write"


class TransportClosed(Exception):
    """The connection is gone: reset, broken pipe, or a protocol failure below ours."""


class Transport(Protocol):
    """A connected, non-blocking byte stream."""

    secure: bool  # whether what goes through it is encrypted

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

    def handshake(self) -> Want | None:
        """Go on with the TLS handshake; ``None`` once it is done (at once for plain TCP)."""
        ...

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER) once the handshake is done; ``None`` for plain TCP."""
        ...

    def shutdown_write(self) -> Want | None:
        """Say we will send no more (TCP FIN; TLS close_notify first)."""
        ...

    def limit_unsent(self, limit: int) -> None:
        """Keep at most about ``limit`` bytes unsent in the OS's buffer (0: the OS's own
        default), where the OS can (``TCP_NOTSENT_LOWAT``): what is written after
        them then waits in ours, where it can still be overtaken."""
        ...

    def close(self) -> None:
        """Release the socket at once, whatever is unsent."""
        ...


_buffers = threading.local()


def _read_buffer(size: int) -> bytearray:
    """This thread's buffer for reads, at least ``size`` bytes long."""
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _buffers.buffer = bytearray(size)
    return buffer


def _receive(sock: socket.socket, max_bytes: int) -> bytes:
    """``sock.recv(max_bytes)``, read into this thread's buffer and copied out.

    A plain ``recv`` of a large size makes a bytes object that size first:
    for 256 KiB, CPython's allocator maps fresh pages (mmap), faults them
    in, shrinks them (mremap) to what arrived, and unmaps them when freed,
    three system calls and page faults for every read of a 60-byte frame.
    Reading into a buffer kept per thread costs one copy of what arrived.
    Raises what ``recv`` raises.
    """
    buffer = _read_buffer(max_bytes)
    count = sock.recv_into(buffer, max_bytes)
    return bytes(memoryview(buffer)[:count])


def _limit_unsent(sock: socket.socket, limit: int) -> None:
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux and macOS
    if option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, limit)
    except OSError:
        pass  # the peer may have reset it already; the next send will tell


class PlainTransport:
    """A ``Transport`` over a plain TCP socket, which must be non-blocking."""

    __slots__ = ("sock",)
    secure = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def limit_unsent(self, limit: int) -> None:
        _limit_unsent(self.sock, limit)

    def recv(self, max_bytes: int) -> bytes | Want:
        try:
            return _receive(self.sock, max_bytes)
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

    def handshake(self) -> Want | None:
        return None

    def peer_certificate(self) -> bytes | None:
        return None

    def shutdown_write(self) -> Want | None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc
        return None

    def close(self) -> None:
        self.sock.close()


def server_context(certificate_chain: str) -> ssl.SSLContext:
    """TLS 1.3 only, with the server's key and certificate (one PEM file)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(certificate_chain)
    # Session tickets would be bytes sent after the handshake that no
    # client of ours uses (it pins the certificate and reconnects afresh).
    context.num_tickets = 0
    return context


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, trusting no authority: the caller pins the server's certificate.

    The handshake still proves that the server holds the certificate's key;
    comparing the certificate with the pinned one is the caller's part.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # before verify_mode, which it would forbid
    context.verify_mode = ssl.CERT_NONE
    return context


def quick_send(transport: Transport) -> Callable[[bytes], int | Want]:
    """The quickest way to write to ``transport`` for a caller that handles
    anything but a whole write on the slow path: a plain socket's own
    ``send`` (which raises ``OSError`` where the transport would say
    ``Want.WRITE`` or raise ``TransportClosed``), else ``transport.send``.

    The broadcast's hot path (``IOLoop``) writes the same tail to every
    member that keeps up, and at chat rates that write is most of what a
    delivery costs: two Python calls less on it save 0.35-0.45 us of the
    2.0-2.6 us each write took on this project's 2-core machine.
    """
    if type(transport) is PlainTransport:
        return transport.sock.send
    return transport.send


class TlsTransport:
    """A ``Transport`` speaking TLS over a plain non-blocking TCP socket.

    ``received`` is what was read from the socket already (a server's
    first bytes, read to tell TLS from plaintext).
    """

    __slots__ = ("_closing", "_incoming", "_outgoing", "_tls", "_unsent", "sock")
    secure = True

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        received: bytes = b"",
    ) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._unsent = b""  # ciphertext the socket did not take yet
        self._closing = False  # our close_notify is queued: TLS is over
        if received:
            self._incoming.write(received)

    def fileno(self) -> int:
        return self.sock.fileno()

    def limit_unsent(self, limit: int) -> None:
        _limit_unsent(self.sock, limit)

    def recv(self, max_bytes: int) -> bytes | Want:
        if self._closing:
            return self._drain(max_bytes)
        while True:
            try:
                data = self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                pass  # more ciphertext is needed (the handshake, or a record's rest)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # The peer's close_notify, or its FIN without one: either way
                # it sends no more, and a cut frame is the decoder's to see.
                return b""
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS: {exc.reason or exc}") from exc
            else:
                self._send_ciphertext()  # reading may have made some (the handshake's)
                return self._more(data, max_bytes) if data else b""
            # The handshake's replies must leave before the peer can go on:
            # while the socket cannot take them, wait for room, not for input.
            if self._send_ciphertext() is Want.WRITE:
                return Want.WRITE
            if not self._read_ciphertext(max_bytes):
                return Want.READ

    def _more(self, data: bytes, max_bytes: int) -> bytes:
        """``data`` and the records already read after it, up to ``max_bytes``
        (a read returns one record, 16 KiB at most)."""
        parts = [data]
        size = len(data)
        while size < max_bytes:
            try:
                more = self._tls.read(max_bytes - size)
            except ssl.SSLError:
                break  # no whole record left, or the end: the next recv says which
            if not more:
                break
            parts.append(more)
            size += len(more)
        return data if len(parts) == 1 else b"".join(parts)

    def send(self, data: bytes | memoryview) -> int | Want:
        if self._send_ciphertext() is Want.WRITE:
            return Want.WRITE
        view = memoryview(data)
        taken = 0
        try:
            # A piece at a time, so that what the socket leaves unsent (and
            # this transport holds) stays about one piece.
            while taken < len(view):
                end = min(len(view), taken + TLS_WRITE_MAX)
                records = []
                while taken < end:
                    taken += self._tls.write(view[taken : min(end, taken + TLS_RECORD_MAX)])
                    records.append(self._outgoing.read())
                self._unsent += b"".join(records)
                if self._send_ciphertext() is Want.WRITE:
                    break
        except ssl.SSLWantReadError:
            # Still in the handshake: the peer's next flight must come first.
            return Want.WRITE if self._send_ciphertext() is Want.WRITE else Want.READ
        except ssl.SSLError as exc:
            raise TransportClosed(f"TLS: {exc.reason or exc}") from exc
        return taken

    def pending(self) -> int:
        # Decrypted bytes, and ciphertext read but not yet decrypted: the
        # selector reports neither.
        return self._tls.pending() + self._incoming.pending

    def handshake(self) -> Want | None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                if self._send_ciphertext() is Want.WRITE:
                    return Want.WRITE
                if not self._read_ciphertext():
                    return Want.READ
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS: {exc.reason or exc}") from exc
            else:
                return self._send_ciphertext()

    def peer_certificate(self) -> bytes | None:
        try:
            return self._tls.getpeercert(binary_form=True)
        except ValueError:  # the handshake is not done
            return None

    def shutdown_write(self) -> Want | None:
        if not self._closing:
            self._closing = True
            try:
                self._tls.unwrap()  # queues our close_notify
            except ssl.SSLWantReadError:
                pass  # it would wait for the peer's close_notify; our FIN follows instead
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS: {exc.reason or exc}") from exc
        if self._send_ciphertext() is Want.WRITE:
            return Want.WRITE
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc
        return None

    def close(self) -> None:
        self.sock.close()

    def _send_ciphertext(self) -> Want | None:
        """Write what TLS produced to the socket; ``Want.WRITE`` while some is left."""
        if self._outgoing.pending:
            self._unsent += self._outgoing.read()
        while self._unsent:
            try:
                sent = self.sock.send(self._unsent)
            except (BlockingIOError, InterruptedError):
                return Want.WRITE
            except OSError as exc:
                raise TransportClosed(str(exc)) from exc
            self._unsent = self._unsent[sent:]
        return None

    def _read_ciphertext(self, max_bytes: int = TLS_READ_SIZE) -> bool:
        """Move what the socket holds into TLS; ``False`` if it holds nothing yet."""
        try:
            chunk = _receive(self.sock, max(max_bytes, TLS_READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc
        if chunk:
            self._incoming.write(chunk)
        else:
            self._incoming.write_eof()
        return True

    def _drain(self, max_bytes: int) -> bytes | Want:
        """After our close_notify: the raw bytes the peer still sends (only
        to be discarded, so that they cannot make the kernel reset the
        connection), ``b""`` at its FIN."""
        try:
            return _receive(self.sock, max_bytes)
        except (BlockingIOError, InterruptedError):
            return Want.READ
        except OSError as exc:
            raise TransportClosed(str(exc)) from exc
