"""``python -m server`` / ``chat-server``: run the chat server until Ctrl+C."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from server.admin import Console, start_console
from server.chat_server import ChatServer, lan_addresses
from server.config import (
    DEFAULT_FILES_QUOTA_MB,
    DEFAULT_HISTORY,
    DEFAULT_IO_THREADS,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_PER_IP,
    DEFAULT_REDIS_HEARTBEAT,
    DEFAULT_REDIS_ROOM,
    LOOPBACK,
    RATE_BURST,
    RATE_PER_SECOND,
    RateLimit,
    ServerConfig,
    TlsMode,
    default_data_dir,
    default_room_name,
    server_version,
    shown_url,
)
from server.identity import Identity, IdentityError, load_identity
from server.limits import parse_exempt
from server.protocol import (
    DEFAULT_PORT,
    LONE_SURROGATE,
    MAX_SERVER_FRAME,
    SERVER_MESSAGES,
    TEXT_REMOVED,
    Bye,
    ChatMessage,
    FrameDecoder,
    Hello,
    Message,
    Say,
    Welcome,
    encode,
    parse_message,
)
from server.protocol.discovery import MAX_ROOM_NAME
from server.protocol.fingerprint import invite, invite_code, safety_words
from server.protocol.transport import client_context
from server.store.bans import BanStoreError
from server.store.lock import FolderInUse

logger = logging.getLogger("server")

OP_PASSWORD_ENV = "LAN_CHAT_OP_PASSWORD"
PASSWORD_ENV = "LAN_CHAT_PASSWORD"  # room password extension


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def _number(
    kind: type[int] | type[float], allowed: Callable[[float], bool], rule: str
) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` for which ``allowed`` holds (``rule`` says when)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not allowed(value):
            raise argparse.ArgumentTypeError(f"{text} {rule}")
        return value

    return parse


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    return _number(kind, lambda value: value > 0, "must be more than 0")


_non_negative = _number(int, lambda value: value >= 0, "cannot be negative")


def _exempt_list(text: str) -> tuple[str, ...]:
    try:
        return parse_exempt(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="Run the LAN chat server: one shared room for everyone who connects.",
        epilog="Stop it with Ctrl+C; every client is told the server is shutting down.",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="address or host name to listen on (default: every interface, IPv4 and IPv6; "
        "127.0.0.1 allows only this computer)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on (default: {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--max-clients",
        type=_positive(int),
        default=DEFAULT_MAX_CLIENTS,
        metavar="N",
        help="most connections open at once, joined or not; more are refused as "
        "server-full (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=_non_negative,
        default=DEFAULT_HISTORY,
        metavar="N",
        help="public messages shown to people as they join (default: %(default)s; "
        "0 shows none); with --no-store, also all that is kept",
    )
    parser.add_argument(
        "--motd",
        default=None,
        metavar="TEXT",
        help="message of the day shown to everyone who joins",
    )
    parser.add_argument(
        "--rate-burst",
        type=_positive(int),
        default=RATE_BURST,
        metavar="N",
        help="messages and renames a client may send in a burst (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-per-second",
        type=_positive(float),
        default=RATE_PER_SECOND,
        metavar="R",
        help="how fast that allowance refills, per second (default: %(default)s)",
    )
    parser.add_argument(
        "--no-rate-limit",
        action="store_true",
        help="accept messages as fast as clients send them (for benchmarks)",
    )
    parser.add_argument(
        "--io-threads",
        type=_positive(int),
        default=DEFAULT_IO_THREADS,
        metavar="N",
        help="threads that serve the connections (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the server keeps what outlives it: its identity, bans, history, "
        f"files (default: {default_data_dir()})",
    )
    # History on disk (PROTOCOL.md, "History pages and search").
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="keep history in memory only, as many messages as --history (ids start "
        "again at every start), and files until the server stops; identity and bans "
        "are still kept in the data folder",
    )
    parser.add_argument(
        "--keep-days",
        type=_positive(float),
        default=None,
        metavar="N",
        help="forget public messages older than N days (default: keep them all)",
    )
    parser.add_argument(
        "--keep-messages",
        type=_positive(int),
        default=None,
        metavar="N",
        help="keep only the newest N public messages (default: keep them all)",
    )
    # Discovery (PROTOCOL.md, "Finding servers on the LAN").
    parser.add_argument(
        "--room-name",
        type=_room_name,
        default=None,
        metavar="TEXT",
        help="the name the chat app lists this server by on the network "
        f"(default: {default_room_name()!r})",
    )
    parser.add_argument(
        "--no-discovery",
        action="store_true",
        help="do not answer chat apps looking for servers on the network; "
        "people then connect by address",
    )
    # Files (PROTOCOL.md, "Files and images").
    parser.add_argument(
        "--max-file-mb",
        type=_positive(int),
        default=DEFAULT_MAX_FILE_MB,
        metavar="N",
        help="largest file someone may share, in MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--files-quota-mb",
        type=_positive(int),
        default=DEFAULT_FILES_QUOTA_MB,
        metavar="N",
        help="room all shared files may take together, in MiB; beyond it the oldest "
        "are forgotten (default: %(default)s)",
    )
    parser.add_argument(
        "--no-files",
        action="store_true",
        help="no file sharing: uploads are refused",
    )
    # Encryption (PROTOCOL.md, "Encryption"): the mode and the server's identity.
    parser.add_argument(
        "--tls",
        type=TlsMode,
        choices=list(TlsMode),
        default=TlsMode.AUTO,
        metavar="off|auto|required",
        help="encryption: off (plaintext only), auto (encrypted for clients that ask, "
        "plaintext for the others) or required (encrypted only) (default: %(default)s)",
    )
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="print the server's fingerprint (sha256:...), making its identity if needed, and exit",
    )
    parser.add_argument(
        "--new-identity",
        action="store_true",
        help="replace the server's identity with a new one (the old file is kept as "
        "identity.pem.old); every client that knew the server then warns that it changed",
    )
    parser.add_argument(
        "--op-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="operator password: the file's first line (also: environment "
        f"{OP_PASSWORD_ENV}); people who send it with /op can remove people and manage bans",
    )
    # Per-address limits (PROTOCOL.md, "Operators and moderation").
    parser.add_argument(
        "--max-per-ip",
        type=_positive(int),
        default=DEFAULT_MAX_PER_IP,
        metavar="N",
        help="most connections open at once from one address (an IPv6 /64 counts as one); "
        "more are refused as too-many-connections (default: %(default)s)",
    )
    parser.add_argument(
        "--ip-limit-exempt",
        type=_exempt_list,
        default=LOOPBACK,
        metavar="LIST",
        help="addresses or prefixes, comma-separated, exempt from the per-address limits "
        "(open connections, new connections over time, wrong passwords); none for no "
        "exemption (default: loopback)",
    )
    # Room password (PROTOCOL.md, "Room password").
    parser.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"room password: the file's first line (also: environment {PASSWORD_ENV}); "
        "only people who give it can join, and encryption is then required",
    )
    # Several servers, one room (PROTOCOL.md).
    parser.add_argument(
        "--redis",
        type=_redis_url,
        default=None,
        metavar="URL",
        help="share one room with every server started with the same Redis and "
        "--redis-room, e.g. redis://127.0.0.1:6379/0 (a password: "
        "redis://:PASSWORD@host:6379/0); a shared room shares no files",
    )
    parser.add_argument(
        "--redis-room",
        default=DEFAULT_REDIS_ROOM,
        metavar="NAME",
        help="the shared room's name in Redis (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-heartbeat",
        type=_positive(float),
        default=DEFAULT_REDIS_HEARTBEAT,
        metavar="SECONDS",
        help="how often a server tells Redis it is alive; one out of touch for 5 "
        "heartbeats closes its clients, one silent for 10 is taken for dead and its "
        "users announced gone (default: %(default)s)",
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="start on a free port, chat with itself through the real protocol, "
        "and exit (0: it works)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {server_version()}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log on standard error (default: %(default)s)",
    )
    return parser


def read_password(path: Path | None, env: str) -> str | None:
    """The password in ``path``'s first line, else in the environment variable ``env``.

    Raises ``ValueError`` (with a sentence for people) when the file cannot
    be read or its first line is empty.
    """
    if path is None:
        return os.environ.get(env) or None
    try:
        with open(path, encoding="utf-8") as file:
            line = file.readline(4096).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read the password file {path}: {exc}") from None
    if not line:
        raise ValueError(f"The password file {path} has an empty first line.")
    return line


def _room_name(text: str) -> str:
    """A ``--room-name``: one line, at most ``MAX_ROOM_NAME`` characters."""
    name = " ".join(text.translate(TEXT_REMOVED).split())
    if not name or LONE_SURROGATE.search(name):
        raise argparse.ArgumentTypeError("a room name needs letters, on one line")
    if len(name) > MAX_ROOM_NAME:
        raise argparse.ArgumentTypeError(f"a room name can be at most {MAX_ROOM_NAME} characters")
    return name


def _redis_url(text: str) -> str:
    """A ``--redis``: a Redis URL, and the client library to use it."""
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(
            "a Redis URL starts with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)"
        )
    if importlib.util.find_spec("redis") is None:
        raise argparse.ArgumentTypeError(
            "sharing a room needs the redis package: pip install 'lan-chat[redis]'"
        )
    return text


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_clients=args.max_clients,
        history=args.history,
        motd=args.motd or None,
        rate_limit=None if args.no_rate_limit else RateLimit(args.rate_burst, args.rate_per_second),
        io_threads=args.io_threads,
        data_dir=args.data_dir,
        store=not args.no_store,
        keep_days=args.keep_days,
        keep_messages=args.keep_messages,
        files=not args.no_files,
        discovery=not args.no_discovery,
        room_name=args.room_name,
        redis_url=args.redis,
        redis_room=args.redis_room,
        redis_heartbeat=args.redis_heartbeat,
        max_file_mb=args.max_file_mb,
        files_quota_mb=args.files_quota_mb,
        op_password=read_password(args.op_password_file, OP_PASSWORD_ENV),
        tls=args.tls,
        # per-address limits
        max_per_ip=args.max_per_ip,
        ip_limit_exempt=args.ip_limit_exempt,
    )
    # room password extension: it travels only inside TLS.
    room_password = read_password(args.password_file, PASSWORD_ENV)
    if room_password is not None:
        if config.tls is TlsMode.OFF:
            raise ValueError(
                "A room password needs encryption, and --tls off turns it off: "
                "drop --tls off (a password makes the server --tls required)."
            )
        config = dataclasses.replace(config, room_password=room_password, tls=TlsMode.REQUIRED)
    return config


def describe_bind_error(exc: OSError, config: ServerConfig) -> str:
    """One plain sentence for why the server could not listen."""
    where = f"{config.host} port {config.port}" if config.host else f"port {config.port}"
    if isinstance(exc, socket.gaierror):
        return f"Cannot listen on {config.host}: no such host name or address."
    if exc.errno == errno.EADDRINUSE or getattr(exc, "winerror", None) == 10048:
        return (
            f"Cannot listen on {where}: it is already in use "
            "(is another server running?). Choose another with --port."
        )
    if exc.errno == errno.EACCES:
        return f"Cannot listen on {where}: permission denied (ports below 1024 need admin rights)."
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"Cannot listen on {config.host}: this computer has no such address."
    return f"Cannot listen on {where}: {exc.strerror or exc}."


def raise_open_file_limit(wanted: int) -> None:
    """Let the process hold ``wanted`` sockets, as far as the OS allows."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("Cannot raise the open-file limit to %d: %s", target, exc)


def announce(server: ChatServer, config: ServerConfig) -> None:
    """Tell the person who started the server where people can reach it."""
    port = server.port
    if config.host:
        hosts = ", ".join(host for host, _ in server.addresses)
        print(f"Chat server listening on {hosts}, port {port}.", flush=True)
    else:
        print(f"Chat server listening on port {port}, on every network interface.", flush=True)
        addresses = lan_addresses()
        if addresses:
            print(
                f"People on your network can connect to {' or '.join(addresses)}, port {port}.",
                flush=True,
            )
        else:
            print(
                "People on your network can connect to this computer's address "
                f"(see its network settings), port {port}.",
                flush=True,
            )
    if server.identity is not None:
        announce_identity(server.identity, server, config)
    else:
        print("Encryption is off (--tls off): everything is sent readable.", flush=True)
    if config.room_password is not None:  # room password extension
        print("The room has a password: only people who give it can join.", flush=True)
    if config.redis_url is not None:
        print(
            f"The room {config.redis_room!r} is shared through the Redis at "
            f"{shown_url(config.redis_url)} with every server started with it.",
            flush=True,
        )
    if server.discovery is not None:
        print(
            f"Chat apps on your network list it as {server.room_name!r} "
            f"(--room-name changes that).",
            flush=True,
        )
    if not config.host:
        # Every first start on Windows and macOS asks; a Cancel there blocks
        # the server for good, silently, and "nobody can connect" is then
        # the most common complaint of every LAN messenger.
        print(
            "If this computer's firewall asks whether chat-server may accept connections, "
            "allow it on private networks. If nobody can connect: check the firewall "
            "allows chat-server, that the network is set to Private (Windows), not "
            "Public, and that everyone is on the same network (not a guest Wi-Fi).",
            flush=True,
        )
    print("Press Ctrl+C to stop.", flush=True)


def announce_identity(identity: Identity, server: ChatServer, config: ServerConfig) -> None:
    """The invites and safety words people check the server by; where the identity is."""
    if config.tls is TlsMode.REQUIRED:
        print("Encryption (TLS) is required: plaintext clients are refused.", flush=True)
    else:
        print("Encryption (TLS) is on for every client that asks for it.", flush=True)
    port = server.port
    hosts = [host for host, _ in server.addresses] if config.host else lan_addresses()
    if hosts:
        print("Invites to paste into the client (it then checks it reached this server):")
        for host in hosts:
            print(f"    {invite(host, port, identity.fingerprint)}")
    else:
        code = invite_code(identity.fingerprint, group=4)
        print(f"Invite: this computer's address, then :{port}#{code}")
    print("Safety words, to compare with those a client shows:")
    print(f"    {' '.join(safety_words(identity.fingerprint))}", flush=True)
    if identity.created:
        print(
            f"Made this server's identity: {identity.path}. Back this file up: without it, "
            "everyone's client warns that the server has changed.",
            flush=True,
        )


def smoke_test() -> int:
    """Serve on 127.0.0.1 port 0 in a scratch data folder; join over TLS and in
    plaintext, say something, hear it back; stop."""
    with tempfile.TemporaryDirectory(prefix="chat-server-smoke-") as folder:
        try:
            config = ServerConfig(host="127.0.0.1", port=0, history=0, data_dir=Path(folder))
            server = ChatServer(config)
        except (OSError, IdentityError) as exc:
            print(f"chat-server smoke test failed: {exc}", file=sys.stderr)
            return 1
        serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="smoke-serve")
        serving.start()
        try:
            assert server.identity is not None
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
                _smoke_round_trip(plain, "smoke-plain", secure=False)
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
                client_context().wrap_socket(raw) as tls,
            ):
                certificate = tls.getpeercert(binary_form=True)
                if certificate != server.identity.certificate:
                    raise AssertionError("the TLS handshake showed another certificate")
                _smoke_round_trip(tls, "smoke-tls", secure=True)
        except (OSError, AssertionError) as exc:
            print(f"chat-server smoke test failed: {exc}", file=sys.stderr)
            return 1
        finally:
            server.shutdown()
            serving.join()
            server.server_close()
    print(f"chat-server {server_version()} smoke test passed", flush=True)
    return 0


def _smoke_round_trip(sock: socket.socket, name: str, *, secure: bool) -> None:
    """Join as ``name``, say something and hear it back, leave."""
    decoder = FrameDecoder(MAX_SERVER_FRAME)

    def receive() -> Message:
        while (payload := decoder.next_payload()) is None:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            decoder.receive_data(data)
        return parse_message(payload, SERVER_MESSAGES)

    sock.sendall(encode(Hello(name)))
    welcome = receive()
    sock.sendall(encode(Say(f"hello from {name}")))
    echo = receive()
    sock.sendall(encode(Bye()))
    if not isinstance(welcome, Welcome) or welcome.users != (name,):
        raise AssertionError(f"expected a welcome, got {welcome}")
    if welcome.secure != secure or welcome.tls_available == secure:
        raise AssertionError(f"expected a welcome with secure={secure}, got {welcome}")
    if not isinstance(echo, ChatMessage) or echo.text != f"hello from {name}":
        raise AssertionError(f"expected the echo, got {echo}")


def identity_command(config: ServerConfig, *, renew: bool, show: bool) -> int | None:
    """``--new-identity`` and ``--fingerprint``: an exit status, or ``None`` to go on serving."""
    try:
        identity = load_identity(config.data_path(), renew=renew)
    except IdentityError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 1
    if identity.created:
        # On standard error with --fingerprint, whose output is the fingerprint alone.
        print(
            f"Made a new identity for this server: {identity.path} (an old one is kept as "
            "identity.pem.old). Back this file up.",
            file=sys.stderr if show else sys.stdout,
            flush=True,
        )
    if show:
        print(identity.fingerprint, flush=True)
        return 0
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke_test:
        return smoke_test()
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 1
    if args.fingerprint or args.new_identity:
        status = identity_command(config, renew=args.new_identity, show=args.fingerprint)
        if status is not None:
            return status
    raise_open_file_limit(config.max_clients + 64)
    try:
        server = ChatServer(config)
    except IdentityError as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chat-server: {describe_bind_error(exc, config)}", file=sys.stderr)
        return 1
    except (BanStoreError, FolderInUse) as exc:
        print(f"chat-server: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, _frame: object) -> None:
        logger.info("Stopping (%s)", signal.Signals(signum).name)
        server.stop_soon()

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
    with server:
        announce(server, config)
        console = Console(server.room, lambda text: print(text, flush=True), stop=server.stop_soon)
        if start_console(console) is not None:
            print("Type /help for the console's commands.", flush=True)
        server.serve_forever()
    logger.info("Server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
