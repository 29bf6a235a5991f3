"""The server's identity: one long-lived self-signed certificate and its key.

How this works: ``load_identity`` reads ``identity.pem`` (the private key,
then the certificate, PEM) from the data folder, or makes it on the first
start: an ECDSA P-256 key and a certificate valid from a day ago to
9999-12-31T23:59:59Z (RFC 5280's "no expiry"), CA:FALSE, for server
authentication, with subject and authority key identifiers (Python 3.13's
strict checks reject a certificate without them). Clients pin its
fingerprint (``server.protocol.fingerprint``), so it is never made again
silently: a file that is there but cannot be used is an ``IdentityError``
(a sentence for people), and a new identity is made only when asked
(``renew``), the old file kept beside it as ``identity.pem.old``.

Creation is atomic: the file is written under a temporary name opened with
``O_EXCL`` and mode 0600, flushed to disk, then moved into place. Two
servers starting at once on one data folder race for that temporary name;
the loser waits for the winner's file and reads it, so both serve the same
identity. A temporary file left by a start that was cut short is taken
for abandoned once it is ``STALE_AFTER`` seconds old.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.protocol.fingerprint import fingerprint

IDENTITY_FILE = "identity.pem"
STALE_AFTER = 30.0  # seconds: a temporary file older than this was abandoned
RACE_WAIT = 5.0  # seconds the loser of a creation race waits for the winner's file
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class IdentityError(Exception):
    """The identity file cannot be made or used; the message is for people."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The server's certificate (DER), where it is kept, and its fingerprint."""

    path: Path
    certificate: bytes
    fingerprint: str
    created: bool  # made by this call (the person should back it up)


def identity_path(folder: Path) -> Path:
    return folder / IDENTITY_FILE


def load_identity(folder: Path, *, renew: bool = False) -> Identity:
    """The identity kept in ``folder``, made there if there is none (or ``renew``).

    Raises ``IdentityError`` when the file is there but unreadable, or
    cannot be written.
    """
    path = identity_path(folder)
    try:
        _make_folder(folder)
        if renew and path.exists():
            os.replace(path, path.with_name(IDENTITY_FILE + ".old"))
        if not path.exists():
            created = _create(path)
            if created is not None:
                return created
        return _read(path)
    except OSError as exc:
        raise IdentityError(
            f"Cannot use the server's identity file {path}: {exc.strerror or exc}."
        ) from None


def _make_folder(folder: Path) -> None:
    if folder.is_dir():
        return  # someone's own folder (--data-dir): its permissions are theirs
    # 0700: the folder holds the private key; nobody else needs to list it.
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def _create(path: Path) -> Identity | None:
    """Write a new identity to ``path``; ``None`` if another process is writing one."""
    temporary = path.with_name(IDENTITY_FILE + ".tmp")
    pem, der = _new_certificate()
    for _ in range(2):  # a second try after removing an abandoned temporary file
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if _wait_for(path, temporary):
                return None  # the winner's file is there: read it
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            continue
        if path.exists():
            # Another process made it between our look and our O_EXCL: its
            # temporary file was gone because it had been moved into place.
            os.close(fd)
            temporary.unlink()
            return None
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _sync_folder(path.parent)
        return Identity(path, der, fingerprint(der), created=True)
    raise IdentityError(
        f"Another server seems to be creating {path} and does not finish; "
        f"if none is running, delete {temporary} and start again."
    )


def _wait_for(path: Path, temporary: Path) -> bool:
    """Whether ``path`` appears while another process writes ``temporary``
    (``False``: the temporary file looks abandoned)."""
    deadline = time.monotonic() + RACE_WAIT
    while time.monotonic() < deadline:
        if path.exists():
            return True
        try:
            age = time.time() - temporary.stat().st_mtime
        except FileNotFoundError:
            return path.exists()  # renamed into place, or given up
        if age > STALE_AFTER:
            return False
        time.sleep(0.02)
    return path.exists()


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder)."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_certificate() -> tuple[bytes, bytes]:
    """A new key and self-signed certificate: (key and certificate PEM, certificate DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LAN Chat server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    return pem, certificate.public_bytes(serialization.Encoding.DER)


def _read(path: Path) -> Identity:
    """The identity in ``path``, checked: a key, a certificate, and that they belong together."""
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
        certificate = x509.load_pem_x509_certificate(data)
        matches = key.public_key() == certificate.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(
            f"The server's identity file {path} is damaged or incomplete ({exc}). "
            "Put back your backup of it; or start with --new-identity to make a new "
            "one, after which everyone's client warns that the server has changed."
        ) from None
    if not matches:
        raise IdentityError(
            f"The server's identity file {path} holds a key that does not belong to its "
            "certificate. Put back your backup of it, or start with --new-identity."
        )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Identity(path, der, fingerprint(der), created=False)
