"""The frames and rules of PROTOCOL.md's "Files and images", without a server."""

from __future__ import annotations

import json

import pytest

from server.protocol import (
    CLIENT_MESSAGES,
    DEFAULT_MIME,
    MAX_FILE_NAME_LENGTH,
    SERVER_MESSAGES,
    ChatMessage,
    Download,
    ErrorCode,
    FileData,
    FileInfo,
    RemoteProtocolError,
    RuleViolation,
    Say,
    Upload,
    UploadData,
    UploadDone,
    Uploaded,
    UploadReady,
    clean_file_name,
    clean_mime,
    clean_sha256,
    encode,
    parse_message,
)

DIGEST = "9c2e" + "0" * 60

# The examples of PROTOCOL.md, as the document writes them.
CLIENT_EXAMPLES = [
    (
        {"type": "upload", "name": "cat.jpg", "size": 183201, "mime": "image/jpeg"},
        Upload("cat.jpg", 183201, "image/jpeg"),
    ),
    (
        {"type": "upload-data", "upload": 7, "offset": 0, "data": "aGk="},
        UploadData(7, 0, "aGk="),
    ),
    ({"type": "upload-done", "upload": 7, "sha256": DIGEST}, UploadDone(7, DIGEST)),
    ({"type": "say", "text": "look", "file": "f-9c2e"}, Say("look", file="f-9c2e")),
    (
        {"type": "download", "file": "f-9c2e", "offset": 0, "length": 262144},
        Download("f-9c2e", 0, 262144),
    ),
]
SERVER_EXAMPLES = [
    ({"type": "upload-ready", "upload": 7, "chunk": 32768}, UploadReady(7, 32768)),
    ({"type": "uploaded", "upload": 7, "file": "f-9c2e"}, Uploaded(7, "f-9c2e")),
    (
        {"type": "file-data", "file": "f-9c2e", "offset": 0, "data": "aGk=", "eof": False},
        FileData("f-9c2e", 0, "aGk=", eof=False),
    ),
    (
        {
            "type": "message",
            "id": 43,
            "from": "alice",
            "text": "look",
            "ts": 1.5,
            "file": {
                "id": "f-9c2e",
                "name": "cat.jpg",
                "size": 183201,
                "mime": "image/jpeg",
                "sha256": DIGEST,
                "width": 800,
                "height": 600,
            },
        },
        ChatMessage(
            43,
            "alice",
            "look",
            1.5,
            file=FileInfo("f-9c2e", "cat.jpg", 183201, "image/jpeg", DIGEST, 800, 600),
        ),
    ),
]


@pytest.mark.parametrize(("payload", "expected"), CLIENT_EXAMPLES)
def test_client_frames_parse_and_encode_back(payload, expected):
    assert parse_message(payload, CLIENT_MESSAGES) == expected
    assert json.loads(encode(expected)[4:]) == payload


@pytest.mark.parametrize(("payload", "expected"), SERVER_EXAMPLES)
def test_server_frames_parse_and_encode_back(payload, expected):
    assert parse_message(payload, SERVER_MESSAGES) == expected
    assert json.loads(encode(expected)[4:]) == payload


def test_a_file_without_dimensions_leaves_them_out():
    info = FileInfo("f-1", "notes.txt", 3, "text/plain", DIGEST)
    wire = json.loads(encode(ChatMessage(1, "a", "", 1.0, file=info))[4:])
    assert wire["file"] == {
        "id": "f-1",
        "name": "notes.txt",
        "size": 3,
        "mime": "text/plain",
        "sha256": DIGEST,
    }


@pytest.mark.parametrize(
    "file",
    [
        "f-1",  # not an object
        ["f-1"],
        {"id": "f-1", "name": "x", "size": "3", "mime": "a/b", "sha256": DIGEST},
        {"id": "f-1", "name": "x", "size": 3, "mime": "a/b"},
        {"id": "f-1", "name": "x", "size": 3, "mime": "a/b", "sha256": DIGEST, "width": 1.5},
    ],
)
def test_a_message_with_a_malformed_file_is_a_bad_field(file):
    payload = {"type": "message", "id": 1, "from": "a", "text": "", "ts": 1, "file": file}
    with pytest.raises(RemoteProtocolError) as caught:
        parse_message(payload, SERVER_MESSAGES)
    assert caught.value.code == ErrorCode.BAD_FIELD
    assert caught.value.in_reply_to == "message"


def test_a_null_file_is_absent():
    payload = {"type": "message", "id": 1, "from": "a", "text": "hi", "ts": 1, "file": None}
    assert parse_message(payload, SERVER_MESSAGES).file is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"type": "upload", "name": "x", "size": "1"}, "size"),
        ({"type": "upload", "size": 1}, "name"),
        ({"type": "upload-data", "upload": 1, "offset": 0, "data": 5}, "data"),
        ({"type": "upload-done", "upload": True, "sha256": DIGEST}, "upload"),
        ({"type": "download", "file": 3}, "file"),
        ({"type": "say", "text": "", "file": 3}, "file"),
    ],
)
def test_mistyped_fields_are_bad_fields(payload, field):
    with pytest.raises(RemoteProtocolError) as caught:
        parse_message(payload, CLIENT_MESSAGES)
    assert caught.value.code == ErrorCode.BAD_FIELD
    assert f"`{field}`" in caught.value.message


def test_upload_data_keeps_its_data_out_of_repr():
    assert "c2VjcmV0" not in repr(UploadData(1, 0, "c2VjcmV0"))


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("cat.jpg", "cat.jpg"),
        ("  holiday photo.png \n", "holiday photo.png"),
        ("CON", "CON"),  # a reserved name on Windows, but harmless where it is only shown
        ("Cafe\u0301.txt", "Café.txt"),
        ("x" * MAX_FILE_NAME_LENGTH, "x" * MAX_FILE_NAME_LENGTH),
    ],
)
def test_file_names_kept(name, kept):
    assert clean_file_name(name) == kept


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        ".",
        "..",
        "../../etc/passwd",
        "a\\b",
        "two\nlines",
        "tab\there",
        "report\u202egpj.exe",
        "mark\u200f.txt",
        "isolate\u2066.txt",
        "bell\x07",
        "\ud800.txt",
        "x" * (MAX_FILE_NAME_LENGTH + 1),
        "x" * 100_000,
    ],
)
def test_file_names_refused(name):
    with pytest.raises(RuleViolation) as caught:
        clean_file_name(name)
    assert caught.value.code == ErrorCode.BAD_FIELD
    assert "\n" not in caught.value.message and "\u202e" not in caught.value.message


def test_media_types():
    assert clean_mime(None) == DEFAULT_MIME
    assert clean_mime("Image/PNG") == "image/png"
    assert clean_mime("application/vnd.oasis.opendocument.text") == (
        "application/vnd.oasis.opendocument.text"
    )
    for bad in ("", "image", "image/", "/png", "text/html; charset=utf-8", "a/b c", "é/x"):
        with pytest.raises(RuleViolation):
            clean_mime(bad)


def test_sha256_digests():
    assert clean_sha256(DIGEST.upper()) == DIGEST
    for bad in ("", DIGEST[:-1], DIGEST + "0", "g" * 64, " " + DIGEST[1:]):
        with pytest.raises(RuleViolation):
            clean_sha256(bad)
