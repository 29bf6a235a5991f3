"""Build the frozen server and client and the archives a release ships.

    python build/build.py               # both binaries, archives, SHA256SUMS
    python build/build.py --smoke-test  # ... then run each frozen binary's --smoke-test

PyInstaller works in ``pyinstaller-work/`` and writes to ``pyinstaller-dist/``
(both ignored by git): its default work folder is ``./build``, which is this
tracked folder. Archives go to ``dist-release/``: ``tar.gz`` on Linux (it
keeps the run bit), ``zip`` elsewhere, named with the version from
pyproject.toml, the OS and the architecture.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import plistlib
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "pyinstaller-work"
DIST = ROOT / "pyinstaller-dist"
RELEASE = ROOT / "dist-release"
SPECS = {"server": ROOT / "build" / "server.spec", "client": ROOT / "build" / "client.spec"}
MAC_BUNDLE = DIST / "LAN Chat.app"
# What the macOS bundle's Info.plist must hold (build/client.spec's info_plist):
# since macOS 15 an app that does not say why it uses the local network may be
# silently kept from LAN addresses.
REQUIRED_PLIST_KEYS = ("NSLocalNetworkUsageDescription",)


def version() -> str:
    """The one version, as pyproject.toml states it."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["project"]["version"]


def target() -> str:
    """``linux-x86_64``, ``windows-x86_64``, ``macos-arm64``..."""
    system = {"Darwin": "macos", "Windows": "windows"}.get(platform.system(), "linux")
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
    return f"{system}-{machine}"


def frozen_programs() -> dict[str, Path]:
    """Where the frozen executables are, by program."""
    suffix = ".exe" if sys.platform == "win32" else ""
    client = DIST / "lan-chat" / f"lan-chat{suffix}"
    if sys.platform == "darwin":
        client = MAC_BUNDLE / "Contents" / "MacOS" / "lan-chat"
    return {"server": DIST / "lan-chat-server" / f"chat-server{suffix}", "client": client}


def build(program: str) -> float:
    """Run PyInstaller on one spec; returns the seconds it took."""
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--workpath",
            str(WORK / program),
            "--distpath",
            str(DIST),
            str(SPECS[program]),
        ],
        cwd=ROOT,
        check=True,
    )
    return time.monotonic() - started


def archive(program: str) -> Path:
    """Pack one program's folder (or macOS bundle) for release."""
    folder = {"server": DIST / "lan-chat-server", "client": DIST / "lan-chat"}[program]
    if program == "client" and sys.platform == "darwin":
        folder = MAC_BUNDLE
    stem = f"lan-chat-{program}-{version()}-{target()}"
    RELEASE.mkdir(exist_ok=True)
    if sys.platform.startswith("linux"):
        path = RELEASE / f"{stem}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        return path
    path = RELEASE / f"{stem}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive_file:
        for file in sorted(folder.rglob("*")):
            archive_file.write(file, Path(folder.name) / file.relative_to(folder))
    return path


def check_bundle(app: Path) -> None:
    """Stop the build unless the bundle's Info.plist gives every required key a text."""
    with (app / "Contents" / "Info.plist").open("rb") as file:
        plist = plistlib.load(file)
    missing = [
        key
        for key in REQUIRED_PLIST_KEYS
        if not isinstance(plist.get(key), str) or not plist[key].strip()
    ]
    if missing:
        raise SystemExit(f"{app.name}: its Info.plist lacks {', '.join(missing)}")


def write_checksums(paths: list[Path]) -> Path:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths]
    checksums = RELEASE / "SHA256SUMS"
    checksums.write_text("".join(lines), encoding="utf-8")
    return checksums


def smoke_test(program: str) -> None:
    """Run the frozen program's own --smoke-test (the client under Xvfb on a headless Linux)."""
    command = [str(frozen_programs()[program]), "--smoke-test"]
    if program == "client" and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        command = ["xvfb-run", "-a", *command]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    print(result.stdout.strip() or result.stderr.strip())
    if result.returncode != 0:
        raise SystemExit(f"{program} smoke test failed ({result.returncode}): {result.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the frozen server and client.")
    parser.add_argument("--smoke-test", action="store_true", help="then run each --smoke-test")
    args = parser.parse_args()
    shutil.rmtree(RELEASE, ignore_errors=True)
    archives = []
    for program in SPECS:
        seconds = build(program)
        if program == "client" and sys.platform == "darwin":
            check_bundle(MAC_BUNDLE)
        path = archive(program)
        archives.append(path)
        print(
            f"{program}: built in {seconds:.1f} s, {path.name} {path.stat().st_size / 1e6:.1f} MB"
        )
    print(f"checksums: {write_checksums(archives)}")
    if args.smoke_test:
        for program in SPECS:
            smoke_test(program)


if __name__ == "__main__":
    main()
