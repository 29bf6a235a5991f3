"""Operators and bans on a real server over loopback, with raw clients (tests/wire.py),
and the console driven through its entry point (PROTOCOL.md, "Operators and moderation")."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.admin import Console, parse_duration, start_console
from server.chat_server import ChatServer
from server.config import RateLimit
from server.passwords import GuessCounter
from tests.wire import RawClient

PASSWORD = "correct horse battery"
Start = Callable[..., ChatServer]
Open = Callable[..., RawClient]


@pytest.fixture
def op_server(start_server: Start, tmp_path: Path) -> ChatServer:
    return start_server(data_dir=tmp_path, op_password=PASSWORD)


def make_op(client: RawClient, name: str, *others: RawClient) -> None:
    client.send({"type": "op", "password": PASSWORD})
    changed = client.skip_until("op-changed")
    assert (changed["name"], changed["op"], changed["by"]) == (name, True, name)
    for other in others:
        other.skip_until("op-changed")


def test_op_with_the_password_is_told_to_everyone_and_listed(
    op_server: ChatServer, open_client: Open
) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    alice.skip_until("joined")
    alice.send({"type": "op", "password": PASSWORD})
    for client in (alice, bob):
        frame = client.skip_until("op-changed")
        assert (frame["name"], frame["op"], frame["by"]) == ("alice", True, "alice")
        assert isinstance(frame["ts"], float)
    carol = open_client(op_server)
    assert carol.join("carol")["ops"] == ["alice"]
    bob.send({"type": "who"})
    assert bob.skip_until("users")["ops"] == ["alice"]


def test_welcome_and_users_leave_ops_out_while_there_are_none(
    op_server: ChatServer, open_client: Open
) -> None:
    alice = open_client(op_server)
    assert "ops" not in alice.join("alice")
    alice.send({"type": "who"})
    assert "ops" not in alice.expect("users")


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "kick", "name": "alice"},
        {"type": "ban", "name": "alice"},
        {"type": "unban", "id": 1},
        {"type": "bans"},
        {"type": "whois", "name": "alice"},
        {"type": "notice", "text": "hi"},
    ],
    ids=lambda f: f["type"],
)
def test_operator_frames_from_others_are_not_operator(
    op_server: ChatServer, open_client: Open, frame: dict[str, Any]
) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    bob.send(frame)
    bob.expect_error("not-operator", frame["type"])
    bob.send({"type": "who"})
    assert bob.expect("users")["users"] == ["alice", "bob"]  # nothing happened, still open
    assert op_server.room.bans.in_force() == []
    alice.skip_until("joined")
    alice.expect_silence(0.2)


def test_a_wrong_password_is_answered_a_second_later_in_order(
    op_server: ChatServer, open_client: Open, caplog: pytest.LogCaptureFixture
) -> None:
    alice = open_client(op_server, "alice")
    with caplog.at_level(logging.INFO, logger="server"):
        started = time.monotonic()
        alice.send({"type": "op", "password": "guess-one"})
        alice.send({"type": "ping", "n": 1})
        alice.expect_error("op-password-wrong", "op")
        took = time.monotonic() - started
        alice.expect("pong", n=1)  # the ping waited behind the answer
    assert 0.9 <= took < 4.0
    assert "op-password-wrong from 127.0.0.1" in caplog.text
    assert "guess-one" not in caplog.text
    assert op_server.room.ops() == ()


def test_the_third_wrong_password_closes(op_server: ChatServer, open_client: Open) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    for attempt in range(3):
        alice.send({"type": "op", "password": f"guess-{attempt}"})
    frames = alice.expect_closed(timeout=8.0)
    codes = [f["code"] for f in frames if f["type"] == "error"]
    assert codes == ["op-password-wrong"] * 3
    left = bob.skip_until("left")
    assert left["name"] == "alice"


def test_an_address_that_keeps_guessing_is_too_many_attempts(
    op_server: ChatServer, open_client: Open
) -> None:
    op_server.room.guesses = GuessCounter(burst=2, refill=60.0, exempt=lambda host: False)
    alice = open_client(op_server, "alice")
    for attempt in range(2):
        alice.send({"type": "op", "password": f"guess-{attempt}"})
        alice.expect_error("op-password-wrong", "op")
    alice.send({"type": "op", "password": PASSWORD})  # right, but too late
    error = alice.expect_error("too-many-attempts", "op")
    assert error["retry_after"] > 0
    alice.expect_closed()
    bob = open_client(op_server, "bob")  # another connection, the same address
    bob.send({"type": "op", "password": PASSWORD})
    bob.expect_error("too-many-attempts", "op")


def test_loopback_guesses_are_exempt_by_default(op_server: ChatServer) -> None:
    guesses = op_server.room.guesses
    for _ in range(50):
        guesses.charge("127.0.0.1", 0.0)
    assert guesses.retry_after("127.0.0.1", 0.0) is None
    for _ in range(10):
        guesses.charge("192.168.1.7", 0.0)
    assert guesses.retry_after("192.168.1.7", 0.0) == pytest.approx(60.0)


def test_kick_closes_the_target_and_tells_the_others(
    op_server: ChatServer, open_client: Open
) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    carol = open_client(op_server, "carol")
    make_op(alice, "alice", bob, carol)
    alice.send({"type": "kick", "name": "BOB", "reason": "spam\r\n\u202ealice: hi"})
    error = bob.skip_until("error")
    assert error["code"] == "kicked" and "in_reply_to" not in error
    assert "alice" in error["message"] and "spam" in error["message"]
    bob.expect_closed()
    for client in (alice, carol):
        left = client.skip_until("left")
        assert (left["name"], left["reason"], left["by"]) == ("bob", "kicked", "alice")
        assert left["message"] == "bob was removed by alice: spam alice: hi."  # one clean line
    alice.send({"type": "kick", "name": "nobody"})
    alice.expect_error("no-such-user", "kick")
    alice.send({"type": "who"})
    assert alice.expect("users")["users"] == ["alice", "carol"]


def test_whois(op_server: ChatServer, open_client: Open) -> None:
    alice = open_client(op_server, "alice")
    before = time.time()
    open_client(op_server, "bob")
    make_op(alice, "alice")
    alice.send({"type": "whois", "name": "bob"})
    result = alice.skip_until("whois-result")
    assert result["name"] == "bob" and result["address"] == "127.0.0.1"
    assert result["secure"] is False and result["op"] is False
    assert before - 1 <= result["since"] <= time.time() + 1
    alice.send({"type": "whois", "name": "alice"})
    assert alice.expect("whois-result")["op"] is True
    alice.send({"type": "whois", "name": "zed"})
    alice.expect_error("no-such-user", "whois")


def test_notice_goes_to_everyone_with_by(op_server: ChatServer, open_client: Open) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    make_op(alice, "alice", bob)
    alice.send({"type": "notice", "text": "back in\r\n5 \u202eminutes"})
    for client in (alice, bob):
        notice = client.skip_until("notice")
        assert notice["text"] == "back in\n5 minutes" and notice["by"] == "alice"
    alice.send({"type": "notice", "text": "   "})
    alice.expect_error("text-invalid", "notice")


def test_ban_by_name_kicks_the_present_and_refuses_every_spelling(
    op_server: ChatServer, open_client: Open
) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "Bob")
    make_op(alice, "alice", bob)
    alice.send({"type": "ban", "name": "bob", "duration": 3600, "reason": "flood"})
    reply = alice.skip_until("ban-list")
    (entry,) = reply["bans"]
    assert (entry["id"], entry["name"], entry["reason"], entry["by"]) == (
        1,
        "bob",
        "flood",
        "alice",
    )
    assert entry["expires"] == pytest.approx(entry["created"] + 3600)
    assert "address" not in entry
    assert bob.skip_until("error")["code"] == "kicked"
    assert alice.skip_until("left")["reason"] == "kicked"
    for spelling in ("bob", "BOB", "\uff42\uff4f\uff42"):
        again = open_client(op_server)
        again.send({"type": "hello", "name": spelling, "protocol": 1})
        error = again.expect_error("banned")
        assert "in_reply_to" not in error
        assert error["reason"] == "flood" and error["until"] == entry["expires"]
        again.expect_closed()
    carol = open_client(op_server, "carol")
    carol.send({"type": "rename", "name": "Bob"})  # the same check on every path
    carol.expect_error("banned")
    carol.expect_closed()


def test_ban_by_address_refuses_at_once_and_kicks_operators_too(
    op_server: ChatServer, open_client: Open
) -> None:
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    make_op(alice, "alice", bob)
    alice.send({"type": "ban", "address": "127.0.0.1", "reason": "everyone"})
    reply = alice.skip_until("ban-list")
    assert reply["bans"][0]["address"] == "127.0.0.1/32"
    assert "expires" not in reply["bans"][0]
    for client in (alice, bob):
        assert client.skip_until("error")["code"] == "kicked"
        client.expect_closed()
    late = open_client(op_server)  # says nothing: refused before its first frame
    error = late.expect_error("banned")
    assert "in_reply_to" not in error and error["reason"] == "everyone"
    late.expect_closed()
    alice.close()
    bob.close()
    deadline = time.monotonic() + 5.0
    while op_server.connection_count:  # refused ones were never counted
        assert time.monotonic() < deadline, op_server.connection_count
        time.sleep(0.02)


def test_ban_by_prefix_then_unban_from_the_console(
    op_server: ChatServer, open_client: Open
) -> None:
    out: list[str] = []
    console = Console(op_server.room, out.append)
    console.handle("/ban 127.0.0.0/8 2h testing")
    assert out[-1].startswith("Banned: #1 127.0.0.0/8 until")
    open_client(op_server).expect_error("banned")
    console.handle("/unban 1")
    assert out[-1].startswith("Lifted: #1")
    open_client(op_server, "alice")  # welcomed again


def test_timed_bans_expire(op_server: ChatServer, open_client: Open) -> None:
    op_server.room.ban(address="127.0.0.1", duration=0.5)
    open_client(op_server).expect_error("banned")
    deadline = time.monotonic() + 5.0
    while op_server.room.bans.match_address("127.0.0.1") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    open_client(op_server, "alice")
    assert op_server.room.bans.in_force() == []


def test_bans_survive_a_restart(start_server: Start, open_client: Open, tmp_path: Path) -> None:
    # Bans alone: the history's store (and its lock on the folder) is not the point.
    first = start_server(data_dir=tmp_path, store=False)
    first.room.ban(name="mallory", reason="again")
    first.room.ban(address="10.1.2.3", duration=600)
    first.shutdown()
    saved = json.loads((tmp_path / "bans.json").read_text(encoding="utf-8"))
    assert [b["id"] for b in saved["bans"]] == [1, 2]
    second = start_server(data_dir=tmp_path, store=False)
    assert [(b.id, b.name, b.address) for b in second.room.bans.in_force()] == [
        (1, "mallory", None),
        (2, None, "10.1.2.3/32"),
    ]
    client = open_client(second)
    client.send({"type": "hello", "name": "Mallory", "protocol": 1})
    assert client.expect_error("banned")["reason"] == "again"
    assert second.room.ban(name="eve").id == 3  # ids go on counting


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ban"},
        {"type": "ban", "name": "x", "duration": 0},
        {"type": "ban", "name": "x", "duration": -5},
        {"type": "ban", "address": "not-an-address"},
        {"type": "ban", "address": "10.0.0.0/40"},
        {"type": "ban", "name": "x", "duration": "1h"},
        {"type": "unban", "id": "1"},
    ],
)
def test_bad_ban_fields(op_server: ChatServer, open_client: Open, frame: dict[str, Any]) -> None:
    alice = open_client(op_server, "alice")
    make_op(alice, "alice")
    alice.send(frame)
    alice.expect_error("bad-field", frame["type"])
    assert op_server.room.bans.in_force() == []


def test_a_banned_name_must_be_a_name(op_server: ChatServer, open_client: Open) -> None:
    alice = open_client(op_server, "alice")
    make_op(alice, "alice")
    alice.send({"type": "ban", "name": "no spaces"})
    alice.expect_error("name-invalid", "ban")


def test_unban_and_bans(op_server: ChatServer, open_client: Open) -> None:
    alice = open_client(op_server, "alice")
    make_op(alice, "alice")
    op_server.room.ban(name="x")
    op_server.room.ban(address="fe80::1:2:3:4", reason="v6")
    alice.send({"type": "bans"})
    bans = alice.expect("ban-list")["bans"]
    assert [(b["id"], b.get("address")) for b in bans] == [(1, None), (2, "fe80::/64")]
    assert "by" not in bans[0]  # the console
    alice.send({"type": "unban", "id": 1})
    assert [b["id"] for b in alice.expect("ban-list")["bans"]] == [2]
    alice.send({"type": "unban", "id": 99})
    assert [b["id"] for b in alice.expect("ban-list")["bans"]] == [2]


def test_operator_frames_take_tokens_from_the_say_bucket(
    start_server: Start, open_client: Open, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path, op_password=PASSWORD, rate_limit=RateLimit(3, 0.001))
    alice = open_client(server, "alice")
    make_op(alice, "alice")  # one token
    alice.send({"type": "say", "text": "hi"})  # two
    alice.expect("message")
    alice.send({"type": "bans"})  # three
    alice.expect("ban-list")
    alice.send({"type": "whois", "name": "alice"})
    alice.expect_error("rate-limited", "whois")


def test_without_an_operator_password_op_always_fails(
    start_server: Start, open_client: Open, tmp_path: Path
) -> None:
    server = start_server(data_dir=tmp_path)
    alice = open_client(server, "alice")
    alice.send({"type": "op", "password": ""})
    alice.expect_error("op-password-wrong", "op")


# -- the console -----------------------------------------------------------------


def test_console_commands(op_server: ChatServer, open_client: Open) -> None:
    out: list[str] = []
    stopped: list[bool] = []
    console = Console(
        op_server.room, out.append, stop=lambda: stopped.append(True), fingerprint=lambda: "fp"
    )
    alice = open_client(op_server, "alice")
    bob = open_client(op_server, "bob")
    alice.skip_until("joined")

    console.run(["/op alice"])
    for client in (alice, bob):
        changed = client.skip_until("op-changed")
        assert changed["op"] is True and "by" not in changed
    console.handle("/who")
    assert out[-1] == "2 in the room: *alice, bob"
    console.handle("/notice the server restarts at noon")
    for client in (alice, bob):
        notice = client.skip_until("notice")
        assert notice["text"] == "the server restarts at noon" and "by" not in notice
    console.handle("/deop ALICE")
    assert out[-1] == "alice is no longer an operator."
    assert alice.skip_until("op-changed")["op"] is False
    console.handle("/kick bob enough")
    error = bob.skip_until("error")
    assert error["code"] == "kicked" and "the server" in error["message"]
    left = alice.skip_until("left")
    assert left["reason"] == "kicked" and "by" not in left and "enough" in left["message"]
    console.handle("/kick bob")
    assert out[-1] == "Nobody called 'bob' is in the room."
    console.handle("/ban carol 30m")
    console.handle("/bans")
    assert out[-1].startswith("#1 carol until") and "by the server" in out[-1]
    console.handle("/fingerprint")
    assert out[-1] == "fp"
    console.handle("/frobnicate")
    assert out[-1].startswith("Unknown command /frobnicate")
    console.handle("/help")
    assert "/unban ID" in out[-1]
    console.run(["/quit", "/who"])  # nothing after /quit
    assert stopped == [True] and out[-1] == "Stopping the server."


def test_console_usage_lines(op_server: ChatServer) -> None:
    out: list[str] = []
    console = Console(op_server.room, out.append)
    for line in ("/kick", "/ban", "/unban x", "/op", "/deop"):
        console.handle(line)
    assert all(line.startswith("Usage:") for line in out)
    console.handle("/op nobody")
    assert out[-1] == "Nobody called nobody is in the room."
    console.handle("/bans")
    assert out[-1] == "No bans."


def test_the_console_reads_only_a_terminal(op_server: ChatServer) -> None:
    console = Console(op_server.room, lambda text: None)
    assert start_console(console, io.StringIO("/quit\n")) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2w", "-1", "spam"])
def test_parse_duration_refuses(text: str) -> None:
    assert parse_duration(text) is None


# -- the command line --------------------------------------------------------------


def test_the_operator_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.__main__ import OP_PASSWORD_ENV, build_parser, config_from_args  # noqa: PLC0415

    secret = tmp_path / "op.txt"
    secret.write_text("first line\r\nsecond\n", encoding="utf-8")
    args = build_parser().parse_args(["--op-password-file", str(secret)])
    monkeypatch.setenv(OP_PASSWORD_ENV, "from-env")
    assert config_from_args(args).op_password == "first line"
    assert config_from_args(build_parser().parse_args([])).op_password == "from-env"
    monkeypatch.delenv(OP_PASSWORD_ENV)
    assert config_from_args(build_parser().parse_args([])).op_password is None
    assert "first line" not in repr(config_from_args(args))


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_bad_operator_password_file_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    from server.__main__ import main  # noqa: PLC0415

    path = tmp_path / "op.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    argv = ["--port", "0", "--host", "127.0.0.1", "--data-dir", str(tmp_path)]
    assert main([*argv, "--op-password-file", str(path)]) == 1
    assert "password file" in capsys.readouterr().err


def test_a_damaged_bans_file_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main  # noqa: PLC0415

    (tmp_path / "bans.json").write_text("{", encoding="utf-8")
    assert main(["--port", "0", "--host", "127.0.0.1", "--data-dir", str(tmp_path)]) == 1
    assert "bans file" in capsys.readouterr().err
