"""Uploads and downloads over the chat connection; no Tk here.

How this works: ``Transfers`` belongs to one ``ChatClient`` and is run by
its network thread only. The UI's calls (``ChatClient.upload``,
``download``, ``cancel``) reach it as commands; the network thread hands
it the server's answers (``upload-ready``, ``uploaded``, ``file-data``,
the errors in reply to file frames) and asks it, each time round its
loop, for the frames to send: ``control`` (small ones: ``upload``,
``download``) and ``data`` (``upload-data`` and ``upload-done``, asked for
only once every chat frame queued is in the bytes to send ahead of it,
and only while those are fewer than ``DATA_AHEAD``: chat overtakes upload
data, and memory stays bounded by a few chunks). It tells the UI through
``TransferStarted``, ``TransferProgress`` (at most ``PROGRESS_RATE`` a
second per transfer, and the last one at 100 %), ``TransferDone`` and
``TransferFailed``.

The server's errors carry no upload or file id, so each must be matched
to the one transfer it can be about:

- An ``upload`` is answered by ``upload-ready`` or an error, in order:
  both go to the oldest upload still asking (``_asking``).
- Data is sent for one upload at a time (``_sending``), and the next one's
  only after this one's ``upload-done`` is answered, so an error in reply
  to ``upload-data`` or ``upload-done`` is that upload's. An upload that
  fails or is cancelled while the server holds it still sends an
  ``upload-done`` (with a digest that cannot match), which makes the
  server discard it; the errors up to that one's answer are absorbed.
- A ``download`` is answered by ``file-data`` or one error, but data may
  be overtaken by errors. So at most one range is asked for and not yet
  answered by any data (``_unconfirmed``): an error in reply to
  ``download`` is about that range's transfer. A download keeps up to
  ``IN_FLIGHT`` ranges asked for, its data is checked frame by frame
  against the oldest range of its file (``_ranges``), and two downloads
  of one file never run at once (the second waits), so the data of a
  file is never ambiguous. At most ``MAX_DOWNLOADS`` run at once, each
  with its part file open; the rest wait in line, in order. A cancelled download's ranges stay until
  their data has come, absorbed, so a later download of the file does
  not take it for its own.

Nothing waits for the server without the person being able to cancel;
when the connection is lost every transfer fails (``lost``): nothing is
retried behind the person's back. The words sent with a file are never
silently lost: a failed upload's ``TransferFailed`` carries them in ``text``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import logging
import mimetypes
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from app.file_names import safe_file_name
from server.protocol import (
    MAX_CHUNK,
    MAX_CLIENT_FRAME,
    MAX_DOWNLOAD,
    MAX_UPLOADS,
    Download,
    Error,
    FileData,
    FileInfo,
    RuleViolation,
    Say,
    Upload,
    UploadData,
    UploadDone,
    Uploaded,
    UploadReady,
    clean_file_name,
    clean_mime,
    encode,
)

logger = logging.getLogger("app.transfers")

IN_FLIGHT = 4  # ranges one download keeps asked for
# Downloads under way at once, each with its part file open; the rest wait
# in line (a window fetching a page of pictures would otherwise open one
# file for each, and macOS allows a process 256).
MAX_DOWNLOADS = 4
DATA_AHEAD = 64 * 1024  # bytes waiting to be sent before no more upload data is queued
PROGRESS_RATE = 10.0  # TransferProgress events a second, at most, per transfer
# What an upload-done carries to make the server discard an upload: never
# the digest of anything, so the server answers it with upload-invalid.
_DISCARD = "0" * 64
FILE_FRAMES = frozenset({Upload.TYPE, UploadData.TYPE, UploadDone.TYPE, Download.TYPE})

LOST = "The connection was lost."
CANCELLED = "Cancelled."
CHANGED = "The file changed while it was being sent."
NONSENSE = "The server's answer made no sense."


# -- events for the UI ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """A transfer the UI asked for is under way (or waits in line)."""

    transfer: int
    upload: bool
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """``done`` bytes of ``size`` sent or received."""

    transfer: int
    done: int
    size: int


@dataclass(frozen=True, slots=True)
class TransferDone:
    """An upload posted (``file``: the message's file, ``None`` if the server's
    was unfit to show) or a download saved, checked, at ``path``."""

    transfer: int
    file: FileInfo | None
    path: Path | None


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """A transfer ended without its file; ``reason`` is one plain sentence.
    ``text``: for an upload, the words that were to go with the file and
    were not posted (give them back to the person)."""

    transfer: int
    reason: str
    text: str = ""


TransferEvent = TransferStarted | TransferProgress | TransferDone | TransferFailed


def file_id_fits(file_id: str) -> bool:
    """Whether a file id from the server is one to send back: short, printable ASCII."""
    return 0 < len(file_id) <= 128 and all("!" <= c <= "~" for c in file_id)


# -- the state of each transfer -----------------------------------------------------


@dataclass(eq=False)
class _Transfer:
    id: int
    name: str
    size: int
    failed: bool = False  # told the UI already; what is left is bookkeeping
    shown_at: float = float("-inf")  # the last TransferProgress


@dataclass(eq=False)
class _Upload(_Transfer):
    path: Path = Path()
    to: str | None = None
    text: str = ""
    file: BinaryIO | None = None
    changed: tuple[int, int] = (0, 0)  # size and mtime_ns, from fstat at the start
    upload: int | None = None  # the server's id for it
    chunk: int = MAX_CHUNK
    sent: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    done_sent: bool = False
    say: Say | None = None  # queued, waiting for its echo


@dataclass(eq=False)
class _Download(_Transfer):
    info: FileInfo | None = None
    dest: Path = Path()
    part: Path = Path()
    file: BinaryIO | None = None
    asked: int = 0  # bytes asked for so far
    all_asked: bool = False
    received: int = 0
    ranges: int = 0  # asked for, not yet all here
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


@dataclass(eq=False)
class _Range:
    owner: _Download
    file: str
    offset: int
    end: int
    got: int = 0


class Transfers:
    """Every transfer of one client (see the module docstring). ``post`` gives
    the UI an event; ``say`` queues a chat frame (a file's say, whose echo
    or refusal comes back through ``posted`` and ``refused``); ``has_room``
    tells whether the UI has room for more events (progress is skipped when not)."""

    def __init__(
        self,
        post: Callable[[TransferEvent], None],
        say: Callable[[Say], None],
        has_room: Callable[[], bool],
    ) -> None:
        self._post = post
        self._say = say
        self._has_room = has_room
        self._ids = itertools.count(1)
        self._waiting: deque[_Upload] = deque()  # in line for one of MAX_UPLOADS places
        self._holding: list[_Upload] = []  # the server holds them: asked, ready, sending
        self._asking: deque[_Upload] = deque()  # upload sent, not yet answered
        self._sending: _Upload | None = None  # the one upload whose data goes now
        self._posting: list[_Upload] = []  # uploaded; their say waits for its echo
        self._queued: deque[_Download] = deque()  # in line for one of MAX_DOWNLOADS places
        self._downloads: list[_Download] = []  # under way: not failed, not finished; in order
        self._ranges: deque[_Range] = deque()  # asked for, not all here, in order
        self._unconfirmed: _Range | None = None  # asked for, no data yet
        self._turn = 0  # the download whose turn it is to ask for a range

    def new_id(self) -> int:
        """A transfer id (any thread: ``itertools.count`` is atomic in CPython)."""
        return next(self._ids)

    # -- commands (the network thread, from the UI's calls) ----------------------

    def start_upload(
        self, transfer: int, path: Path, name: str | None, to: str | None, text: str
    ) -> None:
        shown = name if name is not None else path.name
        try:
            shown = clean_file_name(shown)
        except RuleViolation:  # a name the server would refuse, made one it takes
            shown = clean_file_name(safe_file_name(shown))
        upload = _Upload(transfer, shown, 0, path=path, to=to, text=text)
        try:
            upload.size = path.stat().st_size
        except OSError as exc:
            self._post(TransferStarted(transfer, True, shown, 0))
            self._fail(upload, f"Cannot read {shown}: {exc.strerror or 'it is not there'}.")
            return
        self._post(TransferStarted(transfer, True, shown, upload.size))
        self._waiting.append(upload)

    def start_download(self, transfer: int, info: FileInfo, dest: Path) -> None:
        download = _Download(transfer, info.name, info.size, info=info, dest=dest)
        download.part = dest.with_name(dest.name + ".part")
        self._post(TransferStarted(transfer, False, info.name, info.size))
        self._queued.append(download)

    def cancel(self, transfer: int) -> None:
        """Cancel ``transfer`` unless it is over (or its say is out: too late)."""
        for upload in (*self._waiting, *self._holding):
            if upload.id == transfer and not upload.failed:
                self._fail(upload, CANCELLED)
                return
        for download in (*self._queued, *self._downloads):
            if download.id == transfer:
                self._fail(download, CANCELLED)
                return

    def lost(self, reason: str = LOST) -> None:
        """The connection is gone: every transfer fails, nothing is kept."""
        uploads = [*self._waiting, *self._holding, *self._posting]
        self._waiting.clear()
        self._holding.clear()
        self._asking.clear()
        self._posting.clear()
        self._sending = None
        for upload in uploads:
            if not upload.failed:
                self._fail(upload, reason)
            self._close(upload)
        for download in [*self._queued, *self._downloads]:  # each leaves its list as it fails
            self._fail(download, reason)
        self._ranges.clear()
        self._unconfirmed = None

    # -- frames to send ---------------------------------------------------------

    def control(self) -> list[bytes]:
        """The small frames to send now: uploads to start, downloads to ask for."""
        frames = []
        while self._waiting and len(self._holding) < MAX_UPLOADS:
            upload = self._waiting.popleft()
            if self._open(upload):
                frames.append(self._upload_frame(upload))
        if self._sending is None:  # the next one's turn (data discards a cancelled one)
            ready = [u for u in self._holding if u.upload is not None and not u.done_sent]
            self._sending = ready[0] if ready else None
        while self._queued and len(self._downloads) < MAX_DOWNLOADS:
            download = self._queued.popleft()
            try:
                download.file = open(download.part, "wb")  # noqa: SIM115 - closed when it ends
            except OSError as exc:
                self._fail(download, f"Cannot save {download.dest.name}: {exc.strerror or exc}.")
                continue
            self._downloads.append(download)
        frames.extend(self._requests())
        return frames

    def has_data(self) -> bool:
        """Whether ``data`` has a frame to give."""
        sending = self._sending
        return sending is not None and not sending.done_sent

    def data(self) -> bytes | None:
        """The next upload frame of the upload whose turn it is: data, or its
        ``upload-done``; ``None``: nothing to send now."""
        upload = self._sending
        if upload is None or upload.done_sent:
            return None
        if upload.failed:  # cancelled: the server discards what it has
            return self._discard(upload)
        assert upload.file is not None and upload.upload is not None
        try:
            if upload.sent == upload.size:
                if upload.file.read(1) or self._stat(upload.file) != upload.changed:
                    self._fail(upload, CHANGED)
                    return self._discard(upload)
                upload.done_sent = True
                self._close(upload)
                return encode(UploadDone(upload.upload, upload.digest.hexdigest()))
            chunk = upload.file.read(min(upload.chunk, upload.size - upload.sent))
        except OSError as exc:
            self._fail(upload, f"Cannot read {upload.name}: {exc.strerror or exc}.")
            return self._discard(upload)
        if not chunk:
            self._fail(upload, CHANGED)
            return self._discard(upload)
        upload.digest.update(chunk)
        frame = UploadData(upload.upload, upload.sent, base64.b64encode(chunk).decode("ascii"))
        upload.sent += len(chunk)
        self._progress(upload, upload.sent)
        return encode(frame, MAX_CLIENT_FRAME)

    # -- frames from the server ---------------------------------------------------

    def on_upload_ready(self, ready: UploadReady) -> list[bytes]:
        """``upload-ready``: the oldest upload asking has the server's id."""
        if not self._asking:
            logger.warning("dropped an upload-ready nobody asked for")
            return []
        upload = self._asking.popleft()
        taken = any(u.upload == ready.upload for u in self._holding)
        if taken or ready.chunk < 1:
            self._holding.remove(upload)  # the server's state for it is unknowable
            self._close(upload)
            if not upload.failed:
                self._fail(upload, NONSENSE)
            return []
        upload.upload, upload.chunk = ready.upload, min(ready.chunk, MAX_CHUNK)
        return self.control()

    def on_uploaded(self, uploaded: Uploaded) -> list[bytes]:
        """``uploaded``: the upload whose data went last is kept; post it (or,
        if it failed meanwhile, forget it)."""
        upload = self._sending
        if upload is None or not upload.done_sent or upload.upload != uploaded.upload:
            logger.warning("dropped an uploaded that answers no upload-done")
            return []
        self._finished_sending(upload)
        if not upload.failed:
            if not file_id_fits(uploaded.file):
                self._fail(upload, NONSENSE)
            else:
                upload.say = Say(upload.text, to=upload.to, file=uploaded.file)
                self._posting.append(upload)
                self._say(upload.say)
        return self.control()

    def on_error(self, error: Error) -> list[bytes]:
        """An error in reply to a file frame (``FILE_FRAMES``): the transfer it is
        about fails with the server's words; returns the frames to send."""
        reply = error.in_reply_to
        frames: list[bytes] = []
        if reply == Upload.TYPE:
            if not self._asking:
                logger.warning("dropped an error about no upload: %s", error.code)
                return []
            upload = self._asking.popleft()
            self._holding.remove(upload)
            self._close(upload)
            if not upload.failed:
                self._fail(upload, error.message)
        elif reply in (UploadData.TYPE, UploadDone.TYPE):
            if self._sending is None:
                logger.warning("dropped an error about no upload's data: %s", error.code)
                return []
            upload = self._sending
            if not upload.failed:
                self._fail(upload, error.message)
            if reply == UploadDone.TYPE:
                self._finished_sending(upload)
            elif not upload.done_sent:
                frames.append(self._discard(upload))
        elif reply == Download.TYPE:
            asked = self._unconfirmed
            if asked is None:
                logger.warning("dropped an error about no download: %s", error.code)
                return []
            self._unconfirmed = None
            self._ranges.remove(asked)
            asked.owner.ranges -= 1
            if asked.owner in self._downloads:
                self._fail(asked.owner, error.message)
        return frames + self.control()

    def on_file_data(self, data: FileData) -> list[bytes]:
        """``file-data``: checked against the oldest range asked for of its file."""
        wanted = next((r for r in self._ranges if r.file == data.file), None)
        if wanted is None:
            logger.warning("dropped file data nobody asked for")
            return []
        owner = wanted.owner
        checked = self._check(wanted, data)
        if isinstance(checked, str):
            # Its file's data cannot be followed any more: drop its ranges.
            for each in [r for r in self._ranges if r.owner is owner]:
                self._ranges.remove(each)
                if each is self._unconfirmed:
                    self._unconfirmed = None
            owner.ranges = 0
            if owner in self._downloads:
                self._fail(owner, checked)
            return self.control()
        if wanted is self._unconfirmed:
            self._unconfirmed = None
        wanted.got += len(checked)
        if wanted.offset + wanted.got == wanted.end:
            self._ranges.remove(wanted)
            owner.ranges -= 1
        if owner in self._downloads:
            self._write(owner, checked)
        return self.control()

    def posted(self, say: Say, file: FileInfo | None) -> None:
        """The echo of a file's ``say``: that upload is done."""
        for upload in self._posting:
            if upload.say is say:
                self._posting.remove(upload)
                self._post(TransferDone(upload.id, file, None))
                return

    def refused(self, say: Say, message: str) -> bool:
        """The server refused a file's ``say``; ``False``: not one of ours."""
        for upload in self._posting:
            if upload.say is say:
                self._posting.remove(upload)
                reason = f"The file was not posted: {message}"
                self._fail(upload, reason if reason.endswith((".", "!", "?")) else reason + ".")
                return True
        return False

    def unsent(self, say: Say) -> bool:
        """Whether ``say`` is a file's (``lost`` gives back its words)."""
        return any(upload.say is say for upload in self._posting)

    # -- the work ---------------------------------------------------------------

    def _open(self, upload: _Upload) -> bool:
        """Open ``upload``'s file and take its size; ``False``: it failed."""
        if upload.failed:
            return False
        try:
            upload.file = open(upload.path, "rb")  # noqa: SIM115 - closed in _close
            upload.changed = self._stat(upload.file)
        except OSError as exc:
            self._close(upload)
            self._fail(upload, f"Cannot read {upload.name}: {exc.strerror or exc}.")
            return False
        upload.size = upload.changed[0]
        self._holding.append(upload)
        self._asking.append(upload)
        return True

    def _upload_frame(self, upload: _Upload) -> bytes:
        mime, _ = mimetypes.guess_type(upload.name, strict=False)
        try:
            mime = clean_mime(mime) if mime is not None else None
        except RuleViolation:
            mime = None  # the server's default
        return encode(Upload(upload.name, upload.size, mime), MAX_CLIENT_FRAME)

    @staticmethod
    def _stat(file: BinaryIO) -> tuple[int, int]:
        stat = os.fstat(file.fileno())
        return stat.st_size, stat.st_mtime_ns

    def _discard(self, upload: _Upload) -> bytes:
        """The ``upload-done`` that makes the server discard ``upload``."""
        assert upload.upload is not None
        upload.done_sent = True
        self._close(upload)
        return encode(UploadDone(upload.upload, _DISCARD))

    def _finished_sending(self, upload: _Upload) -> None:
        self._sending = None
        self._holding.remove(upload)
        self._close(upload)

    def _requests(self) -> list[bytes]:
        """Ask for the next range of a download, taking turns, while no range
        asked for is unanswered (see the module docstring)."""
        downloads = self._downloads
        if self._unconfirmed is not None:
            return []
        for step in range(len(downloads)):
            download = downloads[(self._turn + step) % len(downloads)]
            if download.all_asked or download.ranges >= IN_FLIGHT or self._busy(download):
                continue
            assert download.info is not None
            file_id, start = download.info.id, download.asked
            length = min(MAX_DOWNLOAD, download.size - start) or MAX_DOWNLOAD  # 0 bytes: once
            asked = _Range(download, file_id, start, min(start + length, download.size))
            download.asked = asked.end
            download.all_asked = asked.end >= download.size
            download.ranges += 1
            self._ranges.append(asked)
            self._unconfirmed = asked
            self._turn = (self._turn + step + 1) % len(downloads)
            return [encode(Download(file_id, start, length), MAX_CLIENT_FRAME)]
        return []

    def _busy(self, download: _Download) -> bool:
        """Whether another download of the same file goes first: an earlier one,
        or a cancelled one whose data is still to come."""
        assert download.info is not None
        file_id = download.info.id
        earlier = self._downloads[: self._downloads.index(download)]
        return any(d.info is not None and d.info.id == file_id for d in earlier) or any(
            r.file == file_id and r.owner is not download for r in self._ranges
        )

    def _check(self, wanted: _Range, data: FileData) -> bytes | str:
        """``data``'s bytes if it is the next part of ``wanted``, else why not."""
        if data.offset != wanted.offset + wanted.got:
            return "The server sent the wrong part of the file."
        # base64 of more than the range cannot be right: refused before decoding.
        if len(data.data) > 4 * ((wanted.end - data.offset + 2) // 3):
            return "The server sent more of the file than was asked for."
        try:
            chunk = base64.b64decode(data.data, validate=True)
        except (binascii.Error, ValueError):
            return "The server sent data that is not valid."
        end = data.offset + len(chunk)
        if end > wanted.end:
            return "The server sent more of the file than was asked for."
        if not chunk and not data.eof:
            return "The server sent an empty part of the file."
        if data.eof != (end == wanted.owner.size):
            return "The server sent the end of the file in the wrong place."
        if data.eof and end != wanted.end:
            return "The server sent less of the file than was asked for."
        return chunk

    def _write(self, download: _Download, chunk: bytes) -> None:
        assert download.file is not None and download.info is not None
        try:
            download.file.write(chunk)
        except OSError as exc:
            self._fail(download, f"Cannot save {download.dest.name}: {exc.strerror or exc}.")
            return
        download.digest.update(chunk)
        download.received += len(chunk)
        self._progress(download, download.received)
        if download.received < download.size or download.ranges:
            return
        if download.digest.hexdigest() != download.info.sha256.lower():
            self._fail(download, "The file arrived damaged: its SHA-256 does not match.")
            return
        try:
            download.file.close()
            os.replace(download.part, download.dest)
        except OSError as exc:
            self._fail(download, f"Cannot save {download.dest.name}: {exc.strerror or exc}.")
            return
        self._downloads.remove(download)
        self._post(TransferDone(download.id, None, download.dest))

    def _progress(self, transfer: _Transfer, done: int) -> None:
        now = time.monotonic()
        last = done >= transfer.size
        if last or (now - transfer.shown_at >= 1 / PROGRESS_RATE and self._has_room()):
            transfer.shown_at = now
            self._post(TransferProgress(transfer.id, done, transfer.size))

    def _fail(self, transfer: _Upload | _Download, reason: str) -> None:
        """Tell the UI ``transfer`` failed; what the server holds of it stays
        in the books until the server's answers about it are in."""
        transfer.failed = True
        if isinstance(transfer, _Download):
            if transfer in self._downloads:
                self._downloads.remove(transfer)
            if transfer in self._queued:
                self._queued.remove(transfer)
            if transfer.file is not None:
                transfer.file.close()
                transfer.file = None
                try:
                    os.unlink(transfer.part)
                except OSError:
                    logger.warning("could not remove %s", transfer.part)
            self._post(TransferFailed(transfer.id, reason))
            return
        if transfer in self._waiting:
            self._waiting.remove(transfer)
        # One the server holds is discarded when its turn to send comes (data, control).
        self._post(TransferFailed(transfer.id, reason, transfer.text))

    @staticmethod
    def _close(upload: _Upload) -> None:
        if upload.file is not None:
            upload.file.close()
            upload.file = None
