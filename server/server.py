"""The threaded chat server: listening sockets, I/O threads, start and stop.

How this works: the thread that calls ``serve_forever`` accepts
connections and deals each to one of ``config.io_threads`` ``IOLoop``
threads. Each loop serves its connections with one selector (epoll,
kqueue or select): it reads and handles their frames, and writes what the
``Room`` owes them. A thread per connection would cost a stack per
client and a wake-up per delivered message; a few loops hold thousands of
clients and write each one's pending frames in one call. Each pass of a
loop gives every connection a bounded helping of work (one read, a few
dozen frames; see ``connection``), and flushes what that work queued, so
that a flooding client delays the others by milliseconds; a stop request
is seen within one pass.

Threads meet only in the room (one lock, no socket I/O under it) and in
each loop's wake-up queue: when a message is added to the room's
broadcast log, every loop is woken once and flushes all of its members; a
frame for one member wakes just that member's loop. Presence (joins,
leaves, renames) is held back for a moment to be flushed with whatever
else comes: every join is news to everyone, so when a thousand people
join at once, writing each join to each member on its own would cost a
million system calls. The moment is ``PRESENCE_DELAY``, or longer (up to
``PRESENCE_MAX_DELAY``) in a room so big that writing to every member
takes a while, so that presence takes no more than about a fifth of a
loop's time. The room asks for a flush at once when the presence held
back nears the slow-reader bound.

The life cycle follows ``socketserver``: construct (binds, so ``port`` is
known), ``serve_forever()`` in some thread, ``shutdown()`` from another (or
``stop_soon()`` from a signal handler), ``server_close()``, or use it as a
context manager. Stopping sends every client ``shutdown``, closes every
connection and joins every thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

from server.config import ServerConfig
from server.connection import Connection, State
from server.protocol import ErrorCode, LeaveReason, RemoteProtocolError
from server.room import Room

logger = logging.getLogger("server")

LISTEN_BACKLOG = 4096  # the kernel caps it at somaxconn; join bursts need room
ACCEPT_BATCH = 256  # accepts per wake-up, so that a stop request is seen soon
TIMER_TICK = 0.25  # seconds between checks of handshake, keep-alive and close deadlines
SHUTDOWN_GRACE = 1.0  # seconds clients get to take the shutdown frame
PRESENCE_DELAY = 0.05  # seconds a join, leave or rename may wait to share a write
PRESENCE_SPACING = 4  # ... or this many times what the last flush of every member took
PRESENCE_MAX_DELAY = 0.5  # ... but never longer than this
FLUSH_SLICE = 256  # members flushed between two looks at new input
BACKLOG_HELPINGS = 8  # connections served per pass from those with input left over
# Windows has only select(), which CPython builds for 512 sockets at most:
# there a loop takes 500 connections and more loops start as needed.
# epoll and kqueue have no such limit.
LOOP_CAPACITY = 500 if sys.platform == "win32" else None

_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class IOLoop:
    """One thread serving many connections. ``adopt``, ``mark_dirty``,
    ``broadcast_pending`` and ``stop`` may be called from any thread; the
    rest only from the loop's own thread (that is, from its connections).
    """

    def __init__(
        self, index: int, room: Room, config: ServerConfig, on_release: Callable[[], None]
    ) -> None:
        self.room = room
        self.config = config
        self._on_release = on_release
        self._selector = selectors.DefaultSelector()
        self._wake_in, self._wake_out = _wake_pair(self._selector)
        self._connections: set[Connection] = set()
        self._members: set[Connection] = set()
        self._refused: set[Connection] = set()
        # Connections whose decoders may hold whole frames, oldest helping
        # first (a dict keeps the order); those that read new input since
        # the last pass are also in _fresh.
        self._input: dict[Connection, None] = {}
        self._fresh: list[Connection] = []
        # Work handed over by other threads; deque appends and pops are atomic.
        self._new: deque[tuple[socket.socket, Any, bool]] = deque()
        self._dirty: deque[Connection] = deque()
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

    def adopt(self, sock: socket.socket, address: Any, *, refuse: bool = False) -> None:
        """Take over a freshly accepted socket (to refuse it as ``server-full``)."""
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
        try:
            self._wake_out.send(b"\0")
        except OSError:
            pass  # the buffer is full (a wake-up is pending) or the loop is gone

    # -- the loop's own thread (called by its connections) ------------------

    def watch(self, conn: Connection, *, read: bool, write: bool) -> None:
        """Watch ``conn`` for input, for room to write, both or neither."""
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        key = self._selector.get_map().get(conn.sock)
        if key is None:
            if events:
                self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        elif key.events != events:
            self._selector.modify(conn.sock, events, conn)

    def wait_input(self, conn: Connection, waiting: bool) -> None:
        """Serve ``conn``'s input on every pass (``waiting``) or no longer."""
        if not waiting:
            self._input.pop(conn, None)
        elif conn not in self._input:
            self._input[conn] = None
            self._fresh.append(conn)

    def joined_room(self, conn: Connection) -> None:
        self._members.add(conn)

    def left_room(self, conn: Connection) -> None:
        self._members.discard(conn)

    def discard(self, conn: Connection) -> None:
        """``conn`` is closing its socket: forget it."""
        self._members.discard(conn)
        self._connections.discard(conn)
        self._input.pop(conn, None)
        if self._selector.get_map().get(conn.sock) is not None:
            self._selector.unregister(conn.sock)
        if conn in self._refused:
            self._refused.discard(conn)
        else:
            self._on_release()

    # -- the loop ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Release the loop's own resources once its thread has ended."""
        if self.thread.is_alive():
            logger.error("%s is still running; its resources are left open", self.thread.name)
            return
        self._selector.close()
        self._wake_in.close()
        self._wake_out.close()
        self.close_new()

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        next_tick = time.monotonic() + TIMER_TICK
        try:
            while self._stop_message is None:
                wake_at = next_tick
                if self._new or self._dirty or self._broadcast or self._input:
                    wake_at = 0.0
                elif (presence_due := self._presence_due) is not None:
                    wake_at = min(wake_at, presence_due)
                self._handle_events(max(0.0, wake_at - time.monotonic()))
                self._serve_input()
                presence_due = self._presence_due  # another thread may have set it
                if presence_due is not None and time.monotonic() >= presence_due:
                    self._broadcast = True
                self._run_queues()
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
                _drain(self._wake_in)
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
            members = list(self._members)
            for start in range(0, len(members), FLUSH_SLICE):
                started = time.monotonic()
                for conn in members[start : start + FLUSH_SLICE]:
                    _safely(conn, conn.flush)
                took += time.monotonic() - started
                if start + FLUSH_SLICE < len(members):
                    # Writing to a big room takes a while: meanwhile, let
                    # newcomers in and answer everyone else between slices.
                    self._handle_events(0)
                    self._serve_input(backlog=False)
                    self._run_own_queues()
            self._flush_all_took = took

    def _run_own_queues(self) -> None:
        """Open handed-over connections, flush those with frames of their own."""
        self._woken = False
        while self._new:
            sock, address, refuse = self._new.popleft()
            self._open(sock, address, refuse)
        # Before any flush of every member: a welcome should not wait
        # behind a write to everyone in a big room.
        while self._dirty:
            conn = self._dirty.popleft()
            _safely(conn, conn.flush)

    def _open(self, sock: socket.socket, address: Any, refuse: bool) -> None:
        conn = Connection(sock, address, self, self.room, self.config)
        self._connections.add(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)
        if refuse:
            self._refused.add(conn)
            conn.fail(
                RemoteProtocolError(ErrorCode.SERVER_FULL, "The server is full; try again later."),
                None,
            )
        elif self._stop_message is not None:  # accepted just as the server stops
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


class ChatServer:
    """The chat server. See the module docstring for its life cycle.

    Raises ``OSError`` from the constructor when it cannot listen (port in
    use, no such address, no permission) and ``socket.gaierror`` for an
    unknown host name.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        self.room = Room(
            history=config.history,
            motd=config.motd,
            max_backlog=config.max_queue,
            on_broadcast=self._broadcast_pending,
        )
        self._listeners = bind_listeners(config.host, config.port)
        self._loops: list[IOLoop] = []
        self._open_count = 0
        self._count_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        try:
            self._wake_in, self._wake_out = _wake_pair(self._selector)
            for listener in self._listeners:
                self._selector.register(listener, selectors.EVENT_READ, listener)
            for _ in range(max(1, config.io_threads)):
                self._loops.append(self._new_loop())
        except BaseException:  # out of file descriptors, most likely
            self._close_resources()
            raise
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._started = False
        self._lifecycle = threading.Lock()

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server_close()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the server listens on."""
        return [listener.getsockname()[:2] for listener in self._listeners]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def connection_count(self) -> int:
        """Open connections, joined or not (refused ones aside)."""
        return self._open_count

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and serve clients until ``shutdown`` or ``stop_soon``.

        ``poll_interval`` bounds how long a wait lasts, so that Ctrl+C is
        noticed on Windows, where it cannot interrupt a select.
        """
        with self._lifecycle:
            if self._started:
                raise RuntimeError("serve_forever can run only once per server")
            self._started = True
            if self._stop_requested.is_set():
                return  # shut down before it started
            self._stopped.clear()
        try:
            for loop in self._loops:
                loop.start()
            while not self._stop_requested.is_set():
                for key, _ in self._selector.select(poll_interval):
                    if key.data is None:
                        _drain(self._wake_in)
                    elif not self._stop_requested.is_set():
                        self._accept(key.data)
        finally:
            self._stop_loops()
            self._stopped.set()

    def stop_soon(self) -> None:
        """Ask ``serve_forever`` to stop, without waiting. Safe in a signal handler."""
        self._stop_requested.set()
        try:
            self._wake_out.send(b"\0")
        except OSError:
            pass  # a wake-up is pending already, or the server is closed

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and wait until every client is told and closed.

        Call it from another thread than the one in ``serve_forever``.
        """
        with self._lifecycle:  # serve_forever either sees the request or is waited for
            self._stop_requested.set()
        self.stop_soon()
        self._stopped.wait()

    def server_close(self) -> None:
        """Release the listening sockets and the threads' resources."""
        self.shutdown()
        self._close_resources()

    def _close_resources(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._selector.close()
        for sock in (getattr(self, "_wake_in", None), getattr(self, "_wake_out", None)):
            if sock is not None:
                sock.close()
        for loop in self._loops:
            loop.close()

    # -- internals ---------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FD_EXHAUSTED:
                    logger.error("Cannot accept more connections: %s", exc)
                    time.sleep(0.1)  # the backlog stays readable; do not spin
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer may have reset it already; reading will tell
            with self._count_lock:
                refuse = self._open_count >= self.config.max_clients
                if not refuse:
                    self._open_count += 1
            self._least_busy_loop().adopt(sock, address, refuse=refuse)

    def _new_loop(self) -> IOLoop:
        return IOLoop(len(self._loops), self.room, self.config, self._release)

    def _least_busy_loop(self) -> IOLoop:
        # A loop whose thread died of a bug would take clients and serve none.
        running = [loop for loop in self._loops if loop.thread.is_alive()]
        loop = min(running, key=len) if running else None
        if loop is None or (LOOP_CAPACITY is not None and len(loop) >= LOOP_CAPACITY):
            loop = self._new_loop()
            self._loops.append(loop)  # other threads only iterate the list
            loop.start()
        return loop

    def _release(self) -> None:
        with self._count_lock:
            self._open_count -= 1

    def _broadcast_pending(self, urgent: bool) -> None:
        for loop in self._loops:
            loop.broadcast_pending(urgent)

    def _stop_loops(self) -> None:
        self.room.close()
        # One deadline for all loops, so that the whole stop stays within
        # PROTOCOL.md's two seconds however many loops and clients there are.
        deadline = time.monotonic() + SHUTDOWN_GRACE
        started = [loop for loop in self._loops if loop.thread.ident is not None]
        for loop in started:
            loop.stop(self.config.shutdown_message, deadline)
        for loop in started:
            loop.thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
            if loop.thread.is_alive():
                logger.error("%s did not stop in time", loop.thread.name)


def _safely(conn: Connection, action: Callable[..., None], *args: object) -> None:
    """Run one connection's handler; a bug met there closes that connection
    only, not every other one served by the same thread."""
    try:
        action(*args)
    except Exception:
        logger.exception("%s: internal error; closing the connection", conn.who)
        conn.abort(LeaveReason.ERROR)


def _wake_pair(selector: selectors.BaseSelector) -> tuple[socket.socket, socket.socket]:
    """A non-blocking socket pair whose reading end ``selector`` watches (data ``None``):
    a byte written to the other end wakes a thread waiting in that selector."""
    wake_in, wake_out = socket.socketpair()
    wake_in.setblocking(False)
    wake_out.setblocking(False)
    selector.register(wake_in, selectors.EVENT_READ, None)
    return wake_in, wake_out


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass  # nothing more to read


def bind_listeners(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (``None``: every interface) and ``port``.

    A host name with several addresses (``localhost``) gets one socket per
    address, all on the same port; addresses this machine lacks are
    skipped as long as one is left.
    """
    if not host:
        if socket.has_dualstack_ipv6():
            return [_listen(socket.AF_INET6, ("::", port), dualstack=True)]
        return [_listen(socket.AF_INET, ("0.0.0.0", port))]
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    unavailable: OSError | None = None
    seen = set()
    for family, _, _, _, sockaddr in infos:
        if (family, sockaddr[0]) in seen:
            continue
        seen.add((family, sockaddr[0]))
        if listeners:  # port 0: every address shares the first one's port
            bind_to = (sockaddr[0], listeners[0].getsockname()[1], *sockaddr[2:])
        else:
            bind_to = sockaddr
        try:
            listeners.append(_listen(family, bind_to))
        except OSError as exc:
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                for listener in listeners:
                    listener.close()
                raise
            unavailable = exc
    if not listeners:
        raise unavailable or OSError(errno.EADDRNOTAVAIL, f"no address for {host}")
    return listeners


def _listen(family: int, sockaddr: tuple[Any, ...], *, dualstack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform == "win32":
            # Windows' SO_REUSEADDR would let another program steal the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            # Rebind at once after a restart, despite connections in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def lan_addresses() -> list[str]:
    """This machine's addresses that others on the network may reach, IPv4 first.

    Found from the host name, so it sends nothing on the network; may be
    empty where the host name does not resolve to a LAN address.
    """
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except OSError:
        return []
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            found.add(ip)
    return [str(ip) for ip in sorted(found, key=lambda ip: (ip.version, ip))]
