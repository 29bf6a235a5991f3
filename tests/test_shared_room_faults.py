"""Several servers, one room, when things break (issue 16, "Faults").

How these work: a real ``redis-server`` per test (so every test has a room
of its own) and real servers on it, with a heartbeat H of 0.1 s (the
cut-off is 5H, the clean-up 10H) unless a test needs longer. A server
that is killed, stopped or sent SIGTERM runs as a child process
(``python3 -m server ... --redis URL``, its output in the test's folder);
the servers that watch it run in this process. Every wait is bounded: a
test waits "until this happens, within N seconds", never sleeps to see
that something did not happen; a sleep only makes a fault last.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.chat_server import ChatServer
from tests.redis_server import RedisServer
from tests.tcp_proxy import TcpProxy
from tests.wire import Closed, RawClient

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.1  # the cut-off is 0.5 s, the clean-up 1 s
REAPED_WITHIN = 10 * HEARTBEAT + 4.0  # the clean-up, plus slack for a loaded machine
LISTENING = re.compile(r"listening on 127\.0\.0\.1, port (\d+)")
START_TIMEOUT = 15.0
_SERVERS = itertools.count(1)
COMMAND = (sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--tls", "off")
COMMAND += ("--no-discovery", "--redis-heartbeat", str(HEARTBEAT))


class ServerProcess:
    """``python3 -m server`` in a shared room, as a child process; output to files."""

    def __init__(self, folder: Path, redis_url: str, *extra: str) -> None:
        folder.mkdir(parents=True)
        self.out_path = folder / "stdout"
        self.err_path = folder / "stderr"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*COMMAND, "--data-dir", str(folder / "data"), "--redis", redis_url, *extra],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = LISTENING.search(self.out_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.close()
        raise AssertionError(f"the server did not start: {self.output()}")

    def output(self) -> str:
        return (
            f"stdout: {self.out_path.read_text(errors='replace')!r}\n"
            f"stderr: {self.err_path.read_text(errors='replace')[-3000:]!r}"
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def close(self) -> None:
        """Kill (a stopped process dies of SIGKILL too) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers as child processes; every one is killed and reaped after the test."""
    started: list[ServerProcess] = []

    def start(redis_url: str, *extra: str) -> ServerProcess:
        process = ServerProcess(tmp_path / f"child{len(started) + 1}", redis_url, *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that keeps every answered write across a restart (set up before the
    servers, so that it stops after them)."""
    with RedisServer(tmp_path / "aof-redis", appendonly=True) as redis_:
        yield redis_


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    """A proxy to the test's Redis (set up before the servers, so that it stops after them)."""
    with TcpProxy(redis_server.port) as proxy_:
        yield proxy_


@pytest.fixture
def serve(start_server: Callable[..., ChatServer], tmp_path: Path) -> Callable[..., ChatServer]:
    """Start a server of the shared room at ``url`` in this process, with a data
    folder of its own; ``ServerConfig`` fields as keywords."""

    def start(url: str, **overrides: Any) -> ChatServer:
        overrides.setdefault("redis_heartbeat", HEARTBEAT)
        overrides.setdefault("data_dir", tmp_path / f"server-{next(_SERVERS)}")
        return start_server(redis_url=url, tls="off", discovery=False, **overrides)

    return start


def test_a_killed_servers_users_are_announced_left_and_their_names_freed(
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    spawn: Callable[..., ServerProcess],
    open_client: Callable[..., RawClient],
) -> None:
    doomed = spawn(redis_server.url)
    survivor = serve(redis_server.url)
    bob = open_client(survivor, "bob")
    open_client(doomed.port, "alice")
    open_client(doomed.port, "carol")
    bob.expect("joined", name="alice")
    bob.expect("joined", name="carol")
    # Until the clean-up, the dead server's names are still taken.
    early = open_client(survivor)
    early.send({"type": "hello", "name": "alice", "protocol": 1})
    early.expect_error("name-taken", "hello")

    killed = time.monotonic()
    doomed.signal(signal.SIGKILL)
    gone = {}
    while len(gone) < 2:
        left = bob.skip_until("left", timeout=REAPED_WITHIN)
        gone[left["name"]] = left["reason"]
    assert time.monotonic() - killed < REAPED_WITHIN
    assert gone == {"alice": "disconnected", "carol": "disconnected"}
    again = open_client(survivor)
    assert again.join("alice")["users"] == ["alice", "bob"]
    bob.send({"type": "who"})
    assert bob.skip_until("users")["users"] == ["alice", "bob"]


def test_a_server_stopped_past_the_clean_up_cuts_its_clients_off_when_resumed(
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    spawn: Callable[..., ServerProcess],
    open_client: Callable[..., RawClient],
) -> None:
    zombie = spawn(redis_server.url)
    survivor = serve(redis_server.url)
    bob = open_client(survivor, "bob")
    old_alice = open_client(zombie.port, "alice")
    bob.expect("joined", name="alice")

    zombie.signal(signal.SIGSTOP)
    left = bob.skip_until("left", timeout=REAPED_WITHIN)
    assert (left["name"], left["reason"]) == ("alice", "disconnected")
    new_alice = open_client(survivor, "alice")  # the name is free: a new alice takes it
    bob.expect("joined", name="alice")
    # The old alice speaks while her server is stopped: it reads that when resumed.
    old_alice.send({"type": "say", "text": "ghost"})
    time.sleep(2.0)  # the stop lasts 20 heartbeats, twice the clean-up
    zombie.signal(signal.SIGCONT)

    frames = old_alice.expect_closed(timeout=10.0)
    kinds = [frame["type"] for frame in frames]
    assert set(kinds) <= {"shutdown", "error"}, frames  # nothing of the room any more
    for frame in frames:
        assert frame.get("message"), frame

    # Once it has registered again (a new server id), its hellos work.
    _dave, welcome = join_when_available(zombie.port, "dave", open_client, within=10.0)
    assert welcome["users"] == ["alice", "bob", "dave"]
    bob.expect("joined", name="dave")
    new_alice.send({"type": "say", "text": "marker"})
    seen = texts_until(bob, "marker")
    assert "ghost" not in seen
    for client in (bob, new_alice):
        client.send({"type": "who"})
        assert client.skip_until("users")["users"] == ["alice", "bob", "dave"]


def test_redis_down_past_the_cut_off_tells_everyone_then_the_room_comes_back(
    aof_redis: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    one = serve(aof_redis.url)
    two = serve(aof_redis.url)
    ids: list[int] = []

    def talk(tag: str) -> list[RawClient]:
        """A client joins on each server, the first says a line, both get it: its id."""
        speaker, _ = join_when_available(one.port, f"{tag}1", open_client, within=10.0)
        hearer, _ = join_when_available(two.port, f"{tag}2", open_client, within=10.0)
        speaker.send({"type": "say", "text": f"said by {tag}"})
        for client in (speaker, hearer):
            got = client.skip_until("message")
            assert got["text"] == f"said by {tag}"
        ids.append(got["id"])
        return [speaker, hearer]

    for tag, keep_data in (("a", True), ("b", False)):
        clients = talk(tag)
        aof_redis.stop()  # for as long as the checks below take: past the 0.5 s cut-off
        for client in clients:
            shutdown = client.skip_until("shutdown", timeout=10.0)
            assert isinstance(shutdown.get("message"), str) and shutdown["message"]
            client.expect_closed(timeout=5.0)
        for server in (one, two):
            refused = open_client(server)
            refused.send({"type": "hello", "name": "zed", "protocol": 1})
            refused.expect_error("room-unavailable", "hello")
            refused.expect_closed(timeout=5.0)
        aof_redis.restart(keep_data=keep_data)
    talk("c")
    # Each message's id is above every id given before, kept data or not.
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 3, ids


def test_after_redis_comes_back_empty_a_new_servers_first_id_is_above_the_old_ones(
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    """The ids the old servers gave survive Redis losing everything, even when
    the first message after it comes from a server that never saw them."""
    old = serve(redis_server.url)
    alice = open_client(old, "alice")
    for i in range(3):
        alice.send({"type": "say", "text": f"old {i}"})
    given = [alice.skip_until("message")["id"] for _ in range(3)]
    redis_server.restart(keep_data=False)
    alice.skip_until("shutdown", timeout=10.0)
    watcher, _ = join_when_available(old.port, "walt", open_client, within=10.0)
    new = serve(redis_server.url)  # a data folder of its own: it has no ids at all
    newcomer = open_client(new, "nora")
    newcomer.send({"type": "say", "text": "first since"})
    echo = newcomer.skip_until("message")
    assert echo["id"] > max(given), (echo, given)
    assert watcher.skip_until("message") == echo  # the old server's clients see it rise too


def test_redis_restarted_with_its_data_under_the_cut_off_cuts_nobody_off(
    aof_redis: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    heartbeat = 0.5  # the cut-off is 2.5 s: a restart takes a fraction of it
    one = serve(aof_redis.url, redis_heartbeat=heartbeat)
    two = serve(aof_redis.url, redis_heartbeat=heartbeat)
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    alice.expect("joined", name="bob")
    alice.send({"type": "say", "text": "before"})
    before = bob.skip_until("message")
    assert alice.skip_until("message") == before
    aof_redis.restart(keep_data=True)  # its scripts are gone, its connections closed
    sent = []
    for i in range(5):
        for client, name in ((alice, "alice"), (bob, "bob")):
            client.send({"type": "say", "text": f"{name} {i}"})
            sent.append(f"{name} {i}")
    orders = []
    for client in (alice, bob):
        got = [client.recv(timeout=10.0) for _ in sent]
        assert [frame["type"] for frame in got] == ["message"] * len(sent), got
        assert sorted(frame["text"] for frame in got) == sorted(sent)
        orders.append([(frame["id"], frame["text"]) for frame in got])
    assert orders[0] == orders[1]
    ids = [before["id"]] + [entry[0] for entry in orders[0]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_server_whose_redis_link_stalls_past_the_cut_off_posts_nothing_late(
    proxy: TcpProxy,
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    """The same as a hung Redis, for one server: its pipeline waits in the
    network while it cuts its clients off, and is delivered afterwards."""
    heartbeat = 0.2  # the cut-off is 1 s, the clean-up 2 s
    stalled = serve(f"redis://127.0.0.1:{proxy.port}/0", redis_heartbeat=heartbeat)
    other = serve(redis_server.url, redis_heartbeat=heartbeat)
    alice = open_client(stalled, "alice")
    bob = open_client(other, "bob")
    alice.expect("joined", name="bob")
    proxy.pause()
    try:
        alice.send({"type": "say", "text": "limbo"})
        frames = alice.expect_closed(timeout=10.0)
        assert [frame["type"] for frame in frames] == ["shutdown"], frames
    finally:
        proxy.resume()  # before the clean-up: the stalled server is still in the room
    carol, _ = join_when_available(stalled.port, "carol", open_client, within=10.0)
    carol.send({"type": "say", "text": "marker"})
    assert texts_until(bob, "marker") == []


def test_redis_paused_under_the_cut_off_delays_messages_and_loses_none(
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    heartbeat = 0.5  # the cut-off is 2.5 s: a pause of 1 s is well under it
    one = serve(redis_server.url, redis_heartbeat=heartbeat)
    two = serve(redis_server.url, redis_heartbeat=heartbeat)
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    alice.expect("joined", name="bob")
    sent = [f"paused {i}" for i in range(10)]
    redis_server.pause()
    try:
        for i, text in enumerate(sent):
            (alice if i % 2 else bob).send({"type": "say", "text": text})
        time.sleep(1.0)  # the stall lasts 1 s
    finally:
        redis_server.resume()
    orders = []
    for client in (alice, bob):
        got = [client.recv(timeout=10.0) for _ in sent]
        assert [frame["type"] for frame in got] == ["message"] * len(sent), got
        assert sorted(frame["text"] for frame in got) == sorted(sent)
        ids = [frame["id"] for frame in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        orders.append([(frame["id"], frame["text"]) for frame in got])
    assert orders[0] == orders[1]
    for own in (sent[0::2], sent[1::2]):  # bob's lines, alice's: each in the order said
        assert [text for _id, text in orders[0] if text in own] == own
    # Nobody was cut off: both still speak and hear.
    bob.send({"type": "say", "text": "still here"})
    assert alice.skip_until("message")["text"] == "still here"
    assert bob.skip_until("message")["text"] == "still here"


def test_a_message_sent_while_redis_hangs_past_the_cut_off_is_never_posted(
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    """Every server cuts its clients off while Redis hangs, so a say they were
    never answered is "not sent" to them (the app offers to send it again):
    Redis running it once it wakes would post it behind their backs."""
    one = serve(redis_server.url)
    two = serve(redis_server.url)
    alice = open_client(one, "alice")
    bob = open_client(two, "bob")
    alice.expect("joined", name="bob")
    redis_server.pause()
    try:
        alice.send({"type": "say", "text": "limbo"})  # its pipeline waits in Redis's socket
        for client in (alice, bob):
            frames = client.expect_closed(timeout=10.0)
            assert [frame["type"] for frame in frames] == ["shutdown"], frames
    finally:
        redis_server.resume()
    carol, _ = join_when_available(two.port, "carol", open_client, within=10.0)
    dave, _ = join_when_available(one.port, "dave", open_client, within=10.0)
    dave.send({"type": "say", "text": "marker"})
    assert texts_until(carol, "marker") == []
    carol.send({"type": "history", "limit": 10})
    page = carol.skip_until("history-page")
    assert [m["text"] for m in page["messages"]] == ["marker"]


def test_a_server_cut_off_from_redis_past_the_clean_up_comes_back_as_a_new_one(
    proxy: TcpProxy,
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
) -> None:
    """A partition, the server itself alive: it cuts its clients off at the
    cut-off, the others free their names at the clean-up, and once the
    network is back it joins again as a new server, with no old alice."""
    cut_off = serve(f"redis://127.0.0.1:{proxy.port}/0")
    other = serve(redis_server.url)
    alice = open_client(cut_off, "alice")
    bob = open_client(other, "bob")
    alice.expect("joined", name="bob")
    proxy.block(True)
    try:
        frames = alice.expect_closed(timeout=REAPED_WITHIN)
        assert [frame["type"] for frame in frames] == ["shutdown"], frames
        left = bob.skip_until("left", timeout=REAPED_WITHIN)
        assert (left["name"], left["reason"]) == ("alice", "disconnected")
        refused = open_client(cut_off)
        refused.send({"type": "hello", "name": "zed", "protocol": 1})
        refused.expect_error("room-unavailable", "hello")
        open_client(other, "alice")
    finally:
        proxy.block(False)
    _dave, welcome = join_when_available(cut_off.port, "dave", open_client, within=10.0)
    assert welcome["users"] == ["alice", "bob", "dave"]


def test_a_redis_connection_cut_mid_pipeline_posts_nothing_twice_and_loses_nothing(
    proxy: TcpProxy,
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="server")
    proxied_url = f"redis://127.0.0.1:{proxy.port}/0"
    # A cut-off of 2.5 s: faults this frequent cut the heartbeat's connection
    # too, and with a shorter one the server would (rightly) fence itself.
    proxied = serve(proxied_url, rate_limit=None, redis_heartbeat=0.5)
    direct = serve(redis_server.url, rate_limit=None, redis_heartbeat=0.5)
    names = ("ann", "amy", "abe")
    speakers = [open_client(proxied, name) for name in names]
    watcher = open_client(direct, "walt")
    sent = []
    for i in range(60):
        for speaker, name in zip(speakers, names, strict=True):
            text = f"{name} {i}"
            speaker.send({"type": "say", "text": text})
            sent.append(text)
        # Mostly lost replies (the one that catches a retry without its
        # operation id); now and then a plain cut, both ways at once.
        if i % 6 == 5:
            proxy.cut()
        else:
            proxy.lose_replies()
        time.sleep(0.01)  # spread the sends over the faults
    # Each speaker's own order is kept (and it waits for each answer), so
    # once its marker is in, so is every message of its, retried or not.
    markers = {f"{name} done" for name in names}
    for speaker, name in zip(speakers, names, strict=True):
        speaker.send({"type": "say", "text": f"{name} done"})
    for client in [*speakers, watcher]:
        got = messages_until(client, markers, within=20.0)
        texts = Counter(m["text"] for m in got)
        assert texts == Counter(sent), (texts - Counter(sent), Counter(sent) - texts)
        ids = [m["id"] for m in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert proxy.replies_lost >= 1 and proxy.cuts >= 10
    # The faults did hit the writer in the middle of its pipelines: it sent them again.
    assert any("Redis writer" in record.getMessage() for record in caplog.records)


def test_a_server_stopped_on_purpose_announces_its_users_at_once(
    redis_server: RedisServer,
    serve: Callable[..., ChatServer],
    spawn: Callable[..., ServerProcess],
    open_client: Callable[..., RawClient],
) -> None:
    heartbeat = 2.0  # the clean-up is 20 s: the leaves must come well before it
    leaving = spawn(redis_server.url, "--redis-heartbeat", str(heartbeat))
    staying = serve(redis_server.url, redis_heartbeat=heartbeat)
    bob = open_client(staying, "bob")
    alice = open_client(leaving.port, "alice")
    carol = open_client(leaving.port, "carol")
    bob.expect("joined", name="alice")
    bob.expect("joined", name="carol")

    stopped = time.monotonic()
    leaving.signal(signal.SIGTERM)
    for client in (alice, carol):
        shutdown = client.skip_until("shutdown", timeout=5.0)
        assert shutdown.get("message")
        client.expect_closed(timeout=5.0)
    gone = {}
    while len(gone) < 2:
        left = bob.skip_until("left", timeout=5.0)
        gone[left["name"]] = left["reason"]
    assert time.monotonic() - stopped < 5.0  # the clean-up would take 20 s
    assert gone == {"alice": "disconnected", "carol": "disconnected"}
    assert leaving.proc.wait(10) == 0, leaving.output()
    again = open_client(staying)
    assert again.join("carol")["users"] == ["bob", "carol"]


# -- helpers ------------------------------------------------------------------


def join_when_available(
    port: int, name: str, open_client: Callable[..., RawClient], *, within: float
) -> tuple[RawClient, dict[str, Any]]:
    """Say hello to ``port`` until it is welcome (a server refuses with
    ``room-unavailable`` and closes until it is in the room); the welcome."""
    deadline = time.monotonic() + within
    while True:
        client = open_client(port)
        client.send({"type": "hello", "name": name, "protocol": 1})
        try:
            answer = client.recv(timeout=max(0.1, deadline - time.monotonic()))
        except Closed:
            answer = {"type": "closed"}
        if answer["type"] == "welcome":
            for _ in range(answer["history_count"]):
                client.expect("message", history=True)
            return client, answer
        assert answer.get("code", "room-unavailable") == "room-unavailable", answer
        client.close()
        assert time.monotonic() < deadline, f"{name} not welcome on {port} within {within} s"
        time.sleep(0.05)


def messages_until(client: RawClient, markers: set[str], *, within: float) -> list[dict[str, Any]]:
    """The messages ``client`` gets until it has had one of each text of
    ``markers`` (those left out)."""
    deadline = time.monotonic() + within
    got = []
    waiting = set(markers)
    while waiting:
        frame = client.skip_until("message", timeout=max(0.0, deadline - time.monotonic()))
        if frame["text"] in markers:
            waiting.discard(frame["text"])
        else:
            got.append(frame)
    return got


def texts_until(client: RawClient, marker: str) -> list[str]:
    return [m["text"] for m in messages_until(client, {marker}, within=10.0)]
