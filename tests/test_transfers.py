"""server.transfers without sockets: the download frames it writes by hand."""

from __future__ import annotations

import base64
import os

import pytest

from server import transfers
from server.protocol import FileData, FileInfo, encode
from server.transfers import FILE_DATA_CHUNK, _file_data

DIGEST = "0" * 64


@pytest.mark.parametrize(
    ("size", "offset", "length"),
    [
        (0, 0, 0),
        (10, 10, 0),
        (10, 0, 10),
        (10, 3, 5),
        (FILE_DATA_CHUNK, 0, FILE_DATA_CHUNK),
        (3 * FILE_DATA_CHUNK + 7, 0, 3 * FILE_DATA_CHUNK + 7),
        (5 * FILE_DATA_CHUNK, FILE_DATA_CHUNK - 1, 2 * FILE_DATA_CHUNK + 2),
    ],
)
def test_file_data_frames_are_what_encode_would_write(size, offset, length):
    info = FileInfo('f-\u00e9"1', "x", size, "a/b", DIGEST)  # an id that JSON must escape
    data = os.urandom(length)
    frames = _file_data(data, info, offset)
    expected = []
    for start in range(0, max(1, len(data)), FILE_DATA_CHUNK):
        piece = data[start : start + FILE_DATA_CHUNK]
        last = start + FILE_DATA_CHUNK >= len(data)
        text = base64.b64encode(piece).decode()
        expected.append(
            encode(FileData(info.id, offset + start, text, last and offset + length >= size))
        )
    assert frames == expected
    assert frames[-1].endswith(b'"eof":true}') == (offset + length >= size)


class CountingStore:
    """The part of a FileStore that FileService.file_data reads."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, int, int]] = []

    def read(self, file_id: str, offset: int, length: int) -> bytes:
        self.reads.append((file_id, offset, length))
        return bytes(length)

    def close(self) -> None:
        pass


def test_a_range_many_download_is_read_and_encoded_once(monkeypatch):
    monkeypatch.setattr(transfers, "ENCODED_CACHE", 3 * 1000)  # room for two 1,000-byte ranges
    store = CountingStore()
    service = transfers.FileService(store)  # type: ignore[arg-type]
    try:
        info = FileInfo("f-1", "x", 10_000, "a/b", DIGEST)
        first = service.file_data(info, 0, 1000)
        assert service.file_data(info, 0, 1000) is first  # ten downloaders share it
        service.file_data(info, 1000, 1000)
        service.file_data(info, 0, 1000)  # the most recently used is kept
        service.file_data(info, 2000, 1000)  # ... and the least recently used goes
        service.file_data(info, 0, 1000)
        service.file_data(info, 1000, 1000)
        assert store.reads == [
            ("f-1", 0, 1000),
            ("f-1", 1000, 1000),
            ("f-1", 2000, 1000),
            ("f-1", 1000, 1000),
        ]
    finally:
        service.close()
