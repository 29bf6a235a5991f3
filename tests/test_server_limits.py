"""Per-address limits (PROTOCOL.md, "Operators and moderation") and
``welcome.features`` ("Extensions").

The limiter is tested directly with made-up addresses and times (no
network, no waiting), then on a real server over 127.0.0.1: loopback is
exempt by default, so those servers are given no exemption.
"""

from __future__ import annotations

import ssl
import time

import pytest

from server.__main__ import build_parser, config_from_args
from server.config import LOOPBACK, ServerConfig, TlsMode, features
from server.limits import MAX_TRACKED, AddressLimits, parse_exempt
from server.protocol import ErrorCode
from server.store.bans import address_group
from tests.wire import Closed, RawClient

NO_EXEMPTION: tuple[str, ...] = ()


def limits(**overrides: object) -> AddressLimits:
    settings: dict[str, object] = {"max_open": 2, "rate": 3, "window": 10.0, "block": 60.0}
    settings.update(overrides)
    return AddressLimits(**settings)  # type: ignore[arg-type]


def code(refusal: object) -> str | None:
    return getattr(refusal, "code", None)


# -- the limiter alone -----------------------------------------------------------


def test_open_connections_are_counted_per_group_and_released() -> None:
    lim = limits(rate=100)
    assert lim.admit("10.0.0.1", 0.0) is None
    assert lim.admit("10.0.0.1", 0.0) is None
    assert code(lim.admit("10.0.0.1", 0.0)) == ErrorCode.TOO_MANY_CONNECTIONS
    # The same address seen through a dual-stack socket is the same group.
    assert code(lim.admit("::ffff:10.0.0.1", 0.0)) == ErrorCode.TOO_MANY_CONNECTIONS
    assert lim.admit("10.0.0.2", 0.0) is None  # another address: its own count
    lim.release("10.0.0.1")
    assert lim.open_count("10.0.0.1") == 1
    assert lim.admit("10.0.0.1", 0.0) is None
    for _ in range(5):  # a release too many never goes below nothing
        lim.release("10.0.0.2")
    assert lim.open_count("10.0.0.2") == 0
    assert lim.tracked()[0] == 1


def test_an_ipv6_slash_64_is_one_group_like_bans() -> None:
    lim = limits(max_open=1, rate=100)
    same = ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::1%eth0")
    other = "2001:db8:1:3::1"
    assert {address_group(host) for host in same} == {address_group(same[0])}
    assert address_group(other) != address_group(same[0])
    assert lim.admit(same[0], 0.0) is None
    for host in same[1:]:
        assert code(lim.admit(host, 0.0)) == ErrorCode.TOO_MANY_CONNECTIONS
    assert lim.admit(other, 0.0) is None


def test_more_than_rate_in_the_window_blocks_for_the_block_time() -> None:
    lim = limits(max_open=100, rate=3, window=10.0, block=60.0)
    for t in (0.0, 1.0, 2.0):
        assert lim.admit("10.0.0.1", t) is None
    refusal = lim.admit("10.0.0.1", 3.0)
    assert code(refusal) == ErrorCode.THROTTLED
    assert refusal is not None and refusal.details["retry_after"] == 60
    assert refusal.fatal
    # Blocked: even long after the window, until the block ends.
    late = lim.admit("10.0.0.1", 50.5)
    assert code(late) == ErrorCode.THROTTLED
    assert late is not None and late.details["retry_after"] == 13  # 12.5 s, rounded up
    assert lim.admit("10.0.0.2", 3.0) is None  # nobody else is blocked
    assert lim.admit("10.0.0.1", 63.0) is None


def test_a_sliding_window_lets_one_more_in_as_each_attempt_ages_out() -> None:
    lim = limits(max_open=100, rate=3, window=10.0, block=0.0)
    for t in (0.0, 4.0, 8.0):
        assert lim.admit("10.0.0.1", t) is None
    refusal = lim.admit("10.0.0.1", 9.0)
    # No block of its own: until the oldest attempt leaves the window (at 10).
    assert refusal is not None and refusal.details["retry_after"] == 1
    assert code(lim.admit("10.0.0.1", 9.5)) == ErrorCode.THROTTLED
    assert lim.admit("10.0.0.1", 10.0) is None
    assert code(lim.admit("10.0.0.1", 10.5)) == ErrorCode.THROTTLED


def test_refused_attempts_count_towards_the_rate() -> None:
    lim = limits(max_open=1, rate=3, block=60.0)
    assert lim.admit("10.0.0.1", 0.0) is None
    assert code(lim.admit("10.0.0.1", 0.1)) == ErrorCode.TOO_MANY_CONNECTIONS
    assert code(lim.admit("10.0.0.1", 0.2)) == ErrorCode.TOO_MANY_CONNECTIONS
    assert code(lim.admit("10.0.0.1", 0.3)) == ErrorCode.THROTTLED


def test_the_rate_is_not_enforced_in_the_grace_after_start() -> None:
    lim = limits(max_open=100, rate=3, grace=120.0, started=1000.0)
    for i in range(10):
        assert lim.admit("10.0.0.1", 1000.0 + i / 10) is None
    # Enforced from the grace's end on: the last three attempts are in the window.
    for t in (1115.0, 1116.0, 1117.0):
        assert lim.admit("10.0.0.1", t) is None
    assert code(lim.admit("10.0.0.1", 1119.9)) is None
    assert code(lim.admit("10.0.0.1", 1120.0)) == ErrorCode.THROTTLED


def test_exempt_addresses_skip_every_limit() -> None:
    lim = limits(max_open=1, rate=1, exempt=(*LOOPBACK, "192.168.7.0/24"))
    for host in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "192.168.7.200"):
        assert lim.exempt(host)
        for t in range(5):
            assert lim.admit(host, float(t)) is None
    assert not lim.exempt("192.168.8.1")
    assert not lim.exempt("::2")  # ::1 alone, not its /64
    assert lim.tracked() == (0, 0)
    assert not limits(exempt=NO_EXEMPTION).exempt("127.0.0.1")


def test_a_flood_of_distinct_addresses_stays_bounded() -> None:
    """100,000 distinct addresses (an LRU of recent attempts): the tables stay
    within their bounds, an address that keeps trying stays blocked throughout,
    and every open connection is still counted exactly."""
    lim = limits(max_open=1, rate=3, block=1e9)
    for t in range(4):
        lim.admit("10.255.0.1", float(t))
    assert code(lim.admit("10.255.0.1", 4.0)) == ErrorCode.THROTTLED
    kept_open = []
    for i in range(100_000):
        host = (
            f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
            if i % 2
            else f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"
        )
        if lim.admit(host, 5.0) is not None:
            raise AssertionError(f"{host} was refused")
        if i % 1000:
            lim.release(host)
        else:
            kept_open.append(host)
        if i % 100 == 0:  # the blocked one keeps trying: it stays recent
            assert code(lim.admit("10.255.0.1", 5.0)) == ErrorCode.THROTTLED
        assert lim.tracked()[1] <= MAX_TRACKED
    assert lim.tracked() == (len(kept_open) + 1, MAX_TRACKED)
    for host in kept_open:
        assert code(lim.admit(host, 6.0)) == ErrorCode.TOO_MANY_CONNECTIONS
        lim.release(host)
    assert lim.tracked()[0] == 1  # only 10.255.0.1's first connection
    # One that stopped trying long ago was forgotten: it starts afresh.
    assert lim.admit("2001:db8::1", 7.0) is None


def test_parse_exempt() -> None:
    assert parse_exempt("none") == ()
    assert parse_exempt(" None ") == ()
    assert parse_exempt("10.0.0.0/8, ::1,192.168.1.7") == ("10.0.0.0/8", "::1", "192.168.1.7")
    for bad in ("", " , ", "localhost", "10.0.0.0/33", "none,10.0.0.1"):
        with pytest.raises(ValueError):
            parse_exempt(bad)


def test_the_command_line_sets_the_limits() -> None:
    parse = build_parser().parse_args
    config = config_from_args(parse(["--max-per-ip", "5", "--ip-limit-exempt", "none"]))
    assert (config.max_per_ip, config.ip_limit_exempt) == (5, ())
    config = config_from_args(parse(["--ip-limit-exempt", "10.0.0.0/8,::1"]))
    assert config.ip_limit_exempt == ("10.0.0.0/8", "::1")
    assert config_from_args(parse([])).ip_limit_exempt == LOOPBACK
    assert config_from_args(parse([])).max_per_ip == 32
    for bad in (["--max-per-ip", "0"], ["--ip-limit-exempt", "example.com"]):
        with pytest.raises(SystemExit):
            parse(bad)


# -- on a real server ------------------------------------------------------------


def limited(start_server, **overrides):  # type: ignore[no-untyped-def]
    settings = {"ip_limit_exempt": NO_EXEMPTION, "ip_rate_grace": 0.0, "tls": TlsMode.OFF}
    settings.update(overrides)
    return start_server(**settings)


def wait_until(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_too_many_connections_at_n_plus_one_freed_after_a_close(start_server, open_client) -> None:
    server = limited(start_server, max_per_ip=2)
    first = open_client(server, "first")
    open_client(server)  # counted at accept, before any hello
    refused = open_client(server)
    error = refused.expect_error("too-many-connections")
    assert "in_reply_to" not in error
    assert refused.expect_closed() == []
    refused.close()
    # Once the server has let go of the refused one, the two are still counted.
    wait_until(lambda: sum(len(loop) for loop in server._loops) == 2)
    assert (server.limits.open_count("127.0.0.1"), server.connection_count) == (2, 2)
    first.close()
    wait_until(lambda: server.limits.open_count("127.0.0.1") == 1)
    open_client(server, "again")
    assert server.connection_count == 2


def test_loopback_is_exempt_by_default(start_server, open_client) -> None:
    server = start_server(max_per_ip=1, ip_rate=1, ip_rate_grace=0.0)
    for i in range(4):
        open_client(server, f"local{i}")
    assert server.limits.tracked() == (0, 0)


def test_throttled_with_retry_after_then_recovers_after_the_window(
    start_server, open_client
) -> None:
    server = limited(start_server, ip_rate=3, ip_rate_window=2.0, ip_block=0.0)
    for _ in range(3):
        with RawClient(server.port):
            pass
    refused = open_client(server)
    error = refused.expect_error("throttled")
    assert error["retry_after"] in (1, 2)  # the window's 2 s less the time the four took
    refused.expect_closed()
    deadline = time.monotonic() + 10.0
    while True:  # within the window's 2 s, give or take the machine
        client = open_client(server)
        try:
            client.join("back")
            break
        except (Closed, AssertionError):
            assert time.monotonic() < deadline, "still throttled"
            time.sleep(0.1)


def test_a_block_outlasts_the_window(start_server, open_client) -> None:
    server = limited(start_server, ip_rate=2, ip_block=60.0)
    for _ in range(2):
        open_client(server).close()
    assert open_client(server).expect_error("throttled")["retry_after"] == 60


def test_a_server_full_refusal_frees_the_address_slot(start_server, open_client) -> None:
    server = limited(start_server, max_clients=1, max_per_ip=5)
    open_client(server, "only")
    refused = open_client(server)
    refused.expect_error("server-full")
    refused.expect_closed()
    assert server.limits.open_count("127.0.0.1") == 1


def client_hello() -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    ("limit", "settings"),
    [
        ("too-many-connections", {"max_per_ip": 1}),
        ("throttled", {"ip_rate": 1, "ip_block": 60.0}),
    ],
)
def test_refusals_are_plaintext_before_tls_even_for_a_client_hello(
    start_server, open_client, limit, settings
) -> None:
    server = limited(start_server, tls=TlsMode.AUTO, **settings)
    open_client(server)  # the one connection, or the one attempt, allowed
    refused = open_client(server)
    refused.send_raw(client_hello())
    error = refused.expect_error(limit)
    assert error.get("retry_after") == (60 if limit == "throttled" else None)
    refused.expect_closed()


def test_the_guess_counter_shares_the_exemption(start_server) -> None:
    exempt = start_server()
    # Its own data folder: a folder is one running server's.
    counted = limited(start_server, data_dir=exempt.config.data_path().parent / "counted")
    for server in (exempt, counted):
        for _ in range(20):
            server.room.guesses.charge("127.0.0.1", 0.0)
    assert exempt.room.guesses.retry_after("127.0.0.1", 0.0) is None
    assert counted.room.guesses.retry_after("127.0.0.1", 0.0) is not None


# -- welcome.features ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (TlsMode.AUTO, ["tls", "operators", "history-pages", "search", "files", "discovery"]),
        (TlsMode.REQUIRED, ["tls", "operators", "history-pages", "search", "files", "discovery"]),
    ],
)
def test_features_per_configuration(tls, expected) -> None:
    assert list(features(ServerConfig(tls=tls))) == expected
    plain = ["operators", "history-pages", "search", "files", "discovery"]
    assert list(features(ServerConfig(tls=TlsMode.OFF))) == plain
    no_files = ServerConfig(tls=TlsMode.OFF, files=False, discovery=False)
    assert list(features(no_files)) == plain[:-2]


def test_a_room_password_is_a_feature() -> None:
    config = ServerConfig(tls=TlsMode.REQUIRED, room_password="open sesame")
    expected = ["tls", "password", "operators", "history-pages", "search", "files", "discovery"]
    assert list(features(config)) == expected


@pytest.mark.parametrize("tls", [TlsMode.OFF, TlsMode.AUTO])
def test_the_welcome_lists_the_features(start_server, open_client, tls) -> None:
    server = start_server(tls=tls)
    welcome = open_client(server).join("alice")
    assert welcome["features"] == list(features(server.config))
    assert ("tls" in welcome["features"]) is (tls is not TlsMode.OFF)
