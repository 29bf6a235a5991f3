"""Benchmark: files through a real server, and what they do to everybody's chat.

    python3 -m tests.bench.files_bench [--mb 100] [--downloaders 10] [--paced-seconds 10]

Starts ``python -m server`` (``--no-rate-limit``, a temporary data folder)
and runs two parts:

1. **One file up and down.** A client uploads a ``--mb`` MiB file (random
   bytes, every chunk sent as fast as the server takes it), posts it, then
   downloads it back with four ranges in flight and checks its SHA-256.
   Meanwhile a canary pair chats: one says a message every 20 ms, the
   other measures how long each takes to arrive, and the server's RSS is
   sampled every 50 ms. Printed: MB/s each way, RSS before and at its peak
   in each direction (the goal: no growth with the file's size), and the
   canary's latency (the goal: p99 under 10 ms).
2. **Ten downloaders and the paced benchmark.** ``--downloaders`` clients
   download the same file over and over (four ranges in flight each,
   reading the frames without decoding them, so that this process stays
   light) while ``tests.bench.server_bench --workloads paced`` runs against
   the same server for ``--paced-seconds``. Printed: the paced run's
   latency (the goal: p99 under 10 ms) and how many MB/s the downloaders
   got meanwhile.

On a 2-core machine the server takes one core and this process and the
paced benchmark's share the other: numbers are for comparing runs. The
exit status is 1 only when something went wrong (a file that came back
different, a canary or a paced message lost, a downloader that failed); a
goal missed is printed as MISSED.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench import history_bench
from tests.bench.history_bench import joined, ms, p99
from tests.wire import RawClient, frame

CHUNK = 32_768
RANGE = 262_144
IN_FLIGHT = 4  # ranges a downloader keeps asked for
CANARY_GOAL_MS = 10.0
CANARY_EVERY_S = 0.02  # the server runs without its rate limit
PACED_GOAL_MS = 10.0
_OFFSET = re.compile(rb'"offset":\s*(\d+)')


def canary(port: int, stop: Any, results: Any) -> None:
    """``history_bench``'s canary pair, a line every ``CANARY_EVERY_S``, its
    results put on ``results``. It runs in a process of its own, so that the
    uploader's and downloader's work in this one (base64, hashing) does not
    delay what it measures."""
    out: list[float] = []
    missed: list[int] = []
    history_bench.canary(port, stop, out, missed, every=CANARY_EVERY_S)
    results.put((out, missed))


def start_server(folder: Path, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--tls", "off",
         "--data-dir", str(folder), "--log-level", "warning", "--no-rate-limit",
         "--max-file-mb", "1024", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on 127.0.0.1, port" in line:
            # Keep reading its output, or a full pipe would stop it.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(line.rsplit("port", 1)[1].strip(" .\n"))
    process.kill()
    raise RuntimeError("the server did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The server's RSS every 50 ms, the peak kept per phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "idle"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            value = rss_mb(self.pid)
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), value)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def reply(client: RawClient, type_: str, timeout: float = 30.0) -> dict[str, Any]:
    """The next frame of ``type_``, past the room's chat and presence; an error fails."""
    deadline = time.monotonic() + timeout
    while True:
        obj = client.recv(max(0.0, deadline - time.monotonic()))
        if obj["type"] == type_:
            return obj
        if obj["type"] == "error":
            raise RuntimeError(f"the server refused: {obj}")


def upload(client: RawClient, path: Path, size: int) -> tuple[str, float]:
    """Upload the file at ``path``; its id and the seconds it took."""
    started = time.perf_counter()
    client.send({"type": "upload", "name": path.name, "size": size})
    number = reply(client, "upload-ready")["upload"]
    digest = hashlib.sha256()
    with path.open("rb") as source:
        offset = 0
        while piece := source.read(CHUNK * 32):
            digest.update(piece)
            client.send_raw(
                b"".join(
                    frame({"type": "upload-data", "upload": number, "offset": offset + start,
                           "data": base64.b64encode(piece[start : start + CHUNK]).decode()})
                    for start in range(0, len(piece), CHUNK)
                )
            )  # fmt: skip
            offset += len(piece)
    client.send({"type": "upload-done", "upload": number, "sha256": digest.hexdigest()})
    file_id = reply(client, "uploaded", timeout=120)["file"]
    return file_id, time.perf_counter() - started


def download(client: RawClient, file_id: str, size: int) -> tuple[str, float]:
    """Download the whole file, ``IN_FLIGHT`` ranges asked ahead; its SHA-256 and seconds."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    asked = got = 0
    while got < size:
        while asked < size and asked - got < IN_FLIGHT * RANGE:
            client.send({"type": "download", "file": file_id, "offset": asked, "length": RANGE})
            asked += RANGE
        piece = reply(client, "file-data")
        assert piece["offset"] == got, (piece["offset"], got)
        data = base64.b64decode(piece["data"])
        digest.update(data)
        got += len(data)
    return digest.hexdigest(), time.perf_counter() - started


class FrameReader:
    """Frames off a socket into one buffer, their payloads not decoded
    (``RawClient.recv`` copies its buffer at every read and parses JSON: at
    hundreds of MB/s that would be the benchmark's bottleneck, not the server)."""

    def __init__(self, client: RawClient) -> None:
        self.sock = client.sock
        self.buffer = bytearray(4 * 1024 * 1024)
        self.start = self.end = 0

    def next(self, deadline: float) -> memoryview:
        """The next payload, valid until the next call."""
        while True:
            have = self.end - self.start
            if have >= 4:
                length = int.from_bytes(self.buffer[self.start : self.start + 4], "big")
                if have >= 4 + length:
                    begin = self.start + 4
                    self.start = begin + length
                    return memoryview(self.buffer)[begin : self.start]
            if self.start:  # keep what is left at the front
                self.buffer[:have] = self.buffer[self.start : self.end]
                self.start, self.end = 0, have
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            got = self.sock.recv_into(memoryview(self.buffer)[self.end :])
            if not got:
                raise ConnectionError("the server closed the connection")
            self.end += got


def data_bytes(payload: memoryview) -> tuple[int, int]:
    """A ``file-data`` payload's offset and how many bytes its base64 holds, not decoded."""
    head = bytes(payload[:200])
    match = _OFFSET.search(head)
    assert match is not None, head
    start = head.index(b'"data":"') + 8
    tail = bytes(payload[-16:])
    end = len(payload) - len(tail) + tail.index(b'","eof":')
    padding = bytes(payload[max(start, end - 2) : end]).count(b"=")
    return int(match.group(1)), (end - start) * 3 // 4 - padding


def keep_downloading(
    port: int, name: str, file_id: str, size: int, *, stop: threading.Event, bytes_out: list[int]
) -> None:
    """Download the file again and again until ``stop``, counting the data's bytes."""
    client = joined(port, name)
    reader = FrameReader(client)
    kind = b'{"type":"file-data"'
    with client:
        total = 0
        while not stop.is_set():
            asked = got = 0
            while got < size and not stop.is_set():
                while asked < size and asked - got < IN_FLIGHT * RANGE:
                    client.send(
                        {"type": "download", "file": file_id, "offset": asked, "length": RANGE}
                    )
                    asked += RANGE
                payload = reader.next(time.monotonic() + 30)
                if bytes(payload[: len(kind)]) != kind:
                    continue  # the paced benchmark's chat, presence
                offset, length = data_bytes(payload)
                assert offset == got, (offset, got)
                got += length
            total += got
        bytes_out.append(total)


def paced(port: int, pid: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "paced.json"
        subprocess.run(
            [sys.executable, "-m", "tests.bench.server_bench", "--workloads", "paced",
             "--port", str(port), "--server-pid", str(pid), "--duration", str(seconds),
             "--json", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.read_text())["results"][0]
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.bench.files_bench")
    parser.add_argument("--mb", type=int, default=100, help="the file's size in MiB")
    parser.add_argument("--downloaders", type=int, default=10)
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more server argument, as --server-arg=--no-store")  # fmt: skip
    args = parser.parse_args(argv)
    size = args.mb * 1024 * 1024
    ok = True
    with tempfile.TemporaryDirectory(prefix="files-bench-") as folder:
        source = Path(folder) / "big.bin"
        with source.open("wb") as out:
            for _ in range(args.mb):
                out.write(os.urandom(1024 * 1024))
        process, port = start_server(Path(folder) / "data", args.server_arg)
        sampler = RssSampler(process.pid)
        try:
            time.sleep(0.3)
            before = rss_mb(process.pid)
            processes = multiprocessing.get_context("spawn")
            stop_canary = processes.Event()
            results = processes.Queue()
            bird = processes.Process(target=canary, args=(port, stop_canary, results))
            bird.start()
            time.sleep(1.0)  # joined, and saying
            try:
                with joined(port, "uploader") as client:
                    sampler.phase = "upload"
                    file_id, up_s = upload(client, source, size)
                    client.send({"type": "say", "text": "the big file", "file": file_id})
                    sampler.phase = "download"
                    digest, down_s = download(client, file_id, size)
                    sampler.phase = "after"
            finally:
                stop_canary.set()
                latencies, missed = results.get(timeout=30)
                bird.join(30)
            expected = hashlib.sha256(source.read_bytes()).hexdigest()
            print(f"file: {args.mb} MiB on 127.0.0.1")
            print(f"upload: {size / up_s / 1e6:.1f} MB/s ({up_s:.2f} s)")
            print(
                f"download: {size / down_s / 1e6:.1f} MB/s ({down_s:.2f} s), "
                f"sha256 {'matches' if digest == expected else 'DIFFERS'}"
            )
            ok &= digest == expected
            peaks = sampler.peaks
            print(
                f"server RSS: {before:.1f} MB before, peak {peaks.get('upload', 0):.1f} MB "
                f"uploading, {peaks.get('download', 0):.1f} MB downloading"
            )
            canary_ok = p99(latencies) < CANARY_GOAL_MS and not missed
            ok &= not missed
            print(
                f"canary: {len(latencies)} seen, {len(missed)} missed, p50 / p99 / max "
                f"{ms(latencies)} ms (goal: p99 under {CANARY_GOAL_MS:g} ms: "
                f"{'met' if canary_ok else 'MISSED'}; one every {CANARY_EVERY_S:g} s)"
            )
            stop = threading.Event()
            counts: list[int] = []
            pullers = [
                threading.Thread(
                    target=keep_downloading,
                    args=(port, f"down{n}", file_id, size),
                    kwargs={"stop": stop, "bytes_out": counts},
                )
                for n in range(args.downloaders)
            ]
            sampler.phase = "downloaders"
            started = time.perf_counter()
            for thread in pullers:
                thread.start()
            try:
                time.sleep(1.0)  # every downloader under way
                result = paced(port, process.pid, args.paced_seconds)
            finally:
                stop.set()
                for thread in pullers:
                    thread.join(60)
            took = time.perf_counter() - started
            latency = result.get("latency_ms") or {}
            paced_ok = latency.get("p99", float("inf")) < PACED_GOAL_MS and not result.get("losses")
            ok &= result.get("losses") == 0 and len(counts) == args.downloaders
            print(
                f"{args.downloaders} downloaders: {sum(counts) / took / 1e6:.1f} MB/s together "
                f"over {took:.1f} s ({len(counts)} finished), server RSS peak "
                f"{peaks.get('downloaders', 0):.1f} MB"
            )
            print(
                f"paced meanwhile ({result.get('clients')} clients, {result.get('rate'):g}/s): "
                f"p50 / p99 / max {latency.get('p50', float('nan')):.1f} / "
                f"{latency.get('p99', float('nan')):.1f} / {latency.get('max', float('nan')):.1f}"
                f" ms, losses {result.get('losses')} (goal: p99 under {PACED_GOAL_MS:g} ms: "
                f"{'met' if paced_ok else 'MISSED'})"
            )
            server_cpu = result.get("server_cpu_pct") or float("nan")
            generator_cpu = result.get("generator_cpu_pct") or float("nan")
            print(
                f"meanwhile the server took {server_cpu:.0f} % of a core, "
                f"the paced generator {generator_cpu:.0f} %"
            )
        finally:
            sampler.stop()
            process.terminate()
            process.wait(10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
