"""The client and a room password (PROTOCOL.md, "Room password"), against a
real server over TLS; no display."""

from __future__ import annotations

import json
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.network import (
    ChatClient,
    ConnectFailed,
    ConnectionLost,
    PasswordNeeded,
    Welcomed,
    tls_transport,
)
from app.password_dialog import RememberedPasswords
from server.chat_server import ChatServer
from server.passwords import GuessCounter
from tests.test_client_trust import wait_for as trust_wait_for
from tests.test_network import ServerThread
from tests.trust_helpers import PlaintextAgreed

HOST = "127.0.0.1"
PASSWORD = "open sesame"
WAIT = 10.0


@pytest.fixture
def room(start_server: Callable[..., ChatServer]) -> ChatServer:
    return start_server(room_password=PASSWORD)


@pytest.fixture
def make_client() -> Iterator[Callable[..., ChatClient]]:
    clients: list[ChatClient] = []

    def make(port: int, name: str = "alice", **options: Any) -> ChatClient:
        client = ChatClient(HOST, port, name, known=PlaintextAgreed(), **options)
        clients.append(client)
        client.start()
        return client

    yield make
    for client in clients:
        client.close(3.0)
        assert not client.running


def wait_for(client: ChatClient, wanted: type | tuple[type, ...]) -> list[Any]:
    """Events until one of ``wanted``; a password's round trips take longer than WAIT there."""
    return trust_wait_for(client, wanted, WAIT)


def counting(opened: list[socket.socket]) -> Callable[[socket.socket], Any]:
    """A TLS transport factory that notes each connection it secures."""

    def factory(sock: socket.socket) -> Any:
        opened.append(sock)
        return tls_transport(sock)

    return factory


def test_asked_then_wrong_then_right_on_one_connection(
    room: ChatServer, make_client: Callable[..., ChatClient]
) -> None:
    opened: list[socket.socket] = []
    client = make_client(room.port, transport_factory=counting(opened))
    asked = wait_for(client, PasswordNeeded)[-1]
    assert asked == PasswordNeeded(HOST, room.port, wrong=False)
    client.give_password("guess")
    assert wait_for(client, PasswordNeeded)[-1].wrong is True
    client.give_password(PASSWORD)
    seen = wait_for(client, Welcomed)
    assert seen[-1].welcome.secure is True
    assert not any(isinstance(e, ConnectFailed) for e in seen)
    assert room.room.users() == ("alice",)
    assert len(opened) == 1


def test_a_password_given_at_the_start_asks_nothing(
    room: ChatServer, make_client: Callable[..., ChatClient]
) -> None:
    client = make_client(room.port, password=PASSWORD)
    seen = wait_for(client, (Welcomed, PasswordNeeded))
    assert isinstance(seen[-1], Welcomed)


def test_cancel_ends_the_attempt_for_good(
    room: ChatServer, make_client: Callable[..., ChatClient]
) -> None:
    client = make_client(room.port)
    wait_for(client, PasswordNeeded)
    client.give_password(None)
    failed = wait_for(client, ConnectFailed)[-1]
    assert "password" in failed.message
    client.close(3.0)
    assert not client.running
    assert room.room.users() == ()


def test_a_late_answer_goes_on_a_fresh_connection(
    room: ChatServer, make_client: Callable[..., ChatClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.network.SAME_CONNECTION_FOR", 0.0)  # as if the person took long
    opened: list[socket.socket] = []
    client = make_client(room.port, transport_factory=counting(opened))
    wait_for(client, PasswordNeeded)
    client.give_password(PASSWORD)
    seen = wait_for(client, (Welcomed, ConnectFailed))
    assert isinstance(seen[-1], Welcomed)
    assert len(opened) == 2


def test_after_the_third_wrong_one_the_next_goes_on_a_fresh_connection(
    room: ChatServer, make_client: Callable[..., ChatClient]
) -> None:
    client = make_client(room.port)
    wait_for(client, PasswordNeeded)
    for attempt in range(3):
        client.give_password(f"guess-{attempt}")
        assert wait_for(client, PasswordNeeded)[-1].wrong is True
    client.give_password(PASSWORD)  # the server closed the other connection
    seen = wait_for(client, (Welcomed, ConnectFailed))
    assert isinstance(seen[-1], Welcomed)


@pytest.fixture
def restartable() -> Iterator[Callable[..., ServerThread]]:
    """Servers a test stops itself (a restart on the same port); all stopped after it."""
    running: list[ServerThread] = []

    def start(port: int = 0, **overrides: Any) -> ServerThread:
        running.append(ServerThread(port, **overrides))
        return running[-1]

    yield start
    for server in running:
        server.stop()


def test_a_reconnect_sends_the_password_given_before_and_asks_nothing(
    restartable: Callable[..., ServerThread],
    make_client: Callable[..., ChatClient],
    tmp_path: Path,
) -> None:
    first = restartable(room_password=PASSWORD, data_dir=tmp_path)
    client = make_client(first.port)
    wait_for(client, PasswordNeeded)
    client.give_password(PASSWORD)
    wait_for(client, Welcomed)
    first.stop()
    wait_for(client, ConnectionLost)
    again = restartable(first.port, room_password=PASSWORD, data_dir=tmp_path)  # the same identity
    seen = wait_for(client, (Welcomed, PasswordNeeded, ConnectFailed))
    assert isinstance(seen[-1], Welcomed) and seen[-1].reconnected
    assert again.server.room.users() == ("alice",)


def test_too_many_attempts_stops_without_reconnecting(
    room: ChatServer, make_client: Callable[..., ChatClient]
) -> None:
    room.room.guesses = GuessCounter(burst=1, refill=60.0, exempt=lambda host: False)
    client = make_client(room.port, password="guess")
    assert wait_for(client, PasswordNeeded)[-1].wrong is True
    client.give_password(PASSWORD)
    failed = wait_for(client, ConnectFailed)[-1]
    assert "Too many wrong passwords" in failed.message
    deadline = time.monotonic() + WAIT
    while client.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.running


def test_remembered_passwords_survive_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "config" / "passwords.json"
    RememberedPasswords(path).remember(HOST, 12345, PASSWORD)
    again = RememberedPasswords(path)
    assert again.get(HOST, 12345) == PASSWORD
    assert again.get(HOST, 12346) is None
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again.forget(HOST, 12345)
    assert RememberedPasswords(path).get(HOST, 12345) is None


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"version": 2, "passwords": {}}', '{"version": 1}']
)
def test_a_damaged_passwords_file_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "passwords.json"
    path.write_text(content, encoding="utf-8")
    assert RememberedPasswords(path).get(HOST, 12345) is None


def test_only_strings_are_taken_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords.json"
    entries = {f"{HOST}:1": PASSWORD, f"{HOST}:2": 7, f"{HOST}:3": ""}
    path.write_text(json.dumps({"version": 1, "passwords": entries}), encoding="utf-8")
    remembered = RememberedPasswords(path)
    assert [remembered.get(HOST, port) for port in (1, 2, 3)] == [PASSWORD, None, None]
