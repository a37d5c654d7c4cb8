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
