"""Desktop notifications, through a real D-Bus session bus of the test's own.

Each test that wants the OS path starts ``dbus-daemon`` on a private socket
(no service activation, so nothing of the machine's can answer) and serves
``org.freedesktop.Notifications`` on it from ``FakeNotifications``, which
records what it is asked to show; the app finds the bus through
``DBUS_SESSION_BUS_ADDRESS``, as it would a desktop's. The window tests run
the real window under Xvfb with a real server and a raw bot: the window is
put in the background by giving the X focus away and moving the pointer
off it (with no window manager, X gives the keyboard to what is under the
pointer), as switching to another application would. Toasts are the real
ttkbootstrap ones, only counted as they show.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
import ttkbootstrap as ttk
from dbus_fast import DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from app import alerts, chat_app
from app import settings as app_settings
from app.alerts import DesktopNotifications
from app.chat_app import ChatApp
from app.settings import Settings
from server.chat_server import ChatServer
from tests.test_gui import HOST, join, menu_item, settle, wait_shown, wait_until
from tests.test_gui_defects import pointer_back, xdotool  # noqa: F401 - pointer_back is autouse
from tests.wire import RawClient

StartServer = Callable[..., ChatServer]
WAIT = 10.0
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={folder}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
PATH = "/org/freedesktop/Notifications"
NAME = "org.freedesktop.Notifications"
Strings = Annotated[list[str], DBusSignature("as")]
Hints = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
# Several out arguments, as the specification has them (not one struct).
ServerInfo = Annotated[list[str], DBusSignature("ssss")]


# -- a session bus and a notification service of the test's own ---------------------


@pytest.fixture
def session_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private session bus (its address also in DBUS_SESSION_BUS_ADDRESS)."""
    # A short folder: a Unix socket's path is limited to about 100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="bus-", dir="/tmp"))
    config = folder / "session.conf"
    config.write_text(BUS_CONFIG.format(folder=folder), encoding="utf-8")
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        ready, _, _ = select.select([daemon.stdout], [], [], WAIT)
        assert ready, "dbus-daemon printed no address"
        address = daemon.stdout.readline().strip()
        assert address.startswith("unix:"), address
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        yield address
    finally:
        daemon.terminate()
        daemon.wait(WAIT)
        if daemon.stdout is not None:
            daemon.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Shown:
    app_name: str
    title: str
    body: str


class FakeNotifications(ServiceInterface):
    """The freedesktop notification service, as a desktop's would answer it,
    recording what it shows. ``answer`` says what Notify does: "show",
    "refuse" (an error reply) or "hang" (no reply, ever)."""

    def __init__(self) -> None:
        super().__init__(NAME)
        self.shown: queue.Queue[Shown] = queue.Queue()
        self.asked = 0
        self.answer = "show"
        self.release = asyncio.Event()  # ends the hanging calls, when the service stops

    @dbus_method()
    async def Notify(  # noqa: N802, PLR0917 - the D-Bus interface's name and arguments
        self,
        app_name: DBusStr,
        replaces_id: DBusUInt32,
        app_icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: Strings,
        hints: Hints,
        expire_timeout: DBusInt32,
    ) -> DBusUInt32:
        self.asked += 1
        if self.answer == "refuse":
            raise DBusError("org.freedesktop.Notifications.Error", "not now")
        if self.answer == "hang":
            await self.release.wait()
            return 0  # to a caller long gone
        self.shown.put(Shown(app_name, summary, body))
        return self.asked

    @dbus_method()
    def GetCapabilities(self) -> Strings:  # noqa: N802
        return ["body", "actions"]

    @dbus_method()
    def GetServerInformation(self) -> ServerInfo:  # noqa: N802
        return ["fake", "tests", "1", "1.2"]

    @dbus_method()
    def CloseNotification(self, notification_id: DBusUInt32):  # noqa: N802 - no reply value
        self.NotificationClosed(notification_id, 3)

    @dbus_signal()
    def NotificationClosed(  # noqa: N802
        self, notification_id: DBusUInt32, reason: DBusUInt32
    ) -> Annotated[list[int], DBusSignature("uu")]:
        return [notification_id, reason]

    def received(self) -> list[Shown]:
        found = []
        while not self.shown.empty():
            found.append(self.shown.get_nowait())
        return found


@pytest.fixture
def service(session_bus: str) -> Iterator[FakeNotifications]:
    """``FakeNotifications`` on ``session_bus``, from a thread with its own loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-notifications")
    thread.start()
    fake = FakeNotifications()

    async def serve() -> MessageBus:
        bus = await MessageBus(bus_address=session_bus).connect()
        bus.export(PATH, fake)
        await bus.request_name(NAME)
        return bus

    async def stop(bus: MessageBus) -> None:
        fake.release.set()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), WAIT)
        bus.disconnect()
        await asyncio.wait_for(bus.wait_for_disconnect(), WAIT)

    try:
        bus = asyncio.run_coroutine_threadsafe(serve(), loop).result(WAIT)
        try:
            yield fake
        finally:
            asyncio.run_coroutine_threadsafe(stop(bus), loop).result(WAIT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


# -- the window ------------------------------------------------------------------------


@dataclass
class Attention:
    """What the app did besides the OS: bells rung, toasts shown (the real ones)."""

    bells: int = 0
    toasts: list[Any] = field(default_factory=list)

    def toast_texts(self) -> list[tuple[str, str]]:
        return [(toast.title, toast.message) for toast in self.toasts]


# Nothing here may touch the real settings (conftest.config_dir).
pytestmark = pytest.mark.usefixtures("config_dir")


@pytest.fixture
def attention(tk_root: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Attention]:
    seen = Attention()
    real_bell = tk_root.bell

    def bell() -> None:
        seen.bells += 1
        real_bell()

    class CountedToast(ttk.ToastNotification):  # type: ignore[misc]
        def show_toast(self, *args: Any) -> Any:
            seen.toasts.append(self)
            return super().show_toast(*args)

    monkeypatch.setattr(tk_root, "bell", bell)
    monkeypatch.setattr(ttk, "ToastNotification", CountedToast)
    yield seen
    for toast in seen.toasts:
        toast.hide()
    wait_until(
        tk_root, lambda: all(t.toplevel is None for t in seen.toasts), what="the toasts gone"
    )


@pytest.fixture
def make_app(
    attention: Attention, open_app: Callable[..., ChatApp], tk_root: Any
) -> Callable[..., ChatApp]:
    """The app in the real window; made in the test, once its bus is chosen.
    Closed before ``attention`` removes the toasts, so that none comes after
    (``open_app`` is set up after ``attention``, so torn down before it)."""
    saved: list[Settings] = []

    def make(settings: Settings | None = None) -> ChatApp:
        chat = open_app(settings or Settings(host=HOST, name=""), save_settings=saved.append)
        chat.saved = saved  # type: ignore[attr-defined]
        tk_root.deiconify()
        tk_root.geometry("920x640+0+0")
        wait_until(tk_root, chat.view.transcript.winfo_viewable, what="the window mapped")
        return chat

    return make


def root_window() -> str:
    listing = subprocess.run(
        ["xwininfo", "-root"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    line = next(line for line in listing.splitlines() if "Window id:" in line)
    return line.split()[3]


def to_background(app: ChatApp) -> None:
    """Another application takes the keyboard: X's focus leaves the window."""
    xdotool("windowfocus", root_window())
    xdotool("mousemove", 1100, 500)  # off the 920x640 window, away from the toasts' corner
    wait_until(app.root, lambda: app.root.focus_get() is None, what="the window in the background")


def to_foreground(app: ChatApp) -> None:
    xdotool("mousemove", 300, 300)
    app.root.focus_force()
    wait_until(app.root, lambda: app.root.focus_get() is not None, what="the window focused")


def wait_received(root: Any, service: FakeNotifications, count: int) -> list[Shown]:
    """The next ``count`` notifications shown, waited for with Tk running."""
    found: list[Shown] = []
    deadline = time.monotonic() + WAIT
    while len(found) < count and time.monotonic() < deadline:
        root.update()
        try:
            found.append(service.shown.get(timeout=0.02))
        except queue.Empty:
            pass
    assert len(found) == count, found
    return found


@dataclass
class Scene:
    """A server, the app and bob, a raw client, both in the room."""

    make_app: Callable[..., ChatApp]
    start_server: StartServer
    open_client: Callable[..., RawClient]

    def open(self, settings: Settings | None = None) -> tuple[ChatApp, RawClient]:
        app = self.make_app(settings)
        srv = self.start_server()
        join(app, srv, "alice")
        bob = self.open_client(srv, "bob")
        wait_shown(app, "bob joined")
        return app, bob


@pytest.fixture
def scene(
    make_app: Callable[..., ChatApp],
    start_server: StartServer,
    open_client: Callable[..., RawClient],
) -> Scene:
    return Scene(make_app, start_server, open_client)


# -- the tests -------------------------------------------------------------------------


def test_in_the_background_a_private_message_and_a_mention_reach_the_desktop(
    scene: Scene,
    service: FakeNotifications,
    attention: Attention,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_app, "TOAST_MS", 0)  # no quiet time between alerts
    app, bob = scene.open()
    to_background(app)

    bob.send({"type": "say", "text": "psst, the keys are under the mat", "to": "alice"})
    wait_shown(app, "psst, the keys are under the mat")
    [private] = wait_received(app.root, service, 1)
    assert private.app_name == "LAN Chat"
    assert private.title == "bob"
    assert private.body == "psst, the keys are under the mat"

    bob.send({"type": "say", "text": "alice, lunch?"})
    wait_shown(app, "alice, lunch?")
    [mention] = wait_received(app.root, service, 1)
    assert (mention.title, mention.body) == ("bob mentioned you", "alice, lunch?")

    bob.send({"type": "say", "text": "nothing for anyone in particular"})
    wait_shown(app, "nothing for anyone in particular")
    settle(app.root, 0.5)
    assert service.received() == []  # neither a mention nor private
    assert app.root.title().startswith("(3) LAN Chat")  # all three unread
    assert attention.toasts == [] and attention.bells == 0


def test_with_the_window_focused_nothing_is_notified(
    scene: Scene,
    service: FakeNotifications,
    attention: Attention,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_app, "TOAST_MS", 0)
    app, bob = scene.open()
    to_foreground(app)
    bob.send({"type": "say", "text": "psst", "to": "alice"})
    bob.send({"type": "say", "text": "alice, look"})
    wait_shown(app, "alice, look")
    settle(app.root, 0.5)
    assert service.received() == []
    assert attention.toasts == [] and attention.bells == 0
    assert app.root.title().startswith("LAN Chat")

    to_background(app)  # the same path does notify once the window is left
    bob.send({"type": "say", "text": "alice, still there?"})
    assert wait_received(app.root, service, 1)[0].body == "alice, still there?"


def test_turned_off_in_the_menu_nothing_alerts_but_the_title_counts(
    scene: Scene,
    service: FakeNotifications,
    attention: Attention,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_app, "TOAST_MS", 0)
    app, bob = scene.open()
    view_menu = app.root.nametowidget(app.menubar.entrycget("View", "menu"))
    item = view_menu.index("Desktop notifications")
    assert view_menu.type(item) == "checkbutton"
    menu_item(app, "View", item)
    assert app.saved[-1].notifications is False  # type: ignore[attr-defined]
    to_background(app)

    bob.send({"type": "say", "text": "psst", "to": "alice"})
    bob.send({"type": "say", "text": "alice, look"})
    wait_shown(app, "alice, look")
    settle(app.root, 0.5)
    assert service.received() == []
    assert attention.toasts == [] and attention.bells == 0
    assert app.root.title().startswith("(2) LAN Chat")

    menu_item(app, "View", item)  # on again
    assert app.saved[-1].notifications is True  # type: ignore[attr-defined]
    bob.send({"type": "say", "text": "alice, now?"})
    assert wait_received(app.root, service, 1)[0].body == "alice, now?"


def test_turned_off_stays_off_at_the_next_start(
    scene: Scene,
    service: FakeNotifications,
    attention: Attention,
) -> None:
    app, bob = scene.open(Settings(host=HOST, name="", notifications=False))
    assert app.notify_var.get() is False  # the menu shows it unticked
    to_background(app)
    bob.send({"type": "say", "text": "psst", "to": "alice"})
    wait_shown(app, "psst")
    settle(app.root, 0.5)
    assert service.received() == [] and attention.toasts == [] and attention.bells == 0


def test_with_no_bus_the_toast_shows_as_before_and_the_failure_is_logged_once(
    scene: Scene,
    attention: Attention,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(chat_app, "TOAST_MS", 300)  # short toasts, a short quiet time
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'nobody-here'}")
    app, bob = scene.open()
    to_background(app)
    with caplog.at_level(logging.WARNING, logger="app.alerts"):
        bob.send({"type": "say", "text": "psst", "to": "alice"})
        wait_until(app.root, lambda: len(attention.toasts) == 1, WAIT, "a toast")
        assert attention.toast_texts() == [("bob", "psst")]
        toast = attention.toasts[0]
        assert toast.toplevel is not None and toast.toplevel.winfo_viewable()
        assert attention.bells == 1
        time.sleep(0.35)  # past the quiet time
        bob.send({"type": "say", "text": "alice, again"})
        wait_until(app.root, lambda: len(attention.toasts) == 2, WAIT, "a second toast")
        assert attention.toast_texts()[1] == ("bob mentioned you", "alice, again")
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.alerts"]
    assert len(warnings) == 1, warnings
    assert "not available" in warnings[0]


def test_the_setting_is_kept_and_a_damaged_one_reads_as_on(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    app_settings.save(Settings(notifications=False), path)
    assert app_settings.load(path).notifications is False
    path.write_text('{"notifications": "no", "dark": true}', encoding="utf-8")
    loaded = app_settings.load(path)
    assert loaded.notifications is True and loaded.dark is True


# -- DesktopNotifications on its own ---------------------------------------------------


@pytest.fixture
def notifications(tk_root: Any) -> Iterator[DesktopNotifications]:
    desktop = DesktopNotifications(tk_root, "LAN Chat")
    yield desktop
    desktop.close()


def test_a_service_that_never_answers_costs_a_few_seconds_and_then_the_fallback(
    service: FakeNotifications,
    tk_root: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(alerts, "DELIVER_SECONDS", 0.5)
    service.answer = "hang"
    desktop = DesktopNotifications(tk_root, "LAN Chat")
    fallbacks: list[str] = []
    try:
        with caplog.at_level(logging.WARNING, logger="app.alerts"):
            started = time.monotonic()
            for number in range(alerts.MAX_WAITING + 2):
                desktop.notify("bob", f"hello {number}", lambda n=number: fallbacks.append(n))
            # Those past the bound did not wait at all.
            assert fallbacks == list(range(alerts.MAX_WAITING, alerts.MAX_WAITING + 2))
            wait_until(tk_root, lambda: len(fallbacks) == alerts.MAX_WAITING + 2, WAIT)
            assert time.monotonic() - started < WAIT
            assert sorted(fallbacks) == list(range(alerts.MAX_WAITING + 2))
            desktop.notify("bob", "later", lambda: fallbacks.append(-1))
            assert fallbacks[-1] == -1  # given up on: straight to the window
        warnings = [r.getMessage() for r in caplog.records if r.name == "app.alerts"]
        assert len(warnings) == 1 and "no answer" in warnings[0], warnings
    finally:
        desktop.close()
    assert service.received() == []


def test_a_service_that_refuses_falls_back(
    service: FakeNotifications, notifications: DesktopNotifications, tk_root: Any
) -> None:
    service.answer = "refuse"
    fallbacks: list[str] = []
    notifications.notify("bob", "hello", lambda: fallbacks.append("hello"))
    wait_until(tk_root, lambda: fallbacks == ["hello"], WAIT, "the fallback")
    assert service.asked == 1
    notifications.notify("bob", "again", lambda: fallbacks.append("again"))
    assert fallbacks == ["hello", "again"] and service.asked == 1  # not asked again


def test_a_bus_with_no_notification_service_falls_back(
    session_bus: str, notifications: DesktopNotifications, tk_root: Any
) -> None:
    fallbacks: list[str] = []
    notifications.notify("bob", "hello", lambda: fallbacks.append("hello"))
    wait_until(tk_root, lambda: fallbacks == ["hello"], WAIT, "the fallback")


def test_without_the_package_the_fallback_runs(
    service: FakeNotifications,
    notifications: DesktopNotifications,
    tk_root: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "desktop_notifier", None)  # import fails
    fallbacks: list[str] = []
    notifications.notify("bob", "hello", lambda: fallbacks.append("hello"))
    wait_until(tk_root, lambda: fallbacks == ["hello"], WAIT, "the fallback")
    assert service.asked == 0


def test_closing_hangs_up_and_ends_the_thread(service: FakeNotifications, tk_root: Any) -> None:
    desktop = DesktopNotifications(tk_root, "LAN Chat")
    desktop.notify("bob", "hello", lambda: pytest.fail("fell back"))
    wait_received(tk_root, service, 1)
    settle(tk_root, 0.2)  # the future seen done: nothing waits
    threads = [t for t in threading.enumerate() if t.name == "desktop-notifications"]
    assert len(threads) == 1
    desktop.close()
    assert not threads[0].is_alive()
    desktop.notify("bob", "after closing", lambda: pytest.fail("fell back"))  # ignored
    settle(tk_root, 0.2)
    assert service.received() == []
    # no_leaks (tests/conftest.py) then checks that the bus connection's socket is closed.
