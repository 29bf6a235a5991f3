"""One client connection: frames in, room actions, owed bytes out.

How this works: a ``Connection`` belongs to one I/O thread (an ``IOLoop``),
which calls ``on_readable``, ``on_writable``, ``flush`` and ``check_timers``;
no other thread touches it but through ``notify``. Its life is

    GREETING --hello--> JOINED --bye / error / timeout / too slow--> CLOSING --> CLOSED

Incoming bytes go through a ``FrameDecoder``; each payload is checked
against the connection's state, rate-limited, parsed and handed to the
``Room``. Every reply goes through the room too (``Room.send``), so that it
takes its place in the same ordered stream as the broadcasts. ``flush``
pulls owed bytes from the room and writes them without blocking; if the
peer stops reading and its backlog passes the room's bound, it is dropped
as ``too-slow`` at once.

Input is served in bounded helpings, so that a busy client costs the
others milliseconds: one ``recv`` of at most ``RECV_SIZE``, then at most
``FRAMES_PER_PASS`` frames per pass of the loop. Whole frames left in the
decoder wait for the next pass (the loop keeps such connections in a set
and does not sleep while it is not empty), and the socket is not read
again until they are handled, so the decoder holds at most one read. A
client that sends requests faster than it reads the replies is not
dropped: while the replies it is owed exceed ``1/REPLY_PAUSE_SHARE`` of
the room's bound, its input is not served or read (TCP then slows the
client down), until they drain below it again.

Closing is graceful where it can be: the last frames (an error, a
shutdown) are written, our side is shut down, and the peer gets up to
``CLOSE_GRACE`` seconds to close its side, so that its unread input does
not make the kernel reset the connection and destroy those frames.
"""

from __future__ import annotations

import enum
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from server.config import RateLimit, ServerConfig
from server.protocol import (
    CLIENT_MESSAGES,
    MAX_CLIENT_FRAME,
    MAX_ECHOED_TYPE,
    PROTOCOL_VERSION,
    Bye,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    LeaveReason,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    ProtocolError,
    RemoteProtocolError,
    Rename,
    RuleViolation,
    Say,
    Shutdown,
    Who,
    clean_text,
    normalize_name,
    parse_message,
    show_wire,
)
from server.room import Outbox, Room

if TYPE_CHECKING:
    from server.server import IOLoop

logger = logging.getLogger("server")

RECV_SIZE = 256 * 1024  # bytes read per pass at most
FRAMES_PER_PASS = 64  # frames handled per pass at most
REPLY_PAUSE_SHARE = 4  # input pauses while replies owed exceed max_queue / this
SEND_CHUNK = 256 * 1024
CLOSE_GRACE = 2.0  # seconds a closing peer gets to read its last frames
LOGGED_ERRORS = 10  # non-fatal errors per connection logged at INFO

# Frames a client may send before it has been welcomed.
_GREETING_TYPES = frozenset({Hello.TYPE, Ping.TYPE, Bye.TYPE})
_RATE_LIMITED_TYPES = frozenset({Say.TYPE, Rename.TYPE})


class State(enum.Enum):
    GREETING = "greeting"
    JOINED = "joined"
    CLOSING = "closing"
    CLOSED = "closed"


class TokenBucket:
    """The per-connection rate limit of PROTOCOL.md: starts full."""

    __slots__ = ("_per_second", "_size", "_stamp", "_tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._size = float(limit.burst)
        self._per_second = limit.per_second
        self._tokens = self._size
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._tokens = min(self._size, self._tokens + (now - self._stamp) * self._per_second)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def format_address(address: Any) -> str:
    """``host:port`` for IPv4, ``[host]:port`` for IPv6."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


class Connection:
    """One client's socket and its place in the room. Owned by one ``IOLoop`` thread."""

    __slots__ = (
        "_bucket",
        "_close_deadline",
        "_eof_sent",
        "_errors_logged",
        "_input_waiting",
        "_last_heard",
        "_opened",
        "_pause_at",
        "_paused",
        "_paused_since",
        "_peer_closed",
        "_ping_due",
        "_unsent",
        "_unsent_counted",
        "_waiting_to_write",
        "_watching_writes",
        "config",
        "decoder",
        "loop",
        "name",
        "outbox",
        "peer",
        "room",
        "sock",
        "state",
    )

    def __init__(
        self, sock: socket.socket, address: Any, loop: IOLoop, room: Room, config: ServerConfig
    ) -> None:
        now = time.monotonic()
        self.sock = sock
        self.peer = format_address(address)
        self.loop = loop
        self.room = room
        self.config = config
        self.name: str | None = None  # set by the room
        self.outbox = Outbox()
        self.decoder = FrameDecoder(MAX_CLIENT_FRAME)
        self.state = State.GREETING
        self._bucket = None if config.rate_limit is None else TokenBucket(config.rate_limit, now)
        self._opened = now
        self._last_heard = now
        self._ping_due = now + config.idle_ping_after
        self._unsent = memoryview(b"")
        self._unsent_counted = 0  # of _unsent, bytes that count towards the room's bound
        self._input_waiting = False  # whole frames may be buffered: the loop serves them
        self._paused = False  # replies owed exceed _pause_at: input is not served
        self._paused_since = 0.0
        self._pause_at = config.max_queue // REPLY_PAUSE_SHARE
        self._waiting_to_write = False
        self._watching_writes = False  # the selector watches for room to write
        self._close_deadline = 0.0
        self._eof_sent = False
        self._peer_closed = False
        self._errors_logged = 0

    def __repr__(self) -> str:
        return f"<Connection {self.who} {self.state.value}>"

    @property
    def who(self) -> str:
        """The peer as a log line names it."""
        return self.peer if self.name is None else f"{self.name} ({self.peer})"

    # -- called by the room, from any thread --------------------------------

    def notify(self) -> None:
        """Frames for this connection alone are waiting: flush soon. Any thread."""
        self.loop.mark_dirty(self)

    # -- events from the loop ----------------------------------------------

    def on_readable(self) -> None:
        if self._input_waiting or self._paused:
            return  # what the last read brought is handled first
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("%s: receive failed: %s", self.who, exc)
            self.abort(LeaveReason.DISCONNECTED)
            return
        if not data:
            self._on_peer_closed()
            return
        if self.state is State.CLOSING:
            return  # closing: input is read only so that it is not reset
        self.decoder.receive_data(data)
        self._set_input_waiting(True)

    def serve_input(self) -> None:
        """Handle up to ``FRAMES_PER_PASS`` of the whole frames received.

        The loop calls it once per pass while input waits (``_input_waiting``).
        """
        if self.state is not State.GREETING and self.state is not State.JOINED:
            return  # closed by what the loop served before it in this pass
        now = time.monotonic()
        for _ in range(FRAMES_PER_PASS):
            try:
                payload = self.decoder.next_payload()
            except RemoteProtocolError as exc:
                self.fail(exc, LeaveReason.ERROR)
                return
            if payload is None:
                self._set_input_waiting(False)
                self._update_events()
                return
            # Only whole frames are signs of life: a client dribbling a
            # frame it never finishes still times out.
            self._last_heard = now
            self._ping_due = now + self.config.idle_ping_after
            self._dispatch(payload, now)
            if self.state is not State.GREETING and self.state is not State.JOINED:
                return  # closing stopped serving input
            if self.outbox.replies > self._pause_at:
                self._paused = True
                self._paused_since = now
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
        if self.state is not State.CLOSING:
            self.close(LeaveReason.DISCONNECTED)
        elif not self._waiting_to_write:
            self.abort(None)
        if self.state is not State.CLOSED:
            self._watch_writes(True)  # and no longer read: EOF stays readable

    def on_writable(self) -> None:
        self._waiting_to_write = False
        self.flush()

    def flush(self) -> None:
        """Write what the room holds for this peer, as far as the socket takes it."""
        if self.state is State.CLOSED:
            return
        if self._waiting_to_write:
            # The socket is full; only watch that the backlog stays bounded.
            if self.room.overrun(self, self._unsent_owed()):
                self._drop_too_slow()
            return
        more = True
        while more:
            if not self._unsent:
                replies = self.outbox.replies
                chunk = self.room.pull(self, SEND_CHUNK)
                if chunk is None:
                    self._drop_too_slow()
                    return
                if self._paused and self.outbox.replies <= self._pause_at:
                    self._paused = False
                    # The silence while paused was ours: the idle clock restarts.
                    self._last_heard = max(self._last_heard, time.monotonic())
                    self._set_input_waiting(True)  # what is buffered first, then read
                if not chunk:
                    break
                # A short chunk emptied the outbox; whatever is queued after
                # this pull comes with a new flush request.
                more = len(chunk) >= SEND_CHUNK
                self._unsent = memoryview(chunk)
                # Only this thread takes replies, so the drop is what this took.
                self._unsent_counted = len(chunk) - (replies - self.outbox.replies)
            try:
                sent = self.sock.send(self._unsent)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                logger.debug("%s: send failed: %s", self.who, exc)
                self.abort(LeaveReason.DISCONNECTED)
                return
            self._unsent = self._unsent[sent:]
            if self._unsent:
                self._waiting_to_write = True
                self._watch_writes(True)
                if self.room.overrun(self, self._unsent_owed()):
                    self._drop_too_slow()
                return
        if self._watching_writes:
            self._watch_writes(False)
        if self.state is State.CLOSING:
            self._finish_close()

    def _unsent_owed(self) -> int:
        """An upper bound of the unsent bytes that count towards the room's bound."""
        return min(self._unsent_counted, len(self._unsent))

    def _watch_writes(self, wanted: bool) -> None:
        self._watching_writes = wanted
        self._update_events()

    def _update_events(self) -> None:
        """Have the selector watch for input unless it would not be served
        (the peer closed, input is paused or still waits) and for room to
        write when the socket is full."""
        if self.state is State.CLOSED:
            return
        read = not (self._peer_closed or self._paused or self._input_waiting)
        self.loop.watch(self, read=read, write=self._watching_writes)

    def check_timers(self, now: float) -> None:
        """Apply the handshake, keep-alive and closing deadlines."""
        config = self.config
        if self.state is State.GREETING:
            if now - self._opened >= config.handshake_timeout:
                self.fail(
                    RemoteProtocolError(
                        ErrorCode.TIMEOUT,
                        f"No successful hello within {config.handshake_timeout:g} seconds.",
                    ),
                    None,
                )
        elif self.state is State.JOINED:
            if self._paused:
                # We are not reading it, so its silence is ours; but a client
                # that leaves its replies unread that long has stopped reading.
                if now - self._paused_since >= config.idle_timeout:
                    logger.warning(
                        "%s: left its replies unread for %g seconds", self.who, config.idle_timeout
                    )
                    self.abort(LeaveReason.TOO_SLOW)
            elif now - self._last_heard >= config.idle_timeout:
                self.fail(
                    RemoteProtocolError(
                        ErrorCode.TIMEOUT,
                        f"Nothing arrived for {config.idle_timeout:g} seconds.",
                    ),
                    LeaveReason.TIMEOUT,
                )
            elif now >= self._ping_due:
                self._ping_due = now + config.idle_ping_after
                self.room.send(self, Ping())
        elif self.state is State.CLOSING and now >= self._close_deadline:
            self.abort(None)

    # -- ending ------------------------------------------------------------

    def fail(self, error: ProtocolError, reason: LeaveReason | None) -> None:
        """Answer ``error``; if it is fatal, close, telling the room ``reason``."""
        if error.fatal:
            logger.warning("%s: %s: %s", self.who, error.code, error.message)
        else:
            # A client can cause errors as fast as it can send; only the
            # first few of each connection reach the default log level.
            self._errors_logged += 1
            level = logging.INFO if self._errors_logged <= LOGGED_ERRORS else logging.DEBUG
            logger.log(level, "%s: %s: %s", self.who, error.code, error.message)
            if self._errors_logged == LOGGED_ERRORS:
                logger.info("%s: further errors of this client are logged at debug level", self.who)
        self.room.send(self, Error.from_exception(error), reply=True)
        if error.fatal:
            self.close(reason)

    def close(self, reason: LeaveReason | None, goodbye: Message | None = None) -> None:
        """Leave the room (announced with ``reason``) and close after what is owed.

        ``goodbye`` is a last frame to send first (the server's shutdown).
        """
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return
        self._leave(reason)
        if goodbye is not None:
            # A reply of sorts: it must not tip a member near the bound over it.
            self.room.send(self, goodbye, reply=True)
        self.state = State.CLOSING
        self._close_deadline = time.monotonic() + CLOSE_GRACE
        # Input is no longer served, only read and discarded so that it does
        # not make the kernel reset the connection.
        self._paused = False
        if self._input_waiting:
            self._set_input_waiting(False)
        self._update_events()
        self.flush()

    def shut_down(self, message: str) -> None:
        """The server is stopping: send ``shutdown`` and close. The room is closed already."""
        self.close(LeaveReason.DISCONNECTED, Shutdown(message))

    def _finish_close(self) -> None:
        """Everything owed is written: send our FIN, then wait for the peer's."""
        if not self._eof_sent:
            self._eof_sent = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.abort(None)
                return
        if self._peer_closed:
            self.abort(None)

    def _drop_too_slow(self) -> None:
        logger.warning(
            "%s: stopped reading; more than %d bytes queued", self.who, self.room.max_backlog
        )
        self.abort(LeaveReason.TOO_SLOW)

    def abort(self, reason: LeaveReason | None = None) -> None:
        """Close at once; whatever is still owed is discarded."""
        if self.state is State.CLOSED:
            return
        self._leave(reason)
        self.room.discard(self)
        self.state = State.CLOSED
        self._unsent = memoryview(b"")
        self.loop.discard(self)
        self.sock.close()

    def _leave(self, reason: LeaveReason | None) -> None:
        if self.state is not State.JOINED:
            return
        reason = reason or LeaveReason.DISCONNECTED
        online = self.room.leave(self, reason)
        self.loop.left_room(self)
        logger.info("%s left (%s), %s online", self.who, reason, online)

    # -- frames from the peer ----------------------------------------------

    def _dispatch(self, payload: dict[str, Any], now: float) -> None:
        kind = payload["type"]
        try:
            if self.state is State.GREETING:
                if kind not in _GREETING_TYPES:
                    raise RemoteProtocolError(
                        ErrorCode.NOT_JOINED, "Join first: send hello with your name."
                    )
            elif kind == Hello.TYPE:
                raise RemoteProtocolError(ErrorCode.ALREADY_JOINED, "You have already joined.")
            elif kind not in CLIENT_MESSAGES:
                raise RemoteProtocolError(
                    ErrorCode.UNKNOWN_TYPE, f"This server does not know {show_wire(kind)} frames."
                )
            elif (
                kind in _RATE_LIMITED_TYPES
                and self._bucket is not None
                and not self._bucket.take(now)
            ):
                raise RemoteProtocolError(
                    ErrorCode.RATE_LIMITED, "You are sending too fast; slow down."
                )
            message = parse_message(payload, CLIENT_MESSAGES)
            self._HANDLERS[type(message)](self, message)
        except (RemoteProtocolError, RuleViolation) as exc:
            # A name or text rule the peer's frame broke is the peer's fault.
            if exc.in_reply_to is None and len(kind) <= MAX_ECHOED_TYPE:
                exc.in_reply_to = kind
            self.fail(exc, LeaveReason.ERROR)
        except LocalProtocolError as exc:
            # We could not encode our own answer: the server's fault, not the
            # peer's. The frame goes unanswered and the connection stays, as
            # the room's state is untouched (a reply is encoded before it is
            # queued); closing it would punish the peer for our bug.
            logger.error("%s: cannot answer its %s frame (a server bug): %s", self.who, kind, exc)

    def _on_hello(self, hello: Hello) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                ErrorCode.PROTOCOL_VERSION,
                f"This server speaks protocol version {PROTOCOL_VERSION}, not "
                f"{hello.protocol if abs(hello.protocol) < 10**6 else 'that one'}.",
            )
        online = self.room.join(self, normalize_name(hello.name))
        self.state = State.JOINED
        self.loop.joined_room(self)
        logger.info("%s joined, %d online", self.who, online)

    def _on_say(self, say: Say) -> None:
        self.room.say(self, clean_text(say.text), action=say.action, to=say.to)

    def _on_rename(self, rename: Rename) -> None:
        old = self.room.rename(self, normalize_name(rename.name))
        logger.info("%s is now %s", old, self.name)

    def _on_who(self, _who: Who) -> None:
        self.room.send_users(self)

    def _on_ping(self, ping: Ping) -> None:
        self.room.send(self, Pong(ping.extra), reply=True)

    def _on_pong(self, _pong: Pong) -> None:
        pass  # arriving at all is what counts (_last_heard)

    def _on_bye(self, _bye: Bye) -> None:
        self.close(LeaveReason.QUIT)

    _HANDLERS: ClassVar[dict[type[Message], Callable[[Connection, Any], None]]] = {
        Hello: _on_hello,
        Say: _on_say,
        Rename: _on_rename,
        Who: _on_who,
        Ping: _on_ping,
        Pong: _on_pong,
        Bye: _on_bye,
    }
