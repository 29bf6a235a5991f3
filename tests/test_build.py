"""Build both binaries from a clean checkout and check the frozen programs themselves."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageGrab
from PyInstaller.archive.readers import pkg_archive_contents

from tests.test_alerts import (  # noqa: F401 - service and session_bus are fixtures
    FakeNotifications,
    root_window,
    service,
    session_bus,
)
from tests.trust_helpers import agree_to_plaintext
from tests.wire import RawClient

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "screenshots"

# The release workflow builds and smoke-tests the other systems on their own
# runners; this test checks the Linux build with X11 tools (xprop, xwininfo).
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux build checks")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean clone of HEAD, built with the project's one build command."""
    checkout = tmp_path_factory.mktemp("build") / "checkout"
    subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(checkout)], check=True
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "build/build.py"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nbuilt both in {time.monotonic() - started:.1f} s\n{result.stdout}")
    yield checkout
    shutil.rmtree(checkout, ignore_errors=True)


def test_archives_and_checksums(built: Path) -> None:
    release = built / "dist-release"
    archives = sorted(p.name for p in release.glob("*.tar.gz"))
    assert len(archives) == 2
    for program, name in zip(("client", "server"), archives, strict=True):
        assert re.fullmatch(rf"lan-chat-{program}-\d+\.\d+\.\d+-linux-x86_64\.tar\.gz", name)
    sums = (release / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == archives
    assert not (built / "build" / "server").exists()  # PyInstaller kept out of build/


def test_frozen_server_serves_two_clients_and_stops_on_sigint(built: Path, tmp_path: Path) -> None:
    binary = built / "pyinstaller-dist" / "lan-chat-server" / "chat-server"
    proc = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"port (\d+)", proc.stdout.readline())
        assert match, "no start-up line"
        port = int(match.group(1))
        with RawClient(port) as alice, RawClient(port) as bob:
            alice.join("alice")
            bob.join("bob")
            alice.send({"type": "say", "text": "hello from a frozen server"})
            assert bob.skip_until("message")["text"] == "hello from a frozen server"
            # It carries Pillow, for the size of a shared image.
            picture = io.BytesIO()
            Image.new("RGB", (64, 48)).save(picture, "PNG")
            data = picture.getvalue()
            alice.send({"type": "upload", "name": "p.png", "size": len(data)})
            number = alice.skip_until("upload-ready")["upload"]
            alice.send({"type": "upload-data", "upload": number, "offset": 0,
                        "data": base64.b64encode(data).decode()})  # fmt: skip
            digest = hashlib.sha256(data).hexdigest()
            alice.send({"type": "upload-done", "upload": number, "sha256": digest})
            file_id = alice.skip_until("uploaded")["file"]
            alice.send({"type": "say", "text": "", "file": file_id})
            shared = bob.skip_until("message")["file"]
            assert (shared["width"], shared["height"], shared["mime"]) == (64, 48, "image/png")
            proc.send_signal(signal.SIGINT)
            assert alice.skip_until("shutdown")["message"] == "The server is shutting down"
            assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_frozen_client_passes_its_smoke_test(built: Path, tmp_path: Path) -> None:
    binary = built / "pyinstaller-dist" / "lan-chat" / "lan-chat"
    env = {**os.environ, "LAN_CHAT_CONFIG_DIR": str(tmp_path)}
    result = subprocess.run(
        [str(binary), "--smoke-test"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"chat-client \d+\.\d+\.\d+ smoke test passed\n", result.stdout)


def test_frozen_client_carries_no_server_module_but_the_protocol(built: Path) -> None:
    # The spec keeps no list of server modules to leave out: the client's
    # imports alone must keep them out (tests/test_architecture.py).
    binary = built / "pyinstaller-dist" / "lan-chat" / "lan-chat"
    modules = set(pkg_archive_contents(str(binary)))
    assert {"app.network", "server.protocol", "server.protocol.transport"} <= modules
    of_server = {m for m in modules if m == "server" or m.startswith("server.")}
    assert of_server == {"server"} | {m for m in of_server if m.startswith("server.protocol")}
    # Pinning needs only ssl and hashlib: cryptography (13.8 MB) is the server's.
    assert not {m for m in modules if m.split(".")[0] == "cryptography"}
    bundle = binary.parent
    assert not list(bundle.rglob("cryptography*")), "the client carries cryptography"
    # The safety words' list, and no other language's.
    (english,) = bundle.rglob("mnemonic/wordlist/*.txt")
    assert english.name == "english.txt"


def test_frozen_client_window_carries_the_icon(built: Path, start_server, tmp_path: Path) -> None:
    srv = start_server()
    binary = built / "pyinstaller-dist" / "lan-chat" / "lan-chat"
    env = {**os.environ, "LAN_CHAT_CONFIG_DIR": str(tmp_path)}
    agree_to_plaintext(tmp_path, srv.port, srv.identity and srv.identity.fingerprint)
    args = ["--connect", "--host", "127.0.0.1", "--port", str(srv.port), "--name", "frozen"]
    with RawClient(srv.port) as watcher:
        watcher.join("watcher")
        proc = subprocess.Popen([str(binary), *args], env=env)
        try:
            assert watcher.expect("joined", timeout=30)["name"] == "frozen"
            time.sleep(1.0)  # let it draw
            SHOTS.mkdir(exist_ok=True)
            ImageGrab.grab(bbox=(0, 0, 920, 680)).save(SHOTS / "frozen-client.png")
            icon = _window_icon("LAN Chat")
            icon.save(SHOTS / "frozen-client-icon.png")
            assert icon.size == (128, 128)
            assert len(icon.getcolors(maxcolors=1 << 16) or ()) > 10  # drawn, not blank
            proc.terminate()
            assert proc.wait(timeout=5) == 0
            assert watcher.skip_until("left")["reason"] == "quit"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_frozen_client_notifies_through_the_desktop(
    built: Path,
    start_server,
    service: FakeNotifications,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """desktop-notifier names a package of its own only in a string: frozen
    without it, the import failed and every alert fell back to the toast."""
    srv = start_server()
    binary = built / "pyinstaller-dist" / "lan-chat" / "lan-chat"
    env = {**os.environ, "LAN_CHAT_CONFIG_DIR": str(tmp_path)}  # with the test's bus
    agree_to_plaintext(tmp_path, srv.port, srv.identity and srv.identity.fingerprint)
    args = ["--connect", "--host", "127.0.0.1", "--port", str(srv.port), "--name", "frozen"]
    where = subprocess.run(
        ["xdotool", "getmouselocation", "--shell"], check=True, capture_output=True, text=True
    ).stdout
    pointer = dict(line.split("=", 1) for line in where.split())
    with RawClient(srv.port) as watcher:
        watcher.join("watcher")
        proc = subprocess.Popen([str(binary), *args], env=env)
        try:
            assert watcher.expect("joined", timeout=30)["name"] == "frozen"
            # Looked at, then left for another application: with no window
            # manager, the keyboard goes to what is under the pointer.
            subprocess.run(["xdotool", "windowfocus", root_window()], check=True, timeout=10)
            for x, y in [(300, 300), (5, 1015)]:  # the window's at 0,0; then the bare screen
                subprocess.run(["xdotool", "mousemove", str(x), str(y)], check=True, timeout=10)
                time.sleep(0.3)
            watcher.send({"type": "say", "text": "psst, frozen", "to": "frozen"})
            shown = service.shown.get(timeout=30)
            assert (shown.app_name, shown.title, shown.body) == (
                "LAN Chat",
                "watcher",
                "psst, frozen",
            )
            proc.terminate()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            subprocess.run(["xdotool", "mousemove", pointer["X"], pointer["Y"]], timeout=10)


def _window_icon(title_prefix: str) -> Image.Image:
    """The largest _NET_WM_ICON of the window whose title starts with ``title_prefix``:
    the picture a window manager shows in the title bar and task bar."""
    tree = subprocess.run(
        ["xwininfo", "-root", "-tree"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(rf'(0x[0-9a-f]+) "(?:\(\d+\) )?{re.escape(title_prefix)}', tree)
    assert match, f"no window titled {title_prefix!r}:\n{tree}"
    prop = subprocess.run(  # as numbers, not xprop's default ASCII art
        ["xprop", "-id", match.group(1), "-f", "_NET_WM_ICON", "32c", " = $0+", "_NET_WM_ICON"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = [int(v) for v in re.findall(r"\d+", prop.split("=", 1)[1])]
    best = None
    while values:  # width, height, then width*height ARGB pixels, repeated per size
        width, height, pixels = values[0], values[1], values[2 : 2 + values[0] * values[1]]
        values = values[2 + width * height :]
        if best is None or width > best[0]:
            best = (width, height, pixels)
    assert best is not None, "the window has no icon"
    width, height, pixels = best
    image = Image.new("RGBA", (width, height))
    image.putdata([((p >> 16) & 255, (p >> 8) & 255, p & 255, (p >> 24) & 255) for p in pixels])
    return image
