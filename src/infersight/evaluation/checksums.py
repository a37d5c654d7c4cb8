"""Checksums of financial identifiers: pure functions with no Presidio import.

Shared by the Presidio recognizers (``finance_recognizers``) and the gateway's microsecond guardrail
screen (``screen``), which must stay importable and fast without loading the analyzer.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

CARD_CONTEXT = ["card", "credit", "debit", "visa", "mastercard", "amex", "cartão", "cartao", "crédito", "débito"]
"""Words that say a number is a payment card (Presidio's context words, and the id rule below)."""


_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"


@cache
def _shadow_table() -> dict[int, str]:
    """Unicode spaces to " ", dashes to "-", decimal digits of every script to 0-9 (built once)."""
    table = {ord(c): " " for c in _SPACES} | {ord(c): "-" for c in _DASHES}
    for cp in range(0x80, 0x20000):
        digit = unicodedata.decimal(chr(cp), None)
        if digit is not None:
            table[cp] = str(digit)
    return table


@cache
def _shadowed() -> re.Pattern[str]:
    """Any character of the table in the Basic Multilingual Plane, as ranges (a class that names
    planes above it is ten times slower; digits there are mathematical styles, not ids people write)."""
    ranges: list[list[int]] = []
    for cp in sorted(cp for cp in _shadow_table() if cp < 0x10000):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return re.compile("[" + "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges) + "]")


def ascii_shadow(text: str) -> str:
    """``text`` with Unicode spaces, dashes and digits mapped one for one to ASCII ones: the same
    length, so spans found in it apply to ``text``. A card written with no-break spaces, an SSN
    with non-breaking hyphens or full-width digits was invisible to the ASCII patterns.

    It runs on the relay's event loop (the guardrail screen), so it looks before it translates
    (a translate is ~150 us per 2,000 characters): ASCII costs nothing, Latin-1 text (accented
    European languages) has one such character, the no-break space, and other scripts one regex
    scan (~2 us per 200 characters)."""
    if text.isascii():
        return text
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return text.translate(_shadow_table()) if _shadowed().search(text) else text
    return text.replace("\u00a0", " ") if "\u00a0" in text else text


def digits_of(text: str) -> str:
    """The digits of ``text``, separators dropped."""
    return "".join(c for c in text if c.isdigit())


def luhn_is_valid(number: str) -> bool:
    """The Luhn (mod 10) check of payment card numbers; non-digits are ignored."""
    digits = digits_of(number)
    if not digits:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_brand(number: str) -> str | None:
    """The card scheme whose issuer range (IIN) and length fit ``number``, or None.

    Why: Luhn alone passes one random digit run in ten; requiring a real issuer prefix with a length
    that scheme issues removes most order numbers and ids that happen to pass it.
    """
    d = digits_of(number)
    n = len(d)
    if not 13 <= n <= 19:
        return None
    p2, p4, p6 = int(d[:2]), int(d[:4]), int(d[:6])
    if d[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if 2200 <= p4 <= 2204 and n == 16:
        return "mir"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (300 <= int(d[:3]) <= 305 or p2 in (36, 38, 39)) and n >= 14:
        return "diners"
    if 3528 <= p4 <= 3589 and n >= 16:
        return "jcb"
    if (p4 == 6011 or p2 == 65 or 644 <= int(d[:3]) <= 649 or 622126 <= p6 <= 622925) and n >= 16:
        return "discover"
    if p2 == 62 and n >= 16:
        return "unionpay"
    if (p2 == 50 or 56 <= p2 <= 69) and n >= 13:
        return "maestro"  # also Elo and Hipercard ranges (Brazil)
    return None


def cpf_check_digits(first9: str) -> str:
    """The two check digits (mod 11) that follow the nine base digits of a CPF."""
    base = [int(c) for c in first9]
    d1 = sum(v * (10 - i) for i, v in enumerate(base)) * 10 % 11 % 10
    d2 = sum(v * (11 - i) for i, v in enumerate(base + [d1])) * 10 % 11 % 10
    return f"{d1}{d2}"


def cpf_is_valid(text: str) -> bool:
    """A Brazilian CPF: 11 digits, not all the same (those pass the checksum), both check digits right."""
    d = digits_of(text)
    return len(d) == 11 and len(set(d)) > 1 and cpf_check_digits(d[:9]) == d[9:]


def ssn_is_valid(text: str) -> bool:
    """A US SSN the SSA could issue: area not 000, 666 or 900-999, group not 00, serial not 0000.

    The one SSN famously printed on sample wallet cards (078-05-1120) and all-same-digit numbers are
    rejected too: they show up in documentation, not on people.
    """
    d = digits_of(text)
    if len(d) != 9 or len(set(d)) == 1 or d == "078051120":
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def iban_is_valid(text: str) -> bool:
    """ISO 13616 IBAN check: mod-97 of the rearranged, letter-expanded string must be 1."""
    s = "".join(text.split()).replace("-", "").upper()
    if not (15 <= len(s) <= 34 and s[:2].isalpha() and s[2:4].isdigit() and s.isalnum()):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# "order 4539578763621486", "tracking no. 4000000000000002", "pedido nº ...": an identifier noun right
# before a bare digit run names it; one Luhn-valid, Visa-shaped id in ten would otherwise be a card.
_ID_BEFORE_RE = re.compile(
    r"\b(?:order|invoice|ticket|tracking|shipment|parcel|package|ref|reference|id|pedido|protocolo|rastreio"
    r"|fatura|boleto)(?:\s+(?:number|no\.?|n[º°]\.?|num\.?|id|code|c[óo]digo))?\s*[:#]?\s*$",
    re.IGNORECASE,
)
_CARD_WORD_RE = re.compile(
    r"\b(?:" + "|".join(CARD_CONTEXT) + r")", re.IGNORECASE,
)


def labelled_id(text: str, start: int, end: int) -> bool:
    """A bare digit run right after an identifier noun, with no card word before it."""
    if not text[start:end].isdigit():
        return False  # grouped like a card ("4111 1111 ..."): written as a card
    before = text[max(0, start - 48):start]
    return _ID_BEFORE_RE.search(before) is not None and _CARD_WORD_RE.search(before) is None


# ---- documentation values: reserved domains (RFC 2606, RFC 6761) and documentation IP ranges ----------

RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
"""Second-level domains RFC 2606 reserves for documentation (their subdomains too)."""

RESERVED_TLDS = ("example", "test", "invalid", "localhost")
"""Top-level names RFC 2606 / RFC 6761 reserve: no mailbox or host under them belongs to anyone."""

_RESERVED_SUFFIXES = tuple("." + d for d in RESERVED_DOMAINS)

DOCUMENTATION_MENTIONS = 2
"""A text that names documentation values (``documentation_mentions``) this many times or more is
documentation or sample code: its documentation values are masked but are no PII signal. One alone
still counts: it is how people (and tests) stand in for a real address when they check masking."""

# Names of documentation values, as ``documentation_text`` counts them: a reserved domain (in an
# address, a URL or a host name), bare ``localhost``, an address in a documentation IP range (RFC
# 5737: 192.0.2/24, 198.51.100/24, 203.0.113/24; RFC 3849: 2001:db8::/32). A reserved name must not
# run on into a real suffix ("example.com.br" is an ordinary domain). Run on the lower-cased text,
# every branch starting with a literal (so ``re`` skips to the few places that can match: a tenth
# of the cost of boundary look-behinds tried at every position); ``_MENTION_BEFORE`` checks the
# character before.
_DOC_MENTION_RE = re.compile(
    r"example\.(?:com|net|org)(?![\w-]|\.[a-z0-9])"
    r"|\.(?:example|test|invalid|localhost)(?![\w-]|\.[a-z0-9])"
    r"|localhost(?![\w-]|\.[a-z0-9])"
    r"|192\.0\.2\.\d{1,3}(?!\d|\.\d)|198\.51\.100\.\d{1,3}(?!\d|\.\d)|203\.0\.113\.\d{1,3}(?!\d|\.\d)"
    r"|2001:0{0,2}db8:"
)
_MENTION_BEFORE: dict[str, tuple[bool, str]] = {
    # first character of the match -> (whether the character before must be a label character, the
    # non-alphanumeric characters that may (True) or must not (False) come before)
    "e": (False, "_-"),  # "example.com" starts a name: not "myexample.com"
    ".": (True, "-"),  # ".test" ends a name: "shop.test"
    "l": (False, "_.-"),  # bare "localhost"
    "1": (False, "."),  # an IP: no digit or dot before
    "2": (False, ".:"),
}


def reserved_domain(domain: str) -> bool:
    """``domain`` is reserved for documentation or testing (RFC 2606, RFC 6761): example.com, .net
    and .org with their subdomains, and any name under .example, .test, .invalid or .localhost."""
    d = domain.lower().rstrip(".")
    return d in RESERVED_DOMAINS or d.endswith(_RESERVED_SUFFIXES) or d.rpartition(".")[2] in RESERVED_TLDS


def documentation_text(text: str) -> bool:
    """``text`` names documentation values (reserved domains, ``localhost``, documentation IP
    ranges) at least ``DOCUMENTATION_MENTIONS`` times: sample requests, a config file, API docs.
    Called only once such a value was found, so ordinary text never pays for the scan."""
    low = text.lower()
    seen = 0
    for m in _DOC_MENTION_RE.finditer(low):
        at = m.start()
        before = low[at - 1] if at else " "
        label, chars = _MENTION_BEFORE[low[at]]
        if (before.isalnum() or before in chars) == label:
            seen += 1
            if seen >= DOCUMENTATION_MENTIONS:
                return True
    return False
