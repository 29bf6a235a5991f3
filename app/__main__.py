"""``python -m app`` / ``chat-client``: open the chat window.

Absolute imports only: PyInstaller runs this file as a script.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import socket
import ssl
import sys
import time
import tkinter
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import platformdirs
import ttkbootstrap as ttk
from PIL import Image, ImageTk

from app import settings as settings_store
from app.chat_app import ChatApp, app_version
from app.connect_dialog import check_fields
from app.discovery import local_networks
from app.paths import asset
from app.settings import Settings
from app.trust_dialog import TrustDialog
from server.protocol import DEFAULT_PORT, ChatMessage
from server.protocol.fingerprint import fingerprint
from server.protocol.transport import (
    TlsTransport,
    TransportClosed,
    client_context,
    server_context,
)

logger = logging.getLogger("app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-client", description="Chat with everyone on a LAN Chat server."
    )
    parser.add_argument("--host", help="server address to fill in (default: the last one used)")
    parser.add_argument(
        "--port",
        type=int,
        help=f"server port to fill in (default: the last one, or {DEFAULT_PORT})",
    )
    parser.add_argument("--name", help="your name to fill in (default: the last one used)")
    parser.add_argument(
        "--connect", action="store_true", help="connect at once, without showing the dialog"
    )
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="build the whole window, show sample messages in both themes, touch no "
        "network, and exit (0: it works)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {app_version()}")
    return parser


def log_file() -> Path:
    return Path(platformdirs.user_log_dir(settings_store.APP_NAME)) / "client.log"


def setup_logging() -> Path:
    """Log to a file: a windowed build has no console to print to."""
    path = log_file()
    handlers: list[logging.Handler] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                path, maxBytes=1_000_000, backupCount=2, encoding="utf-8"
            )
        )
    except OSError:
        pass  # an unwritable log folder must not stop the app
    if sys.stderr is not None:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    return path


TEXT_SHOWN = 300  # characters of an error's text shown and told apart


class ErrorReporter:
    """``root.report_callback_exception``: an error in a Tk callback, shown and logged.

    A callback that fails on every motion event must not open a box per
    event: a modal box's grab and nested event loop let the next event in
    and fail again, stacking boxes by the hundred until Python's stack runs
    out. So there is one box at a time, not modal, and what follows while it
    is open is counted into it; each kind of error is logged once with its
    traceback, and, when the box closes, once more with how often it
    happened. An error while reporting one (a log handler, the box itself)
    is only counted: the reporter never runs inside itself. Tk thread only.
    """

    MAX_KINDS = 20  # kinds of error told apart while one box is open

    def __init__(self, root: tkinter.Tk, log_path: Path) -> None:
        self.root = root
        self.log_path = log_path
        self.box: ttk.Toplevel | None = None
        self.count = 0  # errors since the box opened
        self.depth = 0  # >0 while reporting
        self._kinds: Counter[str] = Counter()
        self._first = self._first_kind = ""
        self._label: ttk.Label | None = None

    def __call__(self, exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
        self.count += 1
        kind = f"{exc_type.__name__}: {exc}"[:TEXT_SHOWN]
        if self.depth:
            return  # counted, logged as "other" when the box closes
        self.depth += 1
        try:
            new = kind not in self._kinds
            if new and len(self._kinds) < self.MAX_KINDS:
                self._kinds[kind] += 1
                logger.error("Unexpected error", exc_info=(exc_type, exc, tb))  # type: ignore[arg-type]
            elif not new:
                self._kinds[kind] += 1
            self._show(kind, exc)
        except Exception:  # the reporter of last resort must not fail
            logger.error("The error box could not be shown", exc_info=True)
        finally:
            self.depth -= 1

    def text(self) -> str:
        """What the box says."""
        if self.count == 1:
            times = ""
        elif self._kinds[self._first_kind] == self.count:
            times = f"\n\nThis happened {self.count:,} times."
        else:
            times = f"\n\n{self.count:,} errors happened; this was the first."
        return f"Something went wrong: {self._first}{times}\n\nDetails are in {self.log_path}."

    def _show(self, kind: str, exc: BaseException) -> None:
        if self.box is None:
            self._first, self._first_kind = str(exc)[:TEXT_SHOWN], kind
            box = ttk.Toplevel(title="LAN Chat", master=self.root, resizable=(False, False))
            self.box = box
            body = ttk.Frame(box, padding=20)
            body.pack(fill="both", expand=True)
            self._label = ttk.Label(body, text="", wraplength=420, justify="left")
            self._label.pack(anchor="w")
            ok = ttk.Button(body, text="OK", bootstyle="primary", command=self.close)
            ok.pack(anchor="e", pady=(16, 0))
            box.protocol("WM_DELETE_WINDOW", self.close)
            box.bind("<Return>", lambda _event: self.close())
            box.bind("<Escape>", lambda _event: self.close())
            if self.root.winfo_viewable():
                box.transient(self.root)
            ok.focus_set()
        if self._label is not None:
            self._label.configure(text=self.text())

    def close(self) -> None:
        """Close the box; log how often each error happened while it was open."""
        for kind, times in self._kinds.items():
            if times > 1:
                logger.error("%s happened %d times", kind, times)
        others = self.count - sum(self._kinds.values())
        if others > 0:
            logger.error("%d more errors of other kinds", others)
        self._kinds.clear()
        self.count = 0
        box, self.box, self._label = self.box, None, None
        if box is not None and box.winfo_exists():
            box.destroy()


ICON_SIZES = (128, 64, 32, 16)


def set_window_icon(root: ttk.App) -> list[ImageTk.PhotoImage]:
    """Give every window the app's icon, at run time: Linux ignores the
    build's icon. On X11 all sizes travel in one property, which must fit in
    one request (about 256 kB): 256 px alone would not, so 128 px is the most.

    Returns the images, which the caller keeps for as long as the window
    shows them: Tk holds no reference, and an image nobody holds vanishes."""
    path = asset("icon.png")
    if not path.exists():
        logger.warning("No window icon at %s", path)
        return []
    source = Image.open(path)
    icons = [
        ImageTk.PhotoImage(source.resize((size, size), Image.Resampling.LANCZOS), master=root)
        for size in ICON_SIZES
    ]
    root.iconphoto(True, *(str(icon) for icon in icons))  # by their Tk names
    return icons


SMOKE_TLS_S = 10.0  # the self-test's TLS round trip gives up after this


def tls_round_trip() -> str | None:
    """A TLS 1.3 handshake and a message each way between two transports in
    this process, the client checking the certificate it pinned: what every
    connection of the app needs of the bundled OpenSSL. ``None``: it worked;
    otherwise what went wrong."""
    identity = asset("smoke-tls.pem")
    pem = identity.read_text(encoding="ascii")
    certificate = pem[pem.index("-----BEGIN CERTIFICATE-----") :]
    expected = fingerprint(ssl.PEM_cert_to_DER_cert(certificate))
    deadline = time.monotonic() + SMOKE_TLS_S

    def until(done: Callable[[], bool], step: Callable[[], object]) -> bool:
        while not done():
            if time.monotonic() > deadline:
                return False
            step()
            time.sleep(0.001)
        return True

    ends = socket.socketpair()
    try:
        for end in ends:
            end.setblocking(False)
        server = TlsTransport(ends[0], server_context(str(identity)), server_side=True)
        client = TlsTransport(ends[1], client_context(), server_side=False)
        heard = {"server": bytearray(), "client": bytearray()}

        def step() -> None:
            for name, end in (("server", server), ("client", client)):
                if name == "client" and client.handshake() is not None:
                    continue  # the client drives its handshake; the server's reads do its own
                data = end.recv(64)
                if isinstance(data, bytes):
                    heard[name] += data

        if not until(lambda: client.handshake() is None, step):
            return "the TLS handshake did not finish"
        if fingerprint(client.peer_certificate() or b"") != expected:
            return "the server's certificate is not the one pinned"
        client.send(b"ping")
        if not until(lambda: heard["server"] == b"ping", step):
            return "the server did not hear the client"
        server.send(b"pong")
        if not until(lambda: heard["client"] == b"pong", step):
            return "the client did not hear the server"
    except (OSError, TransportClosed) as exc:  # ssl.SSLError is an OSError
        return f"TLS failed: {exc}"
    finally:
        for end in ends:
            end.close()
    return None


def smoke_test(root: ttk.App, settings: Settings) -> int:
    """Build every part of the UI and draw it in both themes, offline (the dialog
    searches nowhere for servers); settings untouched."""
    chat = ChatApp(
        root, settings, save_settings=lambda _settings: None, discovery_targets=lambda: ()
    )
    view = chat.view
    view.own_name = "you"
    view.set_users(["you", "Ana", "张伟"])
    now = time.time()
    samples = [
        ChatMessage(1, "Ana", "Hello \N{GRINNING FACE}, see https://example.org", now),
        ChatMessage(2, "you", "waves", now, action=True),
        ChatMessage(3, "张伟", "a private word for you", now, to="you"),
    ]
    for message in samples:
        view.add_message(message)
    view.add_notice("Ana joined")
    view.end_batch()
    view.set_lock(True)
    view.show_insecure(("Ana",))
    chat.open_dialog()
    # The safety words come from mnemonic's word list, a data file the bundle must carry.
    trust = TrustDialog(root, "192.0.2.1", 5000, "sha256:" + "0" * 64, on_answer=lambda _ok: None)
    root.deiconify()
    for _ in range(2):  # dark, then back
        chat.toggle_theme()
        root.update()
    shown = view.transcript_text()
    trust.destroy()
    chat.quit()
    if not all(message.text.split()[0] in shown for message in samples):
        print("chat-client smoke test failed: the transcript is incomplete", file=sys.stderr)
        return 1
    failed = tls_round_trip()
    try:
        local_networks()  # read, nothing sent: the bundle carries what lists them
    except OSError as exc:
        failed = failed or str(exc)
    if failed is not None:
        print(f"chat-client smoke test failed: {failed}", file=sys.stderr)
        return 1
    print(f"chat-client {app_version()} smoke test passed", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = setup_logging()
    settings = settings_store.load()
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("name", args.name))
        if value is not None
    }
    settings = replace(settings, **overrides)
    root = ttk.App(
        title="LAN Chat",
        theme="bootstrap-dark" if settings.dark else "bootstrap-light",
        size=(920, 640),
        minsize=(560, 420),
        iconphoto=None,
    )
    _icons = set_window_icon(root)  # held until the app ends (see there)
    root.withdraw()  # shown once connected; the dialog comes first

    root.report_callback_exception = ErrorReporter(root, path)
    if args.smoke_test:
        return smoke_test(root, settings)
    chat = ChatApp(root, settings, save_settings=settings_store.save)
    problems = check_fields(settings.host, str(settings.port), settings.name)
    if args.connect and not problems:
        chat.connect(settings.host, settings.port, settings.name)
    else:
        dialog = chat.open_dialog()
        if args.connect:
            dialog.show_error(" ".join(problems.values()))
    # Logging out or shutting down sends SIGTERM: leave the room politely.
    # Python runs the handler when Tk next calls into it (the pump ticks).
    signal.signal(signal.SIGTERM, lambda *_: root.after_idle(chat.quit))
    try:
        root.mainloop()
    except KeyboardInterrupt:
        chat.quit()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except tkinter.TclError as exc:  # no display, most often
        print(f"chat-client: cannot open a window: {exc}", file=sys.stderr)
        sys.exit(1)
