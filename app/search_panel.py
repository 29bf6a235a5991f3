"""The search box over the room's whole history (Ctrl+F), beside the transcript.

How this works: ``SearchPanel`` is a pane of the chat window, never a modal
dialog, so the chat goes on while it is open. Enter sends the query through
``on_search(query, before)``; the app asks the server and hands the answer
back to ``show_results`` (newest first; "More results" asks again with
``before`` the oldest result's id) or ``show_error``. A click on a result
(or Enter on the one chosen with the arrow keys) calls ``on_choose``, and
``show_context`` then shows the messages around it in the panel's own
context view, the result highlighted: the live transcript is never touched,
so reading an old conversation cannot lose one's place in the new one.
Escape closes the panel.

Each result shows its sender, day and time, and its text with the query's
words highlighted. A word is what the server says it is (PROTOCOL.md: a
run of letters and numbers, case- and accent-insensitive): ``fold`` mirrors
that rule here, as the client may import nothing of the server but its
protocol. A long text is shown as an excerpt around its first hit.
Everything here runs on the Tk thread.
"""

from __future__ import annotations

import datetime
import re
import tkinter
import tkinter.font
import unicodedata
from collections.abc import Callable, Iterable

import ttkbootstrap as ttk

from app import text as fmt
from server.protocol import ChatMessage

MAX_QUERY = 200  # characters of a query: a search is a few words
MAX_QUERY_WORDS = 16  # different words a server searches for at most (its rule)
EXCERPT = 400  # characters of a result's text shown at most, around the first hit
EXCERPT_BEFORE = 80  # of them, before the first hit
CONTEXT_ABOVE = 4  # lines shown above the chosen result in its conversation
# A run of letters and numbers, not the underscore \w adds to them.
_WORD = re.compile(r"[^\W_]+")
# In the shown text: letters and numbers with the combining marks between them
# (decomposed accents), so that "cre\u0300me" is one word, as it is once folded.
_SHOWN_WORD = re.compile(r"(?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff])+")


def fold(text: str) -> str:
    """``text`` without case or accents, as the server compares words: NFKD,
    case-folded, NFKD again, combining marks dropped."""
    if text.isascii():
        return text.lower()
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(char for char in folded if not unicodedata.category(char).startswith("M"))


def query_words(query: str) -> frozenset[str]:
    """The folded words of ``query`` (empty: it holds none, and the server
    would refuse it as ``bad-field``)."""
    return frozenset(_WORD.findall(fold(query)))


def hits(text: str, words: frozenset[str]) -> list[tuple[int, int]]:
    """Where ``text`` holds one of ``words`` (folded): (start, end) offsets."""
    if not words:
        return []
    found = []
    for match in _SHOWN_WORD.finditer(text):
        if any(word in words for word in _WORD.findall(fold(match.group()))):
            found.append(match.span())
    return found


def excerpt(text: str, words: frozenset[str]) -> str:
    """At most ``EXCERPT`` characters of ``text`` on one line, from a little
    before its first hit."""
    text = fmt.shown(text)
    if len(text) <= EXCERPT:
        return text
    spans = hits(text, words)
    start = max(0, spans[0][0] - EXCERPT_BEFORE) if spans else 0
    cut = text[start : start + EXCERPT - 2]
    return ("\u2026" if start else "") + cut + "\u2026"


def _when(ts: float) -> str:
    """A result's day and time: ``14:05`` today, ``3 Dec 14:05`` this year, else with the year."""
    day = datetime.date.fromtimestamp(ts)
    today = datetime.date.today()
    if day == today:
        return fmt.clock(ts)
    if day.year == today.year:
        return f"{day.day} {day.strftime('%b')} {fmt.clock(ts)}"
    return f"{day.day} {day.strftime('%b %Y')} {fmt.clock(ts)}"


class SearchPanel(ttk.Frame):
    """The search pane. ``on_search(query, before)`` asks the server (``before``
    ``None``: a new search); ``on_choose(message)`` asks for a result's
    context; ``on_close()`` after Escape or the close button."""

    def __init__(
        self,
        master: tkinter.Misc,
        *,
        font: tkinter.font.Font,
        bold_font: tkinter.font.Font,
        on_search: Callable[[str, int | None], None],
        on_choose: Callable[[ChatMessage], None],
        on_close: Callable[[], None],
        astral_ok: bool = True,
    ) -> None:
        super().__init__(master, padding=(10, 0, 0, 0))
        self.on_search = on_search
        self.on_choose = on_choose
        self.on_close = on_close
        self._astral_ok = astral_ok
        self._query = ""  # of the results shown
        self._words: frozenset[str] = frozenset()
        self._results: list[ChatMessage] = []  # shown, newest first
        self._chosen: int | None = None  # row of the result chosen with the keys
        self._waiting = False  # a search is on its way: Enter waits for it
        self.columnconfigure(0, weight=1)
        self.rowconfigure(2, weight=1)

        top = ttk.Frame(self)
        top.grid(row=0, column=0, sticky="we")
        top.columnconfigure(0, weight=1)
        self.query_var = ttk.StringVar()
        self.query_entry = ttk.Entry(top, textvariable=self.query_var, font=font)
        self.query_entry.grid(row=0, column=0, sticky="we")
        self.close_button = ttk.Button(
            top, text="\u2715", bootstyle="secondary-link", padding=(6, 0), command=self.close
        )
        self.close_button.grid(row=0, column=1)
        self.status_label = ttk.Label(self, text="", bootstyle="secondary", wraplength=260)
        self.status_label.grid(row=1, column=0, sticky="we", pady=(4, 4))
        self.results = self._text_box(font)
        self.results.grid(row=2, column=0, sticky="nsew")
        self.more_button = ttk.Button(
            self, text="More results", bootstyle="secondary-outline", command=self._more
        )
        self.back_button = ttk.Button(
            self, text="\u2190 Back to the results", bootstyle="link", command=self.show_list
        )
        self.context = self._text_box(font)
        self._bold = bold_font
        self.bind("<Configure>", self._resized, add="+")

        for widget in (self.query_entry, self.results, self.context):
            widget.bind("<Escape>", self._escape)
        self.query_entry.bind("<Return>", self._submit)
        self.query_entry.bind("<KP_Enter>", self._submit)
        self.query_entry.bind("<Down>", lambda _e: self._move(+1))
        self.query_entry.bind("<Up>", lambda _e: self._move(-1))
        self.results.tag_bind("result", "<Button-1>", self._clicked)
        self.results.tag_bind(
            "result", "<Enter>", lambda _e: self.results.configure(cursor="hand2")
        )
        self.results.tag_bind(
            "result", "<Leave>", lambda _e: self.results.configure(cursor="arrow")
        )

    def _text_box(self, font: tkinter.font.Font) -> tkinter.Text:
        box = tkinter.Text(
            self, wrap="word", font=font, state="disabled", cursor="arrow", width=34, height=10
        )
        box.bind("<1>", lambda _e: box.focus_set(), add="+")
        return box

    def _resized(self, event: tkinter.Event) -> None:
        self.status_label.configure(wraplength=max(80, event.width - 16))

    # -- what the person does -------------------------------------------------------

    def focus_query(self) -> None:
        self.query_entry.focus_set()
        self.query_entry.select_range(0, "end")

    def close(self) -> None:
        self.on_close()

    def _escape(self, _event: tkinter.Event) -> str:
        self.close()
        return "break"

    def _submit(self, _event: tkinter.Event | None = None) -> str:
        if self._chosen is not None and self.query_var.get() == self._query:
            self.on_choose(self._results[self._chosen])
            return "break"
        query = self.query_var.get().strip()[:MAX_QUERY]
        wanted = query_words(query)
        if not wanted:
            self.show_error("Type a word to search for: letters or numbers.")
            return "break"
        if len(wanted) > MAX_QUERY_WORDS:
            self.show_error(f"Search for at most {MAX_QUERY_WORDS} different words.")
            return "break"
        self._waiting = True
        self.status_label.configure(text="Searching…", bootstyle="secondary")
        self.on_search(query, None)
        return "break"

    def _more(self) -> None:
        if self._results and not self._waiting:
            self._waiting = True
            self.more_button.configure(state="disabled")
            self.on_search(self._query, self._results[-1].id)

    def _clicked(self, _event: tkinter.Event) -> None:
        row = self._row_at("current")
        if row is not None:
            self._choose_row(row)
            self.on_choose(self._results[row])

    def _row_at(self, index: str) -> int | None:
        for tag in self.results.tag_names(index):
            row = tag.removeprefix("result-")
            if row != tag and row.isdigit():
                return int(row)
        return None

    def _move(self, step: int) -> str:
        if self._results:
            row = -1 if self._chosen is None else self._chosen
            self._choose_row(max(0, min(len(self._results) - 1, row + step)))
        return "break"

    def _choose_row(self, row: int) -> None:
        self._chosen = row
        self.results.tag_remove("chosen", "1.0", "end")
        ranges = self.results.tag_ranges(f"result-{row}")
        if ranges:
            self.results.tag_add("chosen", ranges[0], ranges[1])
            self.results.see(ranges[0])

    # -- what the app shows ---------------------------------------------------------

    @property
    def query(self) -> str:
        """The query of the results shown (or asked for)."""
        return self._query

    def show_results(
        self, query: str, messages: Iterable[ChatMessage], more: bool, *, further: bool
    ) -> None:
        """Results of ``query``, newest first; ``further``: they go on those shown
        (the answer to "More results")."""
        messages = list(messages)
        self._waiting = False
        if not further:
            self._query, self._words = query, query_words(query)
            self._results = []
            self._chosen = None
            self._edit(self.results, lambda: self.results.delete("1.0", "end"))
        first = len(self._results)
        self._results.extend(messages)
        chunks: list[str | tuple[str, ...]] = []
        for row, message in enumerate(messages, first):
            chunks += self._result_chunks(row, message)
        if chunks:
            self._edit(self.results, lambda: _insert(self.results, chunks))
        count = len(self._results)
        if not count:
            words = "No messages hold every word of that."
        else:
            plural = "message" if count == 1 else "messages"
            words = f"{count:,}{'+' if more else ''} {plural}, newest first"
        self.status_label.configure(text=words, bootstyle="secondary")
        self.more_button.configure(state="normal")
        if more and count:
            self.more_button.grid(row=3, column=0, sticky="we", pady=(4, 0))
        else:
            self.more_button.grid_remove()
        self.show_list()
        if not further:
            self.results.yview_moveto(0.0)

    def _result_chunks(self, row: int, message: ChatMessage) -> list[str | tuple[str, ...]]:
        """The (text, tags) pairs of one result, as ``Text.insert`` takes them."""
        tags = ("result", f"result-{row}")
        shown = excerpt(message.text, self._words)
        chunks: list[str | tuple[str, ...]] = [
            fmt.displayable(message.sender, astral_ok=self._astral_ok),
            (*tags, "sender", f"name-{fmt.name_slot(message.sender)}"),
            f"  {_when(message.ts)}\n",
            (*tags, "time"),
        ]
        at = 0
        for start, end in hits(shown, self._words):
            chunks += [self._shown(shown[at:start]), tags, self._shown(shown[start:end])]
            chunks.append((*tags, "hit"))
            at = end
        chunks += [self._shown(shown[at:]) + "\n", (*tags, "gap")]
        return chunks

    def _shown(self, text: str) -> str:
        return fmt.displayable(text, astral_ok=self._astral_ok)

    def show_error(self, text: str) -> None:
        """Something went wrong (the server cannot search, a bad query): say so here."""
        self._waiting = False
        self.more_button.configure(state="normal")
        self.status_label.configure(text=text, bootstyle="danger")

    def show_list(self) -> None:
        """Back from a result's context to the list of results."""
        self.back_button.grid_remove()
        self.context.grid_remove()
        self.results.grid(row=2, column=0, sticky="nsew")

    def show_context(self, messages: Iterable[ChatMessage], chosen: int) -> None:
        """The messages around result ``chosen`` (an id), oldest first, it highlighted."""
        lines: list[str | tuple[str, ...]] = []
        day = None
        for message in messages:
            when = datetime.date.fromtimestamp(message.ts)
            if when != day:
                day = when
                lines += [fmt.day_label(message.ts) + "\n", ("day",)]
            mark = ("chosen-message",) if message.id == chosen else ()
            lines += [f"{fmt.clock(message.ts)}  ", (*mark, "time")]
            lines += [self._shown(message.sender), (*mark, "sender")]
            text = fmt.shown(message.text)
            line: list[str | tuple[str, ...]] = [": ", mark]
            at = 0
            for start, end in hits(text, self._words) if mark else ():
                line += [self._shown(text[at:start]), mark, self._shown(text[start:end])]
                line.append((*mark, "hit"))
                at = end
            lines += [*line, self._shown(text[at:]) + "\n", mark]

        def fill() -> None:
            self.context.delete("1.0", "end")
            if lines:
                _insert(self.context, lines)

        self._edit(self.context, fill)
        self.results.grid_remove()
        self.more_button.grid_remove()
        self.back_button.grid(row=3, column=0, sticky="w", pady=(4, 0))
        self.context.grid(row=2, column=0, sticky="nsew")
        found = self.context.tag_ranges("chosen-message")
        if found:  # a few lines of what came before it above it
            self.context.update_idletasks()
            self.context.yview(found[0])
            self.context.yview_scroll(-CONTEXT_ABOVE, "units")
        self.status_label.configure(text="The result in its conversation", bootstyle="secondary")

    @property
    def shown_results(self) -> tuple[ChatMessage, ...]:
        """The results listed, newest first."""
        return tuple(self._results)

    @property
    def showing_context(self) -> bool:
        return bool(self.context.winfo_manager())

    def results_text(self) -> str:
        return self.results.get("1.0", "end-1c")

    def context_text(self) -> str:
        return self.context.get("1.0", "end-1c")

    def status_text(self) -> str:
        return str(self.status_label.cget("text"))

    def _edit(self, box: tkinter.Text, change: Callable[[], None]) -> None:
        box.configure(state="normal")
        try:
            change()
        finally:
            box.configure(state="disabled")

    # -- looks ------------------------------------------------------------------------

    def apply_theme(self, colors: dict[str, str]) -> None:
        """The theme's colours (the view's palette: background, text, muted, hit,
        chosen, and name-0… for the names)."""
        for box in (self.results, self.context):
            box.configure(
                background=colors["bg"],
                foreground=colors["fg"],
                selectbackground=colors["selectbg"],
                selectforeground=colors["selectfg"],
                highlightthickness=0,
                relief="flat",
                borderwidth=0,
                padx=6,
                pady=4,
                spacing1=1,
            )
            box.tag_configure("time", foreground=colors["muted"])
            box.tag_configure("sender", font=self._bold)
            box.tag_configure("hit", background=colors["hit"], font=self._bold)
            box.tag_configure("day", foreground=colors["muted"], font=self._bold, justify="center")
            for key, value in colors.items():
                if key.startswith("name-"):
                    box.tag_configure(key, foreground=value)
        self.results.tag_configure("gap", spacing3=8)
        self.results.tag_configure("chosen", background=colors["chosen"])
        self.context.tag_configure("chosen-message", background=colors["chosen"])
        self.context.tag_raise("hit")
        self.results.tag_raise("hit")


def _insert(box: tkinter.Text, chunks: list[str | tuple[str, ...]]) -> None:
    """Text, tags, text, tags...: all in one Tk call (50 results of the longest
    texts, one by one, held the window for much longer)."""
    box.tk.call(str(box), "insert", "end", *chunks)
