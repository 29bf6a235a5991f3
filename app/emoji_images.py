"""Emoji as small colour pictures in the transcript.

Why pictures: Tk 8.6 draws text through Xft on X11, which cannot draw a
colour-emoji font (a bitmap one can even crash it), Tk on Windows draws
emoji in black and white, and Tk before 8.6.10 refuses characters past
U+FFFF. So the client carries one freely licensed colour font, OpenMoji's
COLRv0 build (``assets/emoji/``), and Pillow draws each emoji sequence from
it into a Tk photo image one line of text high.

How it works: ``runs`` cuts a text into plain runs and emoji sequences (the
``emoji`` package knows the sequences: skin tones, ZWJ families, flags,
keycaps). ``EmojiText`` appends a line to a Text widget, each sequence as
an embedded image carrying its run's tags (so a highlight spans it), and
reads a range back with the sequences in place of their pictures, for
``transcript_text`` and for copying: each picture is named after its
sequence. Each sequence has one Tk image, drawn on first use; a font size
change draws every kept image again in place, so those shown follow it.

What bounds the cost: Tk looks through every embedded image of a Text each
time it adds one, so only the newest ``MAX_PICTURES`` pictures stay
pictures; older ones turn back into their characters. As the pictures are
added in the order the images are used, an LRU of as many images keeps
every image still shown. A line gets ``PICTURES_PER_LINE`` at most, as
drawing a new one takes a fraction of a millisecond. A sequence with a
character the font lacks stays text.
"""

from __future__ import annotations

import re
import tkinter
from collections import OrderedDict, deque
from collections.abc import Iterable

import emoji
from PIL import Image, ImageDraw, ImageFont, ImageTk, features

from app.paths import asset
from app.text import displayable

FONT = asset("emoji/OpenMoji-color-glyf_colr0.ttf")
# Pictures in the transcript at most, and so Tk images kept (a server can
# send thousands of distinct sequences): Tk looks through every picture in
# a Text widget each time it adds one, so more would slow each message.
MAX_PICTURES = 500
PICTURES_PER_LINE = 64  # the rest of a line's emoji stay text: drawing one takes ~0.3 ms
EMBED_PREFIX = "emoji:"  # of an embedded image's name: the sequence's code points follow
# The font's ink fills about 94% of its size (measured on OpenMoji 17):
# this makes a picture's ink about as tall as the line it sits on.
INK_SHARE = 0.94
# Without libraqm, Pillow lays out one code point at a time: single emoji
# still draw, ZWJ sequences and flags come out as their parts side by side.
LAYOUT = ImageFont.Layout.RAQM if features.check_feature("raqm") else ImageFont.Layout.BASIC
_UNQUALIFIED = emoji.STATUS["unqualified"]


def _class_of(code_points: Iterable[int]) -> str:
    """A regex character class matching exactly ``code_points``, as ranges."""
    ranges: list[str] = []
    ordered = sorted(set(code_points))
    start = previous = ordered[0]
    for point in [*ordered[1:], -1]:
        if point != previous + 1:
            ranges.append(
                re.escape(chr(start)) + ("-" + re.escape(chr(previous))) * (start != previous)
            )
            start = point
        previous = point
    return "[" + "".join(ranges) + "]"


# Every emoji sequence holds a character past ASCII that some sequence holds
# (a keycap's is U+20E3): text without one, most text, skips the slower
# tokenizer of the ``emoji`` package; ASCII text skips even this search.
_MAYBE_EMOJI = re.compile(
    _class_of(ord(char) for sequence in emoji.EMOJI_DATA for char in sequence if char > "~")
)


def runs(text: str) -> list[tuple[str, bool]]:
    """``text`` cut into (run, is_emoji) pieces, in order; an emoji run is one sequence.

    A lone symbol that defaults to text presentation (``©``, ``™``, ``❤``
    without U+FE0F) stays text, as people's fonts draw it and as it was meant.
    """
    if text.isascii() or not _MAYBE_EMOJI.search(text):
        return [(text, False)]
    pieces: list[tuple[str, bool]] = []
    position = 0
    for found in emoji.emoji_list(text):
        sequence: str = found["emoji"]
        if len(sequence) == 1 and emoji.EMOJI_DATA[sequence]["status"] == _UNQUALIFIED:
            continue
        start: int = found["match_start"]
        if start > position:
            pieces.append((text[position:start], False))
        pieces.append((sequence, True))
        position = found["match_end"]
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces


def embed_name(sequence: str) -> str:
    """The name of embedded images showing ``sequence``; a ``/`` or ``#`` may follow it."""
    return EMBED_PREFIX + "-".join(f"{ord(char):x}" for char in sequence)


def sequence_of(name: str) -> str | None:
    """The sequence an embedded image shows, from its name; None if it shows none."""
    if not name.startswith(EMBED_PREFIX):
        return None
    points = re.split("[/#]", name.removeprefix(EMBED_PREFIX), maxsplit=1)[0].split("-")
    return "".join(chr(int(point, 16)) for point in points)


class Drawing:
    """Draws emoji sequences from the bundled font, as RGBA pictures. No Tk needed."""

    def __init__(self) -> None:
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}  # the size in use only
        self._probe = ImageFont.truetype(FONT, 24, layout_engine=ImageFont.Layout.BASIC)
        # What the font draws for a character it lacks (its .notdef box).
        self._missing_mask = self._mask("\U0010fffd")
        self._has: dict[str, bool] = {}  # per character; only emoji characters come here

    def _font(self, size: int) -> ImageFont.FreeTypeFont:
        font = self._fonts.get(size)
        if font is None:
            self._fonts = {size: ImageFont.truetype(FONT, size, layout_engine=LAYOUT)}
            font = self._fonts[size]
        return font

    def _mask(self, char: str) -> bytes:
        picture = Image.new("L", (48, 48))
        ImageDraw.Draw(picture).text((0, 0), char, font=self._probe, fill=255)
        return picture.tobytes()

    def has(self, sequence: str) -> bool:
        """Whether the font has every character of ``sequence``."""
        for char in sequence:
            known = self._has.get(char)
            if known is None:
                known = self._has[char] = self._mask(char) != self._missing_mask
            if not known:
                return False
        return True

    def draw(self, sequence: str, height: int) -> Image.Image | None:
        """``sequence`` in colour, ``height`` pixels high, cropped to its ink across;
        None if the font lacks a character of it or draws nothing."""
        if height < 1 or not self.has(sequence):
            return None
        font = self._font(max(1, round(height / INK_SHARE)))
        width = max(1, int(font.getlength(sequence)) + 2)
        picture = Image.new("RGBA", (width, height))
        # "lm": the middle between ascender and descender, where the ink's centre is.
        ImageDraw.Draw(picture).text(
            (1, height / 2), sequence, font=font, anchor="lm", embedded_color=True
        )
        ink = picture.getbbox()
        if ink is None:
            return None
        left, _top, right, _bottom = ink
        return picture.crop((max(0, left - 1), 0, min(width, right + 1), height))


class EmojiText:
    """Emoji pictures in one Text widget: insertion, reading back, copying. Tk thread only."""

    def __init__(self, text: tkinter.Text, height: int, *, astral_ok: bool) -> None:
        self.text = text
        self.height = height
        # Tk before 8.6.10 cannot hold characters past U+FFFF, nor put them on
        # the clipboard: there what is copied keeps U+FFFD, as the text shows.
        self._astral_ok = astral_ok
        self._drawing = Drawing()
        # sequence -> its Tk image, least recently shown first.
        self._images: OrderedDict[str, ImageTk.PhotoImage] = OrderedDict()
        # (embedded name, sequence) of the pictures put in, oldest first.
        self._shown: deque[tuple[str, str]] = deque()
        self._count = 0  # pictures ever put in: each gets a name of its own
        text.bind("<<Copy>>", self._copy)

    def __len__(self) -> int:
        """How many Tk images are kept."""
        return len(self._images)

    def image(self, sequence: str) -> ImageTk.PhotoImage | None:
        """The one Tk image of ``sequence`` at the current height; None to show it as text."""
        image = self._images.get(sequence)
        if image is not None:
            self._images.move_to_end(sequence)
            return image
        picture = self._drawing.draw(sequence, self.height)
        if picture is None:
            return None  # not kept: Drawing remembers what the font lacks
        image = self._images[sequence] = ImageTk.PhotoImage(picture, master=self.text)
        if len(self._images) > MAX_PICTURES:
            # Shown MAX_PICTURES pictures ago at best: already turned back into text.
            self._images.popitem(last=False)
        return image

    def insert_line(self, parts: Iterable[tuple[str, tuple[str, ...]]], at: str = "end") -> None:
        """Put in the (piece, tags) parts of one line at ``at`` (the end, or a mark
        of right gravity): emoji as pictures, the rest as text."""
        text = self.text
        budget = PICTURES_PER_LINE
        for piece, tags in parts:
            for run, is_emoji in runs(piece):
                image = self.image(run) if is_emoji and budget > 0 else None
                if image is None:
                    text.insert(at, displayable(run, astral_ok=self._astral_ok), tags)
                    continue
                budget -= 1
                self._count += 1
                name = f"{embed_name(run)}/{self._count}"
                text.image_create(at, image=image, name=name)
                for tag in tags:  # an image takes tags one at a time, by its name as index
                    text.tag_add(tag, name)
                self._shown.append((name, run))
        while len(self._shown) > MAX_PICTURES:
            self._to_text(*self._shown.popleft())

    def _to_text(self, name: str, sequence: str) -> None:
        """Turn an old picture back into its characters, with its tags."""
        try:
            index = self.text.index(name)
        except tkinter.TclError:
            return  # gone with old lines
        tags = self.text.tag_names(index)
        self.text.delete(index)
        self.text.insert(index, displayable(sequence, astral_ok=self._astral_ok), tags)

    def get(self, start: str, end: str) -> str:
        """The characters between two indexes, each picture as its sequence."""
        pieces: list[str] = []
        for kind, value, _index in self.text.dump(start, end, text=True, image=True):
            if kind == "text":
                pieces.append(value)
            else:
                pieces.append(sequence_of(value) or "")
        return "".join(pieces)

    def resize(self, height: int) -> None:
        """Draw every kept picture again at ``height``, in place: those shown follow."""
        self.height = height
        for sequence, image in self._images.items():
            picture = self._drawing.draw(sequence, height)
            if picture is not None:
                # The Tk image takes the new size; pasting fills all of it.
                size = ("-width", picture.width, "-height", picture.height)
                self.text.tk.call(str(image), "configure", *size)
                image.paste(picture)

    def _copy(self, _event: tkinter.Event) -> str:
        """Ctrl+C and the like: the selection as characters, emoji included."""
        ranges = self.text.tag_ranges("sel")
        if ranges:
            chosen = self.get(str(ranges[0]), str(ranges[1]))
            self.text.clipboard_clear()
            self.text.clipboard_append(displayable(chosen, astral_ok=self._astral_ok))
        return "break"
