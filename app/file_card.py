"""The widgets of a shared file: its card in the transcript, and a row per
transfer (upload or download) with a progress bar and a cancel button.

A card shows what the message says of the file (an icon for its kind,
its name as ``shown_file_name`` makes it safe to show, on one line and
shortened in the middle, its size) and offers Save… and Open; what they
do is the caller's. A transfer row is told its progress and says nothing
of the network. Tk thread only.
"""

from __future__ import annotations

from collections.abc import Callable

import ttkbootstrap as ttk

from app.file_names import human_size, shown_file_name
from server.protocol import FileInfo

SHOWN_NAME = 40  # characters of a name a card or row shows; the end (its kind) stays
# An icon per kind of file, by the start of its media type (then the rest).
ICONS = (
    ("image/", "file-earmark-image-fill"),
    ("audio/", "file-earmark-music-fill"),
    ("video/", "file-earmark-play-fill"),
    ("text/", "file-earmark-text-fill"),
    ("application/pdf", "file-earmark-pdf-fill"),
    ("application/zip", "file-earmark-zip-fill"),
    ("application/x-7z", "file-earmark-zip-fill"),
    ("application/gzip", "file-earmark-zip-fill"),
    ("application/x-tar", "file-earmark-zip-fill"),
    ("application/json", "file-earmark-code-fill"),
)


def short_name(name: str, limit: int = SHOWN_NAME) -> str:
    """``name`` made safe to show (one line, every control or direction mark
    shown as an escape) and at most ``limit`` characters, its kind kept."""
    return shown_file_name(name, limit)


def icon_name(mime: str) -> str:
    mime = mime.lower()
    for start, icon in ICONS:
        if mime.startswith(start):
            return str(icon)
    return "file-earmark-fill"


def describe(file: FileInfo) -> str:
    """A card's words in one line, for the transcript's text: "[file: x.pdf, 1.2 MB]"."""
    return f"[file: {short_name(file.name)}, {human_size(file.size)}]"


class FileCard(ttk.Frame):
    """A file in the transcript (``master``: the Text it is embedded in)."""

    def __init__(
        self,
        master: ttk.Window | ttk.Frame | object,
        file: FileInfo,
        *,
        on_save: Callable[[FileInfo], None],
        on_open: Callable[[FileInfo], None],
        note: str = "",
    ) -> None:
        super().__init__(master, padding=(8, 6), borderwidth=1, relief="solid")  # type: ignore[arg-type]
        self.file = file
        self.icon_label = ttk.Label(self, icon=icon_name(file.mime), bootstyle="secondary")
        self.icon_label.grid(row=0, column=0, rowspan=2, padx=(0, 8))
        self.name_label = ttk.Label(self, text=short_name(file.name))
        self.name_label.grid(row=0, column=1, sticky="w")
        size = human_size(file.size) + (f" · {note}" if note else "")
        self.size_label = ttk.Label(self, text=size, bootstyle="secondary")
        self.size_label.grid(row=1, column=1, sticky="w")
        self.save_button = ttk.Button(
            self, text="Save…", bootstyle="primary-outline", command=lambda: on_save(file)
        )
        self.save_button.grid(row=0, column=2, rowspan=2, padx=(12, 0))
        self.open_button = ttk.Button(
            self, text="Open", bootstyle="secondary-outline", command=lambda: on_open(file)
        )
        self.open_button.grid(row=0, column=3, rowspan=2, padx=(6, 0))

    @property
    def text(self) -> str:
        return describe(self.file)


class TransferRow(ttk.Frame):
    """One upload or download in progress: its name, a bar, how far, cancel."""

    def __init__(
        self,
        master: ttk.Frame,
        name: str,
        size: int,
        *,
        upload: bool,
        on_cancel: Callable[[], None],
    ) -> None:
        super().__init__(master, padding=(0, 2))
        self.columnconfigure(1, weight=1)
        self.upload = upload
        verb = "Sending" if upload else "Receiving"
        self.name_label = ttk.Label(
            self,
            text=f"{verb} {short_name(name, 40)}",
            icon="file-earmark-arrow-up-fill" if upload else "download",
            compound="left",
        )
        self.name_label.grid(row=0, column=0, sticky="w", padx=(0, 8))
        self.bar = ttk.Progressbar(self, maximum=max(1, size), value=0, bootstyle="info")
        self.bar.grid(row=0, column=1, sticky="we")
        self.done_label = ttk.Label(self, text="", bootstyle="secondary", width=18, anchor="e")
        self.done_label.grid(row=0, column=2, padx=(8, 0))
        self.cancel_button = ttk.Button(
            self, text="Cancel", icon="x-lg", bootstyle="secondary-link", command=on_cancel
        )
        self.cancel_button.grid(row=0, column=3, padx=(4, 0))
        self.progress(0, size)

    def progress(self, done: int, size: int) -> None:
        size = max(1, size)
        done = max(0, min(done, size))
        self.bar.configure(maximum=size, value=done)
        self.done_label.configure(text=f"{done * 100 // size} % of {human_size(size)}")

    @property
    def fraction(self) -> float:
        return float(self.bar.cget("value")) / max(1.0, float(self.bar.cget("maximum")))
