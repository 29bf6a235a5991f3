"""The discovery datagrams of PROTOCOL.md, "Finding servers on the LAN".

How this works: a client sends ``encode_query()`` (one JSON object, no
length prefix, padded to ``QUERY_SIZE`` bytes) to the broadcast address
of each of its networks, on the port it looks for servers on; a server
answers each query that ``parse_query`` accepts with ``encode_reply``,
one datagram no longer than the query (the room's name is shortened to
fit), by unicast. ``parse_reply`` is the client's side: it accepts only a
well-formed answer and makes every field safe to show. Nothing here
touches a socket.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from server.protocol.messages import PROTOCOL_VERSION, compact_json
from server.protocol.rules import LONE_SURROGATE, TEXT_REMOVED

MIN_QUERY = 256
"""A server ignores shorter queries: its reply is never longer than the query."""
QUERY_SIZE = 1024
"""What a client pads its queries to (under a typical 1,500-byte MTU's payload)."""
MAX_DATAGRAM = 2048
"""The longest query a server reads, and the longest reply a client takes."""
MAX_ROOM_NAME = 64
"""The longest room name a reply carries (in characters)."""
TLS_MODES = ("off", "auto", "required")

_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,32}")
_MAX_USERS = 10**9


@dataclass(frozen=True, slots=True)
class Announcement:
    """A server's answer to ``discover``: what the connection dialog lists.

    ``tls`` is the mode in effect (``required`` when there is a password);
    ``fingerprint`` (``sha256:…``) is absent for a server without an identity.
    """

    room: str
    port: int
    users: int
    tls: str
    password: bool
    version: str
    fingerprint: str | None = None
    protocol: int = PROTOCOL_VERSION

    def to_wire(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "type": "server",
            "protocol": self.protocol,
            "room": self.room,
            "port": self.port,
            "users": self.users,
            "tls": self.tls,
        }
        if self.fingerprint is not None:
            obj["fingerprint"] = self.fingerprint
        obj["password"] = self.password
        obj["version"] = self.version
        return obj


def encode_query(size: int = QUERY_SIZE) -> bytes:
    """A ``discover`` datagram padded to exactly ``size`` bytes (at least ``MIN_QUERY``)."""
    size = max(size, MIN_QUERY)
    head = _compact({"type": "discover", "protocol": PROTOCOL_VERSION, "pad": ""})
    pad = size - len(head)
    return _compact({"type": "discover", "protocol": PROTOCOL_VERSION, "pad": " " * pad})


def parse_query(datagram: bytes) -> bool:
    """Whether ``datagram`` is a query to answer: a ``discover`` object of at
    least ``MIN_QUERY`` bytes (and at most ``MAX_DATAGRAM``, read no further)."""
    if not MIN_QUERY <= len(datagram) <= MAX_DATAGRAM:
        return False
    try:
        obj = json.loads(datagram)
    except (ValueError, RecursionError):
        return False
    return type(obj) is dict and obj.get("type") == "discover"


def encode_reply(announcement: Announcement, limit: int) -> bytes | None:
    """The reply datagram, at most ``limit`` bytes (the query's length): the room's
    name is shortened, an ellipsis saying so, until it fits; ``None`` if even
    an empty name would not."""
    room = announcement.room[:MAX_ROOM_NAME]
    obj = announcement.to_wire()
    while True:
        obj["room"] = room if room == announcement.room else room + "…"
        datagram = _compact(obj)
        if len(datagram) <= limit:
            return datagram
        if not room:
            return None
        # Each character takes 1 to 4 bytes: cut what is over, at least one.
        over = len(datagram) - limit
        room = room[: max(0, len(room) - max(1, over // 4))]


def parse_reply(datagram: bytes) -> Announcement | None:
    """A server's answer as the client may show it, or ``None`` for anything else."""
    if len(datagram) > MAX_DATAGRAM:
        return None
    try:
        obj = json.loads(datagram)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or obj.get("type") != "server":
        return None
    room, port, users = obj.get("room"), obj.get("port"), obj.get("users")
    tls, password, version = obj.get("tls"), obj.get("password"), obj.get("version")
    fingerprint, protocol = obj.get("fingerprint"), obj.get("protocol")
    if (
        type(room) is not str
        or type(port) is not int
        or not 1 <= port <= 65535
        or type(users) is not int
        or not 0 <= users <= _MAX_USERS
        or tls not in TLS_MODES
        or type(password) is not bool
        or type(protocol) is not int
    ):
        return None
    if fingerprint is not None and (
        type(fingerprint) is not str or not _FINGERPRINT.fullmatch(fingerprint)
    ):
        return None
    shown_version = version if type(version) is str and _VERSION.fullmatch(version) else "?"
    return Announcement(
        room=_shown_room(room),
        port=port,
        users=users,
        tls=tls,
        password=password,
        version=shown_version,
        fingerprint=fingerprint,
        protocol=protocol,
    )


def _shown_room(room: str) -> str:
    """One line, no controls or direction overrides, at most ``MAX_ROOM_NAME`` characters."""
    kept = LONE_SURROGATE.sub("\ufffd", room[: 4 * MAX_ROOM_NAME].translate(TEXT_REMOVED))
    cleaned = " ".join(kept.split())
    if len(cleaned) > MAX_ROOM_NAME:
        cleaned = cleaned[: MAX_ROOM_NAME - 1] + "…"
    return cleaned


def _compact(obj: dict[str, Any]) -> bytes:
    # Non-ASCII as UTF-8 (2 to 4 bytes), not as 6-byte escapes: a longer name
    # fits. A lone surrogate has no UTF-8 form: it goes out as "?".
    return compact_json(obj).encode("utf-8", "replace")
