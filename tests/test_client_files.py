"""The client's side of file transfers (``app/transfers.py`` run by
``app.network.ChatClient``), without a display.

Most tests run against ``FileRoom``: a fake server in this module, one
connection on 127.0.0.1, speaking frames by hand (``tests.wire``), that
keeps uploads in memory and answers downloads, honestly or, as a test
asks, with hostile data. Every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app import network
from app.network import (
    ChatClient,
    Received,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferStarted,
    Unsent,
    Welcomed,
)
from server.protocol import (
    DEFAULT_MIME,
    MAX_CHUNK,
    MAX_DOWNLOAD,
    MAX_UPLOADS,
    ChatMessage,
    FileInfo,
)
from server.protocol.transport import PlainTransport
from tests.test_network import Peer, drain, expect_no, wait_for
from tests.trust_helpers import PlaintextAgreed
from tests.wire import Closed

HOST = "127.0.0.1"
WAIT = 10.0
DISCARD = "0" * 64  # the digest a cancelled upload's upload-done carries
Reply = Callable[["FileRoom", Peer, dict[str, Any]], None]


@dataclass
class Kept:
    info: dict[str, Any]
    data: bytes


@dataclass
class Upload:
    name: str
    size: int
    mime: str | None
    data: bytearray = field(default_factory=bytearray)


def info_of(name: str, data: bytes, file_id: str | None = None, **extra: Any) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    return {
        "id": file_id or "f-" + digest[:24],
        "name": name,
        "size": len(data),
        "mime": "application/octet-stream",
        "sha256": digest,
        **extra,
    }


def file_info(kept: dict[str, Any]) -> FileInfo:
    return FileInfo(**kept)


class FileRoom:
    """A fake server for one client connection (its name ``alice``).

    ``files``: what it can be asked to download, by id. ``download``: how a
    ``download`` frame is answered (honestly by default). ``upload_reply``
    (``upload``, ``upload-data``, ``upload-done`` or ``say``: an error to
    answer that frame with instead). ``log``: every frame the client sent,
    but upload data (``data_frames`` counts those), in order. ``hold``:
    while set, the room does not read (a server slow to read)."""

    def __init__(
        self,
        *,
        files: dict[str, Kept] | None = None,
        download: Reply | None = None,
        features: tuple[str, ...] = ("files",),
        chunk: int = MAX_CHUNK,
        errors: dict[str, dict[str, Any]] | None = None,
        rcvbuf: int | None = None,
        answer_uploads: bool = True,
    ) -> None:
        self.files = dict(files or {})
        self.download = download or FileRoom.honest
        self.features = features
        self.chunk = chunk
        self.errors = dict(errors or {})
        self.answer_uploads = answer_uploads
        self.log: list[dict[str, Any]] = []
        self.data_frames = 0
        self.uploads: dict[int, Upload] = {}
        self.held = threading.Event()  # set: do not read
        self.resumed = threading.Event()
        self.data_at_say = -1  # upload-data frames read before the first say without a file
        self.sends: queue.Queue[dict[str, Any]] = queue.Queue()  # for the test's thread
        self.later: list[dict[str, Any]] = []  # sent once the client has been quiet a moment
        self.next_upload = 7
        self.next_id = 1
        self.failure: BaseException | None = None
        self.listener = socket.socket()
        if rcvbuf is not None:  # inherited by the accepted socket
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind((HOST, 0))
        self.listener.listen(1)
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.peer: Peer | None = None
        self.thread = threading.Thread(target=self._run, name="fake-file-room")
        self.thread.start()

    def _run(self) -> None:
        try:
            sock, _ = self.listener.accept()
            with sock:
                sock.settimeout(WAIT)
                self.peer = Peer(sock, WAIT)
                self._serve(self.peer)
        except Closed:
            pass  # the client went
        except BaseException as exc:  # re-raised by stop(), in the test's thread
            self.failure = exc
        finally:
            self.listener.close()

    def _serve(self, peer: Peer) -> None:
        peer.expect("hello")
        peer.send(
            {
                "type": "welcome",
                "name": "alice",
                "users": ["alice"],
                "history_count": 0,
                "features": list(self.features),
            }
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.held.is_set():
                self.resumed.wait(WAIT)
                self.held.clear()
            while not self.sends.empty():
                peer.send(self.sends.get())
            try:
                obj = peer.recv(0.2)
            except TimeoutError:
                for each in self.later:
                    peer.send(each)
                self.later.clear()
                continue
            if obj["type"] == "bye":
                return
            self.handle(peer, obj)

    def handle(self, peer: Peer, obj: dict[str, Any]) -> None:
        kind = obj["type"]
        if kind == "upload-data":
            self.data_frames += 1
        else:
            self.log.append(obj)
        if kind == "say" and not obj.get("file") and self.data_at_say < 0:
            self.data_at_say = self.data_frames
        if kind in self.errors:
            error = self.errors[kind]
            if error.pop("once", False):
                del self.errors[kind]
            peer.send({"type": "error", "in_reply_to": kind, **error})
            if kind == "upload-data":  # the upload is discarded
                self.uploads.pop(obj["upload"], None)
            return
        if kind == "ping":
            peer.send({"type": "pong"})
        elif kind == "upload":
            number = self.next_upload
            self.next_upload += 1
            self.uploads[number] = Upload(obj["name"], obj["size"], obj.get("mime"))
            if self.answer_uploads:
                peer.send({"type": "upload-ready", "upload": number, "chunk": self.chunk})
        elif kind == "upload-data":
            upload = self.uploads.get(obj["upload"])
            if upload is None:
                peer.send(error_frame("upload-invalid", "No such upload.", kind))
                return
            data = base64.b64decode(obj["data"], validate=True)
            assert obj["offset"] == len(upload.data), (obj["offset"], len(upload.data))
            assert 0 < len(data) <= self.chunk
            upload.data += data
            assert len(upload.data) <= upload.size
        elif kind == "upload-done":
            upload = self.uploads.pop(obj["upload"], None)
            data = bytes(upload.data) if upload else b""
            if upload is None or hashlib.sha256(data).hexdigest() != obj["sha256"]:
                peer.send(error_frame("upload-invalid", "The file does not match.", kind))
                return
            assert len(data) == upload.size
            info = info_of(upload.name, data)
            info["mime"] = upload.mime or DEFAULT_MIME
            self.files[info["id"]] = Kept(info, data)
            peer.send({"type": "uploaded", "upload": obj["upload"], "file": info["id"]})
        elif kind == "say":
            message = {
                "type": "message",
                "id": self.next_id,
                "from": "alice",
                "text": obj["text"],
                "ts": time.time(),
            }
            self.next_id += 1
            if obj.get("to"):
                message["to"] = obj["to"]
            if obj.get("file"):
                message["file"] = self.files[obj["file"]].info
            peer.send(message)
        elif kind == "download":
            self.download(self, peer, obj)

    @staticmethod
    def honest(room: FileRoom, peer: Peer, obj: dict[str, Any]) -> None:
        kept = room.files.get(obj["file"])
        if kept is None:
            peer.send(error_frame("no-such-file", "There is no such file.", "download"))
            return
        offset, length = obj.get("offset", 0), obj.get("length", MAX_DOWNLOAD)
        assert 0 < length <= MAX_DOWNLOAD
        for frame_ in file_data(obj["file"], kept.data, offset, length):
            peer.send(frame_)

    def stop(self) -> None:
        self.resumed.set()
        self.thread.join(3 * WAIT)
        assert not self.thread.is_alive(), "the fake room did not end"
        self.listener.close()
        if self.failure is not None:
            raise self.failure


def error_frame(code: str, message: str, in_reply_to: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "in_reply_to": in_reply_to}


def file_data(file_id: str, data: bytes, offset: int, length: int) -> list[dict[str, Any]]:
    """The honest answer to a range: frames of at most 65,536 bytes."""
    end = min(offset + length, len(data))
    frames = []
    position = offset
    while True:
        piece = data[position : min(position + 65_536, end)]
        position += len(piece)
        frames.append(
            {
                "type": "file-data",
                "file": file_id,
                "offset": position - len(piece),
                "data": base64.b64encode(piece).decode(),
                "eof": position == len(data),
            }
        )
        if position >= end:
            return frames


@pytest.fixture
def rooms() -> Iterator[Callable[..., FileRoom]]:
    running: list[FileRoom] = []

    def start(**options: Any) -> FileRoom:
        running.append(FileRoom(**options))
        return running[-1]

    yield start
    for room in running:
        room.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., ChatClient]]:
    """A started ChatClient, welcomed (its events up to Welcomed drained)."""
    clients: list[ChatClient] = []

    def make(port: int, **options: Any) -> ChatClient:
        options.setdefault("known", PlaintextAgreed())
        client = ChatClient(HOST, port, "alice", **options)
        clients.append(client)
        client.start()
        wait_for(client, Welcomed, WAIT)
        return client

    yield make
    for client in clients:
        client.close(3.0)


def until(client: ChatClient, kind: type, transfer: int | None = None) -> list[Any]:
    """Events up to the first ``kind`` (of ``transfer``), or a TransferFailed
    that ends ``transfer`` when waiting for something else; fails after WAIT."""
    seen: list[Any] = []
    deadline = time.monotonic() + WAIT
    while True:
        events = wait_for(client, object, max(0.01, deadline - time.monotonic()))
        seen.extend(events)
        event = events[-1]
        mine = transfer is None or getattr(event, "transfer", None) == transfer
        if isinstance(event, kind) and mine:
            return seen
        if isinstance(event, TransferFailed) and event.transfer == transfer:
            raise AssertionError(f"{transfer} failed: {event.reason}; saw {seen}")


def of(events: list[Any], kind: type, transfer: int) -> list[Any]:
    return [e for e in events if isinstance(e, kind) and e.transfer == transfer]


def payload(size: int, seed: int = 1) -> bytes:
    """``size`` bytes, the same for the same ``seed``."""
    return random.Random(seed).randbytes(size)


# -- uploads ----------------------------------------------------------------------------


def test_an_upload_is_sent_in_chunks_then_posted_with_its_words(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    data = payload(100_000)
    path = tmp_path / "cat.png"
    path.write_bytes(data)
    room = rooms(chunk=10_000)  # smaller than MAX_CHUNK: the server's chunk wins
    client = connect(room.port)
    transfer = client.upload(path, text="look", to="bob")
    assert isinstance(transfer, int)
    seen = until(client, TransferDone, transfer)
    started = of(seen, TransferStarted, transfer)
    assert started == [TransferStarted(transfer, True, "cat.png", len(data))]
    done = of(seen, TransferDone, transfer)[-1]
    assert done.path is None
    assert done.file is not None
    assert done.file.size == len(data)
    assert done.file.sha256 == hashlib.sha256(data).hexdigest()
    assert done.file.mime == "image/png"
    progress = of(seen, TransferProgress, transfer)
    assert progress[-1] == TransferProgress(transfer, len(data), len(data))
    client.close(3.0)
    room.stop()
    kinds = [f["type"] for f in room.log if f["type"] != "ping"]
    assert kinds == ["upload", "upload-done", "say"]
    assert room.log[0] == {
        "type": "upload",
        "name": "cat.png",
        "size": len(data),
        "mime": "image/png",
    }
    assert room.data_frames == 10  # 100,000 bytes in chunks of 10,000
    say = next(f for f in room.log if f["type"] == "say")
    assert say["text"] == "look" and say["to"] == "bob"
    assert say["file"] == done.file.id


def test_an_upload_goes_under_the_name_given(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    path = tmp_path / "tmpa81x.png"
    path.write_bytes(b"\x89PNG....")
    room = rooms()
    client = connect(room.port)
    transfer = client.upload(path, name="Pasted image.png")
    seen = until(client, TransferDone, transfer)
    assert of(seen, TransferStarted, transfer)[0].name == "Pasted image.png"
    assert of(seen, TransferDone, transfer)[0].file.name == "Pasted image.png"


def test_a_name_the_server_would_refuse_is_sent_made_safe(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"x")
    room = rooms()
    client = connect(room.port)
    transfer = client.upload(path, name="two\nlines\u202e.txt")
    until(client, TransferDone, transfer)
    client.close(3.0)
    room.stop()
    upload = next(f for f in room.log if f["type"] == "upload")
    assert upload["name"] == "twolines.txt"


def test_no_upload_or_download_without_the_files_feature(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"a")
    room = rooms(features=("history-pages",))
    client = connect(room.port)
    assert client.upload(path) is None
    info = file_info(info_of("a.txt", b"a"))
    assert client.download(info, tmp_path / "b.txt") is None
    expect_no(client, (TransferStarted, TransferFailed), 0.3)


def test_no_upload_before_joining(tmp_path: Path) -> None:
    client = ChatClient(HOST, 9, "alice", known=PlaintextAgreed())  # never started
    try:
        assert client.upload(tmp_path / "x") is None
    finally:
        client.close()


def test_a_missing_file_fails_in_plain_words(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    room = rooms()
    client = connect(room.port)
    transfer = client.upload(tmp_path / "gone.txt", text="see this")
    failed = until(client, TransferFailed)[-1]
    assert failed.transfer == transfer
    assert failed.reason.startswith("Cannot read gone.txt")
    assert failed.text == "see this"


def test_an_empty_file_is_uploaded(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    room = rooms()
    client = connect(room.port)
    transfer = client.upload(path)
    done = until(client, TransferDone, transfer)[-1]
    assert done.file.size == 0
    assert done.file.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    "refusal",
    [
        ("upload", "file-too-large", "The file is larger than this server's limit of 100 MB."),
        ("upload", "files-disabled", "This server does not take files."),
        ("upload", "rate-limited", "You are sending too fast."),
        ("upload-done", "upload-invalid", "The file does not match what was announced."),
        ("upload-data", "upload-invalid", "The data came out of order."),
    ],
)
def test_the_servers_refusal_fails_the_upload_with_its_words(
    rooms: Callable[..., FileRoom],
    connect: Callable[..., ChatClient],
    tmp_path: Path,
    refusal: tuple[str, str, str],
) -> None:
    kind, code, message = refusal
    path = tmp_path / "big.bin"
    path.write_bytes(payload(70_000))
    room = rooms(errors={kind: {"code": code, "message": message, "once": True}})
    client = connect(room.port)
    transfer = client.upload(path, text="the report")
    seen = until(client, TransferFailed)
    assert seen[-1] == TransferFailed(transfer, message, "the report")
    assert not [e for e in seen if isinstance(e, Received)], seen  # not a generic error
    # The next upload is not blamed for what is left of the first.
    again = client.upload(path)
    seen = until(client, TransferDone, again)
    assert not [e for e in seen if isinstance(e, Received | TransferFailed)], seen


def test_a_refused_say_with_a_file_gives_back_its_words(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    error = {"code": "rate-limited", "message": "You are sending too fast.", "once": True}
    room = rooms(errors={"say": error})
    client = connect(room.port)
    transfer = client.upload(path, text="my words")
    seen = until(client, TransferFailed)
    failed = seen[-1]
    assert failed.transfer == transfer
    assert failed.reason == "The file was not posted: You are sending too fast."
    assert failed.text == "my words"
    assert not [e for e in seen if isinstance(e, Unsent | Received)], seen


def test_more_than_max_uploads_wait_in_line_in_order(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    room = rooms(answer_uploads=False)
    client = connect(room.port)
    paths = []
    for number in range(MAX_UPLOADS + 2):
        paths.append(tmp_path / f"{number}.txt")
        paths[-1].write_bytes(payload(5000, number))
    transfers = [client.upload(path) for path in paths]
    deadline = time.monotonic() + WAIT
    while len([f for f in room.log if f["type"] == "upload"]) < MAX_UPLOADS:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # no more come while the server holds four
    uploads = [f["name"] for f in room.log if f["type"] == "upload"]
    assert uploads == [f"{n}.txt" for n in range(MAX_UPLOADS)]
    for transfer in transfers[:2]:
        assert transfer is not None
        client.cancel(transfer)
    seen = wait_for(client, TransferFailed, WAIT)
    seen += wait_for(client, TransferFailed, WAIT)
    assert [e.transfer for e in seen if isinstance(e, TransferFailed)] == transfers[:2]
    # Two places are free once the server has answered them: the rest go in order.
    for number in (7, 8):
        room.sends.put({"type": "upload-ready", "upload": number, "chunk": MAX_CHUNK})
    deadline = time.monotonic() + WAIT
    while len([f for f in room.log if f["type"] == "upload"]) < MAX_UPLOADS + 2:
        assert time.monotonic() < deadline, room.log
        time.sleep(0.01)
    uploads = [f["name"] for f in room.log if f["type"] == "upload"]
    assert uploads == [f"{n}.txt" for n in range(MAX_UPLOADS + 2)]
    discarded = [f for f in room.log if f["type"] == "upload-done"]
    assert [(f["upload"], f["sha256"]) for f in discarded] == [(7, DISCARD), (8, DISCARD)]


def test_cancel_mid_upload_discards_it_and_the_next_one_goes_through(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(payload(8_000_000))
    small = tmp_path / "small.bin"
    small.write_bytes(payload(1000, 2))
    room = rooms(rcvbuf=32_768)  # slow to read: the cancel comes mid-upload
    client = connect(room.port)
    first = client.upload(big, text="first")
    wait_for(client, TransferProgress, WAIT)
    assert first is not None
    client.cancel(first)
    failed = until(client, TransferFailed)[-1]
    assert failed == TransferFailed(first, "Cancelled.", "first")
    second = client.upload(small)
    seen = until(client, TransferDone, second)
    assert not [e for e in seen if isinstance(e, Received | TransferFailed)], seen
    client.close(3.0)
    room.stop()
    dones = [f for f in room.log if f["type"] == "upload-done"]
    assert dones[0] == {"type": "upload-done", "upload": 7, "sha256": DISCARD}
    assert room.data_frames < 8_000_000 // MAX_CHUNK  # it stopped sending


def test_chat_frames_overtake_upload_data(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    """While the server reads slowly, a say goes ahead of all but a few chunks."""
    path = tmp_path / "video.bin"
    path.write_bytes(payload(6_000_000))
    room = rooms(rcvbuf=32_768)

    def small_buffers(sock: socket.socket) -> PlainTransport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32_768)
        return PlainTransport(sock)

    client = connect(room.port, plain_factory=small_buffers)
    transfer = client.upload(path)
    wait_for(client, TransferProgress, WAIT)
    room.held.set()
    time.sleep(0.5)  # the client fills every buffer and waits
    before = room.data_frames
    client.say("overtaking")
    room.resumed.set()
    until(client, TransferDone, transfer)
    client.close(3.0)
    room.stop()
    say = next(i for i, f in enumerate(room.log) if f["type"] == "say" and not f.get("file"))
    assert room.log[say]["text"] == "overtaking"
    assert room.data_frames > before + 100  # most of the file was still to come
    # The kernel buffers (about 64 + 64 kB) and DATA_AHEAD hold what went first.
    assert 0 <= room.data_at_say - before < 12, (before, room.data_at_say)


def test_progress_is_rate_limited_and_ends_at_100_percent(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    path = tmp_path / "big.bin"
    size = 4_000_000
    path.write_bytes(payload(size))
    room = rooms()
    client = connect(room.port)
    started = time.monotonic()
    transfer = client.upload(path)
    seen = until(client, TransferDone, transfer)
    elapsed = time.monotonic() - started
    progress = of(seen, TransferProgress, transfer)
    assert len(progress) <= 10 * elapsed + 2, (len(progress), elapsed)
    assert progress[-1] == TransferProgress(transfer, size, size)
    assert [p.done for p in progress] == sorted(p.done for p in progress)


# -- downloads ------------------------------------------------------------------------


def kept(name: str, data: bytes, **extra: Any) -> Kept:
    return Kept(info_of(name, data, **extra), data)


def test_a_download_is_saved_whole_and_checked(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    data = payload(1_000_003)
    file = kept("movie.bin", data)
    room = rooms(files={file.info["id"]: file})
    client = connect(room.port)
    dest = tmp_path / "movie.bin"
    transfer = client.download(file_info(file.info), dest)
    seen = until(client, TransferDone, transfer)
    assert seen[-1] == TransferDone(transfer, None, dest)
    assert of(seen, TransferStarted, transfer) == [
        TransferStarted(transfer, False, "movie.bin", len(data))
    ]
    assert dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie.bin"]  # no part file left
    assert of(seen, TransferProgress, transfer)[-1].done == len(data)
    client.close(3.0)
    room.stop()
    asked = [(f["offset"], f["length"]) for f in room.log if f["type"] == "download"]
    assert asked == [
        (o, min(MAX_DOWNLOAD, len(data) - o)) for o in range(0, len(data), MAX_DOWNLOAD)
    ]


def test_an_empty_file_is_downloaded(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    file = kept("empty", b"")
    room = rooms(files={file.info["id"]: file})
    client = connect(room.port)
    dest = tmp_path / "empty"
    transfer = client.download(file_info(file.info), dest)
    until(client, TransferDone, transfer)
    assert dest.read_bytes() == b""


def test_two_downloads_at_once_and_one_file_twice(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    one, two = kept("one", payload(700_000, 1)), kept("two", payload(900_000, 2))
    room = rooms(files={one.info["id"]: one, two.info["id"]: two})
    client = connect(room.port)
    transfers = {
        client.download(file_info(one.info), tmp_path / "one"): one.data,
        client.download(file_info(two.info), tmp_path / "two"): two.data,
        client.download(file_info(one.info), tmp_path / "one again"): one.data,
    }
    done: dict[int, Path] = {}
    deadline = time.monotonic() + WAIT
    while len(done) < 3:
        event = wait_for(client, (TransferDone, TransferFailed), deadline - time.monotonic())[-1]
        assert isinstance(event, TransferDone), event
        done[event.transfer] = event.path
    for transfer, data in transfers.items():
        assert done[transfer].read_bytes() == data
    client.close(3.0)
    room.stop()
    asked = [(f["file"], f["offset"]) for f in room.log if f["type"] == "download"]
    # The two files' ranges took turns: both ran at once.
    assert asked.index((two.info["id"], 0)) < asked.index((one.info["id"], 2 * MAX_DOWNLOAD))


def hostile(*frames: Callable[[dict[str, Any], Kept], dict[str, Any]]) -> Reply:
    """Answer the first range with ``frames`` (built from the request and the file)."""

    def reply(room: FileRoom, peer: Peer, obj: dict[str, Any]) -> None:
        if obj["offset"] == 0:
            for make in frames:
                peer.send(make(obj, room.files[obj["file"]]))

    return reply


def data_frame(offset: int, data: bytes, eof: bool = False, file: str | None = None) -> Any:
    def make(obj: dict[str, Any], kept_: Kept) -> dict[str, Any]:
        return {
            "type": "file-data",
            "file": file or obj["file"],
            "offset": offset,
            "data": base64.b64encode(data).decode(),
            "eof": eof,
        }

    return make


def raw_frame(**fields: Any) -> Any:
    def make(obj: dict[str, Any], kept_: Kept) -> dict[str, Any]:
        return {"type": "file-data", "file": obj["file"], "offset": 0, "eof": False, **fields}

    return make


SMALL = payload(1000)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (hostile(data_frame(10, SMALL)), "The server sent the wrong part of the file."),
        (hostile(raw_frame(data="not base64!")), "The server sent data that is not valid."),
        (hostile(raw_frame(data="QUJD=A==")), "The server sent data that is not valid."),
        (
            hostile(data_frame(0, SMALL + b"more", eof=True)),
            "The server sent more of the file than was asked for.",
        ),
        (
            hostile(data_frame(0, b"x" * 600_000)),
            "The server sent more of the file than was asked for.",
        ),
        (
            hostile(data_frame(0, SMALL[:500], eof=True)),
            "The server sent the end of the file in the wrong place.",
        ),
        (
            hostile(data_frame(0, SMALL, eof=False)),
            "The server sent the end of the file in the wrong place.",
        ),
        (hostile(data_frame(0, b"")), "The server sent an empty part of the file."),
        (
            hostile(data_frame(0, payload(1000, 9), eof=True)),
            "The file arrived damaged: its SHA-256 does not match.",
        ),
        (
            lambda room, peer, obj: peer.send(
                error_frame("no-such-file", "That file is no longer kept.", "download")
            ),
            "That file is no longer kept.",
        ),
    ],
)
def test_hostile_file_data_fails_the_download_with_a_reason(
    rooms: Callable[..., FileRoom],
    connect: Callable[..., ChatClient],
    tmp_path: Path,
    reply: Reply,
    reason: str,
) -> None:
    file = kept("x.bin", SMALL)
    room = rooms(files={file.info["id"]: file}, download=reply)
    client = connect(room.port)
    dest = tmp_path / "x.bin"
    transfer = client.download(file_info(file.info), dest)
    seen = until(client, TransferFailed)
    assert seen[-1] == TransferFailed(transfer, reason)
    assert not [e for e in seen if isinstance(e, Received | TransferDone)], seen
    assert list(tmp_path.iterdir()) == []  # no part file, no file
    assert client.running and client.joined  # only the transfer failed


def test_an_error_about_one_download_is_not_blamed_on_another(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    """The server's data may be overtaken by its errors, which name no file."""
    data = payload(1_500_000)
    file, gone = kept("kept.bin", data), kept("gone.bin", SMALL)

    def overtaken(room: FileRoom, peer: Peer, obj: dict[str, Any]) -> None:
        if obj["file"] == gone.info["id"]:
            peer.send(error_frame("no-such-file", "That file is gone.", "download"))
        else:  # data goes behind the chat frames: later
            room.later += file_data(obj["file"], data, obj["offset"], obj["length"])

    room = rooms(files={file.info["id"]: file}, download=overtaken)
    client = connect(room.port)
    kept_one = client.download(file_info(file.info), tmp_path / "kept.bin")
    gone_one = client.download(file_info(gone.info), tmp_path / "gone.bin")
    seen = until(client, TransferFailed)
    assert seen[-1] == TransferFailed(gone_one, "That file is gone.")
    until(client, TransferDone, kept_one)
    assert (tmp_path / "kept.bin").read_bytes() == data


def test_file_data_nobody_asked_for_is_dropped(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    file = kept("x.bin", SMALL)

    def honest(obj: dict[str, Any], kept_: Kept) -> dict[str, Any]:
        return file_data(obj["file"], kept_.data, 0, len(kept_.data))[0]

    reply = hostile(data_frame(0, b"junk", file="f-other"), honest)
    room = rooms(files={file.info["id"]: file}, download=reply)
    client = connect(room.port)
    transfer = client.download(file_info(file.info), tmp_path / "x.bin")
    until(client, TransferDone, transfer)
    assert (tmp_path / "x.bin").read_bytes() == SMALL


def test_a_server_that_never_answers_a_download_can_be_cancelled(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    file = kept("x.bin", SMALL)
    room = rooms(files={file.info["id"]: file}, download=lambda room, peer, obj: None)
    client = connect(room.port)
    transfer = client.download(file_info(file.info), tmp_path / "x.bin")
    wait_for(client, TransferStarted, WAIT)
    expect_no(client, (TransferDone, TransferFailed), 0.5)
    assert transfer is not None
    client.cancel(transfer)
    assert until(client, TransferFailed)[-1] == TransferFailed(transfer, "Cancelled.")
    assert list(tmp_path.iterdir()) == []


def test_cancel_mid_download_then_the_same_file_again(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    data = payload(2_000_000)
    file = kept("x.bin", data)
    gate = threading.Event()

    def slow(room: FileRoom, peer: Peer, obj: dict[str, Any]) -> None:
        if obj["offset"] > 0:
            gate.wait(WAIT)  # the first range comes; then nothing for a while
        FileRoom.honest(room, peer, obj)

    room = rooms(files={file.info["id"]: file}, download=slow)
    client = connect(room.port)
    first = client.download(file_info(file.info), tmp_path / "first")
    wait_for(client, TransferProgress, WAIT)
    assert first is not None
    client.cancel(first)
    assert until(client, TransferFailed)[-1] == TransferFailed(first, "Cancelled.")
    again = client.download(file_info(file.info), tmp_path / "again")
    gate.set()
    seen = until(client, TransferDone, again)
    assert not [e for e in seen if isinstance(e, TransferFailed)], seen
    assert (tmp_path / "again").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_every_transfer_fails_when_the_connection_is_lost(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    file, other = kept("x.bin", payload(3_000_000)), kept("y.bin", payload(1000, 2))
    partly = hostile(data_frame(0, file.data[:1000]))  # then nothing more
    files = {file.info["id"]: file, other.info["id"]: other}
    room = rooms(files=files, download=partly, rcvbuf=32_768)
    client = connect(room.port)
    upload_path = tmp_path / "up.bin"
    upload_path.write_bytes(payload(20_000_000))
    download = client.download(file_info(file.info), tmp_path / "down.bin")
    wait_for(client, TransferProgress, WAIT)
    upload = client.upload(upload_path, text="words")
    wait_for(client, TransferProgress, WAIT)
    room.held.set()  # nothing read any more: the upload stays under way
    # Under way, or waiting for their turn: every one fails.
    downloads = [
        download,
        client.download(file_info(other.info), tmp_path / "other.bin"),
        client.download(file_info(file.info), tmp_path / "again.bin"),
    ]
    assert room.peer is not None
    room.peer.sock.shutdown(socket.SHUT_RDWR)
    failed = {}
    deadline = time.monotonic() + WAIT
    while len(failed) < 4:
        event = wait_for(client, TransferFailed, deadline - time.monotonic())[-1]
        failed[event.transfer] = event
    assert failed[upload] == TransferFailed(upload, "The connection was lost.", "words")
    for each in downloads:
        assert failed[each] == TransferFailed(each, "The connection was lost.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.bin"]  # no part file left
    client.close(3.0)


# -- a message's file made safe -------------------------------------------------------


def message_with(**file: Any) -> ChatMessage:
    info = {**info_of("cat.jpg", b"cat"), **file}
    return ChatMessage(1, "bob", "look", 1e9, file=FileInfo(**info))


def made_safe(**file: Any) -> FileInfo | None:
    safe = network._made_safe(message_with(**file))
    assert isinstance(safe, ChatMessage)
    assert safe.text == "look"  # the text always shows
    return safe.file


@pytest.mark.parametrize(
    "name", ["two\nlines.jpg", "evil\u202egpj.exe", "x" * 10_000, "\ud800", "", "a\u2028b"]
)
def test_a_hostile_file_name_is_made_one_bounded_line(name: str) -> None:
    safe = made_safe(name=name)
    assert safe is not None
    assert 0 < len(safe.name) <= 80
    assert "\n" not in safe.name and "\u202e" not in safe.name and "\u2028" not in safe.name
    assert "\ud800" not in safe.name


@pytest.mark.parametrize(
    "fields",
    [
        {"size": -1},
        {"size": 2**62},
        {"sha256": "z" * 64},
        {"sha256": "ab"},
        {"id": ""},
        {"id": "x" * 1000},
        {"id": "f-\n"},
    ],
)
def test_a_file_that_cannot_be_checked_is_dropped_and_the_text_stays(fields: dict) -> None:
    assert made_safe(**fields) is None


def test_a_file_out_of_range_is_clamped() -> None:
    safe = made_safe(width=1_000_000, height=20, mime="not a type")
    assert safe is not None
    assert (safe.width, safe.height, safe.mime) == (None, None, DEFAULT_MIME)
    safe = made_safe(width=800, height=600, mime="IMAGE/JPEG", sha256="AB" * 32)
    assert safe is not None
    assert (safe.width, safe.height, safe.mime, safe.sha256) == (800, 600, "image/jpeg", "ab" * 32)


def test_a_hostile_file_over_the_wire_arrives_safe(
    rooms: Callable[..., FileRoom], connect: Callable[..., ChatClient]
) -> None:
    room = rooms()
    client = connect(room.port)
    info = {**info_of("a\nb\u202e.txt", b"x"), "width": -5, "height": 10}
    sent = {"type": "message", "id": 5, "from": "bob", "text": "hi", "ts": 1e9, "file": info}
    room.sends.put(sent)
    message = wait_for(client, Received, WAIT)[-1].message
    assert message.file.name == "a\\u000ab\\u202e.txt"
    assert message.file.width is None
    room.sends.put({**sent, "id": 6, "file": {**info, "sha256": "no"}})
    message = wait_for(client, Received, WAIT)[-1].message
    assert message.file is None and message.text == "hi"
    drain(client)


# -- against the real server --------------------------------------------------------


def uploaded(client: ChatClient, path: Path, **options: Any) -> FileInfo:
    """Upload ``path`` and return the posted file."""
    transfer = client.upload(path, **options)
    assert transfer is not None
    done = until(client, TransferDone, transfer)[-1]
    assert isinstance(done.file, FileInfo)
    return done.file


def downloaded(client: ChatClient, files: dict[Path, FileInfo]) -> None:
    """Download every file at once, each into its path; fails on any failure."""
    transfers = {client.download(info, dest): dest for dest, info in files.items()}
    assert None not in transfers
    done: set[int] = set()
    deadline = time.monotonic() + 3 * WAIT
    while len(done) < len(transfers):
        event = wait_for(client, (TransferDone, TransferFailed), deadline - time.monotonic())[-1]
        assert isinstance(event, TransferDone), event
        assert event.path == transfers[event.transfer]
        done.add(event.transfer)


def test_real_server_round_trip_two_downloads_at_once(
    start_server: Callable[..., Any], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    server = start_server()
    alice = connect(server.port)
    first, second = tmp_path / "first.bin", tmp_path / "second.jpg"
    first.write_bytes(payload(3_500_000, 1))
    second.write_bytes(payload(1_200_000, 2))
    one = uploaded(alice, first, text="the first")
    two = uploaded(alice, second)
    assert (one.name, one.size, one.sha256) == (
        "first.bin",
        3_500_000,
        hashlib.sha256(first.read_bytes()).hexdigest(),
    )
    assert two.mime == "image/jpeg"
    back = tmp_path / "back"
    back.mkdir()
    downloaded(alice, {back / "first.bin": one, back / "second.jpg": two})
    assert (back / "first.bin").read_bytes() == first.read_bytes()
    assert (back / "second.jpg").read_bytes() == second.read_bytes()
    assert sorted(p.name for p in back.iterdir()) == ["first.bin", "second.jpg"]


def test_real_server_a_late_joiner_downloads_while_the_uploader_does(
    start_server: Callable[..., Any], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    server = start_server()
    alice = connect(server.port)
    path = tmp_path / "shared.bin"
    path.write_bytes(payload(2_000_000, 3))
    info = uploaded(alice, path)
    bob = ChatClient(HOST, server.port, "bob", known=PlaintextAgreed())
    try:
        bob.start()
        wait_for(bob, Welcomed, WAIT)
        theirs = alice.download(info, tmp_path / "alice.bin")
        mine = bob.download(info, tmp_path / "bob.bin")
        assert theirs is not None and mine is not None
        until(bob, TransferDone, mine)
        until(alice, TransferDone, theirs)
    finally:
        bob.close(3.0)
    assert (tmp_path / "alice.bin").read_bytes() == path.read_bytes()
    assert (tmp_path / "bob.bin").read_bytes() == path.read_bytes()


def test_real_server_chat_goes_on_during_an_upload(
    start_server: Callable[..., Any],
    connect: Callable[..., ChatClient],
    open_client: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = start_server()
    alice = connect(server.port)
    bob = open_client(server, "bob")
    path = tmp_path / "big.bin"
    path.write_bytes(payload(30_000_000, 4))
    transfer = alice.upload(path)
    wait_for(alice, TransferProgress, WAIT)
    alice.say("still here")
    message = bob.skip_until("message", WAIT)
    assert message["text"] == "still here"
    seen = until(alice, TransferDone, transfer)
    # The say was echoed before the upload's end.
    texts = [e.message.text for e in seen if isinstance(e, Received)]
    assert texts[0] == "still here"


def test_real_server_refusals_are_the_transfers(
    start_server: Callable[..., Any], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    server = start_server(max_file_mb=1)
    alice = connect(server.port)
    big, small = tmp_path / "big.bin", tmp_path / "small.txt"
    big.write_bytes(payload(1_500_000))
    small.write_bytes(b"small")
    transfer = alice.upload(big, text="too big")
    seen = until(alice, TransferFailed)
    assert seen[-1].transfer == transfer and seen[-1].text == "too big"
    assert "1 MB" in seen[-1].reason or "MiB" in seen[-1].reason, seen[-1].reason
    nothing = FileInfo("f-" + "0" * 24, "x", 5, "text/plain", hashlib.sha256(b"x").hexdigest())
    missing = alice.download(nothing, tmp_path / "x")
    seen += until(alice, TransferFailed)
    assert seen[-1] == TransferFailed(missing, "There is no such file.")
    assert uploaded(alice, small).size == 5
    assert not [e for e in seen if isinstance(e, Received)], seen


def test_real_server_cancel_mid_upload_then_upload_again(
    start_server: Callable[..., Any], connect: Callable[..., ChatClient], tmp_path: Path
) -> None:
    server = start_server()
    alice = connect(server.port)
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(payload(30_000_000))
    small.write_bytes(payload(100_000, 5))
    transfer = alice.upload(big)
    wait_for(alice, TransferProgress, WAIT)
    assert transfer is not None
    alice.cancel(transfer)
    assert until(alice, TransferFailed)[-1] == TransferFailed(transfer, "Cancelled.")
    info = uploaded(alice, small)
    back = tmp_path / "back.bin"
    downloaded(alice, {back: info})
    assert back.read_bytes() == small.read_bytes()
