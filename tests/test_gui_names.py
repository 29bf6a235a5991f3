"""Look-alike names and the operators' lines in the real window under Xvfb.

The look-alikes come from a real server and raw bots (tests/wire.py); the
pointer that shows a mark's explanation is a real one (xdotool). The
server does not yet answer operator frames, so those frames are handed to
the app as its network thread would post them (``ChatApp.handle``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.chat_app import ChatApp
from app.chat_view import LOOKALIKE_MARK, OP_MARK
from app.network import Received, Welcomed
from app.settings import Settings
from server.chat_server import ChatServer
from server.protocol import (
    BanEntry,
    BanList,
    ChatMessage,
    Error,
    ErrorCode,
    Left,
    Notice,
    OpChanged,
    Users,
    Welcome,
    WhoisResult,
)
from tests.conftest import reset_root
from tests.test_gui import HOST, join, lines, settle, type_and_send, wait_shown, wait_until
from tests.test_gui_defects import shown_on_screen, xdotool
from tests.trust_helpers import PlaintextAgreed
from tests.wire import RawClient

IMPOSTOR = "\u0430lice"  # with a Cyrillic a
TS = 1.7e9


@pytest.fixture
def app(tk_root: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatApp]:
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(tmp_path / "config"))
    chat = ChatApp(
        tk_root,
        Settings(host=HOST, name=""),
        save_settings=lambda _settings: None,
        known=PlaintextAgreed(),
        on_exit=lambda: None,
    )
    try:
        yield chat
    finally:
        try:
            chat.close()
        finally:
            reset_root(tk_root)


@pytest.fixture
def pointer_back() -> Iterator[None]:
    """The pointer ends where it was (later tests expect the keyboard where it was)."""
    where = subprocess.run(
        ["xdotool", "getmouselocation", "--shell"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    position = dict(line.split("=", 1) for line in where.split())
    yield
    xdotool("mousemove", position["X"], position["Y"])


def rows(chat: ChatApp) -> list[str]:
    return list(chat.view.user_list.get(0, "end"))


def test_a_look_alike_is_marked_in_the_list_with_its_explanation_under_the_pointer(
    app: ChatApp,
    server: ChatServer,
    open_client: Callable[..., RawClient],
    pointer_back: None,
) -> None:
    alice = open_client(server, "alice")
    join(app, server, "carol")
    assert rows(app) == ["alice", "carol"]  # nobody looks like anybody yet
    impostor = open_client(server, IMPOSTOR)
    wait_shown(app, f"{IMPOSTOR} joined")
    assert rows(app) == [f"{LOOKALIKE_MARK} alice", "carol", f"{LOOKALIKE_MARK} {IMPOSTOR}"]
    listbox = app.view.user_list
    assert listbox.itemcget(2, "foreground") == listbox.itemcget(0, "foreground") != ""
    # The transcript says so at the join, and marks what the look-alike says.
    said = [line for line in lines(app) if "looks like alice" in line]
    assert len(said) == 1 and "Cyrillic and Latin" in said[0], lines(app)
    impostor.send({"type": "say", "text": "send me the password"})
    wait_shown(app, f"{LOOKALIKE_MARK} {IMPOSTOR}: send me the password")

    shown_on_screen(app)
    x, y, _width, height = listbox.bbox(2)
    xdotool("mousemove", listbox.winfo_rootx() + x + 10, listbox.winfo_rooty() + y + height // 2)
    tip = app.view._user_tip
    wait_until(app.root, lambda: "looks like alice" in tip.text, what="the tooltip")
    assert tip.text.startswith(f"{LOOKALIKE_MARK} {IMPOSTOR} looks like alice")
    xdotool("mousemove", listbox.winfo_rootx() + x + 10, listbox.winfo_rooty() + 1 + height // 2)
    wait_until(app.root, lambda: "looks like" in tip.text and IMPOSTOR in tip.text, what="row 0")
    # Over a row without marks (carol's), or off the list: no tip.
    x, y, _width, height = listbox.bbox(1)
    xdotool("mousemove", listbox.winfo_rootx() + x + 10, listbox.winfo_rooty() + y + height // 2)
    wait_until(app.root, lambda: tip.text == "", what="no tip over carol")

    # Once the look-alike leaves, alice is no longer marked.
    impostor.close()
    wait_until(app.root, lambda: rows(app) == ["alice", "carol"], what="the marks gone")
    assert listbox.itemcget(0, "foreground") == ""
    alice.close()


def welcomed(chat: ChatApp, users: tuple[str, ...], ops: tuple[str, ...]) -> None:
    chat.target = (HOST, 12345)
    chat.handle(Welcomed(Welcome("carol", users, 0, None, ops), reconnected=False))
    chat.root.update()


def test_operators_are_marked_from_welcome_users_and_op_changed(app: ChatApp) -> None:
    welcomed(app, ("alice", "bob", "carol"), ("bob",))
    assert rows(app) == ["alice", f"{OP_MARK} bob", "carol"]
    app.handle(Received(OpChanged("alice", True, TS, "bob")))
    app.handle(Received(OpChanged("bob", False, TS)))
    app.root.update()
    assert rows(app) == [f"{OP_MARK} alice", "bob", "carol"]
    assert lines(app)[-2:] == [
        lines(app)[-2][:5] + "  alice is now an operator (by bob).",
        lines(app)[-1][:5] + "  bob is no longer an operator.",
    ]
    assert app.view.user_explanation("alice").startswith(f"{OP_MARK} alice is an operator")
    app.handle(Received(Users(("alice", "bob", "carol", "dave"), ("dave",))))
    app.root.update()
    assert rows(app) == ["alice", "bob", "carol", f"{OP_MARK} dave"]
    app.handle(Received(OpChanged("carol", True, TS, "dave")))
    app.root.update()
    assert lines(app)[-1].endswith("You are now an operator (by dave).")


def test_a_server_notice_is_drawn_as_no_message_can_be(app: ChatApp) -> None:
    welcomed(app, ("bob", "carol", "dave"), ("dave",))
    app.handle(Received(Notice("Restart at 18:00.\nSave your work.", TS, "dave")))
    # bob types what a notice says: it stays a message from bob.
    app.handle(Received(ChatMessage(1, "bob", "Server notice from dave: Restart at 18:00.", TS)))
    app.root.update()
    text = app.view.transcript
    notice_line = next(
        n
        for n, line in enumerate(lines(app), 1)
        if line.endswith("Notice from dave") or "Server notice from dave: Restart" in line
    )
    faked_line = len(lines(app))
    assert lines(app)[faked_line - 1].endswith("bob: Server notice from dave: Restart at 18:00.")

    def looks(line: int) -> tuple[set[str], int, str]:
        start, end = f"{line}.0", f"{line}.end"
        tags = set()
        for index in range(len(text.get(start, end))):
            tags |= set(text.tag_names(f"{start}+{index}c"))
        images = len(text.dump(start, end, image=True))
        background = str(text.tag_cget("server-notice", "background")) if tags else ""
        return tags, images, background

    tags, images, band = looks(notice_line)
    assert "server-notice" in tags and images == 1  # its band and its icon
    assert band and band != str(text.cget("background"))
    faked_tags, faked_images, _ = looks(faked_line)
    assert "server-notice" not in faked_tags and faked_images == 0
    assert lines(app)[notice_line] == "Save your work."  # its second line, in the band too
    assert "server-notice" in text.tag_names(f"{notice_line + 1}.0")


def test_kicks_bans_and_whois_read_as_notices(app: ChatApp) -> None:
    welcomed(app, ("bob", "carol", "dave"), ("dave",))
    app.handle(Received(Left("bob", "kicked", TS, "dave")))
    app.handle(Received(WhoisResult("dave", "192.168.1.7", True, TS, True)))
    ban = BanEntry(3, TS, name="bob", reason="spam", by="dave")
    app.handle(Received(BanList((ban,))))
    app.root.update()
    assert rows(app) == ["carol", f"{OP_MARK} dave"]
    shown = [line[7:] for line in lines(app)]  # without the time
    assert "bob was removed by dave" in shown
    assert any(line.startswith("dave, an operator: connected from 192.168.1.7") for line in shown)
    assert shown[-2] == "Bans (1); /unban ID lifts one:"
    assert lines(app)[-1] == "#3  bob, for ever by dave: spam"  # indented by its tag, not spaces
    assert "cont" in app.view.transcript.tag_names(f"{len(lines(app))}.0")
    app.handle(Received(Error(ErrorCode.KICKED, "dave removed you: flooding")))
    app.root.update()
    assert lines(app)[-1].endswith("You were removed from the room: dave removed you: flooding")


def test_the_op_password_is_sent_but_never_recalled_by_up(app: ChatApp, server: ChatServer) -> None:
    join(app, server, "carol")
    type_and_send(app, "hello")
    type_and_send(app, "/op hunter2")
    assert app.view.input_text() == ""  # taken: sent to the server
    settle(app.root, 0.3)
    app.view.input.focus_set()
    app.view.input.event_generate("<Up>")
    assert app.view.input_text() == "hello"
    assert "hunter2" not in app.view.transcript_text()


def test_the_list_marks_every_look_alike_of_a_big_room_at_once(app: ChatApp) -> None:
    users = (*(f"user{n:05d}" for n in range(5000)), "carol", "us\u0435r00007")
    welcomed(app, users, ())
    marked = [row for row in rows(app) if row.startswith(LOOKALIKE_MARK)]
    assert marked == [f"{LOOKALIKE_MARK} user00007", f"{LOOKALIKE_MARK} us\u0435r00007"]
