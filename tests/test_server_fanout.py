"""How the server spreads frames to a room: presence held back to share
writes, big rooms written to in slices, one user list encoding per change."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

import server.io_loop as io_loop_module
import server.room as room_module
from server.chat_server import ChatServer
from server.fanout import BroadcastLog, Outbox, take_tails
from server.protocol import LeaveReason, RemoteProtocolError, Users, Welcome, encode
from server.room import Room
from server.store.memory import Roster
from tests.wire import Closed, RawClient


def _count_writes(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the chunks the server pulls to write to member ``name``: one per
    write, whether pulled alone or with everyone who keeps up."""
    writes = [0]
    pull = Room.pull

    def counting_pull(self: Room, member, max_bytes: int) -> bytes | None:
        chunk = pull(self, member, max_bytes)
        if chunk and member.name == name:
            writes[0] += 1
        return chunk

    pull_tails = Room.pull_tails

    def counting_pull_tails(self: Room, members, max_bytes: int) -> list[bytes | None]:
        tails = pull_tails(self, members, max_bytes)
        writes[0] += sum(
            1 for m, tail in zip(members, tails, strict=True) if tail and m.name == name
        )
        return tails

    monkeypatch.setattr(Room, "pull", counting_pull)
    monkeypatch.setattr(Room, "pull_tails", counting_pull_tails)
    return writes


def test_a_stream_of_joins_reaches_a_member_in_a_few_writes(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The longest hold, so that a slow machine's joins still share writes.
    monkeypatch.setattr(io_loop_module, "PRESENCE_DELAY", io_loop_module.PRESENCE_MAX_DELAY)
    srv = start_server()
    watcher = open_client(srv, "watcher")
    writes = _count_writes(monkeypatch, "watcher")
    names = [f"user{i}" for i in range(40)]
    started = time.monotonic()
    for name in names:  # one after another, as people arrive
        open_client(srv, name)
    for name in names:
        watcher.expect("joined", name=name)
    took = time.monotonic() - started
    # Written one by one, 40 joins are 40 writes; held back, they share one
    # write per hold that the joins took.
    assert writes[0] <= 2 + took / io_loop_module.PRESENCE_MAX_DELAY
    assert writes[0] < len(names) / 2


def test_presence_waits_only_a_moment(
    start_server: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    watcher = open_client(srv, "watcher")
    started = time.monotonic()
    open_client(srv, "bob")
    watcher.expect("joined", name="bob", timeout=2)
    assert time.monotonic() - started < 1.0


def test_a_message_goes_out_at_once_with_the_presence_before_it(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A long presence delay: only the message can have flushed the join.
    monkeypatch.setattr(io_loop_module, "PRESENCE_DELAY", 30.0)
    srv = start_server(rate_limit=None)
    watcher = open_client(srv, "watcher")
    bob = open_client(srv, "bob")
    bob.send({"type": "say", "text": "hi"})
    assert watcher.recv(timeout=2)["type"] == "joined"
    assert watcher.recv(timeout=2)["text"] == "hi"


def test_a_room_written_to_in_slices_gets_everything_in_order(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(io_loop_module, "FLUSH_SLICE", 2)  # 9 members: 5 slices per flush
    srv = start_server(rate_limit=None)
    clients = [open_client(srv, f"c{i}") for i in range(8)]
    late = None
    for round_ in range(5):
        for i, client in enumerate(clients):
            client.send({"type": "say", "text": f"{i} {round_}"})
        if round_ == 2:  # a newcomer arrives in the middle of the stream
            late = open_client(srv, "late")
    assert late is not None
    for client in [*clients, late]:
        got: dict[int, list[int]] = {i: [] for i in range(8)}
        while any(not rounds or rounds[-1] < 4 for rounds in got.values()):
            frame = client.recv(timeout=5)
            if frame["type"] == "message" and not frame.get("history"):
                sender, round_ = map(int, frame["text"].split())
                got[sender].append(round_)
        for rounds in got.values():
            if client is late:  # it joined in the middle: from some round on, all
                assert rounds == list(range(rounds[0], 5))
            else:
                assert rounds == list(range(5))


def test_roster_keeps_names_sorted_with_their_json() -> None:
    roster = Roster()
    for name in ["bob", "Alice", 'q"uote', "émile", "alice"]:
        roster.add(name.casefold(), name)
    roster.remove("bob", "bob")
    names = roster.names
    assert list(names) == ["Alice", "alice", 'q"uote', "émile"]
    assert json.loads(names.json) == list(names)
    assert roster.names is names  # kept until the next change
    roster.add("zed", "zed")
    assert roster.names is not names
    assert json.loads(roster.names.json) == ["Alice", "alice", 'q"uote', "zed", "émile"]


@pytest.mark.parametrize("make", [lambda n: Welcome("me", n, 3, "motd"), Users])
def test_a_ready_name_list_encodes_as_a_plain_one(make: Callable[..., object]) -> None:
    roster = Roster()
    for name in ["zoë", "bob", "日本", "me"]:
        roster.add(name.casefold(), name)
    ready, plain = encode(make(roster.names)), encode(make(tuple(roster.names)))  # type: ignore[arg-type]
    assert json.loads(ready[4:]) == json.loads(plain[4:])
    assert len(ready) == len(plain)
    assert int.from_bytes(ready[:4], "big") == len(ready) - 4


def _frames_until(
    client: RawClient, done: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    """Frames from ``client`` until ``done(frames)``, the server closes, or ``timeout``."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            frames.append(client.recv(remaining))
        except (TimeoutError, Closed):
            break
    return frames


def test_held_back_joins_do_not_make_a_reader_that_keeps_up_too_slow(
    start_server: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    # The watcher's socket has plenty of room: whatever the server writes
    # reaches it. Only bytes the server holds back itself can pass the bound.
    srv = start_server(max_queue=1024)
    watcher = open_client(srv, "watcher")
    names = [f"user{i:02d}" for i in range(40)]
    for name in names:  # one after another, as people arrive
        open_client(srv, name)
    frames = _frames_until(watcher, lambda got: len(got) >= len(names), timeout=5)
    assert [(f["type"], f.get("name")) for f in frames] == [("joined", n) for n in names]


def test_held_back_leaves_do_not_make_a_reader_that_keeps_up_too_slow(
    start_server: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> None:
    srv = start_server(max_queue=1024)
    watcher = open_client(srv, "watcher")
    names = [f"leaver{i:02d}" for i in range(20)]
    leavers = []
    for name in names:  # joined slowly: the watcher takes each join before the next
        leavers.append(open_client(srv, name))
        watcher.expect("joined", name=name, timeout=5)
    for leaver in leavers:  # then they drop off one after another, as in a network outage
        leaver.close()
        time.sleep(0.002)
    frames = _frames_until(watcher, lambda got: len(got) >= len(names), timeout=5)
    assert [(f["type"], f.get("name")) for f in frames] == [("left", n) for n in names]


@pytest.mark.parametrize("urgent", [False, True])
def test_presence_on_one_loop_wakes_an_idle_other_loop(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    monkeypatch: pytest.MonkeyPatch,
    urgent: bool,
) -> None:
    # With one I/O thread by default, nothing else covers a join on one loop
    # reaching a member of another. An idle loop sleeps until its next timer
    # tick: made long here, so only a wake-up can deliver in time.
    monkeypatch.setattr(io_loop_module, "TIMER_TICK", 30.0)
    if urgent:  # presence held for long: only the message may carry the join
        monkeypatch.setattr(io_loop_module, "PRESENCE_DELAY", 30.0, raising=False)
    srv = start_server(io_threads=2, rate_limit=None)
    watcher = open_client(srv, "watcher")
    time.sleep(0.2)  # the watcher's loop is asleep
    started = time.monotonic()
    bob = open_client(srv, "bob")
    assert sorted(len(loop) for loop in srv._loops) == [1, 1]  # one each
    if urgent:
        bob.send({"type": "say", "text": "hi"})
        assert watcher.recv(timeout=3)["type"] == "joined"
        assert watcher.recv(timeout=3)["text"] == "hi"
    else:
        watcher.expect("joined", name="bob", timeout=3)
        bob.send({"type": "rename", "name": "robert"})
        watcher.expect("renamed", old="bob", new="robert", timeout=3)
        bob.close()
        watcher.expect("left", name="robert", timeout=3)
    assert time.monotonic() - started < 2.0


class _Member:
    def __init__(self) -> None:
        self.name: str | None = None
        self.outbox = Outbox()

    def notify(self) -> None:
        pass


def test_a_join_refused_for_a_too_big_welcome_leaves_the_roster_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tiny frame limit stands in for a room of thousands of long names.
    monkeypatch.setattr(room_module, "encode", functools.partial(encode, max_frame=120))
    room = Room()
    members = {}
    refused = None
    for name in ["alice", "bob", "carol", "dave", "erin", "frank", "george", "harry", "ivan"]:
        member = _Member()
        try:
            room.join(member, name)
        except RemoteProtocolError as exc:
            assert exc.code == "server-full"
            refused = name
            break
        members[name] = member
    assert refused is not None
    assert room.users() == tuple(members)  # no trace of the refused name
    room.leave(members["alice"], LeaveReason.QUIT)
    room.rename(members["bob"], "Bob")  # the same identity, another spelling
    assert room.users() == ("Bob", *list(members)[2:])
    room.join(_Member(), "al")  # the list is small enough again
    assert room.users() == ("al", "Bob", *list(members)[2:])


def test_members_that_keep_up_get_the_same_tail_and_the_others_the_full_take() -> None:
    log = BroadcastLog()
    up, behind, own, done, gone = Outbox(), Outbox(), Outbox(), Outbox(), Outbox()
    for outbox in (up, behind, own, gone):
        outbox.subscribe(log)
    log.append(b"a" * 10)
    done.subscribe(log)  # joined after the first frame: it has it all
    behind.cursor = 0
    up.cursor = 0
    log.append(b"b" * 5)
    own.put(log, b"private")  # a frame of its own: take() keeps its order
    gone.unsubscribe(log)  # a leaver reads only up to where it left
    tails = take_tails([up, behind, own, done, gone], log, 12)
    assert tails[0] is None  # 15 bytes owed, over max_bytes
    assert tails[1] is None
    assert tails[2] is None and own.cursor == 0
    assert tails[3] == b"b" * 5 and done.cursor == log.end
    assert tails[4] is None
    assert take_tails([up, behind], log, 100) == [b"a" * 10 + b"b" * 5] * 2
    first, second = take_tails([Outbox(), Outbox()], log, 100)
    assert first is None and second is None  # not members: they follow no log
    again = take_tails([up], log, 100)
    assert again == [b""]  # it has everything
    log.forget_before(log.end)
    late = Outbox()
    late.cursor = 0  # what it is owed was forgotten: overrun, for take() to say
    assert take_tails([late], log, 100) == [None]


def test_members_at_one_cursor_share_one_bytes_object() -> None:
    log = BroadcastLog()
    outboxes = [Outbox() for _ in range(3)]
    for outbox in outboxes:
        outbox.subscribe(log)
    log.append(b"hello")
    tails = take_tails(outboxes, log, 100)
    assert tails[0] == b"hello" and all(tail is tails[0] for tail in tails)
