"""Presidio pattern recognizers for financial identifiers, each with its own checksum or rule check.

Why our own: presidio's stock recognizers either lack these identifiers (Brazilian CPF, context-bound
account numbers) or accept too much for a gateway that masks every stored prompt (its card pattern
takes any Luhn-valid run without checking the issuer range; its SSN patterns are tuned for NLP
context that a ``NoOpNlpEngine`` never produces). A regex finds candidates; ``validate_result``
(True lifts the score to 1.0, False drops the match) or ``invalidate_result`` decides.

Scores are set against the masker's threshold (``pii.SCORE_THRESHOLD`` = 0.5): a match at or above
it is masked on its own; a weaker one needs a context word (``context`` below) within a few words
before it, which adds ``pii.CONTEXT_BOOST`` (0.35). IBANs come from presidio's ``IbanRecognizer``
(country format plus ISO 7064 mod-97), which the tests verify; ``iban_recognizer()`` builds it.

Entity names are presidio's where presidio has the entity (``CREDIT_CARD``, ``US_SSN``,
``IBAN_CODE``) and ours otherwise (``BR_CPF``, ``ACCOUNT_NUMBER``); ``pii.PLACEHOLDERS`` maps them
to the typed placeholders.
"""

from __future__ import annotations

from presidio_analyzer import Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import IbanRecognizer

__all__ = [
    "AccountNumberRecognizer",
    "CardNumberRecognizer",
    "CpfRecognizer",
    "UsSsnRecognizer",
    "card_brand",
    "cpf_is_valid",
    "finance_recognizers",
    "iban_is_valid",
    "iban_recognizer",
    "luhn_is_valid",
    "ssn_is_valid",
]


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def luhn_is_valid(number: str) -> bool:
    """The Luhn (mod 10) check of payment card numbers; non-digits are ignored."""
    digits = _digits(number)
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
    d = _digits(number)
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
    d = _digits(text)
    return len(d) == 11 and len(set(d)) > 1 and cpf_check_digits(d[:9]) == d[9:]


def ssn_is_valid(text: str) -> bool:
    """A US SSN the SSA could issue: area not 000, 666 or 900-999, group not 00, serial not 0000.

    The one SSN famously printed on sample wallet cards (078-05-1120) and all-same-digit numbers are
    rejected too: they show up in documentation, not on people.
    """
    d = _digits(text)
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


class CardNumberRecognizer(PatternRecognizer):
    """Payment card numbers: 13-19 digits, bare or grouped by one kind of separator (space or dash).

    ``validate_result`` requires the Luhn check *and* a known issuer range and length
    (``card_brand``), so a valid card scores 1.0 and anything else is dropped.
    """

    # Separators must be consistent (\1, \2): "4111-1111 1111-1111" is not how cards are written.
    PATTERNS = [
        Pattern(
            "card grouped 4-4-4-1..4(-3)",
            r"(?<![\d-])\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?(?!\d|-\d)",
            0.5,
        ),
        Pattern("card grouped 4-6-4/5 (amex, diners)", r"(?<![\d-])\d{4}([ -])\d{6}\1\d{4,5}(?!\d|-\d)", 0.5),
        Pattern("card bare 13-19 digits", r"(?<![\d.,-])\d{13,19}(?![\d]|[.,-]\d)", 0.5),
    ]
    CONTEXT = ["card", "credit", "debit", "visa", "mastercard", "amex", "cartão", "cartao", "crédito", "débito"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD", name="CardNumberRecognizer", patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
        )

    def validate_result(self, pattern_text: str) -> bool:  # noqa: D102
        return luhn_is_valid(pattern_text) and card_brand(pattern_text) is not None


class UsSsnRecognizer(PatternRecognizer):
    """US Social Security numbers.

    ``123-45-6789`` (dashes: the way SSNs are written) scores 0.5 and is masked on its own; spaced
    or dotted groups score 0.3 and bare nine digits 0.15, so those need a context word ("SSN",
    "social security"). ``invalidate_result`` drops numbers the SSA never issues (``ssn_is_valid``)
    and mixed separators.
    """

    PATTERNS = [
        Pattern("ssn dashed", r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d]|-\d)", 0.5),
        Pattern("ssn spaced or dotted", r"(?<![\d.])\d{3}([ .])\d{2}\1\d{4}(?![\d]|\.\d)", 0.3),
        Pattern("ssn bare", r"(?<![\d.,-])\d{9}(?![\d]|[.,-]\d)", 0.15),
    ]
    CONTEXT = ["ssn", "ssns", "social", "security", "ssa", "taxpayer"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="US_SSN", name="UsSsnRecognizer", patterns=list(self.PATTERNS), context=list(self.CONTEXT)
        )

    def invalidate_result(self, pattern_text: str) -> bool:  # noqa: D102
        return not ssn_is_valid(pattern_text)


class CpfRecognizer(PatternRecognizer):
    """Brazilian CPF (taxpayer id): ``123.456.789-09`` or 11 bare digits, validated by both check digits.

    One random 11-digit run in a hundred passes the checksum (a Brazilian mobile number like
    11987654321 can), which we accept: masking it either way hides a personal number.
    """

    PATTERNS = [
        Pattern("cpf formatted", r"(?<![\d.])\d{3}\.\d{3}\.\d{3}-\d{2}(?![\d]|-\d)", 0.5),
        Pattern("cpf bare", r"(?<![\d.,-])\d{11}(?![\d]|[.,-]\d)", 0.4),
    ]
    CONTEXT = ["cpf", "contribuinte", "cadastro", "taxpayer"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="BR_CPF", name="CpfRecognizer", patterns=list(self.PATTERNS), context=list(self.CONTEXT),
            supported_language="en",
        )

    def validate_result(self, pattern_text: str) -> bool:  # noqa: D102
        return cpf_is_valid(pattern_text)


class AccountNumberRecognizer(PatternRecognizer):
    """Bank account (and routing) numbers, found by context rather than by shape.

    The heuristic: a run of 6-17 digits (optionally a dash and a one- or two-character check digit,
    as in Brazilian ``12345-6``) scores 0.15, far under the threshold, and is masked only when one
    of ``CONTEXT`` ("account", "acct", "conta", "routing", "agência", ...) is among the few words
    before it. Account numbers carry no checksum that is common across banks, so the words around
    them are the only evidence; without them an order or ticket number is left alone.
    """

    PATTERNS = [
        Pattern(
            "digits with optional check digit",
            r"(?<![\w.,/-])(?:\d{6,17}|\d{4,15}-[\dxX]{1,2})(?![\w/]|[.,-]\d)",
            0.15,
        ),
    ]
    CONTEXT = [
        "account", "accounts", "acct", "acc", "a/c", "routing", "aba", "bank", "checking", "savings",
        "conta", "contas", "corrente", "poupança", "poupanca", "agência", "agencia", "c/c",
    ]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="ACCOUNT_NUMBER", name="AccountNumberRecognizer", patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
        )

    def invalidate_result(self, pattern_text: str) -> bool:  # noqa: D102
        digits = _digits(pattern_text)
        return not 6 <= len(digits) <= 17 or len(set(digits)) == 1


def iban_recognizer() -> IbanRecognizer:
    """Presidio's IBAN recognizer (per-country format + mod-97), with Portuguese context words added."""
    return IbanRecognizer(context=["iban", "bank", "transaction", "transfer", "banco", "transferência", "conta"])


def finance_recognizers() -> list[PatternRecognizer]:
    """One fresh instance of each finance recognizer, ready for a ``RecognizerRegistry``."""
    return [CardNumberRecognizer(), UsSsnRecognizer(), CpfRecognizer(), AccountNumberRecognizer(), iban_recognizer()]
