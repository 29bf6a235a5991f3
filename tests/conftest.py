"""Shared fixtures: a real server on 127.0.0.1, a free port, raw clients."""

from __future__ import annotations

import gc
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import discovery
from server.chat_server import ChatServer
from server.config import ServerConfig
from tests import trust_helpers
from tests.redis_server import RedisServer
from tests.wire import RawClient

# No app this test run starts, in this process or another, asks this
# computer's real networks for servers (app.discovery.TARGETS_ENV): a test
# that wants a search names its targets.
os.environ[discovery.TARGETS_ENV] = ""

SHARED_ROOM_ENV = "LAN_CHAT_TEST_SHARED_ROOM"  # a Redis URL: see start_server


def _open_sockets() -> set[str]:
    """The sockets this process holds (Linux), as /proc names them."""
    fd_dir = Path("/proc/self/fd")
    found = set()
    for fd in fd_dir.iterdir() if fd_dir.is_dir() else ():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:"):
            found.add(f"{fd.name}:{target}")
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test ends with the threads it started finished and its sockets closed."""
    threads_before = set(threading.enumerate())
    sockets_before = _open_sockets()
    yield
    leaked = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    for thread in leaked:
        thread.join(3.0)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"
    gc.collect()  # a socket object nobody holds is closed when collected
    sockets_left = _open_sockets() - sockets_before
    assert not sockets_left, f"sockets left open: {sorted(sockets_left)}"


@pytest.fixture(autouse=True)
def no_desktop_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the desktop's own notifications (a run on someone's desktop
    would pop them up, and the toasts tests look for would not show); the tests
    of notifications start a bus of their own (tests/test_alerts.py)."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)


@pytest.fixture(autouse=True)
def no_real_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No server a test starts, in this process or a child, makes its identity
    (or anything else) in the user's real data folder."""
    monkeypatch.setenv("LAN_CHAT_DATA_DIR", str(tmp_path / "server-data"))


@pytest.fixture(autouse=True)
def no_real_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test asks this computer's real networks for servers: a connection
    dialog opened without targets of its test's own lists no network, so its
    search sends nothing (tests/test_client_discovery.py asks 127.0.0.1)."""
    monkeypatch.setattr(discovery, "local_networks", list)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ChatServer]]:
    """Start a real ChatServer on 127.0.0.1, on a free port; stopped after the test.

    Keyword arguments override ``ServerConfig`` fields; the data folder is
    a temporary one. With ``SHARED_ROOM_ENV`` set to a Redis URL, every
    server serves a shared room of its own there (tests/test_shared_room_protocol.py
    runs the protocol's tests so).
    """
    running: list[tuple[ChatServer, threading.Thread]] = []
    redis_url = os.environ.get(SHARED_ROOM_ENV)

    def start(**overrides: object) -> ChatServer:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("host", "127.0.0.1")
        overrides.setdefault("port", 0)
        if redis_url:
            overrides.setdefault("redis_url", redis_url)
            overrides.setdefault("redis_room", uuid.uuid4().hex)
            overrides.setdefault("redis_heartbeat", 0.2)
        config = ServerConfig(**overrides)  # type: ignore[arg-type]
        server = ChatServer(config)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-serve")
        thread.start()
        running.append((server, thread))
        trust_helpers.serving(server)
        return server

    yield start
    for server, thread in running:
        trust_helpers.stopped(server)
        server.shutdown()
        thread.join(5.0)
        server.server_close()
        assert not thread.is_alive()


@pytest.fixture
def server(start_server: Callable[..., ChatServer]) -> ChatServer:
    """A server with the default settings but for host and port."""
    return start_server()


@pytest.fixture
def open_client() -> Iterator[Callable[..., RawClient]]:
    """Open raw clients to a server (a ChatServer or a port), joined when given
    a name; all closed after the test."""
    clients: list[RawClient] = []

    def open_(server: ChatServer | int, name: str | None = None, timeout: float = 5.0) -> RawClient:
        port = server if isinstance(server, int) else server.port
        client = RawClient(port, timeout=timeout)
        clients.append(client)
        if name is not None:
            client.join(name)
        return client

    yield open_
    for client in clients:
        client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1, a free port, a temporary folder
    (tests/redis_server.py); stopped, and its clients closed, after the test."""
    with RedisServer(tmp_path / "redis") as redis_:
        yield redis_


@pytest.fixture(scope="session")
def tk_root() -> Iterator[object]:
    """The one ttkbootstrap App of the test session (its Style binds to the
    first root, so GUI tests share it; each test cleans up its own widgets).

    Needs a display: pytest-xvfb provides one where Xvfb is installed, and a
    missing display is an error here, never a skip.
    """
    import ttkbootstrap as ttk  # noqa: PLC0415 - only GUI tests pay for Tk

    root = ttk.App(title="LAN Chat tests", theme="bootstrap-light", size=(920, 640))
    root.withdraw()
    yield root
    root.destroy()


@pytest.fixture
def errors(tk_root: Any) -> Iterator[list[BaseException]]:
    """Every exception a Tk callback raised during the test (none may: the
    tests that use it assert it stays empty)."""
    caught: list[BaseException] = []
    before = tk_root.report_callback_exception
    tk_root.report_callback_exception = lambda _t, exc, _tb: caught.append(exc)
    yield caught
    tk_root.report_callback_exception = before


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The client's config folder for this test (``LAN_CHAT_CONFIG_DIR``), so that
    nothing touches the real settings, trust or passwords."""
    folder = tmp_path / "config"
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def open_app(tk_root: Any, config_dir: Path) -> Iterator[Callable[..., Any]]:
    """Build ChatApps on the session's one root: ``open_app(settings, **options)``
    passes ``options`` to ``ChatApp``, which by default saves settings nowhere,
    exits nowhere and has agreed to plaintext. Each is closed, and the root
    reset, after the test."""
    from app.chat_app import ChatApp  # noqa: PLC0415 - only GUI tests pay for Tk

    apps: list[ChatApp] = []

    def open_(settings: Any, **options: Any) -> ChatApp:
        options.setdefault("save_settings", lambda _settings: None)
        options.setdefault("on_exit", lambda: None)
        options.setdefault("known", trust_helpers.PlaintextAgreed())
        chat = ChatApp(tk_root, settings, **options)
        apps.append(chat)
        return chat

    yield open_
    try:
        for chat in apps:
            chat.close()
    finally:
        reset_root(tk_root)


def reset_root(root: Any) -> None:
    """Leave the shared root as the next GUI test expects it: withdrawn,
    light, at its first size and place."""
    root.withdraw()
    if root.theme_mode != "light":
        root.theme_mode = "light"
    root.geometry("920x640+0+0")
    root.update()
