"""The room password: the question the client asks, and the passwords it remembers.

How this works: when the server wants its room's password (``PasswordNeeded``),
``ChatApp`` opens a ``PasswordDialog``: a masked field (a "Show" box unmasks
it), "Remember on this computer", Join and Cancel. Enter joins, Escape and
closing the window cancel; the answer goes to ``ChatClient.give_password``.

Remembered passwords are kept by server address in their own file,
``passwords.json`` beside the settings, readable by the user's account
only (mode 0600, written atomically). Not in the trusted servers' file:
that one holds nothing secret, people may copy it to another computer or
show it around, and a secret in a file of its own can be kept private,
and deleted, on its own. It is not encrypted (nothing on this computer
could keep the key safer than the file itself), and the dialog says so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import ttkbootstrap as ttk

from app.settings import config_path, write_json
from app.trust import address

logger = logging.getLogger("app.password_dialog")

FILE_NAME = "passwords.json"
MAX_PASSWORD = 1024  # characters: far beyond any real one, well inside a hello frame
MAX_REMEMBERED = 256  # servers a file may hold
WRAP = 400


def passwords_path() -> Path:
    """Where remembered passwords are kept: the settings' folder."""
    return config_path().with_name(FILE_NAME)


class RememberedPasswords:
    """Room passwords by server address; ``path`` ``None``: in memory only. Thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._passwords: dict[str, str] | None = None  # read at the first use

    def get(self, host: str, port: int) -> str | None:
        with self._lock:
            return self._loaded().get(address(host, port))

    def remember(self, host: str, port: int, password: str) -> None:
        with self._lock:
            passwords = self._loaded()
            passwords.pop(address(host, port), None)
            passwords[address(host, port)] = password
            while len(passwords) > MAX_REMEMBERED:
                del passwords[next(iter(passwords))]
            self._save(passwords)

    def forget(self, host: str, port: int) -> None:
        with self._lock:
            passwords = self._loaded()
            if passwords.pop(address(host, port), None) is not None:
                self._save(passwords)

    def _loaded(self) -> dict[str, str]:
        if self._passwords is None:
            self._passwords = self._read()
        return self._passwords

    def _read(self) -> dict[str, str]:
        if self.path is None:
            return {}
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable remembered passwords in %s: %s", self.path, exc)
            return {}
        if not isinstance(saved, dict) or saved.get("version") != 1:
            entries = None
        else:
            entries = saved.get("passwords")
        if not isinstance(entries, dict):
            logger.warning("Ignoring %s: not a file of remembered passwords", self.path)
            return {}
        return {
            where: password
            for where, password in list(entries.items())[-MAX_REMEMBERED:]
            if isinstance(password, str) and 0 < len(password) <= MAX_PASSWORD
        }

    def _save(self, passwords: dict[str, str]) -> None:
        """Replace the file atomically (lock held); a failure is logged, never raised."""
        if self.path is None:
            return
        try:
            # 0600 before a byte of it is written (write_json's temporary file).
            write_json(self.path, {"version": 1, "passwords": passwords}, prefix=".passwords-")
        except OSError as exc:
            logger.warning("Cannot save remembered passwords to %s: %s", self.path, exc)


class PasswordDialog(ttk.Toplevel):
    """Ask for the room's password; ``on_answer(password, remember)``, the
    password ``None`` for Cancel. ``wrong``: the last one was not it."""

    def __init__(
        self,
        master: ttk.Window,
        host: str,
        port: int,
        *,
        wrong: bool,
        kept_in: Path | None,
        on_answer: Callable[[str | None, bool], None],
    ) -> None:
        super().__init__(title="Room password", master=master, resizable=(False, False))
        self.transient(master)
        self._on_answer = on_answer
        self._answered = False
        body = ttk.Frame(self, padding=20)
        body.pack(fill="both", expand=True)
        heading = "Wrong password" if wrong else "This room has a password"
        self.heading = ttk.Label(body, text=heading, font="-size 15 -weight bold")
        self.heading.grid(row=0, column=0, columnspan=2, sticky="w")
        said = (
            f"That was not the password of the room at {host}:{port}. Try again."
            if wrong
            else f"The room at {host}:{port} needs a password to join. "
            "Ask whoever runs it if you do not know it."
        )
        self.message = ttk.Label(
            body, text=said, wraplength=WRAP, justify="left", bootstyle="danger" if wrong else ""
        )
        self.message.grid(row=1, column=0, columnspan=2, sticky="we", pady=(10, 0))
        self.password_var = ttk.StringVar()
        self.entry = ttk.Entry(body, textvariable=self.password_var, show="•", width=36)
        self.entry.grid(row=2, column=0, sticky="we", pady=(12, 0))
        self.show_var = ttk.BooleanVar(value=False)
        self.show_box = ttk.Checkbutton(
            body, text="Show", variable=self.show_var, command=self._toggle_shown
        )
        self.show_box.grid(row=2, column=1, sticky="w", padx=(10, 0), pady=(12, 0))
        self.remember_var = ttk.BooleanVar(value=False)
        self.remember_box = ttk.Checkbutton(
            body, text="Remember on this computer", variable=self.remember_var
        )
        self.remember_box.grid(row=3, column=0, columnspan=2, sticky="w", pady=(12, 0))
        where = "in memory until the app closes" if kept_in is None else f"in {kept_in}"
        self.kept_label = ttk.Label(
            body,
            text=f"Kept {where}, readable only by your account, not encrypted.",
            wraplength=WRAP,
            justify="left",
            bootstyle="secondary",
        )
        self.kept_label.grid(row=4, column=0, columnspan=2, sticky="we", pady=(2, 0))
        self.hint = ttk.Label(body, text="", wraplength=WRAP, bootstyle="danger")
        self.hint.grid(row=5, column=0, columnspan=2, sticky="we", pady=(6, 0))
        buttons = ttk.Frame(body)
        buttons.grid(row=6, column=0, columnspan=2, sticky="e", pady=(12, 0))
        self.cancel_button = ttk.Button(
            buttons, text="Cancel", bootstyle="secondary", command=self.cancel
        )
        self.cancel_button.pack(side="left", padx=(8, 0))
        self.join_button = ttk.Button(
            buttons, text="Join", bootstyle="primary", command=self.submit
        )
        self.join_button.pack(side="left", padx=(8, 0))
        for sequence in ("<Return>", "<KP_Enter>"):
            self.bind(sequence, lambda _e: self.submit())
        self.bind("<Escape>", lambda _e: self.cancel())
        self.protocol("WM_DELETE_WINDOW", self.cancel)
        self.entry.focus_set()

    def _toggle_shown(self) -> None:
        self.entry.configure(show="" if self.show_var.get() else "•")

    def submit(self) -> None:
        password = self.password_var.get()
        if not password:
            self.hint.configure(text="Type the room's password, or Cancel.")
            return
        if len(password) > MAX_PASSWORD:
            self.hint.configure(text=f"A password here has at most {MAX_PASSWORD:,} characters.")
            return
        self._answer(password, self.remember_var.get())

    def cancel(self) -> None:
        self._answer(None, False)

    def _answer(self, password: str | None, remember: bool) -> None:
        if self._answered:
            return
        self._answered = True
        self.destroy()
        self._on_answer(password, remember)

    @property
    def text(self) -> str:
        """Everything the dialog says, for tests."""
        labels = (self.heading, self.message, self.kept_label, self.hint)
        return "\n".join(str(label.cget("text")) for label in labels)


__all__ = ["PasswordDialog", "RememberedPasswords", "passwords_path"]
