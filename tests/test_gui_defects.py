"""The client-window defects, each reproduced in the real window under Xvfb.

The mouse and keyboard come from ``xdotool`` (real X events through the X
server, as a person's hand would make them) or from Tk events where the
X server adds nothing. The server is a real one on 127.0.0.1; the other
people are raw ``tests.wire`` clients. Helpers are those of
``tests/test_gui.py``; ``wait_until`` turns the Tk crank with a bound.
"""

from __future__ import annotations

import logging
import subprocess
import time
import tkinter
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import commands
from app import text as fmt
from app.__main__ import ErrorReporter
from app.chat_app import ChatApp
from app.chat_view import ChatView
from app.network import ChatClient
from app.settings import Settings
from server.chat_server import ChatServer
from server.config import ServerConfig
from server.protocol import ChatMessage
from tests.fake_room import an_hour_ago_today
from tests.test_gui import (
    HOST,
    NoJitterRng,
    ServerThread,
    fill,
    join,
    settle,
    shows,
    status_of,
    wait_shown,
    wait_until,
)
from tests.wire import RawClient

StartServer = Callable[..., ChatServer]


# -- fixtures and helpers -----------------------------------------------------------


# Nothing here may touch the real settings (conftest.config_dir).
pytestmark = pytest.mark.usefixtures("config_dir")


@pytest.fixture(autouse=True)
def pointer_back() -> Iterator[None]:
    """The pointer ends where it was: with no window manager, X gives the keyboard
    to the window under the pointer, and later tests expect the window to have it."""
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


@pytest.fixture
def make_app(open_app: Callable[..., ChatApp]) -> Callable[..., ChatApp]:
    def make(client_factory: Callable[..., ChatClient] = ChatClient) -> ChatApp:
        return open_app(Settings(host=HOST, name=""), client_factory=client_factory)

    return make


@pytest.fixture
def app(make_app: Callable[..., ChatApp]) -> ChatApp:
    return make_app()


def xdotool(*args: str | int) -> None:
    """Real pointer and keyboard events, through the X server pytest-xvfb started."""
    subprocess.run(["xdotool", *map(str, args)], check=True, timeout=10)


def on_screen(widget: tkinter.Misc, x: int, y: int) -> tuple[int, int]:
    return widget.winfo_rootx() + x, widget.winfo_rooty() + y


def shown_on_screen(app: ChatApp) -> None:
    app.root.deiconify()
    app.root.geometry("920x640+0+0")
    wait_until(app.root, app.view.transcript.winfo_viewable, what="the window mapped")
    settle(app.root, 0.3)


def last_line_in_view(view: ChatView) -> bool:
    """The newest line of the transcript is on the screen."""
    return view.transcript.dlineinfo("end-2c linestart") is not None


def say_many(client: RawClient, count: int, prefix: str) -> None:
    for number in range(count):
        client.send({"type": "say", "text": f"{prefix} {number}"})


# -- 1. a fast mouse move onto the menu bar -----------------------------------------


def test_a_flick_onto_the_menu_bar_raises_nothing(
    app: ChatApp, start_server: StartServer, errors: list[BaseException]
) -> None:
    srv = start_server()
    join(app, srv, "alice")
    shown_on_screen(app)
    transcript = app.view.transcript
    x, y = on_screen(transcript, 200, 200)
    menu_y = app.root.winfo_rooty() - 10  # the menu bar sits above the root's client area
    assert menu_y > 0
    xdotool("mousemove", x, y)
    settle(app.root, 0.2)
    xdotool("mousemove", 71, menu_y)
    settle(app.root, 0.3)
    for step in range(8):  # a flick in 35 px steps, 12 ms apart
        xdotool("mousemove", x, max(1, y - 35 * step))
        time.sleep(0.012)
    settle(app.root, 0.3)
    assert errors == []


def test_many_errors_show_one_box_and_log_once_with_a_count(
    tk_root: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    reporter = ErrorReporter(tk_root, tmp_path / "client.log")
    before = tk_root.report_callback_exception
    tk_root.report_callback_exception = reporter
    try:

        def fail() -> None:
            raise KeyError("#!menu")

        with caplog.at_level(logging.ERROR, logger="app"):
            for _ in range(122):
                tk_root.after(0, fail)
            wait_until(tk_root, lambda: reporter.count == 122, what="122 errors reported")
            settle(tk_root, 0.2)
            boxes = [w for w in tk_root.winfo_children() if w is reporter.box]
            assert len(boxes) == 1 and reporter.box is not None
            assert reporter.box.winfo_viewable()
            message = reporter.text()
            assert "'#!menu'" in message and "122 times" in message
            tracebacks = [r for r in caplog.records if r.exc_info]
            assert len(tracebacks) == 1  # one traceback, not 122
            reporter.close()
        assert reporter.box is None
        counted = [r.getMessage() for r in caplog.records if "122" in r.getMessage()]
        assert len(counted) == 1, [r.getMessage() for r in caplog.records]
        # A fresh error after the box was closed opens one box again.
        tk_root.after(0, fail)
        wait_until(tk_root, lambda: reporter.box is not None, what="a new box")
        assert "122 times" not in reporter.text()
    finally:
        reporter.close()
        tk_root.report_callback_exception = before


def test_the_error_reporter_is_never_re_entered(tk_root: Any, tmp_path: Path) -> None:
    reporter = ErrorReporter(tk_root, tmp_path / "client.log")
    nested: list[int] = []

    class Reentering(logging.Handler):
        """A log handler whose own trouble reaches the reporter again."""

        def emit(self, record: logging.LogRecord) -> None:
            nested.append(reporter.depth)
            if len(nested) < 50:
                try:
                    raise RuntimeError("in the handler")
                except RuntimeError as exc:
                    reporter(RuntimeError, exc, exc.__traceback__)

    handler = Reentering(level=logging.ERROR)
    logging.getLogger("app").addHandler(handler)
    try:
        try:
            raise ValueError("first")
        except ValueError as exc:
            reporter(ValueError, exc, exc.__traceback__)
        assert nested and max(nested) == 1  # inside the reporter once, never deeper
        assert reporter.count == 2  # the nested one was counted, not re-reported
        assert reporter.box is not None and len(nested) == 1
    finally:
        logging.getLogger("app").removeHandler(handler)
        reporter.close()


# -- 2. the view follows the newest messages ------------------------------------------


def test_a_late_joiner_sees_the_newest_history_and_a_scrollbar(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server(history=200, rate_limit=None)
    bob = open_client(srv, "bob")
    say_many(bob, 200, "history")
    for _ in range(200):
        bob.skip_until("message")
    join(app, srv, "alice")  # the window shows when the room is joined, as for a user
    wait_shown(app, "history 199")
    shown_on_screen(app)
    assert last_line_in_view(app.view), app.view.transcript.yview()
    assert app.view.scrolled.vbar.winfo_ismapped()  # it says there is more above
    bob.send({"type": "say", "text": "alice: are you there?"})
    wait_shown(app, "are you there?")
    settle(app.root, 0.2)
    assert last_line_in_view(app.view)


def test_after_a_reconnect_the_view_still_follows(
    make_app: Callable[..., ChatApp], start_server: StartServer
) -> None:
    app = make_app(lambda h, p, n, **trust: ChatClient(h, p, n, rng=NoJitterRng(), **trust))
    srv = start_server(rate_limit=None)
    port = srv.port
    shown_on_screen(app)
    join(app, srv, "alice")
    for number in range(60):
        app.view.add_notice(f"filler {number}")
    app.view.end_batch()
    settle(app.root, 0.2)
    assert last_line_in_view(app.view)
    srv.shutdown()
    srv.server_close()
    wait_until(app.root, lambda: app.view.banner_visible, what="the banner")
    again = ServerThread(ServerConfig(host=HOST, port=port))
    try:
        app.view.banner_button.invoke()
        wait_shown(app, f"Reconnected to {HOST}:{port}.")
        with RawClient(port) as bob:
            bob.join("bob")
            say_many(bob, 5, "after the reconnect")
            wait_shown(app, "after the reconnect 4")
            settle(app.root, 0.3)
            assert last_line_in_view(app.view), app.view.transcript.yview()
    finally:
        again.stop()


def test_bigger_text_keeps_the_newest_line_in_view(app: ChatApp) -> None:
    shown_on_screen(app)
    for number in range(80):
        app.view.add_notice(f"line {number}")
    app.view.end_batch()
    settle(app.root, 0.2)
    assert last_line_in_view(app.view)
    for _ in range(3):
        app.view.input.event_generate("<Control-plus>")
        settle(app.root, 0.2)
    assert app.view.transcript.yview()[0] > 0
    assert last_line_in_view(app.view), app.view.transcript.yview()
    app.change_font_size(0)


def test_scrolled_up_new_messages_wait_behind_a_button(app: ChatApp) -> None:
    shown_on_screen(app)
    view = app.view
    now = time.time()
    for number in range(80):
        view.add_message(ChatMessage(number + 1, "bob", f"old {number}", now))
    view.end_batch()
    settle(app.root, 0.2)
    x, y = on_screen(view.transcript, 200, 100)
    xdotool("mousemove", x, y)
    for _ in range(10):
        xdotool("click", 4)  # the wheel, up
    settle(app.root, 0.3)
    top = view.transcript.index("@0,0")
    assert not last_line_in_view(view)
    for number in range(3):
        view.add_message(ChatMessage(100 + number, "bob", f"new {number}", now))
    view.end_batch()
    settle(app.root, 0.3)
    assert view.transcript.index("@0,0") == top  # reading is not interrupted
    button = view.new_messages_button
    assert button.winfo_ismapped()
    assert str(button.cget("text")) == "3 new messages ↓"
    bx, by = on_screen(button, button.winfo_width() // 2, button.winfo_height() // 2)
    xdotool("mousemove", bx, by)
    xdotool("click", 1)
    wait_until(app.root, lambda: last_line_in_view(view), what="the view at the end")
    settle(app.root, 0.2)
    assert not button.winfo_ismapped()
    view.add_message(ChatMessage(200, "bob", "following again", now))
    view.end_batch()
    settle(app.root, 0.2)
    assert last_line_in_view(view)


def test_the_scrollbar_shows_only_when_there_is_more_than_one_screen(app: ChatApp) -> None:
    shown_on_screen(app)
    view = app.view
    view.add_notice("one line")
    view.end_batch()
    xdotool("mousemove", *on_screen(view.transcript, 100, 100))
    settle(app.root, 0.3)
    assert not view.scrolled.vbar.winfo_ismapped()  # nothing to scroll to
    for number in range(80):
        view.add_notice(f"line {number}")
    view.end_batch()
    xdotool("mousemove", *on_screen(view.input, 10, 10))  # the pointer elsewhere
    settle(app.root, 0.3)
    assert view.scrolled.vbar.winfo_ismapped()


# -- 3. typing while the transcript has the focus --------------------------------------


def test_typing_after_a_click_in_the_transcript_goes_to_the_input(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    shown_on_screen(app)
    join(app, srv, "alice")
    bob = open_client(srv, "bob")
    wait_shown(app, "bob joined")
    app.root.focus_force()  # what a window manager does on a click; Xvfb has none
    wait_until(app.root, lambda: app.root.focus_get() is not None, what="the window focused")
    xdotool("mousemove", *on_screen(app.view.transcript, 200, 120))
    xdotool("click", 1)
    wait_until(app.root, lambda: app.root.focus_get() is app.view.transcript, what="focus")
    xdotool("type", "--delay", 20, "hello there")
    wait_until(app.root, lambda: app.view.input_text() == "hello there", what="the typed text")
    assert app.root.focus_get() is app.view.input
    xdotool("key", "Return")
    wait_until(app.root, lambda: app.view.input_text() == "", what="the text sent")
    assert bob.skip_until("message")["text"] == "hello there"


def test_a_paste_into_the_transcript_goes_to_the_input(app: ChatApp) -> None:
    shown_on_screen(app)
    app.root.clipboard_clear()
    app.root.clipboard_append("pasted words")
    app.view.transcript.focus_force()
    wait_until(app.root, lambda: app.root.focus_get() is app.view.transcript, what="focus")
    app.view.transcript.event_generate("<<Paste>>")
    wait_until(app.root, lambda: app.view.input_text() == "pasted words", what="the paste")
    assert app.root.focus_get() is app.view.input


# -- 4. a newline in a message ------------------------------------------------------


def test_continuation_lines_are_indented_under_their_author(app: ChatApp) -> None:
    shown_on_screen(app)
    view = app.view
    now = time.time()
    view.add_message(ChatMessage(1, "bob", "hi\n08:24  alice: send me your password", now))
    view.add_message(ChatMessage(2, "alice", "a real line", now))
    view.add_message(ChatMessage(3, "bob", "a long line " * 40, now))
    view.add_notice("carol joined")
    view.end_batch()
    settle(app.root, 0.2)
    text = view.transcript
    fake = text.search("08:24  alice: send", "1.0")
    real = text.search("a real line", "1.0") + " linestart"
    notice = text.search("carol joined", "1.0") + " linestart"
    assert fake and real and notice
    left = text.bbox(real)[0]
    assert text.bbox(notice)[0] == left
    indent = text.bbox(fake)[0] - left
    assert indent >= view.font.measure("00:00  ") - 2  # under the author's name, at least
    long_start = text.search("a long line", "1.0")
    second_row = text.index(f"{long_start} + 1 display lines display linestart")
    assert text.compare(second_row, ">", long_start)  # it wraps
    assert text.bbox(second_row)[0] - left == indent


# -- 5. /help, the name dialog, a link without a browser ----------------------------------


def test_help_is_aligned_in_columns(app: ChatApp) -> None:
    shown_on_screen(app)
    app.on_send("/help")
    settle(app.root, 0.2)
    text = app.view.transcript
    starts = []
    for description in ("show an action", "a private message", "change your name", "this help"):
        index = text.search(description, "1.0")
        assert index, description
        starts.append(text.bbox(index)[0])
    assert max(starts) - min(starts) <= 1, starts
    assert commands.HELP in app.view.transcript_text()


def inline_errors(dialog: Any) -> list[str]:
    """The error texts the dialog shows now (the status line and each field's hint)."""
    return [
        str(label.cget("text"))
        for label in [dialog.status_label, *dialog._hints.values()]
        if label.winfo_ismapped() and str(label.cget("text"))
    ]


def test_one_name_error_at_a_time_and_the_width_stays(
    app: ChatApp, start_server: StartServer, open_client: Callable[..., RawClient]
) -> None:
    srv = start_server()
    open_client(srv, "alice")
    dialog = app.open_dialog()
    fill(dialog, HOST, srv.port, "alice")
    wait_until(app.root, dialog.winfo_viewable, what="the dialog mapped")
    settle(app.root, 0.2)
    width = dialog.winfo_width()
    dialog.connect_button.invoke()
    wait_until(app.root, lambda: "already in use" in status_of(dialog), what="name-taken")
    settle(app.root, 0.2)
    assert len(inline_errors(dialog)) == 1
    dialog.name_var.set("a name with spaces")
    settle(app.root, 0.2)
    shown = inline_errors(dialog)
    assert len(shown) == 1 and "space" in shown[0], shown
    assert dialog.winfo_width() == width
    # A name the server refuses for a rule: said once, not in the hint as well.
    app.connect(HOST, srv.port, "bad name")
    wait_until(app.root, lambda: "Choose another name" in status_of(dialog), what="refusal")
    settle(app.root, 0.2)
    assert len(inline_errors(dialog)) == 1, inline_errors(dialog)
    assert dialog.winfo_width() == width


def test_a_link_without_a_browser_says_so_and_copies_the_address(
    app: ChatApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_browser(url: str, *args: object, **kwargs: object) -> bool:
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "open", no_browser)
    shown_on_screen(app)
    view = app.view
    view.add_message(ChatMessage(1, "bob", "see https://example.org/notes please", time.time()))
    view.end_batch()
    settle(app.root, 0.2)
    index = view.transcript.search("example.org", "1.0")
    x, y, w, h = view.transcript.bbox(index)
    xdotool("mousemove", *on_screen(view.transcript, x + w // 2, y + h // 2))
    xdotool("click", 1)
    wait_until(app.root, shows(app, "https://example.org/notes"), what="a word on the link")
    wait_until(app.root, lambda: "No web browser" in app.view.transcript_text(), what="notice")
    assert app.root.clipboard_get() == "https://example.org/notes"


# -- text rules without a window -----------------------------------------------------------


def test_line_separators_are_line_breaks() -> None:
    assert fmt.one_kind_of_newline("a\u2028b\u2029c\x85d") == "a\nb\nc\nd"


# -- grouped runs, day separators, name colours ----------------------------------------------


def test_contrast_ratio_follows_wcag() -> None:
    assert fmt.contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert fmt.contrast_ratio("#ffffff", "#000000") == pytest.approx(21.0)
    assert fmt.contrast_ratio("#777777", "#777777") == pytest.approx(1.0)
    # The two greys either side of 4.5:1 on white, as WCAG tools give them.
    assert fmt.contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert fmt.contrast_ratio("#777777", "#fff") == pytest.approx(4.48, abs=0.01)
    assert fmt.relative_luminance("#ff0000") == pytest.approx(0.2126)


@pytest.mark.parametrize("background", ["#ffffff", "#f8f9fa", "#212529", "#2b3035", "#808080"])
def test_every_name_colour_reads_on_the_background(background: str) -> None:
    colors = {fmt.name_color(slot, background) for slot in range(len(fmt.NAME_HUES))}
    assert all(fmt.contrast_ratio(color, background) >= 4.5 for color in colors)
    assert len(colors) >= 2 or background == "#808080"


def test_a_name_keeps_its_colour() -> None:
    assert fmt.name_slot("Bob") == fmt.name_slot("bob") == fmt.name_slot("BOB")
    slots = {fmt.name_slot(name) for name in ("alice", "bob", "carol", "dave", "erin", "zoë")}
    assert len(slots) > 1  # not everyone alike


def test_names_are_coloured_readably_in_both_themes(app: ChatApp) -> None:
    view = app.view
    view.own_name = "me"
    now = time.time()
    senders = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "me"]
    for number, sender in enumerate(senders):
        view.add_message(ChatMessage(number + 1, sender, "hello", now))
    view.end_batch()
    text = view.transcript
    for _ in range(2):  # light, then dark
        background = str(text.cget("background"))
        for sender in senders:
            index = text.search(f"{sender}: hello", "1.0")
            tags = [t for t in text.tag_names(index) if t.startswith("name-") or t == "own"]
            assert len(tags) == 1, text.tag_names(index)
            color = str(text.tag_cget(tags[0], "foreground"))
            rgb = "#" + "".join(f"{part >> 8:02x}" for part in text.winfo_rgb(color))
            assert fmt.contrast_ratio(rgb, background) >= 4.5, (sender, rgb, background)
        app.toggle_theme()
        app.root.update()
    assert text.tag_names(text.search("alice: hello", "1.0")) == text.tag_names(
        text.search("alice: hello", "end", backwards=True)
    )


def test_a_run_of_one_persons_messages_shows_the_name_once(app: ChatApp) -> None:
    shown_on_screen(app)
    view = app.view
    now = an_hour_ago_today()
    view.add_message(ChatMessage(1, "bob", "first", now))
    view.add_message(ChatMessage(2, "bob", "second", now + 30))
    view.add_message(ChatMessage(3, "bob", "third", now + 60))
    view.add_notice("carol joined")
    view.add_message(ChatMessage(4, "bob", "after a notice", now + 70))
    view.add_message(ChatMessage(5, "bob", "much later", now + 70 + 10 * 60))
    view.add_message(ChatMessage(6, "alice", "another person", now + 71 + 10 * 60))
    view.end_batch()
    settle(app.root, 0.2)
    text = view.transcript
    left = text.bbox("1.0")[0]
    indent = view.font.measure("00:00  ")

    def starts_at(body: str) -> int:
        return text.bbox(text.search(body, "1.0"))[0] - left

    assert starts_at("first") > indent  # after "HH:MM  bob: "
    for body in ("second", "third"):  # the name is not repeated, the text sits under it
        assert starts_at(body) == indent
        line = text.search(body, "1.0") + " linestart"
        assert text.bbox(line)[2] == 0  # the time and name are elided...
        assert text.get(line, f"{line} lineend").endswith(f"bob: {body}")  # ...yet copied
    for body in ("after a notice", "much later", "another person"):
        assert starts_at(body) > indent
    view.add_message(ChatMessage(7, "alice", "two\nlines", now + 72 + 10 * 60))
    view.end_batch()
    settle(app.root, 0.2)

    def height(body: str) -> int:  # of its line, with the space above it
        return text.dlineinfo(text.search(body, "1.0"))[3]

    # Lines of one message sit closer than messages of a run, which sit
    # closer than runs: where a message ends shows without its name.
    within = height("lines")
    between_messages = height("second")
    between_runs = height("another person")
    assert within < between_messages < between_runs, (within, between_messages, between_runs)
    assert "bob: third" in view.transcript_text()


def test_a_separator_marks_each_new_day(app: ChatApp) -> None:
    view = app.view
    today = time.time()
    view.add_message(ChatMessage(1, "bob", "two days back", today - 2 * 86400))
    view.add_message(ChatMessage(2, "bob", "the day before", today - 86400))
    view.add_message(ChatMessage(3, "bob", "this morning", today))
    view.add_message(ChatMessage(4, "bob", "later today", today))
    view.end_batch()
    lines = view.transcript_text().splitlines()
    labels = [line for line in lines if "bob:" not in line]
    assert labels == [fmt.day_label(today - 2 * 86400), "Yesterday", "Today"], lines
    assert labels[0] not in ("Today", "Yesterday") and "," in labels[0]
    assert "day" in view.transcript.tag_names(view.transcript.search("Yesterday", "1.0"))


def test_no_separator_when_everything_is_from_today(app: ChatApp) -> None:
    view = app.view
    view.add_message(ChatMessage(1, "bob", "hi", time.time()))
    view.end_batch()
    assert view.transcript_text().splitlines()[0].endswith("bob: hi")


def test_notices_carry_their_time_and_help_none(app: ChatApp) -> None:
    view = app.view
    today = time.localtime()[:3]
    view.add_notice("carol joined", ts=time.mktime((*today, 8, 24, 0, 0, 0, -1)))
    app.on_send("/help")
    lines = view.transcript_text().splitlines()
    assert lines[0] == "08:24  carol joined"
    assert lines[1] == "Commands:"  # a block of help is no event
