"""The room password's question in a real window (Xvfb), with real keyboard
events (xdotool), against a real server over TLS.

Screenshots of the dialog, light and dark, go to ``LAN_CHAT_SHOTS`` (default
``tests/screenshots/``) as ``password-*.png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.chat_app import ChatApp
from app.password_dialog import PasswordDialog, RememberedPasswords
from app.settings import Settings
from server.chat_server import ChatServer
from tests.conftest import reset_root
from tests.test_gui import HOST, fill, wait_until
from tests.test_gui_defects import pointer_back, xdotool  # noqa: F401 - pointer_back is autouse
from tests.test_gui_trust import click, press, shoot
from tests.trust_helpers import PlaintextAgreed

PASSWORD = "open sesame"


@pytest.fixture
def passwords_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "passwords.json"


@pytest.fixture
def make_app(tk_root: Any, passwords_file: Path) -> Iterator[Callable[[], ChatApp]]:
    """ChatApps in the session's root, one at a time (a later one is the app restarted)."""
    apps: list[ChatApp] = []

    def make() -> ChatApp:
        if apps:
            apps[-1].close()
            reset_root(tk_root)
        apps.append(
            ChatApp(
                tk_root,
                Settings(host=HOST, name=""),
                save_settings=lambda _settings: None,
                known=PlaintextAgreed(),
                on_exit=lambda: None,
                passwords=RememberedPasswords(passwords_file),
            )
        )
        return apps[-1]

    yield make
    if apps:
        apps[-1].close()
        reset_root(tk_root)


@pytest.fixture
def room(start_server: Callable[..., ChatServer]) -> ChatServer:
    return start_server(room_password=PASSWORD)


def connect(app: ChatApp, port: int, name: str = "alice") -> None:
    dialog = app.open_dialog()
    fill(dialog, HOST, port, name)
    dialog.connect_button.invoke()


def asked(app: ChatApp, *, wrong: bool = False) -> PasswordDialog:
    def shown() -> bool:
        dialog = app.password_dialog
        return dialog is not None and ("Wrong" in dialog.text) == wrong

    wait_until(app.root, shown, what="the password question")
    assert app.password_dialog is not None
    return app.password_dialog


def type_in(dialog: PasswordDialog, text: str) -> None:
    """Real key presses into the dialog's field, which has the keyboard."""
    press(dialog, "End")  # the pointer over the dialog: it has the keyboard now
    xdotool("type", "--delay", "15", text)
    wait_until(dialog, lambda: dialog.password_var.get() == text, what="the text typed")


def joined(app: ChatApp) -> Callable[[], bool]:
    def predicate() -> bool:
        return app.client is not None and app.client.joined and app.dialog is None

    return predicate


def test_the_question_is_masked_a_wrong_one_asks_again_and_enter_joins(
    make_app: Callable[[], ChatApp], room: ChatServer, passwords_file: Path
) -> None:
    app = make_app()
    connect(app, room.port)
    dialog = asked(app)
    assert f"{HOST}:{room.port}" in dialog.text
    assert str(passwords_file) in dialog.text  # where "remember" keeps it, plainly
    assert dialog.entry.cget("show") == "•"
    type_in(dialog, "guess")
    shoot(app, dialog, "asked", prefix="password")
    click(dialog.show_box)
    wait_until(app.root, lambda: dialog.entry.cget("show") == "", what="the password shown")
    press(dialog, "Return")
    dialog = asked(app, wrong=True)
    shoot(app, dialog, "wrong", prefix="password")
    type_in(dialog, PASSWORD)
    press(dialog, "Return")
    wait_until(app.root, joined(app), what="alice to join")
    assert room.room.users() == ("alice",)
    assert not passwords_file.exists()  # not asked to remember it


def test_remember_works_across_a_restart_of_the_app(
    make_app: Callable[[], ChatApp], room: ChatServer, passwords_file: Path
) -> None:
    app = make_app()
    connect(app, room.port)
    dialog = asked(app)
    type_in(dialog, PASSWORD)
    click(dialog.remember_box)
    wait_until(app.root, dialog.remember_var.get, what="remember ticked")
    press(dialog, "Return")
    wait_until(app.root, joined(app), what="alice to join")
    saved = json.loads(passwords_file.read_text(encoding="utf-8"))
    assert saved["passwords"] == {f"{HOST}:{room.port}": PASSWORD}
    app = make_app()  # the app started again: a new store reads the file
    connect(app, room.port, "bob")
    wait_until(app.root, joined(app), what="bob to join without a question")
    assert app.password_dialog is None


def test_cancel_leaves_the_connect_dialog_with_nothing_lost(
    make_app: Callable[[], ChatApp], room: ChatServer
) -> None:
    app = make_app()
    connect(app, room.port, "carol")
    dialog = asked(app)
    type_in(dialog, "half typ")
    press(dialog, "Escape")
    wait_until(app.root, lambda: app.client is None, what="the attempt to stop")
    connect_dialog = app.dialog
    assert connect_dialog is not None
    fields = (connect_dialog.host_var, connect_dialog.port_var, connect_dialog.name_var)
    assert [v.get() for v in fields] == [HOST, str(room.port), "carol"]
    wait_until(app.root, lambda: "password" in str(connect_dialog.status_label.cget("text")))
    assert room.room.users() == ()


def test_a_remembered_password_that_is_wrong_is_forgotten_and_asked_for(
    make_app: Callable[[], ChatApp], room: ChatServer, passwords_file: Path
) -> None:
    RememberedPasswords(passwords_file).remember(HOST, room.port, "the old one")
    app = make_app()
    connect(app, room.port)
    dialog = asked(app, wrong=True)  # the remembered one was sent first
    assert RememberedPasswords(passwords_file).get(HOST, room.port) is None
    type_in(dialog, PASSWORD)
    press(dialog, "Return")
    wait_until(app.root, joined(app), what="alice to join")
