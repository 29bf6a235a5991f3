"""One client's session: decoded frames in, room calls out. No sockets, no clock.

How this works: a ``Session`` is the per-client state machine of PROTOCOL.md,

    GREETING --hello--> JOINED --bye / error / timeout / too slow--> CLOSING --> CLOSED

Its adapter (``server.connection``, which owns the socket) hands it each
payload the decoder produced (``receive``) and the time now; the session
checks the frame against its state and the rate limit (a token bucket),
parses it and calls the ``Room``, which queues every answer in the
member's outbox, in the same ordered stream as the broadcasts. Timers are
the adapter's calls of ``check_timers``: the handshake deadline, the
keep-alive ping and the idle timeout. Errors are answered (their logging
throttled per client), and the fatal ones close the session.

The session asks its adapter for two things only, through the ``Link``
protocol: ``on_closing`` (write what is owed, then end the connection
gracefully) and ``on_closed`` (release it now). Every close, whoever starts
it (a handler, a timer, or the adapter itself: the peer's FIN, a dead
socket, a slow reader), goes through ``close`` or ``abort`` here, so that
the room is left exactly once and before the socket is touched. The
adapter in turn tells the session when it stops serving its input for
back-pressure (``pause``/``resume``): that silence is the server's, not the
client's, and the idle clock treats it so.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from server.config import RateLimit, ServerConfig
from server.protocol import (
    CLIENT_MESSAGES,
    MAX_ECHOED_TYPE,
    PROTOCOL_VERSION,
    Bye,
    Error,
    ErrorCode,
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
from server.room import Member, Room

logger = logging.getLogger("server")

LOGGED_ERRORS = 10  # non-fatal errors per session logged at INFO

# Frames a client may send before it has been welcomed.
_GREETING_TYPES = frozenset({Hello.TYPE, Ping.TYPE, Bye.TYPE})
_RATE_LIMITED_TYPES = frozenset({Say.TYPE, Rename.TYPE})


class State(enum.Enum):
    GREETING = "greeting"
    JOINED = "joined"
    CLOSING = "closing"
    CLOSED = "closed"


class Link(Protocol):
    """What a session needs of the connection that carries it (a fake one will do in tests)."""

    def on_closing(self) -> None:
        """The session is closing: write what is owed, then end the connection."""

    def on_closed(self) -> None:
        """The session is over: release the connection now, whatever is unsent."""


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


class Session:
    """One client's state, frames and deadlines. Called from its connection's thread only.

    ``member`` is what the room knows the client as (the room sets its
    ``name``); ``peer`` names the client's address in log lines; ``now``
    is the adapter's clock (``time.monotonic``), here and in every call.
    """

    __slots__ = (
        "_bucket",
        "_errors_logged",
        "_last_heard",
        "_opened",
        "_paused_since",
        "_ping_due",
        "config",
        "link",
        "member",
        "peer",
        "room",
        "state",
    )

    def __init__(
        self,
        room: Room,
        config: ServerConfig,
        member: Member,
        link: Link,
        *,
        peer: str,
        now: float,
    ) -> None:
        self.room = room
        self.config = config
        self.member = member
        self.link = link
        self.peer = peer
        self.state = State.GREETING
        self._bucket = None if config.rate_limit is None else TokenBucket(config.rate_limit, now)
        self._opened = now
        self._last_heard = now
        self._ping_due = now + config.idle_ping_after
        self._paused_since: float | None = None  # its input is not served since then
        self._errors_logged = 0

    @property
    def who(self) -> str:
        """The peer as a log line names it."""
        name = self.member.name
        return self.peer if name is None else f"{name} ({self.peer})"

    # -- from the adapter --------------------------------------------------

    def receive(self, payload: dict[str, Any], now: float) -> None:
        """Handle one whole frame from the peer (a decoded payload with a ``type``)."""
        # Only whole frames are signs of life: a client dribbling a frame
        # it never finishes still times out.
        self._last_heard = now
        self._ping_due = now + self.config.idle_ping_after
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
            # peer's. The frame goes unanswered and the session stays, as
            # the room's state is untouched (a reply is encoded before it is
            # queued); closing it would punish the peer for our bug.
            logger.error("%s: cannot answer its %s frame (a server bug): %s", self.who, kind, exc)

    def pause(self, now: float) -> None:
        """Its input is no longer served: it is owed too many replies."""
        self._paused_since = now

    def resume(self, now: float) -> None:
        """Its input is served again. The silence while paused was ours: the idle clock restarts."""
        self._paused_since = None
        self._last_heard = max(self._last_heard, now)

    def check_timers(self, now: float) -> None:
        """Apply the handshake and keep-alive deadlines."""
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
            if self._paused_since is not None:
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
                self.room.send(self.member, Ping())

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
        self.room.send(self.member, Error.from_exception(error), reply=True)
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
            self.room.send(self.member, goodbye, reply=True)
        self.state = State.CLOSING
        self.link.on_closing()

    def shut_down(self, message: str) -> None:
        """The server is stopping: send ``shutdown`` and close. The room is closed already."""
        self.close(LeaveReason.DISCONNECTED, Shutdown(message))

    def abort(self, reason: LeaveReason | None = None) -> None:
        """Close at once; whatever is still owed is discarded."""
        if self.state is State.CLOSED:
            return
        self._leave(reason)
        self.room.discard(self.member)
        self.state = State.CLOSED
        self.link.on_closed()

    def _leave(self, reason: LeaveReason | None) -> None:
        if self.state is not State.JOINED:
            return
        reason = reason or LeaveReason.DISCONNECTED
        online = self.room.leave(self.member, reason)
        logger.info("%s left (%s), %s online", self.who, reason, online)

    # -- frames from the peer ----------------------------------------------

    def _on_hello(self, hello: Hello) -> None:
        if hello.protocol != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                ErrorCode.PROTOCOL_VERSION,
                f"This server speaks protocol version {PROTOCOL_VERSION}, not "
                f"{hello.protocol if abs(hello.protocol) < 10**6 else 'that one'}.",
            )
        online = self.room.join(self.member, normalize_name(hello.name))
        self.state = State.JOINED
        logger.info("%s joined, %d online", self.who, online)

    def _on_say(self, say: Say) -> None:
        self.room.say(self.member, clean_text(say.text), action=say.action, to=say.to)

    def _on_rename(self, rename: Rename) -> None:
        old = self.room.rename(self.member, normalize_name(rename.name))
        logger.info("%s is now %s", old, self.member.name)

    def _on_who(self, _who: Who) -> None:
        self.room.send_users(self.member)

    def _on_ping(self, ping: Ping) -> None:
        self.room.send(self.member, Pong(ping.extra), reply=True)

    def _on_pong(self, _pong: Pong) -> None:
        pass  # arriving at all is what counts (_last_heard)

    def _on_bye(self, _bye: Bye) -> None:
        self.close(LeaveReason.QUIT)

    _HANDLERS: ClassVar[dict[type[Message], Callable[[Session, Any], None]]] = {
        Hello: _on_hello,
        Say: _on_say,
        Rename: _on_rename,
        Who: _on_who,
        Ping: _on_ping,
        Pong: _on_pong,
        Bye: _on_bye,
    }
