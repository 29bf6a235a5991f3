"""A known-servers store for the tests that talk plaintext to main's server."""

from __future__ import annotations

from app.trust import KnownServers


class PlaintextAgreed(KnownServers):
    """In memory; the person has agreed to plaintext with every server not
    pinned (main's server and the tests' fake ones offer no TLS), so the
    client connects in plaintext at once, as it did before TLS."""

    def plaintext_allowed(self, host: str, port: int) -> bool:
        return True
