"""Files through the chat connection (PROTOCOL.md, "Files and images"):
one connection's uploads and downloads, and the threads that touch the
disk for them.

How this works: a session hands its file frames to its ``Transfers``,
which checks them at once, on the connection's thread, against what it
knows in memory (the uploads in progress and where each must go on, the
file store's records), answers what it can (``upload-ready``, every
refusal) and leaves the disk to ``FileService``'s two threads, which
hand results back through the connection's ``call_soon``:

- ``files-up`` writes uploads' chunks and finishes them (hash, image size,
  blob store), in the order they arrived, so one upload's chunks never
  overtake each other and its ``upload-done`` comes after its last chunk.
  A connection with ``WRITES_AHEAD`` chunks waiting for the disk, or an
  ``upload-done`` waiting for its ``uploaded``, is ``busy``: its input is
  not served meanwhile, so TCP slows the uploader down and the replies
  keep their order.
- ``files-down`` reads download ranges and encodes them as ``file-data``
  frames of ``FILE_DATA_CHUNK`` bytes, keeping the last ``ENCODED_CACHE``
  bytes of them: when a class downloads the same handout at once, each
  range is read and encoded once, not once per person. A connection reads ahead one range
  at most: the next is read when what it holds is down to one range's
  frames. The connection writes these frames only when it owes no chat
  frame (``Connection.flush``), and they never count towards the
  slow-reader bound, so downloads never delay anyone's chat; a
  connection asked for ``DOWNLOADS_QUEUED`` ranges is ``busy`` too.

Sizes are bounded before any work: a data frame's base64 before it is
decoded, a range's length before it is read.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar

from server.protocol import (
    HEADER,
    MAX_CHUNK,
    MAX_DOWNLOAD,
    MAX_UPLOADS,
    Download,
    ErrorCode,
    FileInfo,
    Message,
    ProtocolError,
    RemoteProtocolError,
    RuleViolation,
    Upload,
    UploadData,
    UploadDone,
    Uploaded,
    UploadReady,
    clean_file_name,
    clean_mime,
    clean_sha256,
    json_string,
)

if TYPE_CHECKING:
    from server.files import FileStore, Incoming

logger = logging.getLogger("server")

WRITES_AHEAD = 8
"""Upload chunks of one connection waiting for the disk before its input waits too."""
DOWNLOADS_QUEUED = 16
"""Download ranges one connection may have asked for before its input waits."""
FILE_DATA_CHUNK = 65_536
"""Bytes of file data per ``file-data`` frame: a chat frame waits behind one at most."""
ENCODED_CACHE = 8 * 1024 * 1024
"""Bytes of encoded ``file-data`` frames kept for other downloads of the same ranges."""
READ_AHEAD_FRAMES = MAX_DOWNLOAD // FILE_DATA_CHUNK
"""A connection's next range is read when it holds no more frames than this."""
# The longest base64 text of MAX_CHUNK bytes.
_MAX_DATA_TEXT = 4 * -(-MAX_CHUNK // 3)

T = TypeVar("T")
Result: TypeAlias = "T | ProtocolError"  # a job's value, or why it failed


class Asker(Protocol):
    """What ``Transfers`` needs of the session it serves (a fake one will do in tests)."""

    def reply(self, message: Message) -> None:
        """Queue ``message`` as a reply to this connection."""

    def refuse(self, error: ProtocolError) -> None:
        """Answer ``error`` (none of the file errors closes the connection)."""

    def later(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the connection's thread if it is still in the room. Any thread."""

    def files_ready(self) -> None:
        """``busy`` went false: serve the connection's input again."""

    def send_file_data(self, frames: list[bytes]) -> None:
        """Queue ``file-data`` frames behind the connection's chat frames."""

    def file_data_queued(self) -> int:
        """How many ``file-data`` frames the connection has not written yet."""


class _Worker:
    """One thread running jobs in the order given; each job's result goes to its ``done``."""

    def __init__(self, name: str) -> None:
        self._jobs: deque[Callable[[], None]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], T], done: Callable[[Result[T]], None]) -> None:
        def run() -> None:
            result: Result[T]
            try:
                result = job()
            except ProtocolError as exc:
                result = exc
            except Exception as exc:  # a bug, or a disk gone wrong: the asker still hears
                logger.exception("files: a job failed")
                result = RuleViolation(
                    ErrorCode.UPLOAD_INVALID, f"The server could not do that: {exc}."
                )
            done(result)

        with self._ready:
            if self._closed:
                return
            self._jobs.append(run)
            self._ready.notify()

    def close(self, timeout: float) -> None:
        """Stop once the jobs given so far are done."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            job()


class FileService:
    """The file store and the two threads that use it for every connection."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.uploads = _Worker("files-up")
        self.downloads = _Worker("files-down")
        self._owners = itertools.count(1)  # next() is atomic: loops call transfers()
        # Only files-down touches these.
        self._encoded: OrderedDict[tuple[str, int, int], list[bytes]] = OrderedDict()
        self._encoded_bytes = 0

    def transfers(self, asker: Asker) -> Transfers:
        """A new connection's transfers, under an owner token of its own."""
        return Transfers(self, asker, next(self._owners))

    def file_data(self, info: FileInfo, offset: int, length: int) -> list[bytes]:
        """The ``file-data`` frames of a range (on files-down): read and encoded, or kept."""
        key = (info.id, offset, length)
        frames = self._encoded.get(key)
        if frames is not None:
            self._encoded.move_to_end(key)
            return frames
        frames = _file_data(self.store.read(info.id, offset, length), info, offset)
        self._encoded[key] = frames
        self._encoded_bytes += sum(map(len, frames))
        while self._encoded_bytes > ENCODED_CACHE:
            _, dropped = self._encoded.popitem(last=False)
            self._encoded_bytes -= sum(map(len, dropped))
        return frames

    def close(self, timeout: float = 2.0) -> None:
        """Finish what was asked (uploads in progress are dropped), then close the store."""
        self.uploads.close(timeout)
        self.downloads.close(timeout)
        self.store.close()


@dataclass(slots=True)
class _Upload:
    incoming: Incoming
    size: int
    next: int = 0  # where the next chunk must start


def _invalid(message: str, in_reply_to: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.UPLOAD_INVALID, message, in_reply_to)


def _no_such_file(in_reply_to: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.NO_SUCH_FILE, "There is no such file.", in_reply_to)


class Transfers:
    """One connection's uploads and downloads. Called on the connection's thread only."""

    def __init__(self, service: FileService, asker: Asker, owner: int) -> None:
        self._service = service
        self._store = service.store
        self._asker = asker
        self.owner = owner
        self._uploads: dict[int, _Upload] = {}
        self._numbers = 0
        self._writing = 0  # chunks handed to files-up, not yet written
        self._finishing = 0  # upload-done handed to files-up, not yet answered
        self._ranges: deque[tuple[FileInfo, int, int]] = deque()
        self._reading = False
        self._closed = False

    @property
    def busy(self) -> bool:
        """Whether the connection's input should wait (see the module's docstring)."""
        return (
            self._writing >= WRITES_AHEAD
            or self._finishing > 0
            or len(self._ranges) >= DOWNLOADS_QUEUED
        )

    # -- uploads --------------------------------------------------------------

    def upload(self, upload: Upload) -> None:
        """``upload``: reserve room for the file and say where to send it."""
        if len(self._uploads) >= MAX_UPLOADS:
            raise _invalid(f"At most {MAX_UPLOADS} uploads can be in progress at once.", "upload")
        name = clean_file_name(upload.name)
        mime = clean_mime(upload.mime)
        incoming = self._store.reserve(self.owner, name, upload.size, mime)
        self._numbers += 1
        self._uploads[self._numbers] = _Upload(incoming, upload.size)
        self._asker.reply(UploadReady(self._numbers, MAX_CHUNK))

    def data(self, data: UploadData) -> None:
        """``upload-data``: check the chunk, then have it written."""
        number = data.upload
        upload = self._uploads.get(number)
        if upload is None:
            raise _invalid(f"There is no upload {_shown(number)} in progress.", UploadData.TYPE)
        if len(data.data) > _MAX_DATA_TEXT:
            self._drop(number)
            raise _invalid(f"A chunk can hold at most {MAX_CHUNK} bytes.", UploadData.TYPE)
        try:
            chunk = binascii.a2b_base64(data.data, strict_mode=True)
        except binascii.Error:
            self._drop(number)
            raise _invalid("The data is not base64.", UploadData.TYPE) from None
        if data.offset != upload.next:
            self._drop(number)
            raise _invalid(
                f"The data is out of order: it should start at {upload.next}.", UploadData.TYPE
            )
        if upload.next + len(chunk) > upload.size:
            self._drop(number)
            raise _invalid(
                f"That is more than the {upload.size} bytes the upload announced.", UploadData.TYPE
            )
        upload.next += len(chunk)
        self._writing += 1
        incoming = upload.incoming
        self._service.uploads.submit(
            lambda: incoming.write(data.offset, chunk),
            lambda result: self._asker.later(lambda: self._written(number, result)),
        )

    def _written(self, number: int, result: Result[None]) -> None:
        busy = self.busy
        self._writing -= 1
        if isinstance(result, ProtocolError) and number in self._uploads:
            self._drop(number)
            self._asker.refuse(_invalid(result.message, UploadData.TYPE))
        self._settled(busy)

    def done(self, done: UploadDone) -> None:
        """``upload-done``: have the upload checked and kept; ``uploaded`` answers it."""
        number = done.upload
        upload = self._uploads.get(number)
        if upload is None:
            raise _invalid(f"There is no upload {_shown(number)} in progress.", UploadDone.TYPE)
        digest = clean_sha256(done.sha256)
        if upload.next != upload.size:
            self._drop(number)
            raise _invalid(
                f"Only {upload.next} of the {upload.size} bytes announced arrived.",
                UploadDone.TYPE,
            )
        del self._uploads[number]
        self._finishing += 1
        incoming = upload.incoming
        self._service.uploads.submit(
            lambda: incoming.finish(digest),
            lambda result: self._asker.later(lambda: self._finished(number, result)),
        )

    def _finished(self, number: int, result: Result[FileInfo]) -> None:
        busy = self.busy
        self._finishing -= 1
        if isinstance(result, ProtocolError):
            self._asker.refuse(_invalid(result.message, UploadDone.TYPE))
        else:
            self._asker.reply(Uploaded(number, result.id))
        self._settled(busy)

    def _settled(self, was_busy: bool) -> None:
        """A change is made: if it ended ``busy``, the connection's input is served again."""
        if was_busy and not self.busy:
            self._asker.files_ready()

    def _drop(self, number: int) -> None:
        """Forget an upload the client got wrong; its temp file goes on files-up."""
        upload = self._uploads.pop(number)
        self._service.uploads.submit(upload.incoming.discard, _ignore)

    # -- posting ------------------------------------------------------------

    def postable(self, file_id: str, name: str) -> FileInfo:
        """The file ``name`` (this connection's member) may post, or ``no-such-file``."""
        info = self._store.readable(file_id, self.owner, name)
        if info is None:
            raise _no_such_file("say")
        return info

    def posted(self, file_id: str, sender: str, to: str | None) -> None:
        """The message carrying the file is said: whoever may see it may download it."""
        try:
            self._store.post(file_id, self.owner, sender, to)
        except RuleViolation:
            pass  # evicted since postable: its message's file then answers no-such-file

    # -- downloads ------------------------------------------------------------

    def download(self, download: Download, name: str) -> None:
        """``download``: queue the range; ``file-data`` frames answer it."""
        info = self._store.readable(download.file, self.owner, name)
        if info is None:
            raise _no_such_file(Download.TYPE)
        offset = 0 if download.offset is None else download.offset
        length = MAX_DOWNLOAD if download.length is None else download.length
        if not 0 <= offset <= info.size:
            raise RemoteProtocolError(
                ErrorCode.BAD_FIELD,
                f"`offset` must be from 0 to the file's size ({info.size}).",
                Download.TYPE,
            )
        if not 1 <= length <= MAX_DOWNLOAD:
            raise RemoteProtocolError(
                ErrorCode.BAD_FIELD, f"`length` must be from 1 to {MAX_DOWNLOAD}.", Download.TYPE
            )
        self._ranges.append((info, offset, length))
        self.pump()

    def pump(self) -> None:
        """Read the next range if the connection is running out of frames to send."""
        if self._reading or not self._ranges or self._closed:
            return
        if self._asker.file_data_queued() > READ_AHEAD_FRAMES:
            return
        busy = self.busy
        info, offset, length = self._ranges.popleft()
        self._reading = True
        service = self._service
        self._service.downloads.submit(
            lambda: service.file_data(info, offset, length),
            lambda result: self._asker.later(lambda: self._read(result)),
        )
        self._settled(busy)

    def _read(self, result: Result[list[bytes]]) -> None:
        self._reading = False
        if isinstance(result, ProtocolError):
            self._asker.refuse(_no_such_file(Download.TYPE))
        else:
            self._asker.send_file_data(result)
        self.pump()

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """The connection is gone: drop its uploads, and what it never posted."""
        if self._closed:
            return
        self._closed = True
        self._ranges.clear()
        for upload in self._uploads.values():
            self._service.uploads.submit(upload.incoming.discard, _ignore)
        self._uploads.clear()
        # After every write and finish it asked for, so that nothing it
        # uploaded is kept afterwards under an owner who is gone.
        store, owner = self._store, self.owner
        self._service.uploads.submit(lambda: store.forget(owner), _ignore)


def _file_data(data: bytes, info: FileInfo, offset: int) -> list[bytes]:
    """The ``file-data`` frames carrying ``data``, read from ``info``'s file at ``offset``."""
    end = offset + len(data)
    name = json_string(info.id).encode()
    if not data:
        return [_file_data_frame(name, offset, b"", offset >= info.size)]
    view = memoryview(data)
    return [
        _file_data_frame(
            name,
            offset + start,
            view[start : start + FILE_DATA_CHUNK],
            start + FILE_DATA_CHUNK >= len(data) and end >= info.size,
        )
        for start in range(0, len(data), FILE_DATA_CHUNK)
    ]


def _file_data_frame(file: bytes, offset: int, piece: bytes | memoryview, eof: bool) -> bytes:
    """``encode(FileData(...))`` without JSON's scan of the data: base64 needs no escapes."""
    payload = b"".join(
        (
            b'{"type":"file-data","file":',
            file,
            b',"offset":%d,"data":"' % offset,
            base64.b64encode(piece),
            b'","eof":true}' if eof else b'","eof":false}',
        )
    )
    return HEADER.pack(len(payload)) + payload


def _shown(number: int) -> str:
    return str(number) if abs(number) < 10**9 else "of that number"


def _ignore(_result: object) -> None:
    pass  # a discarded upload's temp file: nobody waits for it
