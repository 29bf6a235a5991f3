"""The server's history on disk, as people live with it: restarts, kill -9, a second server,
a folder it cannot write to, a disk that fills up, retention, ``--no-store``.

The in-process tests start a real ``ChatServer`` on a temporary data folder
and stop it as a person would; the others run ``python -m server`` as a
child process, so that it can be killed with SIGKILL or given a file-size
limit. Clients are ``tests.wire``'s independent ones.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.chat_server import ChatServer
from server.config import HISTORY_FILE, ServerConfig, TlsMode
from tests import trust_helpers
from tests.test_cli import ServerProcess
from tests.wire import Closed, RawClient

Run = Callable[..., ServerProcess]


@contextlib.contextmanager
def serving(data_dir: Path, **overrides: Any) -> Iterator[ChatServer]:
    """A real server on a free port and ``data_dir``, stopped (gracefully) on leaving."""
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir, **overrides)
    server = ChatServer(config)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-serve")
    thread.start()
    trust_helpers.serving(server)
    try:
        yield server
    finally:
        trust_helpers.stopped(server)
        server.shutdown()
        thread.join(5.0)
        server.server_close()


def join(port: int, name: str) -> tuple[RawClient, dict[str, Any]]:
    client = RawClient(port)
    client.send({"type": "hello", "name": name, "protocol": 1})
    welcome = client.skip_until("welcome")
    return client, welcome


def say_all(client: RawClient, texts: list[str]) -> list[int]:
    ids = []
    for text in texts:
        client.send({"type": "say", "text": text})
        ids.append(client.skip_until("message")["id"])
    return ids


def every_page(client: RawClient, limit: int = 200, pages: int = 1000) -> list[dict[str, Any]]:
    """Every public message the server holds, oldest first, paged back (bounded)."""
    found: list[dict[str, Any]] = []
    before = None
    for _ in range(pages):
        frame: dict[str, Any] = {"type": "history", "limit": limit}
        if before is not None:
            frame["before"] = before
        client.send(frame)
        page = client.skip_until("history-page")
        found[:0] = page["messages"]
        if not page["more"]:
            return found
        before = page["messages"][0]["id"]
    raise AssertionError("the pages never ended")


def test_a_restart_remembers_the_room_and_ids_go_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, rate_limit=None) as server:
        alice, _ = join(server.port, "alice")
        with alice:
            first = say_all(alice, ["before the restart", "pizza on friday"])
            alice.send({"type": "say", "text": "a private word", "to": "alice"})
            private = alice.skip_until("message")["id"]
    assert (data / HISTORY_FILE).exists()
    with serving(data, rate_limit=None) as server:
        bob, welcome = join(server.port, "bob")
        with bob:
            assert welcome["history_count"] == 2
            replay = [bob.recv() for _ in range(2)]
            assert [m["text"] for m in replay] == ["before the restart", "pizza on friday"]
            assert [m["id"] for m in replay] == first
            (later,) = say_all(bob, ["after the restart"])
            assert later > max(*first, private)  # private ids are not given again either
            assert [m["id"] for m in every_page(bob)] == [*first, later]
            bob.send({"type": "search", "query": "PIZZA"})
            assert [m["id"] for m in bob.skip_until("search-results")["messages"]] == [first[1]]


def test_no_store_keeps_nothing_on_disk_and_ids_start_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for _ in range(2):
        with serving(data, store=False) as server:
            alice, welcome = join(server.port, "alice")
            with alice:
                assert welcome["history_count"] == 0
                assert say_all(alice, ["hello"]) == [1]
                assert "history-pages" in welcome["features"]  # over what memory holds
                assert [m["text"] for m in every_page(alice)] == ["hello"]
    assert not (data / HISTORY_FILE).exists()


def test_the_welcome_replays_the_newest_of_a_long_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, rate_limit=None, history=5) as server:
        alice, _ = join(server.port, "alice")
        with alice:
            ids = say_all(alice, [f"m{n}" for n in range(30)])
    with serving(data, history=5) as server:
        bob, welcome = join(server.port, "bob")
        with bob:
            assert welcome["history_count"] == 5
            assert [bob.recv()["id"] for _ in range(5)] == ids[-5:]
            assert [m["id"] for m in every_page(bob, limit=7)] == ids  # the rest is on disk


def test_retention_by_count_applies_in_the_background(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, rate_limit=None) as server:
        alice, _ = join(server.port, "alice")
        with alice:
            ids = say_all(alice, [f"m{n}" for n in range(40)])
    with serving(data, keep_messages=10) as server:
        bob, _ = join(server.port, "bob")
        with bob:
            deadline = time.monotonic() + 10
            while True:
                kept = [m["id"] for m in every_page(bob)]
                if kept == ids[-10:] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert kept == ids[-10:]


# -- child processes ------------------------------------------------------------


@pytest.fixture
def run_server() -> Iterator[Run]:
    """Start ``python -m server`` children; each is killed after the test if still running."""
    started: list[ServerProcess] = []

    def run(*args: str, preexec_fn: Callable[[], None] | None = None) -> ServerProcess:
        process = ServerProcess(*args, preexec_fn=preexec_fn)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


def server_args(data: Path, *more: str) -> list[str]:
    return [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--tls",
        "off",
        "--no-rate-limit",
        "--data-dir",
        str(data),
        *more,
    ]


def test_messages_echoed_before_a_kill_9_are_all_there_after_the_restart(
    run_server: Run, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    process = run_server(*server_args(data))
    port = process.wait_for_port()
    echoed: dict[int, str] = {}
    sender = RawClient(port)
    with sender:
        sender.send({"type": "hello", "name": "alice", "protocol": 1})
        sender.skip_until("welcome")
        # Long texts of many words (slow to index) and 200 in flight, so that
        # batches are big and the kill lands while one is being written.
        words = " ".join(f"w{n}x{n * 7919 % 10007}" for n in range(300))
        sent = 0
        # 75 to 150 unread, 450 kB at most: under the slow-reader bound, and
        # under the room's own bound for what it holds back (three quarters of it).
        for count in (150, *[75] * 14):
            for _ in range(count):
                sender.send({"type": "say", "text": f"message {sent} {words}"})
                sent += 1
            for _ in range(75):
                echo = sender.skip_until("message")
                echoed[echo["id"]] = echo["text"]
        process.proc.send_signal(signal.SIGKILL)
        process.proc.wait(10)
        with contextlib.suppress(Closed, TimeoutError, OSError):
            while True:  # what was on its way before the kill
                echo = sender.skip_until("message", timeout=1)
                echoed[echo["id"]] = echo["text"]
    assert len(echoed) >= 1000
    again = run_server(*server_args(data))
    client, _ = join(again.wait_for_port(), "bob")
    with client:
        kept = {m["id"]: m["text"] for m in every_page(client)}
    missing = sorted(set(echoed) - set(kept))
    assert not missing, f"{len(missing)} echoed messages lost, from id {missing[0]}"
    assert all(kept[i] == text for i, text in echoed.items())
    assert sorted(kept) == list(kept)  # in id order, no duplicates


def test_a_second_server_on_the_same_folder_is_refused(run_server: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = run_server(*server_args(data))
    first.wait_for_port()
    second = run_server(*server_args(data))
    status = second.finish(timeout=20)
    assert status == 1
    assert "already using the data folder" in second.stderr
    assert str(data) in second.stderr
    assert "Traceback" not in second.stderr
    assert first.proc.poll() is None  # the first one goes on


def _no_file_writes() -> None:
    # Root may write to a read-only folder; nobody can write past this limit.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_a_folder_it_cannot_write_keeps_the_room_in_memory(run_server: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        process = run_server(*server_args(data), preexec_fn=_no_file_writes)
        port = process.wait_for_port()
        alice, _ = join(port, "alice")
        with alice:
            assert say_all(alice, ["still works"]) == [1]
            assert [m["text"] for m in every_page(alice)] == ["still works"]
        process.proc.send_signal(signal.SIGINT)
        assert process.finish(timeout=10) == 0
    finally:
        data.chmod(0o755)
    assert "history" in process.stderr.lower()
    assert "memory" in process.stderr
    assert "Traceback" not in process.stderr


def _small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_a_disk_that_fills_up_is_said_and_the_room_goes_on(run_server: Run, tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = run_server(*server_args(data), preexec_fn=_small_files)
    port = process.wait_for_port()
    alice, _ = join(port, "alice")
    bob, _ = join(port, "bob")
    with alice, bob:
        text = "x" * 3000
        notice = None
        ids: list[int] = []
        for _ in range(400):  # 1.2 MB of text, far past what the files may hold
            alice.send({"type": "say", "text": text})
            while True:
                frame = alice.recv()
                if frame["type"] == "notice":
                    notice = frame
                elif frame["type"] == "message":
                    ids.append(frame["id"])
                    break
        assert ids == sorted(ids) and len(ids) == 400
        while notice is None:
            frame = alice.recv()
            notice = frame if frame["type"] == "notice" else None
        assert "memory" in notice["text"]
        # The newest are still found, from memory.
        bob.send({"type": "history", "limit": 5})
        page = bob.skip_until("history-page")
        assert [m["id"] for m in page["messages"]] == ids[-5:]
    process.proc.send_signal(signal.SIGINT)
    assert process.finish(timeout=10) == 0
    assert "Traceback" not in process.stderr


def test_a_damaged_database_is_left_alone_and_the_room_runs_in_memory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / HISTORY_FILE).write_bytes(b"this is not a database" * 100)
    with serving(data, tls=TlsMode.OFF) as server:
        alice, _ = join(server.port, "alice")
        with alice:
            assert say_all(alice, ["kept in memory"]) == [1]
    # The damaged file is left as it was, for its owner to look at.
    assert (data / HISTORY_FILE).read_bytes() == b"this is not a database" * 100
