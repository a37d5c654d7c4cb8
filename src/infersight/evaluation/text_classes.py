"""Character classes the text metrics share (checks' word tokens, ROUGE-L's tokens).

Python's ``\\w`` does not match combining marks (Unicode categories Mn, Mc, Me): a Hindi, Thai or
Bengali word was cut at every vowel sign and the signs dropped, so "दिन" (day) and "दान" (donation)
were both the tokens "द", "न". ``MARKS`` is a regex class body of every combining mark in the Basic
Multilingual Plane, computed from ``unicodedata`` at import (~190 ranges, a few ms).
"""

from __future__ import annotations

import unicodedata


def _mark_ranges() -> str:
    ranges: list[list[int]] = []
    for cp in range(0x300, 0x10000):
        if unicodedata.category(chr(cp)).startswith("M"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


MARKS = _mark_ranges()
"""Combining marks, as a character-class body: ``f"[{MARKS}]"``."""

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Chinese and Japanese characters: scripts with no spaces between words, a token per character."""

WORD_PATTERN = rf"[{CJK}]|(?:[^\W{CJK}]|[{MARKS}])+"
"""Words: runs of word characters and combining marks, but each Chinese/Japanese character on its own."""

SPACELESS = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u19e0-\u19ff\ua9e0-\ua9ff\uaa60-\uaa7f"
"""Thai, Lao, Myanmar and Khmer (with their extensions): no spaces between words either, but an
alphabet (or abugida), so a single character is a letter, not a word or syllable."""

_STACKERS = "\u1039\u17d2"
"""Myanmar virama and Khmer coeng: the consonant after one is written under the one before it."""

CLUSTER_PATTERN = rf"(?=\w)[{SPACELESS}](?:[{MARKS}]|(?<=[{_STACKERS}])(?=\w)[{SPACELESS}])*"
"""One letter of those scripts with its combining marks (Thai "คุ", Myanmar "ကျေး"), and with the
consonants stacked under it (Khmer "ខ្ញុំ" is one cluster, not "ខ្" + "ញុំ")."""

SEGMENTED_WORD_PATTERN = rf"[{CJK}]|{CLUSTER_PATTERN}|(?:[^\W{CJK}{SPACELESS}]|[{MARKS}])+"
"""``WORD_PATTERN``, but with Thai, Lao, Khmer and Myanmar text cut into clusters too: without spaces
a whole phrase is one run, and a loop inside it ("ขอบคุณครับขอบคุณครับ...") one token. The loop
detector reads these; word 3-grams and ROUGE-L keep ``WORD_PATTERN`` (3-grams of letters repeat in
any long text)."""
