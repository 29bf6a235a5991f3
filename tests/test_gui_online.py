"""GUI tests of the online list and of what the window says about an outage
(and gives back from it).

Each test builds a ``ChatApp`` in the session's one root (``tk_root``) and
feeds it network events through ``ChatApp.handle``, as its pump does, with
no server: what is under test is how the events are routed to the view and
how the view shows them. The list's Listbox has its ``insert`` and
``delete`` counted, so a test can tell one row changed from a rebuild.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.chat_app import ChatApp
from app.chat_view import LOOKALIKE_MARK
from app.network import ConnectionLost, Received, Unsent, Welcomed
from app.settings import Settings
from server.protocol import Joined, Left, Rename, Renamed, Say, Users, Welcome, sort_names
from tests.trust_helpers import PlaintextAgreed

TS = 1.7e9


@pytest.fixture
def app(tk_root: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatApp]:
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(tmp_path / "config"))
    chat = ChatApp(
        tk_root,
        Settings(host="127.0.0.1", name="alice"),
        save_settings=lambda _settings: None,
        known=PlaintextAgreed(),
        on_exit=lambda: None,
    )
    try:
        yield chat
    finally:
        chat.close()
        tk_root.withdraw()
        tk_root.update()


def welcome(app: ChatApp, name: str, users: list[str]) -> None:
    app.target = ("127.0.0.1", 12345)
    app.handle(Welcomed(Welcome(name, tuple(users)), reconnected=False))
    app.root.update()


def rows(app: ChatApp) -> list[str]:
    return list(app.view.user_list.get(0, "end"))


def unmarked_rows(app: ChatApp) -> list[str]:
    """The rows without the marks before a look-alike's name (the random names
    below include look-alikes: ``a``, ``A`` and a fullwidth ``a``)."""
    return [row.removeprefix(f"{LOOKALIKE_MARK} ") for row in rows(app)]


def colored_rows(app: ChatApp) -> list[str]:
    listbox = app.view.user_list
    return [listbox.get(i) for i in range(listbox.size()) if listbox.itemcget(i, "foreground")]


class Counted:
    """Counts the calls of a widget method, and passes them on."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.method(*args)


def random_names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct names that sort differently by identity and by code point."""
    odd = "\u017f\ufb01\uff41\uff42"  # long s, the fi ligature, fullwidth a and b
    alphabet = f"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéÉøß张伟{odd}0123456789_-."
    names: set[str] = set()
    while len(names) < count:
        tail = "".join(rng.choices(alphabet, k=rng.randint(0, 8)))
        names.add(rng.choice("aAbBzZéÉ张\uff41") + tail)
    return sorted(names)  # a fixed order for the seeded rng


def test_joins_and_leaves_in_a_big_room_change_one_row_each(
    app: ChatApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(14)
    names = random_names(rng, 5500)
    present, later = set(names[:5000]), names[5000:]
    welcome(app, "alice", [*sorted(present, key=lambda _: rng.random()), "alice"])
    present.add("alice")
    assert app.view.users == sort_names(list(present))
    assert unmarked_rows(app) == app.view.users

    inserts = Counted(app.view.user_list.insert)
    deletes = Counted(app.view.user_list.delete)
    monkeypatch.setattr(app.view.user_list, "insert", inserts)
    monkeypatch.setattr(app.view.user_list, "delete", deletes)
    for step in range(500):
        before = (inserts.calls, deletes.calls)
        # Its own row, and the row of one look-alike whose mark this turns on
        # or off (redrawn: deleted and inserted), at most.
        if step % 2 == 0:
            name = later.pop()
            app.handle(Received(Joined(name, TS)))
            present.add(name)
            assert (inserts.calls - before[0], deletes.calls - before[1]) in ((1, 0), (2, 1)), name
        else:
            name = rng.choice(sorted(present - {"alice"}))
            app.handle(Received(Left(name, "quit", TS)))
            present.discard(name)
            assert (inserts.calls - before[0], deletes.calls - before[1]) in ((0, 1), (1, 2)), name
    app.root.update()
    assert app.view.users == sort_names(list(present))
    assert unmarked_rows(app) == app.view.users
    assert str(app.view.online_label.cget("text")) == f"Online — {len(present)}"
    marked = {name for name in present if app.view.lookalike(name) is not None}
    assert {row for row in rows(app) if row.startswith(LOOKALIKE_MARK)} == {
        f"{LOOKALIKE_MARK} {name}" for name in marked
    }
    assert colored_rows(app) == [
        row for row in rows(app) if row == "alice" or row.startswith(LOOKALIKE_MARK)
    ]


def test_a_rename_moves_one_row_to_its_place(app: ChatApp, monkeypatch: pytest.MonkeyPatch) -> None:
    welcome(app, "alice", ["alice", "bob", "carol", "dave"])
    inserts = Counted(app.view.user_list.insert)
    deletes = Counted(app.view.user_list.delete)
    monkeypatch.setattr(app.view.user_list, "insert", inserts)
    monkeypatch.setattr(app.view.user_list, "delete", deletes)
    app.handle(Received(Renamed("bob", "Zoe", TS)))
    assert rows(app) == ["alice", "carol", "dave", "Zoe"]
    assert (inserts.calls, deletes.calls) == (1, 1)
    app.handle(Received(Renamed("nobody", "x", TS)))  # not listed: nothing to move
    app.handle(Received(Joined("carol", TS)))  # listed already: not twice
    app.handle(Received(Left("nobody", "quit", TS)))
    assert rows(app) == ["alice", "carol", "dave", "Zoe"]
    assert (inserts.calls, deletes.calls) == (1, 1)


def test_after_nick_ones_own_new_name_is_highlighted(app: ChatApp) -> None:
    welcome(app, "alice", ["alice", "bob", "carol"])
    assert colored_rows(app) == ["alice"]
    app.handle(Received(Renamed("alice", "zed", TS)))
    app.root.update()
    assert rows(app) == ["bob", "carol", "zed"]
    assert colored_rows(app) == ["zed"]
    assert app.view.user_list.itemcget(2, "foreground") == app.view._own_color
    app.handle(Received(Renamed("bob", "bobby", TS)))  # someone else: still only ours
    assert colored_rows(app) == ["zed"]


def test_double_clicking_ones_own_name_starts_no_private_message(app: ChatApp) -> None:
    welcome(app, "alice", ["alice", "bob"])
    listbox = app.view.user_list
    app.root.deiconify()
    for row, expected in [(0, ""), (1, "/msg bob ")]:
        app.view.set_input("")
        listbox.selection_clear(0, "end")
        listbox.selection_set(row)
        listbox.focus_force()
        app.root.update()
        listbox.event_generate("<Return>")  # bound like a double click
        app.root.update()
        assert app.view.input_text() == expected, rows(app)[row]


def test_a_retry_that_fails_the_same_way_adds_no_line(app: ChatApp) -> None:
    welcome(app, "alice", ["alice"])
    refused = "Nothing is listening at 127.0.0.1:12345. Is the server running?"
    app.handle(ConnectionLost("The server closed the connection.", 1.0, again=False))
    for again in (False, True, True, True):
        app.handle(ConnectionLost(refused, 2.0, again=again))
        app.root.update()
        assert str(app.view.banner_label.cget("text")).startswith(refused)
    transcript = app.view.transcript_text()
    assert transcript.count(refused) == 1
    assert transcript.count("The server closed the connection.") == 1
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and "Retrying in" not in str(
        app.view.banner_label.cget("text")
    ):
        app.root.update()
        time.sleep(0.01)
    assert "Retrying in" in str(app.view.banner_label.cget("text"))


def test_only_the_answer_to_who_adds_a_line_and_it_names_the_first_hundred(app: ChatApp) -> None:
    """Each users frame added a line naming everyone: a server sending lists of
    50,000 names made the Tk thread slower with every frame (0.4 s, 1.4, 3.2,
    5.5, 8.7, 12.6 s) as the transcript grew by megabytes."""
    welcome(app, "alice", ["alice"])
    names = ("alice", *(f"u{i:04d}" for i in range(4999)))
    before = app.view.transcript_text().splitlines()
    for _ in range(3):
        app.handle(Received(Users(names)))  # nobody asked
    app.root.update()
    assert app.view.transcript_text().splitlines() == before
    assert app.view.users == list(names)  # the online list is up to date all the same

    app.handle(Received(Users(names), asked=True))
    app.root.update()
    added = app.view.transcript_text().splitlines()[len(before) :]
    assert len(added) == 1, added
    first = ", ".join(names[:100])
    assert added[0].endswith(f"  Online (5,000): {first} … and 4,900 more"), added[0]
    assert names[100] not in added[0]

    app.handle(Received(Users(("alice", "bob")), asked=True))
    app.root.update()
    assert app.view.transcript_text().splitlines()[-1].endswith("  Online (2): alice, bob")


def test_a_nick_the_connection_dropped_comes_back_in_the_box(app: ChatApp) -> None:
    welcome(app, "alice", ["alice"])
    app.handle(ConnectionLost("The server closed the connection.", 1.0))
    app.handle(Unsent((Rename("bob"), Say("hi")), "The server closed the connection."))
    app.root.update()
    assert app.view.input_text() == "/nick bob"
    assert "Not sent: The server closed the connection." in app.view.transcript_text()
