"""Files and images between the chat window and the connection: what the
view's file buttons ask for becomes an upload or a download, and each
transfer's events become a row, a picture, a saved or opened file.

How this works: ``FileSharing`` is the view's ``FileActions``. It calls
``ChatClient.upload``/``download``/``cancel`` and remembers, per transfer
id, what the transfer is for (``_Job``): an upload (perhaps of a pasted
picture in a temporary file, deleted when it ends), a Save… to the chosen
path, an Open or a picture into the cache (a download is written beside
its destination and renamed there once whole and verified, so the cache
only ever holds complete files). A picture is fetched by itself when the
message says it is a raster image no bigger than the setting; its
thumbnail is made on ``Thumbnails``' thread, and ``poll`` (each pump
tick) hands finished ones to the view. Failures
are a line in the transcript, in the words the transfer gave. Tk thread.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from app import attachments
from app.chat_view import ChatView
from app.file_card import short_name
from app.network import (
    ChatClient,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
)
from server.protocol import FileInfo

logger = logging.getLogger("app.file_sharing")

MB = 1024 * 1024
TransferEvent = TransferStarted | TransferProgress | TransferDone | TransferFailed


@dataclass(slots=True)
class _Job:
    """What one transfer is for: ``upload``, ``save``, ``open`` or ``picture``;
    ``temporary``: a file of ours to delete when it ends (a pasted picture);
    ``keep``: the cached file a download brings; ``open_too``: a picture's
    download that is to be opened as well, once it is in."""

    kind: str
    name: str
    file: FileInfo | None = None
    temporary: Path | None = None
    keep: Path | None = None
    open_too: bool = False


class FileSharing:
    """The view's file actions, over ``client()`` (the current connection)."""

    def __init__(
        self,
        view: Callable[[], ChatView],
        *,
        client: Callable[[], ChatClient | None],
        auto_download_mb: Callable[[], int],
        notice: Callable[[str, str], None],
        recipient: Callable[[], str | None] = lambda: None,
        opener: Callable[[Path], str | None] | None = None,
    ) -> None:
        self._view = view
        self._recipient = recipient  # who a file goes to privately, None: the room
        self._client = client
        self._auto_mb = auto_download_mb
        self._notice = notice
        self._opener = opener  # None: attachments.open_with_os, looked up at each call
        self._jobs: dict[int, _Job] = {}
        self._fetching: dict[str, int] = {}  # file id: the transfer bringing its picture
        self._thumbnails = attachments.Thumbnails()
        self._making: list[tuple[Future[Image.Image], FileInfo]] = []

    # -- what the view asks -------------------------------------------------------

    def attach(self, path: Path) -> None:
        self._upload(path)

    def _upload(self, path: Path, name: str | None = None) -> int | None:
        """Send the file at ``path`` (as ``name``); the transfer's id, or ``None``."""
        client = self._client()
        if client is None or not client.joined:
            self._notice(f"Not connected: {short_name(path.name)} was not sent.", "error")
            return None
        if not path.is_file():
            self._notice(f"{short_name(path.name)} is not a file that can be sent.", "error")
            return None
        transfer = client.upload(path, name=name, to=self._recipient())
        if transfer is None:
            self._notice("This server does not take files.", "error")
            return None
        self._jobs[transfer] = _Job("upload", name or path.name)
        return transfer

    def paste_image(self) -> bool:
        data = attachments.clipboard_png()
        if data is None:
            return False
        fd, temporary = tempfile.mkstemp(prefix="lan-chat-paste-", suffix=".png")
        path = Path(temporary)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as exc:
            path.unlink(missing_ok=True)
            self._notice(f"The pasted picture could not be kept to send: {exc}.", "error")
            return True
        transfer = self._upload(path, attachments.pasted_name())
        if transfer is None:
            path.unlink(missing_ok=True)
        else:
            self._jobs[transfer].temporary = path
        return True

    def save(self, file: FileInfo, dest: Path) -> None:
        self._download(file, dest, _Job("save", file.name, file))

    def open(self, file: FileInfo) -> None:
        """Open with the OS: the cached copy, or once it is downloaded."""
        kept = attachments.cached_path(file)
        if kept is not None and kept.is_file():
            attachments.touch(kept)
            self._open(kept)
            return
        fetching = self._fetching.get(file.id)
        if fetching is not None and fetching in self._jobs:  # on its way: open it then
            self._jobs[fetching].open_too = True
            return
        self._into_cache(file, "open")

    def open_image(self, file: FileInfo) -> None:
        """A picture, full size: in the OS's viewer (it is saved as the picture
        its media type says, so a name like "x.exe" never runs)."""
        self.open(file)

    def cancel(self, transfer: int) -> None:
        client = self._client()
        if client is not None:
            client.cancel(transfer)

    def shown(self, file: FileInfo) -> bool:
        if not attachments.is_picture(file) or file.size > self._auto_mb() * MB:
            return False
        kept = attachments.cached_path(file)
        if kept is None:
            return False
        if file.id in self._fetching:
            return True
        if kept.is_file():
            self._making.append((self._thumbnails.make(file, kept), file))
            return True
        return self._into_cache(file, "picture")

    # -- the transfers' events ----------------------------------------------------

    def handle(self, event: TransferEvent) -> None:
        view = self._view()
        match event:
            case TransferStarted(transfer=transfer, upload=upload, name=name, size=size):
                view.transfer_started(transfer, name, size, upload=upload)
            case TransferProgress(transfer=transfer, done=done, size=size):
                view.transfer_progress(transfer, done, size)
            case TransferDone(transfer=transfer):
                view.transfer_ended(transfer)
                job = self._jobs.pop(transfer, None)
                if job is not None:
                    self._done(job, event)
            case TransferFailed(transfer=transfer, reason=reason):
                view.transfer_ended(transfer)
                job = self._jobs.pop(transfer, None)
                if job is not None:
                    self._failed(job, reason)

    def _done(self, job: _Job, event: TransferDone) -> None:
        if job.file is not None and self._fetching.get(job.file.id) == event.transfer:
            del self._fetching[job.file.id]
        if job.kind == "upload":
            self._drop_temporary(job)
        elif job.kind == "save":
            where = f" as {event.path}" if event.path is not None else ""
            self._notice(f"Saved {short_name(job.name)}{where}.", "system")
        elif job.keep is not None and job.file is not None:
            if job.kind == "open" or job.open_too:
                self._open(job.keep)
            if job.kind == "picture":
                self._making.append((self._thumbnails.make(job.file, job.keep), job.file))

    def _failed(self, job: _Job, reason: str) -> None:
        self._drop_temporary(job)
        name = short_name(job.name)
        if job.file is not None and job.file.id in self._fetching:
            del self._fetching[job.file.id]
        if job.kind == "picture" and job.file is not None:
            self._view().image_unavailable(job.file.id, reason)
            return  # the card says it where the picture was to be
        verb = "Sending" if job.kind == "upload" else "Downloading"
        self._notice(f"{verb} {name} failed: {reason}", "error")

    def poll(self) -> None:
        """Show the thumbnails made since the last call (each pump tick)."""
        if not self._making:
            return
        waiting = []
        view = self._view()
        for future, file in self._making:
            if not future.done():
                waiting.append((future, file))
                continue
            try:
                view.show_image(file.id, future.result())
            except attachments.ThumbnailError as exc:
                view.image_unavailable(file.id, str(exc))
            except Exception as exc:  # a bug in making it: a card, and the log says why
                logger.exception("A thumbnail of %s failed", file.id)
                view.image_unavailable(file.id, f"The image could not be shown ({exc}).")
        self._making = waiting

    def connection_ended(self) -> None:
        """The connection is gone, and its transfers with it."""
        view = self._view()
        for transfer, job in list(self._jobs.items()):
            view.transfer_ended(transfer)
            self._drop_temporary(job)
            if job.kind == "picture" and job.file is not None:
                view.image_unavailable(job.file.id, "The connection ended before it came.")
        self._jobs.clear()
        self._fetching.clear()

    def close(self) -> None:
        self.connection_ended()
        self._thumbnails.close()
        self._making.clear()

    @property
    def jobs(self) -> dict[int, str]:
        """The transfers in progress and what each is for (for tests)."""
        return {transfer: job.kind for transfer, job in self._jobs.items()}

    # -- helpers --------------------------------------------------------------

    def _download(self, file: FileInfo, dest: Path, job: _Job) -> int | None:
        client = self._client()
        if client is None or not client.joined:
            self._notice(f"Not connected: {short_name(file.name)} cannot be fetched.", "error")
            return None
        transfer = client.download(file, dest)
        if transfer is None:
            self._notice(f"{short_name(file.name)} cannot be fetched from this server.", "error")
            return None
        self._jobs[transfer] = job
        return transfer

    def _into_cache(self, file: FileInfo, kind: str) -> bool:
        """Download ``file`` into the cache (``open`` or ``picture``)."""
        kept = attachments.cached_path(file)
        if kept is None:
            self._notice(f"{short_name(file.name)} has no proper digest to keep it by.", "error")
            return False
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._notice(f"The cache folder cannot be used: {exc.strerror or exc}.", "error")
            return False
        transfer = self._download(file, kept, _Job(kind, file.name, file, keep=kept))
        if transfer is None:
            return False
        if kind == "picture":
            self._fetching[file.id] = transfer
        return True

    def _open(self, path: Path) -> None:
        problem = (self._opener or attachments.open_with_os)(path)
        if problem is not None:
            self._notice(problem, "error")

    @staticmethod
    def _drop_temporary(job: _Job) -> None:
        if job.temporary is not None:
            try:
                job.temporary.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("Cannot delete %s: %s", job.temporary, exc)
            job.temporary = None
