"""The discovery responder (PROTOCOL.md, "Finding servers on the LAN").

How this works: the server listens for UDP datagrams on its own port
number, on the addresses it listens on for TCP (every interface: IPv4's
``0.0.0.0``, where broadcasts arrive, and IPv6's ``::`` for unicast). Its
sockets sit in the accepting thread's selector (``ChatServer``), which calls
``on_readable``: each address gets ``RATE`` datagrams a second looked at
(whatever they hold), and each query ``parse_query`` accepts among them
is answered with one datagram no longer than the query, by unicast to its
sender. So the server can neither amplify traffic nor be made to flood
one address, and a flood from one address costs little more than reading
it. Replies describe the room as it is now (``describe``). Nothing here
blocks: a reply the socket will not take at once is dropped, as UDP would
drop it anyway.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable

from server.protocol import Announcement, encode_reply, parse_query
from server.protocol.discovery import MAX_DATAGRAM

logger = logging.getLogger("server")

RATE = 5
"""Queries answered per second per address at most."""
DATAGRAMS_PER_WAKE = 64
"""Datagrams read per readable socket before the accepting thread moves on."""
MAX_ADDRESSES = 4096
"""Addresses whose rate is tracked; past it, windows that have ended are forgotten."""


class DiscoveryResponder:
    """Answers ``discover`` queries on ``sockets`` with what ``describe`` says."""

    def __init__(
        self,
        sockets: list[socket.socket],
        describe: Callable[[], Announcement],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sockets = sockets
        self._describe = describe
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # address: window start, answers

    @classmethod
    def bind(
        cls, hosts: Iterable[str], port: int, describe: Callable[[], Announcement]
    ) -> DiscoveryResponder | None:
        """A responder on UDP ``port`` of each of ``hosts`` (``""``: every interface),
        or ``None`` (said in the log) if not one socket could be bound."""
        sockets: list[socket.socket] = []
        failed: list[str] = []
        for host in hosts:
            for family, address in _addresses(host, port):
                try:
                    sockets.append(_udp(family, address))
                except OSError as exc:
                    failed.append(f"{address[0]} ({exc.strerror or exc})")
        if not sockets:
            logger.warning(
                "Nobody can find this server on the network: it cannot listen for UDP on "
                "port %d of %s. People can still connect by its address.",
                port,
                ", ".join(failed),
            )
            return None
        if failed:  # IPv6 turned off, most likely: IPv4 is what broadcasts use
            logger.debug("discovery: not on %s", ", ".join(failed))
        return cls(sockets, describe)

    def on_readable(self, sock: socket.socket) -> None:
        """Answer what ``sock`` holds, ``DATAGRAMS_PER_WAKE`` at most."""
        for _ in range(DATAGRAMS_PER_WAKE):
            try:
                datagram, sender = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Windows reports an earlier reply's ICMP "port unreachable"
                # here as a reset; it is about that reply, not this socket.
                if isinstance(exc, ConnectionResetError) or exc.errno == errno.ECONNREFUSED:
                    continue
                logger.debug("discovery: receive failed: %s", exc)
                return
            # The rate first: it costs a dict lookup, parsing costs more, and
            # a flood from one address is that address's allowance spent.
            if not self._allowed(str(sender[0])) or not parse_query(datagram):
                continue
            reply = encode_reply(self._describe(), len(datagram))
            if reply is None:
                continue
            try:
                sock.sendto(reply, sender)
            except OSError as exc:  # a full buffer, an address gone: UDP loses it anyway
                logger.debug("discovery: reply to %s failed: %s", sender[0], exc)

    def _allowed(self, address: str) -> bool:
        now = self._clock()
        start, answered = self._windows.get(address, (now, 0))
        if now - start >= 1.0:
            start, answered = now, 0
        if answered >= RATE:
            return False
        if len(self._windows) >= MAX_ADDRESSES and address not in self._windows:
            self._windows = {a: w for a, w in self._windows.items() if now - w[0] < 1.0}
            if len(self._windows) >= MAX_ADDRESSES:
                return False  # that many asking within a second: answer those known
        self._windows[address] = (start, answered + 1)
        return True

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    if not host or host in ("0.0.0.0", "::"):
        found: list[tuple[int, tuple[str, int]]] = [(socket.AF_INET, ("0.0.0.0", port))]
        if socket.has_ipv6:
            found.append((socket.AF_INET6, ("::", port)))
        return found
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return [(family, (host, port))]


def _udp(family: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
