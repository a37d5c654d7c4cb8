"""The gateway's synchronous guardrail screen: does a request need to be sampled for evaluation?

It runs on every request whose tenant keeps content, inside the gateway just before the record is
published, so it has to cost microseconds: plain regexes with checksum validation for the
identifiers that matter most (e-mail addresses, payment cards with the Luhn check, IBANs with
mod-97, US SSNs, Brazilian CPFs with their check digits) and the prompt-injection patterns of
``guardrails``. Texts with no digit and no ``@`` skip the identifier regexes entirely.

The full Presidio masking (``pii``) runs later, off the event loop, and only on content that leaves
the gateway; it knows more entity types (phones, IPs, URLs, accounts). A hit here is a reason to
sample (``sample_reason=guardrail``); masking is what protects the data.
"""

from __future__ import annotations

import re

from infersight.evaluation.guardrails import injection_hits

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_CPF = re.compile(r"(?<![\d.])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_HAS_DIGIT = re.compile(r"\d")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def cpf_ok(digits: str) -> bool:
    if len(digits) != 11 or digits == digits[0] * 11:
        return False
    nums = [ord(c) - 48 for c in digits]
    for n in (9, 10):
        check = sum(nums[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10
        if check != nums[n]:
            return False
    return True


def ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def pii_kinds(text: str) -> list[str]:
    """The kinds of high-risk identifiers in ``text`` (EMAIL, CARD_NUMBER, IBAN, US_SSN, CPF)."""
    kinds: list[str] = []
    if "@" in text and _EMAIL.search(text):
        kinds.append("EMAIL")
    if not _HAS_DIGIT.search(text):
        return kinds
    if any(luhn_ok(re.sub(r"[ -]", "", m.group())) for m in _CARD.finditer(text)):
        kinds.append("CARD_NUMBER")
    if any(iban_ok(m.group()) for m in _IBAN.finditer(text)):
        kinds.append("IBAN")
    if any(ssn_ok(*m.groups()) for m in _SSN.finditer(text)):
        kinds.append("US_SSN")
    if any(cpf_ok(re.sub(r"[.-]", "", m.group())) for m in _CPF.finditer(text)):
        kinds.append("CPF")
    return kinds


def screen(prompt: str | None, completion: str | None) -> list[str]:
    """Guardrail hits of one exchange, e.g. ``["pii_prompt:EMAIL", "injection:ignore_instructions"]``."""
    hits: list[str] = []
    if prompt:
        hits += [f"pii_prompt:{k}" for k in pii_kinds(prompt)]
        hits += [f"injection:{name}" for name in injection_hits(prompt)]
    if completion:
        hits += [f"pii_completion:{k}" for k in pii_kinds(completion)]
    return hits
