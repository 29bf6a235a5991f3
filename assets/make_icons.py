"""Draw the LAN Chat application icon from code and write every file the builds need.

Why this exists: the icon is drawn here with Pillow shapes only (no stock image, no font),
so it has no licence question, it can be regenerated on any machine, and each size is drawn
for its own pixel grid instead of being squashed from one big bitmap. The outputs are
committed next to this script:

- ``icon.png`` (512 px) and ``icon-256.png``: the window icon (``iconphoto``) and Linux;
- ``icon.ico``: Windows (PyInstaller ``--icon``), 16 to 256 px in one file;
- ``icon.icns``: the macOS app bundle, 32 to 1024 px (what Pillow's ICNS writer stores).

Design: a dark navy rounded square holding two overlapping speech bubbles, a blue one
behind (upper left, tail down-left) and a teal one in front (lower right, tail
down-right), cut apart by a thin gap of background. The front bubble holds three white
nodes joined by a line: a chat "typing" hint that doubles as a tiny LAN (up to 48 px the
line is left out and the shapes are fatter, and at 16 px they sit on the pixel grid, so the
dots stay separate dots).

Usage::

    python assets/make_icons.py           # regenerate all files
    python assets/make_icons.py --check   # exit 1 if the committed files differ in pixels

``--check`` allows a small per-pixel tolerance so that a Pillow upgrade that nudges
anti-aliasing by a few levels does not fail it, while any change to the design does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageStat

HERE = Path(__file__).resolve().parent

SUPERSAMPLE = 4
"""Each size is drawn this many times larger, then reduced with LANCZOS."""

ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = (32, 64, 128, 256, 512, 1024)

# Colours (RGB). Blue and teal are Bootstrap's primary and teal, the theme the app uses.
BG_TOP = (0x24, 0x33, 0x52)
BG_BOTTOM = (0x10, 0x18, 0x2B)
BLUE_TOP = (0x3D, 0x8B, 0xFD)
BLUE_BOTTOM = (0x0D, 0x6E, 0xFD)
TEAL_TOP = (0x3D, 0xDC, 0xAE)
TEAL_BOTTOM = (0x1A, 0xB3, 0x86)
WHITE = (0xFF, 0xFF, 0xFF)

# --check tolerance: no channel may differ by more than MAX_DIFF, and the mean
# difference over all channels must stay under MAX_MEAN_DIFF.
MAX_DIFF = 24
MAX_MEAN_DIFF = 0.5

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class Bubble:
    """A speech bubble in unit coordinates (0..1 of the icon side)."""

    box: Box
    radius: float
    tail_left: bool
    """True: the tail leaves the bottom left corner pointing down-left; else bottom right."""
    tail: float = 0.75
    """How far the tail tip reaches below the bottom edge, in bubble radii."""
    tail_out: float = 0.15
    """How far the tail tip reaches outside the side edge, in bubble radii (< 0: inside)."""


@dataclass(frozen=True)
class Layout:
    """Every shape of the icon, in unit coordinates, tuned for one pixel size."""

    margin: float
    corner: float
    back: Bubble
    front: Bubble
    gap: float
    dots: tuple[Point, ...]
    dot_radius: float
    link_width: float


def layout_for(size: int) -> Layout:
    """Return the shapes for an icon of ``size`` pixels.

    Big icons get a margin (macOS and Linux docks expect one) and finer detail; tiny ones
    fill the square and use fewer, fatter shapes so they still read at 16 px.
    """
    if size < 24:
        # Grid-fitted for 16 px: the numbers are pixels, so the dots land on whole pixels.
        def box(x0: float, y0: float, x1: float, y1: float) -> Box:
            return (x0 / 16, y0 / 16, x1 / 16, y1 / 16)

        def point(x: float, y: float) -> Point:
            return (x / 16, y / 16)

        return Layout(
            margin=0.0,
            corner=0.22,
            back=Bubble(box(1, 1, 11, 9), 3 / 16, True, tail=0.8, tail_out=0.0),
            front=Bubble(box(4, 6, 14, 12), 2.5 / 16, False, tail=0.8, tail_out=-0.2),
            gap=1 / 16,
            dots=(point(6, 9), point(9, 9), point(12, 9)),
            dot_radius=1.2 / 16,
            link_width=0.0,
        )
    if size <= 48:
        return Layout(
            margin=0.0,
            corner=0.22,
            back=Bubble((0.08, 0.09, 0.68, 0.56), 0.15, True, tail=0.6, tail_out=0.0),
            front=Bubble((0.30, 0.40, 0.92, 0.80), 0.15, False, tail=0.6, tail_out=-0.1),
            gap=0.055,
            dots=((0.43, 0.61), (0.61, 0.61), (0.79, 0.61)),
            dot_radius=0.06,
            link_width=0.0,
        )
    return Layout(
        margin=0.06,
        corner=0.225,
        back=Bubble((0.16, 0.18, 0.68, 0.56), 0.12, True, tail=0.55, tail_out=0.0),
        front=Bubble((0.32, 0.41, 0.84, 0.78), 0.12, False, tail=0.55, tail_out=0.0),
        gap=0.03,
        dots=((0.445, 0.60), (0.585, 0.60), (0.725, 0.60)),
        dot_radius=0.038,
        link_width=0.018,
    )


def _gradient(side: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """A ``side`` x ``side`` RGBA image fading from ``top`` to ``bottom``."""
    ramp = Image.linear_gradient("L").resize((side, side), Image.Resampling.BILINEAR)
    return Image.composite(
        Image.new("RGBA", (side, side), (*bottom, 255)),
        Image.new("RGBA", (side, side), (*top, 255)),
        ramp,
    )


def _bubble_mask(side: int, bubble: Bubble, grow: float = 0.0) -> Image.Image:
    """An L mask of ``bubble`` on a ``side`` canvas, enlarged by ``grow`` units all round.

    The tail is a triangle leaving the bottom edge near one corner and pointing outwards.
    """
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = (v * side for v in bubble.box)
    g = grow * side
    r = bubble.radius * side
    draw.rounded_rectangle((x0 - g, y0 - g, x1 + g, y1 + g), radius=r + g, fill=255)
    left = bubble.tail_left
    inner_x = x0 + r * 1.6 if left else x1 - r * 1.6
    outer_x = x0 + r * 0.2 if left else x1 - r * 0.2
    tip_x = x0 - r * bubble.tail_out if left else x1 + r * bubble.tail_out
    polygon = [(inner_x, y1 - r), (outer_x, y1 - r), (tip_x, y1 + r * bubble.tail)]
    draw.polygon(polygon, fill=255)
    if g > 0:
        draw.line([*polygon, polygon[0]], fill=255, width=round(2 * g), joint="curve")
        for px, py in polygon:
            draw.ellipse((px - g, py - g, px + g, py + g), fill=255)
    return mask


def draw_icon(size: int) -> Image.Image:
    """Return the icon as a ``size`` x ``size`` RGBA image (same pixels on every call).

    It is drawn ``SUPERSAMPLE`` times larger, then reduced with LANCZOS for smooth edges.
    """
    lay = layout_for(size)
    side = size * SUPERSAMPLE
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))

    # Background: a rounded square.
    bg_mask = Image.new("L", (side, side), 0)
    m = lay.margin * side
    inner = side - 2 * m
    ImageDraw.Draw(bg_mask).rounded_rectangle(
        (m, m, side - m - 1, side - m - 1), radius=lay.corner * inner, fill=255
    )
    canvas.paste(_gradient(side, BG_TOP, BG_BOTTOM), (0, 0), bg_mask)

    # Back bubble, with a gap of background around the front bubble cut out of it.
    back_mask = _bubble_mask(side, lay.back)
    back_mask = ImageChops.subtract(back_mask, _bubble_mask(side, lay.front, grow=lay.gap))
    canvas.paste(_gradient(side, BLUE_TOP, BLUE_BOTTOM), (0, 0), back_mask)

    # Front bubble.
    canvas.paste(_gradient(side, TEAL_TOP, TEAL_BOTTOM), (0, 0), _bubble_mask(side, lay.front))

    # Network nodes, joined by a line.
    draw = ImageDraw.Draw(canvas)
    centres = [(x * side, y * side) for x, y in lay.dots]
    if lay.link_width > 0:
        draw.line(centres, fill=(*WHITE, 255), width=round(lay.link_width * side))
    r = lay.dot_radius * side
    for cx, cy in centres:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*WHITE, 255))

    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _outputs() -> dict[str, Callable[[Path], None]]:
    """File name -> function writing that file."""

    def png(size: int) -> Callable[[Path], None]:
        return lambda path: draw_icon(size).save(path, "PNG", optimize=False)

    def ico(path: Path) -> None:
        images = [draw_icon(s) for s in ICO_SIZES]
        images[-1].save(path, "ICO", sizes=[(s, s) for s in ICO_SIZES], append_images=images[:-1])

    def icns(path: Path) -> None:
        images = [draw_icon(s) for s in ICNS_SIZES]
        images[-1].save(path, "ICNS", append_images=images[:-1])

    return {"icon.png": png(512), "icon-256.png": png(256), "icon.ico": ico, "icon.icns": icns}


def write_all(folder: Path = HERE) -> list[Path]:
    """Draw and write every icon file into ``folder``; return the paths written."""
    written = []
    for name, write in _outputs().items():
        path = folder / name
        write(path)
        written.append(path)
    return written


def frames_in(path: Path) -> dict[int, Image.Image]:
    """Every square frame stored in an icon file, by side in pixels, as RGBA."""
    with Image.open(path) as im:
        if im.format == "ICO":
            return {w: im.ico.getimage((w, h)).convert("RGBA") for w, h in im.ico.sizes()}
        if im.format == "ICNS":
            frames = {}
            for w, h, scale in im.icns.itersizes():
                frame = im.icns.getimage((w, h, scale)).convert("RGBA")
                frames[frame.width] = frame
            return frames
        im.load()
        return {im.width: im.convert("RGBA")}


def expected_frames(name: str) -> dict[int, Image.Image]:
    """The frames ``name`` should hold, freshly drawn."""
    sizes: Sequence[int] = {
        "icon.png": (512,),
        "icon-256.png": (256,),
        "icon.ico": ICO_SIZES,
        "icon.icns": ICNS_SIZES,
    }[name]
    return {s: draw_icon(s) for s in sizes}


def _difference(a: Image.Image, b: Image.Image) -> tuple[int, float]:
    """(largest channel difference, mean channel difference) between two RGBA images."""
    diff = ImageChops.difference(a, b)
    largest = max(high for _, high in diff.getextrema())
    mean = sum(ImageStat.Stat(diff).mean) / 4
    return largest, mean


def check(folder: Path = HERE) -> list[str]:
    """Compare the files in ``folder`` with what this script draws; return the problems."""
    problems = []
    for name in _outputs():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        try:
            actual = frames_in(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: unreadable ({exc})")
            continue
        expected = expected_frames(name)
        if sorted(actual) != sorted(expected):
            problems.append(f"{name}: sizes {sorted(actual)}, expected {sorted(expected)}")
            continue
        for size, want in expected.items():
            largest, mean = _difference(actual[size], want)
            if largest > MAX_DIFF or mean > MAX_MEAN_DIFF:
                problems.append(f"{name}: {size}px frame differs (max {largest}, mean {mean:.3f})")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed files differ from the drawing",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("icons are stale: run python assets/make_icons.py", file=sys.stderr)
            return 1
        print("icons match the drawing")
        return 0
    for path in write_all():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
