"""The servers this client trusts, kept beside the settings; no Tk here.

How this works: each trusted server is a ``Pin``: its fingerprint (all 32
bytes, ``sha256:…``), since when it is trusted, and the addresses it was
seen at. Pins are found by fingerprint: addresses are only hints, so a
server that comes back at a new DHCP address with the fingerprint it had
is recognised (the address is added), and only a known address answering
with another fingerprint is an alarm. Beside the pins, the addresses
whose person agreed to talk without encryption (the server offered none)
are remembered, each once; an address that is pinned is never one of them.

The file (``known_servers.json`` in the settings' folder) is replaced
atomically on every change; a damaged one counts as empty, with a log
line, and every list in it is bounded, so a hand-edited file cannot make
the app slow. The network thread and the Tk thread both use one store: a
lock guards it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from app.settings import config_path, write_json
from server.protocol.fingerprint import format_host, is_fingerprint

logger = logging.getLogger("app.trust")

FILE_NAME = "known_servers.json"
MAX_SERVERS = 500  # pins kept; the oldest go first
MAX_ADDRESSES = 8  # hints per pin; the newest are kept
MAX_PLAINTEXT = 500  # addresses allowed without encryption
MAX_ADDRESS = 270  # characters of one "host:port"
MAX_FILE = 1024 * 1024  # bytes read of the file at most


@dataclass(frozen=True, slots=True)
class Pin:
    """A trusted server: its fingerprint, since when (epoch seconds), where seen."""

    fingerprint: str
    since: float
    addresses: tuple[str, ...]


def address(host: str, port: int) -> str:
    """The key of a server's address: ``host:port``, IPv6 in brackets, lowercase."""
    return f"{format_host(host.strip().lower())}:{port}"


def known_path() -> Path:
    """Where the trusted servers are kept: the settings' folder."""
    return config_path().with_name(FILE_NAME)


class KnownServers:
    """Trusted servers and plaintext permissions; ``path`` ``None``: in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pins: dict[str, Pin] = {}  # by fingerprint, oldest first
        self._plaintext: dict[str, float] = {}  # address -> since
        if path is not None:
            self._load(path)

    # -- looking up --------------------------------------------------------------

    def lookup(self, fingerprint: str) -> Pin | None:
        with self._lock:
            return self._pins.get(fingerprint)

    def pinned_at(self, host: str, port: int) -> Pin | None:
        """The pin last seen at this address, if any."""
        where = address(host, port)
        with self._lock:
            for pin in reversed(self._pins.values()):
                if where in pin.addresses:
                    return pin
        return None

    def plaintext_allowed(self, host: str, port: int) -> bool:
        with self._lock:
            return address(host, port) in self._plaintext

    # -- changing ------------------------------------------------------------------

    def pin(self, fingerprint: str, host: str, port: int) -> Pin:
        """Trust ``fingerprint``, seen at this address (kept since the first time)."""
        if not is_fingerprint(fingerprint):
            raise ValueError("not a fingerprint")
        where = address(host, port)
        with self._lock:
            old = self._pins.pop(fingerprint, None)
            since = old.since if old is not None else time.time()
            hints = [a for a in (old.addresses if old else ()) if a != where] + [where]
            pin = Pin(fingerprint, since, tuple(hints[-MAX_ADDRESSES:]))
            self._pins[fingerprint] = pin
            # The address now speaks TLS: no other pin's hint, no plaintext.
            for other in list(self._pins.values()):
                if other is not pin and where in other.addresses:
                    kept = tuple(a for a in other.addresses if a != where)
                    self._pins[other.fingerprint] = Pin(other.fingerprint, other.since, kept)
            self._plaintext.pop(where, None)
            while len(self._pins) > MAX_SERVERS:
                del self._pins[next(iter(self._pins))]
            self._save()
        return pin

    def forget(self, fingerprint: str) -> None:
        with self._lock:
            if self._pins.pop(fingerprint, None) is not None:
                self._save()

    def allow_plaintext(self, host: str, port: int) -> None:
        """The person agreed to talk to this address without encryption."""
        where = address(host, port)
        with self._lock:
            self._plaintext.pop(where, None)
            self._plaintext[where] = time.time()
            while len(self._plaintext) > MAX_PLAINTEXT:
                del self._plaintext[next(iter(self._plaintext))]
            self._save()

    def forbid_plaintext(self, host: str, port: int) -> None:
        """The address offers TLS now: never plaintext again without asking."""
        with self._lock:
            if self._plaintext.pop(address(host, port), None) is not None:
                self._save()

    # -- the file ------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_FILE + 1)
            if len(raw) > MAX_FILE:
                raise ValueError("the file is too large")
            saved = json.loads(raw.decode("utf-8"))
            pins, plaintext = _parsed(saved)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable trusted servers in %s: %s", path, exc)
            return
        self._pins, self._plaintext = pins, plaintext

    def _save(self) -> None:
        """Replace the file atomically (lock held); a failure is logged, never raised."""
        if self.path is None:
            return
        data = {
            "version": 1,
            "servers": [
                {"fingerprint": p.fingerprint, "since": p.since, "addresses": list(p.addresses)}
                for p in self._pins.values()
            ],
            "plaintext": [{"address": a, "since": s} for a, s in self._plaintext.items()],
        }
        try:
            write_json(self.path, data, prefix=".known-")
        except OSError as exc:
            logger.warning("Cannot save trusted servers to %s: %s", self.path, exc)


def _parsed(saved: Any) -> tuple[dict[str, Pin], dict[str, float]]:
    """The pins and plaintext permissions in a loaded file; ``ValueError`` if it is not one."""
    if not isinstance(saved, dict) or saved.get("version") != 1:
        raise ValueError("not a file of trusted servers")
    servers, plain = saved.get("servers", []), saved.get("plaintext", [])
    if not isinstance(servers, list) or not isinstance(plain, list):
        raise ValueError("not a file of trusted servers")
    pins: dict[str, Pin] = {}
    for entry in servers[-MAX_SERVERS:]:
        if not isinstance(entry, dict):
            continue
        fp, since, hints = entry.get("fingerprint"), entry.get("since"), entry.get("addresses")
        if not isinstance(fp, str) or not is_fingerprint(fp):
            continue
        if not _is_time(since) or not isinstance(hints, list):
            continue
        kept = tuple(h for h in hints if isinstance(h, str) and 0 < len(h) <= MAX_ADDRESS)
        pins[fp] = Pin(fp, float(since), kept[-MAX_ADDRESSES:])
    plaintext: dict[str, float] = {}
    for entry in plain[-MAX_PLAINTEXT:]:
        if isinstance(entry, dict) and isinstance(where := entry.get("address"), str):
            since = entry.get("since")
            if 0 < len(where) <= MAX_ADDRESS and _is_time(since):
                plaintext[where] = float(since)
    return pins, plaintext


def _is_time(value: Any) -> TypeGuard[float]:
    return type(value) in (int, float)
