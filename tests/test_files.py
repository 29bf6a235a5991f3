"""The server's blob store (server/files.py): uploads, posts, downloads, quota, restarts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from server.files import MAX_UNPOSTED, FileStore, Incoming
from server.protocol import MAX_CHUNK, ErrorCode, FileInfo, RuleViolation

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


class Clock:
    """A clock the test moves, so that stored times are distinct and known."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


Open = Callable[..., FileStore]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Open]:
    """Open stores on ``tmp_path / "files"`` (or a folder given); all closed after."""
    stores: list[FileStore] = []

    def open_(
        folder: Path | None = None, *, max_file: int = MiB, quota: int = 8 * MiB, **kw: object
    ) -> FileStore:
        kw.setdefault("clock", Clock())
        store = FileStore(
            folder or tmp_path / "files",
            max_file=max_file,
            quota=quota,
            **kw,  # type: ignore[arg-type]
        )
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def send(
    store: FileStore, owner: int, data: bytes, name: str = "a.bin", mime: str = ""
) -> Incoming:
    """An upload of ``data`` with every chunk written, not yet finished."""
    upload = store.reserve(owner, name, len(data), mime or "application/octet-stream")
    for offset in range(0, len(data), MAX_CHUNK):
        upload.write(offset, data[offset : offset + MAX_CHUNK])
    return upload


def upload(
    store: FileStore, owner: int, data: bytes, name: str = "a.bin", mime: str = ""
) -> FileInfo:
    return send(store, owner, data, name, mime).finish(hashlib.sha256(data).hexdigest())


def refused(code: ErrorCode, call: Callable[[], object]) -> str:
    """``call`` raises RuleViolation with ``code``: its message."""
    with pytest.raises(RuleViolation) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value.message


def blob_names(store: FileStore) -> list[str]:
    return sorted(path.name for path in store.blob_folder.iterdir())


def incoming_names(store: FileStore) -> list[str]:
    return sorted(path.name for path in store.incoming_folder.iterdir())


def image_bytes(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red" if mode != "1" else 1).save(out, fmt, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header says ``width`` x ``height`` (an image bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# -- uploads ---------------------------------------------------------------------


def test_an_upload_is_kept_by_its_hash_and_read_back_by_range(open_store: Open) -> None:
    store = open_store()
    data = os.urandom(100_000)
    info = upload(store, 1, data, "notes.bin", "application/x-thing")
    digest = hashlib.sha256(data).hexdigest()
    assert (info.name, info.size, info.mime, info.sha256) == (
        "notes.bin",
        100_000,
        "application/x-thing",
        digest,
    )
    assert (info.width, info.height) == (None, None)
    assert len(info.id) == 26 and info.id.startswith("f-") and int(info.id[2:], 16) >= 0
    assert blob_names(store) == [digest]
    assert incoming_names(store) == []
    assert store.used == 100_000
    assert store.read(info.id, 0, 1000) == data[:1000]
    assert store.read(info.id, 99_000, 5000) == data[99_000:]  # less at the end
    assert store.read(info.id, 100_000, 10) == b""
    assert store.folder.stat().st_mode & 0o777 == 0o700
    assert (store.blob_folder / digest).stat().st_mode & 0o077 == 0


def test_an_empty_file_is_kept(open_store: Open) -> None:
    store = open_store()
    info = upload(store, 1, b"")
    assert info.size == 0 and info.sha256 == hashlib.sha256(b"").hexdigest()
    assert store.read(info.id, 0, 100) == b""
    assert blob_names(store) == [info.sha256]


def test_the_same_bytes_uploaded_twice_are_stored_once(open_store: Open) -> None:
    store = open_store()
    data = os.urandom(70_000)
    first = upload(store, 1, data, "one.bin")
    second = upload(store, 2, data, "two.bin")
    assert first.id != second.id and first.sha256 == second.sha256
    assert (first.name, second.name) == ("one.bin", "two.bin")
    assert blob_names(store) == [first.sha256]
    assert incoming_names(store) == []  # the second one's temporary file went
    assert store.used == 70_000
    assert store.read(second.id, 0, 70_000) == data


def test_a_wrong_hash_is_refused_and_discarded(open_store: Open) -> None:
    store = open_store()
    data = os.urandom(40_000)
    pending = send(store, 1, data)
    assert incoming_names(store) != []  # streamed to a temporary file
    message = refused(ErrorCode.UPLOAD_INVALID, lambda: pending.finish("0" * 64))
    assert "SHA-256" in message
    assert incoming_names(store) == [] and blob_names(store) == []
    # The upload is over: nothing more is taken for it.
    refused(ErrorCode.UPLOAD_INVALID, lambda: pending.finish(hashlib.sha256(data).hexdigest()))
    assert store.used == 0


def test_an_upload_that_ends_short_is_refused(open_store: Open) -> None:
    store = open_store()
    data = os.urandom(50_000)
    pending = store.reserve(1, "a.bin", 60_000, "application/octet-stream")
    pending.write(0, data)
    message = refused(
        ErrorCode.UPLOAD_INVALID, lambda: pending.finish(hashlib.sha256(data).hexdigest())
    )
    assert "50000 of its 60000" in message
    assert incoming_names(store) == [] and blob_names(store) == []


@pytest.mark.parametrize("offset", [0, 100, 20_000])
def test_data_out_of_order_is_refused_and_discarded(open_store: Open, offset: int) -> None:
    store = open_store()
    pending = store.reserve(1, "a.bin", 60_000, "application/octet-stream")
    pending.write(0, b"x" * 10_000)
    message = refused(ErrorCode.UPLOAD_INVALID, lambda: pending.write(offset, b"y" * 100))
    assert "10000" in message
    assert incoming_names(store) == []
    refused(ErrorCode.UPLOAD_INVALID, lambda: pending.write(10_000, b"y" * 100))


def test_data_past_the_announced_size_is_refused(open_store: Open) -> None:
    store = open_store()
    pending = store.reserve(1, "a.bin", 1000, "application/octet-stream")
    pending.write(0, b"x" * 900)
    message = refused(ErrorCode.UPLOAD_INVALID, lambda: pending.write(900, b"x" * 101))
    assert "1000 bytes" in message
    assert incoming_names(store) == []


def test_sizes_over_the_limits_are_refused_saying_the_limit(open_store: Open) -> None:
    store = open_store(max_file=100 * MiB, quota=1000 * MiB)
    message = refused(ErrorCode.FILE_TOO_LARGE, lambda: store.reserve(1, "a", 100 * MiB + 1, "a/b"))
    assert "100 MiB" in message
    store.reserve(1, "a", 100 * MiB, "a/b").discard()  # the limit itself is fine
    refused(ErrorCode.BAD_FIELD, lambda: store.reserve(1, "a", -1, "a/b"))
    # A quota below the per-file limit is the limit.
    small = open_store(store.folder.parent / "small", max_file=100 * MiB, quota=5 * MiB // 2)
    message = refused(ErrorCode.FILE_TOO_LARGE, lambda: small.reserve(1, "a", 3 * MiB, "a/b"))
    assert "2.5 MiB" in message
    small.reserve(1, "a", 5 * MiB // 2, "a/b").discard()


def test_discard_drops_the_temporary_file_and_is_idempotent(open_store: Open) -> None:
    store = open_store()
    pending = send(store, 1, os.urandom(50_000))
    assert len(incoming_names(store)) == 1
    pending.discard()
    pending.discard()
    assert store.flush()
    assert incoming_names(store) == []
    refused(ErrorCode.UPLOAD_INVALID, lambda: pending.write(50_000, b""))


def test_leftovers_of_a_crash_are_cleared_at_open(open_store: Open, tmp_path: Path) -> None:
    folder = tmp_path / "files"
    (folder / "incoming").mkdir(parents=True)
    (folder / "blobs").mkdir()
    (folder / "incoming" / "7-abc.part").write_bytes(b"half an upload")
    (folder / "blobs" / ("ab" * 32)).write_bytes(b"a blob no record uses")
    store = open_store(folder)
    assert incoming_names(store) == [] and blob_names(store) == []


# -- images ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "mode", "options"),
    [
        ("PNG", "image/png", "RGB", {}),
        ("JPEG", "image/jpeg", "RGB", {}),
        ("GIF", "image/gif", "P", {}),
        ("BMP", "image/bmp", "RGB", {}),
        ("WEBP", "image/webp", "RGB", {"lossless": False}),  # VP8
        ("WEBP", "image/webp", "RGB", {"lossless": True}),  # VP8L
        ("WEBP", "image/webp", "RGBA", {"lossless": False}),  # VP8X: alpha
    ],
)
def test_an_images_size_and_type_are_read(
    open_store: Open, fmt: str, mime: str, mode: str, options: dict[str, object]
) -> None:
    store = open_store()
    info = upload(
        store, 1, image_bytes((123, 45), fmt, mode, **options), "pic", "application/octet-stream"
    )
    assert (info.width, info.height, info.mime) == (123, 45, mime)


def test_a_file_that_is_not_an_image_keeps_the_clients_type(open_store: Open) -> None:
    store = open_store()
    info = upload(store, 1, b"\x89PNG but not really" * 10, "fake.png", "image/png")
    assert (info.width, info.height, info.mime) == (None, None, "image/png")
    truncated = image_bytes((10, 10), "JPEG")[:15]
    info = upload(store, 1, truncated, "cut.jpg", "image/jpeg")
    assert (info.width, info.height, info.mime) == (None, None, "image/jpeg")


@pytest.mark.parametrize("side", [30_000, 10_000])  # past twice Pillow's limit, and past it
def test_an_image_bomb_is_refused(open_store: Open, side: int) -> None:
    store = open_store()
    data = png_claiming(side, side)
    assert len(data) < 200
    if side == 10_000:  # Pillow's own check only warns about this one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                assert image.size == (side, side)
    message = refused(
        ErrorCode.UPLOAD_INVALID, lambda: upload(store, 1, data, "bomb.png", "image/png")
    )
    assert f"{side}x{side} pixels" in message
    assert incoming_names(store) == [] and blob_names(store) == [] and store.used == 0


def test_a_webp_bomb_is_refused_from_its_header(open_store: Open) -> None:
    store = open_store()
    body = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (16383).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    message = refused(ErrorCode.UPLOAD_INVALID, lambda: upload(store, 1, data, "bomb.webp"))
    assert "16384x16384 pixels" in message


# -- who may download ------------------------------------------------------------


def test_before_it_is_posted_only_its_uploader_may_download_or_post_it(open_store: Open) -> None:
    store = open_store()
    info = upload(store, 1, b"secret draft")
    assert store.readable(info.id, 1, "alice") == info
    assert store.readable(info.id, 2, "alice") is None  # alice on another connection
    assert store.readable(info.id, 3, "bob") is None
    refused(ErrorCode.NO_SUCH_FILE, lambda: store.post(info.id, 3, "bob", None))
    refused(ErrorCode.NO_SUCH_FILE, lambda: store.post("f-" + "0" * 24, 1, "alice", None))
    assert store.readable("f-" + "0" * 24, 1, "alice") is None


def test_a_public_post_lets_anyone_download_it(open_store: Open) -> None:
    store = open_store()
    info = upload(store, 1, b"for everyone")
    assert store.post(info.id, 1, "alice", None) == info
    assert store.readable(info.id, 9, "latecomer") == info


def test_a_private_post_lets_only_its_sender_and_recipient_download_it(open_store: Open) -> None:
    store = open_store()
    info = upload(store, 1, b"for bob")
    store.post(info.id, 1, "alice", "bob")
    assert store.readable(info.id, 2, "bob") == info
    assert store.readable(info.id, 3, "alice") == info  # her other connection
    assert store.readable(info.id, 4, "carol") is None
    refused(ErrorCode.NO_SUCH_FILE, lambda: store.post(info.id, 4, "carol", None))
    # bob may pass it on: to carol privately, then to everyone.
    store.post(info.id, 2, "bob", "carol")
    assert store.readable(info.id, 4, "carol") == info
    assert store.readable(info.id, 5, "dave") is None
    store.post(info.id, 2, "bob", None)
    assert store.readable(info.id, 5, "dave") == info


# -- quota -----------------------------------------------------------------------


def test_the_quota_evicts_the_oldest_blobs_and_their_files(open_store: Open) -> None:
    store = open_store(max_file=2000, quota=3000)
    a, b, c = (os.urandom(1000) for _ in range(3))
    first = upload(store, 1, a)
    store.post(first.id, 1, "alice", None)
    shared = upload(store, 2, a)  # a second record of the oldest blob
    second = upload(store, 1, b)
    third = upload(store, 1, c)
    assert store.used == 3000
    upload(store, 1, b)  # bytes kept already: nothing is evicted
    assert store.readable(first.id, 1, "alice") is not None
    fourth = upload(store, 1, os.urandom(1000))
    assert store.used == 3000
    for gone in (first, shared):
        assert store.readable(gone.id, 1, "alice") is None
        assert store.readable(gone.id, 2, "bob") is None
        refused(ErrorCode.NO_SUCH_FILE, lambda gone=gone: store.read(gone.id, 0, 10))
        refused(ErrorCode.NO_SUCH_FILE, lambda gone=gone: store.post(gone.id, 1, "alice", None))
    assert first.sha256 not in blob_names(store)
    assert [store.read(f.id, 0, 1000) for f in (second, third)] == [b, c]
    big = upload(store, 1, os.urandom(2000))  # the two oldest go, never the newest
    assert store.readable(second.id, 1, "alice") is None
    assert store.readable(third.id, 1, "alice") is None
    assert store.readable(fourth.id, 1, "alice") is not None
    assert sorted(blob_names(store)) == sorted([fourth.sha256, big.sha256])
    assert store.used == 3000


def test_a_lowered_quota_evicts_at_open(open_store: Open, tmp_path: Path) -> None:
    store = open_store(quota=10_000)
    infos = [upload(store, 1, os.urandom(1000)) for _ in range(5)]
    for info in infos:
        store.post(info.id, 1, "alice", None)
    store.close()
    again = open_store(quota=2500)
    assert [again.readable(i.id, 1, "x") is not None for i in infos] == [False] * 3 + [True] * 2
    assert again.used == 2000 and len(blob_names(again)) == 2


# -- connections ending, restarts ------------------------------------------------


def test_forget_drops_a_connections_unposted_files_and_uploads(open_store: Open) -> None:
    store = open_store()
    data = os.urandom(5000)
    posted = upload(store, 1, data)
    store.post(posted.id, 1, "alice", "bob")
    unposted_shared = upload(store, 1, data)
    unposted = upload(store, 1, os.urandom(6000))
    pending = send(store, 1, os.urandom(7000))
    others = upload(store, 2, os.urandom(100))
    store.forget(1)
    assert store.flush()
    assert store.readable(unposted.id, 1, "alice") is None
    assert store.readable(unposted_shared.id, 1, "alice") is None
    assert store.readable(posted.id, 1, "carol") is None  # the token no longer counts
    assert store.readable(posted.id, 7, "bob") is not None
    assert store.readable(others.id, 2, "carol") is not None
    assert blob_names(store) == sorted([posted.sha256, others.sha256])  # the shared blob stays
    assert incoming_names(store) == []
    refused(ErrorCode.UPLOAD_INVALID, lambda: pending.write(7000, b""))
    assert store.used == 5100


def test_a_connection_keeps_only_so_many_files_unposted(open_store: Open) -> None:
    store = open_store()
    posted = upload(store, 1, os.urandom(100))
    store.post(posted.id, 1, "alice", None)  # posted ones do not count
    infos = [upload(store, 1, os.urandom(100)) for _ in range(MAX_UNPOSTED)]
    assert all(store.readable(info.id, 1, "alice") for info in infos)
    newest = upload(store, 1, os.urandom(100))
    assert store.readable(infos[0].id, 1, "alice") is None  # the oldest went
    assert all(store.readable(info.id, 1, "alice") for info in [*infos[1:], newest, posted])
    assert store.flush()
    assert infos[0].sha256 not in blob_names(store)
    assert len(blob_names(store)) == MAX_UNPOSTED + 1 and store.used == 100 * (MAX_UNPOSTED + 1)


def test_a_restart_keeps_posted_files_and_drops_unposted_ones(open_store: Open) -> None:
    store = open_store(quota=3000)
    picture = image_bytes((20, 10), "PNG")
    public = upload(store, 1, picture, "pic.png", "image/png")
    store.post(public.id, 1, "alice", None)
    private = upload(store, 1, os.urandom(1000), "memo.txt", "text/plain")
    store.post(private.id, 1, "alice", "bob")
    unposted = upload(store, 1, os.urandom(1000))
    store.close()
    again = open_store(quota=3000)
    assert again.readable(public.id, 5, "anyone") == public
    assert again.readable(private.id, 5, "bob") == private
    assert again.readable(private.id, 6, "alice") == private
    assert again.readable(private.id, 1, "carol") is None  # a token does not survive
    assert again.readable(unposted.id, 1, "alice") is None
    assert unposted.sha256 not in blob_names(again)
    assert again.used == len(picture) + 1000
    assert again.read(public.id, 0, 100_000) == picture
    # The order they were stored in survived too: the oldest goes first.
    upload(again, 1, os.urandom(2001 - len(picture)))  # one byte too many for all three
    assert again.readable(public.id, 5, "anyone") is None
    assert again.readable(private.id, 5, "bob") is not None


def test_a_restart_drops_files_whose_blob_is_gone_or_damaged(open_store: Open) -> None:
    store = open_store()
    gone, cut, kept = (upload(store, 1, os.urandom(1000)) for _ in range(3))
    for info in (gone, cut, kept):
        store.post(info.id, 1, "alice", None)
    store.close()
    (store.blob_folder / gone.sha256).unlink()
    with (store.blob_folder / cut.sha256).open("r+b") as blob:
        blob.truncate(10)
    again = open_store()
    assert again.readable(gone.id, 1, "x") is None
    assert again.readable(cut.id, 1, "x") is None
    assert again.readable(kept.id, 1, "x") == kept
    assert blob_names(again) == [kept.sha256] and again.used == 1000


def test_an_index_naming_a_path_as_a_blob_is_not_followed(open_store: Open, tmp_path: Path) -> None:
    store = open_store()
    store.close()
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a blob")
    db = sqlite3.connect(store.folder / "index.sqlite3")
    try:
        with db:
            db.execute("INSERT INTO blobs VALUES (?, 10, 1.0)", ("../../secret",))
            db.execute(
                "INSERT INTO files VALUES (?, ?, 'x', 'a/b', NULL, NULL, 1, 1.0)",
                ("f-" + "1" * 24, "../../secret"),
            )
    finally:
        db.close()
    again = open_store()
    assert again.readable("f-" + "1" * 24, 1, "x") is None
    refused(ErrorCode.NO_SUCH_FILE, lambda: again.read("f-" + "1" * 24, 0, 10))
    assert secret.read_bytes() == b"not a blob" and again.used == 0


def _run_child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_store_killed_outright_keeps_what_was_posted(open_store: Open, tmp_path: Path) -> None:
    folder = tmp_path / "files"
    child = _run_child(
        """
        import hashlib, sys, time
        from pathlib import Path
        from server.files import FileStore
        store = FileStore(Path(sys.argv[1]), max_file=1 << 20, quota=1 << 22)
        data = bytes(range(256)) * 100
        upload = store.reserve(1, "kept.bin", len(data), "application/octet-stream")
        upload.write(0, data)
        info = upload.finish(hashlib.sha256(data).hexdigest())
        store.post(info.id, 1, "alice", "bob")
        assert store.flush()
        print(info.id, flush=True)
        time.sleep(60)
        """,
        str(folder),
    )
    try:
        assert child.stdout is not None
        file_id = child.stdout.readline().strip()
        assert file_id.startswith("f-"), child.stderr.read() if child.stderr else ""
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    store = open_store(folder)
    assert store.readable(file_id, 1, "bob") is not None
    assert store.read(file_id, 0, 100_000) == bytes(range(256)) * 100


def test_a_post_reaches_the_index_without_waiting_for_close(open_store: Open) -> None:
    store = open_store()
    info = upload(store, 1, b"soon")
    store.post(info.id, 1, "alice", None)
    # The writer commits on its own, soon: read the index as it is on disk.
    seen = False
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        db = sqlite3.connect(store.folder / "index.sqlite3")
        try:
            seen = (
                db.execute("SELECT count(*) FROM files WHERE id = ?", (info.id,)).fetchone()[0] == 1
            )
        finally:
            db.close()
        time.sleep(0.01)
    assert seen


def test_a_full_disk_refuses_the_upload_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    child = _run_child(
        """
        import hashlib, json, os, resource, sys
        from pathlib import Path
        from server.files import FileStore
        from server.protocol import RuleViolation
        folder = Path(sys.argv[1])
        store = FileStore(folder, max_file=1 << 20, quota=1 << 22)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        data = os.urandom(300_000)
        upload = store.reserve(1, "big.bin", len(data), "application/octet-stream")
        error = None
        try:
            for offset in range(0, len(data), 32768):
                upload.write(offset, data[offset:offset + 32768])
            upload.finish(hashlib.sha256(data).hexdigest())
        except RuleViolation as refused:
            error = [refused.code, refused.message]
        left = os.listdir(folder / "incoming") + os.listdir(folder / "blobs")
        small = os.urandom(10_000)
        upload = store.reserve(1, "small.bin", len(small), "application/octet-stream")
        upload.write(0, small)
        info = upload.finish(hashlib.sha256(small).hexdigest())
        store.close()
        print(json.dumps({"error": error, "left": left, "then": info.size}))
        """,
        str(folder),
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    result = json.loads(out)
    assert result["error"][0] == "upload-invalid"
    assert "could not keep the file" in result["error"][1]
    assert result["left"] == []
    assert result["then"] == 10_000  # and the store goes on


def test_an_index_it_cannot_write_keeps_posts_in_memory_until_it_can(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    child = _run_child(
        """
        import hashlib, logging, resource, sys
        from pathlib import Path
        from server.files import FileStore
        logging.basicConfig(level=logging.WARNING)
        folder = Path(sys.argv[1])
        store = FileStore(folder, max_file=1 << 20, quota=1 << 22)
        data = b"posted while the disk was full"
        upload = store.reserve(1, "a.txt", len(data), "text/plain")
        upload.write(0, data)
        info = upload.finish(hashlib.sha256(data).hexdigest())
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        store.post(info.id, 1, "alice", None)
        assert store.flush()
        print("in memory:", store.readable(info.id, 2, "bob") is not None, file=sys.stderr)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        store.close()  # its last try works
        again = FileStore(folder, max_file=1 << 20, quota=1 << 22)
        print("after:", again.read(info.id, 0, 100) == data, file=sys.stderr)
        again.close()
        """,
        str(folder),
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "cannot be written" in err
    assert "in memory: True" in err
    assert "after: True" in err


# -- threads ---------------------------------------------------------------------


def test_uploads_of_the_same_bytes_race_connections_ending(open_store: Open) -> None:
    store = open_store()
    data = os.urandom(3 * MAX_CHUNK)
    kept = upload(store, 100, data)
    store.post(kept.id, 100, "alice", None)
    errors: list[BaseException] = []

    def churn(first_owner: int) -> None:
        try:
            for owner in range(first_owner, first_owner + 30):
                info = upload(store, owner, data)
                assert store.read(info.id, 0, len(data)) == data
                pending = send(store, owner, data)
                store.forget(owner)  # mid-upload, with a finished one unposted
                refused(ErrorCode.UPLOAD_INVALID, lambda p=pending: p.finish(kept.sha256))
                extra = upload(store, owner + 10_000, os.urandom(1000))
                store.forget(owner + 10_000)
                assert store.readable(extra.id, owner + 10_000, "x") is None
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=churn, args=(n * 1000,)) for n in range(1, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert store.flush()
    assert blob_names(store) == [kept.sha256]
    assert incoming_names(store) == []
    assert store.used == len(data)
    assert store.read(kept.id, 0, len(data)) == data


def test_bytes_kept_again_while_their_old_blob_is_deleted_stay_kept(
    open_store: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store()
    data = os.urandom(5000)
    digest = hashlib.sha256(data).hexdigest()
    upload(store, 1, data)
    again = send(store, 2, data)
    kept: list[FileInfo] = []
    finishers: list[threading.Thread] = []
    unlink = store._unlink_blobs

    def unlink_late(digests: Iterable[str]) -> None:
        # The writer has found the blob unused; the same bytes are kept again
        # before it deletes the file (for as long as that may take).
        digests = list(digests)
        if threading.current_thread().name == "files-writer" and digest in digests:
            finisher = threading.Thread(target=lambda: kept.append(again.finish(digest)))
            finishers.append(finisher)
            finisher.start()
            finisher.join(0.5)  # done by now, unless it waits for the deletion
        unlink(digests)

    monkeypatch.setattr(store, "_unlink_blobs", unlink_late)
    store.forget(1)  # the last user of the blob: it goes, off the loop
    assert store.flush()
    assert len(finishers) == 1
    finishers[0].join(10)
    assert len(kept) == 1
    assert store.read(kept[0].id, 0, 10_000) == data
    assert blob_names(store) == [digest]


def test_close_is_idempotent_and_drops_uploads_in_progress(open_store: Open) -> None:
    store = open_store()
    pending = send(store, 1, os.urandom(1000) * 3)
    store.close()
    store.close()
    assert incoming_names(store) == []
    refused(ErrorCode.UPLOAD_INVALID, lambda: pending.write(3000, b""))
