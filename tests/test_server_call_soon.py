"""Other threads ask a running I/O loop to run callables on its own thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

import server.io_loop as io_loop_module
from server.chat_server import ChatServer
from tests.wire import RawClient

StartServer = Callable[..., ChatServer]


def test_callbacks_run_on_the_loop_s_thread_in_order(start_server: StartServer) -> None:
    srv = start_server()
    (loop,) = srv._loops
    ran: list[tuple[int, str]] = []
    done = threading.Event()
    for n in range(100):
        loop.call_soon(lambda n=n: ran.append((n, threading.current_thread().name)))
    loop.call_soon(done.set)
    assert done.wait(5)
    assert ran == [(n, loop.thread.name) for n in range(100)]


def test_a_call_wakes_an_idle_loop(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle loop sleeps until its next timer tick: made long here, so only
    # the wake-up can run the callback in time.
    monkeypatch.setattr(io_loop_module, "TIMER_TICK", 30.0)
    srv = start_server()
    done = threading.Event()
    threading.Timer(0.2, srv._loops[0].call_soon, args=(done.set,)).start()
    assert done.wait(5)


def test_a_callback_that_asks_again_runs_on_a_later_pass(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_loop_module, "TIMER_TICK", 30.0)  # so the loop must not sleep
    srv = start_server()
    (loop,) = srv._loops
    done = threading.Event()
    rounds: list[int] = []

    def again() -> None:
        rounds.append(len(rounds))
        if len(rounds) < 3:
            loop.call_soon(again)  # from the loop's own thread
        else:
            done.set()

    loop.call_soon(again)
    assert done.wait(5)
    assert rounds == [0, 1, 2]


def test_a_failing_callback_is_logged_and_the_loop_serves_on(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    srv = start_server()
    (loop,) = srv._loops
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("injected")

    with caplog.at_level(logging.ERROR, logger="server"):
        loop.call_soon(broken)
        loop.call_soon(done.set)
        assert done.wait(5)
    failed = [r for r in caplog.records if "a callback failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert loop.thread.is_alive()
    with RawClient(srv.port) as alice:
        alice.join("alice")
        alice.send({"type": "say", "text": "still served"})
        alice.expect("message", text="still served")


def test_a_callback_may_act_on_the_room_and_its_connections(start_server: StartServer) -> None:
    srv = start_server()
    (loop,) = srv._loops
    with RawClient(srv.port) as alice, RawClient(srv.port) as bob:
        alice.join("alice")
        bob.join("bob")
        alice.expect("joined", name="bob")

        def kick_bob() -> None:  # what an operator's console will do
            for conn in list(loop._connections):
                if conn.name == "bob":
                    conn.session.close(None)

        loop.call_soon(kick_bob)
        assert alice.skip_until("left", timeout=5)["name"] == "bob"
        bob.expect_closed(timeout=5)
