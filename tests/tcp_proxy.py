"""A test-only TCP proxy from 127.0.0.1 to a local port, to break a connection on cue.

How this works: one thread runs a selector over the listening socket, a
wake-up socket pair and both ends of every proxied connection (a "link":
the client's socket and the one to the target). Each direction has a
bounded buffer; a side is read only while the buffer toward the other side
has room, so a slow reader holds bytes in the kernel, not here. Every
control call (``cut``, ``block``, ``lose_replies``, ``pause``, ``resume``,
``close``) is handed to that thread and waited for, so once it returns it
has taken effect: no byte is forwarded after ``pause()`` or ``cut()``
returns. Cuts are abortive (SO_LINGER 0: the peers see a reset, as from a
partition that a TCP keep-alive or a timeout would report, not an orderly
close).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
BUFFER_LIMIT = 256 * 1024
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 5.0


def _abort(sock: socket.socket) -> None:
    """Close with a reset rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already broken: closing it is all that is left
    sock.close()


@dataclass(eq=False)
class _Link:
    client: socket.socket
    target: socket.socket
    to_target: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    # Set when one side has ended: nothing more is read, what is buffered
    # toward the other side is sent, then both are closed.
    ending: bool = False


class TcpProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port``; see the module's docstring."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((HOST, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._thread: threading.Thread | None = None
        self._links: dict[socket.socket, _Link] = {}  # both sockets of each link
        self._registered: dict[socket.socket, int] = {}
        self._stopping = False
        self._closed = False
        self._blocked = False
        self._paused = False
        self._lose_armed = False
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # accepted while blocked (or the target refused) and reset
        self.cuts = 0  # links cut by cut(), block(True) or lose_replies()
        self.replies_lost = 0

    # --- control, from any thread -------------------------------------------

    def start(self) -> TcpProxy:
        if self._thread is not None:
            raise RuntimeError("this proxy is already started")
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Close every connection and the listener; join the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._call(self._stop)
            self._thread.join(CALL_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError("the proxy's thread did not stop")
        self._close_all()

    def cut(self) -> None:
        """Reset every current connection, both ways at once; new ones are still accepted."""
        self._call(self._cut_all)

    def block(self, blocked: bool) -> None:
        """A partition: while blocked, new connections are reset at once and the
        current ones are cut; ``block(False)`` forwards new connections again."""

        def apply() -> None:
            self._blocked = blocked
            if blocked:
                self._cut_all()

        self._call(apply)

    def lose_replies(self) -> None:
        """One shot: the next bytes the target sends, on any connection, are
        dropped and that connection is cut right then (the command ran, its
        reply is lost)."""

        def apply() -> None:
            self._lose_armed = True

        self._call(apply)

    def pause(self) -> None:
        """Stop forwarding both ways without closing anything: bytes wait."""

        def apply() -> None:
            self._paused = True

        self._call(apply)

    def resume(self) -> None:
        def apply() -> None:
            self._paused = False

        self._call(apply)

    def __enter__(self) -> TcpProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, action: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the proxy is not running")
        done = threading.Event()
        with self._lock:
            self._calls.append((action, done))
        try:
            self._wake_write.send(b"x")
        except BlockingIOError:
            pass  # the pair is full of wake-ups already
        if not done.wait(CALL_TIMEOUT):
            raise RuntimeError("the proxy's thread did not answer")

    # --- the proxy's thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._run_calls()
                if self._stopping:
                    break
                self._update_interest()
                for key, mask in self._selector.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_read:
                        self._drain_wake()
                    elif sock is self._listener:
                        self._accept()
                    elif sock in self._links:
                        self._service(self._links[sock], sock, mask)
        finally:
            self._stopping = True
            self._close_all()
            self._run_calls()  # nobody waits for a call that will never run

    def _stop(self) -> None:
        self._stopping = True

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for action, done in calls:
            try:
                action()
            finally:
                done.set()

    def _drain_wake(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        try:
            client, _address = self._listener.accept()
        except BlockingIOError:
            return
        if self._blocked:
            self.refused += 1
            _abort(client)
            return
        try:
            # Loopback: a refusal or an accept is immediate, so a blocking
            # connect costs the other links nothing measurable.
            target = socket.create_connection((HOST, self.target_port), CONNECT_TIMEOUT)
        except OSError:
            self.refused += 1
            _abort(client)
            return
        client.setblocking(False)
        target.setblocking(False)
        link = _Link(client, target)
        self._links[client] = link
        self._links[target] = link
        self.connections += 1

    def _update_interest(self) -> None:
        for link in {id(link): link for link in self._links.values()}.values():
            if link.ending and not link.to_target and not link.to_client:
                self._close_link(link, abortive=False)
                continue
            for sock, inbound, outbound in (
                (link.client, link.to_target, link.to_client),
                (link.target, link.to_client, link.to_target),
            ):
                mask = 0
                if not self._paused:
                    if not link.ending and len(inbound) < BUFFER_LIMIT:
                        mask |= selectors.EVENT_READ
                    if outbound:
                        mask |= selectors.EVENT_WRITE
                self._set_interest(sock, mask)

    def _set_interest(self, sock: socket.socket, mask: int) -> None:
        current = self._registered.get(sock, 0)
        if mask == current:
            return
        if not mask:
            self._selector.unregister(sock)
            del self._registered[sock]
        elif not current:
            self._selector.register(sock, mask)
            self._registered[sock] = mask
        else:
            self._selector.modify(sock, mask)
            self._registered[sock] = mask

    def _service(self, link: _Link, sock: socket.socket, mask: int) -> None:
        from_target = sock is link.target
        inbound = link.to_client if from_target else link.to_target
        outbound = link.to_target if from_target else link.to_client
        try:
            if mask & selectors.EVENT_WRITE and outbound:
                sent = sock.send(outbound)
                del outbound[:sent]
            if mask & selectors.EVENT_READ and not link.ending:
                # Read only while there is room (_update_interest), and no more than the room.
                data = sock.recv(min(CHUNK, BUFFER_LIMIT - len(inbound)))
                if not data:
                    link.ending = True
                elif from_target and self._lose_armed:
                    self._lose_armed = False
                    self.replies_lost += 1
                    self.cuts += 1
                    self._close_link(link, abortive=True)
                else:
                    inbound += data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close_link(link, abortive=True)

    def _cut_all(self) -> None:
        for link in {id(link): link for link in self._links.values()}.values():
            self.cuts += 1
            self._close_link(link, abortive=True)

    def _close_link(self, link: _Link, *, abortive: bool) -> None:
        for sock in (link.client, link.target):
            if self._registered.pop(sock, 0):
                self._selector.unregister(sock)
            self._links.pop(sock, None)
            if abortive:
                _abort(sock)
            else:
                sock.close()

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in {id(link): link for link in self._links.values()}.values():
            self._close_link(link, abortive=True)
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()
        self._selector.close()
