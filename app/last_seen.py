"""The last public message each server's room showed this person; no Tk here.

How this works: one small JSON file beside the settings maps a server's
key to the highest public message id the person has seen there. The key
is the server's pinned fingerprint when it has one (addresses are only
hints: a server back at another address is still the same room), else
its ``host:port``. On return, messages above that id are the ones "new
since you left". The file is replaced atomically on ``save``, keeps the
``MAX_SERVERS`` most recently seen servers, and a damaged or hand-edited
one counts as empty (with a log line): it can never stop the app.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from app.network import MAX_ID
from app.settings import config_path, write_json
from app.trust import Pin, address

logger = logging.getLogger("app.last_seen")

FILE_NAME = "last_seen.json"
MAX_SERVERS = 200  # the most recently seen are kept
MAX_KEY = 270  # characters of a key: a fingerprint or a "host:port"
MAX_FILE = 256 * 1024  # bytes read of the file at most


def last_seen_path() -> Path:
    """Where the last ids seen are kept: the settings' folder."""
    return config_path().with_name(FILE_NAME)


def server_key(host: str, port: int, pin: Pin | None) -> str:
    """A server's key: its fingerprint when pinned, else its address."""
    return pin.fingerprint if pin is not None else address(host, port)


class LastSeen:
    """Last ids seen, by server key; ``path`` ``None``: in memory only. Tk thread only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._ids: dict[str, int] = {}  # least recently seen first
        self._dirty = False
        if path is not None:
            self._load(path)

    def get(self, key: str) -> int | None:
        return self._ids.get(key)

    def saw(self, key: str, message_id: int) -> None:
        """The person has seen the room's messages up to ``message_id`` (kept
        in memory: ``save`` writes it). An id lower than the one kept is ignored."""
        if not 0 < message_id < MAX_ID or len(key) > MAX_KEY:
            return
        old = self._ids.pop(key, 0)
        self._ids[key] = max(old, message_id)
        self._dirty = self._dirty or self._ids[key] != old
        while len(self._ids) > MAX_SERVERS:
            del self._ids[next(iter(self._ids))]

    def save(self) -> None:
        """Replace the file atomically if anything changed; a failure is logged."""
        if self.path is None or not self._dirty:
            return
        try:
            write_json(self.path, {"version": 1, "servers": self._ids}, prefix=".last-seen-")
        except OSError as exc:
            logger.warning("Cannot save the last messages seen to %s: %s", self.path, exc)
            return
        self._dirty = False

    def _load(self, path: Path) -> None:
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_FILE + 1)
            if len(raw) > MAX_FILE:
                raise ValueError("the file is too large")
            self._ids = _parsed(json.loads(raw.decode("utf-8")))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable last messages seen in %s: %s", path, exc)


def _parsed(saved: Any) -> dict[str, int]:
    if not isinstance(saved, dict) or saved.get("version") != 1:
        raise ValueError("not a file of last messages seen")
    servers = saved.get("servers")
    if not isinstance(servers, dict):
        raise ValueError("not a file of last messages seen")
    kept = [
        (key, value)
        for key, value in servers.items()
        if isinstance(key, str)
        and 0 < len(key) <= MAX_KEY
        and type(value) is int
        and 0 < value < MAX_ID
    ]
    return dict(kept[-MAX_SERVERS:])
