"""Passwords the server checks (the operator's; the room's later), and guessing limits.

How this works: a ``Secret`` is made once, at start, from the password the
server was given; it keeps only an Argon2id hash of it (what a file or a
memory dump could give away costs an attacker 19 MiB and tens of
milliseconds per guess) and, for the checks themselves, an HMAC-SHA256 tag
under a random key that exists only in this process. A check is then an
HMAC and ``hmac.compare_digest``: microseconds, in constant time, so a
storm of wrong guesses costs the loops nothing and leaks nothing.

A ``GuessCounter`` limits wrong guesses per address (IPv4 /32, IPv6 /64;
PROTOCOL.md's per-address limits): a bucket of ``burst`` guesses refilling
one per ``refill`` seconds, shared by every password the server checks and
by every connection from that address. Addresses it exempts (loopback, by
default) are never limited. It holds at most ``MAX_TRACKED`` addresses:
a full one forgets those whose buckets have refilled.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from server.store.bans import address_group

GUESS_BURST = 10  # wrong guesses an address may make at once
GUESS_REFILL = 60.0  # seconds for one more
MAX_TRACKED = 10_000  # addresses a GuessCounter remembers at most
# Argon2id as OWASP's first choice: 19 MiB, two passes, one lane.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_ITERATIONS = 2


def _slow_hash(password: str) -> str:
    """The password's Argon2id hash in PHC form (scrypt where cryptography lacks Argon2)."""
    salt = secrets.token_bytes(16)
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # noqa: PLC0415
    except ImportError:  # cryptography before 44
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=2**15, r=8, p=1, maxmem=64 * 1024 * 1024, dklen=32
        )
        return f"$scrypt$ln=15,r=8,p=1${salt.hex()}${digest.hex()}"
    kdf = Argon2id(
        salt=salt,
        length=32,
        iterations=ARGON2_ITERATIONS,
        lanes=1,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive_phc_encoded(password.encode())


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A password the server checks, kept only as a slow hash and a keyed tag."""

    phc: str  # the slow hash, in PHC string form: all that could ever be kept at rest
    _key: bytes = field(repr=False)
    _tag: bytes = field(repr=False)

    @classmethod
    def from_password(cls, password: str) -> Secret:
        key = secrets.token_bytes(32)
        return cls(_slow_hash(password), key, _hmac(key, password))

    def check(self, candidate: str) -> bool:
        """Whether ``candidate`` is the password, in constant time."""
        return hmac.compare_digest(_hmac(self._key, candidate), self._tag)

    def __repr__(self) -> str:
        return "Secret(…)"


def _hmac(key: bytes, text: str) -> bytes:
    # surrogatepass: a lone surrogate from JSON is still some candidate, not a crash.
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (the default exemption)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class GuessCounter:
    """Wrong password guesses per address; see the module docstring. Thread-safe."""

    def __init__(
        self,
        burst: int = GUESS_BURST,
        refill: float = GUESS_REFILL,
        exempt: Callable[[str], bool] = loopback,
    ) -> None:
        self.burst = burst
        self.refill = refill
        self._exempt = exempt
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, stamp)

    def retry_after(self, host: str, now: float) -> float | None:
        """Seconds until ``host`` may guess again, or ``None`` if it may now."""
        key = self._key(host)
        if key is None:
            return None
        with self._lock:
            tokens = self._tokens(key, now)
        return None if tokens >= 1.0 else (1.0 - tokens) * self.refill

    def charge(self, host: str, now: float) -> None:
        """Count one wrong guess from ``host``."""
        key = self._key(host)
        if key is None:
            return
        with self._lock:
            tokens = self._tokens(key, now)
            if key not in self._buckets and len(self._buckets) >= MAX_TRACKED:
                self._forget_refilled(now)
            self._buckets[key] = (max(0.0, tokens - 1.0), now)

    def _key(self, host: str) -> str | None:
        if self._exempt(host):
            return None
        group = address_group(host)
        return host if group is None else str(group)

    def _tokens(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self.burst)
        tokens, stamp = held
        return min(float(self.burst), tokens + max(0.0, now - stamp) / self.refill)

    def _forget_refilled(self, now: float) -> None:
        full = [k for k in self._buckets if self._tokens(k, now) >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED:  # every one is guessing: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k][1])
            del self._buckets[oldest]
