"""The server's files: uploads streamed to disk, kept once by their SHA-256, under a quota.

How this works. ``FileStore`` keeps, in memory behind one lock, every file
record (a file id: its name, media type, blob, who may download it) and
every blob (the bytes, one file in ``blobs/`` named by their SHA-256, which
any number of records may share). The I/O loops call ``reserve``,
``post``, ``readable`` and ``forget``: they only read and change those
maps and never touch the disk. Workers call ``Incoming.write`` /
``finish`` and ``read``, which do the disk work outside the lock.

An upload (``Incoming``) streams its chunks, in order, to a temporary file
in ``incoming/`` (opened at the first chunk, on the worker) and hashes
them as they come, so a file is never held whole in memory. ``finish``
checks the size and the hash, reads an image's width and height from its
header (refusing an image of more pixels than Pillow's
``MAX_IMAGE_PIXELS``), and keeps it: bytes already kept just drop the
temporary file; new ones are first made room for (the oldest blobs and
every record of theirs are evicted until the quota holds them) and then
moved into ``blobs/``. Moving a blob in and deleting one are serialised by
a second lock that the loops never take, so an upload of some bytes never
races the deletion of the same bytes.

What survives a restart is what was posted: the index
(``index.sqlite3``: ``blobs``, ``files`` and ``readers`` tables) keeps the
posted records. SQLite rather than a JSON file rewritten whole, because a
post then writes its one row and not every record there is, and a commit
in WAL mode survives ``kill -9``. A thread of the store's own
(``files-writer``) does every write: changes mark a file id or a blob
"dirty" and wake it; it takes all that is dirty at once, writes the
current state of each in one transaction (so a burst of posts is one
commit), and also deletes the temporary files and unused blobs handed to
it by the loops. If a commit fails (a full disk), the store goes on in
memory and tries again every ``RETRY_EVERY_S``. Unposted records belong to
a connection (its owner token), at most ``MAX_UNPOSTED`` of them, and are
forgotten with it; once posted, the names it was posted to (or everyone)
say who may download a file. At start the index is read back, records
whose blob is missing or of the wrong size are dropped, and so are blobs no
record uses and what ``incoming/`` held.

Blobs are not fsynced: like the history (``synchronous=NORMAL``), a file
posted survives the process being killed, not a power cut; at start a
blob of the wrong size is dropped with its records.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from server.protocol import ErrorCode, FileInfo, RuleViolation
from server.store.lock import StoreError

logger = logging.getLogger("server")

INDEX_FILE = "index.sqlite3"
SCHEMA_VERSION = 1
RETRY_EVERY_S = 1.0  # between tries of a commit that failed
# Uploads a connection may have finished and not yet posted; past it the
# oldest goes (a client posts what it uploads at once; this bounds the
# records one connection can pile up by uploading the same bytes again).
MAX_UNPOSTED = 64
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS, should it be switched off
WEBP_MIME = "image/webp"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, stored REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, name TEXT NOT NULL, mime TEXT NOT NULL,
    width INTEGER, height INTEGER, public INTEGER NOT NULL, stored REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readers (
    file TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (file, name)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"""
# What the index may name: a blob's name is a path, so nothing else is read back.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_ID = re.compile(r"f-[0-9a-f]{24}")


def new_file_id() -> str:
    """A file id no one can guess: ``f-`` and 24 hex digits (96 random bits)."""
    return "f-" + secrets.token_hex(12)


def _mib(size: int) -> str:
    value = size / 2**20
    return f"{value:,.0f} MiB" if value >= 10 else f"{value:.3g} MiB"


def _invalid(message: str) -> RuleViolation:
    return RuleViolation(ErrorCode.UPLOAD_INVALID, message)


def _no_such_file() -> RuleViolation:
    return RuleViolation(ErrorCode.NO_SUCH_FILE, "There is no such file (or it is no longer kept).")


def _cannot_keep(error: OSError) -> RuleViolation:
    return _invalid(f"The server could not keep the file: {error.strerror or error}.")


@dataclass(slots=True)
class _Blob:
    size: int
    stored: float
    files: set[str] = field(default_factory=set)  # the records that use it


@dataclass(slots=True)
class _Record:
    info: FileInfo
    stored: float
    owner: int | None  # the uploading connection, until posted
    posted: bool = False
    public: bool = False
    readers: set[str] = field(default_factory=set)  # names, for private posts


@dataclass(slots=True)
class _Batch:
    """What the writer takes at once: file ids and blobs to write, files to delete."""

    files: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)  # whose row goes if the blob is gone
    drop_blobs: set[str] = field(default_factory=set)  # blob files to delete if unused
    uploads: list[Incoming] = field(default_factory=list)  # temporary files to delete

    def __bool__(self) -> bool:
        return bool(self.files or self.blobs or self.drop_blobs or self.uploads)


class Incoming:
    """One upload in progress. ``write`` and ``finish`` run on a worker, one call
    at a time; ``discard`` on any thread. Its state is guarded by the store's lock."""

    def __init__(
        self, store: FileStore, upload_id: int, *, owner: int, name: str, size: int, mime: str
    ) -> None:
        self.upload_id = upload_id
        self.owner = owner
        self.name = name
        self.size = size
        self.mime = mime
        self.received = 0  # bytes written so far
        self._store = store
        self._path = store.incoming_folder / f"{upload_id}-{secrets.token_hex(8)}.part"
        self._file: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._busy = False  # a worker is in write or finish
        self._done = False  # finished or discarded

    @property
    def path(self) -> Path:
        """The temporary file (which exists from the first chunk until the end)."""
        return self._path

    def write(self, offset: int, data: bytes) -> None:
        """Append ``data``, which must start at ``offset``, where the last chunk ended."""
        with self._store._lock:
            self._enter()
            behind = self.received
        try:
            if offset != behind:
                raise _invalid(
                    f"Data at byte {offset} does not follow the {behind} bytes sent; "
                    "the upload is discarded."
                )
            if behind + len(data) > self.size:
                raise _invalid(
                    f"More data than the {self.size} bytes announced; the upload is discarded."
                )
            try:
                if self._file is None:
                    self._file = self._create()
                self._file.write(data)
            except OSError as error:
                raise _cannot_keep(error) from error
            self._hash.update(data)
            self.received += len(data)
        except BaseException:  # refused, or anything else: the upload is over
            self._abandon()
            raise
        self._leave()

    def finish(self, sha256: str) -> FileInfo:
        """Check the size and ``sha256`` (hex), keep the file, return its record."""
        with self._store._lock:
            self._enter()
        try:
            if self.received != self.size:
                raise _invalid(
                    f"The upload ended after {self.received} of its {self.size} bytes; "
                    "it is discarded."
                )
            digest = self._hash.hexdigest()
            if sha256.lower() != digest:
                raise _invalid("The file's SHA-256 does not match its data; it is discarded.")
            try:
                if self._file is None:  # an empty file
                    self._file = self._create()
                self._file.close()
            except OSError as error:
                raise _cannot_keep(error) from error
            width, height, mime = None, None, self.mime
            image = image_size(self._path)
            if image is not None:
                width, height, mime = image
            return self._store._keep(self, digest, width, height, mime)
        except BaseException:  # refused, or anything else: the upload is over
            self._abandon()
            raise

    def discard(self) -> None:
        """Give the upload up (idempotent): its temporary file is deleted soon,
        off the caller's thread."""
        store = self._store
        with store._lock:
            if self._done:
                return
            store._release(self)
            if self._busy:
                return  # the worker in write or finish deletes it on its way out
        store._delete_upload(self)

    # -- the worker's side ---------------------------------------------------

    def _enter(self) -> None:
        """Start a call (under the store's lock)."""
        if self._done:
            raise _invalid("This upload is not in progress (it was finished or cancelled).")
        if self._busy:
            raise _invalid("This upload is already busy with another chunk.")
        self._busy = True

    def _leave(self) -> None:
        with self._store._lock:
            self._busy = False
            discarded = self._done
        if discarded:  # while we wrote
            self._delete_now()

    def _abandon(self) -> None:
        """A call failed: the upload is over, its file deleted (on this worker)."""
        with self._store._lock:
            self._busy = False
            self._store._release(self)
        self._delete_now()

    def _create(self) -> IO[bytes]:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return os.fdopen(fd, "wb")

    def _delete_now(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk's buffered data: dropped anyway
                self._file.close()
        with contextlib.suppress(OSError):  # gone already, or left for the next start
            self._path.unlink()


class FileStore:
    """Files kept in ``folder`` (``<data-dir>/files``), ``max_file`` bytes each at
    most and ``quota`` bytes in all. Thread-safe; see the module's docstring.

    Raises ``StoreError`` when the index cannot be opened or read.
    """

    def __init__(
        self, folder: Path, *, max_file: int, quota: int, clock: Callable[[], float] = time.time
    ) -> None:
        if max_file < 0 or quota < 0:
            raise ValueError(f"limits are at least 0 bytes, not {max_file} and {quota}")
        self.folder = folder
        self.blob_folder = folder / "blobs"
        self.incoming_folder = folder / "incoming"
        self.max_file = max_file
        self.quota = quota
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits on it
        self._flushed = threading.Condition(self._lock)  # flush waits on it
        # Moving a blob in and deleting one (workers and the writer only).
        self._blob_lock = threading.Lock()
        self._blobs: OrderedDict[str, _Blob] = OrderedDict()  # oldest stored first
        self._records: dict[str, _Record] = {}
        # Unposted file ids by owner token, oldest first (a dict as an ordered set).
        self._unposted: dict[int, dict[str, None]] = {}
        self._uploads: dict[int, set[Incoming]] = {}  # uploads in progress by owner
        self._upload_ids = itertools.count(1)
        self._used = 0
        self._dirty = _Batch()
        self._queued = 0  # changes queued so far
        self._written = 0  # of those, how many the writer has been through
        self._retry_at = 0.0  # while commits fail
        self._failing = False
        self._stopping = False
        self._stopped = False  # the writer is gone
        self._closed = False
        try:
            for path in (folder, self.blob_folder, self.incoming_folder):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            for leftover in self.incoming_folder.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        except OSError as error:
            raise StoreError(f"The files folder {folder} cannot be used: {error}.") from error
        self._connection = self._open_index()
        try:
            self._prune_blob_folder()
            with self._lock:
                evicted = self._make_room(0)  # a quota lowered since the last run
        except BaseException:
            self._connection.close()
            raise
        self._evict(evicted)
        self._writer = threading.Thread(target=self._run, name="files-writer", daemon=True)
        self._writer.start()

    # -- the loops' side: memory only ------------------------------------------

    @property
    def used(self) -> int:
        """Bytes of blobs kept."""
        with self._lock:
            return self._used

    @property
    def max_size(self) -> int:
        """The largest upload taken: the per-file limit, or the quota if smaller."""
        return min(self.max_file, self.quota)

    def reserve(self, owner: int, name: str, size: int, mime: str) -> Incoming:
        """Start an upload by connection ``owner`` of ``name`` (cleaned) of ``size`` bytes."""
        if size < 0:
            raise RuleViolation(ErrorCode.BAD_FIELD, "A file's size cannot be negative.")
        if size > self.max_size:
            raise RuleViolation(
                ErrorCode.FILE_TOO_LARGE,
                f"This file is {_mib(size)}; the server takes files up to {_mib(self.max_size)}.",
            )
        upload_id = next(self._upload_ids)  # atomic: itertools.count
        upload = Incoming(self, upload_id, owner=owner, name=name, size=size, mime=mime)
        with self._lock:
            # Uploads in progress are on disk too, before the quota sees them:
            # all of them together stay within it, or a crowd of unfinished
            # uploads could fill the disk (the history's with it).
            arriving = sum(u.size for uploads in self._uploads.values() for u in uploads)
            if arriving + size > self.quota:
                raise RuleViolation(
                    ErrorCode.FILE_TOO_LARGE,
                    f"The server is receiving {_mib(arriving)} of files already; "
                    "try this one again in a moment.",
                )
            if self._closed:
                upload._done = True
            else:
                self._uploads.setdefault(owner, set()).add(upload)
        return upload

    def post(self, file_id: str, owner: int, sender: str, to: str | None) -> FileInfo:
        """``sender`` posts ``file_id``, publicly or privately ``to`` a user."""
        with self._lock:
            record = self._records.get(file_id)
            if record is None or not self._may_read(record, owner, sender):
                raise _no_such_file()
            if record.owner is not None:  # from now on the names say who may
                self._unposted[record.owner].pop(file_id, None)
                record.owner = None
            record.posted = True
            if to is None:
                record.public = True
                record.readers.clear()  # everyone may
            elif not record.public:
                record.readers.update((sender, to))
            self._dirty.files.add(file_id)
            self._queue()
            return record.info

    def readable(self, file_id: str, owner: int, name: str) -> FileInfo | None:
        """The file, if connection ``owner`` of member ``name`` may download it."""
        with self._lock:
            record = self._records.get(file_id)
            if record is None or not self._may_read(record, owner, name):
                return None
            return record.info

    def forget(self, owner: int) -> None:
        """Connection ``owner`` ended: its uploads and unposted files go."""
        with self._lock:
            uploads = self._uploads.pop(owner, set())
            for upload in uploads:
                upload._done = True
            for file_id in self._unposted.pop(owner, {}):
                self._drop_record(file_id)
            idle = [upload for upload in uploads if not upload._busy]
            self._dirty.uploads.extend(idle)
            self._queue()

    # -- the workers' side -----------------------------------------------------

    def read(self, file_id: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the file from ``offset`` (fewer at its end)."""
        if offset < 0 or length < 0:
            raise RuleViolation(ErrorCode.BAD_FIELD, "A range cannot start or end before 0.")
        with self._lock:
            record = self._records.get(file_id)
            if record is None:
                raise _no_such_file()
            size = record.info.size
            path = self.blob_folder / record.info.sha256
        if offset >= size or length == 0:
            return b""
        try:
            with path.open("rb") as blob:
                blob.seek(offset)
                return blob.read(min(length, size - offset))
        except FileNotFoundError:
            raise _no_such_file() from None  # evicted meanwhile
        except OSError as error:
            logger.warning("A kept file could not be read (%s): %s", path.name, error)
            raise _no_such_file() from error

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change so far is written (or was tried and failed);
        ``False`` if that took longer than ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._queued
            while self._written < target and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._flushed.wait(remaining)
        return True

    def close(self) -> None:
        """Write what is left, stop the writer, drop the uploads in progress. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            uploads = [upload for group in self._uploads.values() for upload in group]
            self._uploads.clear()
            for upload in uploads:
                upload._done = True
            idle = [upload for upload in uploads if not upload._busy]
            self._wake.notify()
        self._writer.join()
        for upload in idle:
            upload._delete_now()
        self._connection.close()

    # -- keeping an upload (a worker, from Incoming.finish) --------------------

    def _keep(
        self, upload: Incoming, digest: str, width: int | None, height: int | None, mime: str
    ) -> FileInfo:
        info = FileInfo(new_file_id(), upload.name, upload.size, mime, digest, width, height)
        with self._blob_lock:
            with self._lock:
                if upload._done:
                    raise _invalid("The upload was cancelled.")
                existing = digest in self._blobs
                if existing:
                    self._add_record(info, upload)
                    evicted = []
                else:
                    evicted = self._make_room(upload.size)
            self._evict(evicted)
            if existing:
                upload._delete_now()  # the same bytes are kept already
                return info
            try:
                os.replace(upload.path, self.blob_folder / digest)
            except OSError as error:
                raise _cannot_keep(error) from error
            with self._lock:
                if not upload._done:
                    self._blobs[digest] = _Blob(upload.size, self._clock())
                    self._used += upload.size
                    self._add_record(info, upload)
                    return info
            # Discarded while it was moved: nobody else uses these bytes, and
            # nobody can start to while we hold the blob lock.
            with contextlib.suppress(OSError):
                (self.blob_folder / digest).unlink()
        raise _invalid("The upload was cancelled.")

    def _add_record(self, info: FileInfo, upload: Incoming) -> None:
        """Under the lock: the finished upload's record, its owner's until posted."""
        self._records[info.id] = _Record(info, self._clock(), upload.owner)
        self._blobs[info.sha256].files.add(info.id)
        unposted = self._unposted.setdefault(upload.owner, {})
        unposted[info.id] = None
        if len(unposted) > MAX_UNPOSTED:
            oldest = next(iter(unposted))
            del unposted[oldest]
            self._drop_record(oldest)
            self._queue()
        upload._busy = False
        self._release(upload)

    def _make_room(self, size: int) -> list[str]:
        """Under the lock: evict the oldest blobs until ``size`` more bytes fit the quota."""
        evicted: list[str] = []
        while self._blobs and self._used + size > self.quota:
            digest, blob = self._blobs.popitem(last=False)
            self._used -= blob.size
            for file_id in blob.files:
                record = self._records.pop(file_id)
                if record.owner is not None:
                    self._unposted[record.owner].pop(file_id, None)
                self._dirty.files.add(file_id)
            self._dirty.blobs.add(digest)
            evicted.append(digest)
        if evicted:
            self._queue()
        return evicted

    def _evict(self, digests: list[str]) -> None:
        """Delete evicted blobs (outside the memory lock, under the blob lock)."""
        if digests:
            logger.info("Files: %d evicted for the quota of %s.", len(digests), _mib(self.quota))
        self._unlink_blobs(digests)

    def _unlink_blobs(self, digests: Iterable[str]) -> None:
        for digest in digests:
            with contextlib.suppress(OSError):
                (self.blob_folder / digest).unlink()

    # -- under the lock --------------------------------------------------------

    def _may_read(self, record: _Record, owner: int, name: str) -> bool:
        return record.owner == owner or record.public or name in record.readers

    def _release(self, upload: Incoming) -> None:
        """The upload is over: its connection no longer has it in progress."""
        upload._done = True
        uploads = self._uploads.get(upload.owner)
        if uploads is not None:
            uploads.discard(upload)
            if not uploads:
                del self._uploads[upload.owner]

    def _drop_record(self, file_id: str) -> None:
        record = self._records.pop(file_id)
        blob = self._blobs[record.info.sha256]
        blob.files.discard(file_id)
        if not blob.files:
            del self._blobs[record.info.sha256]
            self._used -= blob.size
            self._dirty.drop_blobs.add(record.info.sha256)
            self._dirty.blobs.add(record.info.sha256)
        self._dirty.files.add(file_id)

    def _queue(self) -> None:
        self._queued += 1
        self._wake.notify()

    def _delete_upload(self, upload: Incoming) -> None:
        with self._lock:
            if not self._stopped:
                self._dirty.uploads.append(upload)
                self._queue()
                return
        upload._delete_now()  # closed: nobody else will

    # -- the writer --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (not self._dirty or time.monotonic() < self._retry_at):
                    wait = self._retry_at - time.monotonic() if self._dirty else None
                    self._wake.wait(wait)
                if self._stopping and not self._dirty:
                    self._stopped = True
                    self._flushed.notify_all()
                    return
                batch, self._dirty = self._dirty, _Batch()
                queued = self._queued
                rows = self._rows(batch)
                stopping = self._stopping
            for upload in batch.uploads:
                upload._delete_now()
            if batch.drop_blobs:
                self._drop_unused(batch.drop_blobs)
            written = self._write(rows)
            with self._lock:
                if not written:
                    self._dirty.files |= batch.files
                    self._dirty.blobs |= batch.blobs
                    self._retry_at = time.monotonic() + RETRY_EVERY_S
                    if stopping:  # the last try
                        self._dirty = _Batch()
                elif self._failing:
                    self._retry_at = 0.0
                self._written = queued
                self._flushed.notify_all()
            if written == self._failing:
                self._failing = not written
                if written:
                    logger.warning("Files: the index is written again.")
                else:
                    logger.warning(
                        "Files: the index %s cannot be written; posted files are kept in "
                        "memory until it can.",
                        self.folder / INDEX_FILE,
                    )

    def _rows(self, batch: _Batch) -> list[tuple[str, tuple[Any, ...], list[str]]]:
        """Under the lock: what to write for each dirty file id and blob."""
        rows: list[tuple[str, tuple[Any, ...], list[str]]] = []
        for file_id in batch.files:
            record = self._records.get(file_id)
            if record is None or not record.posted:
                rows.append(("delete-file", (file_id,), []))
                continue
            info = record.info
            blob = self._blobs[info.sha256]
            rows.append(("blob", (info.sha256, blob.size, blob.stored), []))
            file_row = (
                file_id,
                info.sha256,
                info.name,
                info.mime,
                info.width,
                info.height,
                int(record.public),
                record.stored,
            )
            rows.append(("file", file_row, sorted(record.readers)))
        rows.extend(
            ("delete-blob", (digest,), []) for digest in batch.blobs if digest not in self._blobs
        )
        return rows

    def _write(self, rows: list[tuple[str, tuple[Any, ...], list[str]]]) -> bool:
        if not rows:
            return True
        connection = self._connection
        try:
            connection.execute("BEGIN")
            for kind, row, readers in rows:
                if kind == "blob":
                    connection.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", row)
                elif kind == "file":
                    connection.execute(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row
                    )
                    connection.execute("DELETE FROM readers WHERE file = ?", row[:1])
                    connection.executemany(
                        "INSERT INTO readers VALUES (?, ?)",
                        [(row[0], name) for name in readers],
                    )
                elif kind == "delete-file":
                    connection.execute("DELETE FROM files WHERE id = ?", row)
                    connection.execute("DELETE FROM readers WHERE file = ?", row)
                else:
                    connection.execute("DELETE FROM blobs WHERE sha256 = ?", row)
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            logger.debug("Files: a commit failed: %s", error)
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            return False
        return True

    def _drop_unused(self, digests: set[str]) -> None:
        with self._blob_lock:
            with self._lock:
                unused = [digest for digest in digests if digest not in self._blobs]
            self._unlink_blobs(unused)

    # -- opening ---------------------------------------------------------------

    def _open_index(self) -> sqlite3.Connection:
        path = self.folder / INDEX_FILE
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise StoreError(f"The files' index {path} cannot be opened: {error}.") from error
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"The files' index {path} was made by a newer version of the server "
                    f"(schema {version}; this one knows {SCHEMA_VERSION})."
                )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            self._load(connection)
        except sqlite3.Error as error:
            connection.close()
            raise StoreError(f"The files' index {path} cannot be read: {error}.") from error
        except BaseException:
            connection.close()
            raise
        return connection

    def _load(self, connection: sqlite3.Connection) -> None:
        """Read the posted records back; drop rows whose blob is gone or damaged."""
        for digest, size, stored in connection.execute(
            "SELECT sha256, size, stored FROM blobs ORDER BY stored, sha256"
        ):
            if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                continue
            try:
                on_disk = (self.blob_folder / digest).stat().st_size
            except OSError:
                continue
            if isinstance(size, int) and on_disk == size:
                self._blobs[digest] = _Blob(size, float(stored))
        readers: dict[str, set[str]] = {}
        for file_id, name in connection.execute("SELECT file, name FROM readers"):
            readers.setdefault(file_id, set()).add(name)
        for row in connection.execute(
            "SELECT id, sha256, name, mime, width, height, public, stored FROM files"
        ):
            file_id, digest, name, mime, width, height, public, stored = row
            blob = self._blobs.get(digest)
            if blob is None or not (isinstance(file_id, str) and _FILE_ID.fullmatch(file_id)):
                continue
            info = FileInfo(file_id, str(name), blob.size, str(mime), digest, width, height)
            record = _Record(info, float(stored), None, True, bool(public))
            record.readers = readers.get(file_id, set())
            self._records[file_id] = record
            blob.files.add(file_id)
        for digest in [digest for digest, blob in self._blobs.items() if not blob.files]:
            del self._blobs[digest]
        self._used = sum(blob.size for blob in self._blobs.values())
        # What is not read back goes from the index too.
        connection.execute("BEGIN")
        for table, column, kept in (
            ("files", "id", self._records),
            ("readers", "file", self._records),
            ("blobs", "sha256", self._blobs),
        ):
            gone = [
                (key,)
                for (key,) in connection.execute(f"SELECT {column} FROM {table}")
                if key not in kept
            ]
            connection.executemany(f"DELETE FROM {table} WHERE {column} = ?", gone)
        connection.execute("COMMIT")

    def _prune_blob_folder(self) -> None:
        """Delete what ``blobs/`` holds that no record uses (an upload's bytes whose
        connection ended, a blob evicted just before a crash)."""
        for entry in self.blob_folder.iterdir():
            if entry.name not in self._blobs:
                with contextlib.suppress(OSError):
                    if entry.is_file() or entry.is_symlink():
                        entry.unlink()


_WEBP_HEADER = 30


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """A WEBP's canvas from its first 30 bytes (VP8X, VP8L or VP8 ): Pillow's
    WEBP opener reads the whole file and allocates the canvas to learn it."""
    if len(head) < _WEBP_HEADER or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(head[26:28], "little") & 0x3FFF,
            int.from_bytes(head[28:30], "little") & 0x3FFF,
        )
    return None


def image_size(path: Path) -> tuple[int, int, str] | None:
    """An image's width, height and media type, read from its header only, or
    ``None`` for anything else (or when Pillow is missing).

    Raises ``RuleViolation(UPLOAD_INVALID)`` for an image of more pixels than
    Pillow's ``MAX_IMAGE_PIXELS``: showing it would mean decoding all of them.
    """
    try:
        from PIL import (  # noqa: PLC0415 - Pillow is optional and slow to import
            BmpImagePlugin,
            GifImagePlugin,
            Image,
            ImageFile,
            JpegImagePlugin,
            PngImagePlugin,
        )
    except ImportError:
        return None
    with path.open("rb") as file:
        head = file.read(_WEBP_HEADER)
    found: tuple[int, int, str] | None = None
    webp = _webp_size(head)
    if webp is not None:
        found = (*webp, WEBP_MIME)
    else:
        # The format classes themselves, not Image.open: Image.open refuses a
        # bomb without saying its size and warns through the process-wide
        # warnings machinery, which no thread can silence for itself alone.
        openers: tuple[type[ImageFile.ImageFile], ...] = (
            PngImagePlugin.PngImageFile,
            JpegImagePlugin.JpegImageFile,
            GifImagePlugin.GifImageFile,
            BmpImagePlugin.BmpImageFile,
        )
        for opener in openers:
            try:
                with opener(path) as image:
                    mime = Image.MIME.get(image.format or "")
                    found = None if mime is None else (image.width, image.height, mime)
                break
            except Exception:  # a hostile header may trip any parser: not an image
                continue
    if found is None or found[0] <= 0 or found[1] <= 0:
        return None
    width, height, _ = found
    limit = Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS
    if width * height > limit:
        raise _invalid(
            f"The image is {width}x{height} pixels, more than the {limit:,} the server "
            "takes; it is discarded."
        )
    return found
