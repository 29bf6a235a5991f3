"""Finding servers on the LAN (PROTOCOL.md, "Finding servers on the LAN"); no Tk here.

How this works: ``Browser.search`` starts one thread that opens a UDP
socket (``SO_BROADCAST`` set, an ephemeral port), sends
``encode_query()`` to every target the ``targets`` function gives, once
at the start and once more after ``RESEND_SECONDS`` (broadcasts on Wi-Fi
go unacknowledged and get lost), and reads answers for ``LISTEN_SECONDS``.
Each answer that ``parse_reply`` accepts is a ``Found`` server, posted on
the browser's queue, which the Tk thread drains with ``after()`` as it
drains the network's: the same server answering twice (on two networks,
or to both queries) is kept once, by its fingerprint, else by its
address and port; at most ``MAX_SERVERS`` are kept and at most
``MAX_READS`` datagrams read, so a flood costs a bounded second. Then
``SearchDone`` says how many were found; one search runs at a time, so
the queue never holds more than one search's events.

The default targets (``default_targets``) are the directed broadcast
address of each of this computer's IPv4 networks (the limited broadcast,
255.255.255.255, would leave by one interface only), on the ports given:
``ChatApp`` gives the default port and the last one used. Loopback,
link-local (169.254/16) and point-to-point links (/31, /32) have no one
to ask. Tests replace the targets: none of their traffic leaves 127.0.0.1
(or a network namespace of the test's own).

A reply is a hint, not a proof: its fingerprint is checked over TLS like
any other server's, so the dialog fills in only the address and port.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from server.protocol import Announcement, encode_query, parse_reply
from server.protocol.discovery import MAX_DATAGRAM

logger = logging.getLogger("app.discovery")

Target = tuple[str, int]  # (IPv4 address, UDP port)

LISTEN_SECONDS = 1.0  # how long a search waits for answers
RESEND_SECONDS = 0.3  # when the query goes out a second time
MAX_SERVERS = 64  # servers kept per search; more answers are dropped
MAX_READS = 4096  # datagrams read per search, whatever they hold
MAX_TARGETS = 64  # (address, port) pairs asked per search
MAX_NETWORKS = 16  # networks of this computer asked (Docker, VPNs and VMs add many)
MAX_PORTS = 4  # ports asked on each network
TICK = 0.05  # the longest the thread waits before looking at a stop
LIMITED_BROADCAST = "255.255.255.255"  # when the networks cannot be listed


@dataclass(frozen=True, slots=True)
class FoundServer:
    """One server that answered: what it announced, and the address it answered from."""

    announcement: Announcement
    host: str

    @property
    def port(self) -> int:
        """The TCP port to connect to (the one it announced)."""
        return self.announcement.port

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two answers the same server."""
        fingerprint = self.announcement.fingerprint
        if fingerprint is not None:
            return (fingerprint,)
        return (self.host, str(self.port))


@dataclass(frozen=True, slots=True)
class Found:
    """A server answered the search ``search``."""

    search: int
    server: FoundServer


@dataclass(frozen=True, slots=True)
class SearchDone:
    """The search ``search`` is over: ``found`` servers, ``asked`` targets sent
    to; ``problem`` says why none could be asked (empty if some were)."""

    search: int
    found: int
    asked: int
    problem: str = ""


DiscoveryEvent = Found | SearchDone


# -- where to ask -------------------------------------------------------------------


def local_networks() -> list[ipaddress.IPv4Interface]:
    """This computer's IPv4 addresses with their netmasks; raises ``OSError``
    when the system will not list them."""
    try:
        import ifaddr  # noqa: PLC0415 - imported when a search needs it, not at start-up

        adapters = ifaddr.get_adapters()
    except Exception as exc:  # ifaddr calls into each OS's C API; any failure is "cannot list"
        raise OSError(f"cannot list the network interfaces: {exc}") from exc
    found = []
    for adapter in adapters:
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str):
                try:
                    found.append(ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}"))
                except ValueError:
                    continue  # a prefix the system got wrong: no broadcast address to use
    return found


def broadcast_addresses(networks: Iterable[ipaddress.IPv4Interface]) -> list[str]:
    """The directed broadcast address of each network with neighbours on it,
    each once, at most ``MAX_NETWORKS``."""
    found: list[str] = []
    for interface in networks:
        address = interface.ip
        if address.is_loopback or address.is_link_local or address.is_multicast:
            continue
        if interface.network.prefixlen >= 31:  # point-to-point: nobody else to ask
            continue
        broadcast = str(interface.network.broadcast_address)
        if broadcast not in found:
            found.append(broadcast)
        if len(found) == MAX_NETWORKS:
            break
    return found


def default_targets(
    ports: Iterable[int],
    networks: Callable[[], Iterable[ipaddress.IPv4Interface]] | None = None,
) -> list[Target]:
    """Each network's broadcast address on each of ``ports`` (each port once,
    at most ``MAX_PORTS``); the limited broadcast when the networks cannot be
    listed. ``networks`` (default: ``local_networks``) lists them."""
    asked: list[int] = []
    for port in ports:
        if 1 <= port <= 65535 and port not in asked and len(asked) < MAX_PORTS:
            asked.append(port)
    try:
        addresses = broadcast_addresses((networks or local_networks)())
    except OSError as exc:
        logger.warning("%s; asking on the limited broadcast address only", exc)
        addresses = [LIMITED_BROADCAST]
    return [(address, port) for address in addresses for port in asked]


TARGETS_ENV = "LAN_CHAT_DISCOVERY_TARGETS"
"""Where to ask instead of the networks' broadcast addresses: ``host:port``
pairs, comma-separated; set but empty, nowhere (every test run sets it so)."""


def targets_for(ports: Iterable[int]) -> list[Target]:
    """Where the connection dialog asks: ``TARGETS_ENV``'s pairs if it is set
    (a network broadcast does not cross: servers named one by one), else
    ``default_targets(ports)``. A pair that is no ``host:port`` is skipped."""
    named = os.environ.get(TARGETS_ENV)
    if named is None:
        return default_targets(ports)
    found: list[Target] = []
    for pair in named.split(","):
        host, _, port = pair.strip().rpartition(":")
        if host and port.isdigit() and 1 <= int(port) <= 65535:
            found.append((host.strip("[]"), int(port)))
    return found[: MAX_NETWORKS * MAX_PORTS]


# -- the search -------------------------------------------------------------------


class Browser:
    """Searches for servers on a thread of its own; results on ``events``.

    ``targets()`` is called on the search's thread, at the start of each
    search (the networks may have changed since the last). ``search`` and
    ``close`` are called on the Tk thread, which drains ``events``.
    """

    def __init__(
        self,
        targets: Callable[[], Sequence[Target]],
        *,
        listen: float = LISTEN_SECONDS,
        max_servers: int = MAX_SERVERS,
    ) -> None:
        self.targets = targets
        self.listen = listen
        self.max_servers = max_servers
        # One search's events at most (see search): found servers and its end.
        self.events: queue.Queue[DiscoveryEvent] = queue.Queue(max_servers + 1)
        self._stop = threading.Event()
        # Set again just before a search posts its end, so that a caller who
        # has read that end may search again at once (its thread is still
        # returning then).
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._searches = 0

    @property
    def searching(self) -> bool:
        return not self._idle.is_set()

    def search(self) -> int | None:
        """Start a search and return its number; ``None`` while the last one
        runs or its events wait to be read (so the queue never overflows)."""
        if self._stop.is_set() or self.searching or not self.events.empty():
            return None
        self._searches += 1
        self._idle.clear()
        self._thread = threading.Thread(
            target=self._run, args=(self._searches,), name="discovery", daemon=True
        )
        self._thread.start()
        return self._searches

    def close(self) -> None:
        """Stop the search under way (it ends within ``TICK``) and wait for it. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None

    def _run(self, search: int) -> None:
        found: dict[tuple[str, ...], FoundServer] = {}
        asked, problem = 0, ""
        try:
            targets = list(self.targets())[:MAX_TARGETS]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                # Without SO_BROADCAST Linux refuses a broadcast with PermissionError.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.bind(("0.0.0.0", 0))  # answers come in by any interface
                sock.setblocking(False)
                query = encode_query()
                asked, problem = _send(sock, query, targets)
                if asked:
                    self._listen(sock, search, query, targets, found)
        except OSError as exc:
            problem = str(exc) or type(exc).__name__
            logger.warning("The search for servers failed: %s", problem)
        finally:
            self._idle.set()
            self.events.put_nowait(SearchDone(search, len(found), asked, problem))

    def _listen(
        self,
        sock: socket.socket,
        search: int,
        query: bytes,
        targets: list[Target],
        found: dict[tuple[str, ...], FoundServer],
    ) -> None:
        start = time.monotonic()
        resend_at, deadline = start + RESEND_SECONDS, start + self.listen
        resent = False
        reads = 0
        while reads < MAX_READS and not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            if not resent and now >= resend_at:
                resent = True
                _send(sock, query, targets)
            wake = deadline if resent else min(deadline, resend_at)
            readable, _, _ = select.select([sock], [], [], max(0.0, min(TICK, wake - now)))
            if not readable:
                continue
            reads += 1
            try:
                datagram, (host, _port) = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                # Windows reports an ICMP "port unreachable" for an earlier
                # datagram this way, on a later read: nothing to read here.
                continue
            announcement = parse_reply(datagram)
            if announcement is None:
                continue
            server = FoundServer(announcement, host)
            if server.key in found or len(found) >= self.max_servers:
                continue
            found[server.key] = server
            self.events.put_nowait(Found(search, server))


def _send(sock: socket.socket, query: bytes, targets: list[Target]) -> tuple[int, str]:
    """Send ``query`` to each target; how many took it, and the last refusal."""
    asked, problem = 0, ""
    for target in targets:
        try:
            sock.sendto(query, target)
            asked += 1
        except OSError as exc:
            # A network that went away, a VPN adapter that takes no broadcast,
            # macOS's Local Network privacy ("No route to host"): ask the others.
            problem = f"{target[0]}:{target[1]}: {exc.strerror or exc}"
            logger.info("The search could not ask %s", problem)
    return asked, problem
