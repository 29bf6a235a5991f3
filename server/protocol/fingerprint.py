"""A server's identity as people see it: its fingerprint, invites, safety words.

How this works: the fingerprint is the SHA-256 of the server certificate's
DER bytes, written ``sha256:`` and 64 lowercase hex digits (PROTOCOL.md,
"Encryption"). Clients pin all 32 bytes. People compare less: an invite
``HOST:PORT#CODE`` carries the first 16 bytes as lowercase base32 (``CODE``,
optionally in groups joined by ``-``), and without an invite the client
shows the first 88 bits as eight words of the BIP-39 English list, which
two people can read aloud to each other. Matching N shown bits costs an
attacker about 2^N certificates hashed; 2^88 is out of reach.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import cache

from mnemonic import Mnemonic

PREFIX = "sha256:"
INVITE_BYTES = 16  # of the fingerprint, in an invite's code
WORD_COUNT = 8  # safety words, 11 bits each: 88 bits
_WORD_BITS = 11
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
# What a person may paste: host (a name, IPv4, or [IPv6]), port, code.
_INVITE = re.compile(
    r"\s*(?P<host>\[[0-9A-Fa-f:.%a-zA-Z]+\]|[^\s:#\[\]]+):(?P<port>[0-9]{1,5})"
    r"#(?P<code>[A-Za-z2-7-]+)\s*"
)


def fingerprint(certificate: bytes) -> str:
    """``sha256:`` and the hex SHA-256 of a certificate's DER bytes."""
    return PREFIX + hashlib.sha256(certificate).hexdigest()


def is_fingerprint(text: str) -> bool:
    return _FINGERPRINT.fullmatch(text) is not None


def _digest(fingerprint_text: str) -> bytes:
    if not is_fingerprint(fingerprint_text):
        raise ValueError(f"not a fingerprint: {fingerprint_text[:80]!r}")
    return bytes.fromhex(fingerprint_text.removeprefix(PREFIX))


def invite_code(fingerprint_text: str, *, group: int = 0) -> str:
    """The code of an invite: base32 of the first 16 bytes, lowercase, no padding.

    ``group``: joined by ``-`` every that many characters (0: not grouped).
    """
    code = base64.b32encode(_digest(fingerprint_text)[:INVITE_BYTES]).decode()
    code = code.rstrip("=").lower()
    if group > 0:
        code = "-".join(code[i : i + group] for i in range(0, len(code), group))
    return code


def format_host(host: str) -> str:
    """``host`` as an invite writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def invite(host: str, port: int, fingerprint_text: str) -> str:
    """``HOST:PORT#CODE``, the code in groups of four for reading."""
    return f"{format_host(host)}:{port}#{invite_code(fingerprint_text, group=4)}"


@dataclass(frozen=True, slots=True)
class Invite:
    """A parsed invite: where to connect, and the code the server must match."""

    host: str  # without brackets
    port: int
    code: str  # lowercase, without separators

    def matches(self, fingerprint_text: str) -> bool:
        """Whether the server's fingerprint is the one this invite names."""
        if not is_fingerprint(fingerprint_text):
            return False
        return hmac.compare_digest(self.code, invite_code(fingerprint_text))


def parse_invite(text: str) -> Invite | None:
    """The invite in ``text``, or ``None`` if it is not one (a plain host is not)."""
    if len(text) > 300:
        return None
    found = _INVITE.fullmatch(text)
    if found is None:
        return None
    port = int(found["port"])
    code = found["code"].replace("-", "").lower()
    # 16 bytes are 26 base32 characters; anything else cannot match.
    if not 1 <= port <= 65535 or len(code) != 26:
        return None
    return Invite(found["host"].strip("[]"), port, code)


@cache
def _words() -> tuple[str, ...]:
    return tuple(Mnemonic("english").wordlist)


def safety_words(fingerprint_text: str) -> tuple[str, ...]:
    """The first 88 bits of the fingerprint as eight BIP-39 English words."""
    value = int.from_bytes(_digest(fingerprint_text), "big")
    words = _words()
    shift = 256 - _WORD_BITS
    chosen = []
    for _ in range(WORD_COUNT):
        chosen.append(words[(value >> shift) & ((1 << _WORD_BITS) - 1)])
        shift -= _WORD_BITS
    return tuple(chosen)
