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

from app import chat_view, room_history
from app.chat_app import ChatApp
from app.chat_view import BEGINNING_TEXT, DIVIDER_TEXT, MAX_LINES, NOT_KEPT_TEXT
from app.last_seen import LastSeen, last_seen_path
from app.settings import Settings
from app.text import day_label
from server.chat_server import ChatServer
from server.protocol import MAX_TEXT_LENGTH
from tests.fake_room import FakeRoom, message
from tests.test_gui import HOST, settle, wait_until
from tests.test_gui_defects import on_screen, pointer_back, shown_on_screen, xdotool
from tests.wire import RawClient, frame

_ = pointer_back  # autouse: the pointer ends where it was
SHOTS = Path(os.environ.get("LAN_CHAT_SHOTS") or Path(__file__).resolve().parent / "screenshots")
WAIT = 10.0


# -- fixtures and helpers -----------------------------------------------------------


# Nothing here may touch the real settings (conftest.config_dir).
pytestmark = pytest.mark.usefixtures("config_dir")


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
def make_app(open_app: Callable[..., ChatApp], config_dir: Path) -> Callable[..., ChatApp]:
    made: list[ChatApp] = []

    def make(last_seen: LastSeen | None = None) -> ChatApp:
        assert not made, "one ChatApp per test: they share the root window"
        made.append(
            open_app(
                Settings(host=HOST, name=""),
                last_seen=last_seen or LastSeen(config_dir / "last_seen.json"),
            )
        )
        return made[0]

    return make


def numbered(count: int, first: int = 1, **fields: Any) -> list[dict[str, Any]]:
    return [message(number, **fields) for number in range(first, first + count)]


def enter(app: ChatApp, port: int, name: str = "alice") -> None:
    """Connect to 127.0.0.1:``port`` and wait for the welcome's replay to be shown."""
    app.connect(HOST, port, name)
    wait_until(app.root, lambda: app.client is not None and app.client.joined, WAIT, "joined")
    wait_until(app.root, lambda: app.history.replay_left == 0, WAIT, "the replay shown")
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


def wheel_up_until(
    app: ChatApp, room: FakeRoom, requests: int, x: int, y: int, *, burst: int = 5
) -> None:
    """Turn the wheel up over the transcript (``burst`` notches at a time) until
    ``requests`` history frames came."""
    xdotool("mousemove", x, y)
    settle(app.root, 0.1)  # the transcript sees the pointer come in first
    deadline = time.monotonic() + WAIT
    while len(room.requests) < requests:
        assert time.monotonic() < deadline, "no page asked for at the top"
        xdotool("click", "--repeat", burst, "--delay", 10, 4)
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
    assert room.requests == [{"type": "history", "before": 351, "limit": room_history.PAGE_SIZE}]
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
    text.yview_moveto(0.0)
    screenshot(app.root, "beginning-light")
    app.toggle_theme()
    screenshot(app.root, "beginning-dark")
    app.toggle_theme()
    assert errors == []


# -- search -------------------------------------------------------------------------


def search_room() -> list[dict[str, Any]]:
    """A room where some messages, old and new, speak of crème brûlée."""
    texts = {
        5: "Who brings the CRÈME BRÛLÉE on friday?",
        40: "creme brulee again, with extra creme",
        90: "nothing about dessert",
        130: "Crème brûlée at the party tonight!",
        149: "the last one",
    }
    return [message(n, texts.get(n)) for n in range(1, 150)]


def hit_words(box: tkinter.Text) -> list[str]:
    """The highlighted words of a text box, in order."""
    ranges = box.tag_ranges("hit")
    return [box.get(ranges[i], ranges[i + 1]) for i in range(0, len(ranges), 2)]


def test_ctrl_f_searches_highlights_and_shows_a_result_in_its_context(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(room_history, "SEARCH_LIMIT", 2)  # so that "More results" shows
    room = rooms(search_room(), replay=20)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    view = app.view
    transcript_before = view.transcript_text()
    xdotool("mousemove", *on_screen(view.transcript, 200, 100))
    xdotool("click", 1)
    settle(app.root, 0.1)
    xdotool("key", "ctrl+f")
    wait_until(app.root, lambda: view.search_open, WAIT, "the search pane")
    panel = view.search_panel
    assert panel is not None
    wait_until(app.root, lambda: app.root.focus_get() is panel.query_entry, WAIT, "focus")
    xdotool("type", "--delay", 20, "creme BRULEE")
    xdotool("key", "Return")
    wait_until(app.root, lambda: "2+ messages" in panel.status_text(), WAIT, "results")
    assert room.requests[-1] == {"type": "search", "query": "creme BRULEE", "limit": 2}
    lines = panel.results_text().splitlines()
    assert lines[0].startswith("bob  ") and lines[1] == "Crème brûlée at the party tonight!"
    assert lines[3] == "creme brulee again, with extra creme"
    assert hit_words(panel.results) == ["Crème", "brûlée", "creme", "brulee", "creme"]
    assert panel.more_button.winfo_ismapped()
    screenshot(app.root, "search-light")

    # More results: further back, from the oldest result shown.
    bx, by = on_screen(panel.more_button, 20, 8)
    xdotool("mousemove", bx, by)
    xdotool("click", 1)
    wait_until(app.root, lambda: "3 messages" in panel.status_text(), WAIT, "more results")
    further = {"type": "search", "query": "creme BRULEE", "limit": 2, "before": 40}
    assert room.requests[-1] == further
    assert "Who brings the CRÈME BRÛLÉE on friday?" in panel.results_text()
    assert not panel.more_button.winfo_ismapped()

    # A click on a result: its conversation, in the pane; the transcript as it was.
    found = panel.results.search("extra creme", "1.0", "end")
    panel.results.see(found)
    settle(app.root, 0.2)
    box = panel.results.bbox(found)
    assert box is not None
    xdotool("mousemove", *on_screen(panel.results, box[0] + 4, box[1] + box[3] // 2))
    settle(app.root, 0.1)  # Tk knows what is under the pointer
    xdotool("click", 1)
    wait_until(app.root, lambda: panel.showing_context, WAIT, "the context")
    assert room.requests[-1] == {"type": "history", "before": 51, "limit": 21}
    context = panel.context_text()
    assert "message 30" in context and "message 50" in context and "message 29" not in context
    chosen = panel.context.tag_ranges("chosen-message")
    assert "extra creme" in panel.context.get(chosen[0], chosen[1])
    assert view.transcript_text() == transcript_before
    screenshot(app.root, "search-context-light")
    app.toggle_theme()
    screenshot(app.root, "search-context-dark")
    panel.back_button.invoke()
    assert not panel.showing_context and "extra creme" in panel.results_text()
    screenshot(app.root, "search-dark")
    app.toggle_theme()

    # Escape closes the pane, and the input box has the keys again.
    panel.query_entry.focus_force()
    settle(app.root, 0.1)
    xdotool("key", "Escape")
    wait_until(app.root, lambda: not view.search_open, WAIT, "the pane closed")
    assert errors == []


def test_search_errors_show_in_the_pane(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
) -> None:
    def refuse(obj: dict[str, Any]) -> dict[str, Any] | None:
        if "boom" in obj.get("query", ""):
            return {
                "type": "error",
                "code": "bad-field",
                "message": "Too many words.",
                "in_reply_to": "search",
            }
        return None

    room = rooms(search_room(), replay=20, answer=refuse)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    panel = app.view.open_search()
    settle(app.root, 0.2)
    panel.query_var.set("?!  ...")
    panel.query_entry.event_generate("<Return>")
    assert "Type a word" in panel.status_text()
    panel.query_var.set(" ".join(f"w{n}" for n in range(17)))
    panel.query_entry.event_generate("<Return>")
    assert "at most 16 different words" in panel.status_text()
    assert [r for r in room.requests if r["type"] == "search"] == []  # neither was asked
    panel.query_var.set("boom")
    panel.query_entry.event_generate("<Return>")
    wait_until(app.root, lambda: panel.status_text() == "Too many words.", WAIT, "the error")
    assert "Too many words." not in app.view.transcript_text()
    assert errors == []


def test_a_server_without_search_or_pages_says_so_and_asks_nothing(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
) -> None:
    room = rooms(numbered(30), replay=5, features=())
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    view = app.view
    assert view.transcript.yview()[0] == 0.0  # at the top: nothing to load from
    settle(app.root, 0.3)
    xdotool("mousemove", *on_screen(view.transcript, 200, 100))
    settle(app.root, 0.1)
    xdotool("click", "--repeat", 5, 4)
    xdotool("key", "ctrl+f")
    wait_until(app.root, lambda: view.search_open, WAIT, "the search pane")
    settle(app.root, 0.2)
    assert view.search_panel is not None
    assert view.search_panel.status_text() == "This server cannot search its history."
    view.search_panel.query_var.set("message")
    view.search_panel.query_entry.event_generate("<Return>")
    assert view.search_panel.status_text() == "This server cannot search its history."
    settle(app.root, 0.3)
    assert room.requests == []
    assert BEGINNING_TEXT not in view.transcript_text()
    assert errors == []


# -- new since you left -----------------------------------------------------------


def test_new_since_you_left_divides_and_counts_and_is_saved_on_close(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    config_dir: Path,
    errors: list[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = {437, 445}  # said by alice, from another computer: not unread
    room = rooms(
        [message(n, sender="alice" if n in mine else "bob") for n in range(1, 451)], replay=100
    )
    seen = LastSeen(config_dir / "last_seen.json")
    seen.saw(f"127.0.0.1:{room.port}", 420)
    seen.save()
    app = make_app(LastSeen(config_dir / "last_seen.json"))
    focused = [False]
    monkeypatch.setattr(app, "_has_focus", lambda: focused[0])
    shown_on_screen(app)
    enter(app, room.port)
    view, text = app.view, app.view.transcript
    lines = view.transcript_text().splitlines()
    divider = [n for n, line in enumerate(lines) if DIVIDER_TEXT in line]
    assert len(divider) == 1
    assert lines[divider[0] - 1].endswith("message 420")
    assert lines[divider[0] + 1].endswith("message 421")
    assert app.root.title().startswith("(28) LAN Chat")  # 421..450, not alice's two
    assert room.requests == []  # the replay reaches back to it
    # Shown at the top of the view, where reading begins.
    found = text.search(DIVIDER_TEXT, "1.0", "end")
    box = text.dlineinfo(found)
    assert box is not None and box[1] < 40
    settle(app.root, 0.2)
    assert not view.new_messages_button.winfo_ismapped()  # nothing came after it
    screenshot(app.root, "new-since-light")
    app.toggle_theme()
    screenshot(app.root, "new-since-dark")
    app.toggle_theme()

    # Read to the end with the window focused: the count goes, the id is kept.
    focused[0] = True
    view.scroll_to_end()
    wait_until(app.root, lambda: app.root.title().startswith("LAN Chat"), WAIT, "no count")
    path = config_dir / "last_seen.json"
    assert json.loads(path.read_text())["servers"] == {f"127.0.0.1:{room.port}": 420}
    room.stop()  # the connection drops: what was read is saved
    wait_until(app.root, lambda: "Not connected" in view.status_label.cget("text"), WAIT, "drop")
    assert json.loads(path.read_text())["servers"] == {f"127.0.0.1:{room.port}": 450}
    app.close()
    saved = json.loads(path.read_text())
    assert saved["servers"] == {f"127.0.0.1:{room.port}": 450}
    assert not [p for p in config_dir.iterdir() if p.name.startswith(".last-seen-")]
    assert errors == []


@pytest.mark.parametrize(
    "walk", [(700, 2, 701), (620, 3, 601), (200, room_history.WALK_PAGES, 601)]
)
def test_new_since_you_left_before_the_replay_loads_pages_back_to_it_boundedly(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
    monkeypatch: pytest.MonkeyPatch,
    walk: tuple[int, int, int],
) -> None:
    since, pages, first_shown = walk  # the id last seen, pages loaded, the oldest shown
    room = rooms(numbered(1000), replay=100)
    seen = LastSeen(last_seen_path())
    seen.saw(f"127.0.0.1:{room.port}", since)
    seen.save()
    app = make_app()
    monkeypatch.setattr(app, "_has_focus", lambda: False)
    shown_on_screen(app)
    enter(app, room.port)
    wait_until(app.root, lambda: not app.history.walking, WAIT, "the walk back")
    settle(app.root, 0.3)
    assert len(room.requests) == pages
    assert shown_numbers(app) == list(range(first_shown, 1001))
    lines = app.view.transcript_text().splitlines()
    divider = [n for n, line in enumerate(lines) if DIVIDER_TEXT in line]
    assert len(divider) == 1  # moved up with each page, never twice
    start = max(since + 1, first_shown)  # beyond the pages loaded: at their top
    assert lines[divider[0] + 1].endswith(f"message {start}")
    assert app.root.title().startswith(f"({1000 - start + 1}) LAN Chat")
    assert errors == []


# -- a hostile server ---------------------------------------------------------------


def hostile_page(kind: str, before: int) -> dict[str, Any]:
    """A ``history-page`` for ``before`` that breaks the protocol's rules as ``kind`` says."""
    below = list(range(before - 50, before))
    ids = {
        "wrong order": below[::-1],
        "not below before": list(range(before, before + 50)),
        "duplicate ids": [*below[:25], *below[24:49]],
        "ten thousand": list(range(1, 10_001)),
        "a private one": below,
    }[kind]
    messages = [{**message(n, text="x"), "history": True} for n in ids]
    if kind == "a private one":
        messages[10]["to"] = "alice"
    return {"type": "history-page", "before": before, "messages": messages, "more": True}


@pytest.mark.parametrize(
    "kind", ["wrong order", "not below before", "duplicate ids", "ten thousand", "a private one"]
)
def test_a_hostile_page_is_dropped_quietly_and_paging_stops(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
    kind: str,
) -> None:
    room = rooms(
        numbered(300, first=20_000),
        replay=100,
        answer=lambda obj: hostile_page(kind, obj["before"]),
    )
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    before = app.view.transcript_text()
    x, y = on_screen(app.view.transcript, 200, 120)
    wheel_up_until(app, room, 1, x, y)
    wait_until(app.root, lambda: app.view.paging == "off", WAIT, "paging to stop")
    settle(app.root, 0.3)
    for _ in range(3):
        xdotool("click", "--repeat", 5, 4)
        settle(app.root, 0.1)
    assert len(room.requests) == 1  # quietly stopped: not asked again and again
    assert app.view.transcript_text() == before  # nothing of it shown, nothing said
    assert app.client is not None and app.client.joined
    assert errors == []


def test_a_page_of_huge_texts_is_shown_cut_and_pages_nobody_asked_for_are_not(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
) -> None:
    huge = "y" * 8000  # twice what a message may hold; the page just fits a frame
    room = rooms([*numbered(100, text=huge), *numbered(100, first=101)], replay=100)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    x, y = on_screen(app.view.transcript, 200, 120)
    room.hold.clear()
    wheel_up_until(app, room, 1, x, y)
    stray = {"type": "history-page", "before": 5, "messages": [message(1)], "more": True}
    room.answer = lambda obj: frame(stray) * 50 + frame(room.page(obj))  # 50 not asked for
    room.hold.set()
    wait_until(app.root, lambda: BEGINNING_TEXT in app.view.transcript_text(), WAIT, "the page")
    lines = app.view.transcript_text().splitlines()
    cut = [line for line in lines if "yyyy" in line]
    assert len(cut) == 100
    assert all(len(line) < MAX_TEXT_LENGTH + 40 and line.endswith("y\u2026") for line in cut)
    assert shown_numbers(app) == list(range(101, 201))  # the stray pages: nowhere
    assert len(lines) <= MAX_LINES
    assert errors == []


# -- end to end, with the real server -----------------------------------------------------


def test_paging_and_search_against_the_real_server(
    make_app: Callable[..., ChatApp],
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    errors: list[BaseException],
) -> None:
    server = start_server(rate_limit=None, history=60)
    bob = open_client(server, "bob")
    for number in range(1, 81):
        text = f"Pizza friday {number}?" if number in (25, 70) else f"message {number}"
        bob.send({"type": "say", "text": text})
        bob.skip_until("message")
    app = make_app()
    shown_on_screen(app)
    enter(app, server.port)
    view = app.view
    first_replayed = shown_numbers(app)[0]
    x, y = on_screen(view.transcript, 200, 120)
    xdotool("mousemove", x, y)
    settle(app.root, 0.1)
    deadline = time.monotonic() + WAIT
    while BEGINNING_TEXT not in view.transcript_text():
        assert time.monotonic() < deadline, "never reached the beginning"
        xdotool("click", "--repeat", 5, "--delay", 10, 4)
        settle(app.root, 0.1)
    # The replay is the newest 60; the disk keeps all: the rest came in pages,
    # each message once, in order.
    assert first_replayed > 20
    assert shown_numbers(app) == [n for n in range(1, 81) if n not in (25, 70)]

    xdotool("key", "ctrl+f")
    wait_until(app.root, lambda: view.search_open, WAIT, "the search pane")
    panel = view.search_panel
    assert panel is not None
    panel.query_var.set("PIZZA")
    panel.query_entry.event_generate("<Return>")
    wait_until(app.root, lambda: "messages, newest first" in panel.status_text(), WAIT, "results")
    results = panel.results_text()
    assert "Pizza friday 70?" in results
    assert hit_words(panel.results)[0] == "Pizza"
    found = panel.results.search("friday 70", "1.0", "end")
    box = panel.results.bbox(found)
    assert box is not None
    xdotool("mousemove", *on_screen(panel.results, box[0] + 4, box[1] + box[3] // 2))
    settle(app.root, 0.1)  # Tk knows what is under the pointer
    xdotool("click", 1)
    wait_until(app.root, lambda: panel.showing_context, WAIT, "the context")
    context = panel.context_text()
    assert "message 69" in context and "Pizza friday 70?" in context
    assert errors == []


# -- day lines and the transcript's bound ------------------------------------------------


def test_day_lines_stay_right_where_pages_meet(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
) -> None:
    day = 86_400.0
    now = time.time()
    # Four days, oldest first: 3 days ago, 2 days ago (split over two pages),
    # yesterday, and today (the replay: yesterday's last 5 and today's 10).
    when = [now - 3 * day] * 20 + [now - 2 * day] * 150 + [now - day] * 35 + [now] * 10
    room = rooms([message(n + 1, ts=ts) for n, ts in enumerate(when)], replay=15)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    view = app.view
    deadline = time.monotonic() + WAIT
    while view.paging != "ended":
        assert time.monotonic() < deadline, "never reached the beginning"
        view.ask_older()  # as the top reached would
        settle(app.root, 0.1)
    labels = [line for line in view.transcript_text().splitlines() if view_day_label(line)]
    expected = [day_label(ts) for ts in (now - 3 * day, now - 2 * day, now - day, now)]
    assert labels == expected  # each day once, in order, where it begins
    assert shown_numbers(app) == list(range(1, 216))
    assert errors == []


def view_day_label(line: str) -> bool:
    return line in ("Today", "Yesterday") or bool(re.fullmatch(r"\w+, \d+ \w+ \d{4}", line))


def test_pages_stop_where_the_transcript_would_outgrow_its_bound(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat_view, "MAX_LINES", 260)
    room = rooms(numbered(1000), replay=100)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    view = app.view
    deadline = time.monotonic() + WAIT
    while view.paging != "ended":
        assert time.monotonic() < deadline, "pages never stopped"
        view.ask_older()  # as the top reached would
        settle(app.root, 0.1)
    lines = view.transcript_text().splitlines()
    assert NOT_KEPT_TEXT in lines and BEGINNING_TEXT not in lines
    assert len(lines) <= 260
    numbers = shown_numbers(app)
    assert numbers == list(range(numbers[0], 1001)) and numbers[0] > 750
    assert errors == []


def test_an_empty_page_that_says_more_waits_for_the_next_gesture(
    make_app: Callable[..., ChatApp],
    rooms: Callable[..., FakeRoom],
    errors: list[BaseException],
) -> None:
    def empty(obj: dict[str, Any]) -> dict[str, Any]:
        return {"type": "history-page", "before": obj["before"], "messages": [], "more": True}

    room = rooms(numbered(300), replay=100, answer=empty)
    app = make_app()
    shown_on_screen(app)
    enter(app, room.port)
    x, y = on_screen(app.view.transcript, 200, 120)
    # Each notch at the top asks, once the last answer is in: one notch at a time.
    wheel_up_until(app, room, 1, x, y, burst=1)
    wait_until(app.root, lambda: app.view.paging == "ready", WAIT, "the empty page")
    settle(app.root, 0.5)
    assert len(room.requests) == 1  # not asked again by itself
    wheel_up_until(app, room, 2, x, y, burst=1)  # the person asks again
    assert BEGINNING_TEXT not in app.view.transcript_text()
    assert errors == []
