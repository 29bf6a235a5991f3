"""The dialog that asks where to connect and under which name.

The dialog only collects and checks what the user types and shows what
happens; ``ChatApp`` does the connecting and calls ``show_connecting``,
``show_error`` and ``ask_for_name`` as the network reports. Field checks
live in ``check_fields``, a plain function tests call without a display.

One error shows at a time, and the dialog keeps its width: a hint wraps
within its field's column, the server's refusal of a name hides the
name's own hint, and editing a field takes away a stale refusal or
failure (it was about what the field held before).

The address field also takes an invite (``HOST:PORT#CODE``, as the server
prints it): pasted, it fills the address and the port, and its code is
kept (``invite``) for the network to check the server's identity with,
until the address is changed to another.
"""

from __future__ import annotations

from collections.abc import Callable

import ttkbootstrap as ttk

from app.settings import Settings
from server.protocol import RuleViolation, normalize_name
from server.protocol.fingerprint import Invite, parse_invite


def check_fields(host: str, port: str, name: str) -> dict[str, str]:
    """Problems with the typed values, by field (``host``, ``port``, ``name``); empty if none."""
    problems = {}
    if not host.strip():
        problems["host"] = "Enter the server's address, such as 192.168.1.20."
    elif any(char.isspace() for char in host.strip()):
        problems["host"] = "An address has no spaces."
    digits = port.strip()
    # isdigit() also accepts digits like ² that int() rejects, and int()
    # refuses strings of thousands of digits (a paste gone wrong).
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 5) or not (
        1 <= int(digits) <= 65535
    ):
        problems["port"] = "The port is a number from 1 to 65535."
    try:
        normalize_name(name)
    except RuleViolation as exc:
        problems["name"] = "Choose a name to be known by." if not name else exc.message
    return problems


class ConnectDialog(ttk.Toplevel):
    """Server address, port and name, with a Connect button. Tk thread only.

    ``on_connect(host, port, name, invite)`` asks to connect, ``on_choose_name(name)``
    tries another name on the open connection, ``on_cancel()`` stops a
    connection attempt, ``on_dismiss()`` means the user closed the dialog.
    """

    def __init__(
        self,
        master: ttk.Window,
        settings: Settings,
        *,
        on_connect: Callable[[str, int, str, Invite | None], None],
        on_choose_name: Callable[[str], None],
        on_cancel: Callable[[], None],
        on_dismiss: Callable[[], None],
        close_text: str = "Quit",
    ) -> None:
        super().__init__(title="Join a chat", master=master, resizable=(False, False))
        self.close_text = close_text  # "Quit" on start-up, "Close" over the chat window
        self.on_connect = on_connect
        self.on_choose_name = on_choose_name
        self.on_cancel = on_cancel
        self.on_dismiss = on_dismiss
        self._connecting = False
        self._status_is_error = False
        self._name_only = False  # the connection is open; only the name is wrong
        self._touched: set[str] = set()
        self._hints: dict[str, ttk.Label] = {}
        self._fields: list[tuple[ttk.Entry, ttk.StringVar]] = []

        self.host_var = ttk.StringVar(value=settings.host)
        self.port_var = ttk.StringVar(value=str(settings.port))
        self.name_var = ttk.StringVar(value=settings.name)

        body = ttk.Frame(self, padding=20)
        body.pack(fill="both", expand=True)
        body.columnconfigure(1, weight=1)
        ttk.Label(body, text="Join a chat", font="-size 16 -weight bold").grid(
            row=0, column=0, columnspan=2, sticky="w"
        )
        ttk.Label(
            body,
            text="Ask whoever runs the server for its address, or its invite.",
            bootstyle="secondary",
        ).grid(row=1, column=0, columnspan=2, sticky="w", pady=(2, 14))

        self.invite: Invite | None = None
        self.host_var.trace_add("write", self._invite_pasted)
        self.host_entry = self._field(body, 2, "Server address", self.host_var, "host")
        self.port_entry = self._field(body, 4, "Port", self.port_var, "port", width=8)
        self.name_entry = self._field(body, 6, "Your name", self.name_var, "name")
        # Hints wrap within the field column (less a label's own padding), never widen it.
        wrap = self.host_entry.winfo_reqwidth() - 8
        for hint in self._hints.values():
            hint.configure(wraplength=wrap)

        self.status_label = ttk.Label(body, text="", wraplength=340, justify="left")
        self.status_label.grid(row=8, column=0, columnspan=2, sticky="we", pady=(10, 0))
        self.progress = ttk.Progressbar(body, mode="indeterminate", bootstyle="primary")

        buttons = ttk.Frame(body)
        buttons.grid(row=10, column=0, columnspan=2, sticky="e", pady=(16, 0))
        self.cancel_button = ttk.Button(
            buttons, text=close_text, bootstyle="secondary", command=self._cancel_clicked
        )
        self.cancel_button.pack(side="left", padx=(0, 8))
        self.connect_button = ttk.Button(
            buttons, text="Connect", bootstyle="primary", command=self.submit
        )
        self.connect_button.pack(side="left")

        self.bind("<Return>", lambda _event: self.submit())
        self.bind("<KP_Enter>", lambda _event: self.submit())
        self.bind("<Escape>", lambda _event: self._cancel_clicked())
        self.protocol("WM_DELETE_WINDOW", self._cancel_clicked)
        self.refresh()
        first_empty = next(
            (entry for entry, var in self._fields if not var.get().strip()), self.name_entry
        )
        first_empty.focus_set()

    def _field(
        self,
        body: ttk.Frame,
        row: int,
        label: str,
        var: ttk.StringVar,
        key: str,
        *,
        width: int = 30,
    ) -> ttk.Entry:
        ttk.Label(body, text=label).grid(row=row, column=0, sticky="w", padx=(0, 12), pady=4)
        entry = ttk.Entry(body, textvariable=var, width=width)
        entry.grid(row=row, column=1, sticky="w" if width < 20 else "we", pady=4)
        hint = ttk.Label(body, text="", bootstyle="danger", font="-size 9")
        hint.grid(row=row + 1, column=1, sticky="w")
        self._hints[key] = hint
        self._fields.append((entry, var))

        def changed(*_: object) -> None:
            self._touched.add(key)
            if self._status_is_error:
                self._set_status("", "secondary")
            if key == "name" or not self._name_only:
                self.refresh()

        var.trace_add("write", changed)
        return entry

    @property
    def attempting(self) -> bool:
        """Whether a connection this dialog started is under way (or asks for a name)."""
        return self._connecting or self._name_only

    # -- what the user sees ----------------------------------------------------

    def problems(self) -> dict[str, str]:
        """What is wrong with the fields now (see ``check_fields``)."""
        return check_fields(self.host_var.get(), self.port_var.get(), self.name_var.get())

    def refresh(self) -> None:
        """Show each field's problem once the user has typed in it.

        Connect stays clickable (a disabled button is barely visible in the
        light theme); clicking it with a problem left shows every reason.
        """
        problems = self.problems()
        for key, hint in self._hints.items():
            hint.configure(text=problems.get(key, "") if key in self._touched else "")
        self.connect_button.configure(state="disabled" if self._connecting else "normal")

    def show_connecting(self) -> None:
        host, port = self.host_var.get().strip(), self.port_var.get().strip()
        self._connecting = True
        self._set_status(f"Connecting to {host}:{port}...", "secondary")
        self.progress.grid(row=9, column=0, columnspan=2, sticky="we", pady=(8, 0))
        self.progress.start(12)
        self._lock_fields(True)
        self.cancel_button.configure(text="Cancel")
        self.refresh()

    def show_error(self, message: str) -> None:
        """The attempt failed: ``message`` in place, every field as typed."""
        self._name_only = False
        self._stop_connecting()
        self._set_status(message, "danger")
        self.connect_button.configure(text="Connect")
        self.connect_button.focus_set()

    def ask_for_name(self, message: str) -> None:
        """The server refused the name; the connection stays open for another."""
        self._name_only = True
        self._touched.discard("name")  # the refusal below speaks for the name
        self._stop_connecting()
        self.host_entry.configure(state="disabled")
        self.port_entry.configure(state="disabled")
        self._set_status(f"{message} Choose another name.", "danger")
        self.connect_button.configure(text="Use this name")
        self.name_entry.focus_set()
        self.name_entry.select_range(0, "end")

    # -- internals ----------------------------------------------------------

    def submit(self) -> None:
        """Connect (or, after a refused name, try the new name)."""
        if self._connecting:
            return
        problems = self.problems()
        if problems:
            self._touched.update(self._hints)
            self.refresh()
            first = next(
                entry
                for (entry, _), key in zip(self._fields, self._hints, strict=True)
                if key in problems
            )
            first.focus_set()
            return
        name = self.name_var.get()
        if self._name_only:
            self.show_connecting()
            self.on_choose_name(name)
        else:
            self.show_connecting()
            host, port = self.host_var.get().strip(), int(self.port_var.get().strip())
            invite = self.invite
            if invite is not None and (invite.host, invite.port) != (host, port):
                invite = None  # the address was changed since: the invite is for another
            self.on_connect(host, port, name, invite)

    def _invite_pasted(self, *_: object) -> None:
        """An invite in the address field: its host and port fill the fields."""
        pasted = parse_invite(self.host_var.get())
        if pasted is None:
            return
        self.invite = pasted
        self.host_var.set(pasted.host)
        self.port_var.set(str(pasted.port))
        self._set_status("Invite pasted: the server's identity will be checked.", "success")

    def _cancel_clicked(self) -> None:
        if self._connecting or self._name_only:
            self._name_only = False
            self._stop_connecting()
            self._set_status("Cancelled.", "secondary")
            self.connect_button.configure(text="Connect")
            self.on_cancel()
        else:
            self.on_dismiss()

    def _stop_connecting(self) -> None:
        self._connecting = False
        self.progress.stop()
        self.progress.grid_remove()
        self._lock_fields(False)
        self.cancel_button.configure(text="Cancel" if self._name_only else self.close_text)
        self.refresh()

    def _lock_fields(self, locked: bool) -> None:
        for entry, _ in self._fields:
            entry.configure(state="disabled" if locked else "normal")

    def _set_status(self, text: str, style: str) -> None:
        self._status_is_error = style == "danger"
        self.status_label.configure(text=text, bootstyle=style)
