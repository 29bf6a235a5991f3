"""The room's history in the real window under Xvfb: older pages at the top
of the transcript, Ctrl+F search, "New since you left", hostile pages.

The pointer and keys are real X events (``xdotool``) on the real widgets;
the server is ``tests.fake_room``'s scripted one (it answers as PROTOCOL.md
says, or as a test makes it misbehave), and a real ``ChatServer`` for the
end-to-end tests. Helpers are those of ``tests/test_gui.py``; every wait
is bounded. Screenshots go to ``$LAN_CHAT_SHOTS`` (default
``tests/screenshots/``) as ``client-*.png``.
"""

from __future__ import annotations

import json
import os
import re
import time
import tkinter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import chat_app
from app.chat_app import ChatApp
from app.chat_view import BEGINNING_TEXT, DIVIDER_TEXT, MAX_LINES
from app.last_seen import LastSeen
from app.settings import Settings
from server.chat_server import ChatServer
from server.protocol import MAX_TEXT_LENGTH
from tests.conftest import reset_root
from tests.fake_room import FakeRoom, message
from tests.test_gui import HOST, settle, wait_until
from tests.test_gui_defects import on_screen, pointer_back, shown_on_screen, xdotool
from tests.trust_helpers import PlaintextAgreed
from tests.wire import RawClient, frame

_ = pointer_back  # autouse: the pointer ends where it was
SHOTS = Path(os.environ.get("LAN_CHAT_SHOTS") or Path(__file__).resolve().parent / "screenshots")
WAIT = 10.0


# -- fixtures and helpers -----------------------------------------------------------


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def errors(tk_root: Any) -> Iterator[list[BaseException]]:
    """Every exception a Tk callback raised during the test (none may)."""
    caught: list[BaseException] = []
    before = tk_root.report_callback_exception
    tk_root.report_callback_exception = lambda _t, exc, _tb: caught.append(exc)
    yield caught
    tk_root.report_callback_exception = before


@pytest.fixture
def rooms() -> Iterator[Callable[..., FakeRoom]]:
    running: list[FakeRoom] = []

    def start(messages: list[dict[str, Any]], **options: Any) -> FakeRoom:
        running.append(FakeRoom(messages, **options))
        return running[-1]

    yield start
    for room in running:
        room.stop()


@pytest.fixture
def make_app(tk_root: Any, config_dir: Path) -> Iterator[Callable[..., ChatApp]]:
    apps: list[ChatApp] = []

    def make(last_seen: LastSeen | None = None) -> ChatApp:
        assert not apps, "one ChatApp per test: they share the root window"
        chat = ChatApp(
            tk_root,
            Settings(host=HOST, name=""),
            save_settings=lambda _settings: None,
            known=PlaintextAgreed(),
            on_exit=lambda: None,
            last_seen=last_seen or LastSeen(config_dir / "last_seen.json"),
        )
        apps.append(chat)
        return chat

    yield make
    try:
        for chat in apps:
            chat.close()
    finally:
        reset_root(tk_root)


def numbered(count: int, first: int = 1, **fields: Any) -> list[dict[str, Any]]:
    return [message(number, **fields) for number in range(first, first + count)]


def enter(app: ChatApp, port: int, name: str = "alice") -> None:
    """Connect to 127.0.0.1:``port`` and wait for the welcome's replay to be shown."""
    app.connect(HOST, port, name)
    wait_until(app.root, lambda: app.client is not None and app.client.joined, WAIT, "joined")
    wait_until(app.root, lambda: app.room.replay_left == 0, WAIT, "the replay shown")
    settle(app.root, 0.2)


def shown_numbers(app: ChatApp) -> list[int]:
    """The numbers of the "message N" lines of the transcript, in order."""
    return [int(n) for n in re.findall(r"message (\d+)\b", app.view.transcript_text())]


def line_y(text: tkinter.Text, words: str) -> int:
    """The pixel y (in the widget) of the line showing ``words``."""
    found = text.search(words, "1.0", "end")
    assert found, words
    box = text.dlineinfo(found)
    assert box is not None, f"{words!r} is not on the screen"
    return int(box[1])


def wheel_up_until(app: ChatApp, room: FakeRoom, requests: int, x: int, y: int) -> None:
    """Turn the wheel up over the transcript until ``requests`` history frames came."""
    xdotool("mousemove", x, y)
    settle(app.root, 0.1)  # the transcript sees the pointer come in first
    deadline = time.monotonic() + WAIT
    while len(room.requests) < requests:
        assert time.monotonic() < deadline, "no page asked for at the top"
        xdotool("click", "--repeat", 5, "--delay", 10, 4)
        settle(app.root, 0.1)


def screenshot(window: tkinter.Misc, name: str) -> Path:
    """Save ``window`` as it is on the screen to ``SHOTS/client-name.png``."""
    from PIL import ImageGrab  # noqa: PLC0415 - only the screenshots need it

    settle(window, 0.4)  # let the X server draw everything
    x, y = window.winfo_rootx(), window.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + window.winfo_width(), y + window.winfo_height()))
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"client-{name}.png"
    image.save(path)
    colors = image.getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 20, f"{name} looks blank"
    return path


# -- older pages ------------------------------------------------------------------


def test_scrolling_to_the_top_loads_older_pages_in_place_until_the_beginning(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
) -> None:
    room = rooms(numbered(450), replay=100)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    view, text = app.view, app.view.transcript
    assert shown_numbers(app) == list(range(351, 451))
    assert room.requests == []  # a full screen: nothing asked for yet
    room.hold.clear()  # the next answer waits: the view is measured before it

    # The wheel, up to the top: one page asked for, for what is above the oldest shown.
    x, y = on_screen(text, 200, 120)
    wheel_up_until(app, room, 1, x, y)
    assert room.requests == [{"type": "history", "before": 351, "limit": chat_app.PAGE_SIZE}]
    settle(app.root, 0.3)
    assert len(room.requests) == 1  # one at a time
    under = text.get("@200,120 linestart", "@200,120 lineend")
    top_y = line_y(text, "message 351")
    room.hold.set()
    wait_until(app.root, lambda: 251 in shown_numbers(app), WAIT, "the page shown")
    settle(app.root, 0.2)
    assert line_y(text, "message 351") == top_y  # not a pixel of a jump
    assert text.get("@200,120 linestart", "@200,120 lineend") == under
    assert shown_numbers(app) == list(range(251, 451))

    # Ctrl+Home in the transcript: the next page.
    xdotool("click", 1)  # the transcript takes the keys
    settle(app.root, 0.1)
    xdotool("key", "ctrl+Home")
    wait_until(app.root, lambda: 151 in shown_numbers(app), WAIT, "Ctrl+Home's page")
    assert room.requests[-1]["before"] == 251

    # The scrollbar, dragged to the top.
    settle(app.root, 0.3)
    bar = view.scrolled.vbar
    assert bar is not None and bar.winfo_ismapped()
    first, _last = text.yview()
    bx = bar.winfo_rootx() + bar.winfo_width() // 2
    by = bar.winfo_rooty() + int(bar.winfo_height() * (first + 0.01)) + 3
    xdotool("mousemove", bx, by + 40)
    xdotool("mousedown", 1)
    xdotool("mousemove", bx, bar.winfo_rooty() - 200)
    xdotool("mouseup", 1)
    wait_until(app.root, lambda: 51 in shown_numbers(app), WAIT, "the scrollbar's page")

    # PageUp, to the last page: the beginning of the room.
    xdotool("mousemove", x, y)
    xdotool("click", 1)
    deadline = time.monotonic() + WAIT
    while BEGINNING_TEXT not in view.transcript_text():
        assert time.monotonic() < deadline, "never reached the beginning"
        xdotool("key", "Prior")
        settle(app.root, 0.1)
    assert shown_numbers(app) == list(range(1, 451))  # each once, in order
    assert view.paging == "ended"
    asked = len(room.requests)
    for _ in range(3):
        xdotool("click", "--repeat", 5, 4)
        settle(app.root, 0.1)
    assert len(room.requests) == asked  # nothing more to ask for
    first, second, third = view.transcript_text().splitlines()[:3]
    assert "You joined" in first and second == BEGINNING_TEXT and third.endswith("message 1")
    assert errors == []
