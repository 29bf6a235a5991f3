"""The room password (PROTOCOL.md, "Room password"), against a real server over TLS."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.chat_server import ChatServer
from server.config import ServerConfig, TlsMode
from server.passwords import GuessCounter
from server.protocol import Hello
from tests.test_server_tls import tls_client
from tests.wire import RawClient

PASSWORD = "open sesame"
OP_PASSWORD = "correct horse battery"
Start = Callable[..., ChatServer]
Open = Callable[..., RawClient]


@pytest.fixture
def room(start_server: Start, tmp_path: Path) -> ChatServer:
    return start_server(data_dir=tmp_path, room_password=PASSWORD, op_password=OP_PASSWORD)


@pytest.fixture
def tls(room: ChatServer) -> Any:
    opened: list[RawClient] = []

    def open_() -> RawClient:
        client = tls_client(room)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


def hello(name: str, password: Any = None, **extra: Any) -> dict[str, Any]:
    frame = {"type": "hello", "name": name, "protocol": 1, **extra}
    if password is not None:
        frame["password"] = password
    return frame


def join(client: RawClient, name: str) -> dict[str, Any]:
    client.send(hello(name, PASSWORD))
    return client.expect("welcome")


def test_the_password_is_checked_before_bans_names_and_who_is_there(
    room: ChatServer, tls: Callable[[], RawClient]
) -> None:
    alice = tls()
    join(alice, "alice")
    room.room.ban(name="mallory", address=None, duration=None, reason="spam", by="console")
    stranger = tls()
    stranger.send(hello("alice"))  # taken, but the stranger may not learn that
    stranger.expect_error("password-required", "hello")
    stranger.send(hello("mallory"))  # banned name
    stranger.expect_error("password-required", "hello")
    stranger.send(hello("not a name!"))  # against the name's rules
    stranger.expect_error("password-required", "hello")
    stranger.send(hello("alice", "guess"))
    stranger.expect_error("password-wrong", "hello")
    stranger.send(hello("alice", 42))  # types before the password
    stranger.expect_error("bad-field", "hello")
    stranger.send(hello("alice", 42, protocol=2))  # the version before the types
    stranger.expect_error("protocol-version", "hello")


def test_password_required_keeps_the_connection_open(
    room: ChatServer, tls: Callable[[], RawClient]
) -> None:
    bob = tls()
    bob.send(hello("bob"))
    bob.expect_error("password-required", "hello")
    welcome = join(bob, "bob")
    assert welcome["secure"] is True


def test_a_wrong_password_is_answered_a_second_later_and_never_logged(
    room: ChatServer, tls: Callable[[], RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    bob = tls()
    with caplog.at_level(logging.DEBUG, logger="server"):
        started = time.monotonic()
        bob.send(hello("bob", "guess-one"))
        bob.send({"type": "ping", "n": 1})
        bob.expect_error("password-wrong", "hello")
        took = time.monotonic() - started
        bob.expect("pong", n=1)  # it waited behind the answer, in order
        join(bob, "bob")  # the connection stayed open
    assert 0.9 <= took < 4.0
    assert "password-wrong from 127.0.0.1" in caplog.text
    assert "guess-one" not in caplog.text
    assert PASSWORD not in caplog.text


def test_the_third_wrong_password_closes(room: ChatServer, tls: Callable[[], RawClient]) -> None:
    bob = tls()
    for attempt in range(3):
        bob.send(hello("bob", f"guess-{attempt}"))
    frames = bob.expect_closed(timeout=8.0)
    assert [f.get("code") for f in frames] == ["password-wrong"] * 3
    assert room.room.users() == ()


def test_an_address_that_keeps_guessing_is_too_many_attempts(
    room: ChatServer, tls: Callable[[], RawClient]
) -> None:
    # One counter for the room's and the operator's password.
    room.room.guesses = GuessCounter(burst=2, refill=60.0, exempt=lambda host: False)
    alice = tls()
    join(alice, "alice")
    alice.send({"type": "op", "password": "op-guess"})
    alice.expect_error("op-password-wrong", "op")
    bob = tls()
    bob.send(hello("bob", "guess"))
    bob.expect_error("password-wrong", "hello")
    bob.send(hello("bob", PASSWORD))  # right, but too late
    error = bob.expect_error("too-many-attempts", "hello")
    assert 0 < error["retry_after"] <= 60
    bob.expect_closed()
    carol = tls()
    carol.send(hello("carol", PASSWORD))
    carol.expect_error("too-many-attempts", "hello")
    carol.expect_closed()


def test_after_name_taken_a_later_hello_needs_no_password(
    room: ChatServer, tls: Callable[[], RawClient]
) -> None:
    join(tls(), "alice")
    bob = tls()
    bob.send(hello("alice", PASSWORD))
    bob.expect_error("name-taken", "hello")
    bob.send(hello("bob"))
    assert bob.expect("welcome")["name"] == "bob"


def test_a_plaintext_client_is_refused(room: ChatServer, open_client: Open) -> None:
    assert room.config.tls is TlsMode.REQUIRED
    plain = open_client(room)
    plain.send(hello("bob", PASSWORD))
    plain.expect_error("tls-required")
    plain.expect_closed()


def test_a_password_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encryption"):
        ChatServer(ServerConfig(port=0, data_dir=tmp_path, room_password="x", tls=TlsMode.OFF))


def test_the_password_is_never_in_a_repr() -> None:
    assert PASSWORD not in repr(Hello("bob", password=PASSWORD))
    assert PASSWORD not in repr(ServerConfig(room_password=PASSWORD))
    assert Hello("bob", password=PASSWORD).to_wire()["password"] == PASSWORD
    assert "password" not in Hello("bob").to_wire()


def test_the_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.__main__ import PASSWORD_ENV, build_parser, config_from_args  # noqa: PLC0415

    secret = tmp_path / "room.txt"
    secret.write_text("first line\nsecond\n", encoding="utf-8")
    config = config_from_args(build_parser().parse_args(["--password-file", str(secret)]))
    assert (config.room_password, config.tls) == ("first line", TlsMode.REQUIRED)
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert config_from_args(build_parser().parse_args([])).room_password == "from-env"
    monkeypatch.delenv(PASSWORD_ENV)
    config = config_from_args(build_parser().parse_args([]))
    assert (config.room_password, config.tls) == (None, TlsMode.AUTO)


def test_a_password_with_tls_off_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main  # noqa: PLC0415

    path = tmp_path / "room.txt"
    path.write_text(PASSWORD, encoding="utf-8")
    argv = ["--port", "0", "--host", "127.0.0.1", "--data-dir", str(tmp_path), "--tls", "off"]
    assert main([*argv, "--password-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert "--tls off" in err and "password" in err
    assert PASSWORD not in err


def test_the_start_says_the_room_has_a_password_and_never_shows_it(
    room: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import announce  # noqa: PLC0415

    announce(room, room.config)
    out = capsys.readouterr().out
    assert "The room has a password" in out
    assert "plaintext clients are refused" in out  # it behaves as --tls required
    assert PASSWORD not in out
