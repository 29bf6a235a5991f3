"""The committed app icons exist in every format the builds need and match assets/make_icons.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SCRIPT = ASSETS / "make_icons.py"
ICO_SIZES = [16, 24, 32, 48, 64, 128, 256]


def _run_check(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rgba(path: Path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.copy()


@pytest.mark.parametrize(("name", "side"), [("icon.png", 512), ("icon-256.png", 256)])
def test_png(name: str, side: int) -> None:
    im = _rgba(ASSETS / name)
    assert im.size == (side, side)
    assert im.mode == "RGBA"
    last = side - 1
    for corner in [(0, 0), (last, 0), (0, last), (last, last)]:
        assert im.getpixel(corner)[3] == 0, f"corner {corner} is not transparent"
    assert im.getpixel((side // 2, side // 2))[3] == 255, "the middle is not opaque"
    colours = im.getcolors(maxcolors=side * side)
    assert colours is not None
    assert len(colours) > 500, f"only {len(colours)} colours: not a drawn icon"


def test_ico_holds_every_windows_size() -> None:
    with Image.open(ASSETS / "icon.ico") as im:
        assert im.format == "ICO"
        assert sorted(w for w, _ in im.ico.sizes()) == ICO_SIZES
        for side in ICO_SIZES:
            frame = im.ico.getimage((side, side))
            assert frame.size == (side, side)
            assert frame.mode == "RGBA"


def test_icns_opens_with_big_sizes() -> None:
    with Image.open(ASSETS / "icon.icns") as im:
        assert im.format == "ICNS"
        sides = {w * scale for w, _, scale in im.info["sizes"]}
        assert {32, 128, 256, 512} <= sides
        im.load()
        assert im.mode == "RGBA"
        assert im.width >= 512


def test_16px_frame_is_legible() -> None:
    """At 16 px the icon still shows a blue bubble, a teal bubble and white dots."""
    with Image.open(ASSETS / "icon.ico") as im:
        frame = im.ico.getimage((16, 16)).convert("RGBA")
    pixels = [frame.getpixel((x, y)) for y in range(16) for x in range(16)]
    blue = [p for p in pixels if p[2] > 200 and p[0] < 90 and p[1] < 160]
    teal = [p for p in pixels if p[1] > 170 and p[0] < 110 and p[2] < 190]
    white = [p for p in pixels if min(p[:3]) > 215]
    assert len(blue) >= 20, "no blue bubble"
    assert len(teal) >= 25, "no teal bubble"
    assert len(white) >= 6, "no white dots"


def test_committed_icons_match_the_script() -> None:
    result = _run_check(SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_notices_an_edited_icon(tmp_path: Path) -> None:
    for path in [SCRIPT, *ASSETS.glob("icon*")]:
        shutil.copy2(path, tmp_path / path.name)
    edited = _rgba(tmp_path / "icon.png")
    ImageDraw.Draw(edited).ellipse((200, 200, 320, 320), fill=(255, 0, 0, 255))
    edited.save(tmp_path / "icon.png")
    result = _run_check(tmp_path / SCRIPT.name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "icon.png" in result.stderr


def test_check_notices_a_missing_icon(tmp_path: Path) -> None:
    for path in [SCRIPT, *ASSETS.glob("icon*")]:
        shutil.copy2(path, tmp_path / path.name)
    (tmp_path / "icon.icns").unlink()
    result = _run_check(tmp_path / SCRIPT.name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "icon.icns: missing" in result.stderr
