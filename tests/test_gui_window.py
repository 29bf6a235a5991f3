"""The window as a whole, in the real window under Xvfb: the same looks
whichever theme it started in, readable mentions, menus, and a geometry
remembered between runs (and never restored off the screen).

The session shares one Tk root (``tk_root``), which started light: a window
"started dark" is one whose ``ChatApp`` is built after the root went dark.
"""

from __future__ import annotations

import json
import time
import tkinter
from collections.abc import Callable
from pathlib import Path
from tkinter import ttk as tkttk
from typing import Any

import pytest

from app import settings as settings_store
from app import text as fmt
from app.chat_app import ChatApp
from app.chat_view import Action
from app.settings import Settings, fit_geometry
from server.protocol import ChatMessage
from tests.test_gui import HOST, settle, wait_until

# What makes a plain Tk widget look as it does (colours, borders, padding).
LOOKS = (
    "background",
    "foreground",
    "borderwidth",
    "relief",
    "highlightthickness",
    "highlightbackground",
    "highlightcolor",
    "padx",
    "pady",
    "insertwidth",
    "insertbackground",
    "selectbackground",
    "selectforeground",
    "selectborderwidth",
    "activestyle",
    "activebackground",
    "activeforeground",
)


@pytest.fixture
def make_app(open_app: Callable[..., ChatApp]) -> Callable[..., ChatApp]:
    """Build ChatApps on the shared root; each is closed, and the root is left
    withdrawn, light and at its test size."""

    def make(settings: Settings | None = None, saved: list[Settings] | None = None) -> ChatApp:
        sink = saved.append if saved is not None else (lambda _settings: None)
        return open_app(settings or Settings(host=HOST), save_settings=sink)

    return make


def set_theme(root: Any, mode: str) -> None:
    if root.theme_mode != mode:
        root.theme_mode = mode
    root.update()


def plain_widget_looks(chat: ChatApp) -> list[tuple[str, dict[str, str]]]:
    """Every plain (non-ttk) Tk widget of the app, in build order, with its looks."""
    found: list[tuple[str, dict[str, str]]] = []
    stack: list[tkinter.Misc] = [chat.view, chat.menubar]
    while stack:
        widget = stack.pop()
        stack.extend(reversed(widget.winfo_children()))
        if isinstance(widget, tkttk.Widget):
            continue
        options = set(widget.keys())
        looks = {name: str(widget.cget(name)) for name in LOOKS if name in options}
        found.append((widget.winfo_class(), looks))
    return found


def looks_started_in(make_app: Callable[..., ChatApp], root: Any, mode: str) -> list[Any]:
    set_theme(root, mode)
    chat = make_app(Settings(host=HOST, dark=mode == "dark"))
    root.update()
    looks = plain_widget_looks(chat)
    chat.close()
    return looks


@pytest.mark.parametrize("mode", ["dark", "light"])
def test_the_window_looks_the_same_started_in_a_theme_or_switched_to_it(
    make_app: Callable[..., ChatApp], tk_root: Any, mode: str
) -> None:
    """The online list had a bordered box after a switch that a window started
    in that theme lacked; the input box and the transcript's padding differed too."""
    started = looks_started_in(make_app, tk_root, mode)
    other = "light" if mode == "dark" else "dark"
    set_theme(tk_root, other)
    chat = make_app(Settings(host=HOST, dark=other == "dark"))
    tk_root.update()
    switches = 2 if mode == other else 1
    for _ in range(switches):  # to `mode`; from light, the walk there and back again
        chat.toggle_theme()
        tk_root.update()
    assert chat.settings.dark == (mode == "dark")
    switched = plain_widget_looks(chat)
    assert [kind for kind, _ in switched] == [kind for kind, _ in started]
    for (kind, before), (_, after) in zip(started, switched, strict=True):
        differing = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
        assert not differing, (kind, differing)
    # The online list is part of the side panel, without a box of its own.
    online = chat.view.user_list
    assert int(online.cget("highlightthickness")) == 0
    assert int(online.cget("borderwidth")) == 0


def hex_color(widget: tkinter.Misc, color: str) -> str:
    return "#" + "".join(f"{part >> 8:02x}" for part in widget.winfo_rgb(color))


@pytest.mark.parametrize("mode", ["dark", "light"])
def test_a_mention_is_highlighted_and_everything_on_it_reads(
    make_app: Callable[..., ChatApp], tk_root: Any, mode: str
) -> None:
    set_theme(tk_root, mode)
    chat = make_app(Settings(host=HOST, dark=mode == "dark"))
    view = chat.view
    view.own_name = "alice"
    now = time.time()
    senders = ["bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
    for number, sender in enumerate(senders):
        text = f"alice, look at https://example.org/{number}"
        assert view.add_message(ChatMessage(number + 1, sender, text, now))
    view.add_message(ChatMessage(99, "alice", "/me waves", now, action=True))
    view.add_notice("That went wrong.", "error")
    view.end_batch()
    tk_root.update()
    text = view.transcript
    plain = hex_color(text, str(text.cget("background")))
    highlight = hex_color(text, str(text.tag_cget("mention", "background")))
    # Clearly a highlight: the line stands out from the others.
    distance = sum(
        abs(int(a, 16) - int(b, 16))
        for a, b in zip(
            (highlight[1:3], highlight[3:5], highlight[5:7]),
            (plain[1:3], plain[3:5], plain[5:7]),
            strict=True,
        )
    )
    assert distance >= 60, (highlight, plain)
    checked = 0
    for index in range(1, int(text.index("end-1c").split(".")[0]) + 1):
        line = f"{index}.0"
        for column in range(len(text.get(line, f"{line} lineend"))):
            where = f"{line}+{column}c"
            tags = text.tag_names(where)
            background = highlight if "mention" in tags else plain
            color = str(text.cget("foreground"))
            for tag in tags:  # the highest-priority foreground wins, as Tk draws it
                color = str(text.tag_cget(tag, "foreground")) or color
            ratio = fmt.contrast_ratio(hex_color(text, color), background)
            assert ratio >= 4.5, (mode, text.get(where), tags, color, background, ratio)
            checked += 1
    assert checked > 300  # every character of every line was looked at


def test_menus_keep_shortcuts_in_the_accelerator_column(
    make_app: Callable[..., ChatApp], tk_root: Any
) -> None:
    """Shortcuts go in ``accelerator=``, which Tk aligns; typed into a label
    with spaces they would never line up."""
    chat = make_app()
    menus = [chat.menubar.nametowidget(str(chat.menubar.entrycget(i, "menu"))) for i in (0, 1, 2)]
    accelerators = []
    for menu in menus:
        for entry in range((menu.index("end") or 0) + 1):
            if menu.type(entry) == "separator":
                continue
            label = str(menu.entrycget(entry, "label"))
            assert "  " not in label and "Ctrl" not in label, label
            accelerators.append(str(menu.entrycget(entry, "accelerator")))
    assert {"Ctrl+Q", "Ctrl++", "Ctrl+-"} <= set(accelerators)


def shown(root: Any) -> None:
    root.deiconify()
    wait_until(root, root.winfo_viewable, what="the window mapped")
    settle(root, 0.2)


def test_the_window_comes_back_at_the_size_and_place_it_had(
    make_app: Callable[..., ChatApp], tk_root: Any
) -> None:
    saved: list[Settings] = []
    chat = make_app(saved=saved)
    shown(tk_root)
    tk_root.geometry("640x480+37+29")
    wait_until(tk_root, lambda: tk_root.geometry() == "640x480+37+29", what="the move")
    chat.close()
    assert saved[-1].geometry == "640x480+37+29"

    tk_root.withdraw()
    tk_root.geometry("920x640+0+0")
    tk_root.update()
    make_app(saved[-1])
    shown(tk_root)
    wait_until(tk_root, lambda: tk_root.geometry() == "640x480+37+29", what="the old geometry")


@pytest.mark.parametrize(
    "geometry", ["800x600+6000+5000", "800x600+-3000+-2000", "9000x8000+100+100"]
)
def test_a_window_saved_off_the_screen_comes_back_on_it(
    make_app: Callable[..., ChatApp], tk_root: Any, geometry: str
) -> None:
    """A monitor unplugged since, or a smaller resolution: the window shows wholly."""
    make_app(Settings(host=HOST, geometry=geometry))
    shown(tk_root)
    screen_width, screen_height = tk_root.winfo_screenwidth(), tk_root.winfo_screenheight()
    # The window's outer corner (above the menu bar), then its inner area's far edge.
    corner = settings_store.parse_geometry(tk_root.geometry())
    assert corner is not None and corner[2] >= 0 and corner[3] >= 0, tk_root.geometry()
    right = tk_root.winfo_rootx() + tk_root.winfo_width()
    bottom = tk_root.winfo_rooty() + tk_root.winfo_height()
    assert right <= screen_width and bottom <= screen_height, (right, bottom, tk_root.geometry())
    assert min(tk_root.winfo_width(), tk_root.winfo_height()) > 100  # still a window to use


def test_a_window_never_shown_keeps_the_saved_geometry(
    make_app: Callable[..., ChatApp], tk_root: Any
) -> None:
    """Quitting from the first dialog saves no geometry of a window nobody saw."""
    saved: list[Settings] = []
    chat = make_app(Settings(host=HOST, geometry="700x500+10+10"), saved)
    chat.close()
    assert saved[-1].geometry == "700x500+10+10"


def test_fit_geometry_keeps_a_window_on_the_screen() -> None:
    assert fit_geometry("640x480+37+29", (1280, 1024)) == "640x480+37+29"
    assert fit_geometry("640x480+1000+900", (1280, 1024), chrome=(16, 96)) == "640x480+624+448"
    assert fit_geometry("640x480+1000+900", (1280, 1024)) == "640x480+640+544"
    assert fit_geometry("640x480+-50+-9", (1280, 1024)) == "640x480+0+0"
    assert fit_geometry("3000x2000+5+5", (1280, 1024), (560, 420)) == "1280x1024+0+0"
    assert fit_geometry("100x80+5+5", (1280, 1024), (560, 420)) == "560x420+5+5"
    assert fit_geometry("", (1280, 1024)) is None
    assert fit_geometry("640x480", (1280, 1024)) is None


@pytest.mark.parametrize(
    "stored",
    [5, None, [640, 480], "", "junk", "0x480+1+1", "640x480+1", "99999999x480+0+0", "640x480-5-5"],
)
def test_a_bad_saved_geometry_is_ignored(tmp_path: Path, stored: object) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"name": "alice", "geometry": stored}), encoding="utf-8")
    loaded = settings_store.load(path)
    assert loaded.geometry == ""
    assert loaded.name == "alice"  # the rest is kept


def test_a_saved_geometry_survives_a_save_and_a_load(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    settings_store.save(Settings(name="alice", geometry="700x500+-20+40"), path)
    assert settings_store.load(path).geometry == "700x500+-20+40"


def test_the_online_panels_hint_fits_in_the_panel(
    make_app: Callable[..., ChatApp], tk_root: Any
) -> None:
    """Its text was cut off ("for a private messag") in a 920 px window, and
    more so with the panel dragged narrower."""
    chat = make_app()
    shown(tk_root)
    tk_root.geometry("920x640+0+0")
    hint = chat.view.private_hint
    panel = hint.master
    assert isinstance(panel, tkinter.Misc)

    def fits() -> bool:  # shown whole (not cut to a narrower space), inside the panel
        right = hint.winfo_rootx() + hint.winfo_reqwidth()
        whole = hint.winfo_width() >= hint.winfo_reqwidth()
        return whole and right <= panel.winfo_rootx() + panel.winfo_width()

    wait_until(tk_root, lambda: tk_root.geometry() == "920x640+0+0", what="the size")
    settle(tk_root, 0.2)
    assert fits(), (hint.winfo_width(), hint.winfo_reqwidth(), panel.winfo_width())
    panes = panel.master
    assert isinstance(panes, tkttk.Panedwindow)
    panes.sashpos(0, panes.winfo_width() - 110)  # as a drag of the divider would
    wait_until(tk_root, lambda: panel.winfo_width() < 130, what="a narrow panel")
    settle(tk_root, 0.2)
    assert fits(), (hint.winfo_width(), hint.winfo_reqwidth(), panel.winfo_width())
    assert "private message" in str(hint.cget("text"))


def test_the_banner_offers_the_action_it_is_given(
    make_app: Callable[..., ChatApp], tk_root: Any
) -> None:
    """The banner's button is whatever the app hands it, label and callback
    (a trust prompt or a password will need other buttons than reconnecting);
    without an action it shows none, and new words keep the button shown."""
    view = make_app().view
    shown(tk_root)
    clicked: list[str] = []
    button = view.banner_button

    def offered() -> str | None:  # the button's label, if a person can see it
        tk_root.update()
        return str(button.cget("text")) if button.winfo_ismapped() else None

    view.show_banner(
        "This server's certificate changed.", Action("Trust it", lambda: clicked.append("trust"))
    )
    assert view.banner_visible and offered() == "Trust it"
    button.invoke()
    assert clicked == ["trust"]
    view.update_banner("This server's certificate changed again.")
    assert str(view.banner_label.cget("text")) == "This server's certificate changed again."
    assert offered() == "Trust it"
    view.show_banner("Just so you know.")
    assert view.banner_visible and offered() is None
    button.invoke()  # a hidden button left behind does nothing either
    assert clicked == ["trust"]
    view.show_banner("Again?", Action("Retry", lambda: clicked.append("retry")))
    assert offered() == "Retry"
    button.invoke()
    view.hide_banner()
    tk_root.update()
    assert not view.banner_visible and not button.winfo_ismapped()
    assert clicked == ["trust", "retry"]
