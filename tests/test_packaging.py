"""What the build's spec files promise the frozen apps, read without building them.

A macOS bundle cannot be built here, so the client's spec is executed as
PyInstaller would execute it on a Mac (``sys.platform`` "darwin"), with
PyInstaller's build steps replaced by stubs that record what they are given.
Nothing of the process is patched: the spec gets its own ``__import__``.
"""

from __future__ import annotations

import builtins
import importlib.util
import plistlib
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SPEC = ROOT / "build" / "client.spec"


class _Step:
    """A PyInstaller build step (Analysis, EXE, BUNDLE, ...) that only records its call."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]], name: str) -> None:
        self._calls = calls
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> types.SimpleNamespace:
        self._calls.append((self._name, args, kwargs))
        return types.SimpleNamespace(datas=[], binaries=[], scripts=[], pure=[])


def _run_spec(spec: Path, platform: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Execute ``spec`` as on ``platform``; the build steps it called, in order."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    hooks = types.SimpleNamespace(
        collect_data_files=lambda *args, **kwargs: [], copy_metadata=lambda *args, **kwargs: []
    )
    fake_sys = types.SimpleNamespace(platform=platform)
    real_import = builtins.__import__

    def spec_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sys":
            return fake_sys
        if name == "PyInstaller.utils.hooks":
            return hooks  # what ``from PyInstaller.utils.hooks import ...`` reads
        return real_import(name, *args, **kwargs)

    namespace: dict[str, Any] = {
        "__builtins__": {**vars(builtins), "__import__": spec_import},
        "__file__": str(spec),
        "SPECPATH": str(spec.parent),
        **{step: _Step(calls, step) for step in ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE")},
    }
    exec(compile(spec.read_text(encoding="utf-8"), str(spec), "exec"), namespace)
    return calls


def test_macos_bundle_says_why_it_uses_the_local_network() -> None:
    # Since macOS 15 an app without NSLocalNetworkUsageDescription may be
    # silently kept from reaching LAN addresses (NOTES-discovery.md).
    bundles = [kwargs for name, _, kwargs in _run_spec(CLIENT_SPEC, "darwin") if name == "BUNDLE"]
    assert len(bundles) == 1, "the client's spec makes no macOS bundle"
    plist = bundles[0].get("info_plist")
    assert isinstance(plist, dict), "the macOS bundle has no info_plist"
    reason = plist.get("NSLocalNetworkUsageDescription")
    assert isinstance(reason, str), "Info.plist lacks NSLocalNetworkUsageDescription"
    # A sentence a person reads in macOS's question: words, ending with a full stop.
    assert len(reason.split()) >= 5 and reason.strip() == reason and reason.endswith("."), reason
    assert "network" in reason.lower(), reason
    # PyInstaller merges it into Info.plist with plistlib: it must serialise.
    assert plistlib.loads(plistlib.dumps(plist))["NSLocalNetworkUsageDescription"] == reason


def test_no_bundle_off_macos() -> None:
    for platform in ("linux", "win32"):
        names = [name for name, _, _ in _run_spec(CLIENT_SPEC, platform)]
        assert "COLLECT" in names and "BUNDLE" not in names, (platform, names)


def _build_script() -> types.ModuleType:
    """build/build.py as a module (the build folder is no package)."""
    spec = importlib.util.spec_from_file_location("build_script", ROOT / "build" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bundle(folder: Path, plist: dict[str, Any]) -> Path:
    app = folder / "LAN Chat.app"
    (app / "Contents").mkdir(parents=True)
    with (app / "Contents" / "Info.plist").open("wb") as file:
        plistlib.dump(plist, file)
    return app


def test_the_build_stops_for_a_bundle_without_the_local_network_sentence(tmp_path: Path) -> None:
    # build.py checks the bundle it built on the macOS release runners; here
    # the check itself, on bundles made by hand.
    check_bundle = _build_script().check_bundle
    with pytest.raises(SystemExit, match="NSLocalNetworkUsageDescription"):
        check_bundle(_bundle(tmp_path / "without", {"CFBundleName": "LAN Chat"}))
    with pytest.raises(SystemExit, match="NSLocalNetworkUsageDescription"):
        check_bundle(_bundle(tmp_path / "empty", {"NSLocalNetworkUsageDescription": " "}))
    (bundle,) = [kwargs for name, _, kwargs in _run_spec(CLIENT_SPEC, "darwin") if name == "BUNDLE"]
    check_bundle(
        _bundle(tmp_path / "as-specified", {"CFBundleName": "LAN Chat", **bundle["info_plist"]})
    )
