"""Tests for server/protocol.py against the wire contract in PROTOCOL.md.

Everything here is pure: bytes in, objects out. The sections follow the
module: framing (FrameDecoder), invalid frames, parse_message, encode,
names, text, and Hypothesis properties tying them together.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import (
    CLIENT_MESSAGES,
    DEFAULT_IGNORABLE_RANGES,
    HEADER,
    MAX_CLIENT_FRAME,
    MAX_NAME_INPUT,
    MAX_NAME_LENGTH,
    MAX_NESTING,
    MAX_SERVER_FRAME,
    MAX_TEXT_LENGTH,
    SERVER_MESSAGES,
    Ban,
    BanEntry,
    BanList,
    Bans,
    Bye,
    ChatMessage,
    Error,
    FrameDecoder,
    Hello,
    History,
    HistoryPage,
    Joined,
    Kick,
    LeaveReason,
    Left,
    LocalProtocolError,
    Message,
    Notice,
    Op,
    OpChanged,
    Ping,
    Pong,
    RemoteProtocolError,
    Rename,
    Renamed,
    RuleViolation,
    Say,
    Search,
    SearchResults,
    SendNotice,
    Shutdown,
    Unban,
    Unknown,
    Users,
    Welcome,
    Who,
    Whois,
    WhoisResult,
    clean_text,
    decode_payload,
    encode,
    encode_page,
    name_identity,
    normalize_name,
    parse_message,
    show_wire,
    sort_names,
)
from tests.test_protocol_files import CLIENT_EXAMPLES as FILE_CLIENT_EXAMPLES
from tests.test_protocol_files import SERVER_EXAMPLES as FILE_SERVER_EXAMPLES

# No example database: the suite leaves nothing behind in the checkout.
PROPERTY = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Helpers


def fullwidth(ascii_text: str) -> str:
    """The fullwidth form of ASCII letters: "alice" -> U+FF41 U+FF4C ..."""
    return "".join(chr(ord(char) + 0xFEE0) for char in ascii_text)


def frame(payload: bytes | str | dict[str, Any]) -> bytes:
    """A raw frame: 4-byte big-endian length, then the payload bytes."""
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return HEADER.pack(len(payload)) + payload


def drain(decoder: FrameDecoder) -> list[dict[str, Any]]:
    """Every whole payload the decoder holds, until it needs more data."""
    out = []
    while (payload := decoder.next_payload()) is not None:
        out.append(payload)
    return out


def decode_chunks(chunks: list[bytes], max_frame: int = MAX_SERVER_FRAME) -> list[dict[str, Any]]:
    """Feed ``chunks`` one read at a time, collecting payloads as they complete."""
    decoder = FrameDecoder(max_frame)
    out = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out.extend(drain(decoder))
    assert decoder.buffered == 0
    return out


def decode_one(raw: bytes, max_frame: int = MAX_SERVER_FRAME) -> dict[str, Any] | None:
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(raw)
    return decoder.next_payload()


def assert_bad_frame(raw: bytes, max_frame: int = MAX_SERVER_FRAME) -> RemoteProtocolError:
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(raw)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_payload()
    assert info.value.code == "bad-frame"
    assert info.value.fatal is True
    return info.value


def parse_error(payload: dict[str, Any], table: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(payload, table)
    return info.value


FRAMES = [
    {"type": "hello", "name": "alice", "protocol": 1},
    {"type": "say", "text": "hi all \u00e9\u5f20\U0001f600"},
    {"type": "ping", "n": 7},
    {"type": "bye"},
]
STREAM = b"".join(frame(p) for p in FRAMES)


# --------------------------------------------------------------------------
# FrameDecoder: reassembly


def test_whole_buffer_one_frame():
    assert decode_one(frame({"type": "who"})) == {"type": "who"}


def test_several_frames_in_one_chunk():
    assert decode_chunks([STREAM]) == FRAMES


def test_one_byte_at_a_time():
    assert decode_chunks([bytes([b]) for b in STREAM]) == FRAMES


def test_trailing_partial_frame_waits_until_complete():
    last = frame({"type": "say", "text": "later"})
    decoder = FrameDecoder(MAX_CLIENT_FRAME)
    decoder.receive_data(frame({"type": "who"}) + last[:-1])
    assert decoder.next_payload() == {"type": "who"}
    assert decoder.next_payload() is None
    assert decoder.next_payload() is None  # asking again changes nothing
    assert decoder.buffered == len(last) - 1
    decoder.receive_data(last[-1:])
    assert decoder.next_payload() == {"type": "say", "text": "later"}
    assert decoder.next_payload() is None
    assert decoder.buffered == 0


@pytest.mark.parametrize("available", [0, 1, 2, 3, 4, 5])
def test_partial_header_or_payload_returns_none(available):
    raw = frame({"type": "who"})
    assert decode_one(raw[:available]) is None


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_split_at_every_offset(split):
    assert decode_chunks([STREAM[:split], STREAM[split:]]) == FRAMES


def test_split_at_every_pair_of_offsets():
    raw = frame({"type": "who"}) + frame({"type": "ping"}) + frame({"type": "bye"})
    expected = [{"type": "who"}, {"type": "ping"}, {"type": "bye"}]
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert decode_chunks([raw[:i], raw[i:j], raw[j:]]) == expected, (i, j)


def test_many_small_frames_beyond_the_compaction_threshold():
    # More than 64 KiB of small frames, so consumed bytes get compacted away
    # while a frame is still half-received.
    payloads = [{"type": "say", "text": f"message {i}"} for i in range(5000)]
    raw = b"".join(frame(p) for p in payloads)
    assert len(raw) > 2 * 64 * 1024
    chunks = [raw[i : i + 997] for i in range(0, len(raw), 997)]
    assert decode_chunks(chunks, MAX_CLIENT_FRAME) == payloads


# --------------------------------------------------------------------------
# FrameDecoder: limits and invalid frames


def test_client_limit_is_64_kib():
    assert MAX_CLIENT_FRAME == 65536
    assert MAX_SERVER_FRAME == 1048576


@pytest.mark.parametrize(
    ("max_frame", "size"), [(MAX_CLIENT_FRAME, 65536), (MAX_SERVER_FRAME, 1048576)]
)
def test_payload_at_the_limit_is_accepted(max_frame, size):
    head = '{"type":"say","text":"'
    payload = (head + "a" * (size - len(head) - 2) + '"}').encode()
    assert len(payload) == size
    assert decode_one(frame(payload), max_frame) == {"type": "say", "text": "a" * (size - 24)}


@pytest.mark.parametrize(
    ("max_frame", "length"),
    [
        (MAX_CLIENT_FRAME, 0),
        (MAX_CLIENT_FRAME, 65537),
        (MAX_SERVER_FRAME, 0),
        (MAX_SERVER_FRAME, 1048577),
        (MAX_CLIENT_FRAME, 2**31),
        (MAX_SERVER_FRAME, 2**32 - 1),
    ],
)
def test_bad_length_raises_as_soon_as_the_header_arrives(max_frame, length):
    header = HEADER.pack(length)
    decoder = FrameDecoder(max_frame)
    decoder.receive_data(header[:3])
    assert decoder.next_payload() is None
    decoder.receive_data(header[3:])  # no payload at all
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_payload()
    assert info.value.code == "bad-frame"


def test_bad_length_after_good_frames():
    decoder = FrameDecoder(MAX_CLIENT_FRAME)
    decoder.receive_data(frame({"type": "who"}) + HEADER.pack(65537))
    assert decoder.next_payload() == {"type": "who"}
    with pytest.raises(RemoteProtocolError):
        decoder.next_payload()


INVALID_PAYLOADS = {
    # not UTF-8
    "latin-1": b'{"type":"caf\xe9"}',
    "stray-byte": b'{"type":"\xff"}',
    "utf8-surrogate": b'{"type":"\xed\xa0\x80"}',
    "overlong": b'{"type":"\xc0\xaf"}',
    "truncated-utf8": b'{"type":"\xe5\xbc"}',
    # not JSON
    "unquoted": b"{type: ping}",
    "single-quotes": b"{'type': 'ping'}",
    "unterminated": b'{"type":"ping"',
    "trailing-garbage": b'{"type":"ping"}x',
    "two-objects": b'{"type":"ping"}{"type":"ping"}',
    "trailing-comma": b'{"type":"ping",}',
    "raw-control-char": b'{"type":"a\nb"}',
    "bom": b'\xef\xbb\xbf{"type":"ping"}',
    "whitespace-only": b"   ",
    # NaN and Infinity are not JSON
    "nan": b'{"type":"ping","n":NaN}',
    "infinity": b'{"type":"ping","n":Infinity}',
    "minus-infinity": b'{"type":"ping","n":-Infinity}',
    # not an object
    "array": b'[{"type":"ping"}]',
    "empty-array": b"[]",
    "string": b'"ping"',
    "number": b"1",
    "float": b"1.5",
    "null": b"null",
    "true": b"true",
    # no string `type`
    "empty-object": b"{}",
    "no-type": b'{"name":"alice"}',
    "type-wrong-case": b'{"Type":"ping"}',
    "type-null": b'{"type":null}',
    "type-number": b'{"type":1}',
    "type-bool": b'{"type":true}',
    "type-list": b'{"type":["ping"]}',
    "type-object": b'{"type":{"type":"ping"}}',
    # hostile inputs
    "deep-array": b"[" * 100000,
    "deep-array-closed": b"[" * 30000 + b"]" * 30000,
    "deep-object": b'{"a":' * 20000,
    "deep-in-field": b'{"type":"ping","n":' + b"[" * 60000,
    "huge-integer": b'{"type":"ping","n":' + b"9" * 10000 + b"}",
    "huge-negative-integer": b'{"type":"ping","n":-' + b"9" * 10000 + b"}",
}


@pytest.mark.parametrize("payload", INVALID_PAYLOADS.values(), ids=INVALID_PAYLOADS.keys())
def test_invalid_payload_is_bad_frame(payload):
    assert_bad_frame(frame(payload))


def test_client_decoder_rejects_deep_nesting_within_its_limit():
    payload = b'{"type":"ping","n":' + b"[" * 60000 + b"]" * 5000
    assert len(payload) <= MAX_CLIENT_FRAME
    assert_bad_frame(frame(payload), MAX_CLIENT_FRAME)


@pytest.mark.parametrize(
    "bad",
    [HEADER.pack(0), HEADER.pack(2**31), frame(b"[]"), frame(b"\xff"), frame(b"{}")],
    ids=["length-0", "length-huge", "not-object", "not-utf8", "no-type"],
)
def test_decoder_keeps_raising_after_an_error(bad):
    decoder = FrameDecoder(MAX_CLIENT_FRAME)
    decoder.receive_data(frame({"type": "who"}) + bad)
    assert decoder.next_payload() == {"type": "who"}
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_payload()
    # A good frame afterwards cannot resynchronise the stream.
    decoder.receive_data(frame({"type": "ping"}))
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_payload()
        assert again.value.code == "bad-frame"
        assert again.value.message == first.value.message


def test_valid_json_details_are_accepted():
    # Whitespace around the object, escapes, unknown fields, big-but-sane ints.
    payload = b' \n{"type" : "ping", "s": "\\u00e9\\ud83d\\ude00", "n": 123456789012345678901} \t'
    assert decode_one(frame(payload)) == {
        "type": "ping",
        "s": "\u00e9\U0001f600",
        "n": 123456789012345678901,
    }


# --------------------------------------------------------------------------
# parse_message: valid payloads

CLIENT_EXAMPLES = [
    ({"type": "hello", "name": "alice", "protocol": 1}, Hello("alice", 1)),
    ({"type": "hello", "name": "bob", "protocol": 2}, Hello("bob", 2)),
    ({"type": "say", "text": "hi all"}, Say("hi all")),
    ({"type": "say", "text": "waves", "action": True}, Say("waves", action=True)),
    ({"type": "say", "text": "psst", "to": "bob"}, Say("psst", to="bob")),
    ({"type": "say", "text": "x", "action": False, "to": ""}, Say("x", False, "")),
    ({"type": "rename", "name": "robert"}, Rename("robert")),
    ({"type": "who"}, Who()),
    ({"type": "bye"}, Bye()),
    ({"type": "ping"}, Ping({})),
    ({"type": "ping", "n": 7}, Ping({"n": 7})),
    ({"type": "pong", "n": 7, "x": [1, None]}, Pong({"n": 7, "x": [1, None]})),
    # operators extension
    ({"type": "op", "password": "s3cret"}, Op("s3cret")),
    ({"type": "kick", "name": "bob", "reason": "spam"}, Kick("bob", "spam")),
    ({"type": "kick", "name": "bob"}, Kick("bob")),
    (
        {"type": "ban", "name": "bob", "address": "192.168.1.7", "duration": 7200, "reason": "r"},
        Ban("bob", "192.168.1.7", 7200, "r"),
    ),
    ({"type": "ban", "address": "10.0.0.0/8"}, Ban(address="10.0.0.0/8")),
    ({"type": "unban", "id": 3}, Unban(3)),
    ({"type": "bans"}, Bans()),
    ({"type": "whois", "name": "bob"}, Whois("bob")),
    ({"type": "notice", "text": "Back in 5"}, SendNotice("Back in 5")),
    # history pages and search
    ({"type": "history"}, History()),
    ({"type": "history", "before": 40, "limit": 50}, History(40, 50)),
    ({"type": "search", "query": "pizza friday"}, Search("pizza friday")),
    (
        {"type": "search", "query": "pizza", "limit": 5, "before": 9},
        Search("pizza", 5, 9),
    ),
]
CLIENT_EXAMPLES += FILE_CLIENT_EXAMPLES  # PROTOCOL.md, "Files and images"

SERVER_EXAMPLES = [
    (
        {
            "type": "welcome",
            "name": "alice",
            "users": ["alice", "bob"],
            "history_count": 2,
            "motd": "Welcome to the room",
        },
        Welcome("alice", ("alice", "bob"), 2, "Welcome to the room"),
    ),
    ({"type": "welcome", "name": "a", "users": [], "history_count": 0}, Welcome("a", ())),
    (
        {"type": "message", "id": 42, "from": "alice", "text": "hi all", "ts": 1763900000.123},
        ChatMessage(42, "alice", "hi all", 1763900000.123),
    ),
    (
        {
            "type": "message",
            "id": 43,
            "from": "bob",
            "text": "psst",
            "ts": 1763900000,  # clients accept integer timestamps
            "action": True,
            "to": "alice",
            "history": True,
        },
        ChatMessage(43, "bob", "psst", 1763900000, action=True, to="alice", history=True),
    ),
    ({"type": "joined", "name": "bob", "ts": 1763900001.5}, Joined("bob", 1763900001.5)),
    (
        {"type": "left", "name": "bob", "reason": "quit", "ts": 5},
        Left("bob", LeaveReason.QUIT, 5),
    ),
    (
        {"type": "renamed", "old": "bob", "new": "robert", "ts": 2.5},
        Renamed("bob", "robert", 2.5),
    ),
    ({"type": "users", "users": ["alice", "robert"]}, Users(("alice", "robert"))),
    (
        {
            "type": "error",
            "code": "name-taken",
            "message": "The name alice is already in use",
            "in_reply_to": "hello",
        },
        Error("name-taken", "The name alice is already in use", "hello"),
    ),
    ({"type": "error", "code": "timeout", "message": "Too slow"}, Error("timeout", "Too slow")),
    (
        {"type": "shutdown", "message": "The server is shutting down"},
        Shutdown("The server is shutting down"),
    ),
    ({"type": "ping", "n": 1}, Ping({"n": 1})),
    ({"type": "pong"}, Pong({})),
    # operators extension
    (
        {"type": "welcome", "name": "a", "users": ["a"], "history_count": 0, "ops": ["a"]},
        Welcome("a", ("a",), ops=("a",)),
    ),
    ({"type": "users", "users": ["a", "b"], "ops": []}, Users(("a", "b"), ops=())),
    (
        {"type": "left", "name": "bob", "reason": "kicked", "ts": 5, "by": "a", "message": "m"},
        Left("bob", LeaveReason.KICKED, 5, by="a", message="m"),
    ),
    (
        {"type": "error", "code": "banned", "message": "m", "reason": "spam", "until": 9.5},
        Error("banned", "m", reason="spam", until=9.5),
    ),
    (
        {"type": "error", "code": "too-many-attempts", "message": "m", "retry_after": 60},
        Error("too-many-attempts", "m", retry_after=60),
    ),
    (
        {"type": "op-changed", "name": "alice", "op": True, "by": "alice", "ts": 1},
        OpChanged("alice", True, 1, by="alice"),
    ),
    (  # op false is sent, not left out like other false flags
        {"type": "op-changed", "name": "bob", "op": False, "ts": 2},
        OpChanged("bob", False, 2),
    ),
    (
        {
            "type": "ban-list",
            "bans": [
                {"id": 1, "name": "bob", "reason": "r", "by": "a", "created": 5, "expires": 9},
                {"id": 2, "address": "10.0.0.0/8", "created": 6.5},
            ],
        },
        BanList(
            (
                BanEntry(1, 5, name="bob", reason="r", by="a", expires=9),
                BanEntry(2, 6.5, address="10.0.0.0/8"),
            )
        ),
    ),
    ({"type": "ban-list", "bans": []}, BanList(())),
    (
        {
            "type": "whois-result",
            "name": "bob",
            "address": "127.0.0.1",
            "secure": False,
            "since": 3,
            "op": False,
        },
        WhoisResult("bob", "127.0.0.1", False, 3, False),
    ),
    ({"type": "notice", "text": "hi", "by": "a", "ts": 1}, Notice("hi", 1, by="a")),
    ({"type": "notice", "text": "hi", "ts": 1}, Notice("hi", 1)),
    # history pages and search
    (
        {
            "type": "history-page",
            "before": 40,
            "messages": [
                {"type": "message", "id": 7, "from": "a", "text": "t", "ts": 2, "history": True}
            ],
            "more": True,
        },
        HistoryPage(40, (ChatMessage(7, "a", "t", 2, history=True),), True),
    ),
    ({"type": "history-page", "messages": [], "more": False}, HistoryPage()),
    (
        {"type": "search-results", "query": "t", "messages": [], "more": False},
        SearchResults("t"),
    ),
]
SERVER_EXAMPLES += FILE_SERVER_EXAMPLES  # PROTOCOL.md, "Files and images"


@pytest.mark.parametrize(("payload", "expected"), CLIENT_EXAMPLES)
def test_parse_client_message(payload, expected):
    message = parse_message(payload, CLIENT_MESSAGES)
    assert type(message) is type(expected)
    assert message == expected


@pytest.mark.parametrize(("payload", "expected"), SERVER_EXAMPLES)
def test_parse_server_message(payload, expected):
    message = parse_message(payload, SERVER_MESSAGES)
    assert type(message) is type(expected)
    assert message == expected


def test_chat_message_fields_by_name():
    message = parse_message(SERVER_EXAMPLES[3][0], SERVER_MESSAGES)
    assert isinstance(message, ChatMessage)
    assert (message.id, message.sender, message.text, message.ts) == (
        43,
        "bob",
        "psst",
        1763900000,
    )
    assert (message.action, message.to, message.history) == (True, "alice", True)


def test_welcome_users_is_a_tuple():
    message = parse_message(SERVER_EXAMPLES[0][0], SERVER_MESSAGES)
    assert message.users == ("alice", "bob")


def test_table_membership():
    assert set(CLIENT_MESSAGES) == {
        "hello",
        "say",
        "rename",
        "who",
        "ping",
        "pong",
        "bye",
        # operators extension
        "op",
        "kick",
        "ban",
        "unban",
        "bans",
        "whois",
        "notice",
        # history pages and search
        "history",
        "search",
        # files and images
        "upload",
        "upload-data",
        "upload-done",
        "download",
    }
    assert set(SERVER_MESSAGES) == {
        "welcome",
        "message",
        "joined",
        "left",
        "renamed",
        "users",
        "error",
        "shutdown",
        "ping",
        "pong",
        # operators extension
        "op-changed",
        "ban-list",
        "whois-result",
        "notice",
        # history pages and search
        "history-page",
        "search-results",
        # files and images
        "upload-ready",
        "uploaded",
        "file-data",
    }


@pytest.mark.parametrize(
    ("payload", "expected", "table"),
    [
        (
            {"type": "say", "text": "hi", "action": None, "to": None},
            Say("hi"),
            CLIENT_MESSAGES,
        ),
        (
            {"type": "welcome", "name": "a", "users": ["a"], "history_count": 0, "motd": None},
            Welcome("a", ("a",), 0, None),
            SERVER_MESSAGES,
        ),
        (
            {
                "type": "message",
                "id": 1,
                "from": "a",
                "text": "b",
                "ts": 0.5,
                "action": None,
                "to": None,
                "history": None,
            },
            ChatMessage(1, "a", "b", 0.5),
            SERVER_MESSAGES,
        ),
        (
            {"type": "error", "code": "x", "message": "y", "in_reply_to": None},
            Error("x", "y"),
            SERVER_MESSAGES,
        ),
    ],
    ids=["say", "welcome", "message", "error"],
)
def test_null_optional_fields_count_as_absent(payload, expected, table):
    assert parse_message(payload, table) == expected


@pytest.mark.parametrize(
    ("payload", "expected", "table"),
    [
        (
            {"type": "hello", "name": "alice", "protocol": 1, "client": "tk", "v": [1, 2]},
            Hello("alice", 1),
            CLIENT_MESSAGES,
        ),
        ({"type": "say", "text": "hi", "color": "red"}, Say("hi"), CLIENT_MESSAGES),
        ({"type": "who", "verbose": True}, Who(), CLIENT_MESSAGES),
        ({"type": "bye", "reason": None}, Bye(), CLIENT_MESSAGES),
        (
            {"type": "users", "users": [], "count": 0, "room": {"name": "main"}},
            Users(()),
            SERVER_MESSAGES,
        ),
    ],
)
def test_unknown_fields_are_ignored(payload, expected, table):
    assert parse_message(payload, table) == expected


@pytest.mark.parametrize(
    ("payload", "table"),
    [
        ({"type": "dance", "style": "waltz"}, CLIENT_MESSAGES),
        ({"type": "dance"}, SERVER_MESSAGES),
        ({"type": ""}, CLIENT_MESSAGES),
        ({"type": "Hello", "name": "a", "protocol": 1}, CLIENT_MESSAGES),  # case matters
        # Known to the other side only: still unknown to this table.
        ({"type": "welcome", "name": "a", "users": [], "history_count": 0}, CLIENT_MESSAGES),
        ({"type": "say", "text": "hi"}, SERVER_MESSAGES),
        ({"type": "hello"}, SERVER_MESSAGES),
    ],
)
def test_unknown_types_give_unknown(payload, table):
    message = parse_message(payload, table)
    assert type(message) is Unknown
    assert message.type == payload["type"]
    assert dict(message.fields) == payload


def test_unknown_skips_field_checks():
    # A known-elsewhere type with broken fields is not a bad-field here.
    message = parse_message({"type": "message", "id": "x"}, CLIENT_MESSAGES)
    assert message == Unknown("message", {"type": "message", "id": "x"})


@pytest.mark.parametrize("cls", [Ping, Pong])
def test_ping_pong_carry_every_field_but_type(cls):
    payload = {"type": cls.TYPE, "n": 7, "s": "x", "null": None, "deep": {"a": [1, 2.5]}}
    message = parse_message(payload, CLIENT_MESSAGES)
    assert type(message) is cls
    assert message.extra == {"n": 7, "s": "x", "null": None, "deep": {"a": [1, 2.5]}}


def test_pong_echoes_a_ping():
    ping = parse_message({"type": "ping", "n": 7}, CLIENT_MESSAGES)
    pong = Pong(ping.extra)
    assert pong.to_wire() == {"type": "pong", "n": 7}
    assert decode_one(encode(pong)) == {"type": "pong", "n": 7}


def test_echo_extra_cannot_override_type():
    assert Pong({"type": "ping", "n": 1}).to_wire() == {"type": "pong", "n": 1}
    assert decode_one(encode(Ping({"type": "evil"}))) == {"type": "ping"}


# --------------------------------------------------------------------------
# parse_message: bad fields

# Every field PROTOCOL.md gives each type: (type, wire key, kind, required).
FIELD_SPECS = [
    (CLIENT_MESSAGES, "hello", "name", "str", True),
    (CLIENT_MESSAGES, "hello", "protocol", "int", True),
    (CLIENT_MESSAGES, "say", "text", "str", True),
    (CLIENT_MESSAGES, "say", "action", "bool", False),
    (CLIENT_MESSAGES, "say", "to", "str", False),
    (CLIENT_MESSAGES, "rename", "name", "str", True),
    (SERVER_MESSAGES, "welcome", "name", "str", True),
    (SERVER_MESSAGES, "welcome", "users", "names", True),
    (SERVER_MESSAGES, "welcome", "history_count", "int", True),
    (SERVER_MESSAGES, "welcome", "motd", "str", False),
    (SERVER_MESSAGES, "message", "id", "int", True),
    (SERVER_MESSAGES, "message", "from", "str", True),
    (SERVER_MESSAGES, "message", "text", "str", True),
    (SERVER_MESSAGES, "message", "ts", "number", True),
    (SERVER_MESSAGES, "message", "action", "bool", False),
    (SERVER_MESSAGES, "message", "to", "str", False),
    (SERVER_MESSAGES, "message", "history", "bool", False),
    (SERVER_MESSAGES, "joined", "name", "str", True),
    (SERVER_MESSAGES, "joined", "ts", "number", True),
    (SERVER_MESSAGES, "left", "name", "str", True),
    (SERVER_MESSAGES, "left", "reason", "str", True),
    (SERVER_MESSAGES, "left", "ts", "number", True),
    (SERVER_MESSAGES, "renamed", "old", "str", True),
    (SERVER_MESSAGES, "renamed", "new", "str", True),
    (SERVER_MESSAGES, "renamed", "ts", "number", True),
    (SERVER_MESSAGES, "users", "users", "names", True),
    (SERVER_MESSAGES, "error", "code", "str", True),
    (SERVER_MESSAGES, "error", "message", "str", True),
    (SERVER_MESSAGES, "error", "in_reply_to", "str", False),
    (SERVER_MESSAGES, "shutdown", "message", "str", True),
    # operators extension
    (SERVER_MESSAGES, "welcome", "ops", "names", False),
    (SERVER_MESSAGES, "users", "ops", "names", False),
    (SERVER_MESSAGES, "left", "by", "str", False),
    (SERVER_MESSAGES, "left", "message", "str", False),
    (SERVER_MESSAGES, "error", "reason", "str", False),
    (SERVER_MESSAGES, "error", "until", "number", False),
    (SERVER_MESSAGES, "error", "retry_after", "number", False),
    (CLIENT_MESSAGES, "op", "password", "str", True),
    (CLIENT_MESSAGES, "kick", "name", "str", True),
    (CLIENT_MESSAGES, "kick", "reason", "str", False),
    (CLIENT_MESSAGES, "ban", "name", "str", False),
    (CLIENT_MESSAGES, "ban", "address", "str", False),
    (CLIENT_MESSAGES, "ban", "duration", "number", False),
    (CLIENT_MESSAGES, "ban", "reason", "str", False),
    (CLIENT_MESSAGES, "unban", "id", "int", True),
    (CLIENT_MESSAGES, "whois", "name", "str", True),
    (CLIENT_MESSAGES, "notice", "text", "str", True),
    (SERVER_MESSAGES, "op-changed", "name", "str", True),
    (SERVER_MESSAGES, "op-changed", "op", "bool", True),
    (SERVER_MESSAGES, "op-changed", "by", "str", False),
    (SERVER_MESSAGES, "op-changed", "ts", "number", True),
    (SERVER_MESSAGES, "whois-result", "name", "str", True),
    (SERVER_MESSAGES, "whois-result", "address", "str", True),
    (SERVER_MESSAGES, "whois-result", "secure", "bool", True),
    (SERVER_MESSAGES, "whois-result", "since", "number", True),
    (SERVER_MESSAGES, "whois-result", "op", "bool", True),
    (SERVER_MESSAGES, "notice", "text", "str", True),
    (SERVER_MESSAGES, "notice", "by", "str", False),
    (SERVER_MESSAGES, "notice", "ts", "number", True),
]

FULL_PAYLOADS = {
    "hello": {"type": "hello", "name": "alice", "protocol": 1},
    "say": {"type": "say", "text": "hi", "action": True, "to": "bob"},
    "rename": {"type": "rename", "name": "robert"},
    "welcome": {"type": "welcome", "name": "a", "users": ["a"], "history_count": 0, "motd": "m"},
    "message": {
        "type": "message",
        "id": 1,
        "from": "a",
        "text": "t",
        "ts": 1.5,
        "action": True,
        "to": "b",
        "history": True,
    },
    "joined": {"type": "joined", "name": "a", "ts": 1},
    "left": {"type": "left", "name": "a", "reason": "quit", "ts": 1},
    "renamed": {"type": "renamed", "old": "a", "new": "b", "ts": 1},
    "users": {"type": "users", "users": ["a"]},
    "error": {"type": "error", "code": "c", "message": "m", "in_reply_to": "say"},
    "shutdown": {"type": "shutdown", "message": "bye"},
    # operators extension (``notice`` serves both tables: a client's ignores by and ts)
    "op": {"type": "op", "password": "p"},
    "kick": {"type": "kick", "name": "b", "reason": "r"},
    "ban": {"type": "ban", "name": "b", "address": "10.0.0.1", "duration": 5, "reason": "r"},
    "unban": {"type": "unban", "id": 1},
    "whois": {"type": "whois", "name": "b"},
    "notice": {"type": "notice", "text": "t", "by": "a", "ts": 1},
    "op-changed": {"type": "op-changed", "name": "a", "op": True, "by": "a", "ts": 1},
    "whois-result": {
        "type": "whois-result",
        "name": "b",
        "address": "10.0.0.1",
        "secure": True,
        "since": 1,
        "op": False,
    },
}

WRONG_VALUES = {
    "str": [1, 1.5, True, ["a"], {"a": "b"}],
    "int": ["1", 1.0, 1.5, True, False, [1], {}],
    "bool": [1, 0, "true", [True], {}],
    "number": ["1", True, False, [1.5], {}],
    "names": ["alice", ["a", 1], ["a", None], [["a"]], {"a": "a"}, 3],
}


def test_full_payloads_parse():
    for spec_table, type_, *_ in FIELD_SPECS:
        assert type_ == type(parse_message(FULL_PAYLOADS[type_], spec_table)).TYPE


def assert_bad_field(err: RemoteProtocolError, type_: str, key: str) -> None:
    assert err.code == "bad-field"
    assert err.fatal is False
    assert err.in_reply_to == type_
    assert key in err.message


@pytest.mark.parametrize(
    ("table", "type_", "key"),
    [pytest.param(t, ty, k, id=f"{ty}.{k}") for t, ty, k, _, required in FIELD_SPECS if required],
)
@pytest.mark.parametrize("how", ["missing", "null"])
def test_missing_required_field_is_bad_field(table, type_, key, how):
    payload = dict(FULL_PAYLOADS[type_])
    if how == "missing":
        del payload[key]
    else:
        payload[key] = None
    assert_bad_field(parse_error(payload, table), type_, key)


@pytest.mark.parametrize(
    ("table", "type_", "key", "value"),
    [
        pytest.param(t, ty, k, value, id=f"{ty}.{k}={json.dumps(value)}")
        for t, ty, k, kind, _ in FIELD_SPECS
        for value in WRONG_VALUES[kind]
    ],
)
def test_mistyped_field_is_bad_field(table, type_, key, value):
    payload = dict(FULL_PAYLOADS[type_]) | {key: value}
    assert_bad_field(parse_error(payload, table), type_, key)


@pytest.mark.parametrize(
    ("bans", "key"),
    [
        (None, "bans"),
        ("x", "bans"),
        ({"id": 1}, "bans"),
        ([1], "bans"),
        ([{"created": 1}], "id"),
        ([{"id": "1", "created": 1}], "id"),
        ([{"id": 1}], "created"),
        ([{"id": 1, "created": 1, "expires": "never"}], "expires"),
    ],
)
def test_ban_list_items_are_checked(bans, key):
    payload = {"type": "ban-list"} if bans is None else {"type": "ban-list", "bans": bans}
    assert_bad_field(parse_error(payload, SERVER_MESSAGES), "ban-list", f"`{key}`")


def test_ban_entry_has_no_type_on_the_wire():
    frame_ = decode_one(encode(BanList((BanEntry(1, 2.0, name="bob"),))))
    assert frame_ == {"type": "ban-list", "bans": [{"id": 1, "name": "bob", "created": 2.0}]}


def test_op_password_is_not_in_repr():
    assert "s3cret" not in repr(Op("s3cret"))


@pytest.mark.parametrize("protocol", [True, False, 1.0, "1", [1], {"v": 1}])
def test_hello_protocol_must_be_a_json_integer(protocol):
    err = parse_error({"type": "hello", "name": "alice", "protocol": protocol}, CLIENT_MESSAGES)
    assert_bad_field(err, "hello", "protocol")


def test_hello_protocol_from_the_wire():
    # Through the decoder, `1.0` is a float and `true` a bool: both refused.
    for literal in (b"true", b"1.0", b"1e0"):
        payload = decode_one(frame(b'{"type":"hello","name":"a","protocol":' + literal + b"}"))
        assert_bad_field(parse_error(payload, CLIENT_MESSAGES), "hello", "protocol")
    payload = decode_one(frame(b'{"type":"hello","name":"a","protocol":1}'))
    assert parse_message(payload, CLIENT_MESSAGES) == Hello("a", 1)


def test_bad_field_becomes_an_error_frame():
    err = parse_error({"type": "say", "text": 5}, CLIENT_MESSAGES)
    reply = Error.from_exception(err)
    assert (reply.code, reply.in_reply_to) == ("bad-field", "say")
    assert reply.message == err.message
    assert decode_one(encode(reply))["code"] == "bad-field"


# --------------------------------------------------------------------------
# encode

ALL_EXAMPLES = [
    *[(expected, CLIENT_MESSAGES) for _, expected in CLIENT_EXAMPLES],
    *[(expected, SERVER_MESSAGES) for _, expected in SERVER_EXAMPLES],
]


@pytest.mark.parametrize(("message", "table"), ALL_EXAMPLES, ids=lambda v: type(v).__name__)
def test_encode_round_trip(message, table):
    raw = encode(message)
    (length,) = HEADER.unpack_from(raw)
    assert length == len(raw) - 4
    decoded = decode_chunks([raw])
    assert len(decoded) == 1
    assert parse_message(decoded[0], table) == message


def test_every_message_class_is_round_tripped():
    classes = {type(message) for message, _ in ALL_EXAMPLES}
    assert classes == set(CLIENT_MESSAGES.values()) | set(SERVER_MESSAGES.values())


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (Hello("alice"), {"type": "hello", "name": "alice", "protocol": 1}),
        (Say("hi"), {"type": "say", "text": "hi"}),
        (Say("hi", action=True), {"type": "say", "text": "hi", "action": True}),
        (Say("hi", to="bob"), {"type": "say", "text": "hi", "to": "bob"}),
        (Who(), {"type": "who"}),
        (Bye(), {"type": "bye"}),
        (Ping(), {"type": "ping"}),
        (
            Welcome("a", ("a", "b")),
            {"type": "welcome", "name": "a", "users": ["a", "b"], "history_count": 0},
        ),
        (
            ChatMessage(1, "a", "t", 2.5),
            {"type": "message", "id": 1, "from": "a", "text": "t", "ts": 2.5},
        ),
        (
            ChatMessage(1, "a", "t", 2.5, action=True, to="b", history=True),
            {
                "type": "message",
                "id": 1,
                "from": "a",
                "text": "t",
                "ts": 2.5,
                "action": True,
                "to": "b",
                "history": True,
            },
        ),
        (Error("timeout", "Too slow"), {"type": "error", "code": "timeout", "message": "Too slow"}),
        (
            Left("b", LeaveReason.TOO_SLOW, 3),
            {"type": "left", "name": "b", "reason": "too-slow", "ts": 3},
        ),
        (Unknown("dance", {"style": "waltz"}), {"type": "dance", "style": "waltz"}),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Message) else "",
)
def test_encode_leaves_out_unset_optional_fields(message, wire):
    # Dict equality: no "action": false, no "to": null, nothing extra.
    assert decode_one(encode(message)) == wire


def test_encoded_payload_is_compact_utf8():
    raw = encode(Say("\u00e9\u5f20\U0001f600"))
    payload = raw[4:]
    assert payload.decode("utf-8") == '{"type":"say","text":"\u00e9\u5f20\U0001f600"}'


def test_encode_limit_counts_payload_bytes():
    overhead = len('{"type":"say","text":""}')
    at_limit = encode(Say("a" * (MAX_CLIENT_FRAME - overhead)), MAX_CLIENT_FRAME)
    assert len(at_limit) == 4 + MAX_CLIENT_FRAME
    with pytest.raises(LocalProtocolError):
        encode(Say("a" * (MAX_CLIENT_FRAME - overhead + 1)), MAX_CLIENT_FRAME)
    # 30,000 code points, 90,000 UTF-8 bytes: over the client limit.
    with pytest.raises(LocalProtocolError):
        encode(Say("\u5f20" * 30000), MAX_CLIENT_FRAME)
    # The default limit is the server's.
    assert len(encode(Say("a" * 100000))) == 4 + overhead + 100000
    with pytest.raises(LocalProtocolError):
        encode(Users(("x" * 1000,) * 1100))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), object()])
def test_encode_refuses_non_json_values(value):
    with pytest.raises(LocalProtocolError):
        encode(Ping({"n": value}))


@pytest.mark.parametrize("cls", [Ping, Pong])
def test_lone_surrogate_in_echo_encodes_to_valid_utf8_json(cls):
    message = cls({"s": "a\ud800b", "\udfff": "\u00e9", "ok": "\U0001f600"})
    raw = encode(message)
    text = raw[4:].decode("utf-8")  # strict: must be valid UTF-8
    assert json.loads(text) == {
        "type": cls.TYPE,
        "s": "a\ud800b",
        "\udfff": "\u00e9",
        "ok": "\U0001f600",
    }
    assert parse_message(decode_one(raw), CLIENT_MESSAGES) == message


def test_a_ping_with_an_escaped_lone_surrogate_can_be_echoed():
    ping = parse_message(decode_one(frame(b'{"type":"ping","n":"\\udead"}')), CLIENT_MESSAGES)
    assert ping == Ping({"n": "\udead"})
    assert decode_one(encode(Pong(ping.extra))) == {"type": "pong", "n": "\udead"}


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999", b"[1E400]"])
def test_any_ping_the_decoder_accepts_can_be_echoed(literal):
    # PROTOCOL.md: every ping gets a pong echoing every field but `type`.
    # A number literal too big for a float either must be refused as a bad
    # frame, or the echo must encode; it must not make encode() fail on
    # data a peer sent.
    raw = frame(b'{"type":"ping","n":' + literal + b"}")
    try:
        payload = decode_one(raw)
    except RemoteProtocolError as exc:
        assert exc.code == "bad-frame"
        return
    ping = parse_message(payload, CLIENT_MESSAGES)
    echoed = decode_one(encode(Pong(ping.extra)))
    assert echoed == {"type": "pong", "n": ping.extra["n"]}


def _nested_ping(depth: int, inside: str = "[]") -> bytes:
    """A ping whose frame object and arrays nest ``depth`` levels deep."""
    return b'{"type":"ping","n":' + b"[" * (depth - 2) + inside.encode() + b"]" * (depth - 2) + b"}"


def test_nesting_at_the_limit_is_accepted_and_echoed():
    payload = decode_payload(_nested_ping(MAX_NESTING))
    ping = parse_message(payload, CLIENT_MESSAGES)
    echoed = decode_one(encode(Pong(ping.extra)))
    assert echoed == {"type": "pong", "n": ping.extra["n"]}


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 100, 900])
def test_nesting_beyond_the_limit_is_bad_frame(depth):
    error = assert_bad_frame(frame(_nested_ping(depth)), MAX_CLIENT_FRAME)
    assert str(MAX_NESTING) in error.message


def test_nesting_counts_objects_and_arrays_alike():
    def ping(objects: int) -> bytes:
        inner = b'{"a":' * objects + b"1" + b"}" * objects
        return b'{"type":"ping","n":' + inner + b"}"

    assert decode_payload(ping(MAX_NESTING - 1))["type"] == "ping"
    assert_bad_frame(frame(ping(MAX_NESTING)))


def test_brackets_inside_strings_are_not_nesting():
    payload = {"type": "say", "text": "[{" * 1000, "extra": [[[1]], {"a": ["[" * 50]}]}
    assert decode_payload(json.dumps(payload).encode()) == payload


def test_encoding_something_too_deep_is_a_local_error():
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(LocalProtocolError) as info:
        encode(Pong({"n": deep}))
    assert "pong" in info.value.message
    assert len(info.value.message) < 200  # the message, not the data


# --------------------------------------------------------------------------
# Showing wire strings in error messages and log lines


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("bob", "'bob'"),
        ("José 张伟", "'José 张伟'"),
        ("a\nb", "'a\\x0ab'"),
        ("\n2026-12-01 INFO forged", "'\\x0a2026-12-01 INFO forged'"),
        ("it's", "'it\\'s'"),
        ("back\\slash", "'back\\\\slash'"),
        ("\x1b[31mred", "'\\x1b[31mred'"),
        ("a\u202eb", "'a\\u202eb'"),  # bidi override
        ("a\u2028b", "'a\\u2028b'"),  # line separator
        ("bob\ufe0f", "'bob\\ufe0f'"),  # default-ignorable, though printable
        ("\u3164", "'\\u3164'"),
        ("x\U000e0100", "'x\\U000e0100'"),
        ("a\ud800", "'a\\ud800'"),  # lone surrogate
        ("", "''"),
    ],
)
def test_show_wire_quotes_and_escapes(text, shown):
    assert show_wire(text) == shown


def test_show_wire_cuts_long_text():
    shown = show_wire("\u0301" * 65536)
    assert shown == "'" + "\u0301" * 40 + "…' (65536 characters)"
    assert show_wire("x" * 40) == "'" + "x" * 40 + "'"


@PROPERTY
@given(st.text())
def test_property_show_wire_is_one_short_safe_line(text):
    shown = show_wire(text)
    assert len(shown) <= 40 * 10 + 40
    assert shown.isprintable()
    shown.encode("utf-8")  # no lone surrogate left


# --------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "name",
    [
        "José",
        "张伟",
        "नमस्ते",
        "bob_2",
        "alice",
        "a.b-c_d",
        "_1",
        "x.",
        "-a-",
        "42",
        "٣٤",  # Arabic-Indic digits (Nd)
        "Ⅻ",  # Roman numeral (Nl)
        "Ελένη",
        "x" * 32,
        "张" * 32,
        "\U0001d49c",  # mathematical script A, a letter beyond U+FFFF
    ],
)
def test_valid_names_are_kept(name):
    assert normalize_name(name) == name


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("e\u0301", "\u00e9"),
        ("Jose\u0301", "Jos\u00e9"),
        ("\u212b", "\u00c5"),  # ANGSTROM SIGN -> A WITH RING (NFC singleton)
        ("e\u0301" + "x" * 31, "\u00e9" + "x" * 31),  # 33 code points, 32 after NFC
        (fullwidth("full"), fullwidth("full")),  # NFC, not NFKC: fullwidth is kept as typed
    ],
)
def test_names_are_nfc_normalised(raw, kept):
    assert normalize_name(raw) == kept


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a b",
        " alice",
        "alice ",
        "x!",
        "a@b",
        "a/b",
        "a,b",
        "\U0001f600",
        "bob\U0001f600",
        "a\x00",
        "\x07",
        "a\tb",
        "a\nb",
        "a\u200bb",  # zero-width space, Cf
        "a\u202eb",  # RTL override, Cf
        "a\u00a0b",  # no-break space, Zs
        "\u0301",
        "\u0301a",
        "\u0903a",  # spacing mark (Mc) first
        "x" * 33,
        "张" * 33,
        "a\ud800",
        "\ue000",  # private use
        "a\u0378",  # unassigned
        # no letter or digit
        "_",
        "-",
        ".",
        "._-",
        "\u0301_",
        # default-ignorable code points, which would look blank or like another name
        "\u3164",  # Hangul filler (Lo)
        "alice\ufe0f",  # variation selector-16 (Mn)
        "alice\u034f",  # combining grapheme joiner (Mn)
        "alice\U000e0100",  # variation selector-17 (Mn)
        "a\u200db",  # zero-width joiner (Cf)
        "\u115fbob",  # Hangul choseong filler (Lo)
        "bob\uffa0",  # halfwidth Hangul filler (Lo)
    ],
)
def test_invalid_names(name):
    with pytest.raises(RuleViolation) as info:
        normalize_name(name)
    assert info.value.code == "name-invalid"
    assert info.value.fatal is False
    assert info.value.message


@pytest.mark.parametrize(
    "char",
    [
        chr(code)
        for first, last in DEFAULT_IGNORABLE_RANGES
        for code in sorted({first, (first + last) // 2, last})
    ],
)
def test_every_default_ignorable_range_is_refused_in_a_name(char):
    with pytest.raises(RuleViolation) as info:
        normalize_name("alice" + char)
    assert info.value.code == "name-invalid"
    assert info.value.message == (f"A name cannot hold invisible characters (U+{ord(char):04X}).")


def test_default_ignorable_ranges_are_sorted_and_apart():
    flat = [code for pair in DEFAULT_IGNORABLE_RANGES for code in pair]
    assert flat == sorted(flat)
    assert all(
        last + 1 < first for (_, last), (first, _) in itertools.pairwise(DEFAULT_IGNORABLE_RANGES)
    )


@pytest.mark.parametrize(
    "name",
    ["alice\u00ad", "alice\u061c", "\u17b4a", "a\u180eb", "a\u2060", "a\ufeff", "a\U0001d173"],
)
def test_invisible_characters_are_named_in_the_reason(name):
    char = next(c for c in name if c not in "abilce")
    with pytest.raises(RuleViolation) as info:
        normalize_name(name)
    assert f"U+{ord(char):04X}" in info.value.message


@pytest.mark.parametrize("name", ["_", ".", "-", "._-", "_\u0301"])
def test_a_name_without_a_letter_or_digit_says_so(name):
    with pytest.raises(RuleViolation) as info:
        normalize_name(name)
    assert info.value.message == "A name needs at least one letter or digit."


@pytest.mark.parametrize(
    "nfc",
    [
        "\uac01" * 32,  # Hangul syllable GAG: 3 jamo each when decomposed
        "\u00e9" * 32,  # e + combining acute
        "\u1f82" * 32,  # alpha with psili, varia, ypogegrammeni: 4 code points
        "\u1ec7" * 31 + "x",  # e with circumflex and dot below
    ],
)
def test_every_decomposed_spelling_of_a_valid_name_passes_the_early_bound(nfc):
    decomposed = unicodedata.normalize("NFD", nfc)
    assert len(decomposed) > MAX_NAME_LENGTH
    assert len(decomposed) <= MAX_NAME_INPUT
    assert normalize_name(decomposed) == nfc


def test_no_code_point_decomposes_beyond_what_the_early_bound_allows():
    # MAX_NAME_INPUT rests on this: a name of 32 code points never has a
    # canonically equivalent spelling longer than MAX_NAME_INPUT.
    longest = max(
        len(unicodedata.normalize("NFD", chr(code)))
        for code in range(0x110000)
        if not 0xD800 <= code <= 0xDFFF
    )
    assert longest * MAX_NAME_LENGTH <= MAX_NAME_INPUT


@pytest.fixture
def normalising_only_short(monkeypatch):
    """Make normalising anything longer than MAX_NAME_INPUT code points fail the test."""
    real = unicodedata.normalize

    def normalize(form: str, text: str) -> str:
        assert len(text) <= MAX_NAME_INPUT, f"normalised {len(text)} code points"
        return real(form, text)

    monkeypatch.setattr(unicodedata, "normalize", normalize)


@pytest.mark.parametrize(
    "name",
    [
        "a" + "\u0301" * (MAX_NAME_INPUT),
        "a" + "\u0301" * 32767,
        "x" * (MAX_NAME_INPUT + 1),
    ],
    ids=["marks-129", "marks-32768", "letters-129"],
)
def test_an_over_long_name_is_refused_before_it_is_normalised(normalising_only_short, name):
    with pytest.raises(RuleViolation) as info:
        normalize_name(name)
    assert info.value.code == "name-invalid"
    assert info.value.message == "A name can be at most 32 characters long."


def test_sorting_does_not_normalise_an_over_long_name(normalising_only_short):
    long = "b" + "\u0301" * 5000
    assert sort_names([long, "Bob", "alice"]) == ["alice", "Bob", long]


def test_name_length_boundary_in_code_points():
    assert len(normalize_name("\U0001d49c" * MAX_NAME_LENGTH)) == 32
    with pytest.raises(RuleViolation):
        normalize_name("\U0001d49c" * (MAX_NAME_LENGTH + 1))


@pytest.mark.parametrize(
    "group",
    [
        ["Alice", "ALICE", "alice", fullwidth("alice"), fullwidth("ALICE")],
        ["Strasse", "STRASSE", "straße", "STRAẞE"],
        ["José", "Jose\u0301", "JOSÉ"],
        ["ﬁle", "FILE", "file"],
    ],
)
def test_same_identity(group):
    identities = {name_identity(name) for name in group}
    assert len(identities) == 1
    assert identities == {name_identity(group[0].lower())}


def test_identity_values():
    assert name_identity("ALICE") == "alice"
    assert name_identity(fullwidth("alice")) == "alice"
    assert name_identity("straße") == "strasse"
    assert name_identity("Jose\u0301") == "jos\u00e9"


@pytest.mark.parametrize(
    ("a", "b"), [("alice", "alicia"), ("bob", "bob_"), ("jose", "josé"), ("a", "ª" + "b")]
)
def test_different_identity(a, b):
    assert name_identity(a) != name_identity(b)


def test_sort_names_by_identity_then_name():
    names = [
        "bob",
        "Alice",
        "zoe",
        "alice",
        "ALICE",
        "Carol",
        fullwidth("bob"),
        "straße",
        "Strasse",
        "Émile",
    ]
    assert sort_names(names) == [
        "ALICE",
        "Alice",
        "alice",
        "bob",
        fullwidth("bob"),
        "Carol",
        "Strasse",
        "straße",
        "zoe",
        "Émile",
    ]
    assert sort_names([]) == []


# --------------------------------------------------------------------------
# Message text


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("hi all", "hi all"),
        ("a\r\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\r\r\nb", "a\n\nb"),
        ("a\n\rb", "a\n\nb"),
        ("a\r", "a\n"),
        ("a\nb\tc", "a\nb\tc"),
        ("a\x00b\x01c\x1bd\x7fe\x85f\x9fg", "abcdefg"),
        ("a\x0bb\x0cc", "abc"),  # vertical tab and form feed are Cc too
        ("\u202aa\u202bb\u202cc\u202dd\u202ee", "abcde"),
        ("\u2066x\u2067y\u2068z\u2069", "xyz"),
        # Just outside the removed ranges, and other format characters, stay.
        (
            "a\u2029b\u202fc\u2065d\u206ae\u200ff\u200bg",
            "a\u2029b\u202fc\u2065d\u206ae\u200ff\u200bg",
        ),
        ("\U0001f600\U0001f389 \U0001d49c", "\U0001f600\U0001f389 \U0001d49c"),
        ("  padded  ", "  padded  "),
        ("a" * MAX_TEXT_LENGTH, "a" * 4000),
        ("\U0001f600" * 4000, "\U0001f600" * 4000),  # code points, not UTF-16 units
        ("a" * 4000 + "\x00" * 10, "a" * 4000),  # length counted after cleaning
        ("a" * 3999 + "\r\n", "a" * 3999 + "\n"),
        ("\u202ex", "x"),
    ],
)
def test_clean_text(raw, kept):
    assert clean_text(raw) == kept


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "\n",
        "\t \n",
        "\r\n",
        "\u3000",  # ideographic space
        "\x00\x01\x1b",
        "\u202e",
        "\u2066\u2069 ",
        "a" * 4001,
        "\U0001f600" * 4001,
        "a\ud800",
    ],
)
def test_clean_text_invalid(raw):
    with pytest.raises(RuleViolation) as info:
        clean_text(raw)
    assert info.value.code == "text-invalid"
    assert info.value.fatal is False


# --------------------------------------------------------------------------
# Hypothesis properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
extras = st.dictionaries(st.text().filter(lambda k: k != "type"), json_values, max_size=5)
timestamps = st.floats(allow_nan=False, allow_infinity=False) | st.integers()
name_lists = st.lists(st.text(), max_size=6).map(tuple)
optional_text = st.none() | st.text()

client_messages = st.one_of(
    st.builds(Hello, st.text(), st.integers()),
    st.builds(Say, st.text(), st.booleans(), optional_text),
    st.builds(Rename, st.text()),
    st.just(Who()),
    st.just(Bye()),
    st.builds(Ping, extras),
    st.builds(Pong, extras),
    # operators extension
    st.builds(Op, st.text()),
    st.builds(Kick, st.text(), optional_text),
    st.builds(Ban, optional_text, optional_text, st.none() | timestamps, optional_text),
    st.builds(Unban, st.integers()),
    st.just(Bans()),
    st.builds(Whois, st.text()),
    st.builds(SendNotice, st.text()),
)
optional_names = st.none() | name_lists
ban_entries = st.builds(
    BanEntry,
    st.integers(),
    timestamps,
    optional_text,
    optional_text,
    optional_text,
    optional_text,
    st.none() | timestamps,
)
server_messages = st.one_of(
    st.builds(Welcome, st.text(), name_lists, st.integers(), optional_text),
    st.builds(
        ChatMessage,
        st.integers(),
        st.text(),
        st.text(),
        timestamps,
        st.booleans(),
        optional_text,
        st.booleans(),
    ),
    st.builds(Joined, st.text(), timestamps),
    st.builds(
        Left, st.text(), st.sampled_from([r.value for r in LeaveReason]) | st.text(), timestamps
    ),
    st.builds(Renamed, st.text(), st.text(), timestamps),
    st.builds(Users, name_lists),
    st.builds(Error, st.text(), st.text(), optional_text),
    st.builds(Shutdown, st.text()),
    st.builds(Ping, extras),
    st.builds(Pong, extras),
    # operators extension
    st.builds(Welcome, st.text(), name_lists, st.integers(), optional_text, optional_names),
    st.builds(Users, name_lists, optional_names),
    st.builds(Left, st.text(), st.text(), timestamps, optional_text, optional_text),
    st.builds(
        Error,
        st.text(),
        st.text(),
        optional_text,
        optional_text,
        st.none() | timestamps,
        st.none() | timestamps,
    ),
    st.builds(OpChanged, st.text(), st.booleans(), timestamps, optional_text),
    st.builds(BanList, st.lists(ban_entries, max_size=4).map(tuple)),
    st.builds(WhoisResult, st.text(), st.text(), st.booleans(), timestamps, st.booleans()),
    st.builds(Notice, st.text(), timestamps, optional_text),
)
tagged_messages = st.one_of(
    client_messages.map(lambda m: (m, CLIENT_MESSAGES)),
    server_messages.map(lambda m: (m, SERVER_MESSAGES)),
)


@PROPERTY
@given(tagged_messages)
def test_property_encode_decode_round_trip(tagged):
    message, table = tagged
    decoded = decode_chunks([encode(message)])
    assert len(decoded) == 1
    assert parse_message(decoded[0], table) == message


@PROPERTY
@given(st.lists(tagged_messages, min_size=1, max_size=8), st.data())
def test_property_stream_split_anywhere(tagged, data):
    messages = [message for message, _ in tagged]
    stream = b"".join(encode(message) for message in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert b"".join(chunks) == stream
    payloads = decode_chunks(chunks)
    assert len(payloads) == len(messages)
    parsed = [parse_message(p, table) for p, (_, table) in zip(payloads, tagged, strict=True)]
    assert parsed == messages


def _header_and(body: bytes, length: int | None) -> bytes:
    return HEADER.pack(len(body) if length is None else length) + body


json_ish_payloads = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.text(alphabet='{}[]":,0123456789.eE+-tfnulrsNIaTy \\', max_size=64).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["type", "n", "text"]), json_values, max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
)
hostile_streams = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.builds(_header_and, json_ish_payloads, st.none() | st.integers(0, 2**32 - 1)),
        max_size=6,
    ).map(b"".join),
)


@PROPERTY
@given(hostile_streams, st.sampled_from([16, 64, MAX_CLIENT_FRAME]), st.data())
def test_property_decoder_only_raises_remote_protocol_error(stream, max_frame, data):
    split = data.draw(st.integers(0, len(stream)))
    decoder = FrameDecoder(max_frame)
    payloads = []
    try:
        for chunk in (stream[:split], stream[split:]):
            decoder.receive_data(chunk)
            # Each payload consumes at least 5 bytes, so this bound is generous.
            for _ in range(len(stream) // 5 + 2):
                payload = decoder.next_payload()
                if payload is None:
                    break
                payloads.append(payload)
            else:
                pytest.fail("next_payload never asked for more data")
    except RemoteProtocolError as exc:
        assert exc.code == "bad-frame"
        with pytest.raises(RemoteProtocolError):
            decoder.next_payload()
    for payload in payloads:
        assert type(payload) is dict
        assert type(payload["type"]) is str


def _name_rules_hold(name: str) -> bool:
    return (
        1 <= len(name) <= MAX_NAME_LENGTH
        and unicodedata.normalize("NFC", name) == name
        and not unicodedata.category(name[0]).startswith("M")
        and all(unicodedata.category(c)[0] in "LMN" or c in "_-." for c in name)
        and any(unicodedata.category(c)[0] in "LN" for c in name)
        and not any(
            first <= ord(c) <= last for c in name for first, last in DEFAULT_IGNORABLE_RANGES
        )
    )


name_candidates = st.one_of(
    st.text(max_size=40),
    st.text(
        alphabet=st.characters(categories=["L", "M", "N"], include_characters="_-."),
        min_size=1,
        max_size=40,
    ),
)


@PROPERTY
@given(name_candidates)
def test_property_normalize_name(raw):
    try:
        name = normalize_name(raw)
    except RuleViolation as exc:
        assert exc.code == "name-invalid"
        # Refused exactly when the NFC form breaks a rule.
        assert not _name_rules_hold(unicodedata.normalize("NFC", raw))
        return
    assert _name_rules_hold(name)
    assert name == unicodedata.normalize("NFC", raw)
    assert normalize_name(name) == name
    assert name_identity(name) == name_identity(raw)


@PROPERTY
@given(st.text(max_size=60))
def test_property_clean_text(raw):
    try:
        text = clean_text(raw)
    except RuleViolation as exc:
        assert exc.code == "text-invalid"
        return
    assert 1 <= len(text) <= MAX_TEXT_LENGTH
    assert not text.isspace()
    assert "\r" not in text
    for char in text:
        assert unicodedata.category(char) != "Cc" or char in "\n\t"
        assert not 0x202A <= ord(char) <= 0x202E
        assert not 0x2066 <= ord(char) <= 0x2069
    assert clean_text(text) == text


# --------------------------------------------------------------------------
# encode_page: a history page or search results within one frame


def _long_messages(count: int) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(n, "a", f"{n} " + "é" * 3990, 1.5, history=True) for n in range(count))


def test_a_page_that_fits_is_encoded_as_it_is():
    page = HistoryPage(9, _long_messages(3), False)
    assert encode_page(page) == encode(page)


@pytest.mark.parametrize("kind", ["history", "search"])
def test_a_page_too_big_for_a_frame_keeps_its_newest_messages_and_says_more(kind):
    messages = _long_messages(200)  # about 1.6 MB of text
    if kind == "history":
        page = encode_page(HistoryPage(None, messages, False))  # oldest first
    else:
        page = encode_page(SearchResults("q", messages[::-1], False))  # newest first
    assert len(page) - 4 <= MAX_SERVER_FRAME
    wire = decode_one(page)
    ids = [m["id"] for m in wire["messages"]]
    assert wire["more"] is True
    newest_first = ids[::-1] if kind == "history" else ids
    assert newest_first == list(range(199, 199 - len(ids), -1))  # the newest, none skipped
    # As many as fit: one more would not.
    one_more = len(ids) + 1
    kept = messages[-one_more:]
    bigger = HistoryPage(None, kept, True) if kind == "history" else SearchResults("q", kept, True)
    with pytest.raises(LocalProtocolError):
        encode(bigger)
