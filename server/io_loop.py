"""One I/O thread: a selector over many connections, its wake-ups and timers.

How this works: an ``IOLoop`` serves its connections with one selector
(epoll, kqueue or select): it reads and handles their frames, and writes
what the ``Room`` owes them. A thread per connection would cost a stack
per client and a wake-up per delivered message; a loop holds thousands of
clients and writes each one's pending frames in one call. Each pass gives
every connection a bounded helping of work (one read, a few dozen frames;
see ``connection``), and flushes what that work queued, so that a flooding
client delays the others by milliseconds; a stop request is seen within
one pass.

Other threads reach a loop only through its queues (deque appends and
pops are atomic) and a wake-up byte (``Waker``): ``adopt`` a new socket,
``mark_dirty`` a connection with frames of its own, ``broadcast_pending``
when the room's log grew, ``call_soon`` any callable, ``stop``. When a
message is added to the broadcast log, every loop is woken once and
flushes all of its connections that are in the room. Who is in the room
is the room's to say: a member's outbox follows the log
(``Outbox.subscribed``) from its join to its leave, so the loop keeps no
member list of its own and picks them out at each flush. Presence (joins,
leaves, renames) is held back for a moment to be flushed with whatever
else comes: every join is news to everyone, so when a thousand people
join at once, writing each join to each member on its own would cost a
million system calls. The moment is ``PRESENCE_DELAY``, or longer (up to
``PRESENCE_MAX_DELAY``) in a room so big that writing to every member
takes a while, so that presence takes no more than about a fifth of a
loop's time. The room asks for a flush at once when the presence held
back nears the slow-reader bound.

Connections see their loop through ``connection.Loop`` and never import
this module; a bug met in one connection's handler closes that connection
only (``_safely``).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

from server.config import ServerConfig
from server.connection import SEND_CHUNK, Connection
from server.protocol import ErrorCode, LeaveReason, RemoteProtocolError
from server.protocol.transport import PlainTransport, TransportClosed
from server.room import Room
from server.session import State

if TYPE_CHECKING:
    from ssl import SSLContext

    from server.history import HistoryService
    from server.transfers import FileService

logger = logging.getLogger("server")

TIMER_TICK = 0.25  # seconds between checks of handshake, keep-alive and close deadlines
PRESENCE_DELAY = 0.05  # seconds a join, leave or rename may wait to share a write
PRESENCE_SPACING = 4  # ... or this many times what the last flush of every member took
PRESENCE_MAX_DELAY = 0.5  # ... but never longer than this
FLUSH_SLICE = 256  # members flushed between two looks at new input
BACKLOG_HELPINGS = 8  # connections served per pass from those with input left over


class Waker:
    """A non-blocking socket pair whose reading end ``selector`` watches (data
    ``None``): a byte written to the other end wakes a thread waiting in it."""

    __slots__ = ("_in", "_out")

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._in, self._out = socket.socketpair()
        try:
            self._in.setblocking(False)
            self._out.setblocking(False)
            selector.register(self._in, selectors.EVENT_READ, None)
        except BaseException:
            self.close()
            raise

    def wake(self) -> None:
        """Wake the selector's thread. Any thread; safe in a signal handler."""
        try:
            self._out.send(b"\0")
        except OSError:
            pass  # the buffer is full (a wake-up is pending) or the waker is closed

    def drain(self) -> None:
        """Read the wake-up bytes (the selector reported them)."""
        try:
            while self._in.recv(4096):
                pass
        except OSError:
            pass  # nothing more to read

    def close(self) -> None:
        self._in.close()
        self._out.close()


class IOLoop:
    """One thread serving many connections. ``adopt``, ``mark_dirty``,
    ``broadcast_pending``, ``call_soon`` and ``stop`` may be called from any
    thread; the rest only from the loop's own thread (that is, from its
    connections, which see it as a ``connection.Loop``).
    """

    def __init__(
        self,
        index: int,
        room: Room,
        config: ServerConfig,
        on_release: Callable[[Any], None],
        *,
        tls: SSLContext | None = None,
        history: HistoryService | None = None,
        files: FileService | None = None,
    ) -> None:
        self.room = room
        self._history = history  # answers its sessions' history and search
        self._files = files  # its sessions' uploads and downloads; None: no files
        self.config = config
        self._tls = tls  # the server's TLS context; None: it serves no TLS
        self._on_release = on_release
        self._selector = selectors.DefaultSelector()
        self._waker = Waker(self._selector)
        self._connections: set[Connection] = set()
        # The connections the server counted, with their addresses, for
        # on_release when they close (refused ones were not counted).
        self._counted: dict[Connection, Any] = {}
        # Connections whose decoders may hold whole frames, oldest helping
        # first (a dict keeps the order); those that read new input since
        # the last pass are also in _fresh.
        self._input: dict[Connection, None] = {}
        self._fresh: list[Connection] = []
        # Work handed over by other threads; deque appends and pops are atomic.
        self._new: deque[tuple[socket.socket, Any, bool | RemoteProtocolError]] = deque()
        self._dirty: deque[Connection] = deque()
        self._calls: deque[Callable[[], object]] = deque()
        # Connections to flush again once everything else of a pass is done
        # (the rest of a download), each once (a dict keeps the order).
        self._later: dict[Connection, None] = {}
        self._broadcast = False
        self._presence_due: float | None = None  # when held-back presence must go out
        self._flush_all_took = 0.0  # seconds the last flush of every member took
        self._stop_message: str | None = None
        self._stop_deadline = 0.0
        self._woken = False
        self._thread_id: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"chat-io-{index}", daemon=True)

    def __len__(self) -> int:
        """Connections served, counting those handed over but not yet opened."""
        return len(self._connections) + len(self._new)

    # -- any thread -------------------------------------------------------

    def adopt(
        self, sock: socket.socket, address: Any, *, refuse: bool | RemoteProtocolError = False
    ) -> None:
        """Take over a freshly accepted socket (to refuse it as ``server-full``, or
        with the fatal error ``refuse``)."""
        self._new.append((sock, address, refuse))
        self._wake()

    def mark_dirty(self, conn: Connection) -> None:
        """``conn`` has frames of its own waiting."""
        self._dirty.append(conn)
        self._wake()

    def broadcast_pending(self, urgent: bool) -> None:
        """The room's log grew: flush every member, now if ``urgent``, else soon."""
        if urgent:
            self._broadcast = True
            self._wake()
        elif self._presence_due is None:
            delay = max(PRESENCE_DELAY, PRESENCE_SPACING * self._flush_all_took)
            delay = min(delay, PRESENCE_MAX_DELAY)
            self._presence_due = time.monotonic() + delay
            self._wake()  # to sleep no longer than that

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop's thread within one pass, in the order
        asked. An exception it raises is logged. Callbacks asked for after the
        loop has stopped are not run."""
        self._calls.append(callback)
        self._wake()

    def stop(self, message: str, deadline: float) -> None:
        """Send every connection ``shutdown`` with ``message``, close them all by
        ``deadline`` (``time.monotonic``), and end."""
        self._stop_deadline = deadline
        self._stop_message = message
        self._wake()

    def _wake(self) -> None:
        # The loop's own thread runs its queues before it sleeps again, and
        # one pending wake-up byte is enough for any number of requests:
        # the loop clears _woken before it looks at the queues.
        if self._thread_id == threading.get_ident() or self._woken:
            return
        self._woken = True
        self._waker.wake()

    # -- the loop's own thread (called by its connections) ------------------

    def watch(self, conn: Connection, *, read: bool, write: bool) -> None:
        """Watch ``conn``'s transport for input, for room to write, both or neither."""
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        transport = conn.transport
        key = self._selector.get_map().get(transport)
        if key is None:
            if events:
                self._selector.register(transport, events, conn)
        elif not events:
            self._selector.unregister(transport)
        elif key.events != events:
            self._selector.modify(transport, events, conn)

    def wait_input(self, conn: Connection, waiting: bool) -> None:
        """Serve ``conn``'s input on every pass (``waiting``) or no longer."""
        if not waiting:
            self._input.pop(conn, None)
        elif conn not in self._input:
            self._input[conn] = None
            self._fresh.append(conn)

    def discard(self, conn: Connection) -> None:
        """``conn`` is closing its transport: forget it."""
        self._connections.discard(conn)
        self._input.pop(conn, None)
        if self._selector.get_map().get(conn.transport) is not None:
            self._selector.unregister(conn.transport)
        if conn in self._counted:
            self._on_release(self._counted.pop(conn))

    # -- the loop ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Release the loop's own resources once its thread has ended."""
        if self.thread.is_alive():
            logger.error("%s is still running; its resources are left open", self.thread.name)
            return
        self._selector.close()
        self._waker.close()
        self.close_new()

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        next_tick = time.monotonic() + TIMER_TICK
        try:
            while self._stop_message is None:
                wake_at = next_tick
                if (
                    self._new
                    or self._dirty
                    or self._calls
                    or self._broadcast
                    or self._input
                    or self._later
                ):
                    wake_at = 0.0
                elif (presence_due := self._presence_due) is not None:
                    wake_at = min(wake_at, presence_due)
                self._handle_events(max(0.0, wake_at - time.monotonic()))
                self._serve_input()
                presence_due = self._presence_due  # another thread may have set it
                if presence_due is not None and time.monotonic() >= presence_due:
                    self._broadcast = True
                self._run_queues()
                self._flush_later()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TIMER_TICK
                    for conn in list(self._connections):
                        _safely(conn, conn.check_timers, now)
            self._shut_down(self._stop_message)
        except Exception:
            logger.exception("I/O thread failed; closing its connections")
            for conn in list(self._connections):
                conn.abort()
            self.close_new()

    def _handle_events(self, timeout: float) -> None:
        for key, mask in self._selector.select(timeout):
            conn = key.data
            if conn is None:
                self._waker.drain()
                continue
            if mask & selectors.EVENT_READ:
                _safely(conn, conn.on_readable)
            if mask & selectors.EVENT_WRITE and conn.state is not State.CLOSED:
                _safely(conn, conn.on_writable)

    def _serve_input(self, *, backlog: bool = True) -> None:
        """Give each connection that read new input its helping, and (with
        ``backlog``) the ``BACKLOG_HELPINGS`` that have waited longest with
        input left over theirs; each goes to the back of the line.

        A client that sends in bursts then waits at most one pass however
        many flood the server, and a pass stays a few milliseconds long:
        the flooders take turns at what is left of it. Between the slices
        of a big room's flush only new input is served, so that the flush,
        which carries everyone's messages, is not drawn out by flooders.
        """
        if self._stop_message is not None:
            return  # stopping: nobody's input is handled any more
        fresh, self._fresh = self._fresh, []
        newcomers = set(fresh)
        helpings = BACKLOG_HELPINGS if backlog else 0
        first = islice(self._input, helpings + len(fresh))
        oldest = [conn for conn in first if conn not in newcomers]
        for conn in fresh + oldest[:helpings]:
            if conn in self._input:
                del self._input[conn]
                self._input[conn] = None
                _safely(conn, conn.serve_input)

    def _run_queues(self) -> None:
        self._run_own_queues()
        if self._broadcast:
            # Cleared before the flush, so a frame logged during it gets
            # another flush, and held-back presence goes out with this one.
            self._broadcast = False
            self._presence_due = None
            took = 0.0
            # Members, and leavers still reading the log (a hold may have kept
            # their tail back): every outbox with a cursor (Outbox.subscribed
            # or holds_log, without two property calls per connection).
            members = [conn for conn in self._connections if conn.outbox.cursor is not None]
            room = self.room
            for start in range(0, len(members), FLUSH_SLICE):
                started = time.monotonic()
                part = members[start : start + FLUSH_SLICE]
                # Those that keep up get the log's tail in one pass under the
                # room's lock and one send each; the rest the full flush.
                fast: list[Connection] = []
                rest: list[Connection] = []
                for conn in part:
                    (fast if conn.keeps_up else rest).append(conn)
                tails = room.pull_tails(fast, SEND_CHUNK)
                for conn, tail in zip(fast, tails, strict=True):
                    try:
                        if tail:
                            try:
                                sent = conn.send_now(tail)
                            except (OSError, TransportClosed):
                                sent = 0  # send_tail writes again and sees why
                            if sent != len(tail):
                                conn.send_tail(tail, sent)
                        elif tail is None:
                            conn.flush()
                    except Exception:
                        _internal_error(conn)
                for conn in rest:
                    try:
                        conn.flush()
                    except Exception:
                        _internal_error(conn)
                took += time.monotonic() - started
                if start + FLUSH_SLICE < len(members):
                    # Writing to a big room takes a while: meanwhile, let
                    # newcomers in and answer everyone else between slices.
                    self._handle_events(0)
                    self._serve_input(backlog=False)
                    self._run_own_queues()
            self._flush_all_took = took

    def flush_later(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this pass, after its input, callbacks and
        flushes (asked for during that flush: at the end of the next). Its thread only."""
        self._later[conn] = None

    def _flush_later(self) -> None:
        later, self._later = self._later, {}
        for conn in later:
            _safely(conn, conn.flush)

    def _run_own_queues(self) -> None:
        """Open handed-over connections, run the callbacks asked for, flush
        the connections with frames of their own."""
        self._woken = False
        while self._new:
            sock, address, refuse = self._new.popleft()
            self._open(sock, address, refuse)
        # Only those asked for so far: one that asks again runs next pass.
        for _ in range(len(self._calls)):
            callback = self._calls.popleft()
            try:
                callback()
            except Exception:
                logger.exception("%s: a callback failed: %r", self.thread.name, callback)
        # Before any flush of every member: a welcome should not wait
        # behind a write to everyone in a big room.
        while self._dirty:
            conn = self._dirty.popleft()
            _safely(conn, conn.flush)

    def _open(self, sock: socket.socket, address: Any, refuse: bool | RemoteProtocolError) -> None:
        # Plaintext until its first byte says otherwise (``Connection``).
        conn = Connection(
            PlainTransport(sock),
            address,
            self,
            self.room,
            self.config,
            tls=self._tls,
            history=self._history,
            files=self._files,
        )
        self._connections.add(conn)
        self._selector.register(conn.transport, selectors.EVENT_READ, conn)
        if refuse:
            if not isinstance(refuse, RemoteProtocolError):
                refuse = RemoteProtocolError(
                    ErrorCode.SERVER_FULL, "The server is full; try again later."
                )
            conn.refuse(refuse)
            return
        self._counted[conn] = address
        if self._stop_message is not None:  # accepted just as the server stops
            conn.shut_down(self._stop_message)

    def _shut_down(self, message: str) -> None:
        self._run_queues()  # connections handed over just before the stop get told too
        for conn in list(self._connections):
            _safely(conn, conn.shut_down, message)
        while self._connections:
            remaining = self._stop_deadline - time.monotonic()
            if remaining <= 0:
                break
            self._handle_events(min(remaining, TIMER_TICK))
            self._run_queues()
        for conn in list(self._connections):
            conn.abort()

    def close_new(self) -> None:
        """Close sockets handed over but never opened (the loop is not running)."""
        while self._new:
            self._new.popleft()[0].close()


def _safely(conn: Connection, action: Callable[..., None], *args: object) -> None:
    """Run one connection's handler; a bug met there closes that connection
    only, not every other one served by the same thread."""
    try:
        action(*args)
    except Exception:
        _internal_error(conn)


def _internal_error(conn: Connection) -> None:
    """Log the exception being handled and close ``conn``."""
    logger.exception("%s: internal error; closing the connection", conn.who)
    conn.abort(LeaveReason.ERROR)
