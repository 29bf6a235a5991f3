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

Operators (PROTOCOL.md, "Operators and moderation"): ``op`` checks the
operator password; a wrong one is answered about a second later, from
``check_timers`` (a loop timer: nothing here sleeps), and the frames that
arrive meanwhile wait in ``_held`` so that replies keep their order; the
third wrong one on a connection closes it, and every wrong one counts
toward its address's guesses (``passwords.GuessCounter``). The operator
frames call the room's moderation methods, as the console does, and a
kick reaches its target through the target's ``Seat``, which hands it to
the target's own thread (``Link.call_soon``).

Room password (PROTOCOL.md, "Room password"): a ``hello`` is checked in the
protocol's order (version, field types, password, bans, name rules, name
taken) so that nobody without the password learns who is in the room. A
missing password is answered at once and the connection stays; a wrong
one takes the operator password's path (answered about a second later,
frames held meanwhile, the third closes, each counts toward the address's
guesses); a right one is remembered for the connection, so a hello after
``name-taken`` needs none.

History pages and search (PROTOCOL.md): ``history`` and ``search`` take
no rate-limit token; their fields are checked here, and the question goes
to the ``HistoryService``, whose workers may read a disk. Until the answer
comes back (on this session's thread, through ``Link.call_soon``) the
session is ``waiting``: its adapter serves no more of its input, so that
a connection has one question out at a time and what it sent after the
question is handled after the answer, in order.

Files (PROTOCOL.md, "Files and images"): the session hands its file frames
to its ``Transfers`` (``server.transfers``), which leaves the disk to
threads of its own and may make the session wait the same way (``busy``).
A ``say`` with a file posts it: whoever can see the message may then
download it.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from server.config import RateLimit, ServerConfig
from server.protocol import (
    CLIENT_MESSAGES,
    DEFAULT_PAGE,
    MAX_ECHOED_TYPE,
    MAX_PAGE,
    MAX_TEXT_LENGTH,
    PROTOCOL_VERSION,
    Ban,
    BanList,
    Bans,
    Bye,
    Download,
    Error,
    ErrorCode,
    Hello,
    History,
    Kick,
    LeaveReason,
    LocalProtocolError,
    Message,
    Op,
    Ping,
    Pong,
    ProtocolError,
    RemoteProtocolError,
    Rename,
    RuleViolation,
    Say,
    Search,
    SendNotice,
    Shutdown,
    Unban,
    Upload,
    UploadData,
    UploadDone,
    Who,
    Whois,
    clean_text,
    normalize_name,
    parse_message,
    show_wire,
)
from server.room import Done, Member, Room, Seat
from server.store import MAX_ID
from server.store.words import query_words

if TYPE_CHECKING:
    from server.history import Answer, HistoryService
    from server.transfers import FileService, Transfers

logger = logging.getLogger("server")

LOGGED_ERRORS = 10  # non-fatal errors per session logged at INFO

# Frames a client may send before it has been welcomed.
_GREETING_TYPES = frozenset({Hello.TYPE, Ping.TYPE, Bye.TYPE})
_RATE_LIMITED_TYPES = frozenset(
    {
        Say.TYPE,
        Rename.TYPE,
        Upload.TYPE,  # files: an upload, like a say (its data frames take none)
        # operators extension: the same bucket as say
        Op.TYPE,
        Kick.TYPE,
        Ban.TYPE,
        Unban.TYPE,
        Bans.TYPE,
        Whois.TYPE,
        SendNotice.TYPE,
    }
)
_OPERATOR_TYPES = frozenset(
    {Kick.TYPE, Ban.TYPE, Unban.TYPE, Bans.TYPE, Whois.TYPE, SendNotice.TYPE}
)
# Errors that answer no frame of the peer's (PROTOCOL.md: kicked, banned).
_UNPROMPTED = frozenset({ErrorCode.KICKED, ErrorCode.BANNED})
OP_WRONG_DELAY = 1.0  # seconds before a wrong operator password is answered
OP_TRIES = 3  # wrong operator passwords that close a connection
PASSWORD_TRIES = 3  # wrong room passwords that close a connection
HELD_FRAMES = 64  # frames kept while a wrong password's answer waits; more are dropped


def _check_protocol(protocol: object) -> None:
    """Refuse a hello's version other than ours (a version of the wrong type is bad-field)."""
    if type(protocol) is int and protocol != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            ErrorCode.PROTOCOL_VERSION,
            f"This server speaks protocol version {PROTOCOL_VERSION}, not "
            f"{protocol if abs(protocol) < 10**6 else 'that one'}.",
        )


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

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the connection's own thread. Any thread."""

    def resume_input(self) -> None:
        """Serve input again: the question the session waited on is answered."""

    def send_file_data(self, frames: list[bytes]) -> None:
        """Queue ``file-data`` frames, to be written when no chat frame is owed."""

    def file_data_queued(self) -> int:
        """How many ``file-data`` frames are not written yet."""

    @property
    def secure(self) -> bool:
        """Whether the connection is encrypted (TLS)."""


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
        "_dropped",
        "_errors_logged",
        "_held",
        "_joining",
        "_last_heard",
        "_now",
        "_opened",
        "_password_ok",
        "_paused_since",
        "_ping_due",
        "_release_at",
        "_waiting",
        "_wrong_code",
        "_wrong_ops",
        "_wrong_passwords",
        "config",
        "files",
        "history",
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
        history: HistoryService | None = None,
        files: FileService | None = None,
    ) -> None:
        self.room = room
        self.history = history  # None: it answers no history or search
        # None: the server shares no files (files-disabled)
        self.files: Transfers | None = None if files is None else files.transfers(self)
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
        # operators extension
        self._now = now
        self._held: deque[dict[str, Any]] | None = None  # frames waiting for a delayed reply
        self._dropped = 0  # frames that found _held full
        self._release_at = 0.0
        self._wrong_ops = 0
        self._wrong_code = ErrorCode.OP_PASSWORD_WRONG  # what the held answer will be
        # room password extension
        self._password_ok = False  # this connection has given the right one
        self._wrong_passwords = 0
        # history pages and search: a question is out; input waits for its answer
        # (and a change a shared room orders elsewhere: its join, say, rename)
        self._waiting = False
        self._joining = False  # its hello is on its way in a shared room

    @property
    def waiting(self) -> bool:
        """Whether a question (a history page, a search, an upload's end) waits
        for its answer, or file transfers wait for the disk: the adapter
        serves no more input until ``Link.resume_input``."""
        return self._waiting or (self.files is not None and self.files.busy)

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
        if self.state is State.CLOSING or self.state is State.CLOSED:
            # Its member has left the room, but keeps its name: a frame
            # handled now would speak as someone who is gone (or as whoever
            # took the name since). Its adapter stops serving input; this
            # holds whoever calls.
            return
        self._last_heard = now
        self._ping_due = now + self.config.idle_ping_after
        if self._held is not None:
            if len(self._held) < HELD_FRAMES:
                self._held.append(payload)
            else:
                self._dropped += 1
            return
        self._handle(payload, now)

    def _handle(self, payload: dict[str, Any], now: float) -> None:
        self._now = now
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
            if kind == Hello.TYPE:
                _check_protocol(payload.get("protocol"))  # before the fields' types
            message = parse_message(payload, CLIENT_MESSAGES)
            self._HANDLERS[type(message)](self, message)
        except (RemoteProtocolError, RuleViolation) as exc:
            # A name or text rule the peer's frame broke is the peer's fault.
            if (
                exc.in_reply_to is None
                and len(kind) <= MAX_ECHOED_TYPE
                and exc.code not in _UNPROMPTED
            ):
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
        """Apply the handshake and keep-alive deadlines, and answer a wrong password."""
        config = self.config
        if self._held is not None and now >= self._release_at:
            self._release(now)
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
        self._end_transfers()
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
        self._end_transfers()
        self.room.discard(self.member)
        self.state = State.CLOSED
        self.link.on_closed()

    def _leave(self, reason: LeaveReason | None) -> None:
        if self._joining:  # a shared room's join on its way: the room undoes it
            self._joining = False
            self.room.leave(self.member, reason or LeaveReason.DISCONNECTED)
        if self.state is not State.JOINED:
            return
        reason = reason or LeaveReason.DISCONNECTED
        online = self.room.leave(self.member, reason)
        logger.info("%s left (%s), %s online", self.who, reason, online)

    # -- frames from the peer ----------------------------------------------

    def _on_hello(self, hello: Hello) -> None:
        if not self._password_ok and not self._room_password_given(hello.password):
            return
        done = self._when_done(Hello.TYPE, self._joined)
        if self.room.join(self.member, normalize_name(hello.name), self._seat(), done) is None:
            self._joining = self._waiting = True  # a shared room: done() says how it went
            return
        self._joined()

    def _joined(self) -> None:
        self._joining = False
        self.state = State.JOINED
        logger.info("%s joined, %d online", self.who, len(self.room))

    def _when_done(self, kind: str, then: Callable[[], None] | None = None) -> Done:
        """What a shared room calls (any thread) when the ``kind`` frame's change ends."""

        def done(error: ProtocolError | None) -> None:
            self.link.call_soon(lambda: self._done(kind, error, then))

        return done

    def _done(
        self, kind: str, error: ProtocolError | None, then: Callable[[], None] | None
    ) -> None:
        self._waiting = False
        if self.state is State.CLOSING or self.state is State.CLOSED:
            return
        if error is None:
            if then is not None:
                then()
        else:
            self._joining = False
            if error.in_reply_to is None:
                error.in_reply_to = kind
            self.fail(error, LeaveReason.ERROR)
        if self.state is State.JOINED or self.state is State.GREETING:
            self.link.resume_input()

    def _end_transfers(self) -> None:
        if self.files is not None:
            self.files.close()

    def _on_say(self, say: Say) -> None:
        if say.file is None:
            text = clean_text(say.text)
            done = self._when_done(Say.TYPE)
            if self.room.say(self.member, text, action=say.action, to=say.to, done=done) is None:
                self._waiting = True  # a shared room: done() says how it went
            return
        files = self._transfers(Say.TYPE)
        # With a file, the text may be empty.
        text = "" if say.text.isspace() or not say.text else clean_text(say.text)
        sender = self.member.name
        assert sender is not None  # say is no greeting frame
        info = files.postable(say.file, sender)
        to = say.to
        if to is not None:
            found = self.room.seat(to)  # the name as the room spells it, for the file's readers
            to = to if found is None else found[0]  # unknown: the room says no-such-user
        self.room.say(self.member, text, action=say.action, to=say.to, file=info)
        files.posted(info.id, sender, to)

    def _on_rename(self, rename: Rename) -> None:
        old = self.member.name
        done = self._when_done(Rename.TYPE, lambda: self._renamed(old))
        if self.room.rename(self.member, normalize_name(rename.name), done) is None:
            self._waiting = True  # a shared room: done() says how it went
            return
        self._renamed(old)

    def _renamed(self, old: str | None) -> None:
        logger.info("%s is now %s", old, self.member.name)

    def _on_who(self, _who: Who) -> None:
        self.room.send_users(self.member)

    def _on_ping(self, ping: Ping) -> None:
        self.room.send(self.member, Pong(ping.extra), reply=True)

    def _on_pong(self, _pong: Pong) -> None:
        pass  # arriving at all is what counts (_last_heard)

    def _on_bye(self, _bye: Bye) -> None:
        self.close(LeaveReason.QUIT)

    # -- history pages and search (PROTOCOL.md) ---------------------------------

    def _on_history(self, history: History) -> None:
        limit = _page_limit(history.limit)
        before = _page_before(history.before)
        service = self._history_service(History.TYPE)
        self._waiting = True
        service.page(before, limit, self._answer_soon)

    def _on_search(self, search: Search) -> None:
        limit = _page_limit(search.limit)
        before = _page_before(search.before)
        query = search.query
        if len(query) > MAX_TEXT_LENGTH:
            raise RemoteProtocolError(
                ErrorCode.BAD_FIELD, f"`query` is longer than {MAX_TEXT_LENGTH} characters."
            )
        try:
            query_words(query)  # bounded by the length checked above
        except ValueError as exc:
            raise RemoteProtocolError(ErrorCode.BAD_FIELD, f"`query`: {exc}.") from None
        service = self._history_service(Search.TYPE)
        self._waiting = True
        service.search(query, limit, before, self._answer_soon)

    def _history_service(self, kind: str) -> HistoryService:
        if self.history is None:
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_TYPE, f"This server does not answer {kind} frames."
            )
        return self.history

    def _answer_soon(self, answer: Answer) -> None:
        """A worker thread: hand the answer to this session's own thread."""
        self.link.call_soon(lambda: self._answered(answer))

    def _answered(self, answer: Answer) -> None:
        self._waiting = False
        if self.state is not State.JOINED:
            return  # it left meanwhile: nobody to answer, no input to serve
        if isinstance(answer, bytes):
            self.room.send_frame(self.member, answer, reply=True)
        else:
            self.fail(answer, LeaveReason.ERROR)
        self.link.resume_input()

    # -- files and images (PROTOCOL.md) -------------------------------------------

    def _transfers(self, kind: str) -> Transfers:
        if self.files is None:
            raise RemoteProtocolError(
                ErrorCode.FILES_DISABLED, "This server does not share files.", kind
            )
        return self.files

    def _on_upload(self, upload: Upload) -> None:
        self._transfers(Upload.TYPE).upload(upload)

    def _on_upload_data(self, data: UploadData) -> None:
        self._transfers(UploadData.TYPE).data(data)

    def _on_upload_done(self, done: UploadDone) -> None:
        self._transfers(UploadDone.TYPE).done(done)

    def _on_download(self, download: Download) -> None:
        name = self.member.name
        assert name is not None  # download is no greeting frame
        self._transfers(Download.TYPE).download(download, name)

    # What its Transfers needs (``server.transfers.Asker``).

    def reply(self, message: Message) -> None:
        """Queue ``message`` as a reply to this session's client."""
        self.room.send(self.member, message, reply=True)

    def refuse(self, error: ProtocolError) -> None:
        """Answer a (non-fatal) error found after the frame was handled."""
        self.fail(error, LeaveReason.ERROR)

    def later(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on this session's thread while it is in the room. Any thread."""

        def run() -> None:
            if self.state is State.JOINED:
                callback()

        self.link.call_soon(run)

    def files_ready(self) -> None:
        """Its transfers no longer hold its input back."""
        if not self._waiting:
            self.link.resume_input()

    def send_file_data(self, frames: list[bytes]) -> None:
        """Queue ``file-data`` frames behind the chat frames."""
        self.link.send_file_data(frames)

    def file_data_queued(self) -> int:
        """How many ``file-data`` frames are not written yet."""
        return self.link.file_data_queued()

    def file_data_sent(self) -> None:
        """Its connection wrote download frames: time to read the next range?"""
        if self.files is not None and self.state is State.JOINED:
            self.files.pump()

    # -- operators (PROTOCOL.md, "Operators and moderation") ------------------

    @property
    def host(self) -> str:
        """The peer's address without its port."""
        host = self.peer.rpartition(":")[0] if self.peer.count(":") == 1 else self.peer
        if self.peer.startswith("["):
            host = self.peer[1:].partition("]")[0]
        return host

    def kick_soon(self, by: str | None, message: str) -> None:
        """Have this session's own thread remove it from the room (a kick, a ban). Any thread."""
        self.link.call_soon(lambda: self._kicked(by, message))

    def _kicked(self, by: str | None, message: str) -> None:
        if self.state is not State.JOINED:
            return  # gone already
        logger.warning("%s: kicked: %s", self.who, message)
        self._end_transfers()
        self.room.send(self.member, Error(ErrorCode.KICKED, message), reply=True)
        online = self.room.leave(self.member, LeaveReason.KICKED, by=by, message=message)
        logger.info("%s left (kicked), %s online", self.who, online)
        self.state = State.CLOSING
        self.link.on_closing()

    def shut_down_soon(self, message: str) -> None:
        """Have this session's own thread send ``shutdown`` and close it. Any thread."""
        self.link.call_soon(lambda: self.shut_down(message))

    def _seat(self) -> Seat:
        return Seat(
            self.host, self.kick_soon, secure=bool(self.link.secure), close=self.shut_down_soon
        )

    def _op_name(self) -> str:
        """This session's name, as an operator frame's ``by``; not an operator: not-operator."""
        name = self.member.name
        if name is None or not self.room.is_op(self.member):
            raise RemoteProtocolError(ErrorCode.NOT_OPERATOR, "Only operators can do that.")
        return name

    def _on_op(self, op: Op) -> None:
        self._check_guesses(Op.TYPE)
        secret = self.room.op_secret
        if secret is not None and secret.check(op.password):
            name = self.member.name
            assert name is not None  # op is no greeting frame
            self.room.set_op(name, True, name)
            logger.info("%s is now an operator", self.who)
            return
        # Never the password itself in a log line: only where it came from.
        logger.warning("op-password-wrong from %s", self.host)
        self._wrong_ops += 1
        self._answer_wrong_later(ErrorCode.OP_PASSWORD_WRONG)

    def _room_password_given(self, password: str | None) -> bool:
        """Whether the hello may go on: no room password, or the right one.

        Raises password-required or too-many-attempts; a wrong one is
        answered later (``_release``) and returns False.
        """
        secret = self.room.room_secret
        if secret is None:
            return True
        if password is None:
            raise RemoteProtocolError(
                ErrorCode.PASSWORD_REQUIRED, "This room needs a password.", Hello.TYPE
            )
        self._check_guesses(Hello.TYPE)
        if secret.check(password):
            self._password_ok = True
            return True
        # Never the password itself in a log line: only where it came from.
        logger.warning("password-wrong from %s", self.host)
        self._wrong_passwords += 1
        self._answer_wrong_later(ErrorCode.PASSWORD_WRONG)
        return False

    def _check_guesses(self, kind: str) -> None:
        """Raise too-many-attempts if this address has guessed too often."""
        retry = self.room.guesses.retry_after(self.host, self._now)
        if retry is not None:
            raise RemoteProtocolError(
                ErrorCode.TOO_MANY_ATTEMPTS,
                "Too many wrong passwords from your address; try again later.",
                kind,
                details={"retry_after": math.ceil(retry)},
            )

    def _answer_wrong_later(self, code: ErrorCode) -> None:
        """Count a wrong guess and hold this connection's frames until it is answered."""
        self.room.guesses.charge(self.host, self._now)
        self._wrong_code = code
        self._held = deque()
        self._release_at = self._now + OP_WRONG_DELAY

    def _release(self, now: float) -> None:
        """Answer the wrong password, then the frames that waited for it."""
        pending, self._held = self._held or deque(), None
        if self._wrong_code is ErrorCode.PASSWORD_WRONG:
            error = RemoteProtocolError(
                ErrorCode.PASSWORD_WRONG, "That is not the room's password.", Hello.TYPE
            )
            wrong, tries, what = self._wrong_passwords, PASSWORD_TRIES, "room"
        else:
            error = RemoteProtocolError(
                ErrorCode.OP_PASSWORD_WRONG, "That is not the operator password.", Op.TYPE
            )
            wrong, tries, what = self._wrong_ops, OP_TRIES, "operator"
        self.fail(error, None)
        if wrong >= tries:
            logger.warning("%s: %d wrong %s passwords; closing", self.who, wrong, what)
            self.close(LeaveReason.ERROR)
            return
        while pending and self._held is None:
            if self.state is not State.JOINED and self.state is not State.GREETING:
                return
            self._handle(pending.popleft(), now)
        if self._held is not None:  # another wrong one: the rest wait for its answer
            self._held = pending
            return
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self.fail(
                RemoteProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"{dropped} frames arrived while a wrong password was being answered "
                    "and were dropped; slow down.",
                ),
                None,
            )

    def _on_kick(self, kick: Kick) -> None:
        self.room.kick(kick.name, kick.reason, self._op_name())

    def _on_ban(self, ban: Ban) -> None:
        by = self._op_name()
        self.room.ban(
            name=ban.name, address=ban.address, duration=ban.duration, reason=ban.reason, by=by
        )
        self._send_bans()

    def _on_unban(self, unban: Unban) -> None:
        self._op_name()
        self.room.unban(unban.id)
        self._send_bans()

    def _on_bans(self, _bans: Bans) -> None:
        self._op_name()
        self._send_bans()

    def _send_bans(self) -> None:
        entries = tuple(ban.entry() for ban in self.room.bans.in_force())
        self.room.send(self.member, BanList(entries), reply=True)

    def _on_whois(self, whois: Whois) -> None:
        self._op_name()
        self.room.send(self.member, self.room.whois(whois.name), reply=True)

    def _on_notice(self, notice: SendNotice) -> None:
        self.room.notice(notice.text, self._op_name())

    _HANDLERS: ClassVar[dict[type[Message], Callable[[Session, Any], None]]] = {
        Hello: _on_hello,
        Say: _on_say,
        Rename: _on_rename,
        Who: _on_who,
        Ping: _on_ping,
        Pong: _on_pong,
        Bye: _on_bye,
        # operators extension
        Op: _on_op,
        Kick: _on_kick,
        Ban: _on_ban,
        Unban: _on_unban,
        Bans: _on_bans,
        Whois: _on_whois,
        SendNotice: _on_notice,
        # history pages and search
        History: _on_history,
        Search: _on_search,
        # files and images
        Upload: _on_upload,
        UploadData: _on_upload_data,
        UploadDone: _on_upload_done,
        Download: _on_download,
    }


def _page_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise RemoteProtocolError(ErrorCode.BAD_FIELD, f"`limit` must be from 1 to {MAX_PAGE}.")
    return limit


def _page_before(before: int | None) -> int | None:
    if before is not None and not 1 <= before <= MAX_ID:
        raise RemoteProtocolError(
            ErrorCode.BAD_FIELD, "`before` must be a message id (a positive integer)."
        )
    return before
