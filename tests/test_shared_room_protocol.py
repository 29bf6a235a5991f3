"""The server's protocol tests, run again with every server in a shared room.

A shared room changes nothing itself: every join, message and rename goes
through Redis and comes back before anyone sees it. These files' tests
(joining, talking, presence, errors, limits, moderation, history, TLS,
slow readers, the loop's passes) say what a client sees of one server;
here each of their servers serves a room of its own on one real Redis
(tests/conftest.py's ``start_server`` with ``SHARED_ROOM_ENV``), in a
pytest of its own, so that a shared room behaves as one server does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_ROOM_ENV
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "tests/test_server_chat.py",
    "tests/test_server_handshake.py",
    "tests/test_server_moderation.py",
    "tests/test_server_edges.py",
    "tests/test_server_input.py",
    "tests/test_server_limits.py",
    "tests/test_server_history.py",
    "tests/test_server_connection.py",
    "tests/test_server_password.py",
    "tests/test_server_tls.py",
    "tests/test_server_fanout.py",
    "tests/test_server_passes.py",
]
# What a shared room does differently, on purpose: it shares no files.
DIFFERENT = ["tests/test_server_tls.py::test_off_answers_a_client_hello_in_plaintext"]


@pytest.mark.timeout(900)  # a run of a dozen test files: about two minutes here
def test_the_protocol_tests_pass_with_every_server_in_a_shared_room(
    redis_server: RedisServer,
) -> None:
    environment = dict(os.environ, **{SHARED_ROOM_ENV: redis_server.url})
    deselect = [arg for test in DIFFERENT for arg in ("--deselect", test)]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xvfb"]
    result = subprocess.run(
        [*command, *deselect, *FILES],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    # And they did run in shared rooms: each server's room left its epoch in Redis.
    rooms = sum(1 for _ in redis_server.client().scan_iter("chat:*:epoch", count=1000))
    passed = int(summary.split(" passed")[0].split()[-1])
    assert rooms >= passed // 2, f"{rooms} shared rooms for {passed} tests"
