"""PROTOCOL.md "Files and images" over real sockets: every rule of the extension."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from server.config import FILES_FOLDER
from tests.wire import Closed, RawClient

MIB = 1024 * 1024
CHUNK = 32_768
RANGE = 262_144


PRESENCE = frozenset({"joined", "left", "users", "renamed"})


def answer(client: RawClient, type_: str, *, skip: frozenset[str] = PRESENCE, **fields) -> dict:
    """The next frame but presence (others join as a test goes), of ``type_`` with ``fields``."""
    while True:
        obj = client.recv()
        if obj["type"] not in skip:
            break
    assert obj["type"] == type_, f"expected {type_}, got {obj}"
    for key, value in fields.items():
        assert obj.get(key) == value, f"expected {key}={value!r} in {obj}"
    return obj


def refused(client: RawClient, code: str, in_reply_to: str) -> dict:
    error = answer(client, "error", code=code, in_reply_to=in_reply_to)
    assert error["message"]
    return error


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def start_upload(client: RawClient, data: bytes, name: str = "a.bin", **fields) -> int:
    client.send({"type": "upload", "name": name, "size": len(data), **fields})
    ready = answer(client, "upload-ready")
    assert ready["chunk"] == CHUNK
    return ready["upload"]


def send_data(client: RawClient, number: int, data: bytes, start: int = 0) -> None:
    for offset in range(start, len(data), CHUNK):
        piece = data[offset : offset + CHUNK]
        client.send({"type": "upload-data", "upload": number, "offset": offset, "data": b64(piece)})


def upload(client: RawClient, data: bytes, name: str = "a.bin", **fields) -> str:
    """Upload ``data``; the file id the server gives it."""
    number = start_upload(client, data, name, **fields)
    send_data(client, number, data)
    client.send(
        {"type": "upload-done", "upload": number, "sha256": hashlib.sha256(data).hexdigest()}
    )
    return answer(client, "uploaded", upload=number)["file"]


def post(client: RawClient, file_id: str, text: str = "", to: str | None = None) -> dict:
    """Say ``text`` with the file; the echo."""
    say = {"type": "say", "text": text, "file": file_id}
    if to is not None:
        say["to"] = to
    client.send(say)
    return answer(client, "message")


def download(client: RawClient, file_id: str, offset: int = 0, length: int = RANGE) -> list[dict]:
    """One range's file-data frames, checked to cover it in order."""
    client.send({"type": "download", "file": file_id, "offset": offset, "length": length})
    frames, at = [], offset
    while True:
        # Chat may come between a download's frames.
        piece = answer(client, "file-data", skip=PRESENCE | {"message"}, file=file_id, offset=at)
        frames.append(piece)
        at += len(base64.b64decode(piece["data"], validate=True))
        if piece["eof"] or at >= offset + length:
            assert at <= offset + length
            return frames


def fetch(client: RawClient, file_id: str) -> bytes:
    """The whole file, a range at a time."""
    data = bytearray()
    while True:
        frames = download(client, file_id, len(data))
        for piece in frames:
            data += base64.b64decode(piece["data"])
        if frames[-1]["eof"]:
            return bytes(data)


def alive(client: RawClient) -> None:
    client.send({"type": "ping", "n": 1})
    answer(client, "pong", n=1)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


def blobs(server) -> list[Path]:
    return [p for p in (server.config.data_path() / FILES_FOLDER).rglob("*") if p.is_file()]


def test_a_file_is_posted_seen_by_all_and_downloaded_byte_for_byte(server, open_client):
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    data = os.urandom(3 * RANGE + 1234)
    file_id = upload(alice, data, "holiday notes.bin", mime="application/octet-stream")
    echo = post(alice, file_id, "look")
    expected = {
        "id": file_id,
        "name": "holiday notes.bin",
        "size": len(data),
        "mime": "application/octet-stream",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert echo["file"] == expected and echo["text"] == "look"
    seen = answer(bob, "message", id=echo["id"])
    assert seen["file"] == expected
    assert fetch(bob, file_id) == data
    assert fetch(alice, file_id) == data
    alive(bob)


def test_welcome_lists_files_and_no_files_refuses_every_file_frame(start_server, open_client):
    on = start_server()
    with RawClient(on.port) as client:
        assert "files" in client.join("alice")["features"]
    off = start_server(files=False, store=False)
    client = open_client(off)
    welcome = client.join("bob")
    assert "files" not in welcome["features"]
    frames = [
        {"type": "upload", "name": "a.txt", "size": 1},
        {"type": "upload-data", "upload": 1, "offset": 0, "data": "YQ=="},
        {"type": "upload-done", "upload": 1, "sha256": "0" * 64},
        {"type": "download", "file": "f-1"},
        {"type": "say", "text": "x", "file": "f-1"},
    ]
    for frame in frames:
        client.send(frame)
        refused(client, "files-disabled", frame["type"])
    alive(client)


def test_a_late_joiner_sees_the_file_in_history_and_downloads_it(server, open_client):
    alice = open_client(server, "alice")
    data = b"minutes of the meeting\n" * 100
    file_id = upload(alice, data, "minutes.txt", mime="text/plain")
    echo = post(alice, file_id)
    assert echo["text"] == ""
    late = open_client(server, "late")
    assert [m["file"]["id"] for m in late.history if "file" in m] == [file_id]
    assert fetch(late, file_id) == data


def test_an_unposted_file_is_its_uploaders_only(server, open_client):
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    file_id = upload(alice, b"draft")
    assert fetch(alice, file_id) == b"draft"
    bob.send({"type": "download", "file": file_id})
    refused(bob, "no-such-file", "download")
    bob.send({"type": "say", "text": "mine now", "file": file_id})
    refused(bob, "no-such-file", "say")
    alive(bob)


def test_a_private_file_is_for_its_sender_and_recipient_only(server, open_client):
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    carol = open_client(server, "carol")
    file_id = upload(alice, b"for bob's eyes")
    echo = post(alice, file_id, "psst", to="BOB")
    assert echo["to"] == "bob"
    assert answer(bob, "message", id=echo["id"])["file"]["id"] == file_id
    assert fetch(bob, file_id) == b"for bob's eyes"
    assert fetch(alice, file_id) == b"for bob's eyes"
    carol.send({"type": "download", "file": file_id})
    refused(carol, "no-such-file", "download")
    # Nor is it in anyone's history.
    late = open_client(server, "late")
    assert not [m for m in late.history if "file" in m]


def test_a_recipient_may_pass_a_file_on(server, open_client):
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    carol = open_client(server, "carol")
    file_id = upload(alice, b"pass it on")
    echo = post(alice, file_id, to="bob")
    answer(bob, "message", id=echo["id"])
    bob.send({"type": "say", "text": "from alice", "file": file_id})
    bob.skip_until("message")
    carol.skip_until("message")
    assert fetch(carol, file_id) == b"pass it on"


def test_a_say_with_a_file_to_nobody_posts_nothing(server, open_client):
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    file_id = upload(alice, b"x")
    alice.send({"type": "say", "text": "", "file": file_id, "to": "nobody"})
    refused(alice, "no-such-user", "say")
    bob.send({"type": "download", "file": file_id})
    refused(bob, "no-such-file", "download")


def test_the_same_bytes_are_kept_once(server, open_client):
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    data = os.urandom(100_000)
    first = upload(alice, data, "one.bin")
    second = upload(bob, data, "two.bin")
    assert first != second
    post(alice, first)
    answer(bob, "message")
    post(bob, second)
    answer(alice, "message")
    kept = [p for p in blobs(server) if p.stat().st_size == len(data)]
    assert len(kept) == 1 and kept[0].read_bytes() == data
    assert fetch(alice, second) == data


@pytest.mark.parametrize(
    ("frames", "code", "in_reply_to"),
    [
        ([{"type": "upload-data", "upload": 99, "offset": 0, "data": "YQ=="}], None, "upload-data"),
        ([{"type": "upload-done", "upload": 99, "sha256": "0" * 64}], None, "upload-done"),
        ([{"type": "upload-data", "upload": "N", "offset": 1, "data": "YQ=="}], None, None),
        ([{"type": "upload-data", "upload": "N", "offset": 0, "data": "not base64!"}], None, None),
        ([{"type": "upload-data", "upload": "N", "offset": 0, "data": b64(b"x" * 11)}], None, None),
        (
            [{"type": "upload-data", "upload": "N", "offset": 0, "data": b64(b"x" * 40_000)}],
            None,
            None,
        ),
        ([{"type": "upload-done", "upload": "N", "sha256": "0" * 64}], None, "upload-done"),
        (
            [
                {"type": "upload-data", "upload": "N", "offset": 0, "data": b64(b"0123456789")},
                {"type": "upload-done", "upload": "N", "sha256": "0" * 64},
            ],
            None,
            "upload-done",
        ),
        (
            [{"type": "upload-done", "upload": "N", "sha256": "xyz"}],
            "bad-field",
            "upload-done",
        ),
    ],
    ids=[
        "unknown-upload-data",
        "unknown-upload-done",
        "out-of-order",
        "not-base64",
        "more-than-announced",
        "chunk-too-big",
        "done-too-soon",
        "wrong-hash",
        "malformed-hash",
    ],
)
def test_a_wrong_upload_is_refused_and_the_connection_stays(
    server, open_client, frames, code, in_reply_to
):
    alice = open_client(server, "alice")
    number = start_upload(alice, b"0123456789")
    for frame in frames:
        alice.send({**frame, "upload": number} if frame.get("upload") == "N" else frame)
    reply_to = in_reply_to or frames[-1]["type"]
    refused(alice, code or "upload-invalid", reply_to)
    alive(alice)
    if code is None and frames[0].get("upload") == "N":
        # The upload is discarded: going on with it is an unknown upload.
        alice.send({"type": "upload-done", "upload": number, "sha256": "0" * 64})
        refused(alice, "upload-invalid", "upload-done")
    assert not list((server.config.data_path() / FILES_FOLDER / "incoming").iterdir()) or code


def test_at_most_four_uploads_at_once(server, open_client):
    alice = open_client(server, "alice")
    numbers = [start_upload(alice, b"x", f"{n}.txt") for n in range(4)]
    assert len(set(numbers)) == 4
    alice.send({"type": "upload", "name": "5.txt", "size": 1})
    refused(alice, "upload-invalid", "upload")
    send_data(alice, numbers[0], b"x")
    alice.send(
        {"type": "upload-done", "upload": numbers[0], "sha256": hashlib.sha256(b"x").hexdigest()}
    )
    answer(alice, "uploaded", upload=numbers[0])
    start_upload(alice, b"y", "5.txt")  # a place is free again


def test_a_file_over_the_limit_is_too_large(start_server, open_client):
    server = start_server(max_file_mb=1)
    alice = open_client(server, "alice")
    alice.send({"type": "upload", "name": "big.iso", "size": MIB + 1})
    error = refused(alice, "file-too-large", "upload")
    assert "1 MiB" in error["message"]
    upload(alice, b"z" * MIB, "just.bin")  # the limit itself is allowed


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "a\nb.txt", "report\u202egpj.exe", "", "x" * 300]
)
def test_a_hostile_name_is_refused(server, open_client, name):
    alice = open_client(server, "alice")
    alice.send({"type": "upload", "name": name, "size": 1})
    error = refused(alice, "bad-field", "upload")
    assert "\n" not in error["message"] and "\u202e" not in error["message"]


def test_image_size_is_told_and_a_bomb_refused(server, open_client):
    alice = open_client(server, "alice")
    picture = png(800, 600)
    file_id = upload(alice, picture, "cat.png", mime="application/octet-stream")
    info = post(alice, file_id)["file"]
    assert (info["mime"], info["width"], info["height"]) == ("image/png", 800, 600)
    # 10,000 x 10,000 pixels of one colour: a few kB that would take 300 MB
    # to decode in colour.
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, "PNG")
    bomb_bytes = bomb.getvalue()
    assert len(bomb_bytes) < 2 * MIB
    number = start_upload(alice, bomb_bytes, "bomb.png", mime="image/png")
    send_data(alice, number, bomb_bytes)
    alice.send(
        {"type": "upload-done", "upload": number, "sha256": hashlib.sha256(bomb_bytes).hexdigest()}
    )
    error = refused(alice, "upload-invalid", "upload-done")
    assert "10000" in error["message"].replace(",", "")


def test_text_named_like_an_image_has_no_dimensions(server, open_client):
    alice = open_client(server, "alice")
    file_id = upload(alice, b"not a picture", "fake.png", mime="image/png")
    info = post(alice, file_id)["file"]
    assert "width" not in info and "height" not in info


def test_ranges(server, open_client):
    alice = open_client(server, "alice")
    data = os.urandom(70_000)
    file_id = upload(alice, data)
    post(alice, file_id)
    frames = download(alice, file_id, 1000, 100)
    assert b"".join(base64.b64decode(f["data"]) for f in frames) == data[1000:1100]
    assert frames[-1]["eof"] is False
    tail = download(alice, file_id, 69_990, RANGE)
    assert b"".join(base64.b64decode(f["data"]) for f in tail) == data[69_990:]
    assert tail[-1]["eof"] is True
    end = download(alice, file_id, len(data), 10)
    assert end == [
        {"type": "file-data", "file": file_id, "offset": len(data), "data": "", "eof": True}
    ]
    for bad in ({"offset": len(data) + 1}, {"offset": -1}, {"length": 0}, {"length": RANGE + 1}):
        alice.send({"type": "download", "file": file_id, **bad})
        refused(alice, "bad-field", "download")
    alice.send({"type": "download", "file": "f-" + "0" * 24})
    refused(alice, "no-such-file", "download")
    alive(alice)


def test_quota_forgets_the_oldest_files_first(start_server, open_client):
    server = start_server(files_quota_mb=1)
    alice = open_client(server, "alice")
    ids = []
    for n in range(3):
        file_id = upload(alice, os.urandom(400_000), f"{n}.bin")
        post(alice, file_id)
        ids.append(file_id)
    alice.send({"type": "download", "file": ids[0]})
    refused(alice, "no-such-file", "download")
    assert len(fetch(alice, ids[2])) == 400_000
    assert sum(p.stat().st_size for p in blobs(server)) <= MIB
    # The message still names it: late joiners see it, and get no-such-file too.
    late = open_client(server, "late")
    assert [m["file"]["id"] for m in late.history if "file" in m] == ids


def test_files_outlive_a_restart(start_server, tmp_path):
    data = os.urandom(50_000)
    first = start_server(data_dir=tmp_path / "kept")
    with RawClient(first.port) as alice:
        alice.join("alice")
        file_id = upload(alice, data, "kept.bin")
        message_id = post(alice, file_id)["id"]
        unposted = upload(alice, b"never posted", "draft.txt")
    first.shutdown()
    first.server_close()
    second = start_server(data_dir=tmp_path / "kept")
    with RawClient(second.port) as bob:
        bob.join("bob")
        assert [m["file"]["id"] for m in bob.history if m["id"] == message_id] == [file_id]
        assert fetch(bob, file_id) == data
        bob.send({"type": "download", "file": unposted})
        refused(bob, "no-such-file", "download")


def test_downloads_never_count_towards_the_slow_reader_bound(start_server, open_client):
    # A bound of 64 KiB, and a download of 2 MiB asked for at once and not read.
    server = start_server(max_queue=64 * 1024, store=False)
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    data = os.urandom(2 * MIB)
    file_id = upload(alice, data)
    post(alice, file_id)
    bob.skip_until("message")
    bob.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 32_768)
    for offset in range(0, len(data), RANGE):
        bob.send({"type": "download", "file": file_id, "offset": offset, "length": RANGE})
    time.sleep(0.5)  # the server fills bob's socket and waits
    alice.send({"type": "say", "text": "still there?"})
    answer(alice, "message")
    # bob is still in the room, and the chat line came before the rest of the file.
    frames, got = [], bytearray()
    while len(got) < len(data):
        frame = bob.recv()
        frames.append(frame["type"])
        if frame["type"] == "file-data":
            got += base64.b64decode(frame["data"])
    assert bytes(got) == data
    assert "message" in frames
    assert frames.index("message") < len(frames) - 8, "the chat line waited for the download"
    alive(bob)


def test_chat_is_not_delayed_by_downloads_of_others(server, open_client):
    alice = open_client(server, "alice")
    data = os.urandom(4 * MIB)
    file_id = upload(alice, data, "big.bin")
    post(alice, file_id)
    downloaders = [open_client(server, f"d{n}") for n in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def pull(client: RawClient) -> None:
        try:
            while not stop.is_set():
                assert fetch(client, file_id) == data
        except (Closed, TimeoutError, AssertionError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(c,)) for c in downloaders]
    for thread in threads:
        thread.start()
    try:
        bob = open_client(server, "bob")
        for n in range(10):  # within alice's rate limit
            alice.send({"type": "say", "text": f"line {n}"})
            bob.skip_until("message", timeout=2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors


def test_a_slow_disk_holds_back_the_uploader_not_the_room(server, open_client, monkeypatch):
    from server import files as files_module  # noqa: PLC0415 - patched for this test only
    from server import transfers as transfers_module  # noqa: PLC0415

    real_write = files_module.Incoming.write
    written: list[int] = []

    def slow_write(self, offset: int, data: bytes) -> None:
        time.sleep(0.02)  # 1.6 MB/s: a disk far slower than the client
        real_write(self, offset, data)
        written.append(offset)

    monkeypatch.setattr(files_module.Incoming, "write", slow_write)
    real_data = transfers_module.Transfers.data
    queued: list[int] = []

    def counted_data(self, data) -> None:
        real_data(self, data)
        queued.append(self._writing)  # chunks read from alice, not yet on disk

    monkeypatch.setattr(transfers_module.Transfers, "data", counted_data)
    alice = open_client(server, "alice")
    bob = open_client(server, "bob")
    data = os.urandom(100 * CHUNK)  # 3.2 MB: 2 s of that disk
    number = start_upload(alice, data)
    sender = threading.Thread(target=send_data, args=(alice, number, data))
    sender.start()
    try:
        time.sleep(0.3)
        # The server reads no more of alice than its disk keeps up with (TCP
        # holds the rest back), and bob is answered meanwhile.
        for n in range(5):
            bob.send({"type": "ping", "n": n})
            answer(bob, "pong", n=n)
        assert len(written) < 60
    finally:
        sender.join(30)
    digest = hashlib.sha256(data).hexdigest()
    alice.send({"type": "upload-done", "upload": number, "sha256": digest})
    uploaded = answer(alice, "uploaded", upload=number)
    assert len(written) == 100 and uploaded["file"].startswith("f-")
    assert max(queued) == transfers_module.WRITES_AHEAD  # never more read ahead of the disk


def test_uploads_in_progress_stay_within_the_quota_together(start_server, open_client):
    server = start_server(files_quota_mb=1)
    alice = open_client(server, "alice")
    data = os.urandom(600_000)
    first = start_upload(alice, data, "one.bin")
    alice.send({"type": "upload", "name": "two.bin", "size": len(data)})
    error = refused(alice, "file-too-large", "upload")
    assert "try this one again" in error["message"]
    send_data(alice, first, data)
    digest = hashlib.sha256(data).hexdigest()
    alice.send({"type": "upload-done", "upload": first, "sha256": digest})
    answer(alice, "uploaded", upload=first)
    upload(alice, data, "two.bin")  # the first is kept: room for the next


def test_a_negative_size_is_a_bad_field(server, open_client):
    alice = open_client(server, "alice")
    alice.send({"type": "upload", "name": "a.txt", "size": -1})
    refused(alice, "bad-field", "upload")
    alive(alice)
