"""``python -m server`` / ``chat-server``: run the chat server until Ctrl+C."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from server.admin import Console, start_console
from server.chat_server import ChatServer, lan_addresses
from server.config import (
    DEFAULT_HISTORY,
    DEFAULT_IO_THREADS,
    DEFAULT_MAX_CLIENTS,
    RATE_BURST,
    RATE_PER_SECOND,
    RateLimit,
    ServerConfig,
    default_data_dir,
)
from server.protocol import (
    DEFAULT_PORT,
    MAX_SERVER_FRAME,
    SERVER_MESSAGES,
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
from server.store.bans import BanStoreError

logger = logging.getLogger("server")

OP_PASSWORD_ENV = "LAN_CHAT_OP_PASSWORD"


def server_version() -> str:
    """The version in pyproject.toml, as installed (frozen builds bundle the metadata)."""
    try:
        return metadata.version("lan-chat")
    except metadata.PackageNotFoundError:
        return "0+unknown"


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
        help="public messages kept to show people who join later (default: %(default)s; "
        "0 keeps none)",
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
        help="where the server keeps what outlives it: its identity, bans, history "
        f"(default: {default_data_dir()})",
    )
    parser.add_argument(
        "--op-password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="operator password: the file's first line (also: environment "
        f"{OP_PASSWORD_ENV}); people who send it with /op can remove people and manage bans",
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


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        max_clients=args.max_clients,
        history=args.history,
        motd=args.motd or None,
        rate_limit=None if args.no_rate_limit else RateLimit(args.rate_burst, args.rate_per_second),
        io_threads=args.io_threads,
        data_dir=args.data_dir,
        op_password=read_password(args.op_password_file, OP_PASSWORD_ENV),
    )


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
    print("Press Ctrl+C to stop.", flush=True)


def smoke_test() -> int:
    """Serve on 127.0.0.1 port 0, join, say something, hear it back, stop."""
    server = ChatServer(ServerConfig(host="127.0.0.1", port=0))
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="smoke-serve")
    serving.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            decoder = FrameDecoder(MAX_SERVER_FRAME)

            def receive() -> Message:
                while (payload := decoder.next_payload()) is None:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("the server closed the connection")
                    decoder.receive_data(data)
                return parse_message(payload, SERVER_MESSAGES)

            sock.sendall(encode(Hello("smoke-test")))
            welcome = receive()
            sock.sendall(encode(Say("hello from the smoke test")))
            echo = receive()
            sock.sendall(encode(Bye()))
        if not isinstance(welcome, Welcome) or welcome.users != ("smoke-test",):
            raise AssertionError(f"expected a welcome, got {welcome}")
        if not isinstance(echo, ChatMessage) or echo.text != "hello from the smoke test":
            raise AssertionError(f"expected the echo, got {echo}")
    except (OSError, AssertionError) as exc:
        print(f"chat-server smoke test failed: {exc}", file=sys.stderr)
        return 1
    finally:
        server.shutdown()
        serving.join()
        server.server_close()
    print(f"chat-server {server_version()} smoke test passed", flush=True)
    return 0


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
    raise_open_file_limit(config.max_clients + 64)
    try:
        server = ChatServer(config)
    except OSError as exc:
        print(f"chat-server: {describe_bind_error(exc, config)}", file=sys.stderr)
        return 1
    except BanStoreError as exc:
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
