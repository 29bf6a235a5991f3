"""Emoji in the real window under Xvfb: colour pictures, not empty boxes
(issue 11, defect 7), that copy back as the characters they show, follow the
font size, and stay few however many distinct ones a server sends."""

from __future__ import annotations

import colorsys
import time
import tkinter
from collections.abc import Callable, Iterator
from typing import Any

import emoji
import pytest
from PIL import Image, ImageGrab

from app import emoji_images
from app.chat_app import ChatApp
from app.chat_view import ChatView
from app.emoji_images import Drawing, runs, sequence_of
from app.settings import Settings
from server.protocol import ChatMessage
from tests.conftest import reset_root
from tests.test_gui import HOST, screenshot, settle, wait_until
from tests.trust_helpers import PlaintextAgreed

WAVE, PARTY, SMILE = "\N{WAVING HAND SIGN}", "\N{PARTY POPPER}", "\N{SLIGHTLY SMILING FACE}"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man, ZWJ, woman, ZWJ, girl
THUMB_MEDIUM = "\U0001f44d\U0001f3fd"  # thumbs up, medium skin tone
FRANCE = "\U0001f1eb\U0001f1f7"  # two regional indicators
GREETING = f"hi {WAVE} {PARTY} {SMILE} the family {FAMILY} is here"


@pytest.fixture
def make_app(tk_root: Any) -> Iterator[Callable[..., ChatApp]]:
    apps: list[ChatApp] = []

    def make(dark: bool = False) -> ChatApp:
        chat = ChatApp(
            tk_root,
            Settings(host=HOST, dark=dark),
            save_settings=lambda _settings: None,
            known=PlaintextAgreed(),
            on_exit=lambda: None,
        )
        apps.append(chat)
        return chat

    yield make
    try:
        for chat in apps:
            chat.change_font_size(0)
            chat.close()
    finally:
        reset_root(tk_root)


@pytest.fixture
def app(make_app: Callable[..., ChatApp]) -> ChatApp:
    return make_app()


def shown(app: ChatApp) -> None:
    app.root.deiconify()
    app.root.geometry("920x640+0+0")
    wait_until(app.root, app.view.transcript.winfo_viewable, what="the window mapped")
    settle(app.root, 0.3)


def say(view: ChatView, sender: str, text: str, number: int = 1) -> None:
    view.add_message(ChatMessage(number, sender, text, time.time()))
    view.end_batch()


def pictures(view: ChatView) -> list[tuple[str, str]]:
    """(embedded name, index) of every picture in the transcript, in order."""
    return [(name, index) for _kind, name, index in view.transcript.dump("1.0", "end", image=True)]


def height_of(view: ChatView, embedded: str) -> int:
    image = view.transcript.image_cget(embedded, "image")
    return int(view.transcript.tk.call("image", "height", image))


def on_screen(view: ChatView, index: str) -> Image.Image:
    """What the screen shows of the character or picture at ``index``."""
    view.transcript.see(index)
    settle(view.winfo_toplevel(), 0.2)
    box = view.transcript.bbox(index)
    assert box is not None, f"{index} is not in view"
    x, y, width, height = box
    left, top = view.transcript.winfo_rootx() + x, view.transcript.winfo_rooty() + y
    return ImageGrab.grab(bbox=(left, top, left + width, top + height)).convert("RGB")


def colourful(picture: Image.Image) -> int:
    """How many clearly coloured (saturated) pixels ``picture`` has."""
    data = picture.convert("RGB").tobytes()
    count = 0
    for at in range(0, len(data), 3):
        red, green, blue = data[at : at + 3]
        _h, lightness, saturation = colorsys.rgb_to_hls(red / 255, green / 255, blue / 255)
        if saturation > 0.3 and 0.2 < lightness < 0.9:
            count += 1
    return count


def rgb(widget: tkinter.Misc, color: str) -> tuple[int, int, int]:
    red, green, blue = (part >> 8 for part in widget.winfo_rgb(color))
    return red, green, blue


def test_emoji_show_as_colour_pictures_not_boxes(app: ChatApp) -> None:
    shown(app)
    view = app.view
    say(view, "bob", GREETING)
    found = pictures(view)
    assert [sequence_of(name) for name, _index in found] == [WAVE, PARTY, SMILE, FAMILY]
    line_height = view.font.metrics("linespace")
    for name, index in found:
        assert height_of(view, name) == line_height
        seen = on_screen(view, index)
        # A box or a black-and-white glyph has no colour; OpenMoji's have plenty.
        assert colourful(seen) >= line_height, (sequence_of(name), colourful(seen))
    assert view.transcript_text().endswith(f"bob: {GREETING}")


def test_copying_a_line_gives_its_emoji_back(app: ChatApp) -> None:
    shown(app)
    view = app.view
    say(view, "bob", GREETING)
    text = view.transcript
    text.tag_add("sel", "end-2l linestart", "end-2l lineend")
    text.focus_set()
    app.root.clipboard_clear()
    text.event_generate("<<Copy>>")
    copied = app.root.clipboard_get()
    assert copied.endswith(f"bob: {GREETING}"), copied
    assert copied == view.transcript_text()


def test_a_link_with_an_emoji_opens_what_was_written(
    app: ChatApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda target: opened.append(target) or True)
    shown(app)
    view = app.view
    say(view, "bob", f"see https://example.org/{PARTY}/page")
    assert pictures(view)
    start = view.transcript.tag_ranges("link")[0]
    view.transcript.mark_set("current", f"{start} + 3c")
    view._open_link(tkinter.Event())
    assert opened == [f"https://example.org/{PARTY}/page"]


def test_a_bigger_font_makes_the_shown_emoji_bigger(app: ChatApp) -> None:
    shown(app)
    view = app.view
    say(view, "bob", GREETING)
    before = [(name, height_of(view, name)) for name, _index in pictures(view)]
    for _ in range(4):
        app.view.input.event_generate("<Control-plus>")
    settle(app.root, 0.2)
    line_height = view.font.metrics("linespace")
    assert line_height > before[0][1]
    # The same pictures, each as high as the new line.
    assert [(name, height_of(view, name)) for name, _height in before] == [
        (name, line_height) for name, _height in before
    ]
    assert colourful(on_screen(view, before[0][0])) >= line_height
    say(view, "carol", f"and now {WAVE}")
    assert height_of(view, pictures(view)[-1][0]) == line_height


def test_an_emoji_the_font_lacks_stays_text(app: ChatApp) -> None:
    lacking = next(each for each in emoji.EMOJI_DATA if not Drawing().has(each))
    assert runs(lacking) == [(lacking, True)]  # an emoji all the same
    view = app.view
    say(view, "bob", f"new {lacking} one {WAVE}")
    assert [sequence_of(name) for name, _index in pictures(view)] == [WAVE]
    assert lacking in view.transcript.get("1.0", "end")
    assert view.transcript_text().endswith(f"bob: new {lacking} one {WAVE}")


def test_a_mentions_highlight_spans_its_emoji(app: ChatApp) -> None:
    shown(app)
    view = app.view
    view.own_name = "alice"
    say(view, "bob", f"alice {SMILE} look")
    (_name, index), *_ = pictures(view)
    assert "mention" in view.transcript.tag_names(index)
    seen = on_screen(view, index)
    highlight = rgb(view, str(view.transcript.tag_cget("mention", "background")))
    plain = rgb(view, str(view.transcript.cget("background")))
    # The picture's corners are transparent: the line's highlight shows there.
    for corner in ((0, 0), (seen.width - 1, 0), (0, seen.height - 1)):
        pixel = seen.getpixel(corner)
        assert isinstance(pixel, tuple)
        assert max(abs(a - b) for a, b in zip(pixel, highlight, strict=True)) <= 8, (
            corner,
            pixel,
            highlight,
            plain,
        )


def test_thousands_of_distinct_emoji_keep_pictures_and_images_bounded(
    app: ChatApp, tk_root: Any
) -> None:
    """Tk looks through every picture of a Text to add one, and each kept image
    costs memory: a server sending 5,000 distinct emoji must not grow either."""
    view = app.view
    limit = emoji_images.MAX_PICTURES
    images_before = len(tk_root.image_names())
    distinct = [each for each in emoji.EMOJI_DATA if runs(each) == [(each, True)]][:5000]
    assert len(distinct) == 5000
    for number, sequence in enumerate(distinct):
        view.add_message(ChatMessage(number, "mallory", f"{sequence} {number}", time.time()))
        if number % 500 == 0:
            view.end_batch()
            tk_root.update()
    view.end_batch()
    tk_root.update()
    assert len(view._emoji) <= limit
    assert len(tk_root.image_names()) - images_before <= limit
    shown = pictures(view)
    assert len(view.transcript.image_names()) == len(shown) == limit
    # Every picture still shown has its image (none is left a blank space)...
    for name, _index in shown:
        assert str(view.transcript.image_cget(name, "image")) in tk_root.image_names()
    # ...they are the newest emoji, the older ones are text again, and every
    # line copies as it was sent.
    drawable = [each for each in distinct if Drawing().has(each)]
    assert [sequence_of(name) for name, _index in shown] == drawable[-limit:]
    assert f"mallory: {distinct[0]} 0\n" in view.transcript.get("1.0", "end")
    transcript = view.transcript_text()
    assert transcript.endswith(f"mallory: {distinct[-1]} 4999")
    assert all(
        f"mallory: {each} {number}\n" in transcript for number, each in enumerate(distinct[:-1])
    )


def test_a_line_of_thousands_of_emoji_draws_a_few(app: ChatApp) -> None:
    view = app.view
    flood = "".join(each for each in emoji.EMOJI_DATA if runs(each) == [(each, True)])[:3000]
    say(view, "mallory", flood)
    assert len(pictures(view)) == emoji_images.PICTURES_PER_LINE
    assert view.transcript_text().endswith(f"mallory: {flood}")


@pytest.mark.parametrize("mode", ["light", "dark"])
def test_screenshot_of_emoji_in_both_themes(
    make_app: Callable[..., ChatApp], tk_root: Any, mode: str
) -> None:
    if tk_root.theme_mode != mode:
        tk_root.theme_mode = mode
    chat = make_app(dark=mode == "dark")
    view = chat.view
    view.own_name = "alice"
    say(view, "bob", GREETING)
    say(view, "carol", f"alice, party tonight? {PARTY}{PARTY} \u2764\ufe0f {THUMB_MEDIUM}")
    say(
        view,
        "dave",
        f"flags {FRANCE} \U0001f1ef\U0001f1f5, keycap #\ufe0f\u20e3, \u00a9 stays text",
    )
    view.add_notice(f"erin joined {WAVE}")
    view.end_batch()
    assert len(pictures(view)) == 12
    path = screenshot(chat.root, f"emoji-{mode}.png")
    assert colourful(Image.open(path)) > 500
