"""A fuzz target: bytes from a hostile client through the decoder, its session
and a real room, with the room's invariants checked after every frame.

Run it (not part of the unit tests)::

    python3 -m tests.fuzz.session_target --seconds 60

With atheris installed (``pip install -e ".[fuzz]"``: Linux x86-64 only) it
is coverage-guided, from a corpus of valid frames; elsewhere it mutates that
corpus at random. Either way it prints how many inputs it tried and how
many crashed. ``tests/test_fuzz_target.py`` runs the same ``one_input``
under Hypothesis in the suite.

An input is a byte stream from one client ("mallory") in a room where
alice and bob are joined. Its first byte says where the stream is cut into
reads; time moves on between frames so that deadlines and the rate limit
come into play. A crash is any exception but the ones a connection
expects (the decoder's ``RemoteProtocolError``, answered as the connection
answers it), or a broken invariant: every frame queued for anyone decodes
and parses; every message's ``from`` is its sender's current name; nobody
else's name is ever used; the room's list is everyone joined, sorted, and
no two members share a name identity.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config import RateLimit, ServerConfig
from server.fanout import Outbox
from server.protocol import (
    HEADER,
    MAX_CLIENT_FRAME,
    MAX_SERVER_FRAME,
    SERVER_MESSAGES,
    ChatMessage,
    FrameDecoder,
    LeaveReason,
    RemoteProtocolError,
    name_identity,
    parse_message,
    sort_names,
)
from server.protocol.messages import Hello, Say
from server.room import Room
from server.session import Session, State

MAX_INPUT = 64 * 1024  # bytes per input: a few frames' worth


class _Member:
    """The room's member and the session's link, as a real connection is both."""

    secure = False  # plaintext, as the room sees it

    def __init__(self) -> None:
        self.name: str | None = None
        self.outbox = Outbox()
        self.closed = False

    def notify(self) -> None:
        pass  # the target pulls after every frame

    def call_soon(self, callback: Callable[[], object]) -> None:
        callback()  # one thread here: a kick runs at once

    def on_closing(self) -> None:
        self.closed = True

    def on_closed(self) -> None:
        self.closed = True


class Broken(AssertionError):
    """An invariant of the room does not hold."""


class _Room:
    """One room, two honest members and mallory, for one input."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.room = Room(clock=lambda: self.now)
        config = ServerConfig(rate_limit=RateLimit(burst=20, per_second=5.0))
        self.members: dict[str, _Member] = {}
        self.sessions: dict[str, Session] = {}
        for name in ("alice", "bob", "mallory"):
            member = _Member()
            session = Session(self.room, config, member, member, peer=name, now=self.now)
            self.members[name] = member
            self.sessions[name] = session
            if name != "mallory":
                session.receive(Hello(name).to_wire(), self.now)
        self.mallory = self.sessions["mallory"]
        self.mallory_names: set[str] = set()  # every name mallory held

    def check(self) -> None:
        """Take what everyone was sent and check it against the invariants."""
        joined = {
            key: member
            for key, member in self.members.items()
            if self.sessions[key].state is State.JOINED
        }
        current = {key: member.name for key, member in joined.items()}
        if self.mallory.member.name is not None:
            self.mallory_names.add(self.mallory.member.name)
        for key, member in self.members.items():
            data = self.room.pull(member, 1 << 24)
            if data is None:
                continue  # overrun: its connection would drop it as too-slow
            decoder = FrameDecoder(MAX_SERVER_FRAME)
            decoder.receive_data(data)
            while (payload := decoder.next_payload()) is not None:
                message = parse_message(payload, SERVER_MESSAGES)
                if isinstance(message, ChatMessage) and not message.history:
                    # Only alice speaks of the two, and only "still me ...".
                    honest = message.sender == "alice" and message.text.startswith("still me")
                    if not honest and message.sender not in self.mallory_names:
                        raise Broken(f"{key} got a message signed {message.sender!r}")
        names = list(self.room.users())
        if names != sort_names([n for n in current.values() if n is not None]):
            raise Broken(f"the room lists {names}, the members are {current}")
        identities = [name_identity(name) for name in names]
        if len(set(identities)) != len(identities):
            raise Broken(f"two members share a name identity: {names}")


def one_input(data: bytes) -> None:
    """Feed ``data`` as mallory's stream; raise on a crash or a broken invariant."""
    data = data[:MAX_INPUT]
    room = _Room()
    cut = 1 + (data[0] if data else 0)
    stream = data[1:]
    decoder = FrameDecoder(MAX_CLIENT_FRAME)
    for start in range(0, len(stream), cut):
        decoder.receive_data(stream[start : start + cut])
        while room.mallory.state in (State.GREETING, State.JOINED):
            try:
                payload = decoder.next_payload()
            except RemoteProtocolError as exc:
                room.mallory.fail(exc, LeaveReason.ERROR)  # as the connection does
                break
            if payload is None:
                break
            room.now += (len(payload) % 7) * 0.25
            room.mallory.receive(payload, room.now)
            room.mallory.check_timers(room.now)
            # alice keeps talking, so messages interleave with mallory's doing.
            room.sessions["alice"].receive(Say(f"still me {room.now}").to_wire(), room.now)
            room.check()
        if room.mallory.state not in (State.GREETING, State.JOINED):
            break
    room.check()


def _frame(obj: dict[str, Any]) -> bytes:
    payload = json.dumps(obj, ensure_ascii=False).encode()
    return HEADER.pack(len(payload)) + payload


def seeds() -> list[bytes]:
    """Valid frames and near misses: where coverage-guided fuzzing starts."""
    frames: list[dict[str, Any]] = [
        {"type": "hello", "name": "mallory", "protocol": 1},
        {"type": "hello", "name": "alice", "protocol": 1},
        {"type": "hello", "name": "ALİCE", "protocol": 1},
        {"type": "say", "text": "hi"},
        {"type": "say", "text": "/me waves", "action": True},
        {"type": "say", "text": "psst", "to": "bob"},
        {"type": "say", "text": "psst", "to": "nobody"},
        {"type": "rename", "name": "bob"},
        {"type": "rename", "name": "alice"},
        {"type": "rename", "name": "m2"},
        {"type": "who"},
        {"type": "ping", "extra": [1, {"a": "b"}]},
        {"type": "pong"},
        {"type": "bye"},
        {"type": "nonsense", "x": 1},
    ]
    framed = [_frame(frame) for frame in frames]
    corpus = [b"\x00" + b"".join(framed)]
    corpus += [bytes([cut]) + framed[0] + frame for cut in (0, 3, 255) for frame in framed[1:]]
    corpus.append(b"\x00\x00\x00\x00\x05{}{}x")
    return corpus


def _mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        position = rng.randrange(len(data) + 1)
        if choice < 0.4 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.7:
            data[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice < 0.9:
            del data[position : position + rng.randint(1, 16)]
        else:
            data[position:position] = rng.choice(corpus)[1:]
    return bytes(data[:MAX_INPUT])


def run_random(seconds: float, seed: int) -> tuple[int, int]:
    """Mutate the corpus at random for ``seconds``: (inputs tried, crashes)."""
    rng = random.Random(seed)
    corpus = seeds()
    tried = crashes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = _mutate(rng, corpus)
        tried += 1
        try:
            one_input(data)
        except Exception as exc:
            crashes += 1
            if crashes <= 5:
                print(f"crash on {data!r}: {exc!r}", file=sys.stderr)
    return tried, crashes


def run_atheris(atheris: Any, seconds: float) -> None:
    """Coverage-guided; libFuzzer prints the inputs tried and stops at the first crash."""
    atheris.instrument_all()  # the server's modules, already imported
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-corpus-"))
    for index, seed in enumerate(seeds()):
        (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup(
        [sys.argv[0], f"-max_total_time={int(seconds)}", f"-max_len={MAX_INPUT}", str(corpus)],
        one_input,
    )
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.fuzz.session_target")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0, help="for the random mutator")
    parser.add_argument(
        "--random", action="store_true", help="the random mutator even where atheris is"
    )
    args = parser.parse_args(argv)
    # Refusing what a hostile client sends is logged; at fuzzing speed, that
    # is millions of lines of expected news.
    logging.getLogger("server").setLevel(logging.CRITICAL)
    atheris = None if args.random else _atheris()
    if atheris is not None:
        run_atheris(atheris, args.seconds)
        return 0
    tried, crashes = run_random(args.seconds, args.seed)
    print(json.dumps({"mutator": "random", "seconds": args.seconds, "inputs": tried,
                      "crashes": crashes}))  # fmt: skip
    return 1 if crashes else 0


def _atheris() -> Any:
    try:
        import atheris  # noqa: PLC0415 - optional, Linux x86-64 only
    except ImportError:
        return None
    return atheris


if __name__ == "__main__":
    raise SystemExit(main())
