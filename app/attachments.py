"""Files on this computer for the chat's files and images: the cache,
thumbnails, the clipboard's image, opening a file with the OS. No Tk here.

The cache (``cache_dir``, the user's cache folder) keeps each downloaded
file under its SHA-256, never under the name it came with: a name from the
network is never a path. A file there has been verified by the download
(its digest matched), so it is reused for every message that carries it,
in this run or the next. It is kept under ``CACHE_BYTES``: ``prune_cache``
(run on the worker thread at the first thumbnail of a run) deletes the
files used longest ago; a file is marked used (its time touched) each time
it is shown or opened.

Thumbnails are made here with Pillow and kept in the cache too (a small
PNG per digest), so a history page of pictures costs a few small reads.
Every image is a hostile one until shown otherwise: its pixel count, as
the message says and as the file's own header says, is checked against
``MAX_PIXELS`` before anything is decoded (a 50 KB PNG can claim 100,000 x
100,000 pixels); JPEGs are decoded at a reduced scale (``Image.draft``);
and every error Pillow can raise on a damaged file becomes a
``ThumbnailError``. ``Thumbnails`` makes them on one worker thread, so a
big picture never stops the window; the Tk thread collects the results.

The clipboard: Pillow's ``ImageGrab.grabclipboard`` on Windows and macOS;
on Linux ``xclip`` (X11) or ``wl-paste`` (Wayland) when on the PATH, each
asked with a timeout and read up to ``MAX_CLIPBOARD`` bytes.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import platformdirs
from PIL import Image, ImageGrab, ImageOps

from app.file_names import safe_file_name
from app.settings import APP_NAME
from server.protocol import FileInfo

logger = logging.getLogger("app.attachments")

THUMBNAIL_SIZE = (320, 240)  # at most, the picture's shape kept
# Pixels an image may have to be decoded at all: a 40 MP photo is 160 MB
# decoded; a claimed billion would take the machine's memory.
MAX_PIXELS = 40_000_000
# Media types Pillow reads and that are pictures (not SVG, which is code).
PICTURE_SUFFIX = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
}
RASTER = frozenset(PICTURE_SUFFIX)
# What a person might run by opening it: asked about first.
EXECUTABLE = (
    *(".exe", ".bat", ".cmd", ".com", ".msi", ".ps1", ".sh", ".app", ".desktop", ".jar"),
    *(".js", ".vbs", ".scr", ".lnk", ".pif", ".hta", ".wsf", ".cpl", ".msc", ".reg"),
    ".command",
)
MAX_CLIPBOARD = 64 * 1024 * 1024  # bytes of an image read from the clipboard
CLIPBOARD_SECONDS = 3.0
CACHE_BYTES = 1024 * 1024 * 1024  # the cache's files at most, the least recently used out
SHA256 = re.compile(r"[0-9a-f]{64}")
SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


class ThumbnailError(Exception):
    """An image that will not be shown, and why (one plain sentence)."""


def cache_dir() -> Path:
    """Where downloaded files are kept (overridable with LAN_CHAT_CACHE_DIR, for tests)."""
    folder = os.environ.get("LAN_CHAT_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME)
    return Path(folder) / "files"


def cached_path(file: FileInfo) -> Path | None:
    """Where ``file`` is kept in the cache: its digest, and the suffix of its
    safe name so that the OS opens it with the right program; ``None`` for a
    digest that is no SHA-256 (it could not name a file safely)."""
    digest = file.sha256.lower()
    if SHA256.fullmatch(digest) is None:
        return None
    # A picture's suffix comes from its media type: "cat.exe" sent as a PNG
    # is opened by the OS as the picture it was shown as, never run.
    suffix = PICTURE_SUFFIX.get(file.mime.lower()) or Path(safe_file_name(file.name)).suffix.lower()
    return cache_dir() / (digest + (suffix if SUFFIX.fullmatch(suffix) else ""))


def thumbnail_path(file: FileInfo) -> Path | None:
    """Where ``file``'s thumbnail is kept in the cache."""
    digest = file.sha256.lower()
    return cache_dir() / f"{digest}.thumb.png" if SHA256.fullmatch(digest) else None


def is_picture(file: FileInfo) -> bool:
    """Whether ``file`` can be shown inline: a raster image whose size the server read."""
    return (
        file.mime.lower() in RASTER
        and file.width is not None
        and file.height is not None
        and 0 < file.width * file.height <= MAX_PIXELS
    )


def looks_executable(name: str) -> bool:
    """Whether opening a file of this name could run it (Windows drops trailing
    dots and spaces, so "x.exe. " is an .exe)."""
    cleaned = safe_file_name(name).rstrip(". ").lower()
    return cleaned.endswith(EXECUTABLE)


def make_thumbnail(path: Path, claimed: tuple[int, int] | None = None) -> Image.Image:
    """A picture of at most ``THUMBNAIL_SIZE`` from the image file at ``path``;
    ``claimed``: the width and height the message said. Raises ``ThumbnailError``."""
    if claimed is not None and claimed[0] * claimed[1] > MAX_PIXELS:
        raise ThumbnailError("The image is too big to show.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS or width <= 0 or height <= 0:
                    raise ThumbnailError("The image is too big to show.")
                image.draft("RGB", THUMBNAIL_SIZE)  # JPEG only: decoded at 1/2 to 1/8 scale
                image.thumbnail(THUMBNAIL_SIZE)
                picture = ImageOps.exif_transpose(image)
                return picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
    except ThumbnailError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ThumbnailError("The image is too big to show.") from exc
    except Exception as exc:  # Pillow raises many kinds on a damaged or hostile file
        raise ThumbnailError("The image could not be read.") from exc


def cached_thumbnail(file: FileInfo, path: Path) -> Image.Image:
    """``file``'s thumbnail: the one kept in the cache, or made from ``path``
    (its verified download) and kept. Raises ``ThumbnailError``."""
    kept = thumbnail_path(file)
    touch(path)
    if kept is not None and kept.is_file():
        touch(kept)
        try:
            with Image.open(kept) as image:
                if image.width <= THUMBNAIL_SIZE[0] and image.height <= THUMBNAIL_SIZE[1]:
                    image.load()
                    return image.copy()
        except Exception:
            pass  # a damaged thumbnail is made again
    claimed = (file.width, file.height) if file.width and file.height else None
    picture = make_thumbnail(path, claimed)
    if kept is not None:
        try:
            temporary = kept.with_suffix(".tmp")
            picture.save(temporary, "PNG")
            temporary.replace(kept)
        except OSError as exc:
            logger.warning("Cannot keep a thumbnail in %s: %s", kept.parent, exc)
    return picture


def touch(path: Path) -> None:
    """Mark a cached file as used now (the cache keeps the recently used)."""
    try:
        os.utime(path)
    except OSError:
        pass  # gone or read-only: it is only an order of eviction


def prune_cache(limit: int = CACHE_BYTES, folder: Path | None = None) -> int:
    """Delete the cache's least recently used files until they take at most
    ``limit`` bytes; returns how many were deleted. Any thread."""
    folder = folder or cache_dir()
    found: list[tuple[float, int, Path]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                # A ".part" is a download being written: never taken from under it.
                if entry.is_file(follow_symlinks=False) and not entry.name.endswith(".part"):
                    stat = entry.stat(follow_symlinks=False)
                    found.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    except OSError:
        return 0  # no cache yet, or none to be had
    total = sum(size for _when, size, _path in found)
    deleted = 0
    for _when, size, path in sorted(found):
        if total <= limit:
            break
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        deleted += 1
    return deleted


class Thumbnails:
    """Makes thumbnails on one worker thread (``thumbnails``), started at the
    first, which first prunes the cache; ``close`` waits for it. Any thread
    may call ``make``; ``close`` is the owner's, once."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def make(self, file: FileInfo, path: Path) -> Future[Image.Image]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="thumbnails")
                self._pool.submit(prune_cache)
            return self._pool.submit(cached_thumbnail, file, path)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def pasted_name(now: datetime.datetime | None = None) -> str:
    """The name of an image pasted at ``now``: "Pasted image 2026-12-01 17.30.05.png"."""
    when = now or datetime.datetime.now()
    return f"Pasted image {when:%Y-%m-%d %H.%M.%S}.png"


def clipboard_png() -> bytes | None:
    """The clipboard's image as PNG bytes, or ``None`` (no image, no way to ask,
    or one too big to take). Tk thread; at most ``CLIPBOARD_SECONDS`` per tool."""
    if sys.platform in ("win32", "darwin"):
        try:
            grabbed = ImageGrab.grabclipboard()
        except Exception as exc:  # no clipboard service, a format Pillow cannot read
            logger.info("No image from the clipboard: %s", exc)
            return None
        if not isinstance(grabbed, Image.Image):
            return None
        return _as_png(grabbed)
    for command in (
        ["wl-paste", "--no-newline", "--type", "image/png"]
        if os.environ.get("WAYLAND_DISPLAY") and shutil.which("wl-paste")
        else None,
        ["xclip", "-selection", "clipboard", "-t", "image/png", "-o"]
        if shutil.which("xclip") and _xclip_has_png()
        else None,
    ):
        if command is None:
            continue
        data = _run_bounded(command)
        if data and _png_ok(data):
            return data
    return None


def _xclip_has_png() -> bool:
    targets = _run_bounded(["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"])
    return targets is not None and b"image/png" in targets.split()


def _run_bounded(command: list[str]) -> bytes | None:
    """What ``command`` prints, at most ``MAX_CLIPBOARD`` bytes and
    ``CLIPBOARD_SECONDS``; ``None`` when it fails or says more."""
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            timeout=CLIPBOARD_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("%s failed: %s", command[0], exc)
        return None
    if done.returncode != 0 or len(done.stdout) > MAX_CLIPBOARD:
        return None
    return done.stdout


def _png_ok(data: bytes) -> bool:
    """Whether ``data`` is a PNG of a sane size (the header alone is read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format == "PNG" and image.width * image.height <= MAX_PIXELS
    except Exception:
        return False


def _as_png(image: Image.Image) -> bytes | None:
    if image.width * image.height > MAX_PIXELS:
        return None
    out = io.BytesIO()
    try:
        image.save(out, "PNG")
    except Exception as exc:
        logger.info("The clipboard's image cannot be saved as PNG: %s", exc)
        return None
    return out.getvalue()


_opened: list[subprocess.Popen[bytes]] = []  # openers not yet reaped


def open_with_os(path: Path) -> str | None:
    """Open ``path`` with the program the OS chooses; ``None`` when started, else
    why not (one plain sentence). Tk thread."""
    _opened[:] = [child for child in _opened if child.poll() is None]
    try:
        if sys.platform == "win32":
            os.startfile(path)  # type: ignore[attr-defined]
            return None
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        if shutil.which(opener) is None:
            return f"There is no {opener} here to open files with."
        _opened.append(
            subprocess.Popen(
                [opener, str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    except OSError as exc:
        return f"The file could not be opened: {exc.strerror or exc}."
    return None
