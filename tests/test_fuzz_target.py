"""The fuzz target (tests/fuzz/session_target.py) under Hypothesis, and its checks.

The coverage-guided run (atheris) is a command, not a test; this runs the
same ``one_input`` on every machine, from the same seed corpus.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.protocol import ChatMessage
from tests.fuzz.session_target import Broken, _Room, one_input, seeds

SEEDS = seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data)))
        if draw(st.booleans()) and data:
            data[min(position, len(data) - 1)] = draw(st.integers(0, 255))
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=12))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.binary(max_size=600)))
def test_no_input_crashes_the_session_or_breaks_the_room(data: bytes) -> None:
    logging.getLogger("server").setLevel(logging.CRITICAL)
    try:
        one_input(data)
    finally:
        logging.getLogger("server").setLevel(logging.NOTSET)


@pytest.mark.parametrize("seed", SEEDS[:5])
def test_the_seeds_hold(seed: bytes) -> None:
    one_input(seed)


def test_the_checks_catch_a_forged_sender() -> None:
    room = _Room()
    room.check()
    room.room.send(room.members["alice"], ChatMessage(99, "bob", "forged", 0.0))
    with pytest.raises(Broken, match="signed 'bob'"):
        room.check()


def test_the_checks_catch_a_room_list_that_lies() -> None:
    room = _Room()
    room.members["bob"].name = "bobby"  # what only the room may set
    with pytest.raises(Broken, match="lists"):
        room.check()
