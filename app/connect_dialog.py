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

Above the fields, "Servers on your network" lists the servers that answer
a search (``app.discovery.Browser``, on a thread of its own), started as
the dialog opens and again with Refresh; the dialog drains the browser's
events with ``after()`` and closes it when it is destroyed. Choosing a
server (a click, or the arrow keys) fills in its address and port only: a
discovery answer is anyone's to send, so its fingerprint is no invite and
the server's identity is checked as for a typed address. A double-click
or Enter on a server connects to it. When nothing answers, the dialog says
what usually causes it (``NOTHING_FOUND``).
"""

from __future__ import annotations

import queue
import tkinter
from collections.abc import Callable, Sequence

import ttkbootstrap as ttk

from app.discovery import Browser, Found, FoundServer, SearchDone, Target
from app.settings import Settings
from server.protocol import RuleViolation, normalize_name
from server.protocol.fingerprint import Invite, parse_invite

SEARCHING = "Looking for servers on your network…"
CHOOSE = "Click a server to fill in its address, or double-click it to join."
TYPE_INSTEAD = "Typing the address the server printed still works."
NOTHING_FOUND = (
    "No server answered. Most often the server computer's firewall keeps the "
    "question out, the Wi-Fi keeps devices apart (guest networks often do), "
    "Windows calls this network Public, or a VPN is on. " + TYPE_INSTEAD
)
NO_NETWORK = "This computer seems to be on no network to search. " + TYPE_INSTEAD
POLL_MS = 50  # how often the dialog looks for the search's answers
SERVER_ROWS = 4  # rows of the list shown without scrolling


def server_row(server: FoundServer) -> tuple[str, str, str, str, str]:
    """A found server as the list shows it: room, people, password, encrypted, address."""
    found = server.announcement
    users = found.users
    return (
        found.room or "(no name)",
        "1 person" if users == 1 else f"{users} people",
        "Yes" if found.password else "No",
        "No" if found.tls == "off" else "Yes",
        f"{server.host}:{server.port}",
    )


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
    ``find_targets()`` says where to look for servers (``app.discovery``).
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
        find_targets: Callable[[], Sequence[Target]],
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
            text="Choose a server on your network, or type the address or invite you were given.",
            bootstyle="secondary",
        ).grid(row=1, column=0, columnspan=2, sticky="w", pady=(2, 14))

        self.servers: dict[str, FoundServer] = {}  # by the list's row id
        self._build_server_list(body, 2)

        self.invite: Invite | None = None
        self.host_var.trace_add("write", self._invite_pasted)
        self.host_entry = self._field(body, 5, "Server address", self.host_var, "host")
        self.port_entry = self._field(body, 7, "Port", self.port_var, "port", width=8)
        self.name_entry = self._field(body, 9, "Your name", self.name_var, "name")
        # Hints wrap within the field column (less a label's own padding), never widen it.
        wrap = self.host_entry.winfo_reqwidth() - 8
        for hint in self._hints.values():
            hint.configure(wraplength=wrap)

        self.status_label = ttk.Label(body, text="", wraplength=340, justify="left")
        self.status_label.grid(row=11, column=0, columnspan=2, sticky="we", pady=(10, 0))
        self.progress = ttk.Progressbar(body, mode="indeterminate", bootstyle="primary")

        buttons = ttk.Frame(body)
        buttons.grid(row=13, column=0, columnspan=2, sticky="e", pady=(16, 0))
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
        self.browser = Browser(find_targets)
        self._search: int | None = None
        self._poll_id: str | None = None
        self.search()

    def _build_server_list(self, body: ttk.Frame, row: int) -> None:
        """The found servers' list at ``row`` (a heading, the list, what it says)."""
        heading = ttk.Frame(body)
        heading.grid(row=row, column=0, columnspan=2, sticky="we")
        ttk.Label(heading, text="Servers on your network", font="-weight bold").pack(side="left")
        self.refresh_button = ttk.Button(
            heading, text="Refresh", bootstyle="secondary-outline", command=self.search
        )
        self.refresh_button.pack(side="right")
        columns = {
            "room": ("Room", 170, True),
            "users": ("People", 80, False),
            "password": ("Password", 80, False),
            "encrypted": ("Encrypted", 80, False),
            "address": ("Address", 150, True),
        }
        frame = ttk.Frame(body)
        frame.grid(row=row + 1, column=0, columnspan=2, sticky="we", pady=(6, 0))
        self.server_list = ttk.Treeview(
            frame,
            columns=tuple(columns),
            show="headings",
            height=SERVER_ROWS,
            selectmode="browse",
            bootstyle="secondary",
        )
        for key, (title, width, stretch) in columns.items():
            self.server_list.heading(key, text=title, anchor="w")
            self.server_list.column(key, width=width, minwidth=60, stretch=stretch, anchor="w")
        self.server_list.pack(side="left", fill="both", expand=True)
        # Shown once there are more servers than rows (see _add_server), within
        # the list's own size: the dialog keeps its width.
        frame.configure(
            width=self.server_list.winfo_reqwidth(), height=self.server_list.winfo_reqheight()
        )
        frame.pack_propagate(False)
        self.scrollbar = ttk.Scrollbar(
            frame, orient="vertical", command=self.server_list.yview, bootstyle="round"
        )
        self.server_list.configure(yscrollcommand=self.scrollbar.set)
        self.server_list.bind("<<TreeviewSelect>>", lambda _event: self._server_chosen())
        self.server_list.bind("<Double-1>", self._server_double_clicked)
        self.server_list.bind("<Return>", self._server_entered)
        self.server_list.bind("<KP_Enter>", self._server_entered)
        # As tall as its longest text from the start: the buttons below stay
        # where they are (under the pointer) when a search ends.
        words = ttk.Frame(body)
        words.grid(row=row + 2, column=0, columnspan=2, sticky="we", pady=(4, 12))
        self.search_label = ttk.Label(
            words,
            text=NOTHING_FOUND,
            bootstyle="secondary",
            justify="left",
            wraplength=self.server_list.winfo_reqwidth() - 8,
        )
        self.search_label.pack(side="top", anchor="w")
        words.configure(
            width=self.server_list.winfo_reqwidth(), height=self.search_label.winfo_reqheight()
        )
        words.pack_propagate(False)
        self.search_label.configure(text="")

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
        self.progress.grid(row=12, column=0, columnspan=2, sticky="we", pady=(8, 0))
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

    # -- servers on the network ------------------------------------------------

    @property
    def searching(self) -> bool:
        """Whether a search started by the dialog has not reported its end yet."""
        return self._search is not None

    def search(self) -> None:
        """Look for servers again (Refresh); nothing while a search runs."""
        if self._search is not None:
            return
        number = self.browser.search()
        if number is None:
            return
        self._search = number
        self.servers.clear()
        self.server_list.delete(*self.server_list.get_children())
        self.refresh_button.configure(state="disabled")
        self.search_label.configure(text=SEARCHING)
        self._poll_id = self.after(POLL_MS, self._poll)

    def _poll(self) -> None:
        """Show what the search found so far (Tk thread, every ``POLL_MS``)."""
        self._poll_id = None
        while True:  # bounded: one search posts MAX_SERVERS + 1 events at most
            try:
                event = self.browser.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, Found) and event.search == self._search:
                self._add_server(event.server)
            elif isinstance(event, SearchDone) and event.search == self._search:
                self._search_done(event)
                return
        self._poll_id = self.after(POLL_MS, self._poll)

    def _add_server(self, server: FoundServer) -> None:
        row = self.server_list.insert("", "end", values=server_row(server))
        self.servers[row] = server
        if len(self.servers) > SERVER_ROWS and not self.scrollbar.winfo_manager():
            self.scrollbar.pack(side="right", fill="y", before=self.server_list)

    def _search_done(self, done: SearchDone) -> None:
        self._search = None
        self.refresh_button.configure(state="normal")
        if done.found:
            text = CHOOSE
        elif done.asked:
            text = NOTHING_FOUND
        elif done.problem:
            text = f"Could not search the network ({done.problem}). {TYPE_INSTEAD}"
        else:
            text = NO_NETWORK
        self.search_label.configure(text=text)

    def _server_chosen(self) -> FoundServer | None:
        """The selected server's address and port into the fields (not while a
        connection attempt holds them)."""
        selected = self.server_list.selection()
        server = self.servers.get(selected[0]) if selected else None
        if server is None or self._connecting or self._name_only:
            return None
        self.host_var.set(server.host)
        self.port_var.set(str(server.port))
        return server

    def _server_double_clicked(self, event: tkinter.Event) -> str | None:
        row = self.server_list.identify_row(event.y)
        if row not in self.servers:
            return None  # a heading or the empty part of the list
        self._join(row)
        return "break"

    def _server_entered(self, _event: tkinter.Event) -> str:
        # The row the list's focus is on (the arrow keys move it), chosen or
        # not yet; on none, Enter connects to what the fields say, as anywhere.
        row = self.server_list.focus()
        if row in self.servers:
            self._join(row)
        else:
            self.submit()
        return "break"

    def _join(self, row: str) -> None:
        """Connect to the server on ``row`` (its address into the fields first)."""
        self.server_list.selection_set(row)
        if self._server_chosen() is not None:
            self.submit()

    def destroy(self) -> None:
        """Stop the search (its thread ends within a tick) with the dialog."""
        if self._poll_id is not None:
            self.after_cancel(self._poll_id)
            self._poll_id = None
        self.browser.close()
        super().destroy()

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
