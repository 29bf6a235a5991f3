"""One server per data folder: an exclusive OS lock on a file in it.

How this works: ``lock_data_folder`` opens ``server.lock`` in the folder
and takes an exclusive, non-blocking lock on it (``fcntl.flock`` on POSIX,
``msvcrt.locking`` of its first byte on Windows). The operating system
frees the lock when the process ends, however it ends (``kill -9``
included), so a stale file never keeps a folder locked. Once locked, the
file is rewritten as a newline and the holder's pid (the pid after the
locked first byte, which Windows would not let another process read), so
that a second server can say who holds the folder. A folder's lock is
held until ``FolderLock.release``; a second lock on the same folder fails,
even from the same process.

``StoreError`` is every store's failure that the server reports in a
sentence and survives (a database it cannot open, a folder in use).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

LOCK_FILE = "server.lock"


class StoreError(Exception):
    """A store cannot do its work; the message is a sentence for the server's log."""


class FolderInUse(StoreError):
    """Another process holds the data folder's lock."""


class FolderLock:
    """The data folder's lock, held until ``release`` (or the end of a ``with``)."""

    __slots__ = ("_fd", "folder")

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the folder up; releasing twice does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _unlock(fd)
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def lock_data_folder(folder: Path) -> FolderLock:
    """Lock ``folder`` (which must exist) for this process.

    Raises ``FolderInUse`` if another server holds it, ``StoreError`` if
    the lock file cannot be made.
    """
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(
            f"Cannot lock the data folder {folder} ({error.strerror or error}); "
            "check that it exists and that this user may write to it."
        ) from error
    try:
        locked = _try_lock(fd)
        if not locked:
            holder = _read_pid(fd)
            who = "" if holder is None else f" (process {holder})"
            raise FolderInUse(
                f"Another server is already using the data folder {folder}{who}; "
                "stop it, or give this one another --data-dir."
            )
        try:
            os.lseek(fd, 1, os.SEEK_SET)
            os.ftruncate(fd, 1)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b"\n")
        except OSError:
            pass  # a full disk: the lock holds all the same; a refusal names no process
    except BaseException:
        os.close(fd)
        raise
    return FolderLock(folder, fd)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 1, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
