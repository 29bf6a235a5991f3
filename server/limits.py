"""Per-address limits on connections (PROTOCOL.md, "Operators and moderation").

How this works: the accept thread asks ``admit(host, now)`` before a
connection is counted. The answer is ``None`` (the connection counts
towards its address: call ``release(host)`` once when it closes) or the
fatal error to refuse it with, ``throttled`` (with ``retry_after``) or
``too-many-connections``, which the caller sends in plaintext before it
reads anything and then closes. Addresses are grouped like bans
(``server.store.bans.address_group``: IPv4 /32, IPv6 /64, an IPv4-mapped
IPv6 address as its IPv4 one); each group is a small int here, which is
cheaper to make and hash than an ``ipaddress`` network on every accept.

Every attempt counts towards its group's rate, refused or not: more than
``rate`` in ``window`` seconds blocks the group for ``block`` seconds (or
until the window allows one more, if that is later), and while it is
blocked every attempt is ``throttled``. The rate is not enforced in the
first ``grace`` seconds (a restart's wave of reconnects), only recorded.

Two tables, bounded in different ways:

- open connections per group: a group is in it only while it has one
  open, so it holds at most as many groups as the server has connections
  (``max_clients``);
- recent attempts per group (the last ``rate`` times and the block's end):
  an LRU (an ``OrderedDict``, the group seen last at its end) of at most
  ``max_tracked`` groups; one more evicts the group seen longest ago. A
  flood of distinct addresses thus costs at most ``max_tracked`` entries,
  at the price that a group is forgotten (and its block with it) once that
  many other groups connected after its last attempt; a blocked group that
  keeps trying stays at the recent end.

There is no global limit (anyone could lock everyone out); exempt
addresses (loopback by default) skip both tables, and the server's guess
counter takes the same exemption (``exempt``). Thread-safe: one lock, held
for a few dictionary operations (the accept thread admits, the I/O threads
release).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from server.protocol import ErrorCode, RemoteProtocolError
from server.store.bans import Network, parse_network

if TYPE_CHECKING:
    from server.config import ServerConfig

logger = logging.getLogger("server")

MAX_TRACKED = 10_000  # groups whose recent attempts are remembered

_IPV6_GROUP = 1 << 64  # an IPv6 group's key: this bit above its /64 prefix


class _Recent:
    """One group's recent attempts (the last ``rate``) and the end of its block."""

    __slots__ = ("blocked_until", "times")

    def __init__(self, rate: int) -> None:
        self.times: deque[float] = deque(maxlen=rate)
        self.blocked_until = 0.0


def parse_exempt(text: str) -> tuple[str, ...]:
    """``--ip-limit-exempt``'s LIST: addresses or prefixes, comma-separated, or
    ``none``. Raises ``ValueError`` naming the first entry that is neither."""
    if text.strip().lower() == "none":
        return ()
    entries = tuple(part.strip() for part in text.split(",") if part.strip())
    if not entries:
        raise ValueError("the list is empty (use none for no exemption)")
    for entry in entries:
        _exempt_network(entry)
    return entries


def _exempt_network(text: str) -> Network:
    """An exempt address is that address alone (not its /64, unlike a ban); a
    prefix is itself. Raises ``ValueError`` for anything else."""
    if "/" in text:
        return parse_network(text)
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ipaddress.ip_network(ip)


class AddressLimits:
    """The per-address limits; see the module docstring."""

    def __init__(
        self,
        *,
        max_open: int,
        rate: int,
        window: float,
        block: float,
        exempt: Iterable[str] = (),
        grace: float = 0.0,
        started: float = 0.0,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.max_open = max_open
        self.rate = rate
        self.window = window
        self.block = block
        self.max_tracked = max_tracked
        self._enforce_from = started + grace
        # (version, first, last) as ints: a few comparisons per accept, not
        # ``ip in network``'s microseconds.
        self._exempt = tuple(
            (net.version, int(net.network_address), int(net.broadcast_address))
            for net in map(_exempt_network, exempt)
        )
        self._lock = threading.Lock()
        self._open: dict[int, int] = {}
        self._recent: OrderedDict[int, _Recent] = OrderedDict()

    @classmethod
    def from_config(cls, config: ServerConfig, started: float) -> AddressLimits:
        """The limits ``config`` asks for, their grace running from ``started``
        (``time.monotonic``)."""
        return cls(
            max_open=config.max_per_ip,
            rate=config.ip_rate,
            window=config.ip_rate_window,
            block=config.ip_block,
            exempt=config.ip_limit_exempt,
            grace=config.ip_rate_grace,
            started=started,
        )

    def exempt(self, host: str) -> bool:
        """Whether ``host`` is exempt from the per-address limits (a host that
        is not an IP address is: it has no address to count)."""
        return self._key(host) is None

    def admit(self, host: str, now: float) -> RemoteProtocolError | None:
        """Count a new connection from ``host`` at ``now`` (``time.monotonic``),
        or the fatal error to refuse it with (then nothing is counted)."""
        key = self._key(host)
        if key is None:
            return None
        with self._lock:
            recent = self._recent.get(key)
            if recent is None:
                if len(self._recent) >= self.max_tracked:
                    self._recent.popitem(last=False)
                recent = self._recent[key] = _Recent(self.rate)
            else:
                self._recent.move_to_end(key)
            if now < recent.blocked_until:
                return _throttled(recent.blocked_until - now)
            times = recent.times
            over = len(times) == self.rate and now - times[0] < self.window
            if over and now >= self._enforce_from:
                recent.blocked_until = max(now + self.block, times[0] + self.window)
                logger.warning("throttled %s: more than %d new connections", host, self.rate)
                return _throttled(recent.blocked_until - now)
            times.append(now)
            held = self._open.get(key, 0)
            if held >= self.max_open:
                return RemoteProtocolError(
                    ErrorCode.TOO_MANY_CONNECTIONS,
                    f"Your address has {held} connections open already; close one first.",
                )
            self._open[key] = held + 1
        return None

    def release(self, host: str) -> None:
        """A connection ``admit`` counted has closed."""
        key = self._key(host)
        if key is None:
            return
        with self._lock:
            held = self._open.pop(key, 0) - 1
            if held > 0:
                self._open[key] = held

    def open_count(self, host: str) -> int:
        """Connections counted for ``host``'s group now."""
        key = self._key(host)
        return 0 if key is None else self._open.get(key, 0)

    def tracked(self) -> tuple[int, int]:
        """How many groups each table holds: (with open connections, recently seen)."""
        return len(self._open), len(self._recent)

    def _key(self, host: str) -> int | None:
        """``host``'s group as an int, or ``None`` when it is exempt or no IP address."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])  # no IPv6 zone
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        version, number = ip.version, int(ip)
        for exempt_version, first, last in self._exempt:
            if version == exempt_version and first <= number <= last:
                return None
        return _IPV6_GROUP | number >> 64 if version == 6 else number


def _throttled(wait: float) -> RemoteProtocolError:
    seconds = max(1, math.ceil(wait))
    return RemoteProtocolError(
        ErrorCode.THROTTLED,
        f"Too many new connections from your address; try again in {seconds} seconds.",
        details={"retry_after": seconds},
    )
