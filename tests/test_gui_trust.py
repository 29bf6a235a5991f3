"""The trust dialogs and the lock in a real window (Xvfb), with real pointer
and keyboard events (xdotool), against the small TLS server of
tests/test_client_trust.py and main's plaintext server.

Screenshots of each dialog, light and dark, go to ``LAN_CHAT_SHOTS`` (default
``tests/screenshots/``) as ``trust-*.png``.
"""

from __future__ import annotations

import os
import tkinter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import ImageGrab

from app.chat_app import ChatApp
from app.settings import Settings
from app.trust import KnownServers
from app.trust_dialog import (
    IdentityChangedDialog,
    LockDialog,
    PlaintextDialog,
    TrustDialog,
    words_text,
)
from server.chat_server import ChatServer
from server.config import TlsMode
from server.protocol.fingerprint import invite
from tests.conftest import reset_root
from tests.test_client_trust import TrustServer, make_identity
from tests.test_gui import HOST, fill, settle, wait_until
from tests.test_gui_defects import pointer_back, xdotool  # noqa: F401 - pointer_back is autouse

SHOTS = Path(os.environ.get("LAN_CHAT_SHOTS") or Path(__file__).resolve().parent / "screenshots")


# Nothing here may touch the real settings (conftest.config_dir).
pytestmark = pytest.mark.usefixtures("config_dir")


@pytest.fixture
def known(config_dir: Path) -> KnownServers:
    return KnownServers(config_dir / "known_servers.json")


@pytest.fixture
def app(tk_root: Any, known: KnownServers) -> Iterator[ChatApp]:
    chat = ChatApp(
        tk_root,
        Settings(host=HOST, name=""),
        save_settings=lambda _settings: None,
        known=known,
        on_exit=lambda: None,
    )
    try:
        yield chat
    finally:
        chat.close()
        reset_root(tk_root)


@pytest.fixture
def serve() -> Iterator[Callable[..., TrustServer]]:
    running: list[TrustServer] = []

    def start(pem: Path | None, **options: Any) -> TrustServer:
        running.append(TrustServer(pem, **options))
        return running[-1]

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    return make_identity(tmp_path / "server")


def connect(app: ChatApp, port: int, name: str = "alice") -> None:
    dialog = app.open_dialog()
    fill(dialog, HOST, port, name)
    dialog.connect_button.invoke()


def center(widget: tkinter.Misc) -> tuple[int, int]:
    widget.update_idletasks()
    return (
        widget.winfo_rootx() + widget.winfo_width() // 2,
        widget.winfo_rooty() + widget.winfo_height() // 2,
    )


def click(widget: tkinter.Misc) -> None:
    """A real click in the middle of ``widget``."""
    wait_until(widget, widget.winfo_viewable, what="the widget shown")
    settle(widget, 0.2)
    xdotool("mousemove", *center(widget))
    settle(widget, 0.1)
    xdotool("click", "1")


def press(window: tkinter.Misc, key: str) -> None:
    """A real key press in ``window`` (with no window manager, the window
    under the pointer has the keyboard)."""
    wait_until(window, window.winfo_viewable, what="the window shown")
    settle(window, 0.2)
    xdotool("mousemove", *center(window))
    settle(window, 0.1)
    xdotool("key", key)


def shoot(app: ChatApp, window: tkinter.Misc, name: str, *, prefix: str = "trust") -> None:
    """``window`` as on the screen, light then dark, as PREFIX-NAME-light/dark.png."""
    for mode in ("light", "dark"):
        if app.settings.dark != (mode == "dark"):
            app.toggle_theme()
        wait_until(window, window.winfo_viewable, what=f"{name} shown")
        settle(window, 0.4)
        x, y = window.winfo_rootx(), window.winfo_rooty()
        image = ImageGrab.grab(bbox=(x, y, x + window.winfo_width(), y + window.winfo_height()))
        colors = image.getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20, f"{name} looks blank"
        SHOTS.mkdir(parents=True, exist_ok=True)
        image.save(SHOTS / f"{prefix}-{name}-{mode}.png")
    if app.settings.dark:
        app.toggle_theme()


def question(app: ChatApp, kind: type) -> Any:
    wait_until(app.root, lambda: isinstance(app.trust_dialog, kind), what=f"a {kind.__name__}")
    return app.trust_dialog


def joined(app: ChatApp) -> Callable[[], bool]:
    def predicate() -> bool:
        return app.client is not None and app.client.joined and app.dialog is None

    return predicate


# -- first contact ----------------------------------------------------------------------


def test_first_contact_shows_the_words_and_enter_cancels(
    app: ChatApp,
    serve: Callable[..., TrustServer],
    identity: tuple[Path, str],
    known: KnownServers,
) -> None:
    pem, fp = identity
    server = serve(pem)
    connect(app, server.port)
    dialog = question(app, TrustDialog)
    assert dialog.words_label.cget("text") == words_text(fp)
    assert f"{HOST}:{server.port}" in dialog.text and "do not connect" in dialog.text
    assert dialog.focus_lastfor() is dialog.cancel_button  # when it has the keyboard
    shoot(app, dialog, "first-contact")
    press(dialog, "Return")
    wait_until(app.root, lambda: app.trust_dialog is None, what="the dialog to close")
    assert app.dialog is not None
    wait_until(app.root, lambda: "identity" in str(app.dialog.status_label.cget("text")))
    assert server.received == [] and known.lookup(fp) is None


def test_escape_cancels_too(
    app: ChatApp, serve: Callable[..., TrustServer], identity: tuple[Path, str]
) -> None:
    pem, _ = identity
    server = serve(pem)
    connect(app, server.port)
    press(question(app, TrustDialog), "Escape")
    wait_until(app.root, lambda: app.client is None or not app.client.running)
    assert server.received == []


def test_they_match_takes_a_click_and_the_lock_then_tells_the_words(
    app: ChatApp,
    serve: Callable[..., TrustServer],
    identity: tuple[Path, str],
    known: KnownServers,
) -> None:
    pem, fp = identity
    server = serve(pem, extra={"insecure": ["bob"]})
    connect(app, server.port)
    click(question(app, TrustDialog).match_button)
    wait_until(app.root, joined(app), what="alice to join")
    assert known.lookup(fp) is not None
    assert app.view.lock_text == "Encrypted"
    assert "bob is connected without encryption" in app.view.insecure_text
    app.root.geometry("920x640+0+0")
    shoot(app, app.root, "window-insecure-member")
    click(app.view.lock_button)
    wait_until(app.root, lambda: isinstance(app.lock_dialog, LockDialog), what="the lock's details")
    lock = app.lock_dialog
    assert lock is not None
    assert words_text(fp) in lock.text
    assert "trusted on this computer since" in lock.text
    shoot(app, lock, "lock")
    lock.destroy()


def test_an_invite_in_the_address_field_needs_no_question(
    app: ChatApp,
    serve: Callable[..., TrustServer],
    identity: tuple[Path, str],
    known: KnownServers,
) -> None:
    pem, fp = identity
    server = serve(pem)
    dialog = app.open_dialog()
    dialog.port_var.set("1")  # whatever was there: the invite's port replaces it
    dialog.name_var.set("alice")
    dialog.host_var.set(invite(HOST, server.port, fp))  # as pasted
    assert (dialog.host_var.get(), dialog.port_var.get()) == (HOST, str(server.port))
    dialog.connect_button.invoke()
    wait_until(app.root, joined(app), what="alice to join")
    assert app.trust_dialog is None and known.lookup(fp) is not None


# -- hard stops and plaintext -----------------------------------------------------------


def test_a_changed_identity_has_no_way_on_and_forgetting_is_confirmed(
    app: ChatApp,
    serve: Callable[..., TrustServer],
    identity: tuple[Path, str],
    known: KnownServers,
    tmp_path: Path,
) -> None:
    pem, _ = identity
    _, before = make_identity(tmp_path / "before")
    server = serve(pem)
    known.pin(before, HOST, server.port)
    connect(app, server.port)
    wait_until(app.root, lambda: isinstance(app.stop_dialog, IdentityChangedDialog))
    stop = app.stop_dialog
    assert stop is not None
    labels = [str(b.cget("text")) for b in stop.buttons.pack_slaves()]
    assert labels == ["Close", "Forget this server…"]  # nothing that connects
    assert "pretending" in stop.text
    shoot(app, stop, "changed-identity")
    assert stop.forget_button is not None
    click(stop.forget_button)
    wait_until(app.root, lambda: "Yes, forget it" in str(stop.forget_button.cget("text")))
    assert known.lookup(before) is not None  # not yet: one more click
    shoot(app, stop, "forget-confirm")
    click(stop.forget_button)
    wait_until(app.root, lambda: known.lookup(before) is None, what="the pin forgotten")
    assert server.received == []


def test_a_plaintext_server_is_asked_about_and_the_lock_says_so(
    app: ChatApp, start_server: Callable[..., ChatServer], known: KnownServers
) -> None:
    server = start_server(tls=TlsMode.OFF)
    connect(app, server.port)
    dialog = question(app, PlaintextDialog)
    assert "anyone on this network can read" in dialog.text
    assert dialog.focus_lastfor() is dialog.cancel_button  # when it has the keyboard
    shoot(app, dialog, "plaintext")
    click(dialog.go_button)
    wait_until(app.root, joined(app), what="alice to join")
    assert app.view.lock_text == "Not encrypted"
    assert known.plaintext_allowed(HOST, server.port)
