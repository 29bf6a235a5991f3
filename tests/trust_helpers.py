"""Known servers for the tests whose subject is not trust."""

from __future__ import annotations

from pathlib import Path

from app.trust import FILE_NAME, KnownServers, Pin
from server.chat_server import ChatServer
from server.config import TlsMode
from server.protocol.fingerprint import is_fingerprint

# Ports of the real servers the tests run that speak TLS (``serving``):
# clients with ``PlaintextAgreed`` reach them over TLS, and every other
# server (the tests' fake ones) in plaintext.
# (By the server's id: a test may close a server before its fixture does.)
_TLS_PORTS: dict[int, int] = {}


def serving(server: ChatServer) -> None:
    """``server`` is serving: clients that are not about trust use TLS with it."""
    if server.config.tls is not TlsMode.OFF:
        _TLS_PORTS[id(server)] = server.port


def stopped(server: ChatServer) -> None:
    _TLS_PORTS.pop(id(server), None)


class PlaintextAgreed(KnownServers):
    """In memory, for tests that are not about trust: as if the person had
    checked every server's identity and agreed to plaintext with every
    server that offers no TLS (the tests' fake ones)."""

    def __init__(self) -> None:
        super().__init__()
        self._tls_seen: set[tuple[str, int]] = set()

    def lookup(self, fingerprint: str) -> Pin | None:
        found = super().lookup(fingerprint)
        if found is None and is_fingerprint(fingerprint):
            return Pin(fingerprint, 0.0, ())
        return found

    def plaintext_allowed(self, host: str, port: int) -> bool:
        return port not in _TLS_PORTS.values() and (host, port) not in self._tls_seen

    def forbid_plaintext(self, host: str, port: int) -> None:
        self._tls_seen.add((host, port))
        super().forbid_plaintext(host, port)


def agree_to_plaintext(config_dir: Path, port: int, fingerprint: str | None = None) -> None:
    """The known servers in ``config_dir`` say the person agreed to plaintext
    with 127.0.0.1:``port`` and, given its ``fingerprint``, trusts the
    server there, so a client process started with ``--connect`` joins
    without asking."""
    known = KnownServers(config_dir / FILE_NAME)
    if fingerprint is not None:
        known.pin(fingerprint, "127.0.0.1", port)
    else:
        known.allow_plaintext("127.0.0.1", port)
