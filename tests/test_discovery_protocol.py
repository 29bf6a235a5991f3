"""The discovery datagrams of PROTOCOL.md, "Finding servers on the LAN", without sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.protocol import (
    MIN_QUERY,
    QUERY_SIZE,
    Announcement,
    encode_query,
    encode_reply,
    parse_query,
    parse_reply,
)
from server.protocol.discovery import MAX_DATAGRAM, MAX_ROOM_NAME

FINGERPRINT = "sha256:" + "ab" * 32


def announcement(room: str = "Chat on studio-pc", **fields) -> Announcement:
    values = {"port": 12345, "users": 7, "tls": "auto", "password": False, "version": "0.2.0"}
    return Announcement(room, **(values | {"fingerprint": FINGERPRINT} | fields))


def test_a_query_is_padded_to_its_size_and_accepted():
    query = encode_query()
    assert len(query) == QUERY_SIZE
    obj = json.loads(query)
    assert obj["type"] == "discover" and obj["protocol"] == 1 and obj["pad"].strip() == ""
    assert parse_query(query)
    assert len(encode_query(10)) == MIN_QUERY  # never below the floor


@pytest.mark.parametrize(
    "datagram",
    [
        b'{"type":"discover","protocol":1}',  # too short to answer: no amplification
        json.dumps({"type": "discover", "pad": " " * (MAX_DATAGRAM + 1)}).encode(),
        json.dumps({"type": "server", "pad": " " * 300}).encode(),
        json.dumps(["discover", " " * 300]).encode(),
        b"\xff" * 300,
        b"[" * 300,
    ],
    ids=["short", "long", "not-discover", "not-object", "not-utf8", "nested"],
)
def test_other_datagrams_are_not_queries(datagram):
    assert not parse_query(datagram)


def test_the_reply_is_the_protocols_example_and_fits_the_smallest_query():
    reply = encode_reply(announcement(), MIN_QUERY)
    assert reply is not None and len(reply) <= MIN_QUERY
    assert json.loads(reply) == {
        "type": "server",
        "protocol": 1,
        "room": "Chat on studio-pc",
        "port": 12345,
        "users": 7,
        "tls": "auto",
        "fingerprint": FINGERPRINT,
        "password": False,
        "version": "0.2.0",
    }
    assert parse_reply(reply) == announcement()


@given(st.text(max_size=200), st.integers(MIN_QUERY, QUERY_SIZE))
def test_a_reply_is_never_longer_than_the_query(room, limit):
    reply = encode_reply(announcement(room), limit)
    assert reply is not None
    assert len(reply) <= limit
    found = parse_reply(reply)
    assert found is not None and len(found.room) <= MAX_ROOM_NAME


def test_a_long_name_is_shortened_with_an_ellipsis():
    reply = encode_reply(announcement("é" * 100), MIN_QUERY)
    assert reply is not None and len(reply) <= MIN_QUERY
    room = json.loads(reply)["room"]
    assert room.endswith("…") and set(room[:-1]) == {"é"}
    assert encode_reply(announcement("x"), 50) is None  # nothing fits: no answer


@pytest.mark.parametrize(
    "change",
    [
        {"type": "discover"},
        {"port": 0},
        {"port": 70000},
        {"port": "12345"},
        {"users": -1},
        {"users": True},
        {"tls": "maybe"},
        {"password": 1},
        {"fingerprint": "sha256:xyz"},
        {"room": 5},
        {"protocol": "1"},
    ],
)
def test_a_malformed_reply_is_dropped(change):
    obj = announcement().to_wire() | change
    assert parse_reply(json.dumps(obj).encode()) is None


def test_a_hostile_reply_is_made_safe_to_show():
    obj = announcement().to_wire() | {
        "room": "evil\n\u202eroom\x07" + "x" * 500 + "\ud800",
        "version": "1.0\nrm -rf",
    }
    found = parse_reply(json.dumps(obj).encode())
    assert found is not None
    assert "\n" not in found.room and "\u202e" not in found.room and "\x07" not in found.room
    assert len(found.room) <= MAX_ROOM_NAME and found.room.startswith("evil room")
    assert found.version == "?"
    assert parse_reply(b"x" * (MAX_DATAGRAM + 1)) is None
