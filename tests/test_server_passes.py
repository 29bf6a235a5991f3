"""How an I/O loop shares a pass among connections with input waiting:
fake connections, no sockets but the loop's own wake-up pair."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.config import ServerConfig
from server.io_loop import BACKLOG_HELPINGS, IOLoop
from server.room import Room


class Busy:
    """A connection with ``helpings`` helpings of input buffered."""

    def __init__(self, loop: IOLoop, name: str, helpings: int, served: list[str]) -> None:
        self.loop, self.name, self.left, self.served = loop, name, helpings, served
        self.who = name

    def arrive(self) -> None:
        """Input was read: the loop is to serve it."""
        self.loop.wait_input(self, True)  # type: ignore[arg-type]

    def serve_input(self) -> None:
        self.served.append(self.name)
        self.left -= 1
        if self.left == 0:
            self.loop.wait_input(self, False)  # type: ignore[arg-type]


@pytest.fixture
def loop() -> Iterator[IOLoop]:
    loop = IOLoop(0, Room(), ServerConfig(), lambda address: None)
    yield loop
    loop.close()


def test_new_input_is_served_first_and_flooders_take_turns(loop: IOLoop) -> None:
    served: list[str] = []
    flooders = [Busy(loop, f"f{i}", 1000, served) for i in range(5 * BACKLOG_HELPINGS)]
    for flooder in flooders:
        flooder.arrive()
    loop._serve_input()  # every flooder is new input once: one helping each
    assert served == [f.name for f in flooders]

    served.clear()
    bystander = Busy(loop, "bystander", 1, served)
    bystander.arrive()
    loop._serve_input()
    # The bystander first; then only a few flooders, so the pass stays short.
    assert served == ["bystander", *(f.name for f in flooders[:BACKLOG_HELPINGS])]

    served.clear()
    for _ in range(4):
        loop._serve_input()
    # The others in turn, each once, before anyone gets a third helping.
    assert served == [f.name for f in flooders[BACKLOG_HELPINGS:]]


def test_between_slices_of_a_flush_only_new_input_is_served(loop: IOLoop) -> None:
    served: list[str] = []
    flooder = Busy(loop, "flooder", 1000, served)
    flooder.arrive()
    loop._serve_input()
    served.clear()
    bystander = Busy(loop, "bystander", 1, served)
    bystander.arrive()
    loop._serve_input(backlog=False)
    assert served == ["bystander"]


def test_a_connection_is_served_until_its_input_is_handled(loop: IOLoop) -> None:
    served: list[str] = []
    conn = Busy(loop, "pipeliner", 3, served)
    conn.arrive()
    for _ in range(10):
        loop._serve_input()
    assert served == ["pipeliner"] * 3
