"""One client's socket: bytes in to its session, owed bytes out to the peer.

How this works: a ``Connection`` belongs to one I/O thread (its ``Loop``),
which calls ``on_readable``, ``on_writable``, ``serve_input``, ``flush`` and
``check_timers``; no other thread touches it but through ``notify``. It
reads and writes only through a ``Transport`` (plain TCP or TLS), whose
calls answer ``Want.READ`` or ``Want.WRITE`` instead of blocking: a read
may have to wait for room to write and a write for input (TLS), so the
connection remembers which of its calls waits for which event, and the
transport may hold input the selector will not report (``pending``). It is
the room's ``Member``: the room sets its ``name`` and queues into its
``outbox``. What a client's frames mean is its ``Session``'s business
(``server.session``): this class feeds it payloads and carries out the
closes it asks for (``Link``).

Input is served in bounded helpings, so that a busy client costs the
others milliseconds: one read of at most ``RECV_SIZE``, then at most
``FRAMES_PER_PASS`` frames per pass of the loop. Whole frames left in the
decoder wait for the next pass (the loop keeps such connections in a set
and does not sleep while it is not empty), and the transport is not read
again until they are handled, so the decoder holds at most one read. A
client that sends requests faster than it reads the replies is not
dropped: while the replies it is owed exceed ``1/REPLY_PAUSE_SHARE`` of
the room's bound, its input is not served or read (TCP then slows the
client down), until they drain below it again.

``flush`` pulls owed bytes from the room, ``SEND_CHUNK`` at a time, and
writes them without blocking; if the peer stops reading and its backlog
(what the room holds plus what the transport did not take) passes the
room's bound, it is dropped as ``too-slow`` at once.

Downloads (PROTOCOL.md, "Files and images") go in a lane of their own:
``file-data`` frames the session's transfers read for it. ``flush`` writes
one only when the room holds nothing for the connection, asks the room
again after each, and writes at most ``FILE_DATA_PER_FLUSH`` bytes of them
per flush, the rest when the loop's pass has done everything else
(``Loop.flush_later``); they never count towards the slow-reader bound.
So a chat frame waits behind one ``file-data`` frame at most, and however
many people download, every connection's chat goes first.

A connection starts plaintext and its first read decides (PROTOCOL.md,
"Encryption"): a first byte of 0x16 starts a TLS handshake, so the socket
is handed, with what was read, to a ``TlsTransport``, which does the
handshake inside the reads that follow, never waiting for the peer;
anything else is the plaintext protocol. A mode that does not serve the
kind chosen answers one plaintext error (``tls-unavailable``,
``tls-required``) and closes. The handshake counts toward the session's
welcome deadline like any other silence before ``hello``.

Closing is graceful where it can be: the last frames (an error, a
shutdown) are written, our side is shut down, and the peer gets up to
``CLOSE_GRACE`` seconds to close its side, so that its unread input does
not make the kernel reset the connection and destroy those frames.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from server.config import ServerConfig, TlsMode
from server.fanout import Outbox
from server.protocol import (
    MAX_CLIENT_FRAME,
    ErrorCode,
    FrameDecoder,
    LeaveReason,
    RemoteProtocolError,
)
from server.protocol.transport import (
    TLS_RECORD,
    PlainTransport,
    TlsTransport,
    Transport,
    TransportClosed,
    Want,
    quick_send,
)
from server.room import Room
from server.session import Session, State

if TYPE_CHECKING:
    from ssl import SSLContext

    from server.history import HistoryService
    from server.transfers import FileService

logger = logging.getLogger("server")

RECV_SIZE = 256 * 1024  # bytes read per pass at most
FRAMES_PER_PASS = 64  # frames handled per pass at most
REPLY_PAUSE_SHARE = 4  # input pauses while replies owed exceed max_queue / this
SEND_CHUNK = 256 * 1024
CLOSE_GRACE = 2.0  # seconds a closing peer gets to read its last frames
FILE_DATA_PER_FLUSH = 256 * 1024  # bytes of downloads written per pass at most
# While a connection downloads, the OS holds at most this much unsent for it:
# the rest of a download waits here, where a chat frame can still overtake it.
DOWNLOAD_UNSENT = 128 * 1024


class Loop(Protocol):
    """What a connection needs of the thread that serves it (a fake one will do in tests)."""

    def watch(self, conn: Connection, *, read: bool, write: bool) -> None:
        """Have the selector report ``conn``'s transport readable, writable, both or neither."""

    def wait_input(self, conn: Connection, waiting: bool) -> None:
        """Serve ``conn``'s input on every pass (``waiting``) or no longer."""

    def mark_dirty(self, conn: Connection) -> None:
        """``conn`` has frames of its own waiting: flush it soon. Any thread."""

    def discard(self, conn: Connection) -> None:
        """``conn`` is closing its transport: forget it."""

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop's thread. Any thread."""

    def flush_later(self, conn: Connection) -> None:
        """Flush ``conn`` once the loop's pass has done everything else. Its thread only."""


def format_address(address: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


class Connection:
    """One client's transport and its place in the room. Owned by one loop thread."""

    __slots__ = (
        "_close_deadline",
        "_downloading",
        "_eof_sent",
        "_file_data",
        "_input_waiting",
        "_pause_at",
        "_paused",
        "_peer_closed",
        "_read_wants_write",
        "_sniffing",
        "_tls",
        "_unsent",
        "_unsent_counted",
        "_waiting_to_write",
        "_watching_writes",
        "_write_wants_read",
        "decoder",
        "loop",
        "name",
        "outbox",
        "room",
        "secure",
        "send_now",
        "session",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        address: Any,
        loop: Loop,
        room: Room,
        config: ServerConfig,
        *,
        tls: SSLContext | None = None,
        history: HistoryService | None = None,
        files: FileService | None = None,
    ) -> None:
        self.transport = transport
        self.send_now = quick_send(transport)
        self.loop = loop
        self.room = room
        self.name: str | None = None  # set by the room
        self.secure = False  # set once the first byte chose TLS
        # A plain socket's first read tells TLS from plaintext; ``tls`` is
        # the server's context, None where it does not serve TLS.
        self._sniffing = isinstance(transport, PlainTransport)
        self._tls = tls
        self.outbox = Outbox()
        self._file_data: deque[bytes] = deque()  # downloads' frames, after the chat's
        self._downloading = False  # download frames were queued since the lane was empty
        self.decoder = FrameDecoder(MAX_CLIENT_FRAME)
        self.session = Session(
            room,
            config,
            self,
            self,
            peer=format_address(address),
            now=time.monotonic(),
            history=history,
            files=files,
        )
        self._unsent = memoryview(b"")
        self._unsent_counted = 0  # of _unsent, bytes that count towards the room's bound
        self._input_waiting = False  # whole frames may be buffered: the loop serves them
        self._paused = False  # replies owed exceed _pause_at: input is not served
        self._pause_at = config.max_queue // REPLY_PAUSE_SHARE
        self._waiting_to_write = False  # the transport took not all: wait for it
        self._watching_writes = False  # the selector watches for room to write
        self._read_wants_write = False  # the last read waits for room to write
        self._write_wants_read = False  # the last write (or FIN) waits for input
        self._close_deadline = 0.0
        self._eof_sent = False
        self._peer_closed = False

    def __repr__(self) -> str:
        return f"<Connection {self.who} {self.state.value}>"

    @property
    def who(self) -> str:
        """The peer as a log line names it."""
        return self.session.who

    @property
    def state(self) -> State:
        return self.session.state

    # -- called by the room, from any thread --------------------------------

    def notify(self) -> None:
        """Frames for this connection alone are waiting: flush soon. Any thread."""
        self.loop.mark_dirty(self)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on this connection's thread (a kick). Any thread."""
        self.loop.call_soon(callback)

    def resume_input(self) -> None:
        """The session's question is answered: serve what waits, then read again."""
        if self.session.state is not State.JOINED and self.session.state is not State.GREETING:
            return  # a greeting one waited for a shared room's answer to its hello
        if not self._paused:  # otherwise flush serves it once the replies drain
            self.session.resume(time.monotonic())
            self._set_input_waiting(True)
        self._update_events()

    def send_file_data(self, frames: list[bytes]) -> None:
        """Queue download frames, written when the room holds nothing for this peer."""
        if self.session.state is not State.JOINED:
            return  # closing: its last chat frames only
        if not self._downloading:
            self._downloading = True
            self.transport.limit_unsent(DOWNLOAD_UNSENT)
        self._file_data.extend(frames)
        self.loop.mark_dirty(self)

    def file_data_queued(self) -> int:
        """Download frames not yet written."""
        return len(self._file_data)

    # -- events from the loop ----------------------------------------------

    def on_readable(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._waiting_to_write = False
            self.flush()
        self._read()

    def on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            self._read()
        self._waiting_to_write = False
        self.flush()

    def _read(self) -> None:
        """One read, unless what the last one brought is still to be handled."""
        session = self.session
        if self._input_waiting or self._paused or session.waiting or session.state is State.CLOSED:
            return
        try:
            data = self.transport.recv(RECV_SIZE)
        except TransportClosed as exc:
            logger.debug("%s: receive failed: %s", self.who, exc)
            self.session.abort(LeaveReason.DISCONNECTED)
            return
        if data is Want.READ:
            return
        if data is Want.WRITE:
            self._read_wants_write = True
            self._update_events()
            return
        if not data:
            self._on_peer_closed()
            return
        if self.session.state is State.CLOSING:
            return  # closing: input is read only so that it is not reset
        if self._sniffing:
            self._sniffing = False
            if not self._is_plaintext(data):
                return
        self.decoder.receive_data(data)
        self._set_input_waiting(True)

    def _is_plaintext(self, first: bytes) -> bool:
        """Tell TLS from plaintext by the first bytes read; ``False`` when they
        are not for the decoder (TLS took them, or the mode refused them)."""
        config = self.session.config
        if first[0] != TLS_RECORD:
            if config.tls is TlsMode.REQUIRED:
                self.refuse(
                    RemoteProtocolError(
                        ErrorCode.TLS_REQUIRED,
                        "This server accepts only encrypted (TLS) connections.",
                    )
                )
                return False
            return True
        if self._tls is None or config.tls is TlsMode.OFF:
            self.refuse(
                RemoteProtocolError(
                    ErrorCode.TLS_UNAVAILABLE,
                    "This server does not offer encryption (TLS); connect without it.",
                )
            )
            return False
        assert isinstance(self.transport, PlainTransport)
        # Same socket, so the selector's registration (by descriptor) holds.
        self.transport = TlsTransport(
            self.transport.sock, self._tls, server_side=True, received=first
        )
        self.send_now = quick_send(self.transport)
        self.secure = True
        self._read()  # the ClientHello read: answer it now
        return False

    def serve_input(self) -> None:
        """Handle up to ``FRAMES_PER_PASS`` of the whole frames received.

        The loop calls it once per pass while input waits (``_input_waiting``).
        """
        session = self.session
        if session.state is not State.GREETING and session.state is not State.JOINED:
            return  # closed by what the loop served before it in this pass
        if session.waiting:  # replies drained, but its question is still out
            self._set_input_waiting(False)
            self._update_events()
            return
        now = time.monotonic()
        for _ in range(FRAMES_PER_PASS):
            try:
                payload = self.decoder.next_payload()
            except RemoteProtocolError as exc:
                session.fail(exc, LeaveReason.ERROR)
                return
            if payload is None:
                self._set_input_waiting(False)
                if self.transport.pending():
                    self._read()  # held by the transport: the selector will not tell
                self._update_events()
                return
            session.receive(payload, now)
            if session.state is not State.GREETING and session.state is not State.JOINED:
                return  # closing stopped serving input
            if session.waiting:
                # One question at a time: the rest waits in the decoder (at
                # most one read) and the socket is not read until it is answered.
                session.pause(now)
                self._set_input_waiting(False)
                self._update_events()
                return
            if self.outbox.replies > self._pause_at:
                self._paused = True
                session.pause(now)
                self._set_input_waiting(False)
                self._update_events()
                return
        self._update_events()  # more may wait: read no more until it is handled

    def _set_input_waiting(self, waiting: bool) -> None:
        self._input_waiting = waiting
        self.loop.wait_input(self, waiting)

    def _on_peer_closed(self) -> None:
        """The peer sent its FIN. It may still be reading (a half-close), so
        what it is owed is still written before the connection is closed."""
        self._peer_closed = True
        if self.session.state is not State.CLOSING:
            self.session.close(LeaveReason.DISCONNECTED)
        elif not self._waiting_to_write:
            self.session.abort(None)
        if self.session.state is not State.CLOSED:
            self._watch_writes(True)  # and no longer read: EOF stays readable

    def flush(self) -> None:
        """Write what the room holds for this peer, as far as the transport takes it."""
        if self.session.state is State.CLOSED:
            return
        if self._waiting_to_write:
            # The transport is full; only watch that the backlog stays bounded.
            if self.room.overrun(self, self._unsent_owed()):
                self._drop_too_slow()
            return
        more = True  # the room may hold more for this peer
        downloads = FILE_DATA_PER_FLUSH
        while True:
            if not self._unsent:
                pulled = self._pull() if more else 0
                if pulled is None:
                    self._drop_too_slow()
                    return
                if pulled:
                    # A short chunk emptied the outbox; whatever is queued after
                    # this pull comes with a new flush request.
                    more = pulled >= SEND_CHUNK
                elif self._file_data and downloads > 0:
                    frame = self._file_data.popleft()
                    downloads -= len(frame)
                    self._unsent = memoryview(frame)
                    self._unsent_counted = 0  # downloads never count towards the bound
                    more = True  # chat queued meanwhile goes before the next one
                else:
                    break
            try:
                sent = self.transport.send(self._unsent)
            except TransportClosed as exc:
                logger.debug("%s: send failed: %s", self.who, exc)
                self.session.abort(LeaveReason.DISCONNECTED)
                return
            if isinstance(sent, Want):
                self._wait_to_write(sent)
            else:
                self._unsent = self._unsent[sent:]
                if not self._unsent:
                    continue
                self._wait_to_write(Want.WRITE)
            if self.room.overrun(self, self._unsent_owed()):
                self._drop_too_slow()
            return
        if self._watching_writes:
            self._watch_writes(False)
        if self._downloading:
            if self._file_data:
                if downloads <= 0:  # the rest after everyone else's input and chat
                    self.loop.flush_later(self)
            else:
                self._downloading = False
                self.transport.limit_unsent(0)
            self.session.file_data_sent()  # which may queue more, downloading again
        # What a hold keeps back is still owed: it is flushed once shown.
        if self.session.state is State.CLOSING and not self.room.owes(self):
            self._finish_close()

    @property
    def keeps_up(self) -> bool:
        """Whether a broadcast may be written straight to it (``send_now``):
        joined, nothing unsent or waiting to be written, no download, input
        not paused. The others are flushed."""
        return (
            not self._unsent
            and not self._waiting_to_write
            and not self._watching_writes
            and not self._downloading
            and not self._paused
            and self.session.state is State.JOINED
        )

    def send_tail(self, data: bytes, sent: int | Want) -> None:
        """Leave what ``send_now`` did not write of ``data`` (the log's tail the
        room owed it, ``Room.pull_tails``) waiting, as ``flush`` would have.
        ``sent`` is what it wrote, or said; 0 if it raised, and then this
        writes again to learn why."""
        if sent == 0:
            try:
                sent = self.transport.send(data)
            except TransportClosed as exc:
                logger.debug("%s: send failed: %s", self.who, exc)
                self.session.abort(LeaveReason.DISCONNECTED)
                return
        if not isinstance(sent, Want):
            if sent == len(data):
                return
            self._unsent = memoryview(data)[sent:]
            sent = Want.WRITE
        else:
            self._unsent = memoryview(data)
        self._unsent_counted = len(self._unsent)  # log bytes: all of them count
        self._wait_to_write(sent)
        if self.room.overrun(self, self._unsent_owed()):
            self._drop_too_slow()

    def _pull(self) -> int | None:
        """Take what the room holds for this peer into ``_unsent``: how many
        bytes (0: nothing), or ``None`` when it is too slow to keep."""
        replies = self.outbox.replies
        chunk = self.room.pull(self, SEND_CHUNK)
        if chunk is None:
            return None
        if self._paused and self.outbox.replies <= self._pause_at:
            self._paused = False
            self.session.resume(time.monotonic())
            self._set_input_waiting(True)  # what is buffered first, then read
        self._unsent = memoryview(chunk)
        # Only this thread takes replies, so the drop is what this took.
        self._unsent_counted = len(chunk) - (replies - self.outbox.replies)
        return len(chunk)

    def _wait_to_write(self, want: Want) -> None:
        """The transport takes no more for now: write again on ``want``'s event."""
        self._waiting_to_write = True
        if want is Want.WRITE:
            self._watch_writes(True)
        elif self._peer_closed:
            self.session.abort(LeaveReason.DISCONNECTED)  # no input will come to unblock it
        elif self.session.state is State.CLOSING:
            # Only a TLS handshake the peer has not finished makes a write wait
            # for input: its last frames (a timeout) cannot reach it; end it now.
            self.session.abort(None)
        else:
            self._write_wants_read = True
            self._update_events()

    def _unsent_owed(self) -> int:
        """An upper bound of the unsent bytes that count towards the room's bound."""
        return min(self._unsent_counted, len(self._unsent))

    def _watch_writes(self, wanted: bool) -> None:
        self._watching_writes = wanted
        self._update_events()

    def _update_events(self) -> None:
        """Have the selector watch for input unless it would not be served
        (the peer closed, input is paused or still waits) and for room to
        write when the transport is full; and for what a blocked call waits for."""
        if self.session.state is State.CLOSED:
            return
        read = self._write_wants_read or not (
            self._peer_closed or self._paused or self._input_waiting or self.session.waiting
        )
        self.loop.watch(self, read=read, write=self._watching_writes or self._read_wants_write)

    def check_timers(self, now: float) -> None:
        """Apply the session's deadlines and the closing grace."""
        self.session.check_timers(now)
        if self.session.state is State.CLOSING and now >= self._close_deadline:
            self.session.abort(None)

    # -- ending ------------------------------------------------------------

    def refuse(self, error: RemoteProtocolError) -> None:
        """Answer ``error`` (fatal) before the peer has said anything, and close."""
        self.session.fail(error, None)

    def shut_down(self, message: str) -> None:
        """The server is stopping: send ``shutdown`` and close. The room is closed already."""
        self.session.shut_down(message)

    def abort(self, reason: LeaveReason | None = None) -> None:
        """Close at once; whatever is still owed is discarded."""
        self.session.abort(reason)

    def on_closing(self) -> None:
        """The session closes: input is no longer served, only read and
        discarded so that it does not make the kernel reset the connection;
        what is owed is written, then our FIN."""
        self._close_deadline = time.monotonic() + CLOSE_GRACE
        self._file_data.clear()  # its downloads end with it
        self._paused = False
        if self._input_waiting:
            self._set_input_waiting(False)
        self._update_events()
        self.flush()

    def on_closed(self) -> None:
        self._unsent = memoryview(b"")
        self.loop.discard(self)
        self.transport.close()

    def _finish_close(self) -> None:
        """Everything owed is written: send our FIN, then wait for the peer's."""
        if not self._eof_sent:
            try:
                want = self.transport.shutdown_write()
            except TransportClosed:
                self.session.abort(None)
                return
            if want is not None:
                self._wait_to_write(want)
                return
            self._eof_sent = True
        if self._peer_closed:
            self.session.abort(None)

    def _drop_too_slow(self) -> None:
        logger.warning(
            "%s: stopped reading; more than %d bytes queued", self.who, self.room.max_backlog
        )
        self.session.abort(LeaveReason.TOO_SLOW)
