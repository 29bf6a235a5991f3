"""Server settings: every policy default in one place (PROTOCOL.md prescribes most).

They are the server's own: the client paces itself by the errors it gets,
not by these numbers, so they live here rather than in the protocol.
"""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import platformdirs

from server.protocol import DEFAULT_PORT
from server.protocol.discovery import MAX_ROOM_NAME

RATE_BURST = 20
RATE_PER_SECOND = 5.0
HANDSHAKE_TIMEOUT = 10.0
IDLE_PING_AFTER = 30.0
IDLE_TIMEOUT = 90.0
DEFAULT_HISTORY = 100
HISTORY_FILE = "history.sqlite3"  # in the data folder
DEFAULT_MAX_QUEUE = 1024 * 1024
# Files (PROTOCOL.md, "Files and images"): kept in FILES_FOLDER of the data
# folder; the largest upload, and what all of them together may take (the
# oldest go first), in MiB.
FILES_FOLDER = "files"
DEFAULT_MAX_FILE_MB = 100
DEFAULT_FILES_QUOTA_MB = 4096

DEFAULT_REDIS_ROOM = "lan-chat"
DEFAULT_REDIS_HEARTBEAT = 1.0

DEFAULT_MAX_CLIENTS = 10_000
# One loop thread serves every connection. A second one overlaps one
# client's system calls with another's frame handling, but the two then
# pass Python's interpreter lock back and forth: measured on two cores,
# one thread delivered more (fan-out 1.02 M/s against 0.86 M/s, at 0.31
# against 0.40 CPU-seconds per million) and let 10,000 clients join faster
# (22 s against 27 s). ``--io-threads`` is there for bigger machines.
DEFAULT_IO_THREADS = 1
# How long a thread that wants the interpreter waits before the running one
# is made to give it up (Python's default is 5 ms). The history's writer
# needs it a few times per commit, and every message waits for a commit:
# behind a loop thread busy with a flood, 5 ms a time made a commit take
# tens of milliseconds. A thread that runs alone is never interrupted.
GIL_SWITCH_INTERVAL = 0.0005

# Per-address limits (PROTOCOL.md, "Operators and moderation"; NOTES-trust.md
# "Throttling and moderation"): open connections per address, and more than
# IP_RATE new ones in IP_RATE_WINDOW seconds block it for IP_BLOCK seconds,
# except in the first IP_RATE_GRACE seconds (a restart's reconnect wave).
DEFAULT_MAX_PER_IP = 32
IP_RATE = 20
IP_RATE_WINDOW = 10.0
IP_BLOCK = 300.0
IP_RATE_GRACE = 120.0
LOOPBACK = ("127.0.0.0/8", "::1")


class TlsMode(enum.StrEnum):
    """Which connections the server serves (PROTOCOL.md, "Encryption")."""

    OFF = "off"  # plaintext only: a TLS ClientHello gets tls-unavailable
    AUTO = "auto"  # both, told apart by the first byte
    REQUIRED = "required"  # TLS only: a plaintext connection gets tls-required


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``burst`` tokens, refilled at ``per_second``."""

    burst: int = RATE_BURST
    per_second: float = RATE_PER_SECOND


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server can be told; the command line maps onto it.

    ``host`` ``None`` listens on every interface (IPv4 and IPv6 where the
    OS allows one dual-stack socket). ``port`` 0 picks a free port.
    ``rate_limit`` ``None`` turns rate limiting off (for benchmarks).
    The timeouts are in seconds; tests shorten them.
    """

    host: str | None = None
    port: int = DEFAULT_PORT
    max_clients: int = DEFAULT_MAX_CLIENTS
    history: int = DEFAULT_HISTORY
    motd: str | None = None
    rate_limit: RateLimit | None = RateLimit()
    max_queue: int = DEFAULT_MAX_QUEUE
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_ping_after: float = IDLE_PING_AFTER
    idle_timeout: float = IDLE_TIMEOUT
    io_threads: int = DEFAULT_IO_THREADS
    shutdown_message: str = "The server is shutting down"
    # Where what must outlive the process is kept (identity, bans, history);
    # None: the user's data folder (``default_data_dir``).
    data_dir: Path | None = None
    # operators extension: the operator password (None: only the console is
    # one); turned into a slow hash and a keyed tag at start, never logged.
    op_password: str | None = field(default=None, repr=False)
    # Encryption; every mode but OFF needs the identity in the data folder.
    tls: TlsMode = TlsMode.AUTO
    # Per-address limits (``server.limits``); ``ip_limit_exempt`` holds
    # addresses or prefixes exempt from them and from the wrong-password count.
    max_per_ip: int = DEFAULT_MAX_PER_IP
    ip_rate: int = IP_RATE
    ip_rate_window: float = IP_RATE_WINDOW
    ip_block: float = IP_BLOCK
    ip_rate_grace: float = IP_RATE_GRACE
    ip_limit_exempt: tuple[str, ...] = LOOPBACK
    # room password extension: None lets anyone in; otherwise every hello
    # must carry it, only over TLS (the server then behaves as tls
    # REQUIRED), and it is kept as a slow hash and a keyed tag, never logged.
    room_password: str | None = field(default=None, repr=False)
    # History on disk (PROTOCOL.md, "History pages and search"): every public
    # message in the data folder, ids going on across restarts; False keeps
    # today's memory-only window of ``history``. Retention: None keeps all.
    store: bool = True
    keep_days: float | None = None
    keep_messages: int | None = None
    # Files: False answers every file frame files-disabled. Without the
    # store they are kept in a temporary folder, gone at the stop with the
    # messages that named them.
    files: bool = True
    max_file_mb: int = DEFAULT_MAX_FILE_MB
    files_quota_mb: int = DEFAULT_FILES_QUOTA_MB
    # Discovery (PROTOCOL.md, "Finding servers on the LAN"): answer queries on
    # UDP at the port's number; the room's name in the answers (None:
    # ``default_room_name``).
    discovery: bool = True
    room_name: str | None = None
    # Several servers, one room (PROTOCOL.md): the Redis that orders the
    # room's events (None: this server alone is the room), the room's name
    # there (servers with the same one share a room), and the heartbeat in
    # seconds (a server out of touch for 5 of them closes its clients; one
    # silent for 10 is taken for dead). Files stay on one server's disk, so
    # a shared room shares none.
    redis_url: str | None = None
    redis_room: str = DEFAULT_REDIS_ROOM
    redis_heartbeat: float = DEFAULT_REDIS_HEARTBEAT

    def data_path(self) -> Path:
        """The data folder this configuration names (not created here)."""
        return self.data_dir if self.data_dir is not None else default_data_dir()


def features(config: ServerConfig) -> tuple[str, ...]:
    """What ``welcome.features`` lists for ``config`` (PROTOCOL.md, "Extensions"):
    only what this server offers as configured, in the order PROTOCOL.md names them."""
    offered: list[str] = []
    if config.tls is not TlsMode.OFF:
        offered.append("tls")
    if config.room_password is not None:
        offered.append("password")
    offered.append("operators")  # always: the console is one, and bans apply
    offered += ["history-pages", "search"]  # always: over the disk, or what memory holds
    if config.files and config.redis_url is None:
        offered.append("files")
    if config.discovery:
        offered.append("discovery")
    return tuple(offered)


def shown_url(url: str) -> str:
    """A ``--redis`` URL as it may be printed or logged: its password hidden."""
    scheme, sep, rest = url.partition("://")
    _credentials, at, place = rest.rpartition("@")
    return f"{scheme}{sep}***@{place}" if at else url


def server_version() -> str:
    """The version in pyproject.toml, as installed (frozen builds bundle the metadata)."""
    try:
        return metadata.version("lan-chat")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def default_room_name() -> str:
    """What discovery calls the room unless ``--room-name`` says: this computer's name."""
    host = socket.gethostname().split(".")[0].strip() or "this computer"
    return f"Chat on {host}"[:MAX_ROOM_NAME]


def default_data_dir() -> Path:
    """The user's data folder for the server, as the OS names it (overridable
    with LAN_CHAT_DATA_DIR, for tests: a server's every start now writes there)."""
    folder = os.environ.get("LAN_CHAT_DATA_DIR")
    if folder:
        return Path(folder)
    return platformdirs.user_data_path("lan-chat-server", appauthor=False)
