"""Encryption on the server: TLS from the first byte on the same port, the
modes' refusals, the handshake inside the loop, the server's identity.

TLS clients here use the standard library's ``ssl`` directly (not the
project's ``TlsTransport``), so that a bug there is not mirrored here: an
``SSLSocket`` over ``tests.wire.RawClient``'s socket, or an ``SSLObject``
over memory buffers where the test must decide how the bytes travel.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.chat_server import ChatServer
from server.config import TlsMode
from server.identity import IDENTITY_FILE, STALE_AFTER, IdentityError, load_identity
from server.protocol.transport import TLS_RECORD_MAX, TlsTransport, server_context
from tests.wire import Closed, RawClient, frame

ROOT = Path(__file__).resolve().parent.parent
POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls_client(server: ChatServer, name: str | None = None) -> RawClient:
    """A RawClient whose socket speaks TLS (the handshake bounded by its timeout)."""
    client = RawClient(server.port)
    try:
        client.sock = client_context().wrap_socket(client.sock)
    except BaseException:
        client.close()
        raise
    if name is not None:
        client.join(name)
    return client


def fingerprint_of(certificate: bytes) -> str:
    return "sha256:" + hashlib.sha256(certificate).hexdigest()


class MemoryTlsClient:
    """A TLS client whose every byte the test sends itself, over a blocking socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        # Each byte its own segment, so that the server reads them one at a time.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self._in, self._out, server_side=False)

    def close(self) -> None:
        self.sock.close()

    def first_flight(self) -> bytes:
        """The ClientHello, not yet sent."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self._out.read()

    def send_slowly(self, data: bytes) -> None:
        for index in range(len(data)):
            self.sock.sendall(data[index : index + 1])
            time.sleep(0.001)

    def handshake(self, *, byte_at_a_time: bool) -> None:
        for _ in range(100):  # a handshake takes two or three rounds
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.sock.sendall(self._out.read())  # the client's Finished
                return
            pending = self._out.read()
            if byte_at_a_time:
                self.send_slowly(pending)
            else:
                self.sock.sendall(pending)
            self._receive()
        pytest.fail("the handshake did not finish")

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed("closed by the server")
        self._in.write(data)

    def send(self, obj: dict) -> None:
        self.tls.write(frame(obj))
        self.sock.sendall(self._out.read())

    def recv_frame(self) -> bytes:
        """The next decrypted bytes (a frame or more), within the socket's timeout."""
        for _ in range(100):
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
        pytest.fail("no data over TLS")


@pytest.fixture
def memory_clients() -> Callable[[int], MemoryTlsClient]:
    opened: list[MemoryTlsClient] = []

    def open_(port: int) -> MemoryTlsClient:
        client = MemoryTlsClient(port)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


def client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- one room, both kinds ------------------------------------------------------


def test_a_tls_client_and_a_plaintext_client_chat_in_one_room(start_server, open_client) -> None:
    server = start_server()
    plain = open_client(server)
    welcome = plain.join("bob")
    assert welcome["tls_available"] is True and "secure" not in welcome
    assert welcome["insecure"] == ["bob"]
    with tls_client(server) as alice:
        assert alice.sock.version() == "TLSv1.3"
        assert server.identity is not None
        certificate = alice.sock.getpeercert(binary_form=True)
        assert fingerprint_of(certificate) == server.identity.fingerprint
        welcome = alice.join("alice")
        assert welcome["secure"] is True and "tls_available" not in welcome
        assert welcome["users"] == ["alice", "bob"] and welcome["insecure"] == ["bob"]
        plain.expect("joined", name="alice")
        alice.send({"type": "say", "text": "over tls"})
        alice.expect("message", text="over tls", **{"from": "alice"})
        plain.expect("message", text="over tls", **{"from": "alice"})
        plain.send({"type": "say", "text": "in plaintext"})
        plain.expect("message", text="in plaintext")
        alice.expect("message", text="in plaintext", **{"from": "bob"})
        with open_client(server) as carol:
            assert carol.join("Carol")["insecure"] == ["bob", "Carol"]  # sorted like users
            carol.send({"type": "rename", "name": "aaron"})
            carol.expect("renamed", new="aaron")
            alice.send({"type": "who"})
            users = alice.skip_until("users")
            assert users["users"] == ["aaron", "alice", "bob"]
            assert users["insecure"] == ["aaron", "bob"]
            carol.send({"type": "bye"})
            carol.expect_closed()
        alice.skip_until("left")
        alice.send({"type": "who"})
        assert alice.skip_until("users")["insecure"] == ["bob"]


def test_required_serves_tls_only_and_lists_nobody_insecure(start_server, open_client) -> None:
    server = start_server(tls=TlsMode.REQUIRED)
    plain = open_client(server)
    plain.send({"type": "hello", "name": "bob", "protocol": 1})
    error = plain.expect_error("tls-required")
    assert "in_reply_to" not in error  # sent before the connection's first frame counted
    plain.expect_closed()
    with tls_client(server, "alice") as alice:
        alice.send({"type": "who"})
        assert alice.expect("users") == {"type": "users", "users": ["alice"], "insecure": []}


def test_off_answers_a_client_hello_in_plaintext(start_server, open_client, tmp_path) -> None:
    server = start_server(tls=TlsMode.OFF, data_dir=tmp_path / "off")
    assert server.identity is None and not (tmp_path / "off" / IDENTITY_FILE).exists()
    client = open_client(server)
    client.send_raw(client_hello())
    error = client.expect_error("tls-unavailable")
    assert "in_reply_to" not in error
    client.expect_closed()
    # A plaintext welcome is as it always was: no encryption fields at all
    # (and no tls among the features offered).
    assert open_client(server).join("bob") == {
        "type": "welcome",
        "name": "bob",
        "users": ["bob"],
        "history_count": 0,
        "features": ["operators", "history-pages", "search", "files", "discovery"],
    }


def test_server_full_is_answered_in_plaintext_before_tls(start_server, open_client) -> None:
    server = start_server(max_clients=1)
    open_client(server, "first")
    refused = open_client(server)
    refused.send_raw(client_hello())
    refused.expect_error("server-full")
    refused.expect_closed()


# -- the handshake inside the loop --------------------------------------------


def test_a_handshake_fed_one_byte_at_a_time(start_server, memory_clients) -> None:
    server = start_server()
    client = memory_clients(server.port)
    client.handshake(byte_at_a_time=True)
    client.send({"type": "hello", "name": "slowpoke", "protocol": 1})
    assert b'"secure":true' in client.recv_frame()


def test_a_client_stalled_mid_handshake_delays_nobody_and_is_closed(
    start_server, open_client, memory_clients
) -> None:
    server = start_server(handshake_timeout=1.0)
    stalled = memory_clients(server.port)
    hello = stalled.first_flight()
    stalled.sock.sendall(hello[: len(hello) // 2])  # and never the rest
    finished_halfway = memory_clients(server.port)
    finished_halfway.sock.sendall(finished_halfway.first_flight())  # never its Finished
    started = time.monotonic()
    with tls_client(server, "alice") as alice, open_client(server, "bob") as bob:
        for index in range(5):
            bob.send({"type": "say", "text": f"still here {index}"})
            alice.skip_until("message", timeout=2.0)
    for client in (stalled, finished_halfway):
        client.sock.settimeout(8.0)
        received = b""
        while chunk := client.sock.recv(65536):  # the server's flight, if any, then its FIN
            received += chunk
        assert not received.startswith(b"\0")  # no plaintext frame after a ClientHello
    assert time.monotonic() - started < 8.0


# -- the identity ---------------------------------------------------------------


@POSIX_ONLY
def test_the_identity_is_made_once_private_and_reused(start_server, tmp_path) -> None:
    folder = tmp_path / "data"
    # Two servers on one folder at once: only without the history, which locks it.
    first = start_server(data_dir=folder, store=False)
    assert first.identity is not None and first.identity.created
    assert first.identity.path == folder / IDENTITY_FILE
    assert folder.stat().st_mode & 0o777 == 0o700
    assert first.identity.path.stat().st_mode & 0o777 == 0o600
    second = start_server(data_dir=folder, store=False)  # a restart, as far as it can tell
    assert second.identity is not None and not second.identity.created
    assert second.identity.fingerprint == first.identity.fingerprint
    with tls_client(second) as client:
        certificate = client.sock.getpeercert(binary_form=True)
    assert fingerprint_of(certificate) == first.identity.fingerprint
    assert sorted(os.listdir(folder)) == [IDENTITY_FILE]  # no temporary file left


def test_the_identity_certificate_is_what_clients_check(tmp_path) -> None:
    from cryptography import x509  # noqa: PLC0415

    identity = load_identity(tmp_path / "cert")
    certificate = x509.load_der_x509_certificate(identity.certificate)
    assert certificate.not_valid_after_utc.year == 9999
    assert certificate.not_valid_before_utc.timestamp() < time.time() - 86000
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert certificate.public_key().curve.name == "secp256r1"


def test_two_servers_starting_at_once_share_one_identity(tmp_path) -> None:
    folder = tmp_path / "race"
    found: list[str] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait(5)
        found.append(load_identity(folder).fingerprint)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(found) == 4 and len(set(found)) == 1


def test_an_abandoned_temporary_file_does_not_block_creation(tmp_path) -> None:
    folder = tmp_path / "cut-short"
    folder.mkdir()
    leftover = folder / (IDENTITY_FILE + ".tmp")
    leftover.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIG")  # a start cut short
    old = time.time() - STALE_AFTER - 5
    os.utime(leftover, (old, old))
    identity = load_identity(folder)
    assert identity.created and not leftover.exists()


def run_server(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "--data-dir", str(data_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_damaged_identity_is_a_clear_error_and_a_new_one_only_on_request(tmp_path) -> None:
    folder = tmp_path / "damaged"
    original = load_identity(folder)
    whole = original.path.read_bytes()
    original.path.write_bytes(whole[: len(whole) // 2])  # half-written
    result = run_server("--host", "127.0.0.1", "--port", "0", data_dir=folder)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"chat-server: The server's identity file {original.path}")
    assert "--new-identity" in result.stderr
    with pytest.raises(IdentityError):
        load_identity(folder)  # still refused: nothing replaced it
    assert original.path.read_bytes() == whole[: len(whole) // 2]
    renewed = run_server("--new-identity", "--fingerprint", data_dir=folder)
    assert renewed.returncode == 0, renewed.stderr
    fingerprint = renewed.stdout.strip()
    assert fingerprint == load_identity(folder).fingerprint != original.fingerprint
    assert (folder / (IDENTITY_FILE + ".old")).read_bytes() == whole[: len(whole) // 2]


def test_a_key_of_another_certificate_is_refused(tmp_path) -> None:
    one, two = load_identity(tmp_path / "one"), load_identity(tmp_path / "two")
    marker = "-----BEGIN CERTIFICATE-----"
    key = one.path.read_text().split(marker)[0]
    certificate = two.path.read_text().split(marker)[1]
    two.path.write_text(key + marker + certificate)  # one's key, two's certificate
    with pytest.raises(IdentityError, match="does not belong"):
        load_identity(tmp_path / "two")


def test_fingerprint_prints_the_identity_and_exits(tmp_path) -> None:
    folder = tmp_path / "fp"
    first = run_server("--fingerprint", data_dir=folder)
    assert first.returncode == 0, first.stderr
    assert "Back this file up" in first.stderr  # it made the identity
    again = run_server("--fingerprint", data_dir=folder)
    assert again.returncode == 0 and again.stderr == ""
    assert first.stdout == again.stdout == load_identity(folder).fingerprint + "\n"


def test_the_client_does_not_import_cryptography() -> None:
    # cryptography (a 13.8 MB extension) is the server's alone: the frozen
    # client must not carry it.
    code = "import sys, app.__main__; print('cryptography' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "False\n", result.stderr


def test_a_big_tls_write_leaves_the_memory_buffer_a_record_at_a_time() -> None:
    # A memory BIO keeps the largest size it ever held: were a whole
    # TLS_WRITE_MAX piece encrypted into it at once, every connection once
    # sent a big welcome would keep that much for good (76 kB a connection
    # instead of 43 in the 10,000-client benchmark).
    identity = load_identity(Path(os.environ["LAN_CHAT_DATA_DIR"]))  # this test's own folder
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client_sock = socket.create_connection(listener.getsockname())
        server_sock, _ = listener.accept()
    client = client_context().wrap_socket(client_sock, do_handshake_on_connect=False)
    try:
        server_sock.setblocking(False)
        client.settimeout(5)
        server = TlsTransport(server_sock, server_context(str(identity.path)), server_side=True)
        done = threading.Thread(target=client.do_handshake)
        done.start()
        deadline = time.monotonic() + 5
        while server.handshake() is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        done.join(5)
        held: list[int] = []
        real = server._tls

        class Watching:
            def write(self, data: memoryview) -> int:
                written = real.write(data)
                held.append(server._outgoing.pending)
                return written

        server._tls = Watching()  # type: ignore[assignment]
        big = b"x" * 200_000
        assert server.send(big) == len(big)  # loopback takes it all
        received = b""
        while len(received) < len(big):
            received += client.recv(65536)
        assert received == big
        assert held and max(held) <= TLS_RECORD_MAX + 1024, max(held)
    finally:
        client.close()
        server_sock.close()
