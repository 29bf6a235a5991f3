"""How connections are spread over I/O threads."""

from __future__ import annotations

import threading

import server.chat_server
from tests.wire import RawClient


def _io_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("chat-io-"))


def test_connections_are_spread_over_the_io_threads(start_server) -> None:
    srv = start_server(io_threads=3)
    clients = [RawClient(srv.port) for _ in range(6)]
    try:
        for i, client in enumerate(clients):
            client.join(f"user{i}")
        assert sorted(len(loop) for loop in srv._loops) == [2, 2, 2]
    finally:
        for client in clients:
            client.close()


def test_full_loops_start_more_threads_where_select_limits_them(start_server, monkeypatch) -> None:
    # Windows' select() takes 512 sockets at most; simulate a tiny limit.
    monkeypatch.setattr(server.chat_server, "LOOP_CAPACITY", 3)
    srv = start_server(io_threads=1)
    clients = [RawClient(srv.port) for _ in range(7)]
    try:
        for i, client in enumerate(clients):
            client.join(f"user{i}")
        assert _io_threads() == ["chat-io-0", "chat-io-1", "chat-io-2"]
        assert sorted(len(loop) for loop in srv._loops) == [1, 3, 3]
        clients[0].send({"type": "say", "text": "to every thread"})
        for client in clients:
            client.skip_until("message")
    finally:
        for client in clients:
            client.close()
