"""The real ``python -m server`` process: start-up text, signals, bind errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import installed
from tests.wire import Closed, RawClient

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on 127\.0\.0\.1, port (\d+)")


def run_server_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m server ARGS`` to completion (a bounded 30 s)."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


class ServerProcess:
    """A ``python -m server`` child process and what it printed."""

    def __init__(self, *args: str, preexec_fn: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only sets a resource limit
        )
        self.stdout = ""
        self.stderr = ""

    def wait_for_port(self, timeout: float = 10.0) -> int:
        """The port from the start-up line (the server was started with --port 0)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout += line
            match = LISTENING.search(line)
            if match:
                return int(match.group(1))
        self.stop()
        raise AssertionError(f"server did not start: {self.stdout!r} {self.stderr!r}")

    def finish(self, timeout: float) -> int:
        out, err = self.proc.communicate(timeout=timeout)
        self.stdout += out
        self.stderr += err
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(10)


@pytest.fixture
def run_server() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def run(*args: str, preexec_fn: Callable[[], None] | None = None) -> ServerProcess:
        process = ServerProcess(*args, preexec_fn=preexec_fn)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()


def test_help_documents_every_option() -> None:
    result = run_server_command("--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "--host",
        "--port",
        "--max-clients",
        "--history",
        "--motd",
        "--log-level",
        "--no-rate-limit",
        "--rate-burst",
        "--rate-per-second",
    ):
        assert option in result.stdout
    assert "12345" in result.stdout  # the default port is stated


def test_console_script_is_installed() -> None:
    script = installed.script("chat-server")
    assert script, "chat-server is not installed: pip install -e ."
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "--port" in result.stdout


POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="POSIX signals (Windows: Ctrl+C)")


@POSIX_ONLY
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_tells_every_client_and_exits_zero(run_server, signum: int) -> None:
    server = run_server("--host", "127.0.0.1", "--port", "0")
    port = server.wait_for_port()
    with RawClient(port) as alice, RawClient(port) as bob, RawClient(port) as lurker:
        alice.join("alice")
        bob.join("bob")
        alice.expect("joined", name="bob")
        lurker.send({"type": "ping"})
        lurker.expect("pong")  # connected but never joined
        started = time.monotonic()
        server.proc.send_signal(signum)
        for client in (alice, bob, lurker):
            frames = client.expect_closed(timeout=5)
            assert frames == [{"type": "shutdown", "message": "The server is shutting down"}]
        assert server.finish(timeout=5) == 0
        assert time.monotonic() - started < 2.0
    assert "Traceback" not in server.stderr


@POSIX_ONLY
def test_logs_joins_leaves_and_renames(run_server) -> None:
    server = run_server("--host", "127.0.0.1", "--port", "0")
    port = server.wait_for_port()
    with RawClient(port) as alice, RawClient(port) as bob:
        alice.join("alice")
        bob.join("bob")
        bob.send({"type": "rename", "name": "robert"})
        alice.skip_until("renamed")
        bob.send({"type": "bye"})
        alice.expect("left", name="robert", reason="quit")
    server.proc.send_signal(signal.SIGINT)
    assert server.finish(timeout=5) == 0
    log = server.stderr
    assert re.search(r"INFO alice \(127\.0\.0\.1:\d+\) joined, 1 online", log), log
    assert re.search(r"INFO bob is now robert", log), log
    assert re.search(r"INFO robert \(127\.0\.0\.1:\d+\) left \(quit\), 1 online", log), log


def test_port_in_use_is_one_clear_line_and_status_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server_command("--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"chat-server: Cannot listen on 127.0.0.1 port {port}: it is already in use "
        "(is another server running?). Choose another with --port."
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "70000 is not a port number"),
        (["--port", "abc"], "'abc' is not a port number"),
        (["--max-clients", "0"], "must be more than 0"),
        (["--history", "-1"], "cannot be negative"),
    ],
)
def test_bad_arguments_are_explained(args: list[str], message: str) -> None:
    result = run_server_command(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_host_is_a_clear_error() -> None:
    result = run_server_command("--host", "no-such-host.invalid", "--port", "0")
    assert result.returncode == 1
    assert "Cannot listen on no-such-host.invalid: no such host name or address." in result.stderr
    assert "Traceback" not in result.stderr


@POSIX_ONLY
def test_restart_on_the_same_port_right_after_a_stop(run_server) -> None:
    first = run_server("--host", "127.0.0.1", "--port", "0")
    port = first.wait_for_port()
    with RawClient(port) as client:
        client.join("alice")
        client.send({"type": "say", "text": "before"})
        client.expect("message", text="before")
        first.proc.send_signal(signal.SIGINT)
        client.expect("shutdown")
        with pytest.raises(Closed):
            client.recv(timeout=5)
    assert first.finish(timeout=5) == 0
    # The server closed first, so its side of the connection is in TIME_WAIT.
    second = run_server("--host", "127.0.0.1", "--port", str(port))
    assert second.wait_for_port() == port
    with RawClient(port) as client:
        client.join("alice")
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish(timeout=5) == 0


@POSIX_ONLY
def test_startup_text_on_every_interface(run_server) -> None:
    server = run_server("--port", "0", "--motd", "Hello LAN")
    assert server.proc.stdout is not None
    first = server.proc.stdout.readline()
    match = re.fullmatch(
        r"Chat server listening on port (\d+), on every network interface\.\n", first
    )
    assert match, first
    port = int(match.group(1))
    second = server.proc.stdout.readline()
    assert second.startswith("People on your network can connect to "), second
    assert second.rstrip().endswith(f"port {port}."), second
    # Then how to check the server (PROTOCOL.md, "Invite"), then how to stop it.
    rest = []
    while len(rest) < 12 and (line := server.proc.stdout.readline()) not in (
        "",
        "Press Ctrl+C to stop.\n",
    ):
        rest.append(line)
    assert line == "Press Ctrl+C to stop.\n", rest
    assert rest[0] == "Encryption (TLS) is on for every client that asks for it.\n", rest
    assert any(re.search(rf":{port}#[a-z2-7-]{{32}}$", text) for text in rest), rest
    assert re.fullmatch(
        r"    (\w+ ){7}\w+\n",
        rest[rest.index("Safety words, to compare with those a client shows:\n") + 1],
    ), rest
    assert any("Back this file up" in text for text in rest), rest  # a new identity
    # How people find it, and what to do about a firewall, last.
    assert any(text.startswith("Chat apps on your network list it as 'Chat on ") for text in rest)
    assert "allow it on private networks" in rest[-1], rest
    for host in ("127.0.0.1", "::1"):
        try:
            client = RawClient(port, host=host)
        except OSError:
            assert host == "::1", "IPv4 must always work"
            continue
        with client:
            welcome = client.join(f"user{host.count(':')}")
            assert welcome["motd"] == "Hello LAN"
    server.proc.send_signal(signal.SIGINT)
    assert server.finish(timeout=5) == 0


def test_server_smoke_test_and_version() -> None:
    result = run_server_command("--smoke-test")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"chat-server \S+ smoke test passed\n", result.stdout)
    version = run_server_command("--version")
    from importlib.metadata import version as installed  # noqa: PLC0415

    assert version.stdout == f"chat-server {installed('lan-chat')}\n"
