"""The chat screen: transcript, who is online, the input box, the status line.

The view shows what it is told and reports what the user does through
callbacks; it knows nothing of sockets or commands. Tk thread only.

How the transcript keeps the newest line in view: ``_following`` says
whether the person is reading the end. Only the person changes it, by
scrolling (wheel, keys, scrollbar) or by the "new messages" button;
adding lines, a resize, a banner or a bigger font never do, and while it
is set every batch, resize and font change ends with the view at the end.
While it is not, new lines are counted on a button that takes them down.
The scrollbar shows whenever there is more than one screen (ttkbootstrap's
hover auto-hide hid it, and crashed on a fast move onto the menu bar).

Nothing a person types reaches the left edge: each message line starts
with its time and author, and its further lines (typed or wrapped) are
indented under the author by the ``msg`` and ``cont`` tags' margins; only
the app's own notices and the first line of a message start at the edge.

A run of one person's messages (``GROUP_SECONDS`` apart at most, nothing
between) shows the time and name once: on the later lines they are elided,
still in the text for copying. A centred line marks each new day.

Older history comes in pages (``insert_page``) at the ``room_top`` mark,
where the room's lines begin, above those shown: when the person reaches
the top (the wheel, the scrollbar, PageUp, Ctrl+Home: any way the person
moves the view there, or turns the wheel up with nothing to scroll), the
view calls ``on_reach_top`` once, and a page goes in with the line at the
top of the view kept at the very same pixel, so nothing under the pointer
moves. Day lines are mended where a page meets the lines below it. After
``start_room(unread_after)``, a "New since you left" divider goes above
the first message of others newer than that id, in the replay or in a
page (moving up as older unread ones come in). Names
take one of a dozen colours (``text.name_slot``), each made to read at 4.5:1
on a mention's highlight, and so on the transcript's background, in either
theme; so are the other colours of the transcript.
"""

from __future__ import annotations

import datetime
import logging
import time
import tkinter
import webbrowser
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from tkinter import filedialog
from tkinter import font as tkfont
from typing import Protocol

import ttkbootstrap as ttk
from PIL import Image, ImageTk

from app import emoji_images, lookalike
from app import text as fmt
from app.attachments import looks_executable
from app.file_card import FileCard, TransferRow, short_name
from app.file_names import human_size, safe_file_name
from app.search_panel import SearchPanel
from server.protocol import MAX_TEXT_LENGTH, ChatMessage, FileInfo, name_identity

logger = logging.getLogger("app.chat_view")

MAX_LINES = 10_000  # transcript lines kept; older ones are dropped in chunks
COUNTER_FROM = MAX_TEXT_LENGTH - 500  # the length counter shows from here on
INPUT_HISTORY = 100
GROUP_SECONDS = 5 * 60  # one person's messages this close together show their name once
CONTROL_MASK = 0x0004  # Tk's event.state bits (X11 and Windows alike)
ALT_MASK = 0x0008 | 0x20000  # Mod1 on X11; Alt on Windows
SCROLL_KEYS = frozenset({"Prior", "Next", "Up", "Down", "Home", "End"})
# A mention's background: amber, and dark enough in the dark theme for the
# light text on it (the olive #5c4a00 it was left the times at 3.4:1).
MENTION_LIGHT = "#fff3cd"
MENTION_DARK = "#583e0e"
# Marks before a name in the online list; no name can hold either (names
# are letters, digits and _ - .), so nobody can wear one they were not given.
OP_MARK = "\u2605"  # ★ an operator
LOOKALIKE_MARK = "\u26a0"  # ⚠ looks like someone present, or mixes scripts
# A server notice's band: no message has a background but a mention's amber.
SERVER_NOTICE_LIGHT = "#dbeafe"
SERVER_NOTICE_DARK = "#12324f"
# A search result's row when chosen, and the result in its context.
CHOSEN_LIGHT = "#e7f1ff"
CHOSEN_DARK = "#1f3a5f"
ROOM_TOP = "room_top"  # a mark: where the room's lines begin; older pages go there
PAGE_AT = "page_at"  # a mark: where a page's lines go, one after the other
ANCHOR = "anchor"  # a mark: the line at the top of the view while a page goes in
# A page goes in only while the transcript stays within MAX_LINES with it:
# trimming the oldest lines would throw away the page just asked for.
DIVIDER_TEXT = "New since you left"
BEGINNING_TEXT = "Beginning of the room"
NOT_KEPT_TEXT = "Older messages are not shown here: Ctrl+F searches all of them."
# Files in the transcript shown as widgets or pictures, at most: Tk looks
# through every embedded window and image of a Text as it lays it out, and a
# thumbnail holds up to 300 KB. Older ones become a line of text that still
# answers a click (a picture opens, a file is offered to save).
MAX_CARDS = 200
MAX_THUMBNAILS = 100
TRANSFER_ROWS = 4  # shown at once; "and N more" says the rest
FILE_TAG = "attached-"  # a tag per file shown: attached-1, attached-2, ...


class FileActions(Protocol):
    """What the view asks of whoever handles files (app/file_sharing.py)."""

    def attach(self, path: Path) -> None:
        """Send the file at ``path``."""

    def paste_image(self) -> bool:
        """Send the clipboard's image, if it holds one; whether it did."""

    def save(self, file: FileInfo, dest: Path) -> None:
        """Download ``file`` to ``dest`` (the person chose it)."""

    def open(self, file: FileInfo) -> None:
        """Download ``file`` to the cache and open it with the OS."""

    def open_image(self, file: FileInfo) -> None:
        """Show the picture ``file`` full size."""

    def cancel(self, transfer: int) -> None:
        """Stop a transfer."""

    def shown(self, file: FileInfo) -> bool:
        """``file`` went into the transcript: whether its picture will come
        (``show_image`` or ``image_unavailable``) rather than a card."""


@dataclass(frozen=True, slots=True)
class Action:
    """A button the view offers for a moment (the banner's): its ``label``, and
    what clicking it runs."""

    label: str
    run: Callable[[], None]


class ChatView(ttk.Frame):
    """The chat screen. ``on_send(text)`` returns whether the text was taken
    (so the input is cleared).

    The view owns its widgets: the app tells it what to show through the
    methods below (transcript, online list, status, banner, input) and never
    configures a widget itself. The widgets that show what a person sees
    keep public names only so that tests can look at them.
    """

    def __init__(
        self,
        master: tkinter.Misc,
        *,
        on_send: Callable[[str], bool],
        font_size: int,
        remember: Callable[[str], bool] = lambda _line: True,
        on_reach_top: Callable[[], bool] | None = None,
        on_search: Callable[[str, int | None], None] | None = None,
        on_choose_result: Callable[[ChatMessage], None] | None = None,
        on_end_reached: Callable[[], None] | None = None,
        files: FileActions | None = None,
    ) -> None:
        super().__init__(master)
        self.on_send = on_send
        self._init_files(files)
        # The person reached the top of the transcript: ask for an older page
        # (returns whether it was asked for). Search: see app/search_panel.py.
        self.on_reach_top = on_reach_top
        self._on_search = on_search or (lambda _query, _before: None)
        self._on_choose_result = on_choose_result or (lambda _message: None)
        self.search_panel: SearchPanel | None = None
        self._on_end_reached = on_end_reached or (lambda: None)  # the newest line in view
        # The room's history (see the module docstring): pages "off", "ready",
        # "loading" or "ended"; the oldest id shown; the day of the room's first
        # dated line; the divider's id and whether appended lines may get it.
        self._paging = "off"
        self._room_open = False
        self._oldest_id: int | None = None
        self._top_day: datetime.date | None = None
        self._unread_after: int | None = None
        self._mark_appended = False
        self._remember = remember  # whether Up may recall a line sent (not a password)
        self._banner_action: Action | None = None
        self._own_name: str | None = None
        self._users: list[str] = []  # sorted by _user_key, row for row as in user_list
        self._lookalikes = lookalike.LookalikeIndex()  # the same names, by look-alike key
        self._ops: set[str] = set()  # which of them are operators
        self._history: list[str] = []
        self._history_pos = 0
        self._draft = ""  # what was in the box before Up recalled older input
        self._following = True  # the person reads the end (see the module docstring)
        self._unseen = 0  # lines added while they read further up
        self._help_text = ""  # the last /help shown, to lay out its columns again
        self._day: datetime.date | None = None  # of the last message shown
        self._group: tuple[str, float] | None = None  # sender and time of a run going on
        self._astral_ok = fmt.tk_shows_astral(self)

        self.font = tkfont.Font(self, family=tkfont.nametofont("TkTextFont").actual("family"))
        self._bold_font = tkfont.Font(self, weight="bold")
        self._italic_font = tkfont.Font(self, slant="italic")
        self._size_fonts(font_size)

        self.columnconfigure(0, weight=1)
        self.rowconfigure(1, weight=1)
        self._build_banner()
        self._build_middle()
        # Emoji show as pictures one line high (Tk cannot draw them in colour).
        self._emoji = emoji_images.EmojiText(
            self.transcript, self.font.metrics("linespace"), astral_ok=self._astral_ok
        )
        self._build_input()
        if files is not None:
            self._enable_drop()
        self.status_label = ttk.Label(self, text="", bootstyle="secondary", padding=(10, 4))
        self.status_label.grid(row=3, column=0, sticky="we")
        self._build_security()
        self._recolor = ttk.theme_aware(lambda _style: self.apply_theme())

    def _init_files(self, files: FileActions | None) -> None:
        """The cards, pictures and transfers shown (see ``_attachment_line``)."""
        self._files = files
        self._shown_files: dict[str, FileInfo] = {}  # by tag (attached-N)
        self._waiting: dict[str, list[str]] = {}  # a picture to come, by file id: its tags
        self._photos: dict[str, ImageTk.PhotoImage] = {}  # shown, by tag, oldest first
        self._cards: deque[FileCard] = deque()
        self._as_words: set[str] = set()  # the tags of old cards and pictures turned to words
        self._file_count = 0
        self._transfers: dict[int, TransferRow] = {}
        self.drop_enabled = False

    def destroy(self) -> None:
        ttk.remove_theme_change_callback(self._recolor)
        super().destroy()

    # -- building ------------------------------------------------------------

    def _build_banner(self) -> None:
        self._banner = ttk.Frame(self, bootstyle="warning", padding=(10, 6))
        self._banner.columnconfigure(0, weight=1)
        self.banner_label = ttk.Label(self._banner, text="", bootstyle="@warning")
        self.banner_label.grid(row=0, column=0, sticky="w")
        self.banner_button = ttk.Button(
            self._banner, text="", bootstyle="dark", command=self._banner_clicked
        )
        self.banner_button.grid(row=0, column=1, sticky="e")

    def _build_security(self) -> None:
        """The lock at the status line's end, and the bar that says who is in
        the room without encryption (it shares the banner's row: the banner,
        about the connection itself, goes first)."""
        self._on_lock: Callable[[], None] | None = None
        self._insecure: tuple[str, ...] = ()
        self.lock_button = ttk.Button(
            self, text="", bootstyle="link", padding=(6, 0), command=self._lock_clicked
        )
        self._insecure_bar = ttk.Frame(self, bootstyle="danger", padding=(10, 6))
        self.insecure_label = ttk.Label(self._insecure_bar, text="", bootstyle="@danger")
        self.insecure_label.pack(anchor="w")

    def _build_middle(self) -> None:
        self._middle = middle = ttk.Panedwindow(self, orient="horizontal")
        middle.grid(row=1, column=0, sticky="nsew", padx=10, pady=(10, 0))
        self.scrolled = ttk.ScrolledText(middle, wrap="word", padding=0)
        self.transcript: tkinter.Text = self.scrolled.text
        self.transcript.configure(
            font=self.font,
            state="disabled",
            cursor="arrow",
            spacing1=2,
            yscrollcommand=self._view_moved,
        )
        bar = self.scrolled.vbar
        assert bar is not None, "a ScrolledText has a vertical bar unless told otherwise"
        self._bar = bar
        bar.configure(command=self._scroll_by_bar)
        bar.grid_remove()  # until there is more than one screen
        transcript = self.transcript
        # Read-only, yet selectable and copyable; what is typed there goes to the input.
        transcript.bind("<1>", lambda _event: transcript.focus_set())
        transcript.bind("<KeyPress>", self._key_in_transcript)
        transcript.bind("<<Paste>>", self._paste_in_transcript)
        for sequence in ("<MouseWheel>", "<Button-4>", "<Button-5>", "<ButtonRelease-1>"):
            transcript.bind(sequence, self._person_scrolled, add="+")
        transcript.bind("<Configure>", lambda _event: self._keep_end(), add="+")
        self.new_messages_button = ttk.Button(
            self.scrolled, text="", bootstyle="primary", command=self.scroll_to_end
        )
        self.transcript.tag_bind("link", "<Button-1>", self._open_link)
        self.transcript.tag_bind("picture-link", "<Button-1>", self._picture_clicked)
        self.transcript.tag_bind("file-link", "<Button-1>", self._file_words_clicked)
        for tag in ("picture-link", "file-link"):
            self.transcript.tag_bind(tag, "<Enter>", lambda _e: self._link_cursor("hand2"))
            self.transcript.tag_bind(tag, "<Leave>", lambda _e: self._link_cursor("arrow"))
        self.transcript.tag_bind("link", "<Enter>", lambda _e: self._link_cursor("hand2"))
        self.transcript.tag_bind("link", "<Leave>", lambda _e: self._link_cursor("arrow"))
        middle.add(self.scrolled, weight=4)

        side = ttk.Frame(middle, padding=(10, 0, 0, 0))
        self.online_label = ttk.Label(side, text="Online", font=self._bold_font)
        self.online_label.pack(anchor="w", pady=(0, 4))
        self.user_list = tkinter.Listbox(
            side, activestyle="none", font=self.font, borderwidth=0, highlightthickness=0, width=18
        )
        self.user_list.pack(fill="both", expand=True)
        self.user_list.bind("<Double-Button-1>", self._private_to_selected)
        self.user_list.bind("<Return>", self._private_to_selected)
        self._user_tip = _Tip(self.user_list)
        self.user_list.bind("<Motion>", self._user_hovered, add="+")
        self.user_list.bind("<Leave>", lambda _event: self._user_tip.hide(), add="+")
        self.private_hint = hint = ttk.Label(
            side, text="Double-click a name for a private message", bootstyle="secondary"
        )
        hint.pack(anchor="w", pady=(4, 0))
        # Wrapped to the panel's width, never asking for more: with a fixed
        # line break it was cut off whenever the panel was narrower than that.
        hint.configure(wraplength=self.user_list.winfo_reqwidth())
        side.bind("<Configure>", lambda event: hint.configure(wraplength=max(40, event.width - 12)))
        middle.add(side, weight=1)

    def _build_input(self) -> None:
        row = ttk.Frame(self, padding=(10, 8, 10, 0))
        row.grid(row=2, column=0, sticky="we")
        row.columnconfigure(0, weight=1)
        # Transfers in progress, one row each, above the box (shown while any is).
        self.transfer_strip = ttk.Frame(row, padding=(0, 0, 0, 6))
        self._more_label = ttk.Label(self.transfer_strip, text="", bootstyle="secondary")
        self.input = tkinter.Text(row, height=3, wrap="word", font=self.font, undo=True)
        self.input.grid(row=1, column=0, rowspan=2, sticky="we")
        self.attach_button = ttk.Button(
            row, icon="paperclip", bootstyle="secondary-outline", command=self.attach_file
        )
        if self._files is not None:
            self.attach_button.grid(row=1, column=1, sticky="n", padx=(8, 0))
        send_button = ttk.Button(
            row, text="Send", icon="send-fill", bootstyle="primary", command=self.send_input
        )
        send_button.grid(row=1, column=2, sticky="n", padx=(8, 0))
        self._counter_label = ttk.Label(row, text="", bootstyle="secondary")
        self._counter_label.grid(row=2, column=1, columnspan=2, sticky="se", padx=(8, 0))
        self.input.bind("<<Paste>>", self._paste_in_input)
        # Ctrl+O sends a file; Tk's Text would also open a line there ("break").
        self.input.bind("<Control-o>", self._attach_key)
        self.input.bind("<Return>", self._enter)
        self.input.bind("<KP_Enter>", self._enter)
        self.input.bind("<Shift-Return>", self._newline)
        self.input.bind("<Up>", self._recall_previous)
        self.input.bind("<Down>", self._recall_next)
        self.input.bind("<<Modified>>", self._input_changed)

    # -- the user's actions -------------------------------------------------

    def input_text(self) -> str:
        return self.input.get("1.0", "end-1c")

    def set_input(self, value: str) -> None:
        self.input.delete("1.0", "end")
        self.input.insert("1.0", value)
        self.input.mark_set("insert", "end")

    def focus_input(self) -> None:
        self.input.focus_set()

    def send_input(self) -> None:
        """Hand the input to ``on_send``; clear it only if it was taken."""
        value = self.input_text()
        if not value.strip():
            return
        if self.on_send(value):
            if self._remember(value) and (not self._history or self._history[-1] != value):
                self._history = [*self._history, value][-INPUT_HISTORY:]
            self._history_pos = len(self._history)
            self.set_input("")

    def start_private(self, name: str) -> None:
        self.set_input(f"/msg {name} ")
        self.focus_input()

    def _enter(self, _event: tkinter.Event) -> str:
        self.send_input()
        return "break"

    def _newline(self, _event: tkinter.Event) -> str:
        self.input.insert("insert", "\n")
        return "break"

    def _recall_previous(self, _event: tkinter.Event) -> str | None:
        if self.input.index("insert").split(".")[0] != "1" or not self._history:
            return None  # only from the first line: Up still moves within a long draft
        if self._history_pos == len(self._history):
            self._draft = self.input_text()
        self._history_pos = max(0, self._history_pos - 1)
        self.set_input(self._history[self._history_pos])
        return "break"

    def _recall_next(self, _event: tkinter.Event) -> str | None:
        last_line = self.input.index("end-1c").split(".")[0]
        if self.input.index("insert").split(".")[0] != last_line or not self._history:
            return None
        self._history_pos = min(len(self._history), self._history_pos + 1)
        recalled = self._history[self._history_pos : self._history_pos + 1]
        self.set_input(recalled[0] if recalled else self._draft)
        return "break"

    def _input_changed(self, _event: tkinter.Event) -> None:
        self.input.edit_modified(False)
        length = len(self.input_text())
        if length < COUNTER_FROM:
            self._counter_label.configure(text="")
            return
        style = "danger" if length > MAX_TEXT_LENGTH else "secondary"
        self._counter_label.configure(text=f"{length:,} / {MAX_TEXT_LENGTH:,}", bootstyle=style)

    def _private_to_selected(self, _event: tkinter.Event) -> None:
        selection = self.user_list.curselection()
        # The name itself, not the row's text (which may have U+FFFD for an emoji).
        name = self._users[selection[0]] if selection else None
        if name is not None and name != self.own_name:
            self.start_private(name)

    def _open_link(self, _event: tkinter.Event) -> None:
        found = self.transcript.tag_prevrange("link", "current + 1c")
        if not found:
            return  # the link was trimmed away with old lines
        start, end = found
        target = fmt.link_target(self._emoji.get(start, end))
        try:
            opened = webbrowser.open(target)
        except webbrowser.Error:
            opened = False
        if not opened:  # no browser here: say so, and leave the address to paste
            self.clipboard_clear()
            self.clipboard_append(target)
            self.add_notice(
                f"No web browser could be opened for {target}. "
                "The address is copied: paste it into a browser.",
                "error",
            )
            self.end_batch()

    def _key_in_transcript(self, event: tkinter.Event) -> str | None:
        """Typing goes to the input box, wherever the focus was."""
        modifiers = int(event.state) & (CONTROL_MASK | ALT_MASK)
        if event.keysym in ("Return", "KP_Enter"):
            self.input.focus_set()
            return "break"
        if event.char and event.char.isprintable() and not modifiers:
            self.input.focus_set()
            self.input.insert("insert", event.char)
            self.input.see("insert")
            return "break"
        if event.keysym in SCROLL_KEYS:
            self._person_scrolled(event)
        return None  # Ctrl+C and the like keep working in the transcript

    def _paste_in_transcript(self, _event: tkinter.Event) -> str:
        self.input.focus_set()
        self.input.event_generate("<<Paste>>")
        return "break"

    def _person_scrolled(self, event: tkinter.Event | None = None) -> None:
        """The person scrolls (the Text's own binding moves the view next). Up,
        they leave the end at once: the pump's next batch, which may come
        before the view has moved, must not take them back down."""
        upward = event is not None and _upward(event)
        if upward:
            self._following = False
        self.after_idle(self._after_scroll, upward)

    def _after_scroll(self, upward: bool) -> None:
        self._update_following()
        if upward:  # up at the top, even with nothing to scroll: the page before
            self._check_top()

    def _scroll_by_bar(self, *args: str) -> None:
        self.transcript.yview(*args)
        self._update_following()
        self._check_top()

    def _update_following(self) -> None:
        if not self.transcript.winfo_exists():
            return
        self._following = self.transcript.yview()[1] >= 1.0
        if self._following:
            self._clear_unseen()

    def _view_moved(self, first: str, last: str) -> None:
        """The transcript's view changed: the scrollbar shows only if there is more."""
        bar = self._bar
        bar.set(first, last)
        if float(first) <= 0.0 and float(last) >= 1.0:
            bar.grid_remove()
        elif not bar.winfo_manager():
            bar.grid()
        if float(last) >= 1.0:
            self._following = True
            self._clear_unseen()
            self._on_end_reached()

    @property
    def at_end(self) -> bool:
        """Whether the person reads the end (the newest line is in view)."""
        return self._following

    def scroll_to_end(self) -> None:
        """The new-messages button: back to the newest line, following again."""
        self._following = True
        self.transcript.see("end")
        self._clear_unseen()

    def _keep_end(self) -> None:
        if self._following:
            self.transcript.see("end")

    def _clear_unseen(self) -> None:
        self._unseen = 0
        if self.new_messages_button.winfo_manager():
            self.new_messages_button.place_forget()

    def _link_cursor(self, cursor: str) -> None:
        self.transcript.configure(cursor=cursor)

    # -- the transcript -------------------------------------------------------

    def end_batch(self) -> None:
        """After adding lines: follow them, unless the person scrolled up to read;
        then the new-messages button counts them."""
        lines = int(self.transcript.index("end-1c").split(".")[0])
        if lines > MAX_LINES:
            cut = f"{lines - MAX_LINES + 1}.0"
            self._forget_files_in("1.0", cut)
            self._edit(lambda: self.transcript.delete("1.0", cut))
            if self._room_open and self.transcript.compare(ROOM_TOP, "==", "1.0"):
                self._paging = "off"  # the oldest lines shown are gone: no page fits above
        if self._following:
            self.transcript.see("end")
        elif self._unseen:
            plural = "message" if self._unseen == 1 else "messages"
            self.new_messages_button.configure(text=f"{self._unseen:,} new {plural} ↓")
            if not self.new_messages_button.winfo_manager():
                self.new_messages_button.place(relx=0.5, rely=1.0, y=-12, anchor="s")

    def add_message(self, message: ChatMessage) -> bool:
        """Show a chat message; returns whether it mentions the user."""
        self._mark_day(message.ts)
        if self._mark_appended and self._unread(message):
            self._append(*self._divider_line(), counted=False)
            self._mark_appended = False
            self._group = None  # the first unread shows its name
        plain = message.to is None and not message.action
        grouped = (
            plain
            and self._group is not None
            and self._group[0] == message.sender
            and 0 <= message.ts - self._group[1] <= GROUP_SECONDS
        )
        parts, line_tags, mention = self._message_line(message, grouped)
        self._append(parts, line_tags)
        if message.file is not None:
            file = message.file
            self._edit(lambda: self._attachment_line(file, line_tags, "end"))
        self._group = (message.sender, message.ts) if plain else None
        self._note_id(message)
        return mention

    def _message_line(
        self, message: ChatMessage, grouped: bool
    ) -> tuple[list[tuple[str, tuple[str, ...]]], tuple[str, ...], bool]:
        """A message's (piece, tags) parts, the tags of its line, whether it mentions the user."""
        own = message.sender == self.own_name
        mention = not own and fmt.mentions(message.text, self.own_name)
        # A run of one person's messages shows the time and name once: on the
        # later lines they are elided (still there to copy), the text indented.
        head = ("elide", "grouped") if grouped else ("head",)
        base: tuple[str, ...] = ("msg", "mention") if mention else ("msg",)  # time included
        parts: list[tuple[str, tuple[str, ...]]] = [
            (f"{fmt.clock(message.ts)}  ", (*base, "time", *head))
        ]
        name_tag = "own" if own else f"name-{fmt.name_slot(message.sender)}"
        sender_tags = (*base, "sender", name_tag)
        if self._lookalikes.is_marked(message.sender):  # as in the online list
            parts.append((f"{LOOKALIKE_MARK} ", (*base, "lookalike", *head)))
        if message.to is not None:
            arrow = f"{message.sender} → {message.to}"
            parts.append((f"{arrow} (private): ", (*base, "private", "sender-private")))
            base = (*base, "private")
        elif message.action:
            parts.append((f"* {message.sender} ", (*sender_tags, "action")))
            base = (*base, "action")
        else:
            parts.append((f"{message.sender}: ", (*sender_tags, *head)))
        if grouped:
            base = (*base, "grouped")
        first, *further = fmt.one_kind_of_newline(message.text).split("\n")
        for number, line in enumerate([first, *further]):
            tags = (*base, "cont") if number else base
            if number:
                parts.append(("\n", tags))
            for piece, is_link in fmt.split_links(line):
                parts.append((piece, (*tags, "link") if is_link else tags))
        line_tags = (*base, "cont") if further else base
        if grouped and message.file is not None and not message.text:
            line_tags = (*line_tags, "elide")  # nothing to show but the file, on the next line
        return parts, line_tags, mention

    def add_notice(self, text: str, kind: str = "system", ts: float | None = None) -> None:
        """A line from the app itself, with its time (``ts``, default now): ``system``,
        ``error``, ``motd``, or ``help`` (lines of ``command<TAB>what it does``, in
        two columns, without a time: it is no event)."""
        self._group = None
        if kind == "help":
            self._help_text = text
            self._layout_help()
            self._append([(text, (kind, "notice"))], (kind, "notice"))
            return
        when = time.time() if ts is None else ts
        self._mark_day(when)
        stamp = (f"{fmt.clock(when)}  ", ("notice", "time"))
        self._append([stamp, (text, (kind, "notice"))], (kind, "notice"))

    def add_server_notice(self, text: str, by: str | None, ts: float) -> None:
        """A server notice (``notice``: an operator's, or the console's when ``by``
        is ``None``). It is drawn as nothing else is, a band of its own colour
        with a bar and the server's icon, none of which a message can carry,
        so no one can type a line that passes for one."""
        self._group = None
        self._mark_day(ts)
        who = f"Server notice from {by}" if by else "Server notice"
        first, *further = fmt.one_kind_of_newline(text).split("\n")
        tags = ("server-notice",)
        parts: list[tuple[str, tuple[str, ...]]] = [
            (f"{fmt.clock(ts)}  ", (*tags, "time")),
            (f"{who}: ", (*tags, "server-notice-head")),
            (first, tags),
        ]
        for line in further:
            parts += [("\n", tags), (line, (*tags, "server-notice-cont"))]
        if not self._following:
            self._unseen += 1
        icon = self._server_icon()

        def insert() -> None:
            name = self.transcript.image_create("end", image=icon, padx=4)
            self.transcript.tag_add("server-notice", name)
            self._emoji.insert_line([*parts, ("\n", tags)])

        self._edit(insert)

    def add_report(self, lines: list[str], ts: float | None = None) -> None:
        """A notice of several lines (a ban list, a whois): the first with the
        time, the others indented under it, none at the left edge."""
        first, *further = lines
        self.add_notice(first, "moderation", ts)
        for line in further:
            self._append([(line, ("moderation", "notice", "cont"))], ("moderation", "notice"))

    def _server_icon(self) -> str:
        size = max(12, self.font.metrics("linespace") - 4)
        icon: str = ttk.Icon("megaphone-fill", size=size, color=self._server_notice_colors[1])
        return icon

    @property
    def _server_notice_colors(self) -> tuple[str, str]:
        """The band and bar of a server notice in this theme."""
        dark = _style().theme_use().endswith("dark")
        band = SERVER_NOTICE_DARK if dark else SERVER_NOTICE_LIGHT
        return band, fmt.readable(_style().colors.info, band)

    def _mark_day(self, ts: float) -> None:
        """A separator line where the day changes (and first, unless that is today)."""
        day = datetime.date.fromtimestamp(ts)
        if self._room_open and self._top_day is None:
            self._top_day = day
        if day == self._day:
            return
        if self._day is not None or day != datetime.date.today():
            self._group = None
            self._append([(fmt.day_label(ts), ("day",))], ("day",), counted=False)
        self._day = day

    def _append(
        self,
        parts: list[tuple[str, tuple[str, ...]]],
        line_tags: tuple[str, ...],
        *,
        counted: bool = True,
    ) -> None:
        if counted and not self._following:
            self._unseen += 1

        def insert() -> None:
            # Each line ends with its own newline, carrying the line's tags,
            # so that a highlight spans the full width of that line only.
            self._emoji.insert_line([*parts, ("\n", line_tags)])

        self._edit(insert)

    def _edit(self, change: Callable[[], None]) -> None:
        self.transcript.configure(state="normal")
        try:
            change()
        finally:
            self.transcript.configure(state="disabled")

    def clear_transcript(self) -> None:
        self._forget_files_in("1.0", "end")
        self._edit(lambda: self.transcript.delete("1.0", "end"))
        self._day = None
        self._group = None
        self._room_open = False
        self._paging = "off"

    # -- the room's history: older pages, "new since you left" ----------------------

    def start_room(self, unread_after: int | None) -> None:
        """The lines from here on are a room's: older pages go above them, and
        the divider above the first message of others after id ``unread_after``
        (``None``: no divider)."""
        text = self.transcript
        text.mark_set(ROOM_TOP, "end-1c")
        text.mark_gravity(ROOM_TOP, "left")  # what goes in at it stays below it
        self._room_open = True
        self._paging = "off"
        self._oldest_id = None
        self._top_day = None
        self._unread_after = unread_after
        self._mark_appended = unread_after is not None

    def replay_done(self) -> None:
        """The welcome's replay is in: later messages are not "since you left"."""
        self._mark_appended = False

    def set_paging(self, enabled: bool) -> None:
        """Whether older pages may be asked for (the server offers them); a
        page asked for on a connection that has ended will not come."""
        if not enabled:
            self._paging = "off"
        elif self._room_open and self._paging in ("off", "loading"):
            self._paging = "ready"

    @property
    def paging(self) -> str:
        """``off``, ``ready``, ``loading`` (a page asked for) or ``ended``."""
        return self._paging

    @property
    def oldest_id(self) -> int | None:
        """The oldest message id the room shows (``None``: none yet)."""
        return self._oldest_id

    def page_failed(self) -> None:
        """The page asked for will not come (an error, a page that broke the
        rules): no more pages on this connection."""
        if self._paging == "loading":
            self._paging = "off"

    def _note_id(self, message: ChatMessage) -> None:
        if self._room_open and (self._oldest_id is None or message.id < self._oldest_id):
            self._oldest_id = message.id

    def _unread(self, message: ChatMessage) -> bool:
        """Whether ``message`` is one of those "new since you left"."""
        after = self._unread_after
        return (
            after is not None
            and message.id > after
            and message.to is None
            and message.sender != self.own_name
        )

    def _divider_line(self) -> tuple[list[tuple[str, tuple[str, ...]]], tuple[str, ...]]:
        rule = "\u2500" * 8
        return [(f"{rule}  {DIVIDER_TEXT}  {rule}", ("divider",))], ("divider",)

    def _check_top(self) -> None:
        if self.transcript.winfo_exists() and self.transcript.yview()[0] <= 0.0:
            self.ask_older()

    def ask_older(self) -> bool:
        """Ask for an older page now, unless one is on its way or there is none."""
        if self._paging != "ready" or self.on_reach_top is None:
            return False
        self._paging = "loading"
        if not self.on_reach_top():
            self._paging = "ready"
        return self._paging == "loading"

    def scroll_to_divider(self) -> None:
        """Show "New since you left" at the top of the view (unless all that
        follows it fits on the screen: then the end stays in view)."""
        found = self.transcript.tag_ranges("divider")
        if not found:
            return
        self.transcript.yview(found[0])
        self._following = self.transcript.yview()[1] >= 1.0

    def insert_page(self, messages: Sequence[ChatMessage], *, more: bool) -> int:
        """Put an older page (oldest first) above the room's lines, the view kept
        where it is; ``more``: older ones remain. Messages not older than those
        shown are left out. Returns how many of them are "new since you left"."""
        if not self._room_open:
            return 0
        oldest = self._oldest_id
        page = [m for m in messages if oldest is None or m.id < oldest]
        fits = MAX_LINES - int(self.transcript.index("end-1c").split(".")[0]) - 3
        page, cut = _fitting(page, fits)
        lines: list[_Line] = []
        unread = sum(map(self._unread, page))
        divided = False
        day: datetime.date | None = None
        group: tuple[str, float] | None = None
        for message in page:
            when = datetime.date.fromtimestamp(message.ts)
            if when != day and (day is not None or when != datetime.date.today() or cut):
                lines.append(([(fmt.day_label(message.ts), ("day",))], ("day",)))
                group = None
            day = when
            if not divided and self._unread(message):
                lines.append(self._divider_line())
                divided, group = True, None
            plain = message.to is None and not message.action
            grouped = (
                plain
                and group is not None
                and group[0] == message.sender
                and 0 <= message.ts - group[1] <= GROUP_SECONDS
            )
            parts, line_tags, _mention = self._message_line(message, grouped)
            lines.append((parts, line_tags))
            if message.file is not None:
                lines.append((message.file, line_tags))
            group = (message.sender, message.ts) if plain else None
        text = self.transcript
        below = self._top_day
        labelled = "day" in text.tag_names(ROOM_TOP)

        def insert() -> None:
            if divided:  # the unread part begins further up now
                for start, end in _pairs(text.tag_ranges("divider")):
                    text.delete(start, end)
            if day is not None and below is not None:
                if labelled and day == below:
                    text.delete(ROOM_TOP, f"{ROOM_TOP} lineend + 1c")  # mid-day now
                elif not labelled and day != below:
                    lines.append(([(_day_label(below), ("day",))], ("day",)))
            if not more or cut:
                words = NOT_KEPT_TEXT if cut else BEGINNING_TEXT
                lines.insert(0, ([(words, ("room-start",))], ("room-start",)))
            self._insert_lines(lines)

        self._keep_place(insert)
        if page:
            self._oldest_id = page[0].id
            first_day = datetime.date.fromtimestamp(page[0].ts)
            if self._top_day is None:
                self._day = day  # the next line appended is below this page
            self._top_day = first_day
        # An empty page that says "more" (a server busy or failing) leaves the
        # next gesture at the top free to ask again.
        self._paging = "ready" if more and not cut else "ended"
        return unread

    def _insert_lines(self, lines: list[_Line]) -> None:
        """Put ``lines`` in at ``ROOM_TOP``, in their order, above what is there."""
        text = self.transcript
        text.mark_set(PAGE_AT, ROOM_TOP)
        text.mark_gravity(PAGE_AT, "right")  # each piece goes in after the last
        for parts, line_tags in lines:
            if isinstance(parts, FileInfo):
                self._attachment_line(parts, line_tags, PAGE_AT)
            else:
                self._emoji.insert_line([*parts, ("\n", line_tags)], at=PAGE_AT)
        text.mark_unset(PAGE_AT)

    def _keep_place(self, change: Callable[[], None]) -> None:
        """Make ``change`` above the view with the line at its top staying at the
        same pixel (or, following the end, with the end still in view)."""
        text = self.transcript
        top = text.index("@0,0")
        if text.compare(top, "<", ROOM_TOP) and text.dlineinfo(ROOM_TOP) is not None:
            top = ROOM_TOP  # the lines above the room's (a join notice) make way
        self._keep_line(top, change)

    def _keep_line(self, top: str, change: Callable[[], None]) -> None:
        """Make ``change`` with the line at ``top`` staying at the same pixel (or,
        following the end, with the end still in view)."""
        text = self.transcript
        if self._following:
            self._edit(change)
            text.see("end")
            return
        text.mark_set(ANCHOR, top)  # of right gravity: what goes in before it pushes it
        before = text.dlineinfo(ANCHOR)
        self._edit(change)
        if before is not None:
            text.yview(ANCHOR)
            after = text.dlineinfo(ANCHOR)
            if after is not None and after[1] != before[1]:
                text.yview_scroll(after[1] - before[1], "pixels")
        text.mark_unset(ANCHOR)

    def transcript_text(self) -> str:
        """Everything shown, one line per message or notice (and per file: its
        card or picture as "[file: name, size]", "[image: name, size]")."""
        pieces: list[str] = []
        text = self.transcript
        for kind, value, index in text.dump("1.0", "end-1c", text=True, image=True, window=True):
            if kind == "text":
                pieces.append(value)
            elif kind == "window":
                card = self._card_at(value)
                pieces.append(card.text if card is not None else "")
            else:
                file = self._file_at(index)
                if file is not None:
                    pieces.append(_picture_words(file))
                else:
                    pieces.append(emoji_images.sequence_of(value) or "")
        return "".join(pieces).removesuffix("\n")

    # -- files: attach, paste, drop; cards and pictures; transfers ----------------
    #
    # A message's file goes on a line of its own under its text, tagged
    # ``attached-N`` (N counts every file shown): a card (app/file_card.py,
    # embedded in the Text), or, for a picture that ``FileActions.shown``
    # says will come, a line of words that ``show_image`` replaces with the
    # thumbnail (or ``image_unavailable`` with a card). Past ``MAX_CARDS``
    # and ``MAX_THUMBNAILS`` the oldest turn back into words that still
    # answer a click. Lines trimmed away take their files with them.

    def attach_file(self) -> None:
        """The paperclip and Ctrl+O: choose files, then send them."""
        if self._files is None:
            return
        chosen = filedialog.askopenfilenames(parent=self.winfo_toplevel(), title="Send files")
        if not chosen:
            return  # cancelled ("" or an empty tuple, by platform)
        for name in self.tk.splitlist(chosen) if isinstance(chosen, str) else chosen:
            self._files.attach(Path(name))

    def _attach_key(self, _event: tkinter.Event) -> str:
        self.attach_file()
        return "break"

    def _paste_in_input(self, _event: tkinter.Event) -> str | None:
        """Ctrl+V: text as ever; an image (with no text) is sent as a file."""
        if self._files is None:
            return None
        try:
            has_text = bool(self.clipboard_get())
        except tkinter.TclError:  # no text on the clipboard (perhaps a picture)
            has_text = False
        if not has_text and self._files.paste_image():
            return "break"
        return None

    def _enable_drop(self) -> None:
        """Files dropped anywhere on the view are sent. tkdnd (the Tk extension,
        loaded by tkinterdnd2) does the platform's part; without it there is
        no drop, and nothing else changes."""
        try:
            from tkinterdnd2 import TkinterDnD  # noqa: PLC0415 - optional

            TkinterDnD._require(self)
            command = self.register(self._dropped)
            self.tk.call("tkdnd::drop_target", "register", str(self), "DND_Files")
            self.tk.call("bind", str(self), "<<Drop:DND_Files>>", f"{command} %D")
        except Exception as exc:  # the package, its library or Tcl said no
            logger.info("No drag and drop of files: %s", exc)
            return
        self.drop_enabled = True

    def _dropped(self, data: str) -> str:
        """tkdnd's drop: ``data`` is a Tcl list of paths. Returns the action taken."""
        if self._files is None:
            return "refuse_drop"
        try:
            paths = [Path(each) for each in self.tk.splitlist(data)]
        except tkinter.TclError:
            return "refuse_drop"
        for path in paths:
            self._files.attach(path)
        return "copy"

    def _attachment_line(self, file: FileInfo, line_tags: tuple[str, ...], at: str) -> None:
        """(In an edit.) ``file`` on a line of its own at ``at`` (the end, or a
        mark of right gravity), indented under its message's text."""
        self._file_count += 1
        tag = f"{FILE_TAG}{self._file_count}"
        self._shown_files[tag] = file
        tags = (*(each for each in line_tags if each != "elide"), "cont", "file")
        text = self.transcript
        if self._files is not None and self._files.shown(file):
            self._waiting.setdefault(file.id, []).append(tag)
            text.insert(at, f"{_picture_words(file)} …", (*tags, tag, "picture-link"))
        else:
            self._insert_card(file, at, (*tags, tag))
        text.insert(at, "\n", tags)

    def _insert_card(self, file: FileInfo, at: str, tags: tuple[str, ...], note: str = "") -> None:
        """(In an edit.) ``file``'s card at ``at``."""
        card = FileCard(
            self.transcript, file, on_save=self._save_clicked, on_open=self._open_clicked, note=note
        )
        card.name_label.configure(font=self.font)
        self.transcript.window_create(at, window=card, padx=2, pady=3)
        for each in tags:
            self.transcript.tag_add(each, str(card))
        self._cards.append(card)
        while len(self._cards) > MAX_CARDS:
            self._card_to_words(self._cards.popleft())

    def _card_to_words(self, card: FileCard) -> None:
        """(In an edit.) An old card becomes words that still offer Save… on a click."""
        try:
            index = self.transcript.index(str(card))
        except tkinter.TclError:
            return  # gone with old lines
        tags = self.transcript.tag_names(index)
        self.transcript.delete(index)
        self.transcript.insert(index, card.text, (*tags, "file-link"))
        self._as_words.update(tag for tag in tags if tag.startswith(FILE_TAG))

    def show_image(self, file_id: str, picture: Image.Image) -> None:
        """The picture of the file ``file_id`` has come: its thumbnail replaces
        the words that stood for it, wherever it is shown."""
        tags = self._waiting.pop(file_id, [])
        text = self.transcript
        if not tags:
            return
        photo = ImageTk.PhotoImage(picture, master=text)

        def change() -> None:
            for tag in tags:
                found = text.tag_ranges(tag)
                if not found:
                    continue
                start = str(found[0])
                keep = text.tag_names(start)
                text.delete(start, found[-1])
                name = text.image_create(start, image=photo, name=f"picture-{tag}", pady=3)
                for each in keep:
                    text.tag_add(each, name)
                self._photos[tag] = photo
            while len(self._photos) > MAX_THUMBNAILS:
                self._picture_to_words(next(iter(self._photos)))

        self._change_in_place(change)

    def _picture_to_words(self, tag: str) -> None:
        """(In an edit.) An old thumbnail becomes words; a click still opens it."""
        self._photos.pop(tag, None)
        file = self._shown_files.get(tag)
        try:
            index = self.transcript.index(f"picture-{tag}")
        except tkinter.TclError:
            return
        tags = self.transcript.tag_names(index)
        self.transcript.delete(index)
        if file is not None:
            self.transcript.insert(index, _picture_words(file), tags)
            self._as_words.add(tag)

    def image_unavailable(self, file_id: str, reason: str) -> None:
        """The picture of ``file_id`` will not come (too big, unreadable, the
        download failed): a card, saying why, stands where it was to be."""
        tags = self._waiting.pop(file_id, [])
        text = self.transcript

        def change() -> None:
            for tag in tags:
                found = text.tag_ranges(tag)
                file = self._shown_files.get(tag)
                if not found or file is None:
                    continue
                start = str(found[0])
                keep = tuple(t for t in text.tag_names(start) if t != "picture-link")
                text.delete(start, found[-1])
                text.mark_set(PAGE_AT, start)
                text.mark_gravity(PAGE_AT, "right")
                self._insert_card(file, PAGE_AT, keep, note=reason)
                text.mark_unset(PAGE_AT)

        if tags:
            self._change_in_place(change)

    def _change_in_place(self, change: Callable[[], None]) -> None:
        """Make ``change`` (a line growing or shrinking) keeping the end in view
        when following, else the line at the top of the view where it is."""
        self._keep_line(self.transcript.index("@0,0"), change)

    def _forget_files_in(self, start: str, end: str) -> None:
        """The files shown between ``start`` and ``end`` are about to go."""
        text = self.transcript
        for kind, value, _index in text.dump(start, end, tag=True, window=True):
            if kind == "tagon" and value.startswith(FILE_TAG):
                self._shown_files.pop(value, None)
                self._photos.pop(value, None)
                self._as_words.discard(value)
                text.tag_delete(value)
                for tags in self._waiting.values():
                    if value in tags:
                        tags.remove(value)
            elif kind == "window":
                self._cards = deque(card for card in self._cards if str(card) != value)
        for file_id in [key for key, tags in self._waiting.items() if not tags]:
            del self._waiting[file_id]

    def _file_at(self, index: str) -> FileInfo | None:
        for tag in self.transcript.tag_names(index):
            if tag.startswith(FILE_TAG):
                return self._shown_files.get(tag)
        return None

    def _card_at(self, name: str) -> FileCard | None:
        return next((card for card in self._cards if str(card) == name), None)

    def _picture_clicked(self, _event: tkinter.Event) -> None:
        file = self._file_at("current")
        if file is not None and self._files is not None:
            self._files.open_image(file)

    def _file_words_clicked(self, _event: tkinter.Event) -> None:
        file = self._file_at("current")
        if file is not None:
            self._save_clicked(file)

    def _save_clicked(self, file: FileInfo) -> None:
        """Save…: ask where (offering the name made safe), then download there."""
        if self._files is None:
            return
        chosen = filedialog.asksaveasfilename(
            parent=self.winfo_toplevel(), title="Save file", initialfile=safe_file_name(file.name)
        )
        if chosen:
            self._files.save(file, Path(chosen))

    def _open_clicked(self, file: FileInfo) -> None:
        """Open: a file that could run a program is asked about first."""
        if self._files is None:
            return
        if looks_executable(file.name) and not confirm(
            self,
            "Open a program?",
            f"{short_name(file.name)} could be a program: opening it may run it, "
            "with your rights on this computer. Open it only if you trust its sender.",
        ):
            return
        self._files.open(file)

    @property
    def files_shown(self) -> list[tuple[str, FileInfo]]:
        """Each file in the transcript (in the order they went in), as ``card``, ``picture``,
        ``waiting`` (for its picture) or ``words`` (an old one)."""
        found: list[tuple[str, FileInfo]] = []
        for tag, file in self._shown_files.items():
            if tag in self._photos:
                found.append(("picture", file))
            elif tag in self._as_words:
                found.append(("words", file))
            elif any(tag in tags for tags in self._waiting.values()):
                found.append(("waiting", file))
            else:
                found.append(("card", file))
        return found

    def card_for(self, file_id: str) -> FileCard | None:
        """The newest card shown for ``file_id`` (for tests)."""
        return next((c for c in reversed(self._cards) if c.file.id == file_id), None)

    def transfer_started(self, transfer: int, name: str, size: int, *, upload: bool) -> None:
        """A row for the transfer above the input box: name, progress, Cancel."""
        files = self._files
        row = TransferRow(
            self.transfer_strip,
            name,
            size,
            upload=upload,
            on_cancel=lambda: files.cancel(transfer) if files is not None else None,
        )
        self._transfers[transfer] = row
        self._lay_out_transfers()

    def transfer_progress(self, transfer: int, done: int, size: int) -> None:
        row = self._transfers.get(transfer)
        if row is not None:
            row.progress(done, size)

    def transfer_ended(self, transfer: int) -> None:
        row = self._transfers.pop(transfer, None)
        if row is not None:
            row.destroy()
            self._lay_out_transfers()

    @property
    def transfers(self) -> dict[int, TransferRow]:
        """The transfers shown, by id."""
        return dict(self._transfers)

    def _lay_out_transfers(self) -> None:
        strip = self.transfer_strip
        if not self._transfers:
            strip.grid_remove()
            return
        rows = list(self._transfers.values())
        for row in rows:
            row.pack_forget()
        self._more_label.pack_forget()
        for row in rows[:TRANSFER_ROWS]:
            row.pack(fill="x")
        more = len(rows) - TRANSFER_ROWS
        if more > 0:
            self._more_label.configure(text=f"and {more:,} more")
            self._more_label.pack(fill="x")
        if not strip.winfo_manager():
            strip.grid(row=0, column=0, columnspan=3, sticky="we")

    # -- who is online, status, banner ----------------------------------------

    # The list is sorted as the protocol sorts users (identity, then name),
    # in ``_users`` and row for row in the Listbox, so a join or a leave
    # finds its row by bisection and inserts or deletes that one row: a
    # rebuild per join cost milliseconds in a room of thousands. A row shows
    # the name after its marks (``OP_MARK``, ``LOOKALIKE_MARK``: symbols no
    # name may hold); a mark that changes redraws that one row.

    def set_users(self, users: list[str] | tuple[str, ...], ops: Iterable[str] = ()) -> None:
        """Everyone in the room, and which of them are operators."""
        self._users = sorted(set(users), key=_user_key)
        self._lookalikes.reset(self._users)
        self._ops = set(ops)
        self.user_list.delete(0, "end")
        if self._users:
            self.user_list.insert("end", *map(self._row_text, self._users))
            marked, warning = self._lookalikes.is_marked, self._warning_color
            for row, name in enumerate(self._users):
                if marked(name):
                    self.user_list.itemconfigure(row, foreground=warning)
        own = self._row_of(self.own_name)
        if own is not None:
            self._color_row(own, self._users[own])
        self._count_users()

    @property
    def users(self) -> list[str]:
        """The names in the online list, in its order."""
        return list(self._users)

    @property
    def online_count(self) -> int:
        """How many are in the online list (without copying it)."""
        return len(self._users)

    @property
    def own_name(self) -> str | None:
        """The user's own name, highlighted in the list."""
        return self._own_name

    @own_name.setter
    def own_name(self, name: str | None) -> None:
        old, self._own_name = self._own_name, name
        for each in (old, name):
            row = self._row_of(each)
            if row is not None:
                self._color_row(row, self._users[row])

    def user_joined(self, name: str) -> None:
        row = bisect_left(self._users, _user_key(name), key=_user_key)
        if row < len(self._users) and self._users[row] == name:
            return
        self._users.insert(row, name)
        twin = self._lookalikes.add(name)
        self.user_list.insert(row, self._row_text(name))
        self._color_row(row, name)
        self._redraw(twin)  # it looks like no one else until now
        self._count_users()

    def user_left(self, name: str) -> None:
        row = self._row_of(name)
        if row is not None:
            del self._users[row]
            self.user_list.delete(row)
            self._ops.discard(name)
            self._redraw(self._lookalikes.remove(name))  # it may look like no one now
            self._count_users()

    def user_renamed(self, old: str, new: str) -> None:
        if self._row_of(old) is not None:
            op = old in self._ops
            self.user_left(old)
            if op:  # an operator stays one under a new name
                self._ops.add(new)
            self.user_joined(new)

    def set_op(self, name: str, op: bool) -> None:
        """Mark ``name`` as an operator, or no longer one (``op-changed``)."""
        if op:
            self._ops.add(name)
        else:
            self._ops.discard(name)
        self._redraw(name)

    def is_op(self, name: str) -> bool:
        return name in self._ops

    def lookalike(self, name: str) -> lookalike.Mark | None:
        """Why ``name`` is marked as a look-alike, or ``None`` when it is not."""
        return self._lookalikes.mark(name)

    def user_explanation(self, name: str) -> str:
        """What the marks beside ``name`` in the list mean ("" for none)."""
        said = []
        if name in self._ops:
            said.append(f"{OP_MARK} {name} is an operator: they can remove people from the room.")
        mark = self._lookalikes.mark(name)
        if mark is not None:
            said.append(f"{LOOKALIKE_MARK} {mark.explain(name)}")
        return "\n".join(said)

    def _row_text(self, name: str) -> str:
        marks = (OP_MARK if name in self._ops else "") + (
            LOOKALIKE_MARK if self._lookalikes.is_marked(name) else ""
        )
        shown = fmt.displayable(name, astral_ok=self._astral_ok)
        return f"{marks} {shown}" if marks else shown

    def _redraw(self, name: str | None) -> None:
        """Show ``name``'s row with its marks as they are now."""
        row = self._row_of(name)
        if row is None or name is None:
            return
        text = self._row_text(name)
        if self.user_list.get(row) != text:
            selected = self.user_list.selection_includes(row)
            self.user_list.delete(row)
            self.user_list.insert(row, text)
            if selected:
                self.user_list.selection_set(row)
        self._color_row(row, name)

    def _color_row(self, row: int, name: str) -> None:
        # A look-alike's warning wins over the own name's colour: someone
        # looking like the user is what the user most needs to see.
        if self._lookalikes.is_marked(name):
            color = self._warning_color
        elif name == self._own_name:
            color = self._own_color
        else:
            color = ""
        self.user_list.itemconfigure(row, foreground=color)

    def _row_of(self, name: str | None) -> int | None:
        if name is None:
            return None
        row = bisect_left(self._users, _user_key(name), key=_user_key)
        return row if row < len(self._users) and self._users[row] == name else None

    def _user_hovered(self, event: tkinter.Event) -> None:
        """The pointer is over the online list: explain the marks of the row under it."""
        row = self.user_list.nearest(event.y)
        box = self.user_list.bbox(row) if 0 <= row < len(self._users) else None
        if not box or not box[1] <= event.y < box[1] + box[3]:
            self._user_tip.hide()
            return
        self._user_tip.show(self.user_explanation(self._users[row]), event.x_root, event.y_root)

    def _count_users(self) -> None:
        self.online_label.configure(text=f"Online — {len(self._users)}")

    def set_status(self, text: str) -> None:
        self.status_label.configure(text=text)

    def show_banner(self, text: str, action: Action | None = None) -> None:
        """A line across the top, with ``action``'s button when there is one."""
        self._insecure_bar.grid_remove()  # back when the banner goes
        self._banner_action = action
        self.banner_label.configure(text=text)
        if action is None:
            self.banner_button.grid_remove()
        else:
            self.banner_button.configure(text=action.label)
            self.banner_button.grid()
        self._banner.grid(row=0, column=0, sticky="we")

    def update_banner(self, text: str) -> None:
        """New words for the banner; its button stays as it is (a countdown)."""
        self.banner_label.configure(text=text)

    def hide_banner(self) -> None:
        self._banner_action = None
        self._banner.grid_remove()
        self.show_insecure(self._insecure)

    @property
    def banner_visible(self) -> bool:
        return bool(self._banner.winfo_manager())

    def _banner_clicked(self) -> None:
        if self._banner_action is not None:
            self._banner_action.run()

    # -- encryption: the lock, who is in the room without it ----------------------

    def set_lock(self, secure: bool | None, on_click: Callable[[], None] | None = None) -> None:
        """The lock at the status line's end: ``True`` encrypted, ``False`` not,
        ``None`` not connected (no lock). ``on_click`` shows the details."""
        self._on_lock = on_click
        if secure is None:
            self.lock_button.grid_remove()
            return
        if secure:
            self.lock_button.configure(text="Encrypted", icon="lock-fill", bootstyle="success-link")
        else:
            self.lock_button.configure(
                text="Not encrypted", icon="unlock-fill", bootstyle="danger-link"
            )
        self.lock_button.grid(row=3, column=0, sticky="e", padx=(0, 6))

    @property
    def lock_text(self) -> str:
        """What the lock says ("" when there is none)."""
        return str(self.lock_button.cget("text")) if self.lock_button.winfo_manager() else ""

    def _lock_clicked(self) -> None:
        if self._on_lock is not None:
            self._on_lock()

    def show_insecure(self, names: tuple[str, ...]) -> None:
        """Say who is connected without encryption (nobody: the bar goes)."""
        self._insecure = names
        if not names:
            self._insecure_bar.grid_remove()
            return
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5:,} more" if len(names) > 5 else "")
        self.insecure_label.configure(
            text=f"Not encrypted for everyone: {shown} "
            f"{'is' if len(names) == 1 else 'are'} connected without encryption, so "
            "what is said here can be read on the network."
        )
        if not self.banner_visible:
            self._insecure_bar.grid(row=0, column=0, sticky="we")

    @property
    def insecure_text(self) -> str:
        """The insecure bar's words ("" while it is not shown)."""
        if not self._insecure_bar.winfo_manager():
            return ""
        return str(self.insecure_label.cget("text"))

    # -- search -------------------------------------------------------------------

    def open_search(self) -> SearchPanel:
        """Show the search pane beside the transcript (the chat goes on), its box focused."""
        panel = self.search_panel
        if panel is None:
            panel = self.search_panel = SearchPanel(
                self._middle,
                font=self.font,
                bold_font=self._bold_font,
                on_search=self._on_search,
                on_choose=self._on_choose_result,
                on_close=self.close_search,
                astral_ok=self._astral_ok,
            )
            panel.apply_theme(self._search_colors())
        if str(panel) not in self._middle.panes():
            self._middle.insert(1, panel, weight=3)
        panel.focus_query()
        return panel

    def close_search(self) -> None:
        panel = self.search_panel
        if panel is not None and str(panel) in self._middle.panes():
            self._middle.forget(panel)
        self.focus_input()

    @property
    def search_open(self) -> bool:
        panel = self.search_panel
        return panel is not None and str(panel) in self._middle.panes()

    def _search_colors(self) -> dict[str, str]:
        style = _style()
        colors = style.colors
        dark = style.theme_use().endswith("dark")
        mention = MENTION_DARK if dark else MENTION_LIGHT
        palette = {
            "bg": colors.inputbg,
            "fg": colors.inputfg,
            "selectbg": colors.selectbg,
            "selectfg": colors.selectfg,
            "muted": fmt.readable("#9aa4ae" if dark else "#5c636a", mention),
            "hit": mention,
            "chosen": CHOSEN_DARK if dark else CHOSEN_LIGHT,
        }
        for slot in range(len(fmt.NAME_HUES)):
            palette[f"name-{slot}"] = fmt.name_color(slot, mention)
        return palette

    # -- looks ----------------------------------------------------------------

    def set_font_size(self, size: int) -> None:
        self._size_fonts(size)
        self._emoji.resize(self.font.metrics("linespace"))
        self._set_margins()
        # The text lays its lines out again later; follow once that is done.
        self.after_idle(self._keep_end)

    def _size_fonts(self, size: int) -> None:
        for each in (self.font, self._bold_font, self._italic_font):
            each.configure(size=size)
        self._bold_font.configure(family=self.font.actual("family"))
        self._italic_font.configure(family=self.font.actual("family"))

    def _set_margins(self) -> None:
        """Indents in pixels, from the font: further lines start under the author."""
        indent = self.font.measure("00:00  ")
        text = self.transcript
        text.tag_configure("msg", lmargin2=indent)
        text.tag_configure("cont", lmargin1=indent, lmargin2=indent)
        text.tag_configure("notice", lmargin2=indent)
        text.tag_configure("grouped", lmargin1=indent)
        # A run starts with a gap, its messages a smaller one, a message's own
        # lines none: where one message ends shows without a name.
        text.tag_configure("head", spacing1=indent // 6)
        text.tag_configure("cont", spacing1=0)
        self._layout_help()

    def _layout_help(self) -> None:
        commands = [line.split("\t")[0] for line in self._help_text.splitlines() if "\t" in line]
        if commands:
            stop = max(self.font.measure(each) for each in commands) + self.font.measure("    ")
            self.transcript.tag_configure("help", tabs=(stop,), lmargin2=stop)

    @property
    def _own_color(self) -> str:
        primary: str = _style().colors.primary
        return primary

    def apply_theme(self) -> None:
        """Paint the plain Tk widgets and colour the transcript's tags for the
        current theme (light or dark).

        ttkbootstrap repaints plain Tk widgets on a theme switch, with its own
        borders and padding, but not when they are built, so a window started
        in one theme looked unlike one switched to it. This runs after that
        repaint, at start and on every switch, and sets every option it
        touches: the looks are this method's alone.
        """
        style = _style()
        colors = style.colors
        dark = style.theme_use().endswith("dark")
        # Both text boxes: themed colours, a flat look, the border drawn by
        # the highlight (the input's) or by the ScrolledText around it.
        boxed = {
            "background": colors.inputbg,
            "foreground": colors.inputfg,
            "selectbackground": colors.selectbg,
            "selectforeground": colors.selectfg,
            "insertbackground": colors.inputfg,
            "highlightbackground": colors.border,
            "highlightcolor": colors.primary,
            "insertwidth": 2,
            "relief": "flat",
            "borderwidth": 0,
        }
        text = self.transcript
        text.configure(highlightthickness=0, padx=8, pady=6, **boxed)
        self.input.configure(highlightthickness=1, padx=6, pady=4, **boxed)
        self.user_list.configure(  # no box: the list is part of the side panel
            background=colors.bg,
            foreground=colors.fg,
            selectbackground=colors.selectbg,
            selectforeground=colors.selectfg,
            highlightthickness=0,
            highlightbackground=colors.bg,
            highlightcolor=colors.bg,
            activestyle="none",
            selectborderwidth=0,
            relief="flat",
            borderwidth=0,
        )
        # A mention's line is the hardest background text sits on, so every
        # colour is made to read at 4.5:1 there (and so on the plain lines).
        # Theme colours meant for buttons (info cyan, say) are too faint as
        # text on white; these keep that contrast in either mode.
        mention = MENTION_DARK if dark else MENTION_LIGHT
        muted = fmt.readable("#9aa4ae" if dark else "#5c636a", mention)
        private = fmt.readable("#66d9e8" if dark else "#0b7285", mention)
        motd = fmt.readable("#75b798" if dark else "#146c43", mention)
        text.tag_configure("time", foreground=muted)
        text.tag_configure("sender", font=self._bold_font)
        own = fmt.readable(colors.primary, mention)
        text.tag_configure("own", font=self._bold_font, foreground=own)
        text.tag_configure("action", font=self._italic_font)
        text.tag_configure("private", foreground=private)
        text.tag_configure("sender-private", font=self._bold_font)
        text.tag_configure("system", foreground=muted, font=self._italic_font)
        text.tag_configure("motd", foreground=motd, font=self._italic_font)
        text.tag_configure("error", foreground=fmt.readable(colors.danger, mention))
        text.tag_configure("mention", background=mention)
        text.tag_configure("help", font=self.font, foreground=colors.inputfg)
        for slot in range(len(fmt.NAME_HUES)):
            text.tag_configure(f"name-{slot}", foreground=fmt.name_color(slot, mention))
        text.tag_configure("elide", elide=True)
        text.tag_configure(
            "day", justify="center", foreground=muted, font=self._bold_font, spacing1=8, spacing3=4
        )
        text.tag_configure("link", foreground=own, underline=True)
        text.tag_configure("picture-link", foreground=own)
        text.tag_configure("file-link", foreground=own, underline=True)
        divider = fmt.readable(colors.danger, mention)
        text.tag_configure(
            "divider", justify="center", foreground=divider, font=self._bold_font, spacing1=6
        )
        text.tag_configure(
            "room-start", justify="center", foreground=muted, font=self._italic_font, spacing1=6
        )
        if self.search_panel is not None:
            self.search_panel.apply_theme(self._search_colors())
        self._style_moderation(muted)
        text.tag_raise("link")
        self._set_margins()
        self.set_users(self._users, self._ops)

    def _style_moderation(self, muted: str) -> None:
        """The looks of the operators' lines: a server notice's band and bar, the
        moderation notices, a look-alike's mark."""
        text = self.transcript
        band, bar = self._server_notice_colors
        indent = self.font.measure("00:00  ")
        text.tag_configure(
            "server-notice",
            background=band,
            foreground=fmt.readable(_style().colors.fg, band),
            lmargin1=0,
            lmargin2=indent,
            spacing1=6,
            spacing3=6,
            font=self._bold_font,
        )
        text.tag_configure("server-notice-head", foreground=bar)
        text.tag_configure("server-notice-cont", lmargin1=indent, lmargin2=indent, spacing1=0)
        text.tag_configure("moderation", foreground=muted)
        dark = _style().theme_use().endswith("dark")
        warning = fmt.readable(_style().colors.danger, MENTION_DARK if dark else MENTION_LIGHT)
        text.tag_configure("lookalike", foreground=warning)
        text.tag_raise("server-notice")
        text.tag_raise("server-notice-head")
        text.tag_raise("server-notice-cont")

    @property
    def _warning_color(self) -> str:
        colors = _style().colors
        return fmt.readable(colors.danger, colors.bg)


# A line of a page: its (piece, tags) parts, or a file shown on a line of its
# own; and the tags of the line.
_Line = tuple[list[tuple[str, tuple[str, ...]]] | FileInfo, tuple[str, ...]]


def confirm(parent: tkinter.Misc, title: str, question: str) -> bool:
    """Ask a yes-or-no question in a modal box (tests replace it)."""
    answer = ttk.Messagebox.yesno(question, title, parent=parent, localize=False)
    return answer == "Yes"


def _picture_words(file: FileInfo) -> str:
    return f"[image: {short_name(file.name)}, {human_size(file.size)}]"


class _Tip:
    """A small window of words beside the pointer (an online list row's marks)."""

    def __init__(self, owner: tkinter.Misc) -> None:
        self._owner = owner
        self._window: tkinter.Toplevel | None = None
        self.label: ttk.Label | None = None  # what it says; public for the tests

    def show(self, text: str, x: int, y: int) -> None:
        if not text:
            self.hide()
            return
        if self._window is None:
            self._window = tkinter.Toplevel(self._owner)
            self._window.overrideredirect(True)
            self.label = ttk.Label(self._window, bootstyle="@dark", padding=(8, 4), wraplength=320)
            self.label.pack()
        assert self.label is not None
        if str(self.label.cget("text")) != text:
            self.label.configure(text=text)
        # Beside the pointer, but within the app's window: the list is at its
        # right edge, and a tip running off the screen would be cut.
        top = self._owner.winfo_toplevel()
        right = top.winfo_rootx() + top.winfo_width()
        x = max(top.winfo_rootx(), min(x + 14, right - self.label.winfo_reqwidth()))
        self._window.geometry(f"+{x}+{y + 16}")
        self._window.deiconify()
        self._window.lift()

    def hide(self) -> None:
        if self._window is not None:
            self._window.withdraw()

    @property
    def text(self) -> str:
        """What it shows now ("" when hidden)."""
        if self._window is None or self.label is None or self._window.state() == "withdrawn":
            return ""
        return str(self.label.cget("text"))


def _upward(event: tkinter.Event) -> bool:
    """Whether a wheel turn or a key scrolls towards older lines."""
    if event.keysym in ("Prior", "Up", "Home"):
        return True
    wheel = event.type == tkinter.EventType.MouseWheel
    return event.num == 4 or (wheel and event.delta > 0)


def _fitting(page: list[ChatMessage], lines: int) -> tuple[list[ChatMessage], bool]:
    """The newest of ``page`` that take at most ``lines`` lines (a day line
    each, at worst), and whether any were left out."""
    taken = 0
    for index in range(len(page) - 1, -1, -1):
        taken += 2 + fmt.one_kind_of_newline(page[index].text).count("\n")
        taken += page[index].file is not None
        if taken > lines:
            return page[index + 1 :], True
    return page, False


def _day_label(day: datetime.date) -> str:
    noon = datetime.datetime.combine(day, datetime.time(12)).timestamp()
    return fmt.day_label(noon)


def _pairs(ranges: tuple[object, ...]) -> list[tuple[str, str]]:
    """A Text's tag ranges (start, end, start, end...) as pairs, last first, so
    that deleting one leaves the others where they are."""
    found = [(str(ranges[i]), str(ranges[i + 1])) for i in range(0, len(ranges) - 1, 2)]
    return found[::-1]


def _user_key(name: str) -> tuple[str, str]:
    """The order of every user list (``protocol.sort_names``): identity, then name."""
    return (name_identity(name), name)


def _style() -> ttk.Style:
    """The app's one ttkbootstrap style, which knows the theme's colours."""
    style: ttk.Style = ttk.Style.get_instance()
    return style
