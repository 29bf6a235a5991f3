"""Tests of the client's network class, ``app.network.ChatClient``, without Tk.

The client runs against a real ``ChatServer`` on 127.0.0.1 (the ``start_server``
fixture, or ``ServerThread`` below when a test stops and restarts a server on
one port), or against a tiny fake server (``FakeServer``: one connection, one
thread, a script) when the test needs a server that misbehaves: one that
never echoes, goes silent, pings with extra fields or speaks another protocol
version. The "other user" is a raw ``tests.wire`` client, which shares no code
with the app. Every wait is bounded.
"""

from __future__ import annotations

import errno
import gc
import queue
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app import network
from app import text as fmt
from app.network import (
    ChatClient,
    ConnectFailed,
    Connecting,
    ConnectionLost,
    EventQueue,
    NameRefused,
    Received,
    ServerShutdown,
    Stopped,
    Unsent,
    Welcomed,
    backoff_delay,
    describe_connect_error,
)
from server.chat_server import ChatServer
from server.config import ServerConfig
from server.protocol import (
    MAX_CLIENT_FRAME,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    ChatMessage,
    Error,
    Joined,
    Left,
    Rename,
    Renamed,
    Say,
    Users,
    Welcome,
)
from server.protocol.transport import TransportClosed, Want
from tests import trust_helpers
from tests.conftest import _open_sockets
from tests.trust_helpers import PlaintextAgreed
from tests.wire import RawClient, frame

HOST = "127.0.0.1"
WAIT = 5.0  # the longest any single expected event may take
EMOJI = "\U0001f600"

StartServer = Callable[..., ChatServer]
EventType = type | tuple[type, ...]


# -- helpers: events ------------------------------------------------------------


def wait_for(client: ChatClient, event_type: EventType, timeout: float = WAIT) -> list[Any]:
    """Drain ``client.events`` until an event of ``event_type`` arrives.

    Returns every event seen, the one wanted last; fails after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    seen: list[Any] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {event_type} within {timeout} s; saw {seen}")
        try:
            event = client.events.get(timeout=remaining)
        except queue.Empty:
            continue  # the deadline check above ends the loop
        seen.append(event)
        if isinstance(event, event_type):
            return seen


def last(client: ChatClient, event_type: EventType, timeout: float = WAIT) -> Any:
    """The first event of ``event_type`` to arrive (earlier ones are dropped)."""
    return wait_for(client, event_type, timeout)[-1]


def drain(client: ChatClient) -> list[Any]:
    """Every event already queued, without waiting."""
    seen = []
    for _ in range(100_000):
        try:
            seen.append(client.events.get_nowait())
        except queue.Empty:
            break
    return seen


def expect_no(client: ChatClient, event_type: EventType, seconds: float) -> list[Any]:
    """No event of ``event_type`` arrives for ``seconds``; returns what did arrive."""
    deadline = time.monotonic() + seconds
    seen: list[Any] = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = client.events.get(timeout=remaining)
        except queue.Empty:
            break
        seen.append(event)
        assert not isinstance(event, event_type), f"unexpected {event}; saw {seen}"
    return seen


def live_echo(client: ChatClient, text: str, timeout: float = WAIT) -> ChatMessage:
    """Wait for the live (not history) message whose text is ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        event = last(client, Received, max(0.01, deadline - time.monotonic()))
        message = event.message
        if isinstance(message, ChatMessage) and not message.history and message.text == text:
            return message


def assert_plain(message: str) -> None:
    """One sentence for people: no codes, exception names or reprs of objects."""
    assert message, message
    assert message[0].isupper(), message
    assert message.endswith((".", "?")), message
    for jargon in ("Errno", "errno", "Error", "Exception", "Traceback", "{", "[", "_"):
        assert jargon not in message, message


def network_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chat-network" and t.is_alive()]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Lowest(random.Random):
    """An rng whose ``uniform`` always returns its lower bound (no jitter)."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    """An rng whose ``uniform`` always returns its upper bound (no jitter)."""

    def uniform(self, a: float, b: float) -> float:
        return b


# -- helpers: fixtures and servers --------------------------------------------------


@pytest.fixture
def make_client() -> Iterator[Callable[..., ChatClient]]:
    """Create (and start) ChatClients; every one is closed after the test."""
    clients: list[ChatClient] = []

    def make(port: int, name: str = "alice", *, start: bool = True, **kwargs: Any) -> ChatClient:
        host = kwargs.pop("host", HOST)
        kwargs.setdefault("known", PlaintextAgreed())
        client = ChatClient(host, port, name, **kwargs)
        clients.append(client)
        if start:
            client.start()
        return client

    yield make
    for client in clients:
        client.close(3.0)
    assert not network_threads(), "a network thread outlived close()"


@pytest.fixture
def join(make_client: Callable[..., ChatClient]) -> Callable[..., ChatClient]:
    """A ChatClient that has been welcomed (its events up to Welcomed drained)."""

    def join_(port: int, name: str = "alice", **kwargs: Any) -> ChatClient:
        client = make_client(port, name, **kwargs)
        welcomed = last(client, Welcomed)
        assert not welcomed.reconnected
        return client

    return join_


class ServerThread:
    """A real ChatServer serving in a thread, on a given port (0: any)."""

    def __init__(self, port: int = 0, **overrides: Any) -> None:
        self.server = ChatServer(ServerConfig(host=HOST, port=port, **overrides))
        self.port = self.server.port
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="test-serve-net"
        )
        self.thread.start()
        trust_helpers.serving(self.server)
        self.stopped = False

    def stop(self) -> None:
        """shutdown() then server_close(); harmless when called again."""
        if self.stopped:
            return
        self.stopped = True
        trust_helpers.stopped(self.server)
        self.server.shutdown()
        self.thread.join(5.0)
        self.server.server_close()
        assert not self.thread.is_alive()


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerThread]]:
    """Start ServerThreads; all stopped after the test (in a finally, in effect)."""
    running: list[ServerThread] = []

    def start(port: int = 0, **overrides: Any) -> ServerThread:
        srv = ServerThread(port, **overrides)
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()


class Peer(RawClient):
    """The fake server's side of one accepted connection, reading client frames."""

    def __init__(self, sock: socket.socket, timeout: float = WAIT) -> None:
        # RawClient's reading and ``expect`` helpers, around an accepted socket.
        self.sock = sock
        self.timeout = timeout
        self._buffer = b""
        self.eof = False


def welcome(name: str, users: list[str] | None = None) -> dict[str, Any]:
    return {"type": "welcome", "name": name, "users": users or [name], "history_count": 0}


class FakeServer:
    """Listens on 127.0.0.1 (any port) and runs one script per connection, in a
    thread, one connection after the other; each connection is closed when its
    script returns. The listener is closed after the last accept, so later
    connection attempts are refused. ``finish`` joins the thread and re-raises
    whatever a script failed with."""

    def __init__(self, *scripts: Callable[[Peer], None]) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.failure: BaseException | None = None
        self.finished = False
        self.thread = threading.Thread(target=self._run, args=(scripts,), name="fake-server")
        self.thread.start()

    def _run(self, scripts: tuple[Callable[[Peer], None], ...]) -> None:
        try:
            for number, script in enumerate(scripts, 1):
                try:
                    sock, _ = self.listener.accept()
                finally:
                    if number == len(scripts):
                        self.listener.close()
                with sock:
                    sock.settimeout(WAIT)
                    script(Peer(sock))
        except BaseException as exc:  # reported by finish(), in the test's thread
            self.failure = exc
        finally:
            self.listener.close()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.thread.join(4 * WAIT)
        assert not self.thread.is_alive(), "the fake server's script did not end"
        self.listener.close()
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """Start FakeServers (``fake_server(script, ...)``); all finished after the test."""
    fakes: list[FakeServer] = []

    def start(*scripts: Callable[[Peer], None]) -> FakeServer:
        fake = FakeServer(*scripts)
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.finish()


# -- backoff_delay and describe_connect_error ---------------------------------------


def test_backoff_grows_1_2_4_and_is_capped_at_30() -> None:
    bases = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30, 30]
    assert [backoff_delay(n, Highest()) for n in range(len(bases))] == bases
    assert [backoff_delay(n, Lowest()) for n in range(len(bases))] == [b / 2 for b in bases]
    assert backoff_delay(10_000, Highest()) == 30  # no overflow for a long outage


def test_backoff_jitter_is_half_to_all_of_the_base_from_the_rng() -> None:
    rng, twin = random.Random(1234), random.Random(1234)
    delays = []
    for attempt in range(40):
        base = min(30, 2 ** min(attempt, 10))
        delay = backoff_delay(attempt, rng)
        assert 0.5 * base <= delay <= base, (attempt, delay)
        assert delay == pytest.approx(base * twin.uniform(0.5, 1.0))  # seeded: reproducible
        delays.append(delay / base)
    assert len(set(delays)) > 30, "the jitter should vary from one attempt to the next"


def test_backoff_asks_the_rng_for_a_factor_between_half_and_one() -> None:
    calls = []

    class Recording(random.Random):
        def uniform(self, a: float, b: float) -> float:
            calls.append((a, b))
            return 0.75

    assert backoff_delay(2, Recording()) == 3.0
    assert calls == [(0.5, 1.0)]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "Cannot find the computer 'chat.example'. Check the server address.",
        ),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "Nothing is listening at chat.example:4321. Is the server running?",
        ),
        (
            TimeoutError(),
            "chat.example:4321 did not answer. Check the address, and that the server's "
            "firewall lets connections in.",
        ),
        (
            OSError(errno.ENETUNREACH, "Network is unreachable"),
            "Cannot reach chat.example. Check that you are on the same network as the server.",
        ),
        (
            OSError(errno.EHOSTUNREACH, "No route to host"),
            "Cannot reach chat.example. Check that you are on the same network as the server.",
        ),
        (
            OSError(errno.EACCES, "Permission denied"),
            "Cannot connect to chat.example:4321: Permission denied.",
        ),
        (OSError("something odd"), "Cannot connect to chat.example:4321: something odd."),
    ],
    ids=["gaierror", "refused", "timeout", "net-unreach", "host-unreach", "other", "no-errno"],
)
def test_describe_connect_error(exc: OSError, expected: str) -> None:
    assert describe_connect_error(exc, "chat.example", 4321) == expected


# -- connecting ------------------------------------------------------------------------


def test_connect_is_welcomed_with_name_and_users(
    start_server: StartServer, make_client: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server(motd="Be nice")
    bob = open_client(server.port, "bob")
    client = make_client(server.port, "alice", start=False)
    assert client.name is None
    assert not client.joined
    assert client.say("too early") is False
    assert client.rename("x") is False
    assert client.who() is False
    client.start()

    events = wait_for(client, Welcomed)
    assert events[0] == Connecting(HOST, server.port, 0)
    assert [type(e) for e in events] == [Connecting, Welcomed]
    welcomed = events[-1]
    assert welcomed.reconnected is False
    assert welcomed.welcome.name == "alice"
    assert welcomed.welcome.users == ("alice", "bob")
    assert welcomed.welcome.motd == "Be nice"
    assert client.joined
    assert client.name == "alice"
    assert bob.skip_until("joined")["name"] == "alice"


def test_name_is_the_one_the_server_keeps(
    start_server: StartServer, make_client: Callable[..., ChatClient]
) -> None:
    server = start_server()
    client = make_client(server.port, "Jose\u0301")  # decomposed; the server keeps NFC
    welcomed = last(client, Welcomed)
    assert welcomed.welcome.name == "Jos\u00e9"
    assert client.name == "Jos\u00e9"


def test_history_and_presence_arrive_as_received(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    bob = open_client(server.port, "bob")
    bob.send({"type": "say", "text": "before you came"})
    bob.expect("message")
    client = join(server.port, "alice")
    history = last(client, Received).message
    assert isinstance(history, ChatMessage)
    assert (history.sender, history.text, history.history) == ("bob", "before you came", True)

    carol = open_client(server.port, "carol")
    joined = last(client, Received).message
    assert (joined.TYPE, joined.name) == ("joined", "carol")
    carol.send({"type": "bye"})
    left = last(client, Received).message
    assert (left.TYPE, left.name, left.reason) == ("left", "carol", "quit")


# -- names: refused, retried, timed out ------------------------------------------------


def test_name_taken_then_retry_on_the_same_connection(
    start_server: StartServer, make_client: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    open_client(server.port, "alice")
    client = make_client(server.port, "ALICE")
    events = wait_for(client, NameRefused)
    refused = events[-1]
    assert refused.code == "name-taken"
    assert refused.message
    assert not client.joined
    assert client.name is None
    assert client.say("not yet") is False

    client.choose_name("other")
    events += wait_for(client, Welcomed)
    welcomed = events[-1]
    assert welcomed.welcome.name == "other"
    assert welcomed.reconnected is False
    assert welcomed.welcome.users == ("alice", "other")
    assert client.name == "other"
    assert client.joined
    # One connection: a single attempt, nothing lost or failed on the way.
    assert [type(e) for e in events] == [Connecting, NameRefused, Welcomed]
    assert server.connection_count == 2


def test_name_invalid_then_retry(
    start_server: StartServer, make_client: Callable[..., ChatClient]
) -> None:
    server = start_server()
    client = make_client(server.port, "a b")
    refused = last(client, NameRefused)
    assert refused.code == "name-invalid"
    assert refused.message
    client.choose_name("bad!")
    assert last(client, NameRefused).code == "name-invalid"
    client.choose_name("a_b")
    assert last(client, Welcomed).welcome.name == "a_b"
    assert client.name == "a_b"


def test_handshake_timeout_while_choosing_a_name(
    start_server: StartServer, make_client: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server(handshake_timeout=0.5)
    open_client(server.port, "alice")
    client = make_client(server.port, "alice")
    assert last(client, NameRefused).code == "name-taken"
    events = wait_for(client, ConnectFailed, timeout=3.0)
    failed = events[-1]
    assert_plain(failed.message)
    assert "name" in failed.message
    assert not any(isinstance(e, Welcomed | ConnectionLost) for e in events)
    assert isinstance(last(client, Stopped, timeout=1.0), Stopped)
    assert not client.joined


# -- chatting ------------------------------------------------------------------------


def test_say_is_echoed_and_reaches_the_others(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    bob = open_client(server.port, "bob")
    client = join(server.port, "alice")
    bob.skip_until("joined")
    assert client.say("hello bob") is True
    echo = live_echo(client, "hello bob")
    assert (echo.sender, echo.action, echo.to) == ("alice", False, None)
    got = bob.expect("message", text="hello bob")
    assert got["from"] == "alice"
    assert got["id"] == echo.id


def test_me_action(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    bob = open_client(server.port, "bob")
    client = join(server.port, "alice")
    bob.skip_until("joined")
    assert client.say("waves", action=True)
    echo = live_echo(client, "waves")
    assert echo.action is True
    assert bob.expect("message", text="waves")["action"] is True


def test_private_message_goes_only_to_its_recipient(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    bob = open_client(server.port, "bob")
    carol = open_client(server.port, "carol")
    client = join(server.port, "alice")
    bob.skip_until("joined")  # carol
    bob.skip_until("joined")  # alice
    carol.skip_until("joined")
    assert client.say("psst", to="BOB")  # matched by identity
    echo = live_echo(client, "psst")
    assert echo.to == "bob"
    got = bob.expect("message", text="psst")
    assert (got["from"], got["to"]) == ("alice", "bob")
    carol.expect_silence(0.3)


def test_private_message_to_nobody_comes_back_unsent(
    start_server: StartServer, join: Callable[..., ChatClient]
) -> None:
    server = start_server()
    client = join(server.port, "alice")
    client.say("hello?", to="nobody")
    unsent = last(client, Unsent)
    assert unsent.says == (Say("hello?", False, "nobody"),)
    assert unsent.reason


def test_rename_updates_the_name(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    bob = open_client(server.port, "bob")
    client = join(server.port, "alice")
    bob.skip_until("joined")
    assert client.rename("alicia") is True
    renamed = last(client, Received).message
    assert isinstance(renamed, Renamed)
    assert (renamed.old, renamed.new) == ("alice", "alicia")
    assert client.name == "alicia"
    got = bob.expect("renamed")
    assert (got["old"], got["new"]) == ("alice", "alicia")
    client.say("new me")
    assert live_echo(client, "new me").sender == "alicia"


def test_rename_to_a_taken_name_is_a_received_error(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    open_client(server.port, "bob")
    client = join(server.port, "alice")
    client.rename("Bob")
    events = wait_for(client, Received)
    error = events[-1].message
    assert isinstance(error, Error)
    assert (error.code, error.in_reply_to) == ("name-taken", "rename")
    assert client.name == "alice"
    assert client.joined
    assert not any(isinstance(e, NameRefused) for e in events)


def test_who_lists_the_users(
    start_server: StartServer, join: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    open_client(server.port, "bob")
    client = join(server.port, "alice")
    assert client.who() is True
    users = last(client, Received).message
    assert isinstance(users, Users)
    assert users.users == ("alice", "bob")


def test_emoji_round_trip_between_two_clients(
    start_server: StartServer, join: Callable[..., ChatClient]
) -> None:
    server = start_server()
    alice = join(server.port, "alice")
    bob = join(server.port, "bob")
    text = f"smile {EMOJI}!"
    alice.say(text)
    echo = live_echo(alice, text)
    got = live_echo(bob, text)
    assert (got.sender, got.text, got.id) == ("alice", text, echo.id)
    bob.say(EMOJI)
    assert live_echo(alice, EMOJI).sender == "bob"


# -- pending says ----------------------------------------------------------------------


def test_says_over_the_rate_limit_come_back_unsent(
    start_server: StartServer, join: Callable[..., ChatClient]
) -> None:
    server = start_server()  # the default rate limit: a burst of 20
    client = join(server.port, "alice")
    texts = [f"m{i:02d}" for i in range(25)]
    for text in texts:
        assert client.say(text)

    echoed: list[str] = []
    unsent: list[Unsent] = []
    deadline = time.monotonic() + WAIT
    while len(echoed) + len(unsent) < 25:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"echoed {echoed}, unsent {unsent}"
        event = last(client, Received | Unsent, remaining)
        if isinstance(event, Unsent):
            unsent.append(event)
        elif isinstance(event.message, ChatMessage):
            echoed.append(event.message.text)
    assert echoed == texts[:20]
    assert [u.says for u in unsent] == [(Say(text),) for text in texts[20:]]
    for u in unsent:
        assert "too fast" in u.reason
    expect_no(client, Unsent | ConnectionLost, 0.3)
    assert client.joined


def test_whitespace_only_say_comes_back_unsent_in_order(
    start_server: StartServer, join: Callable[..., ChatClient]
) -> None:
    server = start_server()
    client = join(server.port, "alice")
    client.say("before")
    client.say(" \t ")
    client.say("after")
    events = wait_for(client, Unsent)
    assert events[-1].says == (Say(" \t "),)
    assert events[-1].reason
    assert [e.message.text for e in events if isinstance(e, Received)] == ["before"]
    live_echo(client, "after")
    expect_no(client, Unsent, 0.3)


def test_confirmed_says_are_not_given_back_on_a_drop(
    servers: Callable[..., ServerThread], join: Callable[..., ChatClient]
) -> None:
    srv = servers()
    client = join(srv.port, "alice")
    client.say("one")
    live_echo(client, "one")
    client.rename("alicia")
    client.say("two", to="alicia")  # private to oneself: one copy
    live_echo(client, "two")
    srv.stop()
    events = wait_for(client, ConnectionLost)
    assert not [e for e in events if isinstance(e, Unsent)]


def test_unconfirmed_says_come_back_when_the_connection_drops(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    said: list[dict[str, Any]] = []

    def never_echo(peer: Peer) -> None:
        hello = peer.expect("hello")
        peer.send(welcome(hello["name"]))
        said.append(peer.expect("say"))
        said.append(peer.expect("say"))
        # ...and close without echoing either

    fake = fake_server(never_echo)
    client = join(fake.port, "alice")
    client.say("one")
    client.say("two", action=True)
    events = wait_for(client, ConnectionLost)
    fake.finish()
    assert [s["text"] for s in said] == ["one", "two"]
    unsent = [e for e in events if isinstance(e, Unsent)]
    assert len(unsent) == 1, events
    assert unsent[0].says == (Say("one"), Say("two", True))
    assert_plain(unsent[0].reason)
    assert events.index(unsent[0]) < len(events) - 1  # given back before ConnectionLost
    assert not client.joined
    assert client.say("while away") is False


def test_renames_not_answered_when_the_connection_drops_come_back_in_order(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    """A rename is answered by ``renamed`` (old: our name) or by an error in reply
    to it; one the connection dropped first was lost without a word, and the
    client reconnected under the old name."""

    def answers_two_renames(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.expect("rename", name="bob")
        peer.send({"type": "renamed", "old": "alice", "new": "bob", "ts": 1e9})
        peer.expect("rename", name="carol")
        peer.send(
            {
                "type": "error",
                "code": "name-taken",
                "message": "The name carol is already in use",
                "in_reply_to": "rename",
            }
        )
        peer.expect("say", text="one")
        peer.expect("rename", name="dave")
        peer.expect("say", text="two")
        # ...and close with neither say echoed nor the last rename answered

    fake = fake_server(answers_two_renames)
    client = join(fake.port, "alice")
    for sent in (client.rename("bob"), client.rename("carol"), client.say("one")):
        assert sent
    assert client.rename("dave")
    assert client.say("two")
    events = wait_for(client, ConnectionLost)
    fake.finish()
    unsent = [e for e in events if isinstance(e, Unsent)]
    assert len(unsent) == 1, events
    assert unsent[0].says == (Say("one"), Rename("dave"), Say("two"))
    assert client.name == "bob"  # the rename the server answered stands


def test_a_rename_still_queued_when_the_connection_drops_comes_back(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    """A rename waiting to be sent, among says, when the drop is handled. As in
    the test below, the events queue has them typed while Welcomed is posted,
    and the fake server follows its welcome, in the same write, with a broken
    frame: the network thread handles the drop before it sends anything."""
    holder: list[ChatClient] = []

    class TypeOnWelcome(EventQueue):
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            super().put(item, block, timeout)
            if isinstance(item, Welcomed):
                client = holder[0]
                assert client.say("before") and client.rename("bob") and client.say("after")

    def welcome_then_garbage(peer: Peer) -> None:
        hello = peer.expect("hello")
        peer.send_raw(frame(welcome(hello["name"])) + b"\0\0\0\0")  # length 0: bad frame
        peer.expect_closed()

    fake = fake_server(welcome_then_garbage)
    client = make_client(fake.port, "alice", start=False, events=TypeOnWelcome())
    holder.append(client)
    client.start()
    events = wait_for(client, ConnectionLost)
    fake.finish()
    given_back = [message for e in events if isinstance(e, Unsent) for message in e.says]
    assert given_back == [Say("before"), Rename("bob"), Say("after")], events


def test_say_accepted_just_before_a_drop_is_not_lost(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    """A say() that returned True must be echoed or come back as Unsent.

    The UI thread may call say() after the network thread's last flush of the
    outgoing queue and before it handles a drop. To hit that window every time,
    the events queue calls say() while the Welcomed event is being posted, and
    the fake server follows its welcome, in the same write, with a broken frame.
    """
    holder: list[ChatClient] = []

    class SayOnWelcome(EventQueue):
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            super().put(item, block, timeout)
            if isinstance(item, Welcomed):
                assert holder[0].say("typed at the wrong moment") is True

    def welcome_then_garbage(peer: Peer) -> None:
        hello = peer.expect("hello")
        peer.send_raw(frame(welcome(hello["name"])) + b"\0\0\0\0")  # length 0: bad frame
        peer.expect_closed()

    fake = fake_server(welcome_then_garbage)
    client = make_client(fake.port, "alice", start=False, events=SayOnWelcome())
    holder.append(client)
    client.start()
    events = wait_for(client, ConnectionLost)
    events += expect_no(client, Welcomed, 0.5)  # it may still come back a bit later
    fake.finish()
    says = [say for e in events if isinstance(e, Unsent) for say in e.says]
    assert says == [Say("typed at the wrong moment")], f"the say was lost: {events}"


def test_say_racing_with_a_drop_is_not_lost(
    fake_server: Callable[..., FakeServer],
    make_client: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """say() checks ``joined``, then encodes and queues the frame. When the drop is
    handled in between (the network thread runs while the UI thread is inside
    say()), a say() that returns True must still be given back or sent. The
    window is held open by pausing the encoding of that one say until the
    network thread has posted ConnectionLost; the client then reconnects."""
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)
    in_say = threading.Event()
    lost_posted = threading.Event()
    real_encode = network.encode

    def paused_encode(message: Any, *args: Any) -> bytes:
        if isinstance(message, Say) and message.text == "racing":
            in_say.set()
            lost_posted.wait(WAIT)
        return real_encode(message, *args)

    monkeypatch.setattr(network, "encode", paused_encode)

    class Watch(EventQueue):
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            super().put(item, block, timeout)
            if isinstance(item, ConnectionLost):
                lost_posted.set()

    drop_now = threading.Event()
    second_frames: list[dict[str, Any]] = []

    def welcome_then_drop(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        drop_now.wait(WAIT)

    def welcome_again(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        second_frames.extend(peer.expect_closed())  # until the test closes the client

    fake = fake_server(welcome_then_drop, welcome_again)
    client = make_client(fake.port, "alice", events=Watch())
    last(client, Welcomed)
    results: list[bool] = []
    sayer = threading.Thread(target=lambda: results.append(client.say("racing")), name="sayer")
    sayer.start()
    try:
        assert in_say.wait(WAIT)
        drop_now.set()
        events = wait_for(client, ConnectionLost)
    finally:
        sayer.join(2 * WAIT)
    assert not sayer.is_alive()
    assert len(results) == 1
    events += wait_for(client, Welcomed)  # reconnected
    events += expect_no(client, ConnectFailed, 0.5)
    client.close()
    fake.finish()
    if results == [True]:
        given_back = [say.text for e in events if isinstance(e, Unsent) for say in e.says]
        sent = [f.get("text") for f in second_frames if f["type"] == "say"]
        assert "racing" in given_back + sent, f"say() returned True, then lost: {events}"


# -- failures as plain sentences -----------------------------------------------------


def test_nothing_listening(make_client: Callable[..., ChatClient]) -> None:
    port = free_port()
    client = make_client(port, "alice")
    events = wait_for(client, ConnectFailed)
    assert events[0] == Connecting(HOST, port, 0)
    assert events[-1].message == f"Nothing is listening at {HOST}:{port}. Is the server running?"
    events += wait_for(client, Stopped, timeout=1.0)
    assert not any(isinstance(e, ConnectionLost | Welcomed) for e in events)
    assert not client.joined


def test_unknown_host(make_client: Callable[..., ChatClient]) -> None:
    client = make_client(1234, "alice", host="no-such-host.invalid")
    failed = last(client, ConnectFailed, timeout=10.0)
    assert failed.message.startswith("Cannot find the computer")
    assert "no-such-host.invalid" in failed.message
    last(client, Stopped, timeout=1.0)


def test_server_full(
    start_server: StartServer, make_client: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server(max_clients=1)
    open_client(server.port, "bob")
    client = make_client(server.port, "alice")
    events = wait_for(client, ConnectFailed)
    assert "full" in events[-1].message
    assert_plain(events[-1].message)
    assert not any(isinstance(e, Welcomed | NameRefused) for e in events)
    last(client, Stopped, timeout=1.0)


def test_protocol_version_refused(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    hellos: list[dict[str, Any]] = []

    def other_version(peer: Peer) -> None:
        hellos.append(peer.expect("hello"))
        peer.send(
            {
                "type": "error",
                "code": "protocol-version",
                "message": "This server speaks protocol version 2, not 1.",
                "in_reply_to": "hello",
            }
        )

    fake = fake_server(other_version)
    client = make_client(fake.port, "alice")
    events = wait_for(client, ConnectFailed)
    fake.finish()
    assert hellos == [{"type": "hello", "name": "alice", "protocol": 1}]
    assert "version" in events[-1].message
    assert_plain(events[-1].message)
    events += wait_for(client, Stopped, timeout=1.0)
    assert [type(e) for e in events] == [Connecting, ConnectFailed, Stopped]


def test_closed_before_welcome(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    fake = fake_server(lambda peer: peer.expect("hello") and None)
    client = make_client(fake.port, "alice")
    failed = last(client, ConnectFailed)
    fake.finish()
    assert_plain(failed.message)
    assert "closed" in failed.message


def test_garbage_from_the_server(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    def garbage(peer: Peer) -> None:
        peer.expect("hello")
        peer.send_raw(b"\0\0\0\x05hello")  # not JSON
        peer.expect_closed()

    fake = fake_server(garbage)
    client = make_client(fake.port, "alice")
    failed = last(client, ConnectFailed)
    fake.finish()
    assert_plain(failed.message)


def test_a_second_welcome_drops_the_connection(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    """Each welcome queued a Welcomed event with all its names (3.7 MB for a
    1 MiB welcome) until EVENT_LIMIT of them, 7 GB, waited for a slow UI."""
    names = ["alice", *(f"u{i:04d}" for i in range(5000))]

    def welcomes(peer: Peer) -> None:
        peer.expect("hello")
        peer.send_raw(frame(welcome("alice", names)) * 50)
        peer.expect_closed()

    fake = fake_server(welcomes)
    client = make_client(fake.port, "alice")  # and nobody takes its events meanwhile

    def queued() -> list[Any]:
        with client.events.mutex:
            return list(client.events.queue)

    deadline = time.monotonic() + WAIT
    while not any(isinstance(e, ConnectionLost) for e in queued()):
        assert time.monotonic() < deadline, f"still connected; {len(queued())} events wait"
        time.sleep(0.01)
    waiting = queued()
    fake.finish()
    assert [type(e) for e in waiting[:3]] == [Connecting, Welcomed, ConnectionLost]
    lost = waiting[2]
    assert lost.message == "The server sent something this app does not understand."
    assert lost.retry_in > 0  # it tries again, as after any broken frame
    assert waiting[1].welcome.users == tuple(names)


# -- drop and reconnect ----------------------------------------------------------


def test_shutdown_then_reconnect_now_on_the_same_port(
    servers: Callable[..., ServerThread],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A long pause (10 to 20 s): only reconnect_now() can bring it back in time.
    monkeypatch.setattr(network, "BACKOFF_FIRST", 20.0)
    monkeypatch.setattr(network, "FAST_RETRY", 20.0)  # even after a shutdown
    first = servers()
    port = first.port
    client = join(port, "alice")
    first.stop()
    events = wait_for(client, ConnectionLost)
    shutdowns = [e for e in events if isinstance(e, ServerShutdown)]
    assert [s.message for s in shutdowns] == ["The server is shutting down"]
    lost = events[-1]
    assert events.index(shutdowns[0]) < len(events) - 1
    assert lost.retry_in >= 10.0
    assert_plain(lost.message)
    assert not client.joined
    assert client.say("nobody to hear it") is False

    servers(port)  # a new server on the same port
    client.reconnect_now()
    events = wait_for(client, Welcomed, timeout=3.0)
    welcomed = events[-1]
    assert welcomed.reconnected is True
    assert welcomed.welcome.name == "alice"
    assert client.name == "alice"
    assert client.joined
    assert [type(e) for e in events] == [Connecting, Welcomed]
    client.say("back")
    live_echo(client, "back")


def test_reconnects_by_itself_after_the_pause(
    servers: Callable[..., ServerThread], join: Callable[..., ChatClient]
) -> None:
    first = servers()
    port = first.port
    client = join(port, "alice", rng=Highest())  # the first pause: exactly 1 s
    first.stop()
    lost = last(client, ConnectionLost)
    assert lost.retry_in == 1.0
    servers(port)
    started = time.monotonic()
    assert last(client, Welcomed, timeout=3.0).reconnected is True
    assert time.monotonic() - started < 2.0


def test_reconnect_with_the_name_taken_meanwhile(
    servers: Callable[..., ServerThread],
    join: Callable[..., ChatClient],
    open_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "BACKOFF_FIRST", 20.0)
    monkeypatch.setattr(network, "FAST_RETRY", 20.0)  # even after a shutdown
    first = servers()
    port = first.port
    client = join(port, "alice")
    first.stop()
    last(client, ConnectionLost)
    second = servers(port)
    open_client(second.port, "alice")  # someone took the name while we were away
    client.reconnect_now()
    assert last(client, NameRefused, timeout=3.0).code == "name-taken"
    client.choose_name("alice2")
    welcomed = last(client, Welcomed)
    assert welcomed.reconnected is True
    assert client.name == "alice2"


def test_backoff_between_failed_reconnections(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)

    def welcome_then_close(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))

    fake = fake_server(welcome_then_close)  # later attempts are refused
    client = join(fake.port, "alice", rng=Lowest())
    losses = [last(client, ConnectionLost) for _ in range(5)]
    fake.finish()
    assert [lost.retry_in for lost in losses] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4])
    assert losses[0].message == "The server closed the connection."
    for lost in losses[1:]:
        assert lost.message == f"Nothing is listening at {HOST}:{fake.port}. Is the server running?"


def test_protocol_version_on_reconnection_stops_for_good(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server upgraded while we were away: no point in retrying."""
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)

    def welcome_then_close(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))

    def other_version(peer: Peer) -> None:
        peer.expect("hello", protocol=1)
        peer.send(
            {
                "type": "error",
                "code": "protocol-version",
                "message": "This server speaks protocol version 2, not 1.",
                "in_reply_to": "hello",
            }
        )

    fake = fake_server(welcome_then_close, other_version)
    client = join(fake.port, "alice")
    assert last(client, ConnectionLost).retry_in > 0
    events = wait_for(client, ConnectionLost)
    fake.finish()
    final = events[-1]
    assert final.retry_in < 0
    assert "version" in final.message
    assert_plain(final.message)
    events += wait_for(client, Stopped, timeout=1.0)
    events += expect_no(client, Connecting, 0.3)
    assert not any(isinstance(e, ConnectFailed | Welcomed) for e in events)


# -- keeping the connection alive -------------------------------------------------------


def test_a_silent_server_is_detected_as_dead(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    times: dict[str, float] = {}
    after_ping: list[list[dict[str, Any]]] = []

    def silent(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        times["welcome"] = time.monotonic()
        assert peer.expect("ping", timeout=3.0) == {"type": "ping"}
        times["ping"] = time.monotonic()
        # Stay silent with the connection open, until the client gives up on it.
        after_ping.append(peer.expect_closed(timeout=3.0))

    fake = fake_server(silent)
    client = make_client(fake.port, "alice", ping_after=0.3, dead_after=0.8)
    last(client, Welcomed)
    welcomed_at = time.monotonic()
    lost = last(client, ConnectionLost, timeout=3.0)
    lost_at = time.monotonic()
    fake.finish()
    assert lost.message == "The server stopped answering."
    assert lost.retry_in > 0
    assert lost_at - welcomed_at < 1.5
    assert 0.2 <= times["ping"] - times["welcome"] < 0.8
    assert after_ping == [[]], "nothing but one ping, then the client closes the socket"


def test_a_server_that_answers_pings_is_alive(
    start_server: StartServer, make_client: Callable[..., ChatClient]
) -> None:
    server = start_server()
    client = make_client(server.port, "alice", ping_after=0.3, dead_after=0.8)
    last(client, Welcomed)
    expect_no(client, ConnectionLost, 1.6)
    assert client.joined


def test_client_answers_pings_echoing_their_fields(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    ping = {"type": "ping", "n": 7, "note": f"h\u00e9llo {EMOJI}", "nested": {"a": [1, 2.5]}}
    got: list[dict[str, Any]] = []
    answered = threading.Event()

    def pinger(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.send(ping)
        got.append(peer.expect("pong"))
        answered.set()
        got.extend(peer.expect_closed())  # until the test closes the client

    fake = fake_server(pinger)
    client = join(fake.port, "alice")
    assert answered.wait(WAIT)
    client.close()
    fake.finish()
    assert got[0] == {**ping, "type": "pong"}
    assert got[1:] == [{"type": "bye"}]


def test_real_server_pings_are_answered(
    start_server: StartServer, join: Callable[..., ChatClient]
) -> None:
    # The server pings every 0.2 s and drops a client silent for 1 s: only the
    # client's pongs keep it in the room.
    server = start_server(idle_ping_after=0.2, idle_timeout=1.0)
    client = join(server.port, "alice")
    seen = expect_no(client, ConnectionLost | Unsent, 1.8)
    assert not [e for e in seen if isinstance(e, Received) and isinstance(e.message, Error)]
    client.say("still here")
    live_echo(client, "still here")


# -- closing ------------------------------------------------------------------------


def test_close_while_joined_says_bye(
    start_server: StartServer, make_client: Callable[..., ChatClient], open_client: Any
) -> None:
    server = start_server()
    bob = open_client(server.port, "bob")
    client = make_client(server.port, "alice")
    last(client, Welcomed)
    bob.skip_until("joined")
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    assert not network_threads()
    left = bob.skip_until("left")
    assert (left["name"], left["reason"]) == ("alice", "quit")
    assert any(isinstance(e, Stopped) for e in drain(client))
    assert not client.joined

    started = time.monotonic()
    client.close()  # twice: harmless
    assert time.monotonic() - started < 0.5
    assert drain(client) == []


def test_close_during_a_backoff_pause(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "BACKOFF_FIRST", 20.0)

    def welcome_then_close(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))

    fake = fake_server(welcome_then_close)
    client = join(fake.port, "alice")
    assert last(client, ConnectionLost).retry_in >= 10.0
    fake.finish()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    assert not network_threads()
    assert [type(e) for e in drain(client)] == [Stopped]


def test_close_before_welcome_sends_no_bye(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    frames: list[dict[str, Any]] = []
    greeted = threading.Event()

    def never_welcome(peer: Peer) -> None:
        frames.append(peer.expect("hello"))
        greeted.set()
        frames.extend(peer.expect_closed())

    fake = fake_server(never_welcome)
    client = make_client(fake.port, "alice")
    assert greeted.wait(WAIT)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    fake.finish()
    assert [f["type"] for f in frames] == ["hello"]
    events = drain(client)
    assert [type(e) for e in events] == [Connecting, Stopped]


def test_close_after_the_thread_ended_and_before_start(
    make_client: Callable[..., ChatClient],
) -> None:
    failed = make_client(free_port(), "alice")
    last(failed, Stopped)
    failed.close()
    failed.close()
    never_started = make_client(free_port(), "bob", start=False)
    never_started.close()
    never_started.close()
    assert drain(never_started) == []


def test_close_from_another_thread_while_connected(
    start_server: StartServer, join: Callable[..., ChatClient]
) -> None:
    server = start_server()
    client = join(server.port, "alice")
    closer = threading.Thread(target=client.close, name="closer")
    closer.start()
    closer.join(2.0)
    assert not closer.is_alive()
    assert not network_threads()
    assert isinstance(last(client, Stopped, timeout=1.0), Stopped)


def test_fake_server_helper_reports_failures() -> None:
    """The fake server's own checks can fail a test (they are not swallowed)."""

    def expects_a_say(peer: Peer) -> None:
        peer.expect("say")

    fake = FakeServer(expects_a_say)
    with socket.create_connection((HOST, fake.port), timeout=WAIT) as sock:
        sock.sendall(frame({"type": "hello", "name": "x", "protocol": 1}))
    with pytest.raises(AssertionError, match="expected say"):
        fake.finish()


def test_close_during_a_slow_name_lookup_releases_everything(
    make_client: Callable[..., ChatClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """getaddrinfo cannot be interrupted, so close(timeout) may return first; the
    client's sockets must still be released once the thread ends, without a
    second close() (the app calls close() once, when its window closes)."""
    in_lookup = threading.Event()
    finish_lookup = threading.Event()

    def slow_lookup(*args: Any, **kwargs: Any) -> Any:
        in_lookup.set()
        finish_lookup.wait(3.0)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(network.socket, "getaddrinfo", slow_lookup)
    before = _open_sockets()
    client = make_client(1234, "alice", host="slow.example")
    assert in_lookup.wait(WAIT)
    started = time.monotonic()
    client.close(0.2)
    assert time.monotonic() - started < 1.0
    finish_lookup.set()
    last(client, Stopped, timeout=2.0)
    deadline = time.monotonic() + 2.0
    while network_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not network_threads()
    gc.collect()
    assert _open_sockets() - before == set(), "close() returned early and nothing released"


def test_a_new_name_is_the_one_reclaimed_after_a_reconnect(
    servers: Callable[..., ServerThread],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "BACKOFF_FIRST", 20.0)
    monkeypatch.setattr(network, "FAST_RETRY", 20.0)  # even after a shutdown
    first = servers()
    port = first.port
    client = join(port, "alice")
    assert client.rename("robert")
    wait_for(client, Received)  # renamed
    assert client.name == "robert"
    first.stop()
    wait_for(client, ConnectionLost)
    servers(port)
    client.reconnect_now()
    welcomed = wait_for(client, Welcomed, timeout=3.0)[-1]
    assert welcomed.welcome.name == "robert"


# -- a hostile server ------------------------------------------------------------------


def test_a_ping_whose_pong_would_not_fit_a_client_frame_is_not_answered(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    got: list[dict[str, Any]] = []

    def big_ping_then_small(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.send({"type": "ping", "pad": "x" * MAX_CLIENT_FRAME})  # its pong: too large
        peer.send({"type": "ping", "n": 2})
        got.append(peer.recv())
        got.extend(peer.expect_closed())  # until the test closes the client

    fake = fake_server(big_ping_then_small)
    client = join(fake.port, "alice")
    deadline = time.monotonic() + WAIT
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.joined
    client.close()
    fake.finish()
    assert got == [{"type": "pong", "n": 2}, {"type": "bye"}]


def test_a_server_that_pings_and_never_reads_is_dropped_and_the_say_given_back(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    """Without a bound, the client buffered every pong (1.3 GB in 10 s)."""
    sent = [0]

    def pings_never_reads(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        ping = frame({"type": "ping", "pad": "x" * (MAX_CLIENT_FRAME - 100)})
        deadline = time.monotonic() + 4 * WAIT
        try:  # until the client gives up on us (or 64 MB, far beyond any buffer)
            while sent[0] < 64 << 20 and time.monotonic() < deadline:
                peer.sock.sendall(ping)
                sent[0] += len(ping)
        except OSError:
            pass

    fake = fake_server(pings_never_reads)
    client = join(fake.port, "alice")
    assert client.say("typed while the server stopped reading")
    events = wait_for(client, ConnectionLost, timeout=4 * WAIT)
    fake.finish()
    assert events[-1].message == "The server stopped reading what this app sends."
    assert events[-1].retry_in > 0
    says = [say.text for e in events if isinstance(e, Unsent) for say in e.says]
    assert says == ["typed while the server stopped reading"]
    assert sent[0] < 64 << 20, "the client read every ping without ever giving up"
    print(f"\ndropped after {sent[0] / 2**20:.1f} MiB of pings")


def test_events_wait_in_a_bounded_queue_and_none_is_lost(
    fake_server: Callable[..., FakeServer],
    make_client: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody drains the queue for longer than the client's dead_after: it holds
    at most about EVENT_LIMIT events meanwhile (the server is held back by
    TCP), does not take the pause for a dead server, and loses nothing."""
    monkeypatch.setattr(network, "EVENT_LIMIT", 50, raising=False)
    count = 1000
    done = threading.Event()

    def flood(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.send_raw(
            b"".join(
                frame({"type": "message", "id": i, "from": "bob", "text": f"m{i}", "ts": 1e9})
                for i in range(count)
            )
        )
        done.wait(2 * WAIT)

    fake = fake_server(flood)
    client = make_client(fake.port, "alice", ping_after=0.4, dead_after=0.8)
    events = wait_for(client, Welcomed)
    most = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        most = max(most, client.events.qsize())
        time.sleep(0.01)
    assert 45 <= most <= 50 + 5, most
    ids: list[int] = []
    deadline = time.monotonic() + WAIT
    while len(ids) < count and time.monotonic() < deadline:
        try:
            event = client.events.get(timeout=0.1)
        except queue.Empty:
            continue
        events.append(event)
        if isinstance(event, Received) and isinstance(event.message, ChatMessage):
            ids.append(event.message.id)
    done.set()
    fake.finish()
    assert ids == list(range(count))
    assert not [e for e in events if isinstance(e, ConnectionLost)]


def test_a_users_list_replaces_the_one_still_waiting() -> None:
    events = EventQueue(limit=10)
    items = [
        Received(Users(("a",))),
        Received(Joined("b", 1e9)),
        Received(Users(("a", "b"))),
        Received(Left("a", "quit", 1e9)),
        Received(Users(("b",))),
        Unsent((Say("x"),), "Because."),
    ]
    for item in items:
        events.put(item)
    got = [events.get_nowait() for _ in range(events.qsize())]
    assert got == [items[1], items[3], items[4], items[5]]
    events.put(items[0])  # nothing waits: a list is queued as it is
    assert events.get_nowait() is items[0]
    assert events.qsize() == 0


def test_the_queue_weighs_user_lists_by_their_names() -> None:
    """However few the events, the names they hold have a bound of their own."""
    events = EventQueue(limit=100)
    woken: list[bool] = []
    events.on_room = lambda: woken.append(True)
    names = tuple(f"u{i}" for i in range(network.MAX_USERS))
    welcomed = Welcomed(Welcome("u0", names), reconnected=False)
    events.put(welcomed)
    assert events.has_room()
    events.put(Received(Users(names)))
    events.put(Received(Users(names[:10])))  # replaces the list waiting: 50,010 names
    assert events.has_room()
    events.put(Received(Users(names)))  # replaces that: 100,000
    assert not events.has_room()
    events.put(Received(Joined("bob", 1e9)))  # queued all the same: has_room is advice
    assert events.get_nowait() is welcomed
    assert woken == [True]
    assert events.has_room()
    assert [type(events.get_nowait()) for _ in range(events.qsize())] == [Received, Received]
    assert events.has_room()


def test_a_users_list_asked_for_stays_an_answer_when_a_later_list_replaces_it() -> None:
    events = EventQueue(limit=10)
    events.put(Received(Users(("a",)), asked=True))
    events.put(Received(Users(("a", "b"))))
    assert events.get_nowait() == Received(Users(("a", "b")), asked=True)
    events.put(Received(Users(("a",))))
    events.put(Received(Users(("b",))))
    assert events.get_nowait() == Received(Users(("b",)), asked=False)


def test_only_the_answer_to_who_is_a_users_list_asked_for(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    def lists(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.send({"type": "users", "users": ["alice", "x"]})
        peer.expect("who")
        peer.send({"type": "users", "users": ["alice", "y"]})
        peer.expect("say", text="next")
        peer.send({"type": "users", "users": ["alice", "z"]})
        peer.expect_closed()

    fake = fake_server(lists)
    client = join(fake.port, "alice")
    assert last(client, Received) == Received(Users(("alice", "x")), asked=False)
    assert client.who()
    assert last(client, Received) == Received(Users(("alice", "y")), asked=True)
    assert client.say("next")
    assert last(client, Received) == Received(Users(("alice", "z")), asked=False)
    client.close()
    fake.finish()


def test_a_server_sending_user_lists_in_a_loop_leaves_one_waiting(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient]
) -> None:
    done = threading.Event()

    def lists(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        lists = [frame({"type": "users", "users": ["alice", f"u{i}"]}) for i in range(300)]
        end = frame({"type": "message", "id": 1, "from": "bob", "text": "end", "ts": 1e9})
        peer.send_raw(b"".join(lists) + end)
        done.wait(2 * WAIT)

    fake = fake_server(lists)
    client = join(fake.port, "alice")

    def queued() -> list[Any]:
        with client.events.mutex:
            return list(client.events.queue)

    deadline = time.monotonic() + WAIT
    while not (waiting := queued()) or not isinstance(waiting[-1].message, ChatMessage):
        assert time.monotonic() < deadline, waiting
        time.sleep(0.01)
    got = drain(client)
    done.set()
    fake.finish()
    assert [e.message for e in got] == [
        Users(("alice", "u299")),
        ChatMessage(1, "bob", "end", 1e9),
    ]


def test_every_field_the_ui_shows_is_made_safe(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Absurd values with the right JSON types (and a mistyped ``ts``) arrive
    as frames the UI can show, instead of crashing the Tk thread
    (``ts`` 1e20 raised OverflowError there) or dropping the connection."""
    done = threading.Event()
    long_name = "n" * 100
    monkeypatch.setattr(network, "MAX_USERS", 1000, raising=False)
    crowd = [f"u{i}" for i in range(1010)]

    def absurd(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        for number, ts in enumerate([1e20, -1e20, 10**30, "soon", None, 1.7e9], 1):
            text = "lone \ud800 surrogate" if number == 1 else f"t{number}"
            peer.send({"type": "message", "id": number, "from": "bob", "text": text, "ts": ts})
        peer.send({"type": "message", "id": 7, "from": "x\nbob", "text": "y" * 10**5, "ts": 1})
        peer.send({"type": "joined", "name": long_name, "ts": 1e300})
        peer.send({"type": "left", "name": "\u202ebob", "reason": "r\n" * 50, "ts": -5})
        peer.send({"type": "renamed", "old": "", "new": "a\x00b", "ts": 1e9})
        peer.send({"type": "users", "users": crowd})
        peer.send({"type": "error", "code": "x", "message": "one\ntwo \ud800"})
        peer.send({"type": "shutdown", "message": "bye\x1b[31m"})
        done.wait(2 * WAIT)

    fake = fake_server(absurd)
    client = join(fake.port, "alice")
    got = []
    for _ in range(13):
        event = last(client, Received | ServerShutdown)
        got.append(event.message if isinstance(event, Received) else event)
    # Still in: nothing made it drop the connection (asked before the fake
    # server, done, closes it).
    assert client.joined
    done.set()
    fake.finish()

    messages = got[:7]
    assert [m.id for m in messages] == [1, 2, 3, 4, 5, 6, 7]
    for message in messages:
        fmt.clock(message.ts)  # no OverflowError, OSError or ValueError
        assert network.MIN_TS <= message.ts <= network.MAX_TS
        message.text.encode()  # Tk raises for what UTF-8 cannot encode
    assert messages[0].text == "lone \ufffd surrogate"
    assert messages[0].ts == network.MAX_TS
    assert messages[1].ts == network.MIN_TS
    assert messages[2].ts == network.MAX_TS
    assert abs(messages[3].ts - time.time()) < 60  # mistyped: our own clock
    assert abs(messages[4].ts - time.time()) < 60  # missing
    assert messages[5].ts == 1.7e9  # a sensible time is kept as it is
    assert messages[6].sender == "x\ufffdbob"
    assert len(messages[6].text) == MAX_TEXT_LENGTH
    joined, left, renamed, users, error, shutdown = got[7:]
    assert joined == Joined("n" * MAX_NAME_LENGTH, network.MAX_TS)
    assert (left.name, left.ts) == ("\ufffdbob", network.MIN_TS)
    assert "\n" not in left.reason and len(left.reason) <= MAX_NAME_LENGTH
    assert (renamed.old, renamed.new) == ("\ufffd", "a\ufffdb")
    assert users.users == tuple(crowd[:1000])
    assert error.message == "one two \ufffd"
    assert shutdown.message == "bye[31m"


@pytest.mark.parametrize("name", ["alice", "José", "张伟", "नमस्ते", "bob_2", "a.b-c", "x" * 32])
def test_names_by_the_rules_are_shown_as_they_are(
    fake_server: Callable[..., FakeServer], join: Callable[..., ChatClient], name: str
) -> None:
    def one_message(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"], ["alice", name]))
        peer.send({"type": "message", "id": 1, "from": name, "text": "hi", "ts": 1.7e9})
        peer.expect_closed()

    fake = fake_server(one_message)
    client = join(fake.port, "alice")
    message = last(client, Received).message
    client.close()
    fake.finish()
    assert message == ChatMessage(1, name, "hi", 1.7e9)


def test_a_server_that_dribbles_bytes_is_found_dead(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    """A byte every 0.1 s is not a frame: the client must not count it as life."""

    def dribble(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.send_raw(b"\0\0\x03\xe8")  # a 1,000-byte frame follows, slowly
        deadline = time.monotonic() + 2 * WAIT
        try:
            while time.monotonic() < deadline:
                peer.send_raw(b" ")
                time.sleep(0.1)
        except OSError:
            pass  # the client hung up

    fake = fake_server(dribble)
    client = make_client(fake.port, "alice", ping_after=0.3, dead_after=0.8)
    last(client, Welcomed)
    lost = last(client, ConnectionLost, timeout=3.0)
    fake.finish()
    assert lost.message == "The server stopped answering."


def welcome_then_garbage(peer: Peer) -> None:
    peer.send_raw(frame(welcome(peer.expect("hello")["name"])) + b"\0\0\0\x05hello")
    peer.expect_closed()


def test_connections_that_break_at_once_do_not_reset_the_backoff(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that welcomes and then sends garbage was retried every second for ever."""
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(network, "FAST_RETRY", 0.03, raising=False)  # garbage is no restart
    fake = fake_server(*[welcome_then_garbage] * 4)
    client = join(fake.port, "alice", rng=Lowest())
    losses = [last(client, ConnectionLost) for _ in range(4)]
    fake.finish()
    assert [lost.retry_in for lost in losses] == pytest.approx([0.025, 0.05, 0.1, 0.2])
    assert {lost.message for lost in losses} == {
        "The server sent something this app does not understand."
    }


def test_a_connection_that_stayed_healthy_resets_the_backoff(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(network, "HEALTHY_AFTER", 0.3, raising=False)

    def healthy_then_closed(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.expect_silence(0.5)

    fake = fake_server(
        welcome_then_garbage, welcome_then_garbage, healthy_then_closed, welcome_then_garbage
    )
    client = join(fake.port, "alice", rng=Lowest())
    losses = [last(client, ConnectionLost) for _ in range(4)]
    fake.finish()
    assert [lost.retry_in for lost in losses] == pytest.approx([0.025, 0.05, 0.025, 0.05])
    assert losses[2].message == "The server closed the connection."


def test_after_a_shutdown_retries_come_quickly_and_each_failure_is_told_once(
    servers: Callable[..., ServerThread], join: Callable[..., ChatClient]
) -> None:
    """The real pauses: the client is back within about two seconds of the
    server's return (it took up to 29 s), and a refused retry that repeats
    the last one is marked ``again`` for the UI to say once."""
    first = servers()
    port = first.port
    client = join(port, "alice", rng=Highest())  # the longest pauses
    first.stop()
    losses = [last(client, ConnectionLost, timeout=2 * WAIT) for _ in range(3)]
    assert [lost.retry_in for lost in losses] == [1.0, 2.0, 2.0]  # not 1, 2, 4
    refused = f"Nothing is listening at {HOST}:{port}. Is the server running?"
    assert [(lost.message, lost.again) for lost in losses] == [
        ("The server closed the connection.", False),
        (refused, False),
        (refused, True),
    ]
    servers(port)
    back = last(client, Welcomed, timeout=3.5)
    assert back.reconnected


def test_fast_retries_last_only_for_the_start_of_an_outage(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)
    monkeypatch.setattr(network, "FAST_RETRY", 0.06, raising=False)
    monkeypatch.setattr(network, "FAST_FOR", 1.0, raising=False)

    def welcome_then_shutdown(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))
        peer.send({"type": "shutdown", "message": "The server is shutting down"})

    fake = fake_server(welcome_then_shutdown)  # later attempts are refused
    client = join(fake.port, "alice", rng=Lowest())
    started = time.monotonic()
    delays = []
    while not delays or delays[-1] <= 0.06:
        assert len(delays) < 60 and time.monotonic() - started < 3 * WAIT, delays
        delays.append(last(client, ConnectionLost).retry_in)
    fake.finish()
    assert delays[:3] == pytest.approx([0.025, 0.05, 0.06])
    assert time.monotonic() - started >= 1.0  # capped for the first FAST_FOR seconds


# -- the transport the client reads and writes through --------------------------------


class ScriptedTransport:
    """A ``Transport`` that plays the server itself, the way TLS would look to
    the client: the connected socket is there for the selector (and, in a
    ``handshake``, for one byte from the server), while what the client sends
    is kept in ``sent`` and what it receives comes from ``inbox``, bytes the
    transport holds as TLS holds decrypted ones, which no selector reports.

    ``handshake``: neither direction moves until a byte has come in on the
    socket (a write answers ``Want.READ`` meanwhile). ``read_wants_write``:
    the first read after the hello answers ``Want.WRITE``. ``answer``: what
    the server says once the hello is in: frames, ``b""`` (its FIN) or
    ``TransportClosed`` (the connection lost)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        handshake: bool = False,
        read_wants_write: bool = False,
        answer: bytes | TransportClosed = b"",
    ) -> None:
        self.sock = sock
        self.handshake = handshake
        self.read_wants_write = read_wants_write
        self.answer = answer
        self.sent = bytearray()
        self.inbox = bytearray()
        self.answers: list[str] = []  # every Want answered, "recv: Want.WRITE" ...
        self.wanted = threading.Event()  # set by the first Want answered
        self._waits = False  # a read answered Want.WRITE and was not retried yet
        self._end: bytes | TransportClosed | None = None  # once the inbox is read

    def _want(self, call: str, want: Want) -> Want:
        self.answers.append(f"{call}: {want}")
        self.wanted.set()
        return want

    def _shaken(self) -> bool:
        if self.handshake and select.select([self.sock], [], [], 0)[0]:
            assert self.sock.recv(1)  # the server's half of the handshake
            self.handshake = False
        return not self.handshake

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, max_bytes: int) -> bytes | Want:
        self._waits = False
        if not self._shaken():
            return self._want("recv", Want.READ)
        if self.inbox and self.read_wants_write:
            self.read_wants_write = False
            self._waits = True
            return self._want("recv", Want.WRITE)
        if not self.inbox and isinstance(self._end, TransportClosed):
            raise self._end
        if not self.inbox:
            return b"" if self._end is not None else self._want("recv", Want.READ)
        data = bytes(self.inbox[:7])  # a few bytes a time: the rest stays pending
        del self.inbox[:7]
        return data

    def send(self, data: bytes | memoryview) -> int | Want:
        if not self._shaken():
            return self._want("send", Want.READ)
        if not self.sent:  # the hello: the server answers it
            if isinstance(self.answer, TransportClosed) or not self.answer:
                self._end = self.answer
            else:
                self.inbox += self.answer
        self.sent += data
        return len(data)

    def pending(self) -> int:
        if self._waits:
            return 0
        return len(self.inbox) or int(self._end is not None)  # the end is news to read

    def shutdown_write(self) -> Want | None:
        return None

    def close(self) -> None:
        self.sock.close()


def scripted(made: list[ScriptedTransport], **script: Any) -> Callable[..., ScriptedTransport]:
    """A ``plain_factory`` that makes ``ScriptedTransport``s and keeps them in ``made``."""

    def factory(sock: socket.socket) -> ScriptedTransport:
        made.append(ScriptedTransport(sock, **script))
        return made[-1]

    return factory


def quiet(peer: Peer) -> None:
    """A fake server's side for a scripted transport: it only waits for the end
    (beyond a failing test's last wait, so that only the test's failure shows)."""
    peer.expect_closed(3 * WAIT)


def test_a_read_that_wants_to_write_is_retried_when_the_socket_is_writable(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    """Nothing ever arrives on the socket: the welcome is held by the transport,
    whose first read wants to write. A client waiting for input after that
    answer, or waiting in the selector while bytes are pending, is never welcomed."""
    fake = fake_server(quiet)
    made: list[ScriptedTransport] = []
    factory = scripted(made, read_wants_write=True, answer=frame(welcome("alice")))
    client = make_client(fake.port, "alice", plain_factory=factory)
    welcomed = last(client, Welcomed)
    assert welcomed.welcome.name == "alice"
    (transport,) = made
    assert transport.answers == ["recv: Want.WRITE"]
    assert b'"hello"' in transport.sent


def test_a_write_that_wants_to_read_is_retried_once_input_came(
    fake_server: Callable[..., FakeServer], make_client: Callable[..., ChatClient]
) -> None:
    """The hello waits until the server's byte of the handshake is in, and is
    tried again then, not before: a client that waited for room to write after
    ``Want.READ`` would try it again and again while nothing has come."""
    go = threading.Event()

    def handshake(peer: Peer) -> None:
        assert go.wait(WAIT), "the test never let the handshake go on"
        peer.send_raw(b"\x16")
        peer.expect_closed()

    fake = fake_server(handshake)
    made: list[ScriptedTransport] = []
    factory = scripted(made, handshake=True, answer=frame(welcome("alice")))
    client = make_client(fake.port, "alice", plain_factory=factory)
    deadline = time.monotonic() + WAIT
    while not made and time.monotonic() < deadline:
        time.sleep(0.01)
    assert made, "the client never connected"
    (transport,) = made
    assert transport.wanted.wait(WAIT), "the hello was never tried"
    assert not transport.sent
    go.set()
    last(client, Welcomed)
    assert b'"hello"' in transport.sent
    sends = [answer for answer in transport.answers if answer.startswith("send")]
    assert sends == ["send: Want.READ"]  # tried once before the byte came, once after


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"", "The server closed the connection."),
        (TransportClosed("reset"), "The connection to the server was lost."),
    ],
)
def test_the_transports_fin_and_close_end_the_connection(
    fake_server: Callable[..., FakeServer],
    make_client: Callable[..., ChatClient],
    answer: bytes | TransportClosed,
    said: str,
) -> None:
    """``b""`` is the server's FIN and ``TransportClosed`` a lost connection,
    whatever the transport (before a welcome: the connect failed)."""
    fake = fake_server(quiet)
    made: list[ScriptedTransport] = []
    client = make_client(fake.port, "alice", plain_factory=scripted(made, answer=answer))
    failed = last(client, ConnectFailed)
    assert failed.message == said
    assert [type(event) for event in wait_for(client, Stopped)] == [Stopped]
    assert made[0].sock.fileno() == -1  # closed


def test_room_unavailable_on_reconnection_is_told_and_retried(
    fake_server: Callable[..., FakeServer],
    join: Callable[..., ChatClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server of a shared room that lost the room for a moment: say so, and
    try again (not for good, unlike a protocol version)."""
    monkeypatch.setattr(network, "BACKOFF_FIRST", 0.05)

    def welcome_then_close(peer: Peer) -> None:
        peer.send(welcome(peer.expect("hello")["name"]))

    def unavailable(peer: Peer) -> None:
        peer.expect("hello", protocol=1)
        peer.send(
            {
                "type": "error",
                "code": "room-unavailable",
                "message": "This server cannot reach the room's other servers at the moment.",
                "in_reply_to": "hello",
            }
        )

    fake = fake_server(welcome_then_close, unavailable, welcome_then_close)
    client = join(fake.port, "alice")
    events = wait_for(client, Welcomed, timeout=10.0)
    fake.finish()
    lost = [e for e in events if isinstance(e, ConnectionLost)]
    assert any("cannot reach the room" in e.message and e.retry_in > 0 for e in lost), lost
    assert events[-1].reconnected is True
    assert not any(isinstance(e, Stopped) for e in events)
