""" "Servers on your network" in the real connection dialog (Xvfb), with real
pointer and keyboard events (xdotool), against real servers on 127.0.0.1.

The dialog's search is sent only to the test's servers: each ChatApp here
is given its targets, ``(127.0.0.1, port)`` by unicast. Screenshots, light
and dark, go to ``LAN_CHAT_SHOTS`` (default ``tests/screenshots/``) as
``discovery-*.png``.
"""

from __future__ import annotations

import time
import tkinter
from collections.abc import Callable
from pathlib import Path

import pytest

from app.chat_app import ChatApp
from app.connect_dialog import CHOOSE, NOTHING_FOUND, SEARCHING, SERVER_ROWS, ConnectDialog
from app.discovery import Target
from app.settings import Settings
from app.trust import KnownServers
from app.trust_dialog import TrustDialog
from server.chat_server import ChatServer
from server.config import TlsMode
from server.protocol import Announcement, encode_reply
from tests.test_client_discovery import Responder, responder  # noqa: F401 - a fixture
from tests.test_gui import HOST, disabled, free_port, settle, wait_until
from tests.test_gui_defects import pointer_back, xdotool  # noqa: F401 - pointer_back is autouse
from tests.test_gui_trust import click, shoot
from tests.trust_helpers import PlaintextAgreed
from tests.wire import RawClient

WAIT = 10.0  # a search takes about a second; the servers answer at once


# Nothing here may touch the real settings (conftest.config_dir).
pytestmark = pytest.mark.usefixtures("config_dir")


@pytest.fixture
def targets() -> list[Target]:
    """Where the dialogs of this test look for servers (filled in by the test)."""
    return []


@pytest.fixture
def make_app(open_app: Callable[..., ChatApp], targets: list[Target]) -> Callable[..., ChatApp]:
    def make(settings: Settings | None = None, known: KnownServers | None = None) -> ChatApp:
        return open_app(
            settings or Settings(host=HOST, name="alice"),
            known=known if known is not None else PlaintextAgreed(),
            discovery_targets=lambda: list(targets),
        )

    return make


Servers = tuple[ChatServer, ChatServer, ChatServer]


@pytest.fixture
def servers(
    start_server: Callable[..., ChatServer], targets: list[Target], tmp_path: Path
) -> Servers:
    """ "Studio" (TLS when asked), "Kitchen" (no TLS) and "Office" (a password,
    so TLS only), all asked by the dialogs."""
    studio = start_server(room_name="Studio")
    kitchen = start_server(room_name="Kitchen", tls=TlsMode.OFF, data_dir=tmp_path / "2")
    office = start_server(room_name="Office", room_password="sesame", data_dir=tmp_path / "3")
    targets.extend((HOST, server.port) for server in (studio, kitchen, office))
    return studio, kitchen, office


def listed(dialog: ConnectDialog, count: int) -> None:
    wait_until(
        dialog,
        lambda: len(dialog.servers) == count and not dialog.searching,
        timeout=WAIT,
        what=f"{count} servers listed",
    )


def row_of(dialog: ConnectDialog, room: str) -> str:
    (row,) = [r for r, server in dialog.servers.items() if server.announcement.room == room]
    return row


def values(dialog: ConnectDialog, row: str) -> list[str]:
    return [str(v) for v in dialog.server_list.item(row, "values")]


def click_row(dialog: ConnectDialog, row: str, clicks: int = 1) -> None:
    """Real clicks on ``row`` of the found servers' list."""
    tree = dialog.server_list
    wait_until(tree, tree.winfo_viewable, what="the list shown")
    settle(tree, 0.2)
    x, y, _width, height = tree.bbox(row, "room")
    xdotool("mousemove", tree.winfo_rootx() + x + 12, tree.winfo_rooty() + y + height // 2)
    settle(tree, 0.1)
    xdotool("click", "--repeat", clicks, "--delay", 60, "1")


def type_into(entry: tkinter.Misc, text: str) -> None:
    """Click ``entry``, select what it holds and type ``text`` over it."""
    click(entry)
    settle(entry, 0.1)
    xdotool("key", "ctrl+a")  # ttk's Entry: select all
    xdotool("type", "--delay", 20, text)


def joined(app: ChatApp) -> Callable[[], bool]:
    def predicate() -> bool:
        return app.client is not None and app.client.joined and app.dialog is None

    return predicate


def test_found_servers_are_listed_and_a_click_fills_the_address_then_connect_joins(
    make_app: Callable[..., ChatApp], servers: Servers, open_client: Callable[..., RawClient]
) -> None:
    studio, kitchen, office = servers
    open_client(studio, "bob")
    open_client(kitchen, "carol")
    watcher = open_client(kitchen, "watcher")
    app = make_app()
    dialog = app.open_dialog()
    listed(dialog, 3)
    assert str(dialog.search_label.cget("text")) == CHOOSE
    studio_row, kitchen_row = row_of(dialog, "Studio"), row_of(dialog, "Kitchen")
    # Room, people, password, encrypted, address.
    assert values(dialog, studio_row) == [
        "Studio",
        "1 person",
        "No",
        "Yes",
        f"{HOST}:{studio.port}",
    ]
    assert values(dialog, kitchen_row) == [
        "Kitchen",
        "2 people",
        "No",
        "No",
        f"{HOST}:{kitchen.port}",
    ]
    office_row = row_of(dialog, "Office")
    assert values(dialog, office_row) == [
        "Office",
        "0 people",
        "Yes",
        "Yes",
        f"{HOST}:{office.port}",
    ]
    # The address the dialog started with (the settings') is not one of theirs.
    assert dialog.port_var.get() not in {str(s.port) for s in servers}
    shoot(app, dialog, "found", prefix="discovery")
    click_row(dialog, kitchen_row)
    wait_until(
        dialog,
        lambda: (dialog.host_var.get(), dialog.port_var.get()) == (HOST, str(kitchen.port)),
        what="the address filled in",
    )
    assert dialog.server_list.selection() == (kitchen_row,)
    assert dialog.invite is None  # a discovery answer is no invite
    shoot(app, dialog, "chosen", prefix="discovery")
    click_row(dialog, studio_row)
    wait_until(dialog, lambda: dialog.port_var.get() == str(studio.port), what="another server")
    click_row(dialog, kitchen_row)
    wait_until(dialog, lambda: dialog.port_var.get() == str(kitchen.port), what="back again")
    click(dialog.connect_button)
    wait_until(app.root, joined(app), timeout=WAIT, what="alice to join Kitchen")
    assert app.target == (HOST, kitchen.port)
    assert watcher.skip_until("joined")["name"] == "alice"


def test_enter_on_a_server_of_the_list_joins_it(
    make_app: Callable[..., ChatApp], servers: Servers, open_client: Callable[..., RawClient]
) -> None:
    """From the keyboard: the row the list's focus is on, Enter."""
    studio, _, _ = servers
    watcher = open_client(studio, "watcher")
    app = make_app()
    dialog = app.open_dialog()
    listed(dialog, 3)
    studio_row = row_of(dialog, "Studio")
    click_row(dialog, studio_row)  # the pointer over the list gives it the keyboard
    wait_until(dialog, lambda: dialog.port_var.get() == str(studio.port), what="filled in")
    dialog.server_list.selection_remove(studio_row)
    dialog.port_var.set("1")  # as if typed since: Enter must take the row's again
    dialog.server_list.focus(studio_row)
    dialog.server_list.focus_set()
    settle(dialog, 0.1)
    xdotool("key", "Return")
    wait_until(app.root, joined(app), timeout=WAIT, what="alice to join Studio")
    assert app.target == (HOST, studio.port)
    assert watcher.skip_until("joined")["name"] == "alice"


def test_from_starting_the_client_to_a_joined_room_through_the_found_list(
    make_app: Callable[..., ChatApp],
    servers: Servers,
    open_client: Callable[..., RawClient],
    config_dir: Path,
) -> None:
    """A first run as a person would make it: the dialog opens, the servers
    show, a name is typed, a double-click on the room, the safety words
    agreed to; timed (printed) from building the app to the joined room."""
    studio, _, _ = servers
    watcher = open_client(studio, "watcher")
    known = KnownServers(config_dir / "known_servers.json")
    started = time.perf_counter()
    app = make_app(Settings(host="", name=""), known)  # a first run: nothing remembered
    dialog = app.open_dialog()
    # Listed as the answers come (the search goes on for a second more).
    wait_until(dialog, lambda: len(dialog.servers) == 3, timeout=WAIT, what="3 servers shown")
    seen = time.perf_counter()
    type_into(dialog.name_entry, "alice")
    wait_until(dialog, lambda: dialog.name_var.get() == "alice", what="the name typed")
    click_row(dialog, row_of(dialog, "Studio"), clicks=2)
    wait_until(app.root, lambda: isinstance(app.trust_dialog, TrustDialog), what="first contact")
    trust = app.trust_dialog
    assert isinstance(trust, TrustDialog)
    click(trust.match_button)
    wait_until(app.root, joined(app), timeout=WAIT, what="alice to join Studio")
    took = time.perf_counter() - started
    assert watcher.skip_until("joined")["name"] == "alice"
    print(
        f"\nfrom start to a joined room through the found list: {took:.2f} s "
        f"(servers listed after {seen - started:.2f} s)"
    )
    assert took < 20.0


def test_nothing_found_says_why_and_refresh_searches_again(
    make_app: Callable[..., ChatApp], targets: list[Target], start_server: Callable[..., ChatServer]
) -> None:
    targets.append((HOST, free_port()))
    app = make_app()
    dialog = app.open_dialog()
    assert str(dialog.search_label.cget("text")) == SEARCHING
    assert disabled(dialog.refresh_button)
    wait_until(dialog, dialog.winfo_viewable, what="the dialog shown")
    settle(dialog, 0.1)
    assert dialog.searching  # still: the search goes on for about a second
    size = dialog.winfo_width(), dialog.winfo_height()
    wait_until(dialog, lambda: not dialog.searching, timeout=WAIT, what="the search to end")
    settle(dialog, 0.1)
    assert (dialog.winfo_width(), dialog.winfo_height()) == size  # nothing moved
    text = str(dialog.search_label.cget("text"))
    assert text == NOTHING_FOUND
    for cause in ("firewall", "Wi-Fi", "Public", "VPN", "Typing the address"):
        assert cause in text
    assert not dialog.servers and not dialog.server_list.get_children()
    assert not disabled(dialog.refresh_button)
    shoot(app, dialog, "nothing-found", prefix="discovery")
    # A server started since is found by Refresh.
    late = start_server(room_name="Started late")
    targets.append((HOST, late.port))
    click(dialog.refresh_button)
    wait_until(dialog, lambda: dialog.searching, what="a new search")
    assert str(dialog.search_label.cget("text")) == SEARCHING
    assert disabled(dialog.refresh_button)
    listed(dialog, 1)
    assert values(dialog, next(iter(dialog.servers)))[0] == "Started late"
    assert str(dialog.search_label.cget("text")) == CHOOSE


def test_more_servers_than_rows_scroll_and_the_dialog_keeps_its_width(
    make_app: Callable[..., ChatApp],
    targets: list[Target],
    responder: Callable[..., Responder],  # noqa: F811 - the fixture imported above
) -> None:
    def many(query: bytes) -> list[bytes]:
        return [
            encode_reply(
                Announcement(f"Room {n}", 1000 + n, n, "auto", False, "0.2.0", f"sha256:{n:064x}"),
                len(query),
            )
            for n in range(SERVER_ROWS + 3)
        ]

    app = make_app()
    empty = app.open_dialog()  # its search asks nowhere
    wait_until(empty, lambda: empty.winfo_viewable() and not empty.searching, what="empty")
    settle(empty, 0.2)
    width = empty.winfo_width()
    assert not empty.scrollbar.winfo_ismapped()
    app._close_dialog()
    answers = responder(many)
    targets.append((HOST, answers.port))
    dialog = app.open_dialog()
    listed(dialog, SERVER_ROWS + 3)
    settle(dialog, 0.2)
    assert dialog.scrollbar.winfo_ismapped()
    assert dialog.winfo_width() == width
    last = dialog.server_list.get_children()[-1]
    assert dialog.server_list.bbox(last) == ""  # below the rows shown: scrolled to
    dialog.server_list.see(last)
    settle(dialog, 0.1)
    assert dialog.server_list.bbox(last) != ""
    shoot(app, dialog, "many", prefix="discovery")


def test_the_list_leaves_the_fields_alone_while_connecting_and_the_search_ends_with_the_dialog(
    make_app: Callable[..., ChatApp], servers: Servers
) -> None:
    _, kitchen, _ = servers
    app = make_app()
    dialog = app.open_dialog()
    listed(dialog, 3)
    dialog.show_connecting()  # as on Connect, before the network answers
    dialog.server_list.selection_set(row_of(dialog, "Kitchen"))
    dialog.update()
    assert dialog.port_var.get() != str(kitchen.port)
    dialog.show_error("Nothing there.")
    dialog.search()
    assert dialog.searching and dialog.browser.searching
    app.close()  # the dialog too: its search's thread is stopped and joined
    assert not dialog.browser.searching
