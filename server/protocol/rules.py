"""The rules for names and message text (PROTOCOL.md "Names", "Chatting").

Every input from the wire is measured before work whose cost grows faster
than its length (``MAX_NAME_INPUT``), and an error message or a log line
shows it only through ``show_wire``. A broken rule raises
``RuleViolation``, which says what is wrong and blames nobody.
"""

from __future__ import annotations

import re
import unicodedata

from server.protocol.errors import ErrorCode, RuleViolation

MAX_NAME_LENGTH = 32
MAX_TEXT_LENGTH = 4000

# Normalising a long run of combining marks costs time quadratic in its
# length (CPython sorts them by insertion), so a name or `to` is measured
# before it is normalised. No code point's canonical decomposition is
# longer than 4 code points (U+1F82 is one of 4), and every spelling of a
# name decomposes to that name's decomposition, never shorter than the
# spelling; so every canonically equivalent spelling of a valid name,
# fully decomposed included, is at most 4 * 32 code points. Longer input
# is refused as a name, and as a `to` it names nobody (a compatibility
# spelling, such as U+FDFA written out as its 18 letters, could be longer,
# but clients address people by the name the server gave them).
MAX_NAME_INPUT = 4 * MAX_NAME_LENGTH

# The longest `type` an error's `in_reply_to` repeats (every type there is
# or will be is far shorter), and how much of any other wire string an
# error message or a log line shows (see ``show_wire``).
MAX_ECHOED_TYPE = 64
SHOWN_LENGTH = 40


NAME_PUNCTUATION = frozenset("_-.")

# Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt,
# the same list in Unicode 14.0 to 15.1), which
# Python's unicodedata does not offer: code points that render as nothing
# (fillers, variation selectors, joiners, tags), so that a name holding one
# would look like another name or like no name at all. Inclusive ranges.
DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, direction marks
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, isolates, deprecated formats
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors 1 to 16
    (0xFEFF, 0xFEFF),  # zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # unassigned, reserved as ignorable
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol beam and phrase controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors 17 to 256, reserved
)
_DEFAULT_IGNORABLE = re.compile(
    "[" + "".join(f"{chr(first)}-{chr(last)}" for first, last in DEFAULT_IGNORABLE_RANGES) + "]"
)


def _name_invalid(message: str) -> RuleViolation:
    return RuleViolation(ErrorCode.NAME_INVALID, message)


def normalize_name(name: str) -> str:
    """Return ``name`` in the form the server keeps (NFC), or raise.

    Raises ``RuleViolation`` with code ``name-invalid`` and a reason
    written for people when the name breaks the rules of PROTOCOL.md.
    """
    too_long = f"A name can be at most {MAX_NAME_LENGTH} characters long."
    if len(name) > MAX_NAME_INPUT:
        raise _name_invalid(too_long)  # before normalising it: see MAX_NAME_INPUT
    nfc = unicodedata.normalize("NFC", name)
    if not nfc:
        raise _name_invalid("A name cannot be empty.")
    if len(nfc) > MAX_NAME_LENGTH:
        raise _name_invalid(too_long)
    invisible = _DEFAULT_IGNORABLE.search(nfc)
    if invisible is not None:
        raise _name_invalid(
            f"A name cannot hold invisible characters (U+{ord(invisible.group()):04X})."
        )
    if unicodedata.category(nfc[0]).startswith("M"):
        raise _name_invalid("A name cannot start with a combining mark.")
    has_letter_or_digit = False
    for char in nfc:
        category = unicodedata.category(char)[0]
        if category not in "LMN" and char not in NAME_PUNCTUATION:
            shown = "a space" if char == " " else repr(char)
            raise _name_invalid(f"A name can only hold letters, digits and _ - . (not {shown}).")
        has_letter_or_digit = has_letter_or_digit or category in "LN"
    if not has_letter_or_digit:
        raise _name_invalid("A name needs at least one letter or digit.")
    return nfc


def name_identity(name: str) -> str:
    """The key under which two spellings of a name are the same name.

    Its cost grows faster than the length of ``name``: bound input from the
    wire first (``MAX_NAME_INPUT``).
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def sort_names(names: list[str]) -> list[str]:
    """Sort names the way every user list is sorted: identity, then name.

    A string longer than any spelling of a name (which no honest server
    sends) is not normalised, and sorts by itself.
    """
    return sorted(
        names, key=lambda name: (name_identity(name) if len(name) <= MAX_NAME_INPUT else name, name)
    )


def show_wire(text: str) -> str:
    """``text`` from the wire as an error message or a log line may show it.

    It is quoted, cut to ``SHOWN_LENGTH`` code points (an ellipsis and its
    length say so), and every character that could start a line, hide,
    or reorder what is around it (controls, formats, separators,
    surrogates, unassigned and default-ignorable code points) is written
    as an escape.
    """
    body = "".join(map(_shown_char, text[:SHOWN_LENGTH]))
    if len(text) > SHOWN_LENGTH:
        return f"'{body}…' ({len(text)} characters)"
    return f"'{body}'"


def _shown_char(char: str) -> str:
    if char in "'\\":
        return "\\" + char
    if char.isprintable() and not _DEFAULT_IGNORABLE.match(char):
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# Cc characters but tab and newline, and the bidi overrides and isolates:
# what the server removes from text (and the client from what it shows).
TEXT_REMOVED = dict.fromkeys(
    [c for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)]
    + [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
# A JSON escape can smuggle in a lone surrogate, which no UTF-8 peer can
# receive; the server refuses such text (the client shows U+FFFD instead).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Return message text as the server keeps it, or raise ``text-invalid``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(TEXT_REMOVED)
    if LONE_SURROGATE.search(text):
        raise RuleViolation(ErrorCode.TEXT_INVALID, "The text holds invalid characters.")
    if not text or text.isspace():
        raise RuleViolation(ErrorCode.TEXT_INVALID, "The message is empty.")
    if len(text) > MAX_TEXT_LENGTH:
        raise RuleViolation(
            ErrorCode.TEXT_INVALID,
            f"The message is {len(text)} characters long; the limit is {MAX_TEXT_LENGTH}.",
        )
    return text


# -- files (PROTOCOL.md, "Files and images") ----------------------------------

MAX_FILE_NAME_LENGTH = 255  # what every common file system takes, in characters
DEFAULT_MIME = "application/octet-stream"
# What a file's name cannot hold: controls and separators that would start a
# new line or reorder what is shown (an RTL override turns "gpj.exe" round),
# and the path separators of every system (a name is never a path).
_FILE_NAME_REFUSED = re.compile(
    "[\x00-\x1f\x7f-\x9f/\\\\\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _bad_field(message: str) -> RuleViolation:
    return RuleViolation(ErrorCode.BAD_FIELD, message)


def clean_file_name(name: str) -> str:
    """Return an uploaded file's ``name`` as the server keeps it (NFC, trimmed), or raise.

    The name is only ever shown, never used as a path (files are kept by
    their hash), but every peer shows it: one that could pass for another
    name or break a line is refused with ``bad-field``.
    """
    if len(name) > 4 * MAX_FILE_NAME_LENGTH:  # before normalising: see MAX_NAME_INPUT
        raise _bad_field(f"A file name can be at most {MAX_FILE_NAME_LENGTH} characters long.")
    name = unicodedata.normalize("NFC", name).strip()
    if len(name) > MAX_FILE_NAME_LENGTH:
        raise _bad_field(f"A file name can be at most {MAX_FILE_NAME_LENGTH} characters long.")
    if name in ("", ".", ".."):
        raise _bad_field("A file needs a name.")
    refused = _FILE_NAME_REFUSED.search(name) or LONE_SURROGATE.search(name)
    if refused is not None:
        raise _bad_field(
            f"A file name cannot hold {show_wire(refused.group())} (a control character,"
            " a path separator or a direction mark)."
        )
    return name


def clean_mime(mime: str | None) -> str:
    """Return an upload's media type in lower case (absent: ``DEFAULT_MIME``), or raise."""
    if mime is None:
        return DEFAULT_MIME
    lowered = mime.strip().lower()
    if not _MIME.fullmatch(lowered):
        raise _bad_field(f"{show_wire(mime)} is not a media type (such as image/png).")
    return lowered


def clean_sha256(digest: str) -> str:
    """Return a SHA-256 given in hex, in lower case, or raise ``bad-field``."""
    lowered = digest.lower()
    if not _SHA256.fullmatch(lowered):
        raise _bad_field("`sha256` must be 64 hexadecimal digits.")
    return lowered
