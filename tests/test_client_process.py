"""The real client process and the real window-close path."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import ImageGrab

import app.__main__ as client_main
from app.chat_app import ChatApp
from app.settings import Settings
from tests.trust_helpers import PlaintextAgreed, agree_to_plaintext
from tests.wire import RawClient

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "screenshots"


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM is POSIX")
def test_the_real_app_connects_shows_its_window_and_leaves_on_sigterm(
    start_server, tmp_path
) -> None:
    srv = start_server(motd="Hello from the test server")
    env = {**os.environ, "LAN_CHAT_CONFIG_DIR": str(tmp_path)}
    agree_to_plaintext(tmp_path, srv.port, srv.identity and srv.identity.fingerprint)
    args = ["--connect", "--host", "127.0.0.1", "--port", str(srv.port), "--name", "alice"]
    with RawClient(srv.port) as bob:
        bob.join("bob")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert bob.expect("joined", timeout=15)["name"] == "alice"
            bob.send({"type": "say", "text": "hi alice, this is the real window"})
            bob.expect("message")
            time.sleep(1.0)  # let it draw
            SHOTS.mkdir(exist_ok=True)
            shot = ImageGrab.grab(bbox=(0, 0, 920, 640))
            shot.save(SHOTS / "process-window.png")
            # Not a blank screen: a drawn window has many colours.
            assert len(shot.getcolors(maxcolors=100_000) or ()) > 20
            started = time.monotonic()
            proc.terminate()
            left = bob.expect("left", timeout=5)
            assert (left["name"], left["reason"]) == ("alice", "quit")
            assert proc.wait(timeout=5) == 0
            assert time.monotonic() - started < 1.0
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err
    assert (tmp_path / "settings.json").exists()


def test_closing_the_window_leaves_the_room(tk_root, start_server, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LAN_CHAT_CONFIG_DIR", str(tmp_path))
    srv = start_server()
    exits: list[bool] = []
    app = ChatApp(
        tk_root,
        Settings(host="127.0.0.1", port=srv.port, name="alice"),
        save_settings=lambda _s: None,
        known=PlaintextAgreed(),
        on_exit=lambda: exits.append(True),
    )
    try:
        with RawClient(srv.port) as bob:
            bob.join("bob")
            app.connect("127.0.0.1", srv.port, "alice")
            deadline = time.monotonic() + 5
            while not (app.client and app.client.joined) and time.monotonic() < deadline:
                tk_root.update()
                time.sleep(0.01)
            bob.expect("joined", name="alice")
            # What the window manager's close button runs:
            tk_root.tk.call(tk_root.protocol("WM_DELETE_WINDOW"))
            assert exits == [True]
            assert bob.expect("left")["reason"] == "quit"
    finally:
        app.close()


def test_client_smoke_test_builds_the_ui_offline(tmp_path) -> None:
    env = {**os.environ, "LAN_CHAT_CONFIG_DIR": str(tmp_path / "config")}
    result = subprocess.run(
        [sys.executable, "-m", "app", "--smoke-test"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("smoke test passed\n")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config").exists()  # the smoke test saves no settings


def test_the_smoke_tests_tls_round_trip_works_and_can_fail(monkeypatch) -> None:
    assert client_main.tls_round_trip() is None

    def tls_12_only() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    monkeypatch.setattr(client_main, "client_context", tls_12_only)
    failed = client_main.tls_round_trip()
    assert failed is not None and failed.startswith("TLS failed")
