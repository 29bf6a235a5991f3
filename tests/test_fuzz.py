"""Fuzz tests (Hypothesis) of the decoder, the server's session and the client's network class.

Each test is bounded: a fixed number of examples, derandomized (the same
examples on every run, no example database), and a time budget after which
the remaining examples (and shrinks) pass at once, so a slow machine makes
the test weaker, never hang.

- The decoder (``FrameDecoder``, ``parse_message``): whatever the bytes and
  however they are split, the only exception is ``RemoteProtocolError``, and
  well-formed frames come back equal to what was framed.
- The session: a raw client (``tests.wire``, which shares no code with the
  server) sends drawn frames (valid, invalid, odd) to a real server, one by
  one or all at once; the answers must come in order, each the kind
  PROTOCOL.md gives that frame, and the server must log no internal error.
  JSON nested deeper than ``SHALLOW`` may be refused as ``bad-frame`` (a
  reader's bound), anything shallower may not. The oracle is deliberately loose
  where the protocol leaves a choice (which error when two apply), and never
  recomputes what the server computes (name rules, text cleaning).
- The client (``ChatClient``): a fake server welcomes it, then feeds it drawn
  server frames and a probe ``ping``; the client must answer the probe (or
  drop the connection, only when a frame was one it may refuse), post only
  the documented events, log no failure, and stop cleanly when closed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import network
from app.network import ChatClient
from server.chat_server import ChatServer
from server.protocol import (
    CLIENT_MESSAGES,
    MAX_CLIENT_FRAME,
    MAX_SERVER_FRAME,
    SERVER_MESSAGES,
    ChatMessage,
    Error,
    ErrorCode,
    FrameDecoder,
    Joined,
    Left,
    Message,
    RemoteProtocolError,
    Renamed,
    Say,
    Users,
    Welcome,
    parse_message,
)
from tests.trust_helpers import PlaintextAgreed

HOST = "127.0.0.1"
ANSWER_WAIT = 3.0  # the longest one answer may take
BUDGET_S = 15.0  # per test: after this, the remaining examples pass at once
# JSON this deep must be read; deeper may be refused as bad framing (the
# protocol sets no depth, so this is a floor any reader should clear).
SHALLOW = 16

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Budget:
    """A test's time: once ``BUDGET_S`` have passed since its first example,
    ``skip`` says to pass at once, but never for an example that failed
    before (Hypothesis replays the failing example at the end)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.failed: set[str] = set()

    def skip(self, key: str) -> bool:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        return now - self.started > BUDGET_S and key not in self.failed

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.failed.add(key)
            raise


# --------------------------------------------------------------------------
# Strategies

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e20, -1e308, 1e308, 5e-324, 0.0, -0.0])
    | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


class Deep:
    """A field value nested ``depth`` deep (lists, or objects with one key).

    Python's own json module (and Hypothesis's printer) recurse, and fail
    near 1,000 levels, so the value is kept as its JSON text."""

    def __init__(self, depth: int, kind: str) -> None:
        self.depth, self.kind = depth, kind
        self.json = (
            ("[" * depth + "0" + "]" * depth)
            if kind == "list"
            else ('{"a":' * depth + "0" + "}" * depth)
        )

    def __repr__(self) -> str:
        return f"Deep({self.depth}, {self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deep) and (self.depth, self.kind) == (other.depth, other.kind)

    def __hash__(self) -> int:
        return hash((self.depth, self.kind))


# Python's recursion limit is 1,000 frames: a reader that handles 900 levels
# may still fail to write them back from deeper in its stack.
nested = st.builds(
    Deep, st.integers(1, 1200) | st.integers(900, 1000), st.sampled_from(["list", "dict"])
)
odd_string = (
    st.text(max_size=30)
    | st.text(st.characters(codec="utf-8"), max_size=10)
    | st.sampled_from(
        [
            "",
            " ",
            "\t\n",
            "\r\n",
            "\u202e",
            "\x00",
            "\ud800",  # a lone surrogate, which JSON escapes carry
            "\ufe0f",
            "\u3164",
            "._-",
            "\uff41\uff4c\uff49\uff43\uff45",
            "straße",
            "José",
            "x" * 4001,
        ]
    )
    | st.integers(33, 60_000).map(lambda n: "n" * n)  # over-long (names) or long (text)
)
odd_value = json_value | nested | odd_string
# Sentinels the session test replaces per example: a fresh valid name, our own name.
FRESH, ME = "\x00FRESH", "\x00ME"


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field value, or the field left out (``...``)."""
    return st.just(...) | strategy


def message(type_: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A frame of ``type_`` whose fields are drawn (``...`` drops a field)."""
    return st.fixed_dictionaries({"type": st.just(type_), **fields}).map(
        lambda obj: {k: v for k, v in obj.items() if v is not ...}
    )


shallow_fields = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k != "type"), json_value | odd_string, max_size=3
)
extra_fields = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k != "type"), odd_value, max_size=3
)
client_frames = st.one_of(
    st.just({"type": "hello", "name": FRESH, "protocol": 1}),
    message(
        "hello",
        name=optional(odd_string | json_value | st.just(FRESH)),
        protocol=optional(st.sampled_from([1, 2, 0, -1, True, 1.0, "1", None, 2**70])),
    ),
    message(
        "say",
        text=optional(odd_string | json_value),
        action=optional(st.none() | st.booleans() | json_value),
        to=optional(st.none() | st.just(ME) | odd_string | json_value),
    ),
    message("rename", name=optional(odd_string | json_value | st.just(ME) | st.just(FRESH))),
    message("who"),
    st.tuples(st.just("ping"), extra_fields).map(lambda t: {"type": t[0], **t[1]}),
    st.tuples(st.just("ping"), nested).map(lambda t: {"type": t[0], "deep": t[1]}),
    # Nothing answers a pong: too deep a one would be refused unseen.
    st.tuples(st.just("pong"), shallow_fields).map(lambda t: {"type": t[0], **t[1]}),
    message("bye"),
    st.tuples(odd_string.filter(lambda s: s not in CLIENT_MESSAGES), extra_fields).map(
        lambda t: {**t[1], "type": t[0]}
    ),
    # Broken framing: raw bytes, each fatal.
    st.sampled_from(
        [
            b"\0\0\0\0",
            struct.pack(">I", MAX_CLIENT_FRAME + 1),
            struct.pack(">I", 2) + b"\xff\xfe",
            struct.pack(">I", 3) + b"[1]",
            struct.pack(">I", 2) + b"{}",
            struct.pack(">I", 10) + b'{"type":1}',
            struct.pack(">I", 3) + b"NaN",
        ]
    ).map(lambda raw: {"raw": raw}),
)


def to_json(obj: dict[str, Any], *, compact: bool = False) -> str:
    """``obj`` as JSON text, its ``Deep`` field values spliced in; compact as
    the server writes (UTF-8 where it can), or as ``json.dumps`` does."""
    deep = {f"\0deep{i}": v for i, v in enumerate(obj.values()) if isinstance(v, Deep)}
    shallow = {
        k: f"\0deep{i}" if isinstance(v, Deep) else v for i, (k, v) in enumerate(obj.items())
    }
    if compact:
        try:
            text = json.dumps(shallow, ensure_ascii=False, separators=(",", ":"))
            text.encode()
        except UnicodeEncodeError:
            text = json.dumps(shallow, separators=(",", ":"))
    else:
        text = json.dumps(shallow)
    for key, value in deep.items():
        text = text.replace(json.dumps(key), value.json)
    return text


def framed(obj: dict[str, Any]) -> bytes:
    if "raw" in obj:
        return obj["raw"]
    payload = to_json(obj).encode()
    return struct.pack(">I", len(payload)) + payload


class Unparsed(bytes):
    """A payload too deep for this process's json module to read."""


class Peer:
    """One end of a connection, reading the other's frames (up to ``limit`` bytes)."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock, self.limit = sock, limit
        self.buffer = b""
        self.last_raw = b""  # the payload recv() returned last

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, deadline: float) -> dict[str, Any] | Unparsed | None:
        """The next frame; None when the other end closed (or reset) the
        connection; raises TimeoutError at ``deadline``."""
        while True:
            if len(self.buffer) >= 4:
                (length,) = struct.unpack(">I", self.buffer[:4])
                assert 1 <= length <= self.limit, f"a frame of {length} bytes"
                if len(self.buffer) >= 4 + length:
                    payload = self.buffer[4 : 4 + length]
                    self.buffer = self.buffer[4 + length :]
                    self.last_raw = payload
                    try:
                        obj = json.loads(payload)
                    except RecursionError:
                        return Unparsed(payload)
                    assert type(obj) is dict and type(obj.get("type")) is str, obj
                    return obj
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buffer += data


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


# --------------------------------------------------------------------------
# The decoder


def feed(decoder: FrameDecoder, pieces: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for piece in pieces:
        decoder.receive_data(piece)
        while (payload := decoder.next_payload()) is not None:
            out.append(payload)
    return out


payload_bytes = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda v: json.dumps(v).encode(), json_value),
    st.builds(lambda v: json.dumps({"type": "x", "v": v}).encode(), json_value | odd_string),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(1, 20_000)),
    st.builds(lambda d: b'{"type":"ping","a":' + b"[" * d + b"]" * d + b"}", st.integers(1, 5000)),
    st.sampled_from([b'{"type":"x","n":1e999}', b'{"type":"x","n":' + b"9" * 5000 + b"}"]),
)
stream = st.lists(
    st.tuples(payload_bytes, st.sampled_from([0, 0, 0, 1, -1, 1 << 20, 1 << 31])).map(
        lambda pair: struct.pack(">I", max(0, len(pair[0]) + pair[1]) & 0xFFFFFFFF) + pair[0]
    ),
    max_size=5,
).map(b"".join) | st.binary(max_size=300)


@FUZZ
@given(data=stream, cuts=st.lists(st.integers(0, 1 << 16), max_size=8))
def test_decoder_raises_only_remote_protocol_errors(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(MAX_CLIENT_FRAME)
    try:
        payloads = feed(decoder, split(data, cuts))
    except RemoteProtocolError as exc:
        assert exc.code == "bad-frame", exc
        with pytest.raises(RemoteProtocolError):  # and it stays broken
            decoder.next_payload()
        return
    for payload in payloads:
        assert type(payload) is dict and type(payload["type"]) is str, payload


wire_objects = st.tuples(
    odd_string.filter(lambda s: len(s) < 200),
    st.dictionaries(st.text(max_size=6), json_value, max_size=4),
).map(lambda t: {**t[1], "type": t[0]})


@FUZZ
@given(
    objects=st.lists(wire_objects, min_size=1, max_size=6),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=8),
)
def test_decoder_returns_well_formed_frames_as_they_were(
    objects: list[dict[str, Any]], ascii_only: bool, cuts: list[int]
) -> None:
    data = b""
    for obj in objects:
        try:
            payload = json.dumps(obj, ensure_ascii=ascii_only).encode()
        except UnicodeEncodeError:  # a lone surrogate travels only as a \u escape
            payload = json.dumps(obj).encode()
        data += struct.pack(">I", len(payload)) + payload
    assert feed(FrameDecoder(MAX_CLIENT_FRAME), split(data, cuts)) == objects


known_types = st.sampled_from(sorted({*CLIENT_MESSAGES, *SERVER_MESSAGES})) | st.text(max_size=8)
field_names = st.sampled_from(
    ["name", "protocol", "text", "action", "to", "id", "from", "ts", "history", "users",
     "history_count", "motd", "reason", "old", "new", "code", "message", "in_reply_to"]
)  # fmt: skip


@FUZZ
@given(
    type_=known_types,
    fields=st.dictionaries(field_names | st.text(max_size=5), odd_value, max_size=6),
)
def test_parse_message_raises_only_remote_protocol_errors(
    type_: str, fields: dict[str, Any]
) -> None:
    payload = {**fields, "type": type_}
    for table in (CLIENT_MESSAGES, SERVER_MESSAGES):
        try:
            parsed = parse_message(payload, table)
        except RemoteProtocolError as exc:
            assert exc.code == "bad-field", exc
        else:
            assert isinstance(parsed, Message)


# --------------------------------------------------------------------------
# The session, against a real server

_names = itertools.count()


def fill(obj: dict[str, Any], me: str, fresh: Callable[[], str]) -> dict[str, Any]:
    """``obj`` with the sentinels replaced: FRESH by a new name, ME by ours."""
    out = {}
    for key, value in obj.items():
        out[key] = fresh() if value == FRESH else me if value == ME else value
    return out


class Session:
    """What the client knows of its own state, to tell which answers may come."""

    def __init__(self, client: Peer) -> None:
        self.client = client
        self.me: str | None = None
        self.pushed_back: dict[str, Any] | None = None  # looked at, not yet used

    def answer(self) -> dict[str, Any] | None:
        """The next frame that answers something (presence of others and history
        skipped); None when the server closed the connection."""
        if self.pushed_back is not None:
            reply, self.pushed_back = self.pushed_back, None
            return reply
        deadline = time.monotonic() + ANSWER_WAIT
        while True:
            obj = self.client.recv(deadline)
            if obj is None or isinstance(obj, Unparsed):
                return obj  # type: ignore[return-value]  # only pong may be Unparsed
            kind = obj["type"]
            if kind in ("joined", "left") or (kind == "message" and obj.get("history")):
                continue
            if kind == "renamed" and obj.get("old") != self.me:
                continue
            return obj

    def closed(self) -> bool:
        """Whether the server closes the connection now (only presence before)."""
        try:
            return self.answer() is None
        except TimeoutError:
            return False


def depth(value: Any) -> int:
    """How deep ``value`` nests lists and objects (0 for a scalar), without recursing."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        deepest = max(deepest, level)
        if isinstance(item, Deep):
            deepest = max(deepest, level + item.depth)
        elif isinstance(item, dict):
            todo.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, level + 1) for v in item)
    return deepest


def same_echo(raw: bytes, pong: dict[str, Any]) -> bool:
    """Whether the payload ``raw`` is ``pong``, its ``Deep`` values compared as
    text (Python cannot compare values nested near 1,000 deep)."""
    text = raw.decode()
    shallow = {}
    for i, (key, value) in enumerate(pong.items()):
        if isinstance(value, Deep):
            if value.json not in text:
                return False
            text = text.replace(value.json, json.dumps(f"\0deep{i}"), 1)
            value = f"\0deep{i}"  # noqa: PLW2901 - the stand-in replaces it
        shallow[key] = value
    return json.loads(text) == shallow


def is_int(value: Any) -> bool:
    return type(value) is int


def check_error(reply: dict[str, Any] | None, sent: dict[str, Any], codes: set[str]) -> str:
    assert reply is not None, f"the server closed the connection instead of answering {sent}"
    assert reply["type"] == "error", f"{sent} got {reply}"
    assert reply.get("code") in codes, f"{sent} got {reply}, expected one of {codes}"
    assert isinstance(reply.get("message"), str) and reply["message"], reply
    assert reply.get("in_reply_to") in (sent["type"], None), reply
    return reply["code"]


def step(session: Session, sent: dict[str, Any]) -> bool:
    """Check the answer to ``sent``; False once the connection is (rightly) over."""
    if "raw" in sent or len(framed(sent)) - 4 > MAX_CLIENT_FRAME:
        reply = session.answer()
        if reply is not None:
            assert reply["type"] == "error" and reply.get("code") == "bad-frame", reply
            assert session.closed(), "the connection stayed open after bad framing"
        return False
    kind, joined = sent["type"], session.me is not None
    if depth(sent) > SHALLOW:
        reply = session.answer()
        if reply is not None and reply["type"] == "error" and reply.get("code") == "bad-frame":
            assert session.closed(), "the connection stayed open after bad framing"
            return False
        session.pushed_back = reply

    if kind == "bye":
        assert session.closed(), "bye did not close the connection"
        return False
    if kind == "pong" and joined:
        return True  # nothing answers a pong
    reply = session.answer()
    if kind == "ping":
        assert reply is not None, f"the server closed the connection instead of answering {sent}"
        pong = {"type": "pong"} | {k: v for k, v in sent.items() if k != "type"}
        if any(isinstance(v, Deep) for v in pong.values()):
            assert same_echo(session.client.last_raw, pong), f"{sent} got {reply!r}"
        else:
            assert reply == pong, f"{sent} got {reply}"
        return True
    if not joined and kind != "hello":
        check_error(reply, sent, {"not-joined"})
        return True
    if kind == "hello":
        name, protocol = sent.get("name"), sent.get("protocol")
        if joined:
            typed = isinstance(name, str) and is_int(protocol)
            check_error(reply, sent, {"already-joined"} | (set() if typed else {"bad-field"}))
            return True
        if not isinstance(name, str) or not is_int(protocol):
            # PROTOCOL.md, "Room password": the version is checked before the types.
            if is_int(protocol) and protocol != 1:
                check_error(reply, sent, {"protocol-version"})
                assert session.closed(), "the connection stayed open after protocol-version"
                return False
            check_error(reply, sent, {"bad-field"})
            return True
        if reply is not None and reply["type"] == "welcome" and protocol == 1:
            assert isinstance(reply.get("name"), str) and reply["name"] in reply["users"], reply
            session.me = reply["name"]
            return True
        codes = {"name-invalid", "name-taken"} | ({"protocol-version"} if protocol != 1 else set())
        if check_error(reply, sent, codes) == "protocol-version":
            assert session.closed(), "the connection stayed open after protocol-version"
            return False
        return True
    if kind == "say":
        text, action, to = sent.get("text"), sent.get("action"), sent.get("to")
        typed = (
            isinstance(text, str)
            and (action is None or isinstance(action, bool))
            and (to is None or isinstance(to, str))
        )
        if reply is not None and reply["type"] == "message" and typed:
            assert reply.get("from") == session.me, reply
            assert isinstance(reply.get("text"), str) and 1 <= len(reply["text"]) <= 4000, reply
            assert is_int(reply.get("id")) and type(reply.get("ts")) in (int, float), reply
            assert ("to" in reply) == (to is not None), reply
            return True
        codes = {"text-invalid", "no-such-user", "rate-limited"} if typed else {"bad-field"}
        check_error(reply, sent, codes | {"rate-limited"})
        return True
    if kind == "rename":
        name = sent.get("name")
        if not isinstance(name, str):
            check_error(reply, sent, {"bad-field", "rate-limited"})
            return True
        if reply is not None and reply["type"] == "renamed":
            assert reply.get("old") == session.me and isinstance(reply.get("new"), str), reply
            session.me = reply["new"]
            return True
        check_error(reply, sent, {"name-invalid", "name-taken", "rate-limited"})
        return True
    if kind == "who":
        assert reply is not None and reply["type"] == "users", f"{sent} got {reply}"
        users = reply.get("users")
        assert isinstance(users, list) and session.me in users, reply
        return True
    check_error(reply, sent, {"unknown-type"})
    return True


def no_internal_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r
        for r in caplog.records
        if r.name.startswith("server") and (r.exc_info or "internal error" in r.getMessage())
    ]
    assert not bad, [f"{r.getMessage()} {r.exc_info}" for r in bad]


@pytest.fixture
def fuzz_server(start_server: Callable[..., ChatServer]) -> ChatServer:
    return start_server()


_session_budget = Budget()


@FUZZ
@given(frames=st.lists(client_frames, min_size=1, max_size=8))
def test_every_frame_gets_its_answer_in_order(
    fuzz_server: ChatServer, caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]]
) -> None:
    key = repr(frames)
    if _session_budget.skip(key):
        return
    with _session_budget.watch(key):
        one_by_one(fuzz_server, caplog, frames)


def one_by_one(
    server: ChatServer, caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]]
) -> None:
    caplog.set_level(logging.WARNING, logger="server")
    caplog.clear()
    with socket.create_connection((HOST, server.port), timeout=ANSWER_WAIT) as sock:
        client = Peer(sock, MAX_SERVER_FRAME)
        session = Session(client)

        def fresh() -> str:
            return f"fz{next(_names)}"

        # What is sent is known only once the frames before it were answered
        # (ME is our name then), so the frames go out one by one but are
        # never waited on when they need no answer.
        for drawn in frames:
            sent = fill(drawn, session.me or "nobody", fresh)
            client.send(framed(sent))
            if not step(session, sent):
                break
    no_internal_errors(caplog)


_pipeline_budget = Budget()


@FUZZ
@given(frames=st.lists(client_frames.filter(lambda f: f.get("name") != FRESH), max_size=12))
def test_pipelined_frames_are_answered_in_order(
    fuzz_server: ChatServer, caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]]
) -> None:
    """The same, all frames written at once after a join: answers in the same order."""
    key = repr(frames)
    if _pipeline_budget.skip(key):
        return
    with _pipeline_budget.watch(key):
        all_at_once(fuzz_server, caplog, frames)


def all_at_once(
    server: ChatServer, caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]]
) -> None:
    caplog.set_level(logging.WARNING, logger="server")
    caplog.clear()
    with socket.create_connection((HOST, server.port), timeout=ANSWER_WAIT) as sock:
        client = Peer(sock, MAX_SERVER_FRAME)
        session = Session(client)
        hello = {"type": "hello", "name": f"fz{next(_names)}", "protocol": 1}
        client.send(framed(hello))
        assert step(session, hello)
        name = session.me
        sent = [fill(drawn, name, lambda: name) for drawn in frames]
        # A rename makes ME a name nobody has: no-such-user, which step() allows.
        client.send(b"".join(framed(obj) for obj in sent))
        for obj in sent:
            if not step(session, obj):
                break
    no_internal_errors(caplog)


# --------------------------------------------------------------------------
# The client's network class, against a fake server

names_list = st.lists(odd_string, max_size=4) | json_value
server_frames = st.one_of(
    message(
        "message",
        id=optional(st.integers(-(2**70), 2**70) | json_value),
        **{"from": optional(odd_string | st.just("me") | json_value)},
        text=optional(odd_string | json_value),
        ts=optional(st.sampled_from([1e20, -1e20, 0, 2**70, 1e308, -1.5]) | json_value),
        action=optional(st.booleans() | json_value),
        to=optional(odd_string | json_value),
        history=optional(st.booleans() | json_value),
    ),
    message("joined", name=optional(odd_string | json_value), ts=optional(json_value)),
    message(
        "left",
        name=optional(odd_string | json_value),
        reason=optional(odd_string | json_value),
        ts=optional(json_value),
    ),
    message(
        "renamed",
        old=optional(st.just("me") | odd_string | json_value),
        new=optional(odd_string | json_value),
        ts=optional(json_value),
    ),
    message("users", users=optional(names_list)),
    message(
        "error",
        code=optional(st.sampled_from(sorted(ErrorCode)) | odd_string | json_value),
        message=optional(odd_string | json_value),
        in_reply_to=optional(st.sampled_from(["say", "hello", "rename", "who"]) | json_value),
    ),
    message("shutdown", message=optional(odd_string | json_value)),
    message(
        "welcome",
        name=optional(odd_string | json_value),
        users=optional(names_list),
        history_count=optional(st.integers(-5, 2**70) | json_value),
        motd=optional(odd_string | json_value),
    ),
    st.tuples(st.just("ping"), extra_fields).map(lambda t: {"type": t[0], **t[1]}),
    st.tuples(st.just("ping"), nested).map(lambda t: {"type": t[0], "deep": t[1]}),
    st.tuples(st.just("pong"), extra_fields).map(lambda t: {"type": t[0], **t[1]}),
    st.tuples(odd_string.filter(lambda s: s not in SERVER_MESSAGES), extra_fields).map(
        lambda t: {**t[1], "type": t[0]}
    ),
    st.sampled_from(
        [b"\0\0\0\0", struct.pack(">I", (1 << 20) + 1), struct.pack(">I", 3) + b"[1]"]
    ).map(lambda raw: {"raw": raw}),
)
EVENT_TYPES = (
    network.Connecting,
    network.Welcomed,
    network.NameRefused,
    network.ConnectFailed,
    network.ConnectionLost,
    network.ServerShutdown,
    network.Received,
    network.Unsent,
    network.Stopped,
)
RECEIVED_TYPES = (ChatMessage, Joined, Left, Renamed, Users, Error)


def may_be_refused(obj: dict[str, Any]) -> bool:
    """Whether the client may rightly drop the connection over ``obj``: broken
    framing, a known type it cannot parse, an error that ends a session, or
    a welcome (``feed_client`` has sent one already: a second breaks the
    protocol)."""
    if "raw" in obj or depth(obj) > SHALLOW:
        return True
    cls = SERVER_MESSAGES.get(obj["type"])
    if cls is None:
        return False
    try:
        parsed = parse_message(obj, SERVER_MESSAGES)
    except RemoteProtocolError:
        return True
    if isinstance(parsed, Welcome):
        return True
    return isinstance(parsed, Error) and parsed.code in ("server-full", "protocol-version")


def check_events(events: list[Any]) -> None:
    assert events and isinstance(events[-1], network.Stopped), events[-5:]
    for event in events:
        assert isinstance(event, EVENT_TYPES), event
        if isinstance(event, network.Received):
            assert isinstance(event.message, RECEIVED_TYPES), event
        elif isinstance(event, network.Welcomed):
            assert isinstance(event.welcome, Welcome), event
        elif isinstance(event, network.Unsent):
            assert all(isinstance(say, Say) for say in event.says), event
        elif isinstance(event, network.ConnectFailed | network.ConnectionLost):
            assert isinstance(event.message, str) and event.message, event


_client_budget = Budget()
_probes = itertools.count()


@settings(FUZZ, max_examples=300)
@given(
    frames=st.lists(server_frames, max_size=6), cuts=st.lists(st.integers(0, 1 << 16), max_size=4)
)
def test_client_survives_whatever_the_server_sends(
    caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]], cuts: list[int]
) -> None:
    key = repr((frames, cuts))
    if _client_budget.skip(key):
        return
    with _client_budget.watch(key):
        feed_client(caplog, frames, cuts)


def feed_client(
    caplog: pytest.LogCaptureFixture, frames: list[dict[str, Any]], cuts: list[int]
) -> None:
    caplog.set_level(logging.WARNING, logger="app.network")
    caplog.clear()
    probe = next(_probes)
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(ANSWER_WAIT)
        client = ChatClient(
            HOST, listener.getsockname()[1], "me", rng=random.Random(0), known=PlaintextAgreed()
        )
        client.start()
        try:
            sock, _ = listener.accept()
            with sock:
                peer = Peer(sock, MAX_CLIENT_FRAME)
                deadline = time.monotonic() + ANSWER_WAIT
                hello = peer.recv(deadline)
                assert isinstance(hello, dict) and hello["type"] == "hello", hello
                welcome = {"type": "welcome", "name": "me", "users": ["me"], "history_count": 0}
                data = framed(welcome) + b"".join(map(framed, frames))
                data += framed({"type": "ping", "probe": probe})
                for piece in split(data, cuts):
                    try:
                        sock.sendall(piece)
                    except OSError:
                        break  # the client dropped us: checked below
                answered = False
                while (reply := peer.recv(deadline)) is not None:
                    if reply == {"type": "pong", "probe": probe}:
                        answered = True
                        break
                if not answered:
                    assert any(map(may_be_refused, frames)), (
                        "the client dropped the connection over frames it should accept"
                    )
        finally:
            client.close(timeout=ANSWER_WAIT)
    assert not client.running, "the network thread did not stop when closed"
    seen = []
    while not client.events.empty():
        seen.append(client.events.get_nowait())
    check_events(seen)
    failed = [r for r in caplog.records if r.exc_info or "network thread failed" in r.getMessage()]
    assert not failed, [f"{r.getMessage()} {r.exc_info}" for r in failed]
