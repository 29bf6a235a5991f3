"""The client's search for servers (app/discovery.py), without Tk: the browser
against tiny UDP responders on 127.0.0.1 and against real servers, and where
it asks by default (with the networks given, never this computer's).

Every datagram here goes to 127.0.0.1: the targets are injected.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from app import discovery
from app.discovery import (
    LIMITED_BROADCAST,
    MAX_NETWORKS,
    MAX_SERVERS,
    Browser,
    Found,
    FoundServer,
    SearchDone,
    Target,
    broadcast_addresses,
    default_targets,
    local_networks,
)
from server.chat_server import ChatServer
from server.config import TlsMode
from server.protocol import QUERY_SIZE, Announcement, encode_reply, parse_query
from server.protocol.discovery import MAX_DATAGRAM
from tests.wire import RawClient

HOST = "127.0.0.1"
WAIT = 5.0
FINGERPRINT = "sha256:" + "ab" * 32

Replies = Callable[[bytes], Sequence[bytes]]


def announcement(port: int, **fields: object) -> Announcement:
    values: dict[str, object] = {
        "room": "Chat on studio-pc",
        "port": port,
        "users": 3,
        "tls": "auto",
        "password": False,
        "version": "0.2.0",
        "fingerprint": None,
    }
    values.update(fields)
    return Announcement(**values)  # type: ignore[arg-type]


def answer(found: Announcement) -> Replies:
    """Replies as a server's: one reply, no longer than the query, to a query."""

    def replies(query: bytes) -> list[bytes]:
        if not parse_query(query):
            return []
        reply = encode_reply(found, len(query))
        return [reply] if reply is not None else []

    return replies


class Responder:
    """A tiny discovery responder on 127.0.0.1 (on ``port``, or a free one):
    each datagram it gets is kept in ``queries`` and answered with ``replies(it)``."""

    def __init__(self, replies: Replies | None = None, port: int = 0) -> None:
        self.replies = replies or (lambda _query: [])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, port))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.queries: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-responder")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query, sender = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.queries.append(query)
            for reply in self.replies(query):
                self.sock.sendto(reply, sender)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[Callable[..., Responder]]:
    """Start responders; all closed after the test."""
    running: list[Responder] = []

    def start(replies: Replies | None = None, port: int = 0) -> Responder:
        running.append(Responder(replies, port))
        return running[-1]

    yield start
    for one in running:
        one.close()


@pytest.fixture
def browse() -> Iterator[Callable[..., Browser]]:
    """Make browsers; all closed after the test."""
    made: list[Browser] = []

    def make(
        targets: Sequence[Target] | Callable[[], Sequence[Target]], **options: float
    ) -> Browser:
        made.append(Browser(targets if callable(targets) else lambda: targets, **options))
        return made[-1]

    yield make
    for browser in made:
        browser.close()


def run_search(browser: Browser, timeout: float = WAIT) -> tuple[list[FoundServer], SearchDone]:
    """One search, to its end: the servers found (in order) and how it ended."""
    number = browser.search()
    assert number is not None
    found: list[FoundServer] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = browser.events.get(timeout=0.1)
        except Exception:  # queue.Empty
            continue
        assert event.search == number
        if isinstance(event, Found):
            found.append(event.server)
        else:
            assert isinstance(event, SearchDone)
            return found, event
    raise AssertionError(f"the search did not end within {timeout} s")


# -- the search -------------------------------------------------------------------


def test_a_search_finds_a_server_and_says_where_it_answered_from(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    server = responder()
    server.replies = answer(announcement(server.port, users=7, fingerprint=FINGERPRINT))
    found, done = run_search(browse([(HOST, server.port)]))
    assert [(f.host, f.port) for f in found] == [(HOST, server.port)]
    assert found[0].announcement == announcement(server.port, users=7, fingerprint=FINGERPRINT)
    assert (done.found, done.asked, done.problem) == (1, 1, "")
    # The query is the protocol's: padded to 1,024 bytes; asked twice (once
    # more in case the first was lost), the same server listed once.
    assert [len(q) for q in server.queries] == [QUERY_SIZE, QUERY_SIZE]
    assert all(parse_query(q) for q in server.queries)


def test_two_servers_are_both_found_and_a_second_search_finds_them_again(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    one, two = responder(), responder()
    one.replies = answer(announcement(one.port, room="One", fingerprint=FINGERPRINT))
    two.replies = answer(announcement(two.port, room="Two", tls="off", password=True))
    browser = browse([(HOST, one.port), (HOST, two.port)])
    for _ in range(2):
        found, done = run_search(browser)
        assert sorted(f.announcement.room for f in found) == ["One", "Two"]
        assert done.found == 2 and done.asked == 2
    rows = {f.announcement.room: f for f in found}
    assert rows["Two"].announcement.password and rows["Two"].announcement.tls == "off"


def test_a_server_answering_twice_or_from_two_addresses_is_listed_once(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    """By fingerprint (a server on two networks answers from two addresses),
    else by address and port."""
    same = announcement(1000, fingerprint=FINGERPRINT)
    first = responder(lambda q: [encode_reply(same, len(q))] * 3)
    second = responder(lambda q: [encode_reply(same, len(q))])
    no_identity = responder()
    no_identity.replies = lambda q: [encode_reply(announcement(no_identity.port), len(q))] * 3
    other = responder()
    other.replies = lambda q: [encode_reply(announcement(other.port), len(q))]
    targets = [(HOST, r.port) for r in (first, second, no_identity, other)]
    found, done = run_search(browse(targets))
    assert len(found) == 3 == done.found
    assert [f.announcement.fingerprint for f in found].count(FINGERPRINT) == 1
    assert sorted(f.port for f in found if f.announcement.fingerprint is None) == sorted(
        [no_identity.port, other.port]
    )


HOSTILE = [
    b"",
    b"not json",
    b"[1, 2, 3]",
    b'{"type": "discover", "protocol": 1, "pad": ""}',
    json.dumps({**announcement(80).to_wire(), "port": 0}).encode(),
    json.dumps({**announcement(80).to_wire(), "port": "80"}).encode(),
    json.dumps({**announcement(80).to_wire(), "users": -1}).encode(),
    json.dumps({**announcement(80).to_wire(), "tls": "maybe"}).encode(),
    json.dumps({**announcement(80).to_wire(), "password": "no"}).encode(),
    json.dumps({**announcement(80).to_wire(), "fingerprint": "sha256:xyz"}).encode(),
    b"[" * 1020 + b"]" * 1020,  # deep nesting, within MAX_DATAGRAM
]


def test_hostile_replies_are_dropped_and_a_good_one_still_gets_through(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    shown = announcement(4242, room="Evil\u202e\x1b[31m\n room", fingerprint=FINGERPRINT)
    good = json.dumps(shown.to_wire()).encode()
    hostile = responder(lambda _q: [*HOSTILE, good])
    found, done = run_search(browse([(HOST, hostile.port)]))
    assert done.found == 1
    (server,) = found
    assert server.port == 4242  # the port it announced (the TCP port), not the UDP sender's
    assert server.announcement.room == "Evil[31m room"  # one line, no controls or overrides


def test_an_oversized_reply_is_dropped(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    big = json.dumps({**announcement(80).to_wire(), "pad": " " * MAX_DATAGRAM}).encode()
    assert MAX_DATAGRAM < len(big) < 60_000
    server = responder(lambda _q: [big])
    found, done = run_search(browse([(HOST, server.port)]))
    assert found == [] and done.found == 0 and done.asked == 1


def test_at_most_max_servers_are_kept_and_the_queue_never_overflows(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    def many(query: bytes) -> list[bytes]:
        return [
            encode_reply(announcement(1000 + n, fingerprint=f"sha256:{n:064x}"), len(query))
            for n in range(MAX_SERVERS + 40)
        ]

    server = responder(many)
    browser = browse([(HOST, server.port)])
    assert browser.events.maxsize == MAX_SERVERS + 1
    found, done = run_search(browser)
    assert len(found) == MAX_SERVERS == done.found


def test_a_flood_is_read_only_so_far(
    responder: Callable[..., Responder],
    browse: Callable[..., Browser],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_READS datagrams a search reads nothing more (a junk flood
    costs a bounded amount of work), and ends."""
    monkeypatch.setattr(discovery, "MAX_READS", 20)
    late = announcement(5000, fingerprint=FINGERPRINT)
    server = responder(lambda q: [b"junk"] * 40 + [encode_reply(late, len(q))])
    found, done = run_search(browse([(HOST, server.port)], listen=3.0), timeout=2.5)
    assert found == [] and done.found == 0


def test_a_reset_reported_by_a_read_is_not_the_end_of_the_search(
    responder: Callable[..., Responder],
    browse: Callable[..., Browser],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Windows reports an ICMP "port unreachable" for an earlier datagram as
    ConnectionResetError on a later recvfrom of the same socket."""
    server = responder()
    server.replies = answer(announcement(server.port))
    resets: list[int] = []

    class Resetting(socket.socket):
        def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, object]:
            if not resets:
                resets.append(size)
                raise ConnectionResetError(10054, "An existing connection was forcibly closed")
            return super().recvfrom(size, flags)

    monkeypatch.setattr(discovery.socket, "socket", Resetting)
    found, done = run_search(browse([(HOST, server.port)]))
    assert resets == [MAX_DATAGRAM + 1]  # it raised once, on the first read
    assert [f.port for f in found] == [server.port] and done.found == 1


def test_a_target_that_cannot_be_asked_leaves_the_others(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    server = responder()
    server.replies = answer(announcement(server.port))
    found, done = run_search(browse([(HOST, 0), (HOST, server.port)]))
    assert done.asked == 1 and done.found == 1 and len(found) == 1


def test_when_nothing_can_be_asked_the_end_says_why(browse: Callable[..., Browser]) -> None:
    found, done = run_search(browse([(HOST, 0)]))
    assert found == [] and done.asked == 0 and f"{HOST}:0" in done.problem

    def cannot() -> list[Target]:
        raise OSError("no networks here")

    found, done = run_search(browse(cannot))
    assert found == [] and done.asked == 0 and done.problem == "no networks here"
    found, done = run_search(browse([]))
    assert (found, done.asked, done.problem) == ([], 0, "")


def test_nothing_answering_ends_the_search_after_about_a_second(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    silent = responder()
    browser = browse([(HOST, silent.port)])
    found, done = run_search(browser)
    assert found == [] and done.asked == 1 and done.found == 0
    assert len(silent.queries) == 2


def test_one_search_at_a_time_and_close_stops_one_under_way(
    responder: Callable[..., Responder], browse: Callable[..., Browser]
) -> None:
    silent = responder()
    browser = browse([(HOST, silent.port)], listen=60.0)
    assert browser.search() == 1
    assert browser.searching
    assert browser.search() is None  # the first one still runs
    browser.close()  # within a tick; the no_leaks fixture checks the thread is gone
    assert not browser.searching
    assert browser.search() is None  # closed: no more searches


# -- against real servers -----------------------------------------------------------


def test_two_real_servers_are_found_with_what_they_announce(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    browse: Callable[..., Browser],
    tmp_path: Path,
) -> None:
    plain = start_server(room_name="Plain room", tls=TlsMode.OFF)
    locked = start_server(room_name="Locked room", room_password="sesame", data_dir=tmp_path / "2")
    open_client(plain, "bob")
    open_client(plain, "carol")
    found, done = run_search(browse([(HOST, plain.port), (HOST, locked.port)]))
    assert done.found == 2 and done.asked == 2
    by_room = {f.announcement.room: f for f in found}
    first, second = by_room["Plain room"], by_room["Locked room"]
    assert (first.host, first.port) == (HOST, plain.port)
    assert (first.announcement.users, first.announcement.tls) == (2, "off")
    assert not first.announcement.password and first.announcement.fingerprint is None
    assert (second.host, second.port) == (HOST, locked.port)
    assert second.announcement.password and second.announcement.tls == "required"
    assert locked.identity is not None
    assert second.announcement.fingerprint == locked.identity.fingerprint


def test_a_server_without_discovery_is_not_found(
    start_server: Callable[..., ChatServer], browse: Callable[..., Browser], tmp_path: Path
) -> None:
    hidden = start_server(discovery=False)
    shown = start_server(room_name="Shown", data_dir=tmp_path / "2")
    found, done = run_search(browse([(HOST, hidden.port), (HOST, shown.port)]))
    assert [f.port for f in found] == [shown.port] and done.asked == 2


# A real server and the browser with its default targets, in a network
# namespace of the test's own: two addresses on one veth pair, so the
# query goes to that network's real broadcast address (and nowhere else).
NAMESPACE_SETUP = (
    "ip link set lo up && ip link add v0 type veth peer name v1"
    " && ip addr add 10.99.0.1/24 brd + dev v0 && ip addr add 10.99.0.2/24 brd + dev v1"
    " && ip link set v0 up && ip link set v1 up"
)
IN_NAMESPACE = """
import json, sys, tempfile, threading
from pathlib import Path
from app.discovery import Browser, Found, default_targets
from server.chat_server import ChatServer
from server.config import ServerConfig

with tempfile.TemporaryDirectory() as folder:
    config = ServerConfig(host="", port=0, data_dir=Path(folder), room_name="Namespaced")
    server = ChatServer(config)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        targets = default_targets([server.port])
        browser = Browser(lambda: targets)
        browser.search()
        found = []
        while isinstance(event := browser.events.get(timeout=5), Found):
            found.append([event.server.host, event.server.port, event.server.announcement.room])
        browser.close()
        print(json.dumps({"port": server.port, "targets": targets, "found": found}))
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
"""


def test_a_server_is_found_through_a_real_broadcast_address_in_a_namespace_of_its_own() -> None:
    """The default targets (this namespace's networks, listed by ifaddr) and a
    directed broadcast with SO_BROADCAST, answered by a real server bound to
    every interface."""
    # No skip: CI counts one as a failure, and this machine (where CI runs) can
    # make one; .ci/run installs iproute2 for `ip` where it is missing.
    made = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    assert made.returncode == 0, f"cannot make a network namespace: {made.stderr}"
    root = Path(__file__).resolve().parent.parent
    python = [sys.executable, "-c", IN_NAMESPACE]
    result = subprocess.run(
        ["unshare", "-rn", "sh", "-c", NAMESPACE_SETUP + ' && exec "$@"', "sh", *python],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    port = seen["port"]
    assert seen["targets"] == [["10.99.0.255", port]]  # loopback is not asked
    assert seen["found"] == [["10.99.0.1", port, "Namespaced"]]  # once, though on two addresses


# -- where to ask ---------------------------------------------------------------------


def interfaces(*texts: str) -> list[ipaddress.IPv4Interface]:
    return [ipaddress.IPv4Interface(text) for text in texts]


def test_each_network_is_asked_on_its_broadcast_address_but_those_with_nobody_on_them() -> None:
    networks = interfaces(
        "192.168.1.20/24",
        "10.1.2.3/8",
        "127.0.0.1/8",  # loopback
        "169.254.7.8/16",  # link-local: no DHCP answered
        "10.8.0.2/32",  # a VPN's point-to-point link
        "100.64.0.1/31",  # point-to-point (RFC 3021): no broadcast
        "192.168.1.21/24",  # a second address on the same network
    )
    assert broadcast_addresses(networks) == ["192.168.1.255", "10.255.255.255"]
    many = interfaces(*(f"10.{n}.0.1/16" for n in range(MAX_NETWORKS + 5)))
    assert len(broadcast_addresses(many)) == MAX_NETWORKS


def test_the_default_targets_are_each_network_on_the_default_and_recent_ports() -> None:
    def networks() -> list[ipaddress.IPv4Interface]:
        return interfaces("192.168.1.20/24", "172.17.0.1/16")

    targets = default_targets([12345, 5000, 12345, 0, 70000], networks)
    assert targets == [
        ("192.168.1.255", 12345),
        ("192.168.1.255", 5000),
        ("172.17.255.255", 12345),
        ("172.17.255.255", 5000),
    ]

    def unlisted() -> list[ipaddress.IPv4Interface]:
        raise OSError("cannot list the network interfaces")

    assert default_targets([12345], unlisted) == [(LIMITED_BROADCAST, 12345)]


def test_this_computers_networks_are_listed_with_their_netmasks() -> None:
    """The real list (read, nothing sent): loopback, at least, with its /8."""
    listed = local_networks()
    assert all(isinstance(n, ipaddress.IPv4Interface) for n in listed)
    assert ipaddress.IPv4Interface("127.0.0.1/8") in listed


def test_without_a_way_to_list_the_networks_the_limited_broadcast_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ifaddr missing (a bundle built without it) or failing is "cannot list",
    an OSError, never a search thread dying; the frozen client's smoke test
    fails on it."""
    monkeypatch.setitem(sys.modules, "ifaddr", None)  # import ifaddr: ImportError
    with pytest.raises(OSError, match="cannot list the network interfaces"):
        local_networks()
    assert default_targets([12345], local_networks) == [(LIMITED_BROADCAST, 12345)]


def test_no_test_reaches_this_computers_networks_by_default() -> None:
    """The suite's guard (tests/conftest.py): a dialog opened without targets
    of its own asks nowhere."""
    assert default_targets([12345]) == []


def test_targets_can_be_named_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(discovery.TARGETS_ENV, "127.0.0.1:5000, [::1]:6000,nonsense,host:0,x:99999")
    assert discovery.targets_for([12345]) == [("127.0.0.1", 5000), ("::1", 6000)]
    monkeypatch.setenv(discovery.TARGETS_ENV, "")
    assert discovery.targets_for([12345]) == []  # nowhere: what every test run sets
    monkeypatch.delenv(discovery.TARGETS_ENV)
    monkeypatch.setattr(
        discovery, "local_networks", lambda: [ipaddress.IPv4Interface("10.1.2.3/24")]
    )
    assert discovery.targets_for([12345]) == [("10.1.2.255", 12345)]
