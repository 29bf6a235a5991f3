"""The client's trust in servers, without Tk: TLS always, a pinned identity,
nothing sent before the person decides, plaintext only when they agreed.

``TrustServer`` is a small server built here: it tells TLS from plaintext by
the first byte as the protocol says, speaks TLS with ``server_context`` and
a self-signed certificate made in the test, and keeps every frame it was
sent, so a test can check that no hello reached it. The plaintext-only
server is the real ``ChatServer`` of main (it answers a ClientHello with
``bad-frame``), or this one told to answer ``tls-unavailable``.
"""

from __future__ import annotations

import json
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import trust
from app.network import (
    ChatClient,
    ConnectFailed,
    ConnectionLost,
    IdentityChanged,
    PlaintextNeeded,
    Received,
    Stopped,
    TrustNeeded,
    Welcomed,
)
from app.trust import KnownServers
from server.chat_server import ChatServer
from server.config import TlsMode
from server.identity import load_identity
from server.protocol import Users
from server.protocol.fingerprint import invite, parse_invite
from server.protocol.transport import server_context

HOST = "127.0.0.1"
WAIT = 5.0


def make_identity(folder: Path) -> tuple[Path, str]:
    """A server identity (the server's own code makes it) and its fingerprint."""
    identity = load_identity(folder)
    return identity.path, identity.fingerprint


def framed(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return struct.pack(">I", len(data)) + data


def read_frame(sock: socket.socket | ssl.SSLSocket) -> dict[str, Any] | None:
    """One frame, or ``None`` at the end (or a timeout, or a broken stream)."""
    buffer = b""
    try:
        while len(buffer) < 4:
            chunk = sock.recv(4 - len(buffer))
            if not chunk:
                return None
            buffer += chunk
        (length,) = struct.unpack(">I", buffer)
        if not 1 <= length <= 65536:
            return None
        data = b""
        while len(data) < length:
            chunk = sock.recv(length - len(data))
            if not chunk:
                return None
            data += chunk
    except (OSError, ssl.SSLError):
        return None
    return json.loads(data)


class TrustServer:
    """One thread, connections one after the other. TLS connections get
    ``welcome`` (with ``secure``, and ``extra`` fields) after a hello;
    plaintext ones get ``plain_answer``: a welcome frame, or an error sent
    before TLS. ``tls=False``: a plaintext-only server, which answers a
    ClientHello with ``error`` ``tls_error`` in plaintext, or closes
    (``tls_error=None``). ``received`` keeps every frame that came in."""

    def __init__(
        self,
        pem: Path | None,
        *,
        tls: bool = True,
        tls_error: str | None = "tls-unavailable",
        extra: dict[str, Any] | None = None,
        plain_welcome: dict[str, Any] | None = None,
        plain_error: str | None = None,
        after_welcome: list[dict[str, Any]] | None = None,
    ) -> None:
        self.context = server_context(str(pem)) if pem is not None else None
        self.tls = tls
        self.tls_error = tls_error
        self.extra = extra or {}
        self.plain_welcome = plain_welcome or {}
        self.plain_error = plain_error
        self.after_welcome = after_welcome or []
        self.received: list[dict[str, Any]] = []
        self.connections = {"tls": 0, "plain": 0}
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="trust-server")
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(WAIT)
                try:
                    self._serve(sock)
                except (OSError, ssl.SSLError):
                    pass  # the client went away; the test checks what it saw

    def _serve(self, sock: socket.socket) -> None:
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first[0] == 0x16:
            self.connections["tls"] += 1
            if not self.tls or self.context is None:
                if self.tls_error is not None:
                    sock.sendall(framed({"type": "error", "code": self.tls_error, "message": "No"}))
                # The ClientHello is read before closing: a socket closed with
                # unread bytes resets the connection, and the client may lose the error.
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
                return
            with self.context.wrap_socket(sock, server_side=True) as tls:
                self._chat(tls, {"secure": True, **self.extra})
        else:
            self.connections["plain"] += 1
            if self.plain_error is not None:
                self.received.append(read_frame(sock) or {})
                sock.sendall(framed({"type": "error", "code": self.plain_error, "message": "No"}))
                return
            self._chat(sock, {**self.plain_welcome})

    def _chat(self, sock: socket.socket | ssl.SSLSocket, fields: dict[str, Any]) -> None:
        deadline = time.monotonic() + 3 * WAIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not readable(sock, 0.2):
                continue
            frame = read_frame(sock)
            if frame is None:
                return
            self.received.append(frame)
            if frame.get("type") == "hello":
                name = frame["name"]
                welcome = {"type": "welcome", "name": name, "users": [name], "history_count": 0}
                sock.sendall(framed({**welcome, **fields}))
                for later in self.after_welcome:
                    sock.sendall(framed(later))
            elif frame.get("type") == "bye":
                return

    def hellos(self) -> list[dict[str, Any]]:
        return [frame for frame in self.received if frame.get("type") == "hello"]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(4 * WAIT)
        self.listener.close()
        assert not self.thread.is_alive()


def readable(sock: socket.socket | ssl.SSLSocket, seconds: float) -> bool:
    """Whether a read would find something (TLS may hold decrypted bytes already)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], seconds)[0])


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    return make_identity(tmp_path / "server")


@pytest.fixture
def serve() -> Iterator[Callable[..., TrustServer]]:
    running: list[TrustServer] = []

    def start(pem: Path | None, **options: Any) -> TrustServer:
        running.append(TrustServer(pem, **options))
        return running[-1]

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def known(tmp_path: Path) -> KnownServers:
    return KnownServers(tmp_path / "config" / trust.FILE_NAME)


@pytest.fixture
def make_client() -> Iterator[Callable[..., ChatClient]]:
    clients: list[ChatClient] = []

    def make(port: int, name: str = "alice", **options: Any) -> ChatClient:
        client = ChatClient(HOST, port, name, **options)
        clients.append(client)
        client.start()
        return client

    yield make
    for client in clients:
        client.close(3.0)
        assert not client.running


def wait_for(client: ChatClient, wanted: type | tuple[type, ...], limit: float = WAIT) -> list[Any]:
    """Events until one of ``wanted``, which comes last; fails after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    seen: list[Any] = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = client.events.get(timeout=remaining)
        except queue.Empty:
            break
        seen.append(event)
        if isinstance(event, wanted):
            return seen
    raise AssertionError(f"no {wanted} within {limit} s; saw {seen}")


def kinds(events: list[Any]) -> list[str]:
    return [type(event).__name__ for event in events]


# -- first contact, invites, pins -------------------------------------------------


def test_a_new_server_is_asked_about_and_pinned_once_accepted(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem)
    client = make_client(server.port, known=known)
    question = wait_for(client, TrustNeeded)[-1]
    assert (question.host, question.port, question.fingerprint) == (HOST, server.port, fp)
    time.sleep(0.2)  # the server would have a hello by now, were one sent
    assert server.received == []  # nothing, not even a name, before the answer
    client.trust(True)
    welcomed = wait_for(client, Welcomed)[-1]
    assert welcomed.pin is not None and welcomed.pin.fingerprint == fp
    assert [hello["name"] for hello in server.hellos()] == ["alice"]
    # Kept on disk, by fingerprint, with the address as a hint.
    again = KnownServers(known.path)
    pin = again.lookup(fp)
    assert pin is not None and pin.addresses == (f"{HOST}:{server.port}",)
    assert abs(pin.since - time.time()) < 60


def test_a_pinned_server_is_not_asked_about_again(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem)
    known.pin(fp, HOST, server.port)
    client = make_client(server.port, known=known)
    events = wait_for(client, Welcomed)
    assert "TrustNeeded" not in kinds(events)
    assert server.connections == {"tls": 1, "plain": 0}


def test_a_known_fingerprint_at_a_new_address_is_recognised(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem)
    known.pin(fp, "192.168.1.20", 4000)  # where it was before DHCP moved it
    client = make_client(server.port, known=known)
    events = wait_for(client, Welcomed)
    assert "TrustNeeded" not in kinds(events) and "IdentityChanged" not in kinds(events)
    pin = known.lookup(fp)
    assert pin is not None and pin.addresses == ("192.168.1.20:4000", f"{HOST}:{server.port}")


def test_an_invite_that_matches_needs_no_question_and_pins(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem)
    pasted = parse_invite(invite(HOST, server.port, fp))
    client = make_client(server.port, known=known, invite=pasted)
    events = wait_for(client, Welcomed)
    assert "TrustNeeded" not in kinds(events)
    assert known.lookup(fp) is not None


def test_a_changed_identity_is_a_hard_stop_before_any_hello(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
    tmp_path: Path,
) -> None:
    pem, fp = identity
    _, other = make_identity(tmp_path / "before")
    server = serve(pem)
    known.pin(other, HOST, server.port)  # the one trusted here until now
    client = make_client(server.port, known=known)
    events = wait_for(client, Stopped)
    changed = next(event for event in events if isinstance(event, IdentityChanged))
    assert changed.fingerprint == fp and changed.pin is not None
    assert changed.pin.fingerprint == other
    assert "TrustNeeded" not in kinds(events)
    assert any(isinstance(event, ConnectFailed) for event in events)
    assert server.received == [] and server.connections["tls"] == 1  # no retry either
    assert known.lookup(fp) is None  # and nothing pinned


def test_an_invite_that_does_not_match_is_a_hard_stop(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
    tmp_path: Path,
) -> None:
    pem, _ = identity
    _, other = make_identity(tmp_path / "invited")
    server = serve(pem)
    pasted = parse_invite(invite(HOST, server.port, other))
    client = make_client(server.port, known=known, invite=pasted)
    events = wait_for(client, Stopped)
    changed = next(event for event in events if isinstance(event, IdentityChanged))
    assert changed.invite
    assert server.received == []


def test_declining_a_new_server_sends_nothing_and_stops(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem)
    client = make_client(server.port, known=known)
    wait_for(client, TrustNeeded)
    client.trust(False)
    events = wait_for(client, Stopped)
    failed = next(event for event in events if isinstance(event, ConnectFailed))
    assert "identity" in failed.message
    assert server.received == [] and known.lookup(fp) is None


def test_an_unanswered_question_gives_up(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, _ = identity
    server = serve(pem)
    client = make_client(server.port, known=known, trust_timeout=0.3)
    events = wait_for(client, Stopped)
    assert kinds(events).count("TrustNeeded") == 1
    assert server.received == []


# -- servers without encryption ---------------------------------------------------------


def test_a_plaintext_only_server_is_asked_about_then_works(
    start_server: Callable[..., ChatServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    """A real server started with ``--tls off`` answers a ClientHello in
    plaintext (``tls-unavailable``): the person is asked once, and after yes
    it works."""
    server = start_server(tls=TlsMode.OFF)
    client = make_client(server.port, known=known)
    question = wait_for(client, PlaintextNeeded)[-1]
    assert (question.host, question.port) == (HOST, server.port)
    client.trust(True)
    welcomed = wait_for(client, Welcomed)[-1]
    assert welcomed.pin is None and welcomed.welcome.name == "alice"
    assert KnownServers(known.path).plaintext_allowed(HOST, server.port)
    client.close()
    second = make_client(server.port, "bob", known=known)
    assert "PlaintextNeeded" not in kinds(wait_for(second, Welcomed))


def test_tls_unavailable_asks_and_no_sends_nothing(
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    server = serve(None, tls=False)
    client = make_client(server.port, known=known)
    wait_for(client, PlaintextNeeded)
    client.trust(False)
    events = wait_for(client, Stopped)
    assert any(isinstance(event, ConnectFailed) for event in events)
    assert server.received == [] and server.connections == {"tls": 1, "plain": 0}
    assert not known.plaintext_allowed(HOST, server.port)


def test_a_server_once_seen_with_tls_that_offers_none_is_a_hard_stop(
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
    tmp_path: Path,
) -> None:
    _, fp = make_identity(tmp_path / "before")
    server = serve(None, tls=False)
    known.pin(fp, HOST, server.port)
    known.allow_plaintext(HOST, server.port)  # even so: pinning it took that back
    client = make_client(server.port, known=known)
    events = wait_for(client, Stopped)
    changed = next(event for event in events if isinstance(event, IdentityChanged))
    assert changed.fingerprint is None
    assert "PlaintextNeeded" not in kinds(events)
    assert server.received == [] and server.connections["plain"] == 0


def test_a_plaintext_welcome_offering_tls_moves_to_tls(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem, plain_welcome={"tls_available": True})
    known.allow_plaintext(HOST, server.port)
    client = make_client(server.port, known=known)
    question = wait_for(client, TrustNeeded)[-1]
    assert question.fingerprint == fp
    assert not known.plaintext_allowed(HOST, server.port)
    client.trust(True)
    welcomed = wait_for(client, Welcomed)[-1]
    assert welcomed.pin is not None


def test_tls_required_after_plaintext_was_agreed_moves_to_tls(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    """The server has turned TLS on (``--tls required``) since the person agreed
    to plaintext: the client tries TLS and asks about the new identity."""
    pem, fp = identity
    server = serve(pem, plain_error="tls-required")
    known.allow_plaintext(HOST, server.port)
    client = make_client(server.port, known=known)
    assert wait_for(client, TrustNeeded)[-1].fingerprint == fp
    assert not known.plaintext_allowed(HOST, server.port)
    assert server.connections == {"tls": 1, "plain": 1}


# -- in the room ------------------------------------------------------------------------


def test_insecure_members_come_with_the_welcome_and_users(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    users = {"type": "users", "users": ["alice", "bob"], "insecure": ["bob"]}
    server = serve(pem, extra={"insecure": ["carol"]}, after_welcome=[users])
    known.pin(fp, HOST, server.port)
    client = make_client(server.port, known=known)
    assert wait_for(client, Welcomed)[-1].insecure == ("carol",)
    received = wait_for(client, Received)[-1]
    assert isinstance(received.message, Users) and received.insecure == ("bob",)


def test_an_absent_insecure_list_means_nothing_known(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    pem, fp = identity
    server = serve(pem)
    known.pin(fp, HOST, server.port)
    client = make_client(server.port, known=known)
    assert wait_for(client, Welcomed)[-1].insecure is None


def test_a_mistyped_insecure_list_is_a_broken_welcome(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
) -> None:
    # ``insecure`` is a field of the protocol's welcome: not a list of names
    # is bad-field, as any mistyped field, and the client drops the server.
    pem, fp = identity
    server = serve(pem, extra={"insecure": "bob"})
    known.pin(fp, HOST, server.port)
    client = make_client(server.port, known=known)
    events = wait_for(client, (Welcomed, ConnectFailed, ConnectionLost))
    assert not isinstance(events[-1], Welcomed)
    assert "does not understand" in events[-1].message


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("kicked", "You were removed from the room. The server said: No"),
        ("banned", "You are banned from this server. The server said: No"),
        ("too-many-attempts", "Too many wrong passwords came from this computer. Try again later."),
    ],
)
def test_kicked_banned_and_too_many_attempts_stop_reconnecting(
    identity: tuple[Path, str],
    serve: Callable[..., TrustServer],
    known: KnownServers,
    make_client: Callable[..., ChatClient],
    *,
    code: str,
    words: str,
) -> None:
    pem, fp = identity
    server = serve(pem, after_welcome=[{"type": "error", "code": code, "message": "No"}])
    known.pin(fp, HOST, server.port)
    client = make_client(server.port, known=known)
    events = wait_for(client, Stopped)
    lost = next(event for event in events if isinstance(event, ConnectionLost))
    assert lost.retry_in < 0 and lost.message == words
    assert server.connections["tls"] == 1


# -- the store ----------------------------------------------------------------------------


def test_a_damaged_store_counts_as_empty_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / trust.FILE_NAME
    path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="app.trust"):
        store = KnownServers(path)
    assert store.pinned_at(HOST, 1) is None
    assert any("Ignoring unreadable" in record.getMessage() for record in caplog.records)


def test_the_store_is_bounded_and_keeps_the_first_since(tmp_path: Path) -> None:
    path = tmp_path / trust.FILE_NAME
    store = KnownServers(path)
    fp = "sha256:" + "ab" * 32
    first = store.pin(fp, HOST, 1)
    for port in range(2, 2 + 2 * trust.MAX_ADDRESSES):
        store.pin(fp, HOST, port)
    pin = KnownServers(path).lookup(fp)
    assert pin is not None and pin.since == first.since
    assert len(pin.addresses) == trust.MAX_ADDRESSES
    assert pin.addresses[-1] == f"{HOST}:{1 + 2 * trust.MAX_ADDRESSES}"
    saved = json.loads(path.read_text(encoding="utf-8"))
    too_many = [
        {"fingerprint": f"sha256:{n:064x}", "since": 1.0, "addresses": []}
        for n in range(trust.MAX_SERVERS + 50)
    ]
    path.write_text(json.dumps({**saved, "servers": too_many}), encoding="utf-8")
    loaded = KnownServers(path)
    assert loaded.lookup(f"sha256:{0:064x}") is None  # the oldest went
    assert loaded.lookup(f"sha256:{trust.MAX_SERVERS + 49:064x}") is not None
    assert not list(tmp_path.glob(".known-*"))  # no temporary file left
