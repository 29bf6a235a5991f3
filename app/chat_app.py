"""The client application: one window, the connect dialog, one connection.

How this works: ``ChatApp`` owns the Tk root, the ``ConnectDialog``, the
``ChatView`` and the current ``ChatClient``. The client's thread puts
events on a queue; ``pump`` runs on the Tk thread every ``PUMP_MS`` and
handles at most ``PUMP_BATCH`` of them or ``PUMP_BUDGET`` seconds' worth,
so a burst of thousands of
messages is shown in slices and the window never stops responding. What
the user types goes through ``commands.parse_input`` to the client; the
room's history (older pages, search, "New since you left") goes through
``RoomHistory`` (app/room_history.py), files and their transfers through
``FileSharing`` (app/file_sharing.py). Everything here runs on the Tk thread.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib import metadata

import ttkbootstrap as ttk

from app import commands
from app import text as fmt
from app.alerts import DesktopNotifications
from app.chat_view import LOOKALIKE_MARK, Action, ChatView
from app.connect_dialog import ConnectDialog
from app.discovery import Target, targets_for
from app.file_sharing import FileSharing
from app.last_seen import LastSeen, last_seen_path
from app.network import (
    ChatClient,
    ConnectFailed,
    Connecting,
    ConnectionLost,
    Event,
    HistoryLoaded,
    IdentityChanged,
    NameRefused,
    PasswordNeeded,
    PlaintextNeeded,
    Received,
    SearchFound,
    ServerShutdown,
    Stopped,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
    TrustNeeded,
    Unsent,
    Welcomed,
)
from app.password_dialog import PasswordDialog, RememberedPasswords, passwords_path
from app.room_history import RoomHistory
from app.settings import Settings, fit_geometry
from app.trust import KnownServers, Pin, known_path
from app.trust_dialog import IdentityChangedDialog, LockDialog, PlaintextDialog, TrustDialog
from server.protocol import (
    DEFAULT_PORT,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    BanList,
    ChatMessage,
    Error,
    ErrorCode,
    Joined,
    Left,
    Notice,
    OpChanged,
    Rename,
    Renamed,
    RuleViolation,
    Say,
    Users,
    WhoisResult,
    clean_text,
    normalize_name,
)
from server.protocol.fingerprint import Invite

logger = logging.getLogger("app")

PUMP_MS = 30
# Events per tick, and time per tick: whichever runs out first. Tk draws
# and takes input between ticks, so a burst never freezes the window.
PUMP_BATCH = 200
PUMP_BUDGET = 0.02
NAME_RETRY_MS = 3000  # after a reconnect, our old connection may still hold the name
SEEN_LIMIT = 2000  # message keys remembered to drop history replayed on reconnect
# How long a mention's toast shows. Until it is gone, later mentions ring
# no bell and open no toast (the title still counts them): a toast per
# mention stacked up windows by the thousand in a busy room, which slowed
# the window to a crawl, grew memory, and crashed Tk (a segfault) within
# 30,000 messages (tests/bench/client_memory.py --background).
TOAST_MS = 5000
# Names a /who's answer lists in the transcript (the online list has them
# all): a server may list 50,000, and lines that long grew the transcript
# by megabytes and made every later line slower for the Tk thread.
WHO_NAMES = 100
# Pixels a window takes beyond its geometry: the menu bar and a window
# manager's title bar and borders, generously. Tk cannot tell them before
# the window first shows, and a restored window must fit on the screen whole.
WINDOW_CHROME = (16, 96)


def app_version() -> str:
    try:
        return metadata.version("lan-chat")
    except metadata.PackageNotFoundError:
        return "0+unknown"


PICTURE_LIMITS_MB = (1, 10, 50)
"""The View menu's sizes up to which pictures are fetched by themselves (and Never)."""


class ChatApp:
    """The client in ``root``. ``on_exit`` runs after ``quit`` (default: destroy
    the root, which ends ``mainloop``); tests pass their own and reuse the root.
    ``client_factory(host, port, name, known=, invite=)`` makes the connection;
    ``known`` is the store of trusted servers (default: beside the settings).
    ``discovery_targets()`` says where the dialog looks for servers (default:
    every network's broadcast address, on the default and the last port).
    """

    def __init__(
        self,
        root: ttk.App,
        settings: Settings,
        *,
        save_settings: Callable[[Settings], None],
        client_factory: Callable[..., ChatClient] = ChatClient,
        known: KnownServers | None = None,
        on_exit: Callable[[], None] | None = None,
        passwords: RememberedPasswords | None = None,
        last_seen: LastSeen | None = None,
        discovery_targets: Callable[[], Sequence[Target]] | None = None,
    ) -> None:
        self.root = root
        self.discovery_targets = discovery_targets or (
            lambda: targets_for((DEFAULT_PORT, self.settings.port))
        )
        self.on_exit = on_exit or root.destroy
        self.settings = settings
        self.save_settings = save_settings
        self.client_factory = client_factory
        # The servers trusted on this computer, beside the settings.
        self.known = known if known is not None else KnownServers(known_path())
        # Room passwords: remembered ones beside the settings; one asked for and
        # to be remembered is saved once the server has let us in with it.
        self.passwords = (
            passwords if passwords is not None else RememberedPasswords(passwords_path())
        )
        self.password_dialog: PasswordDialog | None = None
        self._to_remember: tuple[str, int, str] | None = None
        self._invite: Invite | None = None  # pasted for the current target
        self._pin: Pin | None = None  # the identity the current connection proved
        self.trust_dialog: TrustDialog | PlaintextDialog | None = None
        self.stop_dialog: IdentityChangedDialog | None = None  # the last hard stop shown
        self.lock_dialog: LockDialog | None = None  # the last lock details shown
        self.client: ChatClient | None = None
        self.dialog: ConnectDialog | None = None
        self.target: tuple[str, int] | None = None
        self.unread = 0
        self._seen: OrderedDict[tuple[int, float], None] = OrderedDict()
        self._retry_at: float | None = None
        self._lost_reason = ""
        # The banner's way back into the room: "Connect again" once the app
        # has stopped trying by itself, until the next welcome.
        self._reconnect_now = Action("Reconnect now", self.reconnect)
        self._connect_again = Action("Connect again", self.reconnect)
        self._way_back = self._reconnect_now
        self._name_retry: str | None = None  # the pending after() of a name retry
        self._held: deque[str] = deque()  # unsent texts waiting for the input box
        self._toast_until = 0.0  # time.monotonic() when the last toast is gone
        self.desktop = DesktopNotifications(root, "LAN Chat")
        self._pump_id: str | None = None
        self._closing = False
        self._closed = False

        root.title("LAN Chat")
        root.protocol("WM_DELETE_WINDOW", self.quit)
        self._restore_geometry()
        self.files = FileSharing(
            lambda: self.view,
            client=lambda: self.client,
            auto_download_mb=lambda: self.settings.auto_download_mb,
            notice=self.notice,
            # Writing a private message (/msg NAME ...): what is attached goes to NAME.
            recipient=lambda: commands.private_recipient(self.view.input_text()),
        )
        self.view = ChatView(
            root,
            on_send=self.on_send,
            font_size=settings.font_size,
            remember=commands.kept_in_history,
            # Through lambdas: the history, made next, needs the view.
            on_reach_top=lambda: self.history.ask_page(),  # noqa: PLW0108
            on_search=lambda query, before: self.history.search(query, before),  # noqa: PLW0108
            on_choose_result=lambda message: self.history.show_context(message),  # noqa: PLW0108
            on_end_reached=self._read_to_end,
            files=self.files,
        )
        self.history = RoomHistory(
            self.view,
            last_seen if last_seen is not None else LastSeen(last_seen_path()),
            client=lambda: self.client,
            focused=self._has_focus,
            add_unread=self._add_unread,
        )
        self.view.pack(fill="both", expand=True)
        self._build_menu()
        self._shortcuts = {
            "<Control-plus>": lambda _e: self.change_font_size(+1),
            "<Control-equal>": lambda _e: self.change_font_size(+1),
            "<Control-KP_Add>": lambda _e: self.change_font_size(+1),
            "<Control-minus>": lambda _e: self.change_font_size(-1),
            "<Control-KP_Subtract>": lambda _e: self.change_font_size(-1),
            "<Control-0>": lambda _e: self.change_font_size(0),
            "<Control-q>": lambda _e: self.quit(),
            "<Control-f>": lambda _e: self.history.open_search(),
            "<Control-o>": lambda _e: self.view.attach_file(),
        }
        for sequence, action in self._shortcuts.items():
            root.bind_all(sequence, action)
        self._focus_binding = root.bind("<FocusIn>", self._focused, add="+")
        self.view.set_status("Not connected")
        self._pump_id = root.after(PUMP_MS, self.pump)

    # -- menus and window manners ----------------------------------------------

    def _build_menu(self) -> None:
        menubar = ttk.Menu(self.root)
        chat = ttk.Menu(menubar, tearoff=False)
        chat.add_command(label="Connect to another server…", command=self.open_dialog)
        chat.add_command(label="Disconnect", command=self.disconnect)
        chat.add_command(label="Send a file…", accelerator="Ctrl+O", command=self.view.attach_file)
        chat.add_separator()
        chat.add_command(label="Quit", command=self.quit, accelerator="Ctrl+Q")
        menubar.add_cascade(label="Chat", menu=chat)
        view = ttk.Menu(menubar, tearoff=False)
        self.dark_var = ttk.BooleanVar(value=self.settings.dark)
        view.add_checkbutton(label="Dark theme", variable=self.dark_var, command=self.toggle_theme)
        self.notify_var = ttk.BooleanVar(value=self.settings.notifications)
        view.add_checkbutton(
            label="Desktop notifications",
            variable=self.notify_var,
            command=lambda: self._update_settings(notifications=self.notify_var.get()),
        )
        view.add_cascade(label="Show pictures", menu=self._pictures_menu(view))
        view.add_command(
            label="Bigger text", accelerator="Ctrl++", command=lambda: self.change_font_size(+1)
        )
        view.add_command(
            label="Smaller text", accelerator="Ctrl+-", command=lambda: self.change_font_size(-1)
        )
        menubar.add_cascade(label="View", menu=view)
        help_menu = ttk.Menu(menubar, tearoff=False)
        help_menu.add_command(label="Commands", command=lambda: self.notice(commands.HELP, "help"))
        help_menu.add_command(label="About LAN Chat", command=self.about)
        menubar.add_cascade(label="Help", menu=help_menu)
        self.root.configure(menu=menubar)
        self.menubar = menubar

    def _pictures_menu(self, parent: ttk.Menu) -> ttk.Menu:
        """Pictures up to how many MB are fetched and shown by themselves
        (``Settings.auto_download_mb``; one set in the file is a choice too)."""
        menu = ttk.Menu(parent, tearoff=False)
        self.pictures_var = ttk.IntVar(value=self.settings.auto_download_mb)
        choices = sorted({0, *PICTURE_LIMITS_MB, self.settings.auto_download_mb})
        for mb in choices:
            menu.add_radiobutton(
                label="Never" if mb == 0 else f"Up to {mb} MB",
                value=mb,
                variable=self.pictures_var,
                command=lambda: self._update_settings(auto_download_mb=self.pictures_var.get()),
            )
        return menu

    def _restore_geometry(self) -> None:
        """Where and how big the window was, kept wholly on the screen Tk reports."""
        screen = (self.root.winfo_screenwidth(), self.root.winfo_screenheight())
        smallest = self.root.minsize()
        geometry = fit_geometry(
            self.settings.geometry, screen, (smallest[0], smallest[1]), WINDOW_CHROME
        )
        if geometry is not None:
            self.root.geometry(geometry)

    def _remember_geometry(self) -> None:
        # Only a window shown at its normal size: never shown, the saved one
        # stays; maximized, its size is the screen's, not the one to come back to.
        if self.root.state() == "normal":
            self.root.update_idletasks()
            self.settings = replace(self.settings, geometry=self.root.geometry())

    def toggle_theme(self) -> None:
        dark = not self.settings.dark
        self.root.theme_mode = "dark" if dark else "light"
        self.dark_var.set(dark)
        self._update_settings(dark=dark)

    def change_font_size(self, step: int) -> None:
        """Bigger (+1), smaller (-1) or back to the default (0)."""
        size = Settings().font_size if step == 0 else self.settings.font_size + step
        self.settings = self.settings.with_font_size(size)
        self.view.set_font_size(self.settings.font_size)
        self.save_settings(self.settings)

    def about(self) -> None:
        ttk.Messagebox.show_info(
            f"LAN Chat {app_version()}\n\nA small group chat for your local network.\n\n"
            "Emoji designed by OpenMoji (openmoji.org), licensed under CC BY-SA 4.0.",
            "About LAN Chat",
            parent=self.root,
        )

    def _focused(self, _event: object) -> None:
        """The window has the focus: with the newest line in view, all is read
        (scrolled up, say at "New since you left", the rest is not yet; nor
        while the room's history is still coming in on a return)."""
        if not self.view.at_end or self.history.busy:
            return
        self.history.mark_read()
        if self.unread:
            self.unread = 0
            self._update_title()

    def _read_to_end(self) -> None:
        """The newest line is in view: with the window focused, all is read."""
        if self._has_focus():
            self._focused(None)

    def _add_unread(self, count: int) -> None:
        self.unread += count
        self._update_title()

    def _has_focus(self) -> bool:
        return self.root.focus_get() is not None

    def _update_title(self) -> None:
        where = ""
        if self.client is not None and self.client.name and self.target:
            where = f" — {self.client.name} @ {self.target[0]}:{self.target[1]}"
        prefix = f"({self.unread}) " if self.unread else ""
        self.root.title(f"{prefix}LAN Chat{where}")

    def _update_settings(self, **changes: object) -> None:
        self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]
        self.save_settings(self.settings)

    # -- connecting ---------------------------------------------------------------

    def open_dialog(self, error: str | None = None) -> ConnectDialog:
        if self.dialog is None:
            self.dialog = ConnectDialog(
                self.root,
                self.settings,
                on_connect=self.connect,
                on_choose_name=self.choose_name,
                on_cancel=self.cancel,
                on_dismiss=self._dialog_closed,
                find_targets=self.discovery_targets,
                close_text="Quit" if self._first_start else "Close",
            )
        if error:
            self.dialog.show_error(error)
        self.dialog.lift()
        return self.dialog

    @property
    def _first_start(self) -> bool:
        """The chat window has not been shown yet: the dialog is all there is."""
        return self.root.state() == "withdrawn"

    def _dialog_closed(self) -> None:
        if self._first_start:
            self.quit()
        else:
            self._close_dialog()

    def _close_dialog(self) -> None:
        if self.dialog is not None:
            self.dialog.destroy()
            self.dialog = None

    def connect(self, host: str, port: int, name: str, invite: Invite | None = None) -> None:
        """Start a connection (replacing any other); ``invite``: the code the
        server's identity must match."""
        if self.client is not None and self.client.joined and self.target is not None:
            self.notice(f"You left {self.target[0]}:{self.target[1]}.")
        self._drop_client()
        self.history.save()
        self.view.set_users([])
        self.view.set_status(f"Connecting to {host}:{port}…")
        if (host, port) != self.target or invite is not None:
            self._invite = invite
        self.target = (host, port)
        self._update_settings(host=host, port=port, name=name)
        self.client = self.client_factory(
            host,
            port,
            name,
            known=self.known,
            invite=self._invite,
            password=self.passwords.get(host, port),
        )
        self.client.start()

    def choose_name(self, name: str) -> None:
        if self.client is not None and self.client.running:
            self.client.choose_name(name)
        elif self.target is not None:
            self.connect(self.target[0], self.target[1], name)

    def cancel(self) -> None:
        self._drop_client()

    def reconnect(self) -> None:
        """The banner's button: retry at once (or start over after a final failure)."""
        if self.client is not None and self.client.running:
            self.client.reconnect_now()
        elif self.target is not None:
            self.connect(self.target[0], self.target[1], self.settings.name)

    def disconnect(self) -> None:
        if self.client is None:
            return
        self._drop_client()
        self.notice("You left the room.")
        self.view.set_users([])
        self.view.set_status("Not connected")
        self._way_back = self._connect_again
        self.view.show_banner("You are not connected.", self._way_back)
        self._update_title()

    def quit(self) -> None:
        """Leave the room and close the window; the process ends with it."""
        if self._closing:
            return
        self.close()
        self.on_exit()

    def close(self) -> None:
        """Leave the room and take the app out of the root window. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._pump_id is not None:
            self.root.after_cancel(self._pump_id)
            self._pump_id = None
        self._drop_client()
        self.files.close()
        self.history.save()
        self.desktop.close()
        self._remember_geometry()
        self.save_settings(self.settings)
        for sequence in self._shortcuts:
            self.root.unbind_all(sequence)
        self.root.unbind("<FocusIn>", self._focus_binding)
        self._close_dialog()
        self.view.destroy()
        self.root["menu"] = ""
        self.menubar.destroy()

    def _drop_client(self) -> None:
        self._cancel_name_retry()
        self._close_trust_dialog()
        self._close_password_dialog()
        self._pin = None
        self.view.set_lock(None)
        self.view.show_insecure(())
        if self.client is not None:
            self.client.close()
            self.client = None
            self.files.connection_ended()
        self._retry_at = None

    # -- the pump -----------------------------------------------------------------

    def pump(self) -> None:
        """Handle up to ``PUMP_BATCH`` network events (or ``PUMP_BUDGET`` s), then reschedule."""
        more = False
        client = self.client
        try:
            if client is not None:
                deadline = time.perf_counter() + PUMP_BUDGET
                for _ in range(PUMP_BATCH):
                    try:
                        event = client.events.get_nowait()
                    except queue.Empty:
                        break
                    self.handle(event)
                    if self.client is not client:
                        break  # the event replaced or dropped the client
                    if time.perf_counter() > deadline:
                        more = True
                        break
                else:
                    more = True
                self.view.end_batch()
            self.files.poll()
            if self._retry_at is not None:
                seconds = max(0, round(self._retry_at - time.monotonic()))
                self.view.update_banner(f"{self._lost_reason} Retrying in {seconds} s…")
        finally:
            # Even after an error (reported by Tk), later events must still show.
            if not self._closing:
                self._pump_id = self.root.after(1 if more else PUMP_MS, self.pump)

    def handle(self, event: Event) -> None:
        """Act on one network event."""
        match event:
            case Connecting(host=host, port=port, attempt=attempt) if attempt > 0:
                self.view.set_status(f"Reconnecting to {host}:{port}…")
                if self._retry_at is not None:  # the pause is over: this is the attempt
                    self._retry_at = None
                    self.view.update_banner(f"{self._lost_reason} Reconnecting…")
            case Welcomed():
                self._welcomed(event)
            case TrustNeeded(host=host, port=port, fingerprint=seen):
                self._ask(TrustDialog(self._dialog_parent, host, port, seen, on_answer=self._trust))
            case PlaintextNeeded(host=host, port=port):
                self._ask(PlaintextDialog(self._dialog_parent, host, port, on_answer=self._trust))
            case IdentityChanged():
                self._hard_stop(event)
            case PasswordNeeded(host=host, port=port, wrong=wrong):
                self._ask_password(host, port, wrong)
            case NameRefused(message=message):
                self._name_refused(message)
            case ConnectFailed(message=message):
                self._drop_client()
                self.view.set_status("Not connected")
                self._update_title()
                self.open_dialog(message)
                if self.stop_dialog is not None and self.stop_dialog.winfo_exists():
                    self.stop_dialog.lift()  # the warning stays in front of the dialog
            case ConnectionLost(message=message, retry_in=retry_in, again=again):
                self._connection_lost(message, retry_in, again=again)
            case ServerShutdown(message=message):
                self.notice(f"{message}.", "error")
            case HistoryLoaded():
                self.history.page_loaded(event)
            case SearchFound():
                self.history.results_found(event)
            case Received(message=message, asked=asked, insecure=insecure):
                self._received(message, asked=asked)
                if insecure is not None:
                    self.view.show_insecure(self._others(insecure))
            case Unsent(says=says, reason=reason):
                self._give_back([_as_typed(say) for say in says])
                count = len(says)
                back = "Your text is" if count == 1 else f"{count} messages are"
                self.notice(
                    f"Not sent: {reason} {back} back in the box; Enter sends it again.", "error"
                )
            case TransferStarted() | TransferProgress() | TransferDone() | TransferFailed():
                self.files.handle(event)
            case Stopped():
                pass

    def _welcomed(self, event: Welcomed) -> None:
        welcome = event.welcome
        if self._to_remember is not None:  # it let us in: it is the password
            self.passwords.remember(*self._to_remember)
            self._to_remember = None
        self._cancel_name_retry()
        # A reconnection must not take away a dialog the user is typing in.
        if not event.reconnected or (self.dialog is not None and self.dialog.attempting):
            self._close_dialog()
        self.root.deiconify()
        self._retry_at = None
        self.view.hide_banner()
        self._way_back = self._reconnect_now
        self.view.own_name = welcome.name
        self.view.set_users(welcome.users, welcome.ops or ())
        self._pin = event.pin
        self.view.set_lock(event.pin is not None, self.show_lock)
        self.view.show_insecure(() if event.insecure is None else self._others(event.insecure))
        self._update_settings(name=welcome.name)
        host, port = self.target or ("?", 0)
        if event.reconnected:
            self.notice(f"Reconnected to {host}:{port}.")
        else:
            self.notice(f"You joined {host}:{port} as {welcome.name}.")
            if welcome.motd:
                self.notice(welcome.motd, "motd")
        if self.history.entered(event, host, port):
            self._seen.clear()  # another room: none of its messages are replays
        self._update_status()
        self._update_title()
        self.view.focus_input()

    def _name_refused(self, message: str) -> None:
        if self.dialog is not None and self.dialog.attempting:
            self.dialog.ask_for_name(message)
            return
        if self._first_start:  # --connect with a name someone has: ask for another
            self.open_dialog().ask_for_name(message)
            return
        # Reconnecting: our dropped connection may still hold the name until
        # the server notices it is gone; ask again shortly (once at a time).
        client = self.client
        name = self.settings.name
        self.view.show_banner(f"Waiting for the server to free the name {name}…", self._way_back)

        def retry() -> None:
            self._name_retry = None
            if self.client is client and client is not None:
                client.choose_name(name)

        self._cancel_name_retry()
        self._name_retry = self.root.after(NAME_RETRY_MS, retry)

    def _cancel_name_retry(self) -> None:
        if self._name_retry is not None:
            self.root.after_cancel(self._name_retry)
            self._name_retry = None

    def _connection_lost(self, message: str, retry_in: float, *, again: bool) -> None:
        self.history.connection_lost()
        self.view.set_users([])
        self.view.set_lock(None)
        self.view.show_insecure(())
        self.view.set_status("Not connected")
        self._update_title()
        if retry_in < 0:
            self._drop_client()
            self._way_back = self._connect_again
            self.view.show_banner(message, self._way_back)
            return
        if not again:  # a retry that failed as the last one did: the banner says it
            self.notice(message)
        self._lost_reason = message
        self._retry_at = time.monotonic() + retry_in
        self.view.show_banner(f"{message} Retrying…", self._way_back)

    # -- trust ------------------------------------------------------------------

    @property
    def _dialog_parent(self) -> ttk.Window:
        """The connect dialog while it is up (the question is about its attempt)."""
        return self.dialog if self.dialog is not None else self.root  # type: ignore[return-value]

    def _ask(self, dialog: TrustDialog | PlaintextDialog) -> None:
        self._close_trust_dialog()
        self.trust_dialog = dialog
        dialog.lift()

    def _trust(self, accept: bool) -> None:
        self.trust_dialog = None
        if self.client is not None:
            self.client.trust(accept)

    def _ask_password(self, host: str, port: int, wrong: bool) -> None:
        if wrong:  # a remembered one is out of date (it was sent first)
            self.passwords.forget(host, port)
        self._close_password_dialog()

        def answer(password: str | None, remember: bool) -> None:
            self.password_dialog = None
            self._to_remember = (host, port, password) if remember and password else None
            if self.client is not None:
                self.client.give_password(password)

        self.password_dialog = PasswordDialog(
            self._dialog_parent,
            host,
            port,
            wrong=wrong,
            kept_in=self.passwords.path,
            on_answer=answer,
        )
        self.password_dialog.lift()

    def _close_password_dialog(self) -> None:
        dialog, self.password_dialog = self.password_dialog, None
        if dialog is not None and dialog.winfo_exists():
            dialog.destroy()

    def _close_trust_dialog(self) -> None:
        dialog, self.trust_dialog = self.trust_dialog, None
        if dialog is not None and dialog.winfo_exists():
            dialog.destroy()

    def _hard_stop(self, event: IdentityChanged) -> None:
        """The server is not the one trusted: say so; no way on but forgetting it."""
        self.stop_dialog = dialog = IdentityChangedDialog(
            self._dialog_parent,
            event.host,
            event.port,
            event.fingerprint,
            event.pin,
            invite=event.invite,
            on_forget=lambda pin: self.known.forget(pin.fingerprint),
        )
        dialog.lift()

    def show_lock(self) -> None:
        """The lock was clicked: what it knows of this connection."""
        if self.target is not None:
            where = f"{self.target[0]}:{self.target[1]}"
            self.lock_dialog = LockDialog(self.root, where, self._pin)
            self.lock_dialog.lift()

    def _others(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """``names`` without our own: the lock tells about our connection."""
        return tuple(name for name in names if name != self.view.own_name)

    def _received(self, message: object, *, asked: bool = False) -> None:
        view = self.view
        match message:
            case ChatMessage():
                key = (message.id, message.ts)
                fresh = key not in self._seen  # else history replayed after a reconnect
                if fresh:
                    self._show_message(message, key)
                self.history.message_in(message, shown=fresh)  # once it is shown
            case Joined(name=name):
                view.user_joined(name)
                self.notice(f"{name} joined")
                mark = view.lookalike(name)
                if mark is not None:  # said once, at the join; the list keeps the mark
                    self.notice(f"{LOOKALIKE_MARK} {mark.explain(name)}", "lookalike")
                self._update_status()
            case Left(name=name, reason=reason, by=by, message=said):
                view.user_left(name)
                self.notice(fmt.left_words(name, reason, by, said))
                self._update_status()
            case Renamed(old=old, new=new):
                view.user_renamed(old, new)
                if old == view.own_name:
                    view.own_name = new
                    self._update_settings(name=new)
                    self.notice(f"You are now known as {new}.")
                else:
                    self.notice(f"{old} is now known as {new}")
                self._update_status()
                self._update_title()
            case Users(users=users, ops=ops):
                view.set_users(users, ops or ())
                if asked:  # a list nobody asked for only updates the online list
                    self.notice(_who_line(users))
            case Error(in_reply_to="history" | "search"):
                self.history.refused(message)
            case Error(code=ErrorCode.KICKED | ErrorCode.BANNED):
                self.notice(fmt.removed_words(message), "error")
            case Error(message=text):
                self.notice(text, "error")
            case OpChanged() | Notice() | BanList() | WhoisResult():
                self._moderation(message)

    def _show_message(self, message: ChatMessage, key: tuple[int, float]) -> None:
        view = self.view
        self._seen[key] = None
        if len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        mention = view.add_message(message)
        mine = message.sender == view.own_name
        if not mine and not message.history and not self._has_focus():
            self.unread += 1
            self._update_title()
            if mention or message.to is not None:
                self._alert(message)

    def _moderation(self, message: OpChanged | Notice | BanList | WhoisResult) -> None:
        """The operators extension's frames (PROTOCOL.md, "Operators and moderation")."""
        view = self.view
        match message:
            case OpChanged(name=name, op=op, by=by, ts=ts):
                view.set_op(name, op)
                name = fmt.shown(name, MAX_NAME_LENGTH)
                whom = "You are" if name == view.own_name else f"{name} is"
                how = f" (by {fmt.shown(by, MAX_NAME_LENGTH)})" if by and by != name else ""
                now = "now an operator" if op else "no longer an operator"
                view.add_notice(f"{whom} {now}{how}.", "moderation", ts)
            case Notice(text=text, by=by, ts=ts):
                by = fmt.shown(by, MAX_NAME_LENGTH) if by else None
                view.add_server_notice(fmt.shown(text, one_line=False), by, ts)
            case BanList(bans=bans):
                view.add_report(fmt.ban_list_lines(bans))
            case WhoisResult():
                view.add_notice(fmt.whois_words(message), "moderation")
        view.end_batch()

    def _alert(self, message: ChatMessage) -> None:
        """A desktop notification, or where the OS has none a bell and a toast;
        none while the last is still up (see ``TOAST_MS``) or when turned off."""
        now = time.monotonic()
        if not self.settings.notifications or now < self._toast_until:
            return
        self._toast_until = now + TOAST_MS / 1000
        title = f"{message.sender} mentioned you" if message.to is None else message.sender
        text = message.text[:200]
        self.desktop.notify(title, text, otherwise=lambda: self._toast(title, text))

    def _toast(self, title: str, text: str) -> None:
        self.root.bell()
        ttk.ToastNotification(
            title=title, message=text, duration=TOAST_MS, icon="chat-dots-fill"
        ).show_toast()

    def _update_status(self) -> None:
        if self.client is None or not self.client.joined or self.target is None:
            return
        host, port = self.target
        online = self.view.online_count
        self.view.set_status(f"Connected to {host}:{port} as {self.client.name}, {online} online")

    def notice(self, text: str, kind: str = "system") -> None:
        self.view.add_notice(text, kind)
        self.view.end_batch()

    # -- what the user typed ------------------------------------------------------

    def _give_back(self, texts: list[str]) -> None:
        """Unsent texts return to the input box one at a time, each as typed:
        merged, a /msg line would carry the lines after it along in private."""
        self._held.extend(texts)
        if not self.view.input_text().strip():
            self._next_held()

    def _next_held(self) -> None:
        if self._held and not self.view.input_text().strip():
            self.view.set_input(self._held.popleft())

    def on_send(self, typed: str) -> bool:
        """Act on the input box; ``True`` when it was used up (clear the box)."""
        command = commands.parse_input(typed)
        client = self.client
        joined = client is not None and client.joined
        match command:
            case None:
                return False
            case commands.Quit():
                # After the input box has been cleared: quit destroys it.
                self.root.after_idle(self.quit)
                return True
            case commands.Hint(message=message):
                self.notice(message, "error")
                return False
            case commands.ShowHelp():
                self.notice(commands.HELP, "help")
                return True
            case _ if not joined or client is None:
                self.notice(
                    "Not connected: your text stays in the box until you are back.", "error"
                )
                return False
            case commands.ListUsers():
                return client.who()
            case commands.ChangeName(name=name):
                try:
                    normalize_name(name)
                except RuleViolation as exc:
                    self.notice(exc.message, "error")
                    return False
                return client.rename(name)
            case commands.SendText(text=text, action=action, to=to):
                sent = self._say(client, text, action=action, to=to)
                if sent and self._held:  # once the box is cleared, the next unsent text
                    self.root.after_idle(self._next_held)
                return sent
            case _:
                return self._send_operator(client, command)
        return False

    def _send_operator(self, client: ChatClient, command: commands.Command) -> bool:
        """An operator command as its frame; the server answers, or says no."""
        try:
            frame = commands.operator_frame(command)
        except RuleViolation as exc:
            self.notice(exc.message, "error")
            return False
        if frame is None:
            return False
        # ChatClient has no public way to send these yet (app/network.py is
        # another's to change): its one queue, as say() and who() use it.
        return client._send(frame, joined_only=True)

    def _say(self, client: ChatClient, text: str, *, action: bool, to: str | None) -> bool:
        """Check ``text`` as the server will, then send it; ``False``: it stays in the box."""
        try:
            clean_text(text)
        except RuleViolation as exc:
            if len(text) > MAX_TEXT_LENGTH:
                self.notice(
                    f"That is {len(text):,} characters; the limit is {MAX_TEXT_LENGTH:,}.",
                    "error",
                )
            else:
                self.notice(exc.message, "error")
            return False
        return client.say(text, action=action, to=to)


def _who_line(users: tuple[str, ...]) -> str:
    """The answer to /who, naming the first ``WHO_NAMES`` users."""
    names = ", ".join(users[:WHO_NAMES])
    more = len(users) - WHO_NAMES
    return f"Online ({len(users):,}): {names}" + (f" … and {more:,} more" if more > 0 else "")


def _as_typed(say: Say | Rename) -> str:
    """How the user would type ``say`` (or a rename) again."""
    if isinstance(say, Rename):
        return f"/nick {say.name}"
    if say.action:
        return f"/me {say.text}"
    if say.to is not None:
        return f"/msg {say.to} {say.text}"
    return f"/{say.text}" if say.text.startswith("/") else say.text
