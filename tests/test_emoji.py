"""app/emoji_images.py without a display: finding emoji in text, naming their
pictures, drawing them from the bundled font."""

from __future__ import annotations

import colorsys

import emoji
import pytest
from PIL import Image, ImageFont, features

from app import emoji_images
from app.emoji_images import Drawing, embed_name, runs, sequence_of

WAVE, PARTY, SMILE = "\N{WAVING HAND SIGN}", "\N{PARTY POPPER}", "\N{SLIGHTLY SMILING FACE}"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man, ZWJ, woman, ZWJ, girl
THUMB_MEDIUM = "\U0001f44d\U0001f3fd"  # thumbs up, medium skin tone
FRANCE = "\U0001f1eb\U0001f1f7"  # two regional indicators


@pytest.fixture(scope="module")
def drawing() -> Drawing:
    return Drawing()


def colourful(picture: Image.Image) -> int:
    """How many clearly coloured (saturated, opaque) pixels ``picture`` has."""
    data = picture.convert("RGBA").tobytes()
    count = 0
    for at in range(0, len(data), 4):
        red, green, blue, alpha = data[at : at + 4]
        _h, lightness, saturation = colorsys.rgb_to_hls(red / 255, green / 255, blue / 255)
        if alpha > 200 and saturation > 0.3 and 0.2 < lightness < 0.9:
            count += 1
    return count


def test_runs_cut_text_into_plain_runs_and_whole_sequences() -> None:
    text = f"hi {WAVE}{PARTY} {FAMILY} and {THUMB_MEDIUM} from {FRANCE}!"
    assert runs(text) == [
        ("hi ", False),
        (WAVE, True),
        (PARTY, True),
        (" ", False),
        (FAMILY, True),
        (" and ", False),
        (THUMB_MEDIUM, True),
        (" from ", False),
        (FRANCE, True),
        ("!", False),
    ]
    assert "".join(run for run, _ in runs(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "plain words 123 #1 *",
        "caf\u00e9 \u4f60\u597d \u05e9\u05dc\u05d5\u05dd",
        "\u00a9 2026, \u2122",
    ],
)
def test_text_without_emoji_is_one_plain_run(text: str) -> None:
    """Digits, ``#``, ``*`` (keycap bases) and symbols that default to text stay text."""
    assert runs(text) == [(text, False)]


def test_a_symbol_asking_for_emoji_presentation_is_an_emoji() -> None:
    heart, keycap = "\u2764\ufe0f", "#\ufe0f\u20e3"
    assert runs(f"\u2764 {heart} {keycap}") == [
        ("\u2764 ", False),
        (heart, True),
        (" ", False),
        (keycap, True),
    ]


@pytest.mark.parametrize("sequence", [WAVE, FAMILY, THUMB_MEDIUM, FRANCE, "#\ufe0f\u20e3"])
def test_an_embedded_name_gives_its_sequence_back(sequence: str) -> None:
    name = embed_name(sequence)
    assert " " not in name
    assert sequence_of(name) == sequence
    assert sequence_of(f"{name}#12") == sequence  # Tk's suffix for a repeat
    assert sequence_of("pyimage3") is None


@pytest.mark.parametrize("sequence", [WAVE, PARTY, SMILE, FAMILY, THUMB_MEDIUM, FRANCE])
@pytest.mark.parametrize("height", [12, 17, 40])
def test_emoji_are_drawn_in_colour_one_line_high(
    drawing: Drawing, sequence: str, height: int
) -> None:
    picture = drawing.draw(sequence, height)
    assert picture is not None
    assert picture.mode == "RGBA"
    assert picture.height == height
    if features.check_feature("raqm"):  # without it ZWJ parts stand side by side
        assert height * 0.6 <= picture.width <= height * 1.6  # one picture, not its parts
    assert colourful(picture) >= height  # colour, not a black-and-white outline


def test_sequences_are_laid_out_by_raqm_where_pillow_has_it() -> None:
    """Only libraqm joins a ZWJ family or a flag into one picture."""
    expected = ImageFont.Layout.RAQM if features.check_feature("raqm") else ImageFont.Layout.BASIC
    assert emoji_images.LAYOUT is expected


def test_a_sequence_the_font_lacks_is_not_drawn(drawing: Drawing) -> None:
    lacking = [each for each in emoji.EMOJI_DATA if not drawing.has(each)]
    # OpenMoji 17 predates Emoji 18, which the emoji package knows.
    assert lacking
    assert len(lacking) < len(emoji.EMOJI_DATA) // 20
    assert drawing.draw(lacking[0], 17) is None
    assert drawing.draw("A", 17) is None  # the font's box for what it lacks is no emoji
    assert drawing.has(WAVE)


def test_the_font_is_bundled_with_its_licence() -> None:
    folder = emoji_images.FONT.parent
    assert emoji_images.FONT.is_file()
    assert "Attribution-ShareAlike 4.0" in (folder / "LICENSE").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in (folder / "README.md").read_text(encoding="utf-8")
