"""A real ``redis-server`` for tests, on 127.0.0.1, a free port and a temporary folder.

How this works: the server runs in the foreground as a child process, its
data in ``<folder>/data`` and its log in ``<folder>/redis.log`` (outside the
data, so that wiping the data keeps the log that explains a failure).
``start()`` polls PING until it answers, within a bound; ``stop()`` asks for
SHUTDOWN NOSAVE and kills the process if it has not gone within a bound;
every way of ending it reaps the process. ``restart()`` reuses the port, as
a Redis that comes back after a crash does, so clients given the URL before
find it again. By default nothing is persisted (``--save ''``, no AOF);
with ``appendonly=True`` every write is fsynced to the AOF before it is
answered, so a restart with ``keep_data=True`` keeps everything answered.

``redis-server`` missing is an error, never a skip: CI must install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LOG_TAIL = 2000
NO_RETRY = Retry(NoBackoff(), 0)

INSTALL_HINT = (
    "redis-server is not on PATH; the Redis backplane's tests need a real one: "
    "apt-get install redis-server (Debian, Ubuntu), brew install redis (macOS), "
    "or see https://redis.io/docs/latest/operate/oss_and_stack/install/"
)


class RedisServerError(RuntimeError):
    """The test Redis could not be found, started or stopped."""


def free_port() -> int:
    """A port nothing listens on at the moment (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process for a test; see the module's docstring."""

    def __init__(self, folder: Path, *, appendonly: bool = False, port: int = 0) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RedisServerError(INSTALL_HINT)
        self._executable = executable
        self.folder = Path(folder)
        self.data_dir = self.folder / "data"
        self.log_path = self.folder / "redis.log"
        self.appendonly = appendonly
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The running server's process id (None when it is not running)."""
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        return [
            self._executable,
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            "--save",
            "",
            *persistence,
            "--enable-debug-command",
            "local",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and return once it answers PING (within ``timeout``)."""
        if self._process is not None:
            raise RedisServerError("this Redis is already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RedisServerError(f"redis-server exited with {code}:\n{self._log_tail()}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self._reap(kill=True)
                raise RedisServerError(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        probe = redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=NO_RETRY,
        )
        try:
            return bool(probe.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            probe.close()

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return text[-LOG_TAIL:] or "(empty log)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SHUTDOWN NOSAVE, then SIGKILL if it has not exited within ``timeout``;
        the process is reaped either way. Nothing to do when not running."""
        if self._process is None:
            return
        if self._paused:
            self.resume()
        if self._process.poll() is None:
            # No retry: the connection closing is SHUTDOWN's success, and
            # redis-py's default retries it with back-off for seconds.
            asker = redis.Redis(
                host=HOST,
                port=self.port,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=NO_RETRY,
            )
            try:
                asker.shutdown(nosave=True)
            except redis.RedisError:
                pass  # gone already, or will not answer: the kill below ends it
            finally:
                asker.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._reap(kill=True)

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed but what is already on disk); reaped."""
        self._reap(kill=True)

    def _reap(self, *, kill: bool) -> None:
        process, self._process = self._process, None
        self._paused = False
        if process is None:
            return
        if kill and process.poll() is None:
            process.kill()  # a stopped process dies of SIGKILL too
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(f"redis-server {process.pid} did not die of SIGKILL") from exc

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung server)."""
        if not self.running():
            raise RedisServerError("this Redis is not running")
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._process is not None and self._paused:
            os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    def restart(self, keep_data: bool) -> None:
        """Stop and start again on the same port; ``keep_data=False`` wipes the
        data folder first. What survives a kept restart is what was on disk:
        everything answered with ``appendonly=True``, nothing without."""
        self.stop()
        if not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.start()

    def client(self, **options: object) -> redis.Redis:
        """A redis-py client to this server (decode_responses and a 5 s timeout
        unless given); closed by ``close()``, which the fixture calls."""
        options.setdefault("decode_responses", True)
        options.setdefault("socket_timeout", 5.0)
        options.setdefault("socket_connect_timeout", 5.0)
        made = redis.Redis(host=HOST, port=self.port, **options)  # type: ignore[arg-type]
        self._clients.append(made)
        return made

    def close(self) -> None:
        """Stop the server and close every client ``client()`` made."""
        try:
            self.stop()
        finally:
            for made in self._clients:
                made.close()
            self._clients.clear()

    def __enter__(self) -> RedisServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
