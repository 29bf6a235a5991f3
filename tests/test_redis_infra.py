"""The Redis backplane's test tools work, and can fail: tests/redis_server.py
(a real redis-server) and tests/tcp_proxy.py (a connection broken on cue)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.redis_server import RedisServer, RedisServerError
from tests.tcp_proxy import TcpProxy


def no_retry_client(port: int, **options: object) -> redis.Redis:
    """A client that reports the first failure instead of retrying it."""
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 5.0)
    options.setdefault("decode_responses", True)
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        retry=Retry(NoBackoff(), 0),
        **options,  # type: ignore[arg-type]
    )


def raw_connection(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5.0)


# --- RedisServer ---------------------------------------------------------------


def test_redis_starts_and_answers(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == "v"
        # The defaults: nothing persisted, DEBUG allowed from loopback.
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("enable-debug-command") == {"enable-debug-command": "local"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("dir")["dir"] == str(redis_server.data_dir)
    finally:
        client.close()


def test_restart_keeps_the_data_only_with_appendonly_and_keep_data(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "aof", appendonly=True) as durable:
        client = durable.client()
        port = durable.port
        client.set("k", "v")
        durable.restart(keep_data=True)
        assert durable.port == port
        assert client.get("k") == "v"  # the same client finds it on the same port
        durable.restart(keep_data=False)
        assert client.get("k") is None

    # Without appendonly a kept restart keeps nothing: what survived above
    # survived because of the AOF.
    with RedisServer(tmp_path / "plain") as plain:
        client = plain.client()
        client.set("k", "v")
        plain.restart(keep_data=True)
        assert client.get("k") is None


def test_a_kill_with_appendonly_keeps_every_answered_write(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "aof", appendonly=True) as durable:
        client = durable.client()
        for i in range(50):
            client.set(f"k{i}", i)
        durable.kill()
        assert not durable.running()
        durable.start()
        assert client.mget([f"k{i}" for i in range(50)]) == [str(i) for i in range(50)]


def test_pause_makes_a_client_time_out_and_resume_recovers(redis_server: RedisServer) -> None:
    client = redis_server.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    assert client.ping()
    redis_server.pause()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    redis_server.resume()
    assert client.ping()


def test_stop_reaps_the_process_even_when_paused(redis_server: RedisServer) -> None:
    pid = redis_server.pid
    assert pid is not None
    redis_server.pause()  # a hung server is resumed for its SHUTDOWN, or killed
    redis_server.stop(timeout=0.5)
    assert not redis_server.running()
    assert redis_server.pid is None
    with pytest.raises(ProcessLookupError):  # reaped: not even a zombie is left
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        raw_connection(redis_server.port).close()
    redis_server.stop()  # a second stop is nothing


def test_a_missing_redis_server_is_an_error_that_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisServerError, match="apt-get install redis-server"):
        RedisServer(tmp_path / "redis")


def test_a_failed_start_reports_the_log(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = RedisServer(tmp_path / "redis", port=taken.getsockname()[1])
        with pytest.raises(RedisServerError, match=r"(?i)address already in use"):
            server.start()
        assert not server.running()


def test_a_start_that_does_not_answer_in_time_is_an_error_and_kills_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    # No redis-server answers before it has been asked once: a bound of 0 s
    # runs out at the first failed PING.
    with pytest.raises(RedisServerError, match=r"did not answer PING .*within 0 s"):
        server.start(timeout=0)
    assert not server.running()
    assert server.pid is None
    with pytest.raises(ConnectionRefusedError):
        raw_connection(server.port).close()


# --- TcpProxy ------------------------------------------------------------------


def test_the_proxy_forwards_redis_both_ways(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy:
        client = no_retry_client(proxy.port)
        try:
            assert client.ping()
            big = "x" * (3 * 1024 * 1024)  # well over the proxy's buffers
            client.set("big", big)
            assert client.get("big") == big
            assert proxy.connections == 1
        finally:
            client.close()
    assert redis_server.client().strlen("big") == len(big)


def test_cut_breaks_a_live_connection(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy:
        client = no_retry_client(proxy.port, single_connection_client=True)
        pooled = no_retry_client(proxy.port)
        try:
            assert client.ping()
            assert pooled.ping()
            assert proxy.connections == 2
            proxy.cut()
            with pytest.raises(redis.ConnectionError):
                client.ping()
            # A pooled client checks an idle connection before using it and
            # reconnects without a word: the cut shows only as a new connection.
            assert pooled.ping()
            assert proxy.cuts == 2
            assert proxy.connections == 3
            assert client.ping()  # new connections are still accepted
            assert proxy.connections == 4
        finally:
            client.close()
            pooled.close()


def test_lose_replies_loses_the_reply_of_a_command_that_ran(
    redis_server: RedisServer,
) -> None:
    direct = redis_server.client()
    with TcpProxy(redis_server.port) as proxy:
        client = no_retry_client(proxy.port)
        try:
            assert client.ping()
            proxy.lose_replies()
            with pytest.raises(redis.ConnectionError):
                client.set("k", "v")
            assert direct.get("k") == "v"  # it ran; only its answer was lost
            assert proxy.replies_lost == 1
            assert client.set("k", "w")  # one shot: the next reply comes through
            assert direct.get("k") == "w"
        finally:
            client.close()


def test_block_refuses_and_unblock_recovers(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.port) as proxy:
        client = no_retry_client(proxy.port)
        try:
            assert client.ping()
            proxy.block(True)
            with pytest.raises(redis.ConnectionError):
                client.ping()
            with pytest.raises(redis.ConnectionError):
                client.ping()
            assert proxy.refused >= 1
            assert redis_server.client().ping()  # only the path is down
            proxy.block(False)
            assert client.ping()
        finally:
            client.close()


def test_pause_holds_the_bytes_and_resume_delivers_them(redis_server: RedisServer) -> None:
    direct = redis_server.client()
    with TcpProxy(redis_server.port) as proxy, raw_connection(proxy.port) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(100) == b"+PONG\r\n"
        proxy.pause()
        raw.sendall(b"SET k v\r\n")
        raw.settimeout(0.3)
        with pytest.raises(TimeoutError):
            raw.recv(100)
        assert direct.get("k") is None  # it never reached Redis
        proxy.resume()
        raw.settimeout(5.0)
        assert raw.recv(100) == b"+OK\r\n"
        assert direct.get("k") == "v"


def test_close_ends_every_connection_and_the_listener(redis_server: RedisServer) -> None:
    proxy = TcpProxy(redis_server.port).start()
    try:
        raw = raw_connection(proxy.port)
        raw.sendall(b"PING\r\n")
        assert raw.recv(100) == b"+PONG\r\n"
    finally:
        proxy.close()
    try:
        with pytest.raises(ConnectionResetError):
            raw.recv(100)
        with pytest.raises(ConnectionRefusedError):
            raw_connection(proxy.port).close()
        with pytest.raises(RuntimeError, match="not running"):
            proxy.cut()
    finally:
        raw.close()
