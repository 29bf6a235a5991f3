"""``python -m app`` / ``chat-client``: open the chat window.

Absolute imports only: PyInstaller runs this file as a script.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
import time
import tkinter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import platformdirs
import ttkbootstrap as ttk
from PIL import Image, ImageTk

from app import settings as settings_store
from app.chat_app import ChatApp, app_version
from app.connect_dialog import check_fields
from app.paths import asset
from app.settings import Settings
from server.protocol import DEFAULT_PORT, ChatMessage

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


ICON_SIZES = (128, 64, 32, 16)


def set_window_icon(root: ttk.App) -> None:
    """Give every window the app's icon, at run time: Linux ignores the
    build's icon. On X11 all sizes travel in one property, which must fit in
    one request (about 256 kB): 256 px alone would not, so 128 px is the most."""
    path = asset("icon.png")
    if not path.exists():
        logger.warning("No window icon at %s", path)
        return
    source = Image.open(path)
    icons = [
        ImageTk.PhotoImage(source.resize((size, size), Image.Resampling.LANCZOS), master=root)
        for size in ICON_SIZES
    ]
    root.iconphoto(True, *icons)
    root.app_icons = icons  # Tk keeps no reference: without one the images vanish


def smoke_test(root: ttk.App, settings: Settings) -> int:
    """Build every part of the UI and draw it in both themes, offline; settings untouched."""
    chat = ChatApp(root, settings, save_settings=lambda _settings: None)
    view = chat.view
    view.own_name = "you"
    view.set_users(["you", "Ana", "张伟"])
    now = time.time()
    samples = [
        ChatMessage(1, "Ana", "Hello \N{GRINNING FACE}, see https://example.org", now),
        ChatMessage(2, "you", "waves", now, action=True),
        ChatMessage(3, "张伟", "a private word for you", now, to="you"),
    ]
    view.begin_batch()
    for message in samples:
        view.add_message(message)
    view.add_notice("Ana joined")
    view.end_batch()
    chat.open_dialog()
    root.deiconify()
    for _ in range(2):  # dark, then back
        chat.toggle_theme()
        root.update()
    shown = view.transcript_text()
    chat.quit()
    if not all(message.text.split()[0] in shown for message in samples):
        print("chat-client smoke test failed: the transcript is incomplete", file=sys.stderr)
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
    set_window_icon(root)
    root.withdraw()  # shown once connected; the dialog comes first

    def report(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
        logger.error("Unexpected error", exc_info=(exc_type, exc, tb))  # type: ignore[arg-type]
        ttk.Messagebox.show_error(
            f"Something went wrong: {exc}\n\nDetails are in {path}.", "LAN Chat", parent=root
        )

    root.report_callback_exception = report
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
