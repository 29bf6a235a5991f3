"""Files and images in the chat window, under Xvfb: the attach button and
Ctrl+O (a patched file dialog), Ctrl+V of a picture, files dropped on the
window, a row per transfer, cards with Save… and Open, pictures inline,
hostile names; and the pieces without Tk (thumbnails and their bounds, the
cache's names, the clipboard through a fake ``xclip``, the setting).

The view is driven with real X events (``xdotool``) where a person would
click or type, through a recording ``FileActions``; the end-to-end tests
run the whole app against a real server. Screenshots of an inline picture,
a card and a progress bar in both themes go to ``$LAN_CHAT_SHOTS`` (default
``tests/screenshots/``) as ``files-light.png`` and ``files-dark.png``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import tkinter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from PIL import Image, ImageGrab

from app import attachments, chat_view, file_sharing
from app import settings as settings_store
from app.chat_app import ChatApp
from app.chat_view import MAX_CARDS, ChatView
from app.file_names import safe_file_name
from app.last_seen import LastSeen
from app.settings import Settings
from server.chat_server import ChatServer
from server.protocol import ChatMessage, FileInfo
from tests import test_server_files as server_files
from tests.fake_room import ScriptedServer
from tests.wire import RawClient, frame

SHOTS = Path(os.environ.get("LAN_CHAT_SHOTS") or Path(__file__).resolve().parent / "screenshots")
WAIT = 10.0
HOST = "127.0.0.1"
HOSTILE = [
    "../../x",
    "CON",
    "two\nlines.txt",
    "\u202egnp.exe",
    "a" * 10_000 + ".txt",
]


# -- helpers ------------------------------------------------------------------------


def wait_until(root: tkinter.Misc, predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        root.update()
        if predicate():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def settle(root: tkinter.Misc, seconds: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        root.update()
        time.sleep(0.01)


def xdotool(*args: str | int) -> None:
    subprocess.run(["xdotool", *map(str, args)], check=True, timeout=10)


def file_info(
    number: int,
    name: str = "report.pdf",
    *,
    size: int = 1_234_567,
    mime: str = "application/pdf",
    width: int | None = None,
    height: int | None = None,
) -> FileInfo:
    return FileInfo(
        f"f-{number:024x}", name, size, mime, f"{number:064x}", width=width, height=height
    )


def picture_info(number: int, name: str = "cat.png", size: int = 50_000) -> FileInfo:
    return file_info(number, name, size=size, mime="image/png", width=800, height=600)


def with_file(number: int, file: FileInfo, text: str = "", sender: str = "bob") -> ChatMessage:
    return ChatMessage(number, sender, text, time.time(), file=file)


class Recorder:
    """The view's ``FileActions``, recording what it is asked; pictures are
    said to come for image files (as the app says for small ones)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.pasted = False

    def attach(self, path: Path) -> None:
        self.calls.append(("attach", path))

    def paste_image(self) -> bool:
        self.calls.append(("paste",))
        return self.pasted

    def save(self, file: FileInfo, dest: Path) -> None:
        self.calls.append(("save", file, dest))

    def open(self, file: FileInfo) -> None:
        self.calls.append(("open", file))

    def open_image(self, file: FileInfo) -> None:
        self.calls.append(("open_image", file))

    def cancel(self, transfer: int) -> None:
        self.calls.append(("cancel", transfer))

    def shown(self, file: FileInfo) -> bool:
        return file.mime.startswith("image/")

    def named(self, kind: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if call[0] == kind]


@pytest.fixture
def files() -> Recorder:
    return Recorder()


@pytest.fixture
def make_view(tk_root: Any, files: Recorder) -> Iterator[Callable[[], ChatView]]:
    """A ChatView filling the shared root, on the screen; destroyed after."""
    views: list[ChatView] = []

    def make() -> ChatView:
        view = ChatView(tk_root, on_send=lambda _text: True, font_size=11, files=files)
        view.pack(fill="both", expand=True)
        view.apply_theme()
        views.append(view)
        tk_root.deiconify()
        tk_root.geometry("920x640+0+0")
        wait_until(tk_root, view.transcript.winfo_viewable, "the view on the screen")
        settle(tk_root, 0.2)
        return view

    yield make
    for view in views:
        view.destroy()
    tk_root.withdraw()
    if tk_root.theme_mode != "light":
        tk_root.theme_mode = "light"
    tk_root.update()


def click(widget: tkinter.Misc, x: int | None = None, y: int | None = None) -> None:
    """A real click at (x, y) of ``widget`` (its middle by default)."""
    widget.update_idletasks()
    x = widget.winfo_width() // 2 if x is None else x
    y = widget.winfo_height() // 2 if y is None else y
    xdotool("mousemove", widget.winfo_rootx() + x, widget.winfo_rooty() + y)
    xdotool("click", 1)


def screenshot(window: tkinter.Misc, name: str) -> Path:
    settle(window, 0.4)
    x, y = window.winfo_rootx(), window.winfo_rooty()
    image = ImageGrab.grab(bbox=(x, y, x + window.winfo_width(), y + window.winfo_height()))
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    image.save(path)
    colors = image.getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 20, f"{name} looks blank"
    return path


# -- sending: the paperclip, Ctrl+O's dialog, Ctrl+V, a drop -------------------------


def test_the_paperclip_sends_the_files_chosen_in_the_dialog(
    make_view: Callable[[], ChatView],
    files: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    chosen = [tmp_path / "a.txt", tmp_path / "b c.png"]
    asked: list[dict[str, Any]] = []

    def dialog(**options: Any) -> tuple[str, ...]:
        asked.append(options)
        return tuple(map(str, chosen))

    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", dialog)
    view = make_view()
    click(view.attach_button)
    wait_until(view, lambda: len(files.named("attach")) == 2, "both files sent")
    assert files.named("attach") == [("attach", chosen[0]), ("attach", chosen[1])]
    assert asked and asked[0]["title"] == "Send files"

    # Cancelled: nothing is sent.
    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", lambda **_o: "")
    click(view.attach_button)
    settle(view, 0.3)
    assert len(files.named("attach")) == 2
    assert errors == []


def test_ctrl_o_in_the_input_box_opens_the_dialog_once_and_types_nothing(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[BaseException],
) -> None:
    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(
        chat_view.filedialog, "askopenfilenames", lambda **options: asked.append(options) or ""
    )
    app = make_app()
    enter(app, file_room.port)
    app.view.set_input("a draft")
    app.view.focus_input()
    settle(app.root, 0.2)
    xdotool("key", "ctrl+o")
    wait_until(app.root, lambda: asked, "the dialog")
    settle(app.root, 0.2)
    assert len(asked) == 1
    assert app.view.input_text() == "a draft"  # Tk's Text would open a line at Ctrl+O
    assert errors == []


def test_ctrl_v_of_a_picture_sends_it_and_text_still_pastes(
    make_view: Callable[[], ChatView], files: Recorder, errors: list[BaseException]
) -> None:
    view = make_view()
    view.focus_input()
    settle(view, 0.1)
    # A picture on the clipboard (no text): the app takes it; nothing is typed.
    view.clipboard_clear()
    files.pasted = True
    xdotool("key", "ctrl+v")
    wait_until(view, lambda: files.named("paste"), "the paste handed to the app")
    assert view.input_text() == ""

    # Text on the clipboard: pasted as ever, the app not asked.
    files.calls.clear()
    view.clipboard_clear()
    view.clipboard_append("hello")
    xdotool("key", "ctrl+v")
    wait_until(view, lambda: view.input_text() == "hello", "the text pasted")
    assert files.named("paste") == []
    assert errors == []


def test_files_dropped_on_the_window_are_sent(
    make_view: Callable[[], ChatView], files: Recorder, tmp_path: Path
) -> None:
    view = make_view()
    assert view.drop_enabled, "tkinterdnd2's tkdnd did not load"
    script = str(view.tk.call("bind", str(view), "<<Drop:DND_Files>>"))
    assert "%D" in script
    first, second = tmp_path / "one.txt", tmp_path / "with space.txt"
    data = view.tk.eval(f"list {{{first}}} {{{second}}}")  # as tkdnd gives it: a Tcl list
    action = view.tk.eval(script.replace("%D", "{" + data + "}"))
    assert action == "copy"
    assert files.named("attach") == [("attach", first), ("attach", second)]


def test_without_tkdnd_there_is_no_drop_and_the_rest_works(
    make_view: Callable[[], ChatView], files: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tkinterdnd2 import TkinterDnD as dnd  # noqa: PLC0415, N813

    def broken(_root: object) -> str:
        raise RuntimeError("Unable to load tkdnd library.")

    monkeypatch.setattr(dnd, "_require", broken)
    view = make_view()
    assert not view.drop_enabled
    view.add_message(with_file(1, file_info(1)))
    view.end_batch()
    assert "[file: report.pdf, 1.2 MB]" in view.transcript_text()


# -- transfers ------------------------------------------------------------------------


def test_a_transfer_has_a_row_with_its_progress_and_cancel_until_it_ends(
    make_view: Callable[[], ChatView], files: Recorder, errors: list[BaseException]
) -> None:
    view = make_view()
    assert not view.transfer_strip.winfo_ismapped()
    view.transfer_started(7, "holiday.mp4", 10_000_000, upload=True)
    view.transfer_progress(7, 2_500_000, 10_000_000)
    wait_until(view, view.transfer_strip.winfo_ismapped, "the transfer's row")
    row = view.transfers[7]
    assert row.fraction == pytest.approx(0.25)
    assert str(row.done_label.cget("text")) == "25 % of 10 MB"
    assert "Sending holiday.mp4" in str(row.name_label.cget("text"))
    # The chat goes on: the box still takes text and sends it.
    view.set_input("still here")
    assert view.input_text() == "still here"

    click(row.cancel_button)
    wait_until(view, lambda: files.named("cancel"), "cancel asked for")
    assert files.named("cancel") == [("cancel", 7)]
    view.transfer_ended(7)
    wait_until(view, lambda: not view.transfer_strip.winfo_ismapped(), "the row gone")
    assert view.transfers == {}
    assert errors == []


def test_many_transfers_show_a_few_rows_and_how_many_more(
    make_view: Callable[[], ChatView],
) -> None:
    view = make_view()
    for number in range(10):
        view.transfer_started(number, f"file {number}.bin", 1000, upload=False)
    view.update()
    packed = [row for row in view.transfers.values() if row.winfo_manager()]
    assert len(packed) == chat_view.TRANSFER_ROWS
    assert str(view._more_label.cget("text")) == "and 6 more"
    for number in range(10):
        view.transfer_ended(number)
    view.update()
    assert not view.transfer_strip.winfo_manager()


# -- what arrives: cards, pictures, hostile names ------------------------------------


def test_a_card_saves_to_the_path_chosen_offering_a_safe_name(
    make_view: Callable[[], ChatView],
    files: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    offered: list[str] = []
    dest = tmp_path / "saved.pdf"

    def dialog(**options: Any) -> str:
        offered.append(options["initialfile"])
        return str(dest)

    monkeypatch.setattr(chat_view.filedialog, "asksaveasfilename", dialog)
    view = make_view()
    report = file_info(1)
    view.add_message(with_file(1, report, "the report"))
    view.end_batch()
    card = view.card_for(report.id)
    assert card is not None
    wait_until(view, card.save_button.winfo_viewable, "the card shown")
    assert "the report\n[file: report.pdf, 1.2 MB]" in view.transcript_text()
    click(card.save_button)
    wait_until(view, lambda: files.named("save"), "the save asked for")
    assert files.named("save") == [("save", report, dest)]
    assert offered == ["report.pdf"]
    assert errors == []


@pytest.mark.parametrize("name", HOSTILE, ids=["dots", "con", "newline", "rtl", "long"])
def test_a_hostile_name_shows_on_one_line_and_is_offered_safely(
    make_view: Callable[[], ChatView],
    files: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    offered: list[str] = []
    monkeypatch.setattr(
        chat_view.filedialog,
        "asksaveasfilename",
        lambda **options: offered.append(options["initialfile"]) or "",
    )
    view = make_view()
    hostile = file_info(2, name)
    view.add_message(with_file(1, hostile, "look"))
    view.end_batch()
    card = view.card_for(hostile.id)
    assert card is not None
    shown = str(card.name_label.cget("text"))
    assert "\n" not in shown and "\u202e" not in shown and len(shown) <= 40
    lines = view.transcript_text().splitlines()
    assert len(lines) == 2, lines  # the message, its card: one line each
    assert card.winfo_reqwidth() < view.transcript.winfo_width()
    wait_until(view, card.save_button.winfo_viewable, "the card shown")
    click(card.save_button)
    wait_until(view, lambda: offered, "the dialog opened")
    assert offered == [safe_file_name(name)]
    assert "/" not in offered[0] and "\n" not in offered[0] and "\u202e" not in offered[0]
    assert offered[0].upper() != "CON" and len(offered[0].encode()) <= 255
    assert files.named("save") == []  # cancelled


def test_opening_a_program_is_asked_first(
    make_view: Callable[[], ChatView], files: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[bool] = [False, True]
    asked: list[str] = []

    def confirm(_parent: object, _title: str, question: str) -> bool:
        asked.append(question)
        return answers.pop(0)

    monkeypatch.setattr(chat_view, "confirm", confirm)
    view = make_view()
    program, document = file_info(1, "setup.exe"), file_info(2, "notes.txt", mime="text/plain")
    view.add_message(with_file(1, program))
    view.add_message(with_file(2, document))
    view.end_batch()
    settle(view, 0.2)
    for card in (view.card_for(program.id), view.card_for(document.id)):
        assert card is not None
        card.open_button.invoke()
    view.update()
    assert files.named("open") == [("open", document)]  # the program: "no"
    assert len(asked) == 1 and "setup.exe could be a program" in asked[0]
    card = view.card_for(program.id)
    assert card is not None
    card.open_button.invoke()  # "yes" this time
    assert files.named("open")[-1] == ("open", program)


def test_a_picture_shows_inline_and_a_click_opens_it(
    make_view: Callable[[], ChatView], files: Recorder, errors: list[BaseException]
) -> None:
    view = make_view()
    cat = picture_info(3)
    view.add_message(with_file(1, cat, "our cat"))
    view.end_batch()
    assert view.files_shown == [("waiting", cat)]
    assert "[image: cat.png, 50 kB] …" in view.transcript_text()
    picture = Image.new("RGB", (320, 240), "orange")
    view.show_image(cat.id, picture)
    view.update()
    assert view.files_shown == [("picture", cat)]
    assert view.transcript_text().endswith("our cat\n[image: cat.png, 50 kB]")
    (name,) = view.transcript.image_names()
    box = view.transcript.bbox(name)
    assert box is not None and (box[2], box[3]) == (320, 240)
    # A real click on the picture's middle.
    click(view.transcript, box[0] + 160, box[1] + 120)
    wait_until(view, lambda: files.named("open_image"), "the picture opened")
    assert files.named("open_image") == [("open_image", cat)]
    assert errors == []


def test_a_file_with_no_words_in_a_run_takes_no_empty_line(
    make_view: Callable[[], ChatView],
) -> None:
    view = make_view()
    report = file_info(9)
    view.add_message(ChatMessage(1, "bob", "hello", time.time()))
    view.add_message(with_file(2, report))  # bob again at once: his name is not shown again
    view.end_batch()
    view.update()
    text = view.transcript
    card = view.card_for(report.id)
    assert card is not None
    hello = text.search("hello", "1.0")
    # The card's line comes right after hello's: no line of nothing between them.
    assert text.count(f"{hello} linestart", str(card), "displaylines") == (1,)


def test_a_picture_that_will_not_come_becomes_a_card_saying_why(
    make_view: Callable[[], ChatView],
) -> None:
    view = make_view()
    cat = picture_info(4)
    view.add_message(with_file(1, cat))
    view.end_batch()
    view.image_unavailable(cat.id, "The image could not be read.")
    view.update()
    assert view.files_shown == [("card", cat)]
    card = view.card_for(cat.id)
    assert card is not None
    assert "The image could not be read." in str(card.size_label.cget("text"))
    assert "[image:" not in view.transcript_text()


def test_a_history_page_shows_its_files_as_the_live_ones(
    make_view: Callable[[], ChatView],
) -> None:
    view = make_view()
    view.start_room(None)
    view.add_message(ChatMessage(10, "bob", "newest", time.time()))
    view.end_batch()
    report, cat = file_info(5), picture_info(6)
    page = [with_file(3, report, "older report"), with_file(4, cat, "older cat")]
    view.insert_page(page, more=False)
    view.show_image(cat.id, Image.new("RGB", (100, 80), "teal"))
    view.update()
    text = view.transcript_text()
    assert text.index("older report\n[file: report.pdf, 1.2 MB]") < text.index("newest")
    assert "older cat\n[image: cat.png, 50 kB]\n" in text
    assert [kind for kind, _file in view.files_shown] == ["card", "picture"]


def test_old_cards_turn_into_words_that_still_save(
    make_view: Callable[[], ChatView], files: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_view.filedialog, "asksaveasfilename", lambda **_o: "/tmp/x")
    view = make_view()
    for number in range(MAX_CARDS + 5):
        view.add_message(with_file(number + 1, file_info(number + 1, f"file{number}.bin")))
    view.end_batch()
    assert len(view._cards) == MAX_CARDS
    assert [kind for kind, _f in view.files_shown] == ["words"] * 5 + ["card"] * MAX_CARDS
    text = view.transcript_text()
    assert "[file: file0.bin, 1.2 MB]" in text and "[file: file204.bin, 1.2 MB]" in text
    first = view.transcript.search("[file: file0.bin", "1.0")
    view.transcript.see(first)
    view.update()
    box = view.transcript.bbox(f"{first} + 3c")
    assert box is not None
    click(view.transcript, box[0] + 2, box[1] + box[3] // 2)
    wait_until(view, lambda: files.named("save"), "the words' click")
    assert files.named("save")[0][1].name == "file0.bin"


def test_old_pictures_turn_into_words_that_still_open(
    make_view: Callable[[], ChatView], files: Recorder
) -> None:
    view = make_view()
    count = chat_view.MAX_THUMBNAILS + 3
    pictures = [picture_info(100 + number, f"pic{number}.png") for number in range(count)]
    for number, picture in enumerate(pictures):
        view.add_message(with_file(number + 1, picture))
    view.end_batch()
    tiny = Image.new("RGB", (8, 8), "red")
    for picture in pictures:
        view.show_image(picture.id, tiny)
    view.update()
    assert len(view.transcript.image_names()) == chat_view.MAX_THUMBNAILS
    kinds = [kind for kind, _file in view.files_shown]
    assert kinds == ["words"] * 3 + ["picture"] * chat_view.MAX_THUMBNAILS
    first = view.transcript.search("[image: pic0.png", "1.0")
    assert first, "the oldest picture is words now"
    view.transcript.see(first)
    view.update()
    box = view.transcript.bbox(f"{first} + 3c")
    assert box is not None
    click(view.transcript, box[0] + 2, box[1] + box[3] // 2)
    wait_until(view, lambda: files.named("open_image"), "the words' click")
    assert files.named("open_image") == [("open_image", pictures[0])]


# -- screenshots -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_screenshots_of_a_picture_a_card_and_a_progress_bar(
    make_view: Callable[[], ChatView], tk_root: Any, mode: str
) -> None:
    if tk_root.theme_mode != mode:
        tk_root.theme_mode = mode
    view = make_view()
    view.own_name = "alice"
    picture = Image.new("RGB", (320, 213), "#f4a261")
    for x in range(0, 320, 40):
        for y in range(0, 213, 40):
            picture.paste("#2a9d8f", (x, y, x + 20, y + 20))
    cat = picture_info(7, "sunset.jpg", 183_201)
    view.add_message(ChatMessage(1, "bob", "the view from the office", time.time()))
    view.add_message(with_file(2, cat))
    view.add_message(with_file(3, file_info(8, "Quarterly report.pdf"), "and the report"))
    hostile = file_info(10, "../../CON\n\u202egnp.exe" + "x" * 300, mime="text/plain")
    view.add_message(with_file(4, hostile, "a hostile name", sender="eve"))
    view.end_batch()
    view.show_image(cat.id, picture)
    view.transfer_started(1, "holiday.mp4", 48_000_000, upload=True)
    view.transfer_progress(1, 20_000_000, 48_000_000)
    view.transfer_started(2, "Quarterly report.pdf", 1_234_567, upload=False)
    view.transfer_progress(2, 1_000_000, 1_234_567)
    screenshot(tk_root, f"files-{mode}.png")


# -- without Tk: thumbnails, the cache, the clipboard, the setting -----------------------


def test_a_thumbnail_keeps_the_shape_within_320_by_240(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (1600, 400), "red").save(path)
    thumb = attachments.make_thumbnail(path, (1600, 400))
    assert thumb.size == (320, 80)


def test_a_jpeg_is_decoded_at_a_reduced_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), "blue").save(path, quality=50)
    sizes: list[tuple[int, int]] = []
    real = Image.Image.thumbnail

    def thumbnail(self: Image.Image, size: Any, *args: Any, **kwargs: Any) -> None:
        sizes.append(self.size)  # after draft: what is decoded
        real(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "thumbnail", thumbnail)
    thumb = attachments.make_thumbnail(path, (4000, 3000))
    assert thumb.size == (320, 240)
    assert sizes[0][0] <= 1000, sizes  # 1/4 or 1/8 scale, never the full 12 MP


def test_an_image_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PNG whose header says 10,000 x 10,000 (100 MP): a few kB on disk.
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)
    assert path.stat().st_size < 100_000
    decoded: list[object] = []
    monkeypatch.setattr(Image.Image, "load", decoded.append)
    with pytest.raises(attachments.ThumbnailError, match="too big"):
        attachments.make_thumbnail(path, None)  # the header says so
    with pytest.raises(attachments.ThumbnailError, match="too big"):
        attachments.make_thumbnail(path, (10_000, 10_000))  # the message says so
    # A message that lies (small) does not help: the header is read first.
    with pytest.raises(attachments.ThumbnailError, match="too big"):
        attachments.make_thumbnail(path, (10, 10))
    assert decoded == []


@pytest.mark.parametrize(
    "content", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, b"GIF89a" + b"\xff" * 50, b"not an image"]
)
def test_a_damaged_image_is_a_thumbnail_error_never_a_crash(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "damaged.png"
    path.write_bytes(content)
    with pytest.raises(attachments.ThumbnailError, match="could not be read"):
        attachments.make_thumbnail(path, (10, 10))


def test_the_cache_names_files_by_digest_never_by_their_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAN_CHAT_CACHE_DIR", str(tmp_path))
    digest = "ab" * 32
    named = FileInfo("f-1", "../../etc/passwd.txt", 5, "text/plain", digest)
    assert attachments.cached_path(named) == tmp_path / "files" / f"{digest}.txt"
    # A picture is kept as its media type says: "x.exe" sent as PNG opens as a PNG.
    disguised = FileInfo("f-2", "x.exe", 5, "image/png", digest, 10, 10)
    assert attachments.cached_path(disguised) == tmp_path / "files" / f"{digest}.png"
    assert attachments.cached_path(FileInfo("f-3", "a", 5, "text/plain", "../x")) is None


@pytest.mark.parametrize(
    ("name", "executable"),
    [
        ("setup.exe", True),
        ("SETUP.EXE", True),
        ("run.sh", True),
        ("x.exe. ", True),
        ("launcher.desktop", True),
        ("photo.jpg", False),
        ("notes.txt", False),
        ("exe", False),
    ],
)
def test_names_that_could_run_a_program(name: str, executable: bool) -> None:
    assert attachments.looks_executable(name) is executable


def test_the_cache_keeps_the_recently_used_within_its_bound(tmp_path: Path) -> None:
    now = time.time()
    for number, age in enumerate([50, 40, 30, 20, 10]):  # file 0 used longest ago
        path = tmp_path / f"{number}.bin"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
    (tmp_path / "5.bin.part").write_bytes(b"x" * 5000)  # a download on its way
    attachments.touch(tmp_path / "0.bin")  # used just now
    assert attachments.prune_cache(2500, tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.bin", "4.bin", "5.bin.part"]
    assert attachments.prune_cache(2500, tmp_path / "none") == 0


def test_a_file_is_opened_with_xdg_open_and_its_absence_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attachments.sys, "platform", "linux")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    target = tmp_path / "a file; rm -rf x.txt"  # a shell would split it
    assert attachments.open_with_os(target) == "There is no xdg-open here to open files with."
    said = tmp_path / "said"
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\nprintf "%s" "$1" > "{said}"\n')
    opener.chmod(0o755)
    assert attachments.open_with_os(target) is None
    deadline = time.monotonic() + WAIT
    while not (said.exists() and said.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert said.read_text() == str(target)
    for child in attachments._opened:  # reaped here, not left to the next call
        child.wait(WAIT)


def test_a_pasted_picture_is_named_by_its_time() -> None:
    when = datetime.datetime(2026, 12, 1, 17, 30, 5)
    assert attachments.pasted_name(when) == "Pasted image 2026-12-01 17.30.05.png"


def fake_xclip(folder: Path, targets: str, png: bytes) -> None:
    """An ``xclip`` on the PATH that offers ``targets`` and answers with ``png``."""
    (folder / "clip.png").write_bytes(png)
    script = folder / "xclip"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *TARGETS*) printf "%s\\n" {targets!r} ;;\n'
        f'  *image/png*) cat "{folder / "clip.png"}" ;;\n'
        "  *) exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


def png_bytes(size: tuple[int, int]) -> bytes:
    from io import BytesIO  # noqa: PLC0415

    out = BytesIO()
    Image.new("1", size).save(out, "PNG")
    return out.getvalue()


def test_the_clipboards_picture_through_xclip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attachments.sys, "platform", "linux")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    picture = png_bytes((40, 30))
    fake_xclip(tmp_path, "TARGETS image/png", picture)
    assert attachments.clipboard_png() == picture
    fake_xclip(tmp_path, "TARGETS UTF8_STRING", picture)  # text only: no picture
    assert attachments.clipboard_png() is None
    fake_xclip(tmp_path, "TARGETS image/png", png_bytes((10_000, 10_000)))  # a bomb
    assert attachments.clipboard_png() is None
    fake_xclip(tmp_path, "TARGETS image/png", b"not a png")
    assert attachments.clipboard_png() is None


def test_no_clipboard_tool_means_no_picture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attachments.sys, "platform", "linux")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither xclip nor wl-paste
    assert attachments.clipboard_png() is None


@pytest.mark.parametrize(
    ("saved", "expected"),
    [(25, 25), (0, 0), (-1, 10), (10_000, 10), ("5", 10), (True, 10), (2.5, 10)],
)
def test_the_auto_download_setting_is_checked_on_load(
    tmp_path: Path, saved: object, expected: int
) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"auto_download_mb": saved}))
    assert settings_store.load(path).auto_download_mb == expected


# -- the whole app against a server that shares files ------------------------------------


class FileRoom(ScriptedServer):
    """A scripted server of the files extension (PROTOCOL.md, "Files and
    images") on 127.0.0.1, one connection at a time: a welcome offering
    ``files``, then ``pushed`` (messages sent to whoever joins), uploads
    checked by size and digest, says with a file echoed with its file
    object, downloads answered in ``file-data`` frames of 65,536 bytes. While
    ``hold`` is clear, ``upload`` and ``download`` wait for it (a transfer
    held in progress); while ``too_large`` is set, uploads are refused.
    ``received``: each upload's bytes, by file id."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.received: dict[str, bytes] = {}
        self.pushed: list[dict[str, Any]] = []
        self.downloads: list[dict[str, Any]] = []
        self.too_large = False  # answer uploads with file-too-large
        self._next = 0
        self._said = 0  # the last message id
        super().__init__("file-room")

    def add(self, name: str, data: bytes, mime: str, size: tuple[int, int] | None = None) -> dict:
        self._next += 1
        info: dict[str, Any] = {
            "id": f"f-{self._next:024x}",
            "name": name,
            "size": len(data),
            "mime": mime,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if size is not None:
            info["width"], info["height"] = size
        self.files[info["id"]] = (info, data)
        return info

    def push(self, info: dict[str, Any], text: str = "", sender: str = "bob") -> None:
        number = len(self.pushed) + 1
        self.pushed.append(
            {"type": "message", "id": number, "from": sender, "text": text, "ts": time.time()}
            | {"file": info}
        )

    def _serve(self, sock: socket.socket) -> None:
        uploads: dict[int, dict[str, Any]] = {}
        held: list[dict[str, Any]] = []  # uploads and downloads waiting for the hold
        self._said = len(self.pushed)
        for came in self._frames(sock, ticks=True):  # a tick: what is held may go now
            if came.get("type") == "download":
                self.downloads.append(came)
            if came.get("type") in ("upload", "download"):
                held.append(came)
            elif not self._send(sock, self._answer(came, uploads)):
                return
            while held and self.hold.is_set():
                if not self._send(sock, self._answer(held.pop(0), uploads)):
                    return
            if came.get("type") == "bye":
                return

    @staticmethod
    def _send(sock: socket.socket, out: list[dict[str, Any]]) -> bool:
        try:
            sock.sendall(b"".join(map(frame, out)))
        except OSError:
            return False
        return True

    def _answer(self, obj: dict[str, Any], uploads: dict[int, dict[str, Any]]) -> list[Any]:
        """The frames that answer ``obj``."""
        kind = obj.get("type")
        out: list[dict[str, Any]] = []
        if kind == "hello":
            welcome = {
                "type": "welcome",
                "name": obj["name"],
                "users": [obj["name"], "bob"],
                "history_count": 0,
                "features": ["files"],
            }
            out = [welcome, *self.pushed]
        elif kind == "ping":
            out = [{"type": "pong"}]
        elif kind == "upload" and self.too_large:
            message = "Files may be at most 1 MB on this server."
            out = [
                {
                    "type": "error",
                    "code": "file-too-large",
                    "message": message,
                    "in_reply_to": "upload",
                }
            ]
        elif kind == "upload":
            upload = len(uploads) + 1
            uploads[upload] = {**obj, "data": b""}
            out = [{"type": "upload-ready", "upload": upload, "chunk": 32768}]
        elif kind == "upload-data":
            held = uploads[obj["upload"]]
            assert obj["offset"] == len(held["data"])
            held["data"] += base64.b64decode(obj["data"])
        elif kind == "upload-done":
            held = uploads[obj["upload"]]
            data = held["data"]
            if hashlib.sha256(data).hexdigest() != obj["sha256"] or len(data) != held["size"]:
                out = [
                    {
                        "type": "error",
                        "code": "upload-invalid",
                        "message": "The file did not match.",
                        "in_reply_to": "upload-done",
                    }
                ]
            else:
                info = self.add(held["name"], data, held["mime"])
                self.received[info["id"]] = data
                out = [{"type": "uploaded", "upload": obj["upload"], "file": info["id"]}]
        elif kind == "say":
            self._said += 1
            said = {"type": "message", "id": self._said, "from": "alice", "text": obj["text"]}
            said["ts"] = time.time()
            if obj.get("file"):
                said["file"] = self.files[obj["file"]][0]
            out = [said]
        elif kind == "download":
            _info, data = self.files[obj["file"]]
            start, end = obj["offset"], min(len(data), obj["offset"] + obj["length"])
            for at in range(start, max(end, start + 1), 65536):
                piece = data[at : min(end, at + 65536)]
                out.append(
                    {
                        "type": "file-data",
                        "file": obj["file"],
                        "offset": at,
                        "data": base64.b64encode(piece).decode(),
                        "eof": at + len(piece) >= len(data),
                    }
                )
        return out


@pytest.fixture
def file_room() -> Iterator[FileRoom]:
    room = FileRoom()
    yield room
    room.stop()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LAN_CHAT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "files"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """What the app asked the OS to open (nothing is opened)."""
    paths: list[Path] = []

    def opener(path: Path) -> None:
        paths.append(path)

    monkeypatch.setattr(attachments, "open_with_os", opener)
    return paths


@pytest.fixture
def make_app(
    open_app: Callable[..., ChatApp],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    opened: list[Path],
) -> Callable[..., ChatApp]:
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(tmp_path / "config"))

    def make(settings: Settings | None = None) -> ChatApp:
        chat = open_app(
            settings or Settings(host=HOST, name=""),
            last_seen=LastSeen(tmp_path / "last_seen.json"),
        )
        chat.root.deiconify()
        chat.root.geometry("920x640+0+0")
        return chat

    return make


def enter(app: ChatApp, port: int) -> None:
    app.connect(HOST, port, "alice")
    wait_until(app.root, lambda: app.client is not None and app.client.joined, "joined")
    wait_until(app.root, app.view.transcript.winfo_viewable, "the window on the screen")


def png_of(size: tuple[int, int], color: str = "orange") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def test_attach_sends_the_file_with_a_progress_row_and_the_echo_shows_its_card(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    notes = tmp_path / "notes.txt"
    content = os.urandom(300_000)
    notes.write_bytes(content)
    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", lambda **_options: (str(notes),))
    app = make_app()
    enter(app, file_room.port)
    file_room.hold.clear()  # the upload waits: its row is there to see
    xdotool("key", "ctrl+o")  # the real shortcut, the patched dialog
    wait_until(app.root, lambda: app.view.transfers, "the upload's row")
    (row,) = app.view.transfers.values()
    wait_until(app.root, row.winfo_viewable, "the row on the screen")
    assert "Sending notes.txt" in str(row.name_label.cget("text"))
    # The chat goes on while the file waits.
    app.view.set_input("meanwhile")
    app.view.send_input()
    wait_until(app.root, lambda: "alice: meanwhile" in app.view.transcript_text(), "the chat")
    file_room.hold.set()
    wait_until(app.root, lambda: "[file: notes.txt, 300 kB]" in app.view.transcript_text(), "echo")
    wait_until(app.root, lambda: not app.view.transfers, "the row gone")
    assert list(file_room.received.values()) == [content]
    assert not app.view.transfer_strip.winfo_ismapped()
    assert errors == []


def test_a_small_picture_comes_by_itself_shows_inline_and_opens_full_size(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    cache: Path,
    opened: list[Path],
    errors: list[BaseException],
) -> None:
    data = png_of((800, 600))
    file_room.push(file_room.add("cat.png", data, "image/png", (800, 600)), "our cat")
    app = make_app()
    enter(app, file_room.port)
    wait_until(app.root, lambda: [k for k, _f in app.view.files_shown] == ["picture"], "inline")
    (name,) = app.view.transcript.image_names()
    settle(app.root, 0.2)
    box = app.view.transcript.bbox(name)
    assert box is not None and (box[2], box[3]) == (320, 240)  # 800x600 in 320x240
    click(app.view.transcript, box[0] + 100, box[1] + 100)
    wait_until(app.root, lambda: opened, "the picture opened")
    assert opened[0].parent == cache and opened[0].suffix == ".png"
    assert opened[0].read_bytes() == data
    assert len(file_room.downloads) >= 1  # and once opened, from the cache: no more
    downloads = len(file_room.downloads)
    click(app.view.transcript, box[0] + 100, box[1] + 100)
    wait_until(app.root, lambda: len(opened) == 2, "opened again")
    assert len(file_room.downloads) == downloads
    assert errors == []


def test_a_picture_clicked_while_it_comes_opens_once_it_is_in_with_one_download(
    make_app: Callable[..., ChatApp], file_room: FileRoom, opened: list[Path]
) -> None:
    data = png_of((200, 100))
    cat = file_room.add("cat.png", data, "image/png", (200, 100))
    file_room.push(cat)
    file_room.hold.clear()  # the picture's download is held
    app = make_app()
    enter(app, file_room.port)
    wait_until(app.root, lambda: file_room.downloads, "the picture asked for")
    assert [kind for kind, _f in app.view.files_shown] == ["waiting"]
    words = app.view.transcript.search("[image: cat.png", "1.0")
    settle(app.root, 0.2)
    box = app.view.transcript.bbox(f"{words} + 2c")
    assert box is not None
    click(app.view.transcript, box[0] + 1, box[1] + box[3] // 2)
    settle(app.root, 0.3)
    assert opened == []
    file_room.hold.set()
    wait_until(app.root, lambda: opened, "opened once in")
    wait_until(app.root, lambda: [k for k, _f in app.view.files_shown] == ["picture"], "inline")
    assert opened[0].read_bytes() == data
    assert len(file_room.downloads) == 1


def test_a_picture_over_the_setting_is_a_card_and_is_not_fetched(
    make_app: Callable[..., ChatApp], file_room: FileRoom
) -> None:
    data = png_of((2000, 2000), "navy")
    file_room.push(file_room.add("big.png", data, "image/png", (2000, 2000)))
    app = make_app(Settings(host=HOST, name="", auto_download_mb=0))
    enter(app, file_room.port)
    wait_until(app.root, lambda: app.view.files_shown, "the file shown")
    settle(app.root, 0.3)
    assert [kind for kind, _f in app.view.files_shown] == ["card"]
    assert file_room.downloads == []


def test_the_view_menu_sets_up_to_what_size_pictures_come_by_themselves(
    make_app: Callable[..., ChatApp], file_room: FileRoom
) -> None:
    data = png_of((40, 30), "teal")
    file_room.push(file_room.add("small.png", data, "image/png", (40, 30)))
    app = make_app(Settings(host=HOST, name="", auto_download_mb=25))  # a size from the file
    view_menu = app.root.nametowidget(app.menubar.entrycget("View", "menu"))
    pictures = app.root.nametowidget(view_menu.entrycget("Show pictures", "menu"))
    labels = [pictures.entrycget(i, "label") for i in range(pictures.index("end") + 1)]
    assert labels == ["Never", "Up to 1 MB", "Up to 10 MB", "Up to 25 MB", "Up to 50 MB"]
    pictures.invoke(labels.index("Never"))
    assert app.settings.auto_download_mb == 0
    enter(app, file_room.port)
    wait_until(app.root, lambda: app.view.files_shown, "the file shown")
    settle(app.root, 0.3)
    assert [kind for kind, _f in app.view.files_shown] == ["card"]  # small, but Never
    assert file_room.downloads == []


def test_an_image_bomb_becomes_a_card_saying_it_is_too_big(
    make_app: Callable[..., ChatApp], file_room: FileRoom
) -> None:
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")  # 100 MP in a few kB
    bomb = file_room.add("innocent.png", out.getvalue(), "image/png", (100, 100))  # it lies
    file_room.push(bomb)
    app = make_app()
    enter(app, file_room.port)
    wait_until(app.root, lambda: app.view.card_for(bomb["id"]) is not None, "the card")
    card = app.view.card_for(bomb["id"])
    assert card is not None
    assert "too big to show" in str(card.size_label.cget("text"))


def test_save_writes_the_files_bytes_to_the_path_chosen(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    content = os.urandom(200_000)  # several ranges and file-data frames
    report = file_room.add("../../report.pdf", content, "application/pdf")
    file_room.push(report, "the report")
    dest = tmp_path / "chosen" / "mine.pdf"
    dest.parent.mkdir()
    offered: list[str] = []
    monkeypatch.setattr(
        chat_view.filedialog,
        "asksaveasfilename",
        lambda **options: offered.append(options["initialfile"]) or str(dest),
    )
    app = make_app()
    enter(app, file_room.port)
    wait_until(app.root, lambda: app.view.card_for(report["id"]) is not None, "the card")
    card = app.view.card_for(report["id"])
    assert card is not None
    wait_until(app.root, card.save_button.winfo_viewable, "the card on the screen")
    click(card.save_button)
    saved = f"Saved ../../report.pdf as {dest}."
    wait_until(app.root, lambda: saved in app.view.transcript_text(), "saved")
    assert offered == ["report.pdf"]
    assert dest.read_bytes() == content
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mine.pdf"]
    assert errors == []


def test_cancel_stops_a_download_and_says_so(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    report = file_room.add("report.pdf", os.urandom(100_000), "application/pdf")
    file_room.push(report)
    dest = tmp_path / "mine.pdf"
    monkeypatch.setattr(chat_view.filedialog, "asksaveasfilename", lambda **_o: str(dest))
    app = make_app()
    enter(app, file_room.port)
    wait_until(app.root, lambda: app.view.card_for(report["id"]) is not None, "the card")
    file_room.hold.clear()  # the download is held
    card = app.view.card_for(report["id"])
    assert card is not None
    card.save_button.invoke()
    wait_until(app.root, lambda: app.view.transfers, "the download's row")
    (row,) = app.view.transfers.values()
    wait_until(app.root, row.cancel_button.winfo_viewable, "its cancel button")
    click(row.cancel_button)
    wait_until(app.root, lambda: not app.view.transfers, "the row gone")
    wait_until(
        app.root,
        lambda: "Downloading report.pdf failed: Cancelled." in app.view.transcript_text(),
        "the failure said",
    )
    file_room.hold.set()
    settle(app.root, 0.3)
    assert not dest.exists()
    assert "Traceback" not in app.view.transcript_text()
    assert errors == []


def test_a_pasted_picture_is_sent_under_its_time_and_its_temporary_file_goes(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    monkeypatch: pytest.MonkeyPatch,
    errors: list[BaseException],
) -> None:
    picture = png_of((64, 48), "green")
    monkeypatch.setattr(attachments, "clipboard_png", lambda: picture)
    made: list[Path] = []
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real(*args, **kwargs)
        made.append(Path(path))
        return fd, path

    monkeypatch.setattr(file_sharing.tempfile, "mkstemp", mkstemp)
    app = make_app()
    enter(app, file_room.port)
    app.view.clipboard_clear()
    app.view.focus_input()
    settle(app.root, 0.1)
    xdotool("key", "ctrl+v")
    wait_until(app.root, lambda: file_room.received, "the picture uploaded")
    (info,) = (file_room.files[key][0] for key in file_room.received)
    assert re.fullmatch(r"Pasted image \d{4}-\d\d-\d\d \d\d\.\d\d\.\d\d\.png", info["name"])
    assert list(file_room.received.values()) == [picture]
    wait_until(app.root, lambda: "[file: Pasted image" in app.view.transcript_text(), "echo")
    assert len(made) == 1
    wait_until(app.root, lambda: not made[0].exists(), "the temporary file deleted")
    assert not app.view.transfers
    assert errors == []


def test_a_refused_upload_is_said_in_a_line_never_a_traceback(
    make_app: Callable[..., ChatApp],
    file_room: FileRoom,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    video = tmp_path / "holiday.mp4"
    video.write_bytes(os.urandom(5000))
    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", lambda **_o: (str(video),))
    file_room.too_large = True
    app = make_app()
    enter(app, file_room.port)
    app.view.attach_file()
    wait_until(
        app.root, lambda: "Sending holiday.mp4 failed: " in app.view.transcript_text(), "said"
    )
    (line,) = [each for each in app.view.transcript_text().splitlines() if "failed" in each]
    assert "Traceback" not in line and "Error" not in line
    wait_until(app.root, lambda: not app.view.transfers, "no row left")
    assert file_room.received == {}
    assert errors == []


def test_leaving_the_room_ends_its_transfers_and_a_picture_on_its_way_becomes_a_card(
    make_app: Callable[..., ChatApp], file_room: FileRoom, errors: list[BaseException]
) -> None:
    cat = file_room.add("cat.png", png_of((100, 100)), "image/png", (100, 100))
    file_room.push(cat)
    file_room.hold.clear()  # the picture's download is held
    app = make_app()
    enter(app, file_room.port)
    wait_until(app.root, lambda: app.view.transfers, "the picture's row")
    app.disconnect()
    app.root.update()
    assert app.view.transfers == {}
    assert app.files.jobs == {}
    card = app.view.card_for(cat["id"])
    assert card is not None
    assert "The connection ended" in str(card.size_label.cget("text"))
    assert errors == []


# -- against the real server ---------------------------------------------------------------


@pytest.fixture
def real(
    start_server: Callable[..., ChatServer], open_client: Callable[..., RawClient]
) -> tuple[ChatServer, Callable[..., RawClient]]:
    """A real server, and a way for bob (or another raw client) to join it."""
    server = start_server()
    return server, lambda name="bob": open_client(server, name)


def test_real_server_a_picture_attached_shows_inline_for_its_sender_and_reaches_others(
    make_app: Callable[..., ChatApp],
    real: tuple[ChatServer, Callable[[], RawClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    server, bob_joins = real
    bob = bob_joins()
    photo = tmp_path / "sunset.png"
    photo.write_bytes(png_of((640, 480), "#e76f51"))
    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", lambda **_o: (str(photo),))
    app = make_app()
    enter(app, server.port)
    app.view.attach_file()
    wait_until(app.root, lambda: ("picture", ANY) in _kinds(app), "the picture inline")
    wait_until(app.root, lambda: not app.view.transfers, "every row gone")
    said = server_files.answer(bob, "message")
    assert said["from"] == "alice"
    assert (said["file"]["name"], said["file"]["width"], said["file"]["height"]) == (
        "sunset.png",
        640,
        480,
    )
    (name,) = app.view.transcript.image_names()
    box = app.view.transcript.bbox(name)
    assert box is not None and (box[2], box[3]) == (320, 240)
    assert errors == []


def test_real_server_a_file_attached_while_writing_to_bob_goes_to_bob_alone(
    make_app: Callable[..., ChatApp],
    real: tuple[ChatServer, Callable[..., RawClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    server, join = real
    bob = join()
    carol = join("carol")
    notes = tmp_path / "for bob.txt"
    notes.write_bytes(b"just between us")
    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", lambda **_o: (str(notes),))
    app = make_app()
    enter(app, server.port)
    app.view.set_input("/msg bob ")  # what double-clicking bob's name writes
    app.view.attach_file()
    said = server_files.answer(bob, "message")
    assert (said["from"], said["to"], said["file"]["name"]) == ("alice", "bob", "for bob.txt")
    wait_until(app.root, lambda: not app.view.transfers, "every row gone")
    assert app.view.input_text() == "/msg bob "  # the private message is still to be written
    carol.send({"type": "ping", "n": 1})
    assert server_files.answer(carol, "pong")["n"] == 1  # nothing came before it
    carol.send({"type": "download", "file": said["file"]["id"]})
    server_files.refused(carol, "no-such-file", "download")
    assert errors == []


def test_real_server_a_file_from_someone_else_saves_byte_for_byte(
    make_app: Callable[..., ChatApp],
    real: tuple[ChatServer, Callable[[], RawClient]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    errors: list[BaseException],
) -> None:
    server, bob_joins = real
    app = make_app()
    enter(app, server.port)
    bob = bob_joins()
    content = os.urandom(700_000)  # three ranges
    file_id = server_files.upload(bob, content, "CON", mime="application/octet-stream")
    server_files.post(bob, file_id, "a device name")
    wait_until(app.root, lambda: app.view.card_for(file_id) is not None, "bob's card")
    offered: list[str] = []
    dest = tmp_path / "saved.bin"
    monkeypatch.setattr(
        chat_view.filedialog,
        "asksaveasfilename",
        lambda **options: offered.append(options["initialfile"]) or str(dest),
    )
    card = app.view.card_for(file_id)
    assert card is not None
    wait_until(app.root, card.save_button.winfo_viewable, "the card on the screen")
    click(card.save_button)
    wait_until(app.root, lambda: f"as {dest}." in app.view.transcript_text(), "saved")
    assert dest.read_bytes() == content
    assert offered == ["_CON"]
    assert errors == []


def test_real_server_a_late_joiner_sees_the_files_said_before(
    make_app: Callable[..., ChatApp],
    real: tuple[ChatServer, Callable[[], RawClient]],
) -> None:
    server, bob_joins = real
    bob = bob_joins()
    report = server_files.upload(bob, b"%PDF-1.4 tiny", "report.pdf", mime="application/pdf")
    server_files.post(bob, report, "before you came")
    picture = server_files.upload(bob, png_of((300, 200)), "chart.png", mime="image/png")
    server_files.post(bob, picture)
    app = make_app()
    enter(app, server.port)
    wait_until(app.root, lambda: len(app.view.files_shown) == 2, "both files")
    wait_until(app.root, lambda: ("picture", ANY) in _kinds(app), "the picture inline")
    text = app.view.transcript_text()
    assert "before you came\n[file: report.pdf, 13 bytes]" in text
    assert [kind for kind, _f in app.view.files_shown] == ["card", "picture"]


def _kinds(app: ChatApp) -> list[tuple[str, Any]]:
    return [(kind, ANY) for kind, _file in app.view.files_shown]


def test_real_server_an_older_page_shows_its_files_at_the_top(
    make_app: Callable[..., ChatApp], start_server: Callable[..., ChatServer], open_client: Any
) -> None:
    server = start_server(history=3)  # the welcome replays the last three
    bob = open_client(server, "bob")
    picture = server_files.upload(bob, png_of((120, 90)), "old chart.png", mime="image/png")
    server_files.post(bob, picture, "an old chart")
    report = server_files.upload(bob, b"old words", "old notes.txt", mime="text/plain")
    server_files.post(bob, report, "old notes")
    for number in range(3):
        bob.send({"type": "say", "text": f"later {number}"})
        server_files.answer(bob, "message")
    app = make_app()
    enter(app, server.port)
    wait_until(app.root, lambda: "later 2" in app.view.transcript_text(), "the replay")
    assert app.view.files_shown == []
    wait_until(app.root, lambda: app.view.paging == "ready", "older pages offered")
    assert app.view.ask_older()
    wait_until(app.root, lambda: len(app.view.files_shown) == 2, "the page's files")
    wait_until(app.root, lambda: ("picture", ANY) in _kinds(app), "its picture inline")
    text = app.view.transcript_text()
    assert text.index("an old chart\n[image: old chart.png") < text.index("later 0")
    assert "old notes\n[file: old notes.txt, 9 bytes]" in text


def test_real_server_without_files_the_paperclip_says_so(
    make_app: Callable[..., ChatApp],
    start_server: Callable[..., ChatServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    server = start_server(files=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("words")
    monkeypatch.setattr(chat_view.filedialog, "askopenfilenames", lambda **_o: (str(notes),))
    app = make_app()
    enter(app, server.port)
    app.view.attach_file()
    app.root.update()
    assert "This server does not take files." in app.view.transcript_text()
    assert app.view.transfers == {}
