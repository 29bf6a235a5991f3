"""The client's connection to the server, on a thread of its own; no Tk here.

How this works: ``ChatClient`` runs one thread that connects, says hello,
reads frames, writes what the user asked for, keeps the connection alive
and, once it has been welcomed, reconnects with exponential backoff when
the connection drops, claiming the same name again. Everything waits in
one selector that also watches a wake-up socket, so ``close`` and
``reconnect_now`` take effect at once, even in the middle of a
connect or a backoff pause.

The UI talks to it with plain method calls (any thread) and hears back
through ``events``, a ``queue.Queue`` of the small frozen dataclasses
below, which the Tk thread drains with ``after()``. Nothing here touches
a widget, so tests drive it without a display.

Nothing the user typed is lost: every ``say`` stays pending until the
server's echo confirms it; a say the server refused (rate-limited, text
invalid) or one the connection dropped before it was confirmed comes back
in an ``Unsent`` event for the UI to put back in front of the user.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from queue import Queue

from server.protocol import (
    MAX_CLIENT_FRAME,
    MAX_SERVER_FRAME,
    SERVER_MESSAGES,
    Bye,
    ChatMessage,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Rename,
    Renamed,
    Say,
    Shutdown,
    Unknown,
    Welcome,
    Who,
    encode,
    parse_message,
)

logger = logging.getLogger("app.network")

CONNECT_TIMEOUT = 8.0
# The server pings a client that is silent for 30 s, so a live server is
# never silent for much longer than that; a client that hears nothing for
# PING_AFTER pings, and gives up after DEAD_AFTER: under a minute.
PING_AFTER = 20.0
DEAD_AFTER = 45.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0

NAME_ERRORS = frozenset({ErrorCode.NAME_TAKEN, ErrorCode.NAME_INVALID, ErrorCode.BAD_FIELD})


# -- events for the UI --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connecting:
    """A connection attempt started (``attempt`` 0 is the first)."""

    host: str
    port: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The server let us in; ``reconnected`` after a drop. History and live
    frames follow as ``Received`` events."""

    welcome: Welcome
    reconnected: bool


@dataclass(frozen=True, slots=True)
class NameRefused:
    """Hello failed over the name; call ``choose_name`` (the connection stays)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """The first connection failed; ``message`` is one plain sentence. The thread ends."""

    message: str


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """A welcomed connection ended; the next try is in ``retry_in`` seconds."""

    message: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """The server said it is shutting down (``ConnectionLost`` follows)."""

    message: str


@dataclass(frozen=True, slots=True)
class Received:
    """A frame from the server for the UI: a message, presence, users, error."""

    message: Message


@dataclass(frozen=True, slots=True)
class Unsent:
    """Says the server never confirmed; give them back to the user."""

    says: tuple[Say, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The network thread has ended."""


Event = (
    Connecting
    | Welcomed
    | NameRefused
    | ConnectFailed
    | ConnectionLost
    | ServerShutdown
    | Received
    | Unsent
    | Stopped
)


class _Dropped(Exception):
    """The current connection is over; ``message`` says why, for people."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.final = final  # no point in reconnecting


class _Stop(Exception):
    """close() was called."""


def describe_connect_error(exc: OSError, host: str, port: int) -> str:
    """One plain sentence for a failed connect."""
    if isinstance(exc, socket.gaierror):
        return f"Cannot find the computer {host!r}. Check the server address."
    if isinstance(exc, ConnectionRefusedError):
        return f"Nothing is listening at {host}:{port}. Is the server running?"
    if isinstance(exc, TimeoutError):
        return (
            f"{host}:{port} did not answer. Check the address, and that the server's "
            "firewall lets connections in."
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"Cannot reach {host}. Check that you are on the same network as the server."
    return f"Cannot connect to {host}:{port}: {exc.strerror or exc}."


def backoff_delay(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before reconnection ``attempt`` (1, 2, 4 ... 30, with jitter)."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(attempt, 10))
    return base * rng.uniform(0.5, 1.0)


class ChatClient:
    """One user's connection to one server. See the module docstring.

    Public methods may be called from any thread. ``events`` receives
    events from the network thread only.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        events: Queue[Event] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        ping_after: float = PING_AFTER,
        dead_after: float = DEAD_AFTER,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.events: Queue[Event] = events if events is not None else Queue()
        self._wanted_name = name
        self._connect_timeout = connect_timeout
        self._ping_after = ping_after
        self._dead_after = dead_after
        self._rng = rng or random.Random()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_in, selectors.EVENT_READ, None)
        self._outgoing: deque[tuple[Message, bytes]] = deque()  # from the UI, encoded
        # Held while checking "in the room?" and queueing, and while leaving the
        # room and taking back unsent says: no say slips between the two.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._retry_now = threading.Event()
        self._name: str | None = None  # as the server keeps it, once welcomed
        self._joined = False
        self._greeting = False  # connected, not yet welcomed: a hello may be retried
        self._pending: deque[Say] = deque()  # sent, not yet echoed
        self._thread = threading.Thread(target=self._run, name="chat-network", daemon=True)

    # -- the UI's side (any thread) -----------------------------------------

    @property
    def name(self) -> str | None:
        """Our name as the server keeps it; ``None`` until welcomed."""
        return self._name

    @property
    def running(self) -> bool:
        """Whether the network thread is still at work (connecting, chatting or waiting)."""
        return self._thread.is_alive()

    @property
    def joined(self) -> bool:
        """Whether we are in the room right now."""
        return self._joined

    def start(self) -> None:
        self._thread.start()

    def say(self, text: str, *, action: bool = False, to: str | None = None) -> bool:
        """Send a message; ``False`` (nothing sent) while not in the room.

        Raises ``LocalProtocolError`` for text too large for a frame; check
        it with ``protocol.clean_text`` first.
        """
        return self._send(Say(text, action, to), joined_only=True)

    def rename(self, name: str) -> bool:
        """Ask for a new name; ``False`` while not in the room."""
        return self._send(Rename(name), joined_only=True)

    def who(self) -> bool:
        """Ask for the user list; ``False`` while not in the room."""
        return self._send(Who(), joined_only=True)

    def choose_name(self, name: str) -> None:
        """Try another name after ``NameRefused`` (on the next connection if
        this one is gone)."""
        self._wanted_name = name
        if self._greeting:
            self._send(Hello(name), joined_only=False)

    def reconnect_now(self) -> None:
        """Skip the rest of a backoff pause."""
        self._retry_now.set()
        self._wake()

    def close(self, timeout: float = 1.0) -> None:
        """Say bye (when in the room), stop the thread and wait for it."""
        self._stop.set()
        self._wake()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._release()

    def _send(self, message: Message, *, joined_only: bool) -> bool:
        frame = encode(message, MAX_CLIENT_FRAME)
        with self._lock:
            if joined_only and not self._joined:
                return False
            self._outgoing.append((message, frame))
        self._wake()
        return True

    def _wake(self) -> None:
        try:
            self._wake_out.send(b"\0")
        except OSError:
            pass  # a wake-up is pending already, or the client is closed

    def _release(self) -> None:
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()

    # -- the network thread ----------------------------------------------------

    def _post(self, event: Event) -> None:
        self.events.put(event)

    def _run(self) -> None:
        attempt = 0  # of the backoff, which restarts after a connection that got in
        welcomed_before = False
        try:
            for number in itertools.count():
                self._post(Connecting(self.host, self.port, number))
                try:
                    self._session(welcomed_before)
                except _Dropped as dropped:
                    if self._stop.is_set():
                        raise _Stop from None
                    got_in = self._leave_room(dropped.message)
                    welcomed_before = welcomed_before or got_in
                    if not welcomed_before:
                        self._post(ConnectFailed(dropped.message))
                        return
                    if dropped.final:
                        self._post(ConnectionLost(dropped.message, -1.0))
                        return
                    # A connection that got in starts the backoff over.
                    attempt = 0 if got_in else attempt + 1
                    delay = backoff_delay(attempt, self._rng)
                    self._post(ConnectionLost(dropped.message, delay))
                    self._pause(delay)
        except _Stop:
            pass
        except Exception:
            logger.exception("network thread failed")
            self._post(ConnectFailed("Something went wrong; see the log file for details."))
        finally:
            self._leave_room("The app was closed.")
            self._post(Stopped())
            if self._stop.is_set():
                self._release()  # close() may have stopped waiting for us

    def _pause(self, seconds: float) -> None:
        """Wait before reconnecting, unless told to stop or to retry now."""
        deadline = time.monotonic() + seconds
        self._retry_now.clear()
        while not self._retry_now.is_set():
            if self._stop.is_set():
                raise _Stop
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wait(remaining)

    def _wait(self, timeout: float) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._selector.select(timeout)
        ready = []
        for key, mask in events:
            if key.data is None:
                try:
                    while self._wake_in.recv(4096):
                        pass
                except OSError:
                    pass  # drained
            else:
                ready.append((key, mask))
        if self._stop.is_set():
            raise _Stop
        return ready

    def _session(self, reconnecting: bool) -> None:
        """One connection, from connect to its end (raises ``_Dropped`` or ``_Stop``)."""
        sock = self._connect()
        out = bytearray()
        try:
            self._converse(sock, out, reconnecting)
        except _Stop:
            self._greeting = False
            if self._joined:  # leave politely, with whatever was still unsent
                try:
                    sock.send(bytes(out) + encode(Bye()))
                except OSError:
                    pass  # the connection is going anyway
            raise
        finally:
            self._greeting = False
            self._selector.unregister(sock)
            sock.close()

    def _connect(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _Dropped(describe_connect_error(exc, self.host, self.port)) from None
        error: OSError = TimeoutError()
        deadline = time.monotonic() + self._connect_timeout
        for family, type_, proto, _, address in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_WRITE, sock)
            try:
                self._finish_connect(sock, address, deadline)
            except OSError as exc:
                error = exc
            except BaseException:
                self._selector.unregister(sock)
                sock.close()
                raise
            else:
                self._selector.modify(sock, selectors.EVENT_READ, sock)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            self._selector.unregister(sock)
            sock.close()
        raise _Dropped(describe_connect_error(error, self.host, self.port))

    def _finish_connect(self, sock: socket.socket, address: tuple, deadline: float) -> None:
        code = sock.connect_ex(address)
        # 10035 is Windows' WSAEWOULDBLOCK: a non-blocking connect under way.
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, 10035):
            if code in (errno.ECONNREFUSED, 10061):
                raise ConnectionRefusedError(code, os.strerror(code))
            raise OSError(code, os.strerror(code))
        while code:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if self._wait(remaining):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code in (errno.ECONNREFUSED, 10061):  # 10061: WSAECONNREFUSED
                    raise ConnectionRefusedError(code, os.strerror(code))
                if code:
                    raise OSError(code, os.strerror(code))
                return

    def _converse(self, sock: socket.socket, out: bytearray, reconnecting: bool) -> None:
        decoder = FrameDecoder(MAX_SERVER_FRAME)
        with self._lock:  # a retry meant for an earlier connection: this one says hello itself
            kept = [item for item in self._outgoing if not isinstance(item[0], Hello)]
            self._outgoing.clear()
            self._outgoing.extend(kept)
        out += encode(Hello(self._wanted_name))
        self._greeting = True
        last_heard = time.monotonic()
        pinged = False
        while True:
            # Queue what the UI asked for; says wait for the server's echo.
            while self._outgoing:
                message, frame = self._outgoing.popleft()
                if isinstance(message, Say):
                    self._pending.append(message)
                out += frame
            if out:
                try:
                    sent = sock.send(out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    raise _Dropped("The connection to the server was lost.") from None
                del out[:sent]
            self._selector.modify(
                sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0), sock
            )
            now = time.monotonic()
            silent = now - last_heard
            if silent >= self._dead_after:
                raise _Dropped("The server stopped answering.")
            if silent >= self._ping_after and not pinged:
                pinged = True
                out += encode(Ping())
                continue
            wait = (self._dead_after if pinged else self._ping_after) - silent
            for _key, mask in self._wait(max(0.0, wait)):
                if mask & selectors.EVENT_READ and self._receive(sock, decoder, out, reconnecting):
                    last_heard = time.monotonic()
                    pinged = False

    def _receive(
        self, sock: socket.socket, decoder: FrameDecoder, out: bytearray, reconnecting: bool
    ) -> bool:
        """Read and handle what arrived, queueing answers in ``out``; ``False``: nothing."""
        try:
            data = sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            raise _Dropped("The connection to the server was lost.") from None
        if not data:
            raise _Dropped("The server closed the connection.")
        decoder.receive_data(data)
        try:
            while (payload := decoder.next_payload()) is not None:
                reply = self._handle(parse_message(payload, SERVER_MESSAGES), reconnecting)
                if reply is not None:
                    out += encode(reply)
        except ProtocolError as exc:
            logger.warning("bad frame from the server: %s", exc)
            raise _Dropped("The server sent something this app does not understand.") from None
        return True

    def _handle(self, message: Message, reconnecting: bool) -> Message | None:
        """Act on one frame from the server; return a frame to answer with."""
        if isinstance(message, Ping):
            return Pong(message.extra)
        if isinstance(message, Welcome):
            self._name = self._wanted_name = message.name
            self._greeting = False
            self._joined = True
            self._post(Welcomed(message, reconnecting))
        elif isinstance(message, Error):
            self._on_error(message)
        elif isinstance(message, Shutdown):
            self._post(ServerShutdown(message.message))
        elif isinstance(message, Unknown | Pong):
            return None
        else:
            if isinstance(message, ChatMessage) and not message.history:
                if message.sender == self._name and self._pending:
                    self._pending.popleft()  # the echo confirms our oldest say
            elif isinstance(message, Renamed) and message.old == self._name:
                self._name = self._wanted_name = message.new  # and reclaimed after a drop
            self._post(Received(message))
        return None

    def _on_error(self, error: Error) -> None:
        if not self._joined and error.in_reply_to == Hello.TYPE:
            if error.code in NAME_ERRORS:
                self._post(NameRefused(error.code, error.message))
                return
            if error.code == ErrorCode.PROTOCOL_VERSION:
                raise _Dropped(
                    "This server speaks another version of the chat protocol; "
                    "update the app or the server.",
                    final=True,
                )
        if error.code == ErrorCode.SERVER_FULL:
            raise _Dropped("The server is full. Try again later.")
        if error.code == ErrorCode.TIMEOUT and not self._joined:
            raise _Dropped("The server stopped waiting for a name. Connect again.")
        if error.in_reply_to == Say.TYPE and self._pending:
            say = self._pending.popleft()
            self._post(Unsent((say,), error.message))
            return
        self._post(Received(error))

    def _leave_room(self, reason: str) -> bool:
        """We are out of the room: give back every say not confirmed. Returns
        whether we had been in it."""
        with self._lock:
            was_in, self._joined = self._joined, False
            queued = [message for message, _ in self._outgoing if isinstance(message, Say)]
            self._outgoing.clear()
            says = (*self._pending, *queued)
            self._pending.clear()
        if says:
            self._post(Unsent(says, reason))
        return was_in


__all__ = [
    "ChatClient",
    "ConnectFailed",
    "Connecting",
    "ConnectionLost",
    "Event",
    "NameRefused",
    "Received",
    "ServerShutdown",
    "Stopped",
    "Unsent",
    "Welcomed",
    "backoff_delay",
    "describe_connect_error",
]
