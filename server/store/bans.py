"""The server's bans: by name identity, by address or prefix, timed or for ever.

How this works: a ``BanStore`` keeps its bans in memory behind a lock of
its own (the accept thread, every loop and the console ask it) and, when
given a path, in ``bans.json`` there: written whole to a temporary file,
flushed to disk and moved over the old one (``os.replace``), so a crash
leaves the old list or the new one, never half of either. Bans are rare
and small, so every change writes the file on the caller's thread, never
under the room's lock; matching never writes. Expired bans are dropped
whenever the list is looked at, and the file loses them at its next write.

Addresses are kept as networks: an IPv4 address is its /32, an IPv6 one
its /64 (one machine often holds many addresses of one /64, and a home
network gets one /64), and a prefix (``192.168.1.0/24``) is itself. An
IPv4 peer seen through a dual-stack socket (``::ffff:192.168.1.7``) is
matched as the IPv4 address it is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.protocol import BanEntry

BANS_FILE = "bans.json"
FILE_VERSION = 1
MAX_BANS = 10_000  # a bound on the file and on every match's work
MAX_REASON = 200  # code points of a reason kept

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BanStoreError(Exception):
    """The bans file cannot be read or written; the message says why, for people."""


def address_group(host: str) -> Network | None:
    """The network a peer's ``host`` counts as (IPv4 /32, IPv6 /64), or ``None``
    when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # no IPv6 zone
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ipaddress.IPv4Network(ip.ipv4_mapped)
        return ipaddress.IPv6Network((ip, 64), strict=False)
    return ipaddress.IPv4Network(ip)


def parse_network(text: str) -> Network:
    """An address (grouped like ``address_group``) or a prefix, as a network.

    Raises ``ValueError`` for anything else.
    """
    if "/" not in text:
        group = address_group(text)
        if group is None:
            raise ValueError(f"{text!r} is not an IP address")
        return group
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network((mapped, max(0, network.prefixlen - 96)), strict=False)
    return network


@dataclass(frozen=True, slots=True)
class Ban:
    """One ban. ``identity`` is the banned name's identity, ``name`` its spelling
    as given; ``address`` a network's text; ``expires`` ``None`` is for ever."""

    id: int
    created: float
    name: str | None = None
    identity: str | None = None
    address: str | None = None
    reason: str | None = None
    by: str | None = None
    expires: float | None = None

    def entry(self) -> BanEntry:
        """The ban as a ``ban-list`` item."""
        return BanEntry(
            self.id,
            self.created,
            name=self.name,
            address=self.address,
            reason=self.reason,
            by=self.by,
            expires=self.expires,
        )

    def network(self) -> Network | None:
        return None if self.address is None else ipaddress.ip_network(self.address)


class BanStore:
    """Bans in memory and, with ``path``, in that file. Thread-safe.

    Raises ``BanStoreError`` when the file exists but cannot be read or
    holds no ban list: starting without bans that were set would be worse
    than not starting.
    """

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._bans: dict[int, Ban] = {}
        self._networks: dict[int, Network] = {}
        self._next_id = 1
        if path is not None:
            self._load(path)

    @classmethod
    def in_folder(cls, folder: Path, clock: Callable[[], float] = time.time) -> BanStore:
        """The store of the data folder ``folder`` (its ``bans.json``)."""
        return cls(folder / BANS_FILE, clock)

    # -- queries -------------------------------------------------------------

    def in_force(self) -> list[Ban]:
        """The bans in force, oldest first."""
        with self._lock:
            self._prune(self._clock())
            return list(self._bans.values())

    def match_address(self, host: str) -> Ban | None:
        """The ban in force, if any, on the peer address ``host``."""
        group = address_group(host)
        if group is None:
            return None
        with self._lock:
            self._prune(self._clock())
            for ban_id, network in self._networks.items():
                if network.version == group.version and group.subnet_of(network):  # type: ignore[arg-type]
                    return self._bans[ban_id]
        return None

    def match_name(self, identity: str) -> Ban | None:
        """The ban in force, if any, on the name identity ``identity``."""
        with self._lock:
            self._prune(self._clock())
            for ban in self._bans.values():
                if ban.identity == identity:
                    return ban
        return None

    # -- changes -------------------------------------------------------------

    def add(
        self,
        *,
        name: str | None = None,
        identity: str | None = None,
        address: str | None = None,
        duration: float | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> Ban:
        """Add a ban and write the file. ``address`` is an address or prefix.

        Raises ``ValueError`` for an address that is neither, or when the
        store is full; ``BanStoreError`` when the file cannot be written
        (the ban is then not added).
        """
        network = None if address is None else parse_network(address)
        with self._lock:
            now = self._clock()
            self._prune(now)
            if len(self._bans) >= MAX_BANS:
                raise ValueError(f"There are {MAX_BANS} bans already; lift some first.")
            ban = Ban(
                self._next_id,
                now,
                name=name,
                identity=identity,
                address=None if network is None else str(network),
                reason=None if reason is None else reason[:MAX_REASON],
                by=by,
                expires=None if duration is None else now + duration,
            )
            self._bans[ban.id] = ban
            if network is not None:
                self._networks[ban.id] = network
            self._next_id += 1
            try:
                self._save()
            except BanStoreError:
                self._forget(ban.id)
                raise
            return ban

    def keep(
        self,
        *,
        name: str | None,
        identity: str | None,
        address: str | None,
        expires: float | None,
        reason: str | None,
        by: str | None,
    ) -> Ban | None:
        """Keep a ban another server made (a room several servers share), unless
        one on the same name and address is here already or it has ended.

        Raises what ``add`` raises.
        """
        now = self._clock()
        if expires is not None and expires <= now:
            return None
        if self.matching(identity, address):
            return None
        return self.add(
            name=name,
            identity=identity,
            address=address,
            duration=None if expires is None else expires - now,
            reason=reason,
            by=by,
        )

    def matching(self, identity: str | None, address: str | None) -> list[Ban]:
        """The bans in force on exactly this name identity and address (or prefix)."""
        network = None if address is None else str(parse_network(address))
        with self._lock:
            self._prune(self._clock())
            return [
                ban
                for ban in self._bans.values()
                if ban.identity == identity and ban.address == network
            ]

    def remove(self, ban_id: int) -> Ban | None:
        """Lift the ban ``ban_id`` and write the file; the ban, or ``None`` if there is none."""
        with self._lock:
            self._prune(self._clock())
            ban = self._bans.get(ban_id)
            if ban is None:
                return None
            self._forget(ban_id)
            try:
                self._save()
            except BanStoreError:
                self._bans[ban_id] = ban  # still in the file, so still in force
                network = ban.network()
                if network is not None:
                    self._networks[ban_id] = network
                self._bans = dict(sorted(self._bans.items()))
                raise
            return ban

    # -- the lock is held ----------------------------------------------------

    def _forget(self, ban_id: int) -> None:
        del self._bans[ban_id]
        self._networks.pop(ban_id, None)

    def _prune(self, now: float) -> None:
        expired = [b.id for b in self._bans.values() if b.expires is not None and b.expires <= now]
        for ban_id in expired:
            self._forget(ban_id)

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "version": FILE_VERSION,
            "next_id": self._next_id,
            "bans": [
                {k: v for k, v in asdict(b).items() if v is not None} for b in self._bans.values()
            ],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as file:
                json.dump(data, file, ensure_ascii=False, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise BanStoreError(f"Cannot write the bans file {self.path}: {exc}") from exc

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            raise BanStoreError(f"Cannot read the bans file {path}: {exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
                raise ValueError("not a version 1 bans file")
            bans = [_ban_from_json(item) for item in data["bans"]][:MAX_BANS]
            next_id = data["next_id"]
            if type(next_id) is not int:
                raise ValueError("next_id is not an integer")
        except (ValueError, KeyError, TypeError) as exc:
            raise BanStoreError(
                f"The bans file {path} is damaged ({exc}); fix or remove it."
            ) from exc
        for ban in sorted(bans, key=lambda b: b.id):
            self._bans[ban.id] = ban
            network = ban.network()
            if network is not None:
                self._networks[ban.id] = network
        self._next_id = max([next_id, *(b.id + 1 for b in bans)])
        self._prune(self._clock())


_BAN_KINDS: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "created": (int, float),
    "name": (str,),
    "identity": (str,),
    "address": (str,),
    "reason": (str,),
    "by": (str,),
    "expires": (int, float),
}


def _ban_from_json(item: Any) -> Ban:
    if not isinstance(item, dict) or "id" not in item or "created" not in item:
        raise ValueError("a ban lacks its id or creation time")
    values = {}
    for key, kinds in _BAN_KINDS.items():
        value = item.get(key)
        if value is None:
            continue
        if type(value) not in kinds:
            raise ValueError(f"a ban's {key} has the wrong type")
        values[key] = value
    ban = Ban(**values)
    if ban.address is not None:
        ban.network()  # raises ValueError for a damaged address
    if ban.identity is None and ban.address is None:
        raise ValueError(f"ban {ban.id} bans nothing")
    return ban
