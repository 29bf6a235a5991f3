"""GUI tests of the desktop client: the connect dialog, the chat window and
``ChatApp`` driving them, against a real server on 127.0.0.1.

Every test shares the session's one ttkbootstrap ``App`` (``tk_root``) and
builds its own ``ChatApp`` in it, closed at teardown. Nothing runs
``mainloop``: ``wait_until`` turns the Tk crank (``update()``, which also
runs the app's ``after()`` pump) until what the test waits for is on the
screen, or fails after a bounded time. The "other user" is a raw
``tests.wire`` client, which shares no code with the app. Screenshots go to
``tests/screenshots/``.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
import tkinter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ttkbootstrap as ttk
from PIL import ImageGrab

from app import chat_app, commands
from app.chat_app import PUMP_BATCH, ChatApp
from app.chat_view import Action
from app.connect_dialog import ConnectDialog, check_fields
from app.network import ChatClient, Received
from app.settings import Settings
from server.chat_server import ChatServer
from server.config import ServerConfig
from server.protocol import ChatMessage
from tests import trust_helpers
from tests.conftest import reset_root
from tests.trust_helpers import PlaintextAgreed
from tests.wire import RawClient, frame

HOST = "127.0.0.1"
WAIT = 5.0
EMOJI = "\U0001f600"  # 😀, beyond U+FFFF
SHOTS = Path(__file__).resolve().parent / "screenshots"

StartServer = Callable[..., ChatServer]


# -- helpers --------------------------------------------------------------------


def wait_until(
    root: tkinter.Misc, predicate: Callable[[], object], timeout: float = WAIT, what: str = ""
) -> None:
    """Run the Tk event loop until ``predicate()`` is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        root.update()
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or predicate.__name__}"
            )
        time.sleep(0.01)


def settle(root: tkinter.Misc, seconds: float = 0.2) -> None:
    """Run the Tk event loop for ``seconds`` (to show that nothing happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        root.update()
        time.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def hint_under(entry: tkinter.Widget) -> str:
    """The text of the hint label the dialog grids under ``entry``."""
    info = entry.grid_info()
    slaves = entry.master.grid_slaves(row=int(info["row"]) + 1, column=int(info["column"]))
    assert len(slaves) == 1, slaves
    return str(slaves[0].cget("text"))


def disabled(widget: Any) -> bool:
    return bool(widget.instate(["disabled"]))


def status_of(dialog: ConnectDialog) -> str:
    return str(dialog.status_label.cget("text"))


def lines(app: ChatApp) -> list[str]:
    return app.view.transcript_text().splitlines()


def notice_text(line: str) -> str:
    """A notice's line without the time it starts with."""
    time_, _, text = line.partition("  ")
    assert re.fullmatch(r"\d\d:\d\d", time_), line
    return text


def shows(app: ChatApp, text: str) -> Callable[[], bool]:
    """A predicate: ``text`` is somewhere in the transcript."""

    def predicate() -> bool:
        return text in app.view.transcript_text()

    predicate.__name__ = f"{text!r} in the transcript"
    return predicate


def wait_shown(app: ChatApp, text: str, timeout: float = WAIT) -> None:
    wait_until(app.root, shows(app, text), timeout)


def fill(dialog: ConnectDialog, host: str, port: int | str, name: str) -> None:
    dialog.host_var.set(host)
    dialog.port_var.set(str(port))
    dialog.name_var.set(name)


def join(app: ChatApp, srv: ChatServer, name: str) -> None:
    """Connect ``app`` to ``srv`` as ``name`` through the dialog, as a user would."""
    dialog = app.open_dialog()
    fill(dialog, HOST, srv.port, name)
    assert not disabled(dialog.connect_button), dialog.problems()
    dialog.connect_button.invoke()
    wait_until(
        app.root,
        lambda: app.client is not None and app.client.joined and app.dialog is None,
        what=f"{name} to join",
    )
    wait_shown(app, f"You joined {HOST}:{srv.port} as {name}.")


def type_and_send(app: ChatApp, text: str) -> None:
    app.view.set_input(text)
    app.view.send_input()


def menu_item(app: ChatApp, menu: str, item: int) -> None:
    """Choose entry ``item`` of the menu bar's ``menu``, as a click would."""
    submenu = app.root.nametowidget(app.menubar.entrycget(menu, "menu"))
    submenu.invoke(item)


def message(client: RawClient, timeout: float = WAIT) -> dict[str, Any]:
    """The next ``message`` frame ``client`` gets (presence frames skipped)."""
    return client.skip_until("message", timeout)


def screenshot(window: tkinter.Misc, name: str) -> Path:
    """Save ``window`` as it is on the screen to ``tests/screenshots/name``."""
    window.deiconify()
    wait_until(window, window.winfo_viewable, what=f"{name}: window mapped")
    settle(window, 0.3)  # let the X server draw everything
    x, y = window.winfo_rootx(), window.winfo_rooty()
    width, height = window.winfo_width(), window.winfo_height()
    image = ImageGrab.grab(bbox=(x, y, x + width, y + height))
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    image.save(path)
    assert image.size == (width, height)
    colors = image.getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 20, f"{name} looks blank: {len(colors)} colours"
    return path


class NoJitterRng(random.Random):
    """Stretches every reconnection pause to 100 s: only "Reconnect now" can end it."""

    def uniform(self, a: float, b: float) -> float:
        return 100.0


class ServerThread:
    """A ChatServer on a fixed port (a restart), served on a thread; ``stop`` ends it."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = ChatServer(config)
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="test-serve-again"
        )
        self.thread.start()
        trust_helpers.serving(self.server)

    def stop(self) -> None:
        trust_helpers.stopped(self.server)
        self.server.shutdown()
        self.thread.join(5.0)
        self.server.server_close()
        assert not self.thread.is_alive()


# -- fixtures ---------------------------------------------------------------------


# Nothing here may touch the real settings (conftest.config_dir).
pytestmark = pytest.mark.usefixtures("config_dir")


@pytest.fixture
def saved() -> list[Settings]:
    """Every ``Settings`` the app asked to save, in order."""
    return []


@pytest.fixture
def exits() -> list[bool]:
    """One entry per call of the app's ``on_exit``."""
    return []


@pytest.fixture
def make_app(
    tk_root: Any, saved: list[Settings], exits: list[bool]
) -> Iterator[Callable[..., ChatApp]]:
    """Build the ChatApp under test in the session's root; closed at teardown."""
    apps: list[ChatApp] = []

    def make(
        settings: Settings | None = None,
        client_factory: Callable[..., ChatClient] = ChatClient,
    ) -> ChatApp:
        assert not apps, "one ChatApp per test: they share the root window"
        chat = ChatApp(
            tk_root,
            settings or Settings(host=HOST, name=""),
            save_settings=saved.append,
            client_factory=client_factory,
            known=PlaintextAgreed(),
            on_exit=lambda: exits.append(True),
        )
        apps.append(chat)
        return chat

    yield make
    try:
        for chat in apps:
            if not exits:  # quit() already closed it (close() twice is not safe)
                chat.close()
    finally:
        reset_root(tk_root)


@pytest.fixture
def app(make_app: Callable[..., ChatApp]) -> ChatApp:
    return make_app()


# -- check_fields (no display needed) --------------------------------------------


PORT_RULE = "The port is a number from 1 to 65535."


@pytest.mark.parametrize(
    ("host", "port", "name", "expected"),
    [
        (HOST, "12345", "alice", {}),
        ("chat.example.org", "1", "zoë", {}),
        (HOST, "65535", "a.b-c_d9", {}),
        (HOST, "0", "alice", {"port": PORT_RULE}),
        (HOST, "65536", "alice", {"port": PORT_RULE}),
        (HOST, "abc", "alice", {"port": PORT_RULE}),
        (HOST, "", "alice", {"port": PORT_RULE}),
        (HOST, "-1", "alice", {"port": PORT_RULE}),
        ("", "12345", "alice", {"host": "Enter the server's address, such as 192.168.1.20."}),
        ("   ", "12345", "alice", {"host": "Enter the server's address, such as 192.168.1.20."}),
        ("my host", "12345", "alice", {"host": "An address has no spaces."}),
        (HOST, "12345", "", {"name": "Choose a name to be known by."}),
        (
            HOST,
            "12345",
            "bob smith",
            {"name": "A name can only hold letters, digits and _ - . (not a space)."},
        ),
        (
            HOST,
            "12345",
            "bob!",
            {"name": "A name can only hold letters, digits and _ - . (not '!')."},
        ),
        (HOST, "12345", "x" * 33, {"name": "A name can be at most 32 characters long."}),
        (HOST, "12345", "x" * 32, {}),
        (HOST, "12345", "\u0301a", {"name": "A name cannot start with a combining mark."}),
        (
            "",
            "0",
            "",
            {
                "host": "Enter the server's address, such as 192.168.1.20.",
                "port": PORT_RULE,
                "name": "Choose a name to be known by.",
            },
        ),
    ],
)
def test_check_fields(host: str, port: str, name: str, expected: dict[str, str]) -> None:
    assert check_fields(host, port, name) == expected


def test_check_fields_port_of_digits_python_cannot_parse() -> None:
    # "²".isdigit() is True, yet int("²") raises: a port typed as a
    # superscript (or any such Unicode digit) must be a hint, not a crash.
    assert check_fields(HOST, "²", "alice") == {"port": PORT_RULE}


# -- the connect dialog -----------------------------------------------------------


def test_each_field_shows_its_problem_as_the_user_types(app: ChatApp) -> None:
    dialog = app.open_dialog()
    app.root.update()
    # Fresh dialog, no name yet: nothing is scolded yet, and Connect stays
    # clickable (a disabled button is nearly invisible in the light theme).
    assert dialog.name_var.get() == ""
    assert not disabled(dialog.connect_button)
    assert hint_under(dialog.name_entry) == ""

    dialog.name_var.set("bob smith")
    assert hint_under(dialog.name_entry) == (
        "A name can only hold letters, digits and _ - . (not a space)."
    )
    dialog.name_var.set("bob")
    assert hint_under(dialog.name_entry) == ""

    for port in ("0", "65536", "abc", "\N{SUPERSCRIPT TWO}"):
        dialog.port_var.set(port)
        assert hint_under(dialog.port_entry) == PORT_RULE, port
    dialog.port_var.set("12345")
    assert hint_under(dialog.port_entry) == ""

    dialog.host_var.set("")
    assert hint_under(dialog.host_entry) == "Enter the server's address, such as 192.168.1.20."
    dialog.host_var.set("my host")
    assert hint_under(dialog.host_entry) == "An address has no spaces."
    dialog.connect_button.invoke()  # with a problem left: no connection, focus on it
    app.root.update()
    assert app.client is None
    # Bare Xvfb has no window manager to focus the window; ask which widget
    # holds the dialog's focus.
    assert dialog.focus_lastfor() is dialog.host_entry
    dialog.host_var.set(HOST)
    assert hint_under(dialog.host_entry) == ""
    assert not disabled(dialog.connect_button)
    assert app.client is None


def test_a_port_pasted_with_a_control_character_connects(
    app: ChatApp, start_server: StartServer
) -> None:
    # check_fields strips U+001F (str.strip does), int() does not: Connect raised.
    srv = start_server()
    dialog = app.open_dialog()
    fill(dialog, HOST, f"{srv.port}\x1f", "alice")
    assert not disabled(dialog.connect_button), dialog.problems()
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: app.client is not None and app.client.joined, what="the join")


def test_submitting_with_a_problem_shows_every_hint_and_connects_nowhere(app: ChatApp) -> None:
    dialog = app.open_dialog()
    dialog.port_var.set("12345")  # touched and fine; host untouched and fine
    assert hint_under(dialog.name_entry) == ""  # the name is untouched: no hint yet
    dialog.submit()  # Enter in the dialog
    assert hint_under(dialog.name_entry) == "Choose a name to be known by."
    assert hint_under(dialog.host_entry) == ""
    assert app.client is None
    assert status_of(dialog) == ""


def test_nothing_listening_is_reported_in_the_dialog_with_the_fields_kept(
    app: ChatApp,
) -> None:
    port = free_port()
    dialog = app.open_dialog()
    fill(dialog, HOST, port, "alice")
    dialog.connect_button.invoke()
    assert status_of(dialog) == f"Connecting to {HOST}:{port}..."
    assert disabled(dialog.connect_button)
    assert str(dialog.cancel_button.cget("text")) == "Cancel"
    expected = f"Nothing is listening at {HOST}:{port}. Is the server running?"
    wait_until(app.root, lambda: status_of(dialog) == expected, what="the refusal")
    assert app.dialog is dialog
    assert (dialog.host_var.get(), dialog.port_var.get(), dialog.name_var.get()) == (
        HOST,
        str(port),
        "alice",
    )
    for entry in (dialog.host_entry, dialog.port_entry, dialog.name_entry):
        assert not disabled(entry)
    assert not disabled(dialog.connect_button)
    assert str(dialog.connect_button.cget("text")) == "Connect"
    assert str(dialog.cancel_button.cget("text")) == "Quit"
    assert app.client is None  # dropped: its thread and sockets are gone (no_leaks)
    assert str(app.view.status_label.cget("text")) == "Not connected"


def test_unknown_host_is_reported_in_the_dialog(app: ChatApp) -> None:
    dialog = app.open_dialog()
    fill(dialog, "no-such-host.invalid", 12345, "alice")
    dialog.connect_button.invoke()
    expected = "Cannot find the computer 'no-such-host.invalid'. Check the server address."
    wait_until(app.root, lambda: status_of(dialog) == expected, timeout=20, what="the lookup")
    assert dialog.host_var.get() == "no-such-host.invalid"
    assert dialog.name_var.get() == "alice"
    assert not disabled(dialog.connect_button)
    assert app.client is None


def test_server_full_is_reported_in_the_dialog(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server(max_clients=1)
    open_client(srv)  # holds the only slot (connected, not even joined)
    wait_until(app.root, lambda: srv.connection_count == 1, what="the slot taken")
    dialog = app.open_dialog()
    fill(dialog, HOST, srv.port, "alice")
    dialog.connect_button.invoke()
    expected = "The server is full. Try again later."
    wait_until(app.root, lambda: status_of(dialog) == expected, what="server-full")
    assert (dialog.host_var.get(), dialog.port_var.get(), dialog.name_var.get()) == (
        HOST,
        str(srv.port),
        "alice",
    )
    assert not disabled(dialog.connect_button)
    assert app.client is None


def test_name_taken_asks_for_another_name_on_the_same_connection(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    saved: list[Settings],
) -> None:
    srv = start_server()
    other = open_client(srv, "alice")  # someone already goes by alice
    dialog = app.open_dialog()
    fill(dialog, HOST, srv.port, "alice")
    dialog.connect_button.invoke()
    expected = "The name alice is already in use. Choose another name."
    wait_until(app.root, lambda: status_of(dialog) == expected, what="name-taken")
    assert str(dialog.connect_button.cget("text")) == "Use this name"
    assert disabled(dialog.host_entry) and disabled(dialog.port_entry)
    assert not disabled(dialog.name_entry)
    assert str(dialog.cancel_button.cget("text")) == "Cancel"
    client = app.client
    assert client is not None and client.running and not client.joined

    dialog.name_var.set("alice2")
    assert not disabled(dialog.connect_button)
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: app.dialog is None, what="the dialog to close")
    assert app.client is client  # the same connection, never a second one
    assert client.joined and client.name == "alice2"
    other.expect("joined", name="alice2")
    other.expect_silence(0.2)  # no other join, no leave
    assert notice_text(lines(app)[0]) == f"You joined {HOST}:{srv.port} as alice2."
    assert saved[-1].name == "alice2"
    assert app.view.users == ["alice", "alice2"]


def test_name_invalid_from_the_server_asks_for_another_name(
    app: ChatApp, start_server: StartServer
) -> None:
    srv = start_server()
    dialog = app.open_dialog()
    fill(dialog, HOST, srv.port, "bad name")
    # The dialog refuses the name itself...
    dialog.submit()
    assert app.client is None
    assert hint_under(dialog.name_entry) == (
        "A name can only hold letters, digits and _ - . (not a space)."
    )
    # ...and when a name gets past it (the app connects with it directly),
    # the server's refusal lands in the dialog too.
    app.connect(HOST, srv.port, "bad name")
    expected = "A name can only hold letters, digits and _ - . (not a space). Choose another name."
    wait_until(app.root, lambda: status_of(dialog) == expected, what="name-invalid")
    assert str(dialog.connect_button.cget("text")) == "Use this name"
    dialog.name_var.set("good_name")
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: app.dialog is None, what="the dialog to close")
    assert app.client is not None and app.client.name == "good_name"


def test_cancel_while_connecting_returns_to_idle(
    app: ChatApp, start_server: StartServer, exits: list[bool]
) -> None:
    # A listener that never answers: the attempt stays "connecting".
    with socket.create_server((HOST, 0)) as silent:
        port = silent.getsockname()[1]
        dialog = app.open_dialog()
        fill(dialog, HOST, port, "alice")
        dialog.connect_button.invoke()
        settle(app.root, 0.3)
        assert status_of(dialog) == f"Connecting to {HOST}:{port}..."
        assert dialog.progress.winfo_manager() == "grid"
        assert all(disabled(e) for e in (dialog.host_entry, dialog.port_entry, dialog.name_entry))
        client = app.client
        assert client is not None and client.running

        dialog.cancel_button.invoke()
        assert status_of(dialog) == "Cancelled."
        assert app.client is None
        assert not client.running  # its thread has ended
        assert dialog.progress.winfo_manager() == ""
        assert not any(
            disabled(e) for e in (dialog.host_entry, dialog.port_entry, dialog.name_entry)
        )
        assert not disabled(dialog.connect_button)
        assert str(dialog.connect_button.cget("text")) == "Connect"
        assert str(dialog.cancel_button.cget("text")) == "Quit"
        assert app.dialog is dialog and not exits

    # Idle means usable: the same dialog connects to a real server.
    srv = start_server()
    dialog.port_var.set(str(srv.port))
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: app.dialog is None, what="the dialog to close")
    assert app.client is not None and app.client.joined


def test_quit_in_the_idle_dialog_exits(app: ChatApp, exits: list[bool]) -> None:
    dialog = app.open_dialog()
    app.root.update()
    assert str(dialog.cancel_button.cget("text")) == "Quit"
    dialog.cancel_button.invoke()
    assert exits == [True]
    assert app.dialog is None


# -- chatting -----------------------------------------------------------------------


def test_messages_and_emoji_reach_both_transcripts(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")

    type_and_send(app, f"hello bob {EMOJI}")
    got = message(bob)
    assert (got["from"], got["text"]) == ("alice", f"hello bob {EMOJI}")
    wait_shown(app, f"alice: hello bob {EMOJI}")
    assert app.view.input_text() == ""  # taken: the box is cleared

    bob.send({"type": "say", "text": f"hi alice {EMOJI}!"})
    wait_shown(app, f"bob: hi alice {EMOJI}!")

    # Enter in the input box sends too.
    app.view.input.focus_force()
    app.view.set_input("sent with Enter")
    app.root.update()
    app.view.input.event_generate("<Return>")
    assert message(bob)["text"] == f"hi alice {EMOJI}!"  # bob's own echo first
    assert message(bob)["text"] == "sent with Enter"
    wait_shown(app, "alice: sent with Enter")
    assert app.view.input_text() == ""

    # Shift+Enter is a new line in the box, not a send.
    app.view.set_input("two")
    app.view.input.event_generate("<Shift-Return>")
    app.view.input.insert("end", "lines")
    assert app.view.input_text() == "two\nlines"
    bob.expect_silence(0.2)


def test_online_list_follows_join_leave_and_rename(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    status = app.view.status_label
    assert app.view.users == ["alice"]
    assert str(app.view.online_label.cget("text")) == "Online — 1"
    assert str(status.cget("text")) == f"Connected to {HOST}:{srv.port} as alice, 1 online"

    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    assert app.view.users == ["alice", "bob"]
    assert str(app.view.online_label.cget("text")) == "Online — 2"
    assert str(status.cget("text")) == f"Connected to {HOST}:{srv.port} as alice, 2 online"
    carol = open_client(srv, "Carol")
    wait_shown(app, "Carol joined")
    assert app.view.users == ["alice", "bob", "Carol"]  # sorted without regard to case
    assert list(app.view.user_list.get(0, "end")) == ["alice", "bob", "Carol"]

    bob.send({"type": "rename", "name": "robert"})
    wait_shown(app, "bob is now known as robert")
    assert app.view.users == ["alice", "Carol", "robert"]

    bob.send({"type": "bye"})
    wait_shown(app, "robert left")
    assert app.view.users == ["alice", "Carol"]
    assert str(status.cget("text")) == f"Connected to {HOST}:{srv.port} as alice, 2 online"

    carol.close()  # no bye: the server sees the connection drop
    wait_shown(app, "Carol lost their connection")
    assert app.view.users == ["alice"]
    assert str(app.view.online_label.cget("text")) == "Online — 1"
    assert str(status.cget("text")) == f"Connected to {HOST}:{srv.port} as alice, 1 online"


def test_commands(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    saved: list[Settings],
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    carol = open_client(srv, "carol")
    wait_shown(app, "carol joined")
    bob.skip_until("joined")  # carol

    type_and_send(app, "/me waves")
    got = message(bob)
    assert (got["text"], got.get("action")) == ("waves", True)
    wait_shown(app, "* alice waves")

    type_and_send(app, "/msg bob psst, bob")
    got = message(bob)
    assert (got["from"], got["to"], got["text"]) == ("alice", "bob", "psst, bob")
    wait_shown(app, "alice → bob (private): psst, bob")

    type_and_send(app, "//etc/hosts is a path")
    assert message(bob)["text"] == "/etc/hosts is a path"
    # carol saw the action and the next message, not the private one between.
    assert [message(carol)["text"], message(carol)["text"]] == ["waves", "/etc/hosts is a path"]

    type_and_send(app, "/nick alicia")
    assert bob.skip_until("renamed")["new"] == "alicia"
    assert carol.skip_until("renamed")["new"] == "alicia"
    wait_shown(app, "You are now known as alicia.")
    assert app.view.users == ["alicia", "bob", "carol"]
    assert app.view.own_name == "alicia"
    assert saved[-1].name == "alicia"
    status = str(app.view.status_label.cget("text"))
    assert status == f"Connected to {HOST}:{srv.port} as alicia, 3 online"

    type_and_send(app, "/who")
    wait_shown(app, "Online (3): alicia, bob, carol")

    before = app.view.transcript_text()
    type_and_send(app, "/help")
    assert app.view.transcript_text() == f"{before}\n{commands.HELP}"
    assert app.view.input_text() == ""

    type_and_send(app, "/foo bar")
    assert notice_text(lines(app)[-1]) == (
        "There is no command /foo. Type /help to see the commands."
    )
    assert app.view.input_text() == "/foo bar"  # kept, to fix the typo
    type_and_send(app, "/me")
    assert notice_text(lines(app)[-1]) == "Usage: /me ACTION, as in /me waves"
    type_and_send(app, "/msg bob")
    assert notice_text(lines(app)[-1]) == "Usage: /msg NAME TEXT"
    type_and_send(app, "/nick bad name")
    assert notice_text(lines(app)[-1]) == (
        "A name can only hold letters, digits and _ - . (not a space)."
    )
    assert app.view.input_text() == "/nick bad name"
    bob.expect_silence(0.3)  # none of those reached the server
    carol.expect_silence(0.1)


def test_quit_typed_in_the_box_leaves_and_exits(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    exits: list[bool],
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    type_and_send(app, "quit")
    wait_until(app.root, lambda: exits == [True], what="quit to run")
    assert bob.skip_until("left") == {
        "type": "left",
        "name": "alice",
        "reason": "quit",
        "ts": pytest.approx(time.time(), abs=5),
    }
    assert app.client is None


def test_sending_while_disconnected_keeps_the_text(app: ChatApp) -> None:
    type_and_send(app, "are you there?")
    assert app.view.input_text() == "are you there?"
    assert notice_text(lines(app)[-1]) == (
        "Not connected: your text stays in the box until you are back."
    )


def test_rate_limited_says_come_back_into_the_input(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()  # the default limit: a burst of 20, then 5 a second
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    texts = [f"line {i:02}" for i in range(25)]
    for text in texts:
        assert app.on_send(text)
    # Whatever the server refused comes back into the box, in order.
    wait_until(app.root, shows(app, "Not sent: You are sending too fast; slow down."))
    delivered = []
    try:
        while True:
            delivered.append(message(bob, 1.0)["text"])
    except TimeoutError:
        pass
    settle(app.root, 0.3)
    refused = [text for text in texts if text not in delivered]
    assert refused, "the rate limit refused nothing"
    assert delivered == [text for text in texts if text not in refused]
    # Nothing lost, nothing doubled, nothing merged: the box holds the first
    # refused line and the rest wait their turn, in the order they were typed.
    assert [app.view.input_text(), *app._held] == refused
    shown = [line.split("  ", 1)[1] for line in lines(app) if "alice: line" in line]
    assert shown == [f"alice: {text}" for text in delivered]
    app.view.send_input()  # Enter sends the first; the next takes its place
    settle(app.root, 0.1)
    assert app.view.input_text() == refused[1]


def test_pump_handles_at_most_one_batch_per_call(
    app: ChatApp, start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    client = app.client
    assert client is not None
    count = 3 * PUMP_BATCH + 7
    for i in range(count):
        client.events.put(Received(ChatMessage(10_000 + i, "bot", f"queued {i}", time.time())))
    handled: list[object] = []
    original = app.handle
    monkeypatch.setattr(app, "handle", lambda event: (handled.append(event), original(event)))
    # The count bound is under test, not the time bound, which a loaded
    # machine could reach first.
    monkeypatch.setattr(chat_app, "PUMP_BUDGET", 30.0)
    app.pump()
    assert len(handled) == PUMP_BATCH
    assert client.events.qsize() == count - PUMP_BATCH
    wait_until(app.root, lambda: len(handled) == count, what="the rest of the queue")
    assert lines(app)[-1].endswith(f"bot: queued {count - 1}")


def test_a_burst_of_5000_messages_is_shown_in_slices(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = start_server(rate_limit=None)
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    total = 5000

    per_pump = [0]  # events handled by each pump call (a call may be under way)
    durations: list[float] = []
    from_bob = [0]
    original_pump, original_handle = app.pump, app.handle

    def handle(event: object) -> None:
        per_pump[-1] += 1
        if isinstance(event, Received) and getattr(event.message, "sender", None) == "bob":
            from_bob[0] += 1
        original_handle(event)  # type: ignore[arg-type]

    def pump() -> None:
        per_pump.append(0)
        start = time.perf_counter()
        original_pump()
        durations.append(time.perf_counter() - start)

    monkeypatch.setattr(app, "handle", handle)
    monkeypatch.setattr(app, "pump", pump)
    started = time.monotonic()
    bob.send_raw(b"".join(frame({"type": "say", "text": f"burst {i}"}) for i in range(total)))
    wait_until(app.root, lambda: from_bob[0] >= total, timeout=60, what="5,000 messages")
    drained = time.monotonic() - started

    assert max(per_pump) <= PUMP_BATCH
    shown = [line.split("  ", 1)[1] for line in lines(app) if "  bob: burst " in line]
    assert shown == [f"bob: burst {i}" for i in range(total)]
    busy = sorted(sec * 1000 for sec, n in zip(durations, per_pump, strict=False) if n)
    print(
        f"\nburst: {total} messages drained in {drained:.2f} s over {len(durations)} pump calls"
        f" ({len(busy)} with events); longest pump {busy[-1]:.1f} ms, median busy pump"
        f" {busy[len(busy) // 2]:.1f} ms; most events in one pump {max(per_pump)}"
        f" (PUMP_BATCH {PUMP_BATCH})"
    )


# -- connection trouble, closing ------------------------------------------------------


def test_reconnect_now_after_the_server_restarts(
    make_app: Callable[..., ChatApp],
    start_server: StartServer,
    saved: list[Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.network.FAST_RETRY", 100.0)  # a shutdown's short pauses too

    def slow_to_retry(host: str, port: int, name: str, **trust: Any) -> ChatClient:
        return ChatClient(host, port, name, rng=NoJitterRng(), **trust)

    app = make_app(client_factory=slow_to_retry)
    srv = start_server()
    port = srv.port
    join(app, srv, "alice")
    client = app.client
    assert not app.view.banner_visible

    srv.shutdown()
    srv.server_close()
    wait_until(app.root, lambda: app.view.banner_visible, what="the banner")
    wait_shown(app, "The server is shutting down.")
    assert "Retrying" in str(app.view.banner_label.cget("text"))
    assert app.view.users == []
    assert str(app.view.status_label.cget("text")) == "Not connected"

    again = ServerThread(ServerConfig(host=HOST, port=port))
    try:
        settle(app.root, 0.3)
        assert app.view.banner_visible  # the pause is 100 s: nothing happens by itself
        app.view.banner_button.invoke()
        wait_until(app.root, lambda: not app.view.banner_visible, what="the banner to go")
        wait_shown(app, f"Reconnected to {HOST}:{port}.")
        assert app.client is client and client is not None and client.joined
        assert client.name == "alice" and app.view.own_name == "alice"
        assert app.view.users == ["alice"]
        assert str(app.view.status_label.cget("text")) == (
            f"Connected to {HOST}:{port} as alice, 1 online"
        )
        assert saved[-1].name == "alice"
    finally:
        again.stop()


def test_disconnect_then_connect_again(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    menu_item(app, "Chat", 1)  # Disconnect
    assert bob.skip_until("left")["reason"] == "quit"
    assert app.view.banner_visible
    assert str(app.view.banner_button.cget("text")) == "Connect again"
    assert notice_text(lines(app)[-1]) == "You left the room."
    type_and_send(app, "kept")
    assert app.view.input_text() == "kept"

    app.view.banner_button.invoke()
    assert bob.skip_until("joined")["name"] == "alice"
    wait_until(app.root, lambda: not app.view.banner_visible, what="the banner to go")
    app.view.send_input()
    assert message(bob)["text"] == "kept"


def test_the_banners_button_offers_the_way_back_in_that_fits(
    make_app: Callable[..., ChatApp],
    start_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Connect again" once the app has stopped trying by itself (a
    disconnect), "Reconnect now" while it retries; after a welcome, a loss
    offers to reconnect again, whatever the last banner offered."""
    monkeypatch.setattr("app.network.FAST_RETRY", 100.0)  # a shutdown's short pauses too

    def slow_to_retry(host: str, port: int, name: str, **trust: Any) -> ChatClient:
        return ChatClient(host, port, name, rng=NoJitterRng(), **trust)

    app = make_app(client_factory=slow_to_retry)
    srv = start_server()
    join(app, srv, "alice")
    menu_item(app, "Chat", 1)  # Disconnect
    assert app.view.banner_visible
    assert str(app.view.banner_button.cget("text")) == "Connect again"
    app.view.banner_button.invoke()
    wait_until(app.root, lambda: not app.view.banner_visible, what="the banner to go")
    wait_until(app.root, lambda: app.client is not None and app.client.joined, what="joined")

    srv.shutdown()
    srv.server_close()
    wait_until(app.root, lambda: app.view.banner_visible, what="the banner")
    assert "Retrying" in str(app.view.banner_label.cget("text"))
    assert str(app.view.banner_button.cget("text")) == "Reconnect now"
    client = app.client
    assert client is not None
    app.view.banner_button.invoke()  # the client is retrying: it only skips the pause
    assert app.client is client


def test_a_failed_switch_to_another_server_shows_no_stale_room(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    menu_item(app, "Chat", 0)  # Connect to another server…
    dialog = app.dialog
    assert dialog is not None
    port = free_port()
    dialog.port_var.set(str(port))
    dialog.connect_button.invoke()
    assert bob.skip_until("left")["name"] == "alice"  # the old room is left at once
    wait_until(app.root, lambda: "Nothing is listening" in status_of(dialog), what="refusal")
    assert str(app.view.status_label.cget("text")) == "Not connected"
    # Not in any room now: nobody may be listed as online, nor the old
    # server named in the title.
    assert app.view.users == []
    assert app.root.title() == "LAN Chat"


def test_closing_leaves_the_room_and_no_thread(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    exits: list[bool],
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    app.quit()
    assert exits == [True]
    left = bob.skip_until("left")
    assert (left["name"], left["reason"]) == ("alice", "quit")
    assert not [t.name for t in threading.enumerate() if t.name == "chat-network"]
    assert not app.view.winfo_exists()
    app.quit()  # a second quit (the window's close button, say) does nothing
    assert exits == [True]


# -- looks ------------------------------------------------------------------------------


def test_theme_switch_recolours_and_is_saved(
    app: ChatApp, tk_root: Any, saved: list[Settings], recwarn: pytest.WarningsRecorder
) -> None:
    assert tk_root.theme_mode == "light"
    light_bg = str(app.view.transcript.cget("background"))
    light_list = str(app.view.user_list.cget("background"))
    app.toggle_theme()
    assert tk_root.theme_mode == "dark"
    assert saved[-1].dark is True
    assert app.dark_var.get() is True
    dark_bg = str(app.view.transcript.cget("background"))
    assert dark_bg != light_bg
    assert str(app.view.user_list.cget("background")) != light_list
    menu_item(app, "View", 0)  # the "Dark theme" check box
    assert tk_root.theme_mode == "light"
    assert saved[-1].dark is False
    assert app.dark_var.get() is False
    assert str(app.view.transcript.cget("background")) == light_bg
    # ttkbootstrap turns a failing theme callback into a warning: none here.
    failed = [w for w in recwarn if "theme-change callback" in str(w.message)]
    assert not failed, [str(w.message) for w in failed]


def _fill_transcript(app: ChatApp, srv: ChatServer, bob: RawClient) -> None:
    bob.send({"type": "say", "text": f"Morning all {EMOJI} — the build is green"})
    wait_shown(app, "the build is green")
    type_and_send(app, "/me pours coffee")
    wait_shown(app, "pours coffee")
    type_and_send(app, "Great, shipping it. Notes at https://example.org/release")
    wait_shown(app, "example.org/release")
    bob.send({"type": "say", "text": "alice: can you check the installer?"})
    bob.send({"type": "say", "text": "psst", "to": "alice"})
    wait_shown(app, "bob → alice (private): psst")
    type_and_send(app, "/foo")
    app.view.set_input("A draft that is not sent yet")


def test_screenshots(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient], tk_root: Any
) -> None:
    srv = start_server(motd="Welcome to the LAN party")
    open_client(srv, "carol")
    dialog = app.open_dialog()
    fill(dialog, HOST, "99999", "alice")
    app.root.update()
    screenshot(dialog, "dialog-light.png")
    dialog.port_var.set(str(free_port()))
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: "Nothing is listening" in status_of(dialog))
    app.toggle_theme()
    screenshot(dialog, "dialog-dark.png")
    app.toggle_theme()
    with socket.create_server((HOST, 0)) as silent:  # accepts, never answers
        dialog.port_var.set(str(silent.getsockname()[1]))
        dialog.connect_button.invoke()
        screenshot(dialog, "dialog-connecting-light.png")
        dialog.cancel_button.invoke()

    dialog.port_var.set(str(srv.port))
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: app.dialog is None, what="the dialog to close")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    _fill_transcript(app, srv, bob)
    screenshot(tk_root, "chat-light.png")
    app.toggle_theme()
    screenshot(tk_root, "chat-dark.png")

    retry = Action("Reconnect now", app.reconnect)
    app.view.show_banner("The server closed the connection. Retrying in 3 s…", retry)
    screenshot(tk_root, "chat-banner-dark.png")
    app.toggle_theme()
    screenshot(tk_root, "chat-banner-light.png")
    app.view.hide_banner()
    names = ["dialog-light", "dialog-dark", "dialog-connecting-light"]
    names += ["chat-light", "chat-dark", "chat-banner-dark", "chat-banner-light"]
    for name in names:
        assert (SHOTS / f"{name}.png").stat().st_size > 1000


class Alerts:
    """What ``ChatApp`` did to get the user's attention: bells rung, toasts
    shown (the options each was made with)."""

    def __init__(self) -> None:
        self.bells: list[bool] = []
        self.toasts: list[dict[str, Any]] = []


@pytest.fixture
def alerts(app: ChatApp, monkeypatch: pytest.MonkeyPatch) -> Alerts:
    """``app`` in the background, with its bells and toasts recorded, not shown."""
    seen = Alerts()

    class FakeToast:
        def __init__(self, **options: Any) -> None:
            seen.toasts.append(options)

        def show_toast(self) -> None:
            pass

    monkeypatch.setattr(app.root, "bell", lambda: seen.bells.append(True))
    monkeypatch.setattr(ttk, "ToastNotification", FakeToast)
    monkeypatch.setattr(app, "_has_focus", lambda: False)
    return seen


def test_in_the_background_unread_messages_count_and_mentions_alert(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    alerts: Alerts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_app, "TOAST_MS", 0)  # each toast is gone before the next alert
    srv = start_server()
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")

    bob.send({"type": "say", "text": "lunch at noon"})
    wait_shown(app, "lunch at noon")
    assert app.root.title().startswith("(1) LAN Chat")
    assert alerts.bells == [] and alerts.toasts == []

    bob.send({"type": "say", "text": "Alice, are you coming?"})
    wait_shown(app, "Alice, are you coming?")
    assert app.root.title().startswith("(2) LAN Chat")
    assert alerts.bells == [True]
    assert alerts.toasts[0]["title"] == "bob mentioned you"

    bob.send({"type": "say", "text": "psst", "to": "alice"})
    wait_shown(app, "psst")
    assert len(alerts.bells) == 2 and alerts.toasts[1]["title"] == "bob"

    type_and_send(app, "my own words, alice")  # one's own echo is never unread
    wait_shown(app, "my own words, alice")
    assert app.root.title().startswith("(3) LAN Chat") and len(alerts.bells) == 2

    app._focused(None)  # the user comes back to the window
    assert app.root.title().startswith("LAN Chat")


def test_a_burst_of_mentions_in_the_background_rings_and_toasts_once(
    app: ChatApp,
    start_server: StartServer,
    open_client: Callable[..., RawClient],
    alerts: Alerts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A toast per mention once stacked thousands of windows: Tk crawled,
    # memory grew, and Tk crashed (tests/bench/client_memory.py --background).
    monkeypatch.setattr(chat_app, "TOAST_MS", 600_000)  # the first toast outlasts the test
    srv = start_server(rate_limit=None)
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    count = 300
    bob.send_raw(
        b"".join(
            frame({"type": "say", "text": f"alice, ping {i}"})
            if i % 2
            else frame({"type": "say", "text": f"psst {i}", "to": "alice"})
            for i in range(count)
        )
    )
    wait_shown(app, f"alice, ping {count - 1}")
    assert alerts.bells == [True]
    assert [toast["title"] for toast in alerts.toasts] == ["bob"]  # the first, private
    assert app.root.title().startswith(f"({count}) LAN Chat")


def test_up_and_down_keep_the_draft(app: ChatApp, start_server: StartServer) -> None:
    srv = start_server()
    join(app, srv, "alice")
    type_and_send(app, "earlier message")
    app.view.set_input("my unsent draft")
    app.view.input.mark_set("insert", "1.0")
    app.view.input.event_generate("<Up>")
    assert app.view.input_text() == "earlier message"
    app.view.input.event_generate("<Down>")
    assert app.view.input_text() == "my unsent draft"


def test_closing_the_dialog_over_the_chat_window_keeps_the_app(
    app: ChatApp, start_server: StartServer, exits: list[bool]
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    dialog = app.open_dialog()  # Chat > Connect to another server...
    assert str(dialog.cancel_button.cget("text")) == "Close"
    dialog.cancel_button.invoke()
    assert exits == []
    assert app.dialog is None
    assert app.client is not None and app.client.joined


def test_connect_flag_with_a_taken_name_asks_for_another(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    open_client(srv, "alice")
    app.connect(HOST, srv.port, "alice")  # what --connect does, with no dialog shown
    wait_until(app.root, lambda: app.dialog is not None, what="the dialog")
    dialog = app.dialog
    assert dialog is not None
    assert status_of(dialog) == "The name alice is already in use. Choose another name."
    dialog.name_var.set("alice2")
    dialog.submit()
    wait_until(app.root, lambda: app.client is not None and app.client.joined, what="welcome")
    assert app.client.name == "alice2"
