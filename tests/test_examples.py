"""docs/examples/echo_bot.py, run as its README says, against a real server.

The bot is a separate program that needs only the standard library: it
runs in isolated mode (``-I``) from a folder outside the repository, and
its imports are checked to be the standard library's.
"""

from __future__ import annotations

import ast
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.chat_server import ChatServer
from server.config import ServerConfig, TlsMode
from tests.wire import RawClient, frame

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "docs" / "examples" / "echo_bot.py"
WAIT = 15.0  # generous: the bot is a fresh interpreter on a shared machine


class BotProcess:
    """The bot as a child process; ``stop`` signals it the way a person's Ctrl+C does."""

    def __init__(self, port: int, name: str, cwd: Path) -> None:
        self.log = cwd / f"{name}.log"
        self._out = self.log.open("w", encoding="utf-8")
        flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
        command = [sys.executable, "-I", str(BOT), "--host", "127.0.0.1", "--port", str(port)]
        self.proc = subprocess.Popen(
            [*command, "--name", name],
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            creationflags=flags,
        )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def interrupt(self) -> None:
        """Ask it to leave, as Ctrl+C does (Ctrl+Break on Windows, for a child)."""
        if self.proc.poll() is None:
            self.proc.send_signal(
                signal.CTRL_BREAK_EVENT if sys.platform == "win32" else signal.SIGINT
            )

    def stop(self) -> int:
        """Ask it to leave; its exit status (it is killed if it does not exit in time)."""
        self.interrupt()
        try:
            return self.proc.wait(WAIT)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._out.close()


@pytest.fixture
def start_bot(tmp_path: Path) -> Iterator[Callable[[int, str], BotProcess]]:
    """Start echo bots in a folder outside the repository; none outlives the test."""
    bots: list[BotProcess] = []
    folder = tmp_path / "elsewhere"
    folder.mkdir()

    def start(port: int, name: str) -> BotProcess:
        bot = BotProcess(port, name, folder)
        bots.append(bot)
        return bot

    yield start
    for bot in bots:
        bot.kill()


def _next(client: RawClient, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next frame ``wanted`` accepts, within ``WAIT`` (pings are answered on the way)."""
    deadline = time.monotonic() + WAIT
    while True:
        frame = client.recv(max(0.0, deadline - time.monotonic()))
        if frame["type"] == "ping":
            client.send({**frame, "type": "pong"})
        elif wanted(frame):
            return frame


def _listen(client: RawClient, seconds: float) -> list[dict[str, Any]]:
    """The frames that arrive in ``seconds`` (pings answered, so that ``client`` stays)."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = client.recv(left)
        except TimeoutError:
            break
        if frame["type"] == "ping":
            client.send({**frame, "type": "pong"})
        else:
            frames.append(frame)
    return frames


def _joined(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "joined" and f["name"] == name


def _said_by(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["type"] == "message" and f["from"] == name


def test_the_bot_needs_only_the_standard_library() -> None:
    tree = ast.parse(BOT.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported, "no imports found: the check looks in the wrong place"
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported


def test_the_bot_joins_answers_mentions_only_and_leaves_on_ctrl_c(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    start_bot: Callable[[int, str], BotProcess],
) -> None:
    # Keep-alive made quick: a bot that did not answer pings would be
    # dropped (left, timeout) within the test.
    server = start_server(idle_ping_after=0.3, idle_timeout=1.5)
    alice = open_client(server, "alice")
    alice.send({"type": "say", "text": "echo, are you there?"})  # history when the bot joins
    _next(alice, _said_by("alice"))

    bot = start_bot(server.port, "echo")
    assert _next(alice, lambda f: f["type"] in ("joined", "left"))["name"] == "echo", bot.output()

    alice.send({"type": "say", "text": "nobody mentioned here, not even echoes"})
    alice.send({"type": "say", "text": "hello Echo!"})
    answer = _next(alice, _said_by("echo"))
    assert answer["text"] == "@alice you said: hello Echo!", answer
    assert "to" not in answer

    alice.send({"type": "say", "text": "a secret", "to": "echo"})
    private = _next(alice, lambda f: f["type"] == "message" and f["from"] == "echo")
    assert private["to"] == "alice" and private["text"] == "@alice you said: a secret"

    # Three idle timeouts later, the bot is still in the room: it answered the pings.
    heard = _listen(alice, 3 * 1.5)
    assert not [f for f in heard if f["type"] == "left"], (heard, bot.output())
    alice.send({"type": "who"})
    users = _next(alice, lambda f: f["type"] in ("users", "left"))
    assert users["type"] == "users" and "echo" in users["users"], (users, bot.output())

    bot.interrupt()  # alice keeps answering pings meanwhile: her timeout is short too
    left = _next(alice, lambda f: f["type"] == "left")
    assert left["name"] == "echo" and left["reason"] == "quit", left
    assert bot.stop() == 0, bot.output()


def test_the_bot_comes_back_after_the_server_restarts(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    start_bot: Callable[[int, str], BotProcess],
    tmp_path: Path,
) -> None:
    first = start_server()
    port = first.port
    alice = open_client(first, "alice")
    bot = start_bot(port, "echo")
    _next(alice, _joined("echo"))

    first.shutdown()
    first.server_close()
    # The same port again (start_server picks a free one): served here, stopped below.
    second = ChatServer(ServerConfig(host="127.0.0.1", port=port, data_dir=tmp_path / "again"))
    serving = threading.Thread(target=second.serve_forever, args=(0.05,), name="test-serve-again")
    serving.start()
    try:
        bob = open_client(second)
        if "echo" not in bob.join("bob")["users"]:  # back within its first pauses (0.5 to 2 s)
            _next(bob, _joined("echo"))
        bob.send({"type": "say", "text": "welcome back, echo"})
        assert _next(bob, _said_by("echo"))["text"] == "@bob you said: welcome back, echo"
        assert bot.stop() == 0, bot.output()
        assert "the server is stopping" in bot.output()
    finally:
        second.shutdown()
        serving.join(5.0)
        second.server_close()
    assert not serving.is_alive()


def test_the_bot_takes_another_name_when_its_own_is_taken(
    start_server: Callable[..., ChatServer],
    open_client: Callable[..., RawClient],
    start_bot: Callable[[int, str], BotProcess],
) -> None:
    server = start_server()
    holder = open_client(server, "Echo")  # the same name by identity
    bot = start_bot(server.port, "echo")
    assert _next(holder, lambda f: f["type"] == "joined")["name"] == "echo-2", bot.output()
    holder.send({"type": "say", "text": "hi echo-2"})
    assert _next(holder, _said_by("echo-2"))["text"] == "@Echo you said: hi echo-2"
    assert bot.stop() == 0, bot.output()


def test_the_bot_stops_for_good_when_the_server_wants_no_plaintext(
    start_server: Callable[..., ChatServer], start_bot: Callable[[int, str], BotProcess]
) -> None:
    server = start_server(tls=TlsMode.REQUIRED)
    bot = start_bot(server.port, "echo")
    assert bot.proc.wait(WAIT) == 1, bot.output()
    assert "tls-required" in bot.output() and "not connecting again" in bot.output()


def test_the_bot_shows_a_hostile_servers_words_harmlessly(
    start_bot: Callable[[int, str], BotProcess],
) -> None:
    # A fake server that kicks the bot with a message a terminal would obey
    # (clear the screen, a new line pretending to be the bot's own).
    hostile = "\x1b[2J\nconnected to 10.0.0.1 \u202eevil" + "x" * 5000
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        bot = start_bot(listener.getsockname()[1], "echo")
        conn, _ = listener.accept()
        with conn:  # first a frame nested far too deep: the bot gives up this connection
            conn.settimeout(WAIT)
            assert conn.recv(4096)
            depth = 100_000
            conn.sendall(struct.pack(">I", 2 * depth) + b"[" * depth + b"]" * depth)
        conn, _ = listener.accept()  # and comes back
        with conn:
            conn.settimeout(WAIT)
            assert conn.recv(4096)  # its hello
            conn.sendall(frame({"type": "error", "code": "kicked", "message": hostile}))
            assert bot.proc.wait(WAIT) == 1, bot.output()
    output = bot.output()
    assert "not JSON" in output and "not connecting again" in output, output
    assert "\x1b" not in output and "\u202e" not in output, output
    assert "\\x1b[2J\\nconnected" in output, output  # shown, escaped
    assert max(len(line) for line in output.splitlines()) < 300, "a log line is not cut"
