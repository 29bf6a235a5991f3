"""What a word is, for search: one definition, so every store finds the same messages.

How this works: a word is a run of letters and numbers, compared without
case or accents. Text is decomposed (NFKD, which also turns compatibility
forms such as the ligature "ﬁ" or fullwidth letters into plain ones), case-folded,
decomposed again (folding can leave a character that decomposes), and its
combining marks are dropped, so "Crème", "CREME" and "creme" are one word.
ASCII text, most of what people type, takes a shortcut to the same result.
"""

from __future__ import annotations

import re
import unicodedata

from server.protocol import ChatMessage

# A word character, but not the underscore that ``\w`` adds to letters and numbers.
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> frozenset[str]:
    """The distinct words of ``text``, folded.

    Its cost grows with the length of ``text`` (NFKD expands a character
    at most 18-fold): bound input from the wire first.
    """
    if text.isascii():
        return frozenset(_WORD.findall(text.lower()))
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    bare = "".join(char for char in folded if not unicodedata.category(char).startswith("M"))
    return frozenset(_WORD.findall(bare))


def message_words(message: ChatMessage) -> frozenset[str]:
    """What a search finds ``message`` by: the words of its text and of its file's name."""
    found = words(message.text)
    if message.file is not None:
        found |= words(message.file.name)
    return found


MAX_QUERY_WORDS = 16
"""The most words a search may ask for: each is one more index lookup per candidate."""


def query_words(query: str) -> frozenset[str]:
    """The words a message must all hold to match ``query``.

    Raises ``ValueError`` if ``query`` holds no word (it may be empty), or
    more than ``MAX_QUERY_WORDS`` different ones.
    """
    found = words(query)
    if not found:
        raise ValueError("the query holds no word (letters or numbers)")
    if len(found) > MAX_QUERY_WORDS:
        raise ValueError(f"a query holds at most {MAX_QUERY_WORDS} different words")
    return found
