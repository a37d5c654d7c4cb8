"""Checksums of financial identifiers: pure functions with no Presidio import.

Shared by the Presidio recognizers (``finance_recognizers``) and the gateway's microsecond guardrail
screen (``screen``), which must stay importable and fast without loading the analyzer.
"""

from __future__ import annotations

import re

CARD_CONTEXT = ["card", "credit", "debit", "visa", "mastercard", "amex", "cartão", "cartao", "crédito", "débito"]
"""Words that say a number is a payment card (Presidio's context words, and the id rule below)."""


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
