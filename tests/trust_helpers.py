"""Known servers for the tests that talk plaintext to main's server."""

from __future__ import annotations

from pathlib import Path

from app.trust import FILE_NAME, KnownServers


class PlaintextAgreed(KnownServers):
    """In memory; the person has agreed to plaintext with every server not
    pinned (main's server and the tests' fake ones offer no TLS), so the
    client connects in plaintext at once, as it did before TLS."""

    def plaintext_allowed(self, host: str, port: int) -> bool:
        return True


def agree_to_plaintext(config_dir: Path, port: int) -> None:
    """The known servers in ``config_dir`` say the person agreed to plaintext
    with 127.0.0.1:``port``, so a client process started with ``--connect``
    joins main's server (which offers no TLS) without asking."""
    KnownServers(config_dir / FILE_NAME).allow_plaintext("127.0.0.1", port)
