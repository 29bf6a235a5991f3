"""The dialogs about a server's identity: first contact, no encryption, a
changed identity, and what the lock knows. Tk thread only.

How this works: each is a small ``Toplevel`` that shows what the network
thread found and calls back with the person's answer; ``ChatApp`` opens them
as the events come and passes the answer to ``ChatClient.trust``. The safe
answer is always the default: Escape, Enter and closing the window mean
Cancel, and going on takes a click on a button that says what it does
("They match"). A changed identity has no way on at all: only Close, and
"Forget this server", which asks again before it forgets.
"""

from __future__ import annotations

import datetime
import tkinter
from collections.abc import Callable
from typing import Any, TypeVar

import ttkbootstrap as ttk

from app.trust import Pin
from server.protocol.fingerprint import parse_invite, safety_words

WRAP = 440  # pixels of a paragraph's line
W = TypeVar("W", bound=tkinter.Grid)


def words_text(fingerprint: str) -> str:
    """The eight safety words in two numbered rows of four, to read aloud."""
    words = safety_words(fingerprint)
    cells = [f"{n}. {word:<9}" for n, word in enumerate(words, 1)]
    return "   ".join(cells[:4]).rstrip() + "\n" + "   ".join(cells[4:]).rstrip()


def since_text(since: float) -> str:
    """When a pin was made, in local time, for people."""
    when = datetime.datetime.fromtimestamp(since)
    return f"{when:%d %B %Y at %H:%M}".lstrip("0")


class _Dialog(ttk.Toplevel):
    """A heading, paragraphs, and a row of buttons; ``on_close`` for Escape,
    Enter (unless a field has its own) and the window's close button."""

    def __init__(self, master: ttk.Window, title: str, heading: str) -> None:
        super().__init__(title=title, master=master, resizable=(False, False))
        self.transient(master)
        self.body = ttk.Frame(self, padding=20)
        self.body.pack(fill="both", expand=True)
        self._row = 0
        self.heading = self._add(ttk.Label(self.body, text=heading, font="-size 15 -weight bold"))
        self.buttons = ttk.Frame(self.body)
        self.paragraphs: list[ttk.Label] = []

    def _add(self, widget: W, **grid: Any) -> W:
        widget.grid(row=self._row, column=0, sticky="we", **grid)
        self._row += 1
        return widget

    def say(self, text: str, style: str = "default") -> ttk.Label:
        label = ttk.Label(self.body, text=text, wraplength=WRAP, justify="left", bootstyle=style)
        self._add(label, pady=(10, 0))
        self.paragraphs.append(label)
        return label

    def show_words(self, fingerprint: str) -> ttk.Label:
        label = ttk.Label(
            self.body,
            text=words_text(fingerprint),
            font="TkFixedFont 13 bold",
            bootstyle="primary",
            padding=(0, 10),
        )
        self._add(label, pady=(6, 0))
        self.paragraphs.append(label)
        return label

    def finish(self, on_close: Callable[[], None], focus: ttk.Button) -> None:
        self._add(self.buttons, pady=(18, 0))
        self.buttons.grid_configure(sticky="e")
        for sequence in ("<Escape>", "<Return>", "<KP_Enter>"):
            self.bind(sequence, lambda _e: on_close())
        self.protocol("WM_DELETE_WINDOW", on_close)
        focus.focus_set()

    def button(self, text: str, style: str, command: Callable[[], None]) -> ttk.Button:
        button = ttk.Button(self.buttons, text=text, bootstyle=style, command=command)
        button.pack(side="left", padx=(8, 0))
        return button

    @property
    def text(self) -> str:
        """Everything the dialog says, for tests."""
        return "\n".join(str(w.cget("text")) for w in (self.heading, *self.paragraphs))


class TrustDialog(_Dialog):
    """First contact with a server: its safety words, to compare; Cancel is
    the default. ``on_answer(True)`` only from "They match" or a matching
    invite pasted here."""

    def __init__(
        self,
        master: ttk.Window,
        host: str,
        port: int,
        fingerprint: str,
        *,
        on_answer: Callable[[bool], None],
    ) -> None:
        super().__init__(master, "Check the server", "Is this the right server?")
        self.fingerprint = fingerprint
        self._on_answer = on_answer
        self._answered = False
        self.say(
            f"This is the first time this computer connects to {host}:{port}. Before you "
            "send anything, check that it is the server you mean: the server shows "
            "eight words (on its screen, or whoever runs it can tell you). They must be "
            "these, in this order:"
        )
        self.words_label = self.show_words(fingerprint)
        self.say(
            "If any word is different, do not connect: someone on this network may be "
            "pretending to be the server, to read what you write.",
            "secondary",
        )
        invite_row = ttk.Frame(self.body)
        ttk.Label(invite_row, text="Or paste the invite you were given:").pack(anchor="w")
        self.invite_var = ttk.StringVar()
        self.invite_entry = ttk.Entry(invite_row, textvariable=self.invite_var, width=44)
        self.invite_entry.pack(side="left", pady=(4, 0))
        self.check_button = ttk.Button(
            invite_row, text="Check", bootstyle="secondary", command=self.check_invite
        )
        self.check_button.pack(side="left", padx=(8, 0), pady=(4, 0))
        self._add(invite_row, pady=(12, 0))
        self.invite_hint = self.say("", "danger")
        self.cancel_button = self.button("Cancel", "primary", lambda: self.answer(False))
        self.match_button = self.button("They match", "success-outline", lambda: self.answer(True))
        self.finish(lambda: self.answer(False), self.cancel_button)
        # In the invite field Enter checks the invite: it goes on only if it matches.
        self.invite_entry.bind("<Return>", self._invite_entered)

    def _invite_entered(self, _event: object) -> str:
        self.check_invite()
        return "break"  # not the dialog's Enter, which cancels

    def check_invite(self) -> None:
        pasted = parse_invite(self.invite_var.get())
        if pasted is None:
            self.invite_hint.configure(text="That is not an invite (it looks like HOST:PORT#CODE).")
        elif pasted.matches(self.fingerprint):
            self.answer(True)
        else:
            self.invite_hint.configure(
                text="This invite does not match this server. Do not connect: ask whoever "
                "gave it to you."
            )

    def answer(self, accept: bool) -> None:
        if self._answered:
            return
        self._answered = True
        self.destroy()
        self._on_answer(accept)


class PlaintextDialog(_Dialog):
    """The server offers no encryption: connect anyway? Cancel is the default."""

    def __init__(
        self, master: ttk.Window, host: str, port: int, *, on_answer: Callable[[bool], None]
    ) -> None:
        super().__init__(master, "Not encrypted", "This server is not encrypted")
        self._on_answer = on_answer
        self._answered = False
        self.say(
            f"{host}:{port} offers no encryption: anyone on this network can read what "
            "you write there, and could pretend to be the server."
        )
        self.say(
            "Connect only if you trust this network, such as your own at home. This "
            "computer remembers your answer for this server.",
            "secondary",
        )
        self.cancel_button = self.button("Cancel", "primary", lambda: self.answer(False))
        self.go_button = self.button(
            "Connect without encryption", "danger-outline", lambda: self.answer(True)
        )
        self.finish(lambda: self.answer(False), self.cancel_button)

    def answer(self, accept: bool) -> None:
        if self._answered:
            return
        self._answered = True
        self.destroy()
        self._on_answer(accept)


class IdentityChangedDialog(_Dialog):
    """A hard stop: not the server trusted here. No way to connect from here;
    "Forget this server" (when there is a pin) asks before it forgets."""

    def __init__(
        self,
        master: ttk.Window,
        host: str,
        port: int,
        seen: str | None,
        pin: Pin | None,
        *,
        invite: bool,
        on_forget: Callable[[Pin], None],
    ) -> None:
        super().__init__(master, "Not connected", "Warning: this may not be your server")
        self._pin = pin
        self._on_forget = on_forget
        where = f"{host}:{port}"
        if seen is None:
            self.say(
                f"The server at {where} was encrypted before and now offers no encryption. "
                "Someone on this network may be pretending to be it, to read what you write."
            )
        elif invite:
            self.say(
                f"The server at {where} is not the one your invite names. Someone on this "
                "network may be pretending to be it, or the invite is not for this address."
            )
        else:
            since = f" (trusted since {since_text(pin.since)})" if pin is not None else ""
            self.say(
                f"The server at {where} does not prove the identity it had before{since}. "
                "Someone on this network may be pretending to be it, to read what you write; "
                "or whoever runs it set it up again with a new identity."
            )
        if seen is not None:
            self.say("It showed these words:", "secondary")
            self.show_words(seen)
        self.say(
            "Nothing was sent to it. Ask whoever runs the server what happened before you "
            "connect again.",
            "secondary",
        )
        self.close_button = self.button("Close", "primary", self.destroy)
        self.forget_button: ttk.Button | None = None
        if pin is not None:
            self.forget_button = self.button(
                "Forget this server…", "danger-outline", self.ask_to_forget
            )
        self.finish(self.destroy, self.close_button)

    def ask_to_forget(self) -> None:
        """The confirming step: say what forgetting means, Keep stays the default."""
        if self._pin is None or self.forget_button is None:
            return
        self.say(
            "Forget the identity trusted for this server? The next time you connect, you "
            "will be asked to check the words again. Do this only once whoever runs the "
            "server has told you its identity is new.",
            "danger",
        )
        self.buttons.grid_configure(row=self._row)  # the question goes above its answers
        self._row += 1
        self.forget_button.configure(text="Yes, forget it", command=self._forget)
        self.close_button.configure(text="Keep it")
        self.close_button.focus_set()

    def _forget(self) -> None:
        if self._pin is not None:
            self._on_forget(self._pin)
        self.destroy()


class LockDialog(_Dialog):
    """What the lock knows: encrypted or not, the identity's words, since when trusted."""

    def __init__(self, master: ttk.Window, where: str, pin: Pin | None) -> None:
        if pin is None:
            super().__init__(master, "Not encrypted", "This connection is not encrypted")
            self.say(
                f"{where} offers no encryption: anyone on this network can read what is "
                "written here, and could pretend to be the server."
            )
        else:
            super().__init__(master, "Encrypted", "This connection is encrypted")
            self.say(
                f"Only {where} can read what you write, and it proved its identity, "
                f"trusted on this computer since {since_text(pin.since)}:"
            )
            self.show_words(pin.fingerprint)
            self.say(pin.fingerprint, "secondary")
        self.close_button = self.button("Close", "primary", self.destroy)
        self.finish(self.destroy, self.close_button)
