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

import infersight.evaluation.no_gpu_probe  # noqa: F401  # before Presidio (spaCy): no CUDA context
from presidio_analyzer import Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import IbanRecognizer

from infersight.evaluation.checksums import (
    CARD_CONTEXT,
    card_brand,
    cpf_check_digits,
    cpf_is_valid,
    digits_of,
    iban_is_valid,
    labelled_id,
    luhn_is_valid,
    ssn_is_valid,
)

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


# Where a bare digit run may start and end. Not inside an ASCII word ("a4111...f" is a hex digest)
# nor a dotted or dashed number, but right after a CJK letter or "nº" (no space before digits there),
# a comma (CSV columns, compact JSON arrays) or a JSON line-break escape ("is:\n4111..." in tool
# call arguments). Not before ",5" or ",50" ending the number: a decimal amount, not a column
# (",99.90" is the next column).
_BARE_START = r"(?:(?<![A-Za-z0-9_.-])|(?<=\\[ntr]))"
_BARE_END = r"(?![A-Za-z0-9_]|[.-]\d|,\d{1,2}(?![\d.,]))"


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
        # The same 16 digits when more digits follow, which the pattern above takes as its fifth
        # group: "4111 1111 1111 1111 09/27" read as an 18-digit number failed Luhn and went unmasked.
        Pattern("card grouped 4-4-4-4 before other digits",
                r"(?<![\d-])\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?=\1\d{1,3}(?!\d|-\d))", 0.5),
        Pattern("card grouped 4-6-4/5 (amex, diners)", r"(?<![\d-])\d{4}([ -])\d{6}\1\d{4,5}(?!\d|-\d)", 0.5),
        Pattern("card bare 13-19 digits", _BARE_START + r"\d{13,19}" + _BARE_END, 0.5),
    ]
    CONTEXT = CARD_CONTEXT

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CREDIT_CARD", name="CardNumberRecognizer", patterns=list(self.PATTERNS),
            context=list(self.CONTEXT),
        )

    def validate_result(self, pattern_text: str) -> bool:  # noqa: D102
        return luhn_is_valid(pattern_text) and card_brand(pattern_text) is not None

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not labelled_id(text, r.start, r.end)]




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
        Pattern("ssn bare", r"(?<![\d.-])\d{9}(?!\d|[.-]\d|,\d{1,2}(?![\d.,]))", 0.15),
    ]
    CONTEXT = ["ssn", "ssns", "social", "security", "ssa", "taxpayer"]

    def __init__(self) -> None:
        super().__init__(
            supported_entity="US_SSN", name="UsSsnRecognizer", patterns=list(self.PATTERNS), context=list(self.CONTEXT)
        )

    def invalidate_result(self, pattern_text: str) -> bool:  # noqa: D102
        return not ssn_is_valid(pattern_text)


class CpfRecognizer(PatternRecognizer):
    """Brazilian CPF (taxpayer id): ``123.456.789-09``, ``123456789-09`` or 11 bare digits, validated by
    both check digits.

    One random 11-digit run in a hundred passes the checksum (a Brazilian mobile number like
    11987654321 can), which we accept: masking it either way hides a personal number.
    """

    PATTERNS = [
        Pattern("cpf formatted", r"(?<![\d.])\d{3}\.\d{3}\.\d{3}-\d{2}(?![\d]|-\d)", 0.5),
        # 529982247-25 (only the check digits set apart), as the guardrail screen reads it too
        Pattern("cpf check dash", _BARE_START + r"\d{9}-\d{2}(?![\d]|-\d)", 0.5),
        Pattern("cpf bare", _BARE_START + r"\d{11}" + _BARE_END, 0.4),
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
        digits = digits_of(pattern_text)
        return not 6 <= len(digits) <= 17 or len(set(digits)) == 1


class _LowerCaseIbanRecognizer(IbanRecognizer):
    """Presidio's IBAN recognizer, plus the same pattern for IBANs typed in lower case ("de89 3704 ...").

    Presidio's pattern and country formats are upper case only, so a lower-case IBAN (as people
    paste them into chat) was never masked. Not one case-insensitive pattern: it would run on into
    the next word ("BE68539007547034 received") and fail the checksum. The checksum and country
    format are checked on the upper-cased value.
    """

    LOWER_CASE = Pattern(
        "IBAN lower case",
        r"(?<![A-Za-z0-9])([a-z]{2}[0-9]{2}(?:[ -]?[a-z0-9]{4}){2,6})"
        r"((?:[ -]?[a-z0-9]{4})?)((?:[ -]?[a-z0-9]{1,3})?)(?![A-Za-z0-9])",
        0.5,
    )

    def __init__(self, context: list[str]) -> None:
        super().__init__(patterns=[*IbanRecognizer.PATTERNS, self.LOWER_CASE], context=context)

    def validate_result(self, pattern_text: str) -> bool | None:  # noqa: D102
        return super().validate_result(pattern_text.upper())


def iban_recognizer() -> IbanRecognizer:
    """Presidio's IBAN recognizer (per-country format + mod-97), lower case too, with Portuguese
    context words added."""
    return _LowerCaseIbanRecognizer(
        context=["iban", "bank", "transaction", "transfer", "banco", "transferência", "conta"]
    )


def finance_recognizers() -> list[PatternRecognizer]:
    """One fresh instance of each finance recognizer, ready for a ``RecognizerRegistry``."""
    return [CardNumberRecognizer(), UsSsnRecognizer(), CpfRecognizer(), AccountNumberRecognizer(), iban_recognizer()]
