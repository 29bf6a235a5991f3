"""The chat server: listening sockets, I/O threads, start and stop.

How this works: the thread that calls ``serve_forever`` accepts
connections and deals each to the least busy of ``config.io_threads``
``IOLoop`` threads (``io_loop``), which serve them from then on. Threads
meet only in the room (one lock, no socket I/O under it) and in each
loop's queues: the room's ``on_broadcast`` hook wakes every loop to flush
its members, and a frame for one member wakes just that member's loop.

The life cycle follows ``socketserver``: construct (binds, so ``port`` is
known), ``serve_forever()`` in some thread, ``shutdown()`` from another (or
``stop_soon()`` from a signal handler), ``server_close()``, or use it as a
context manager. Stopping sends every client ``shutdown``, closes every
connection and joins every thread.

Encryption: unless ``config.tls`` is ``off``, the constructor reads the
server's identity from its data folder, making it on the first start
(``server.identity``), and builds the one TLS context every loop's
connections share.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from server.config import (
    FILES_FOLDER,
    GIL_SWITCH_INTERVAL,
    HISTORY_FILE,
    ServerConfig,
    TlsMode,
    default_room_name,
    features,
    server_version,
)
from server.discovery import DiscoveryResponder
from server.files import FileStore
from server.history import HistoryService
from server.identity import Identity, IdentityError, load_identity
from server.io_loop import IOLoop, Waker
from server.limits import AddressLimits
from server.passwords import GuessCounter, Secret
from server.protocol import Announcement, RemoteProtocolError
from server.protocol.transport import server_context
from server.room import Room, banned_error
from server.shared_room import SharedRoom
from server.store import HistoryStore
from server.store.backplane import Backplane
from server.store.bans import BanStore
from server.store.lock import FolderInUse, FolderLock, StoreError, lock_data_folder
from server.store.memory import MemoryHistory
from server.store.sqlite import SqliteHistory
from server.transfers import FileService

logger = logging.getLogger("server")

LISTEN_BACKLOG = 4096  # the kernel caps it at somaxconn; join bursts need room
ACCEPT_BATCH = 256  # accepts per wake-up, so that a stop request is seen soon
SHUTDOWN_GRACE = 1.0  # seconds clients get to take the shutdown frame
MIB = 1024 * 1024
HISTORY_FLUSH = 0.5  # seconds the last messages get to reach the disk at a stop
# Windows has only select(), which CPython builds for 512 sockets at most:
# there a loop takes 500 connections and more loops start as needed.
# epoll and kqueue have no such limit.
LOOP_CAPACITY = 500 if sys.platform == "win32" else None

_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ChatServer:
    """The chat server. See the module docstring for its life cycle.

    Raises ``OSError`` from the constructor when it cannot listen (port in
    use, no such address, no permission), ``socket.gaierror`` for an
    unknown host name, and ``IdentityError`` when its identity cannot be
    read or made.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        # room password extension: the password travels only inside TLS.
        if config.room_password is not None:
            if config.tls is TlsMode.OFF:
                raise ValueError("A room password needs encryption: not with tls off.")
            self.config = config = dataclasses.replace(config, tls=TlsMode.REQUIRED)
        # Before anything is bound or started: a bad identity file is a plain error.
        self.identity: Identity | None = None
        self._tls: ssl.SSLContext | None = None
        if config.tls is not TlsMode.OFF:
            self.identity = load_identity(config.data_path())
            try:
                self._tls = server_context(str(self.identity.path))
            except ssl.SSLError as exc:
                raise IdentityError(
                    f"TLS cannot use the server's identity file {self.identity.path}: {exc}."
                ) from None
        # Per-address limits, checked at accept; wrong passwords share their exemption.
        self.limits = AddressLimits.from_config(config, time.monotonic())
        self._disk: SqliteHistory | None = None
        self._folder_lock: FolderLock | None = None
        self._saving = True
        self.history = self._open_history(config)  # raises FolderInUse
        self._files_temp: Path | None = None  # a folder of files removed at the stop
        self.files: FileService | None = None
        try:
            self.files = self._open_files(config)
            self._start(config)
        except BaseException:
            self._close_files()
            self._close_history()
            raise

    def _start(self, config: ServerConfig) -> None:
        self._listeners = bind_listeners(config.host, config.port)
        self._room_name = config.room_name or default_room_name()
        self._version = server_version()
        self.discovery: DiscoveryResponder | None = None
        try:
            if config.discovery:
                hosts = [h for h, _ in self.addresses] if config.host else [""]
                self.discovery = DiscoveryResponder.bind(hosts, self.port, self._describe)
            # Only what it can do: no files if no folder could keep them, no
            # discovery if no UDP socket could be had.
            offered = dataclasses.replace(
                config, files=self.files is not None, discovery=self.discovery is not None
            )
            room_settings: dict[str, Any] = dict(
                history_store=self.history,
                ids=self._disk,
                motd=config.motd,
                max_backlog=config.max_queue,
                on_broadcast=self._broadcast_pending,
                # operators extension
                bans=BanStore.in_folder(config.data_path()),
                op_secret=None
                if config.op_password is None
                else Secret.from_password(config.op_password),
                tls=config.tls,
                guesses=GuessCounter(exempt=self.limits.exempt),
                features=features(offered),
                # room password extension: hashed once, here
                room_secret=None
                if config.room_password is None
                else Secret.from_password(config.room_password),
            )
            self.room = (
                Room(**room_settings)
                if config.redis_url is None
                else SharedRoom(_backplane(config), **room_settings)
            )
        except BaseException:
            for listener in self._listeners:
                listener.close()
            if self.discovery is not None:
                self.discovery.close()
            raise
        self._answers: HistoryService | None = None
        self._loops: list[IOLoop] = []
        self._open_count = 0
        self._count_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        try:
            self._waker = Waker(self._selector)
            for listener in self._listeners:
                self._selector.register(listener, selectors.EVENT_READ, listener)
            if self.discovery is not None:
                for udp in self.discovery.sockets:
                    self._selector.register(udp, selectors.EVENT_READ, self.discovery)
            self._answers = HistoryService(self.history)
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
        if isinstance(self.room, SharedRoom):
            self.room.start()  # the loops exist: what it applies can reach them

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server_close()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the server listens on."""
        return [listener.getsockname()[:2] for listener in self._listeners]

    @property
    def room_name(self) -> str:
        """What discovery replies call the room."""
        return self._room_name

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
        # For the whole process: its threads hand the interpreter over sooner
        # (config.GIL_SWITCH_INTERVAL says why).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        try:
            for loop in self._loops:
                loop.start()
            while not self._stop_requested.is_set():
                for key, _ in self._selector.select(poll_interval):
                    if key.data is None:
                        self._waker.drain()
                    elif isinstance(key.data, DiscoveryResponder):
                        key.data.on_readable(key.fileobj)  # type: ignore[arg-type]
                    elif not self._stop_requested.is_set():
                        self._accept(key.data)
        finally:
            self._stop_loops()
            self._stopped.set()

    def stop_soon(self) -> None:
        """Ask ``serve_forever`` to stop, without waiting. Safe in a signal handler."""
        self._stop_requested.set()
        self._waker.wake()

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
        discovery: DiscoveryResponder | None = getattr(self, "discovery", None)
        if discovery is not None:
            discovery.close()
        self._selector.close()
        waker: Waker | None = getattr(self, "_waker", None)  # None: the constructor failed
        if waker is not None:
            waker.close()
        for loop in self._loops:
            loop.close()
        room = getattr(self, "room", None)
        if isinstance(room, SharedRoom):
            room.close()  # never served: its backplane still stops
        if self._answers is not None:
            self._answers.close()
        self._close_files()
        self._close_history()

    # -- internals ---------------------------------------------------------

    def _describe(self) -> Announcement:
        """The room as a discovery reply tells it (the accepting thread)."""
        config = self.config
        return Announcement(
            room=self._room_name,
            port=self.port,
            users=len(self.room),
            tls=config.tls.value,  # REQUIRED when there is a password (the constructor)
            password=config.room_password is not None,
            version=self._version,
            fingerprint=None if self.identity is None else self.identity.fingerprint,
        )

    def _open_history(self, config: ServerConfig) -> HistoryStore:
        """The room's history: on disk in the data folder unless ``--no-store``,
        in memory if the disk store cannot be opened (said in the log)."""
        if not config.store:
            return MemoryHistory(config.history)
        folder = config.data_path()
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # what was said is private
            self._folder_lock = lock_data_folder(folder)
            self._disk = SqliteHistory(
                folder / HISTORY_FILE,
                recent=config.history,
                keep_days=config.keep_days,
                keep_messages=config.keep_messages,
                on_status=self._history_status,
            )
        except FolderInUse:
            raise
        except (StoreError, OSError) as exc:
            self._close_history()
            why = exc if isinstance(exc, StoreError) else f"Cannot use {folder}: {exc.strerror}."
            logger.error(
                "%s The room's messages are kept in memory only, and lost when the server stops.",
                why,
            )
            return MemoryHistory(config.history)
        return self._disk

    def _open_files(self, config: ServerConfig) -> FileService | None:
        """The shared files: in the data folder beside the history on disk; in a
        temporary folder without the store, or if that folder cannot be used."""
        if not config.files or config.redis_url is not None:
            # A file is on one server's disk; a shared room has several.
            return None
        max_file, quota = config.max_file_mb * MIB, config.files_quota_mb * MIB
        if self._disk is not None:
            folder = config.data_path() / FILES_FOLDER
            try:
                return FileService(FileStore(folder, max_file=max_file, quota=quota))
            except (StoreError, OSError) as exc:
                logger.error("Cannot keep files in %s (%s); they are kept until the server "
                             "stops only.", folder, exc)  # fmt: skip
        try:
            self._files_temp = Path(tempfile.mkdtemp(prefix="lan-chat-files-"))
            store = FileStore(self._files_temp / FILES_FOLDER, max_file=max_file, quota=quota)
        except (StoreError, OSError) as exc:
            logger.error("Cannot keep files anywhere (%s); file sharing is off.", exc)
            return None
        return FileService(store)

    def _close_files(self) -> None:
        if self.files is not None:
            self.files.close()
            self.files = None
        if self._files_temp is not None:
            shutil.rmtree(self._files_temp, ignore_errors=True)
            self._files_temp = None

    def _history_status(self, text: str, saving: bool) -> None:
        """The disk store's thread: its disk failed, is slow, or works again."""
        # Failing is an error, a slow disk a warning, working again news.
        level = logging.WARNING if saving and self._saving else logging.INFO
        logger.log(level if saving else logging.ERROR, "%s", text)
        changed, self._saving = saving != self._saving, saving
        room: Room | None = getattr(self, "room", None)  # None: still starting
        if changed and room is not None:
            # Everyone should know when what they say may not outlive the server.
            room.notice(text, None)

    def _close_history(self) -> None:
        if self._disk is not None:
            self._disk.close()
        if self._folder_lock is not None:
            self._folder_lock.release()
            self._folder_lock = None

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
            # operators extension: a banned address is refused before anything
            # else, in plaintext, whatever it sends (PROTOCOL.md); so is one
            # over its per-address limits.
            host = str(address[0])
            ban = self.room.bans.match_address(host)
            refuse: bool | RemoteProtocolError
            if ban is not None:
                refuse = banned_error(ban, "Your address is banned from this room")
            else:
                refuse = self.limits.admit(host, time.monotonic()) or False
                if not refuse:
                    with self._count_lock:
                        refuse = self._open_count >= self.config.max_clients
                        if not refuse:
                            self._open_count += 1
                    if refuse:
                        self.limits.release(host)
            self._least_busy_loop().adopt(sock, address, refuse=refuse)

    def _new_loop(self) -> IOLoop:
        return IOLoop(
            len(self._loops),
            self.room,
            self.config,
            self._release,
            tls=self._tls,
            history=self._answers,
            files=self.files,
        )

    def _least_busy_loop(self) -> IOLoop:
        # A loop whose thread died of a bug would take clients and serve none.
        running = [loop for loop in self._loops if loop.thread.is_alive()]
        loop = min(running, key=len) if running else None
        if loop is None or (LOOP_CAPACITY is not None and len(loop) >= LOOP_CAPACITY):
            loop = self._new_loop()
            self._loops.append(loop)  # other threads only iterate the list
            loop.start()
        return loop

    def _release(self, address: Any) -> None:
        with self._count_lock:
            self._open_count -= 1
        self.limits.release(str(address[0]))

    def _broadcast_pending(self, urgent: bool) -> None:
        for loop in self._loops:
            loop.broadcast_pending(urgent)

    def _stop_loops(self) -> None:
        self.room.close()
        if self._disk is not None:
            # What was said last is seen before the shutdown frame, and kept.
            self._disk.flush(HISTORY_FLUSH)
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


def _backplane(config: ServerConfig) -> Backplane:
    """The Redis backplane ``config`` names (``redis`` is imported only for it)."""
    from server.store.redis_log import RedisBackplane  # noqa: PLC0415

    assert config.redis_url is not None
    return RedisBackplane(config.redis_url, config.redis_room, heartbeat=config.redis_heartbeat)


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
