"""Several servers, one room (PROTOCOL.md): real servers sharing a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.chat_server import ChatServer
from server.store.redis_log import REGISTER_SCRIPT, ROOM_SCRIPT
from tests.redis_server import RedisServer
from tests.wire import RawClient

HEARTBEAT = 0.1  # the cut-off is 0.5 s, the clean-up 1 s


@pytest.fixture
def shared(
    redis_server: RedisServer, start_server: Callable[..., ChatServer], tmp_path: Path
) -> Callable[..., ChatServer]:
    """Start a server of the shared room (its own data folder), on the test's Redis
    (set up first, so that it stops after the servers)."""
    count = 0

    def start(**overrides: Any) -> ChatServer:
        nonlocal count
        count += 1
        overrides.setdefault("data_dir", tmp_path / f"server{count}")
        overrides.setdefault("redis_url", redis_server.url)
        overrides.setdefault("redis_heartbeat", HEARTBEAT)
        overrides.setdefault("tls", "off")
        return start_server(**overrides)

    return start


def test_two_servers_one_order_with_ids_rising_everywhere(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one, two = shared(), shared()
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    carol = open_client(one, "carol")
    assert alice.expect("joined")["name"] == "bob"
    alice.expect("joined", name="carol")
    bob.expect("joined", name="carol")
    # Everyone says five things at once, from both servers.
    for i in range(5):
        for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            client.send({"type": "say", "text": f"{name} {i}"})
    seen = {name: messages(client, 15) for name, client in
            (("alice", alice), ("bob", bob), ("carol", carol))}  # fmt: skip
    orders = {name: [(m["id"], m["from"], m["text"]) for m in got] for name, got in seen.items()}
    assert orders["alice"] == orders["bob"] == orders["carol"]
    ids = [entry[0] for entry in orders["alice"]]
    assert ids == sorted(ids) and len(set(ids)) == 15
    # Each one's own lines come in the order they were said (the echo included).
    for name in ("alice", "bob", "carol"):
        said = [text for _id, sender, text in orders["alice"] if sender == name]
        assert said == [f"{name} {i}" for i in range(5)]
    # One clock: every server stamps a message with the same time.
    assert [m["ts"] for m in seen["alice"]] == [m["ts"] for m in seen["bob"]]


def test_welcome_lists_everyone_on_every_server_and_no_files(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one, two = shared(), shared()
    open_client(one, "alice")
    open_client(two, "bob")
    open_client(one, "carol")
    dave = open_client(two)
    dave.send({"type": "hello", "name": "dave", "protocol": 1})
    got = dave.expect("welcome")
    assert got["users"] == ["alice", "bob", "carol", "dave"]
    assert "files" not in got.get("features", [])
    dave.send({"type": "who"})
    assert dave.skip_until("users")["users"] == ["alice", "bob", "carol", "dave"]


def test_one_name_claimed_at_once_on_three_servers_has_one_winner(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    servers = [shared(), shared(), shared()]
    spellings = ["Alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45"]  # fullwidth "alice"
    clients = [open_client(server) for server in servers]
    for client, name in zip(clients, spellings, strict=True):
        client.send({"type": "hello", "name": name, "protocol": 1})
    answers = [client.recv() for client in clients]
    kinds = sorted(answer["type"] for answer in answers)
    assert kinds == ["error", "error", "welcome"], answers
    for answer in answers:
        if answer["type"] == "error":
            assert answer["code"] == "name-taken" and answer["in_reply_to"] == "hello"
    # A loser keeps its connection and may take another name.
    loser = next(c for c, a in zip(clients, answers, strict=True) if a["type"] == "error")
    loser.send({"type": "hello", "name": "bob", "protocol": 1})
    assert loser.expect("welcome")["name"] == "bob"


def test_private_messages_cross_servers_and_reach_nobody_else(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one, two = shared(), shared()
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    carol = open_client(one, "carol")
    bob.skip_until("joined")
    alice.send({"type": "say", "text": "psst", "to": "BOB"})
    echo = alice.skip_until("message")
    got = bob.skip_until("message")
    assert echo["text"] == got["text"] == "psst"
    assert echo["to"] == got["to"] == "bob" and echo["id"] == got["id"]
    alice.send({"type": "say", "text": "to nobody", "to": "zed"})
    assert alice.expect_error("no-such-user", "say")
    alice.send({"type": "say", "text": "everyone"})
    assert carol.skip_until("message")["text"] == "everyone"  # not psst
    assert bob.skip_until("message")["text"] == "everyone"


def test_a_late_joiner_on_another_server_gets_the_history(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one = shared()
    alice = open_client(one, "alice")
    for i in range(3):
        alice.send({"type": "say", "text": f"line {i}"})
    ids = [m["id"] for m in messages(alice, 3)]
    two = shared()  # started after: it learns the history from Redis
    dave = open_client(two)
    welcome = dave.join("dave")
    assert welcome["history_count"] == 3
    assert [(m["id"], m["text"]) for m in dave.history] == list(
        zip(ids, [f"line {i}" for i in range(3)], strict=True)
    )
    dave.send({"type": "history", "limit": 10})
    page = dave.skip_until("history-page")
    assert [m["text"] for m in page["messages"]] == ["line 0", "line 1", "line 2"]


def test_rename_and_leave_are_seen_everywhere(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one, two = shared(), shared()
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    alice.skip_until("joined")
    alice.send({"type": "rename", "name": "alicia"})
    assert bob.skip_until("renamed") == alice.skip_until("renamed")
    bob.send({"type": "rename", "name": "ALICIA"})
    assert bob.expect_error("name-taken", "rename")
    bob.send({"type": "bye"})
    left = alice.skip_until("left")
    assert (left["name"], left["reason"]) == ("bob", "quit")
    # The name is free again, on any server.
    again = open_client(one)
    assert again.join("bob")["users"] == ["alicia", "bob"]


def messages(client: RawClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` message frames ``client`` gets (presence skipped)."""
    return [client.skip_until("message") for _ in range(count)]


def test_operators_act_across_servers(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one, two = shared(op_password="sekrit"), shared(op_password="sekrit")
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    carol = open_client(two, "carol")
    alice.skip_until("joined")
    alice.skip_until("joined")
    alice.send({"type": "op", "password": "sekrit"})
    for client in (alice, bob, carol):
        changed = client.skip_until("op-changed")
        assert (changed["name"], changed["op"], changed["by"]) == ("alice", True, "alice")
    # A later joiner elsewhere learns who the operators are.
    dave = open_client(two)
    assert dave.join("dave")["ops"] == ["alice"]
    alice.send({"type": "whois", "name": "bob"})
    result = alice.skip_until("whois-result")
    assert (result["name"], result["address"], result["op"]) == ("bob", "127.0.0.1", False)
    alice.send({"type": "notice", "text": "back in five"})
    assert bob.skip_until("notice")["text"] == "back in five"
    alice.send({"type": "kick", "name": "BOB", "reason": "spam"})
    error = bob.skip_until("error")
    assert error["code"] == "kicked" and "alice" in error["message"]
    bob.expect_closed()
    for client in (alice, carol):
        left = client.skip_until("left")
        assert (left["name"], left["reason"], left["by"]) == ("bob", "kicked", "alice")
        assert left["message"] == "bob was removed by alice: spam."


def test_a_server_whose_redis_is_not_there_yet_refuses_then_serves(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    tmp_path: Path,
) -> None:
    redis_ = RedisServer(tmp_path / "late")  # a free port, nothing listening yet
    try:
        server = start_server(
            data_dir=tmp_path / "server", redis_url=redis_.url, redis_heartbeat=HEARTBEAT, tls="off"
        )
        early = open_client(server)
        early.send({"type": "hello", "name": "alice", "protocol": 1})
        error = early.expect_error("room-unavailable", "hello")
        assert error["message"]
        early.expect_closed()
        redis_.start()
        deadline = time.monotonic() + 10
        while True:
            client = open_client(server)
            client.send({"type": "hello", "name": "alice", "protocol": 1})
            answer = client.recv()
            if answer["type"] == "welcome":
                break
            assert answer["code"] == "room-unavailable"
            assert time.monotonic() < deadline, "the server never reached Redis"
            time.sleep(HEARTBEAT)
    finally:
        redis_.close()


def test_a_command_sent_again_after_a_lost_reply_is_not_applied_twice(
    redis_server: RedisServer,
) -> None:
    """The script keeps each operation's answer: the writer's retry is answered, not run."""
    client = redis_server.client(decode_responses=False)
    prefix = "chat:{t}:"
    epoch, *_, now_ms = client.eval(REGISTER_SCRIPT, 1, prefix, "e1", "srv", 10, 0)
    assert epoch == b"e1"
    lease = now_ms + 60_000  # this server's commands run until then
    base = ["e1", "srv", "", "", 0, 0, 100, 100, 60, "", "1", "", "", lease]

    def run(op: str, kind: str, identity: str, body: str) -> list[Any]:
        args = list(base)
        args[2], args[3], args[9], args[12] = op, kind, identity, body
        return client.eval(ROOM_SCRIPT, 1, prefix, *args)

    join = json.dumps({"n": "alice", "h": "127.0.0.1", "x": False})
    assert run("op-1", "join", "alice", join)[0] == b"ok"
    say = json.dumps({"n": "alice", "x": "hi", "a": False})
    first = run("op-2", "say", "alice", say)
    again = run("op-2", "say", "alice", say)
    assert first == again and first[0] == b"ok"
    assert client.xlen(prefix + "log") == 2  # the join and one message
    assert client.xlen(prefix + "history") == 1
    assert int(client.get(prefix + "msgid")) == 1
    # A new operation is a new message; a join of a taken name is refused.
    assert run("op-3", "say", "alice", say)[0] == b"ok"
    assert int(client.get(prefix + "msgid")) == 2
    assert run("op-4", "join", "alice", join)[0] == b"name-taken"
    # A server that is not registered, or an old epoch, changes nothing.
    args = list(base)
    args[1], args[2], args[3], args[9], args[12] = "other", "op-5", "say", "alice", say
    assert client.eval(ROOM_SCRIPT, 1, prefix, *args)[0] == b"unavailable"
    args[0], args[1] = "e0", "srv"
    assert client.eval(ROOM_SCRIPT, 1, prefix, *args)[0] == b"unavailable"
    # Nor does a command whose server's lease is over.
    args[0], args[2], args[13] = "e1", "op-6", now_ms - 1
    assert client.eval(ROOM_SCRIPT, 1, prefix, *args)[0] == b"unavailable"
    assert client.xlen(prefix + "log") == 3


def test_a_ban_made_on_one_server_holds_on_every_server(
    shared: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    one, two = shared(op_password="sekrit"), shared()
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    alice.skip_until("joined")
    alice.send({"type": "op", "password": "sekrit"})
    alice.skip_until("op-changed")
    alice.send({"type": "ban", "name": "BOB", "duration": 3600, "reason": "flood"})
    (ban,) = alice.skip_until("ban-list")["bans"]
    assert bob.skip_until("error")["code"] == "kicked"
    bob.expect_closed()

    def refused_on(server: ChatServer) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:
            client = open_client(server)
            client.send({"type": "hello", "name": "bob", "protocol": 1})
            answer = client.recv()
            if answer["type"] == "error":
                return answer
            assert time.monotonic() < deadline, "the ban did not reach this server"
            client.close()
            time.sleep(0.05)

    for server in (one, two, shared()):  # a server started after the ban knows it too
        error = refused_on(server)
        assert error["code"] == "banned" and "flood" in error["message"]
    (kept,) = two.room.bans.in_force()
    assert (kept.identity, kept.reason, kept.by) == ("bob", "flood", "alice")
    assert abs((kept.expires or 0) - ban["expires"]) < 1  # the same end, not a new hour
    alice.send({"type": "unban", "id": ban["id"]})
    assert alice.skip_until("ban-list")["bans"] == []
    deadline = time.monotonic() + 5
    while two.room.bans.in_force():
        assert time.monotonic() < deadline, "the lifted ban stayed on the other server"
        time.sleep(0.05)
    assert open_client(two).join("bob")["name"] == "bob"
