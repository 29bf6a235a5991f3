"""server.transfers without sockets: the download frames it writes by hand."""

from __future__ import annotations

import base64
import os

import pytest

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
