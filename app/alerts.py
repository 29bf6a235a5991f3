"""Desktop notifications through the operating system, never blocking Tk.

How this works: ``DesktopNotifications.notify`` is called on the Tk thread
and returns at once. The first call starts one daemon thread running an
asyncio loop, and there a ``desktop_notifier.DesktopNotifier`` (D-Bus on
Linux, the notification centre on macOS, WinRT on Windows); each
notification is a coroutine handed to that loop. While any is on its way,
the Tk thread looks at their futures every ``POLL_MS`` (``after``, on the
Tk thread, so nothing here calls Tk from the other one). One that fails,
or is not delivered within ``DELIVER_SECONDS``, or finds ``MAX_WAITING``
already waiting, runs the caller's ``otherwise`` (the in-window toast) on
the Tk thread instead.

The first failure (no session bus, no notification service, the package
missing, a refused call, no answer) is logged once, and from then on every
notification goes straight to ``otherwise``: a broken path would otherwise
delay each alert by the deadline, and desktop-notifier would log (and, on
Linux, open another bus connection) for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.paths import asset

if TYPE_CHECKING:
    import tkinter

    from desktop_notifier import DesktopNotifier

logger = logging.getLogger("app.alerts")

# A notification the OS has not taken within this is given up (and shown in
# the window): a hung bus or service must not swallow an alert.
DELIVER_SECONDS = 3.0
# Notifications on their way at once; more means the OS path is stuck.
MAX_WAITING = 3
POLL_MS = 50
# How long closing waits for the bus to hang up and the thread to end.
CLOSE_SECONDS = 2.0


class Unavailable(Exception):
    """The OS cannot show notifications here; the message says why."""


@dataclass(slots=True)
class _Waiting:
    future: Future[None]
    deadline: float
    otherwise: Callable[[], None]


class _Sender:
    """The loop thread's side: the notifier, made on first use. Touched only
    by coroutines on that loop."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.notifier: DesktopNotifier | None = None
        self.failed = False
        # One at a time: desktop-notifier connects on its first send, and sends
        # that overlap it would each open a bus connection of their own.
        self.turn = asyncio.Lock()

    async def send(self, title: str, body: str) -> None:
        """Deliver one notification; raises when it was not delivered."""
        async with self.turn:
            await self._send(title, body)

    async def _send(self, title: str, body: str) -> None:
        if self.failed:
            raise Unavailable("an earlier notification failed")
        try:
            if self.notifier is None:
                # Imported here: the window starts without paying for it, and
                # a missing or broken package is one more reason to fall back.
                from desktop_notifier import DesktopNotifier, Icon  # noqa: PLC0415

                self.notifier = DesktopNotifier(
                    app_name=self.app_name, app_icon=Icon(path=asset("icon.png"))
                )
                # The library's stand-in for systems it has no backend for
                # (macOS outside an app bundle) claims no capability at all and
                # shows nothing; this also connects, so a missing bus or
                # service raises here, with its reason, before anything is sent.
                if not await self.notifier.get_capabilities():
                    raise Unavailable("no notification service desktop-notifier supports")
            delivered = False

            def dispatched() -> None:
                nonlocal delivered
                delivered = True

            # send() logs and swallows a failure; only on_dispatched says it went.
            await self.notifier.send(title, body, on_dispatched=dispatched)
            if not delivered:
                raise Unavailable("the notification service did not take it")
        except BaseException:
            self.failed = True
            raise

    async def close(self) -> None:
        """Cancel what is still on its way and hang up the D-Bus connection."""
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        # desktop-notifier has no close; on Linux its backend keeps the bus
        # connection it opened, whose socket would outlive the app's.
        bus = getattr(getattr(self.notifier, "_backend", None), "bus", None)
        if bus is not None and bus.connected:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.wait_for_disconnect(), CLOSE_SECONDS)


class DesktopNotifications:
    """Notifications through the OS for an app whose Tk thread is ``tk``'s.
    Every method is called on the Tk thread."""

    def __init__(self, tk: tkinter.Misc, app_name: str) -> None:
        self.tk = tk
        self._sender = _Sender(app_name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._waiting: list[_Waiting] = []
        self._poll_id: str | None = None
        self._unavailable: str | None = None
        if sys.platform.startswith("linux") and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            # Known at once: every desktop session names its bus, and dbus-fast's
            # guess without it (a file of the long-gone X11 autolaunch) is no
            # reason to start a thread.
            self._unavailable = "no D-Bus session bus"
            logger.info("Desktop notifications are not available (%s).", self._unavailable)
        self._closed = False

    def notify(self, title: str, body: str, otherwise: Callable[[], None]) -> None:
        """Show ``title`` and ``body`` as a desktop notification, or, when the
        OS cannot, call ``otherwise`` (now or within ``DELIVER_SECONDS``)."""
        if self._closed:
            return
        if self._unavailable is not None or len(self._waiting) >= MAX_WAITING:
            otherwise()
            return
        loop = self._start()
        future = asyncio.run_coroutine_threadsafe(self._sender.send(title, body), loop)
        self._waiting.append(_Waiting(future, time.monotonic() + DELIVER_SECONDS, otherwise))
        if self._poll_id is None:
            self._poll_id = self.tk.after(POLL_MS, self._poll)

    def close(self) -> None:
        """Stop the thread (joined) and forget what is still on its way. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._poll_id is not None:
            self.tk.after_cancel(self._poll_id)
            self._poll_id = None
        self._waiting.clear()
        if self._loop is None or self._thread is None:
            return
        closing = asyncio.run_coroutine_threadsafe(self._sender.close(), self._loop)
        with contextlib.suppress(Exception):
            closing.result(CLOSE_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_SECONDS)
        if not self._thread.is_alive():
            self._loop.close()

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            # A daemon: a service that never answers must not keep the process
            # alive after the window closed.
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="desktop-notifications", daemon=True
            )
            self._thread.start()
        return self._loop

    def _poll(self) -> None:
        self._poll_id = None
        now = time.monotonic()
        still: list[_Waiting] = []
        for waiting in self._waiting:
            future = waiting.future
            if not future.done() and now < waiting.deadline:
                still.append(waiting)
                continue
            if not future.done():
                future.cancel()
                self._give_up(f"no answer within {DELIVER_SECONDS:g} s")
            elif future.cancelled():
                self._give_up("cancelled")
            elif (error := future.exception()) is not None:
                self._give_up(str(error) or type(error).__name__)
            else:
                continue  # delivered
            waiting.otherwise()
        self._waiting = still
        if still:
            self._poll_id = self.tk.after(POLL_MS, self._poll)

    def _give_up(self, reason: str) -> None:
        if self._unavailable is None:
            self._unavailable = reason
            logger.warning(
                "Desktop notifications are not available (%s); alerts show in the window.",
                reason,
            )
