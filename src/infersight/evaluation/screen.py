"""The gateway's synchronous guardrail screen: does a request need to be sampled for evaluation?

It runs on every request whose tenant keeps content, inside the gateway just before the record is
published, so it has to cost microseconds: plain regexes with checksum validation for the
identifiers that matter most (e-mail addresses, payment cards with the Luhn check and an issuer range, IBANs with
mod-97, US SSNs, Brazilian CPFs with their check digits; not addresses at a documentation domain such as
example.com in documentation text, as the masker reads them) and the prompt-injection patterns of
``guardrails``. Texts with no digit and no ``@`` skip the identifier regexes entirely.

The full Presidio masking (``pii``) runs later, off the event loop, and only on content that leaves
the gateway; it knows more entity types (phones, IPs, URLs, accounts). A hit here is a reason to
sample (``sample_reason=guardrail``); masking is what protects the data.
"""

from __future__ import annotations

import re

from infersight.evaluation.checksums import (
    RESERVED_TLDS, ascii_shadow, card_brand, cpf_is_valid, documentation_text, iban_is_valid, labelled_id,
    luhn_is_valid, reserved_domain, ssn_is_valid,
)
from infersight.evaluation.guardrails import injection_hits

# The look-behind starts a match only where a run of local-part characters starts. Without it, a
# long run with no "@" after it (a hex or base64url blob, "1-1-1-...") was rescanned from each of
# its positions: quadratic, on the relay's event loop (a 60 kB prompt with an "@" took seconds).
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_CPF = re.compile(r"(?<![\d.])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\d-])")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# and in lower case, as people paste them into chat (the masker finds those too). Not one
# case-insensitive pattern: it would run on into the next word ("BE68539007547034 received").
_IBAN_LOWER = re.compile(r"\b[a-z]{2}\d{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,3})?\b")
_HAS_DIGIT = re.compile(r"\d")
# Every card, CPF, SSN and IBAN body lies inside a run of >= 9 digits and separators: one cheap pass
# finds the runs, and the shape regexes then look at those few short strings, not the whole text
# (117 -> ~20 us on a 100-token answer full of short numbers).
_RUN = re.compile(r"\d[\d .\-]{7,}\d")


def pii_kinds(text: str) -> list[str]:
    """The kinds of high-risk identifiers in ``text`` (EMAIL, CARD_NUMBER, IBAN, US_SSN, CPF)."""
    text = ascii_shadow(text)  # no-break spaces, Unicode dashes and digits: as the masker reads them
    kinds: list[str] = []
    if "@" in text and _has_email(text):
        kinds.append("EMAIL")
    if not _HAS_DIGIT.search(text):
        return kinds
    found = list(_RUN.finditer(text))
    if not found:
        return kinds
    numbers = "\n".join(run.group() for run in found)
    if any(_holds_card(text, run.start() + m.start(), m.group())
           for run in found for m in _CARD.finditer(run.group())):
        kinds.append("CARD_NUMBER")
    if any(iban_is_valid(m.group()) for pattern in (_IBAN, _IBAN_LOWER)  # needs its letters: the whole text
           for m in pattern.finditer(text)):
        kinds.append("IBAN")
    if any(ssn_is_valid(m.group()) for m in _SSN.finditer(numbers)):
        kinds.append("US_SSN")
    if any(cpf_is_valid(m.group()) for m in _CPF.finditer(numbers)):
        kinds.append("CPF")
    return kinds


def _has_email(text: str) -> bool:
    """An e-mail address that can belong to someone. One at a domain reserved for documentation
    (``johndoe@example.com``, ``a@b.test``: ``checksums.reserved_domain``) does not count in a text
    that names such values twice or more (sample requests, API docs: ``documentation_text``), as the
    masker reads it; a lone one still does (it stands in for a real address when people test). One
    under a reserved top-level name (.test, .example, .invalid, .localhost) never does: it has no
    public suffix, and the masker does not mask it."""
    documentation: bool | None = None
    for m in _EMAIL.finditer(text):
        domain = m.group().rpartition("@")[2]
        if not reserved_domain(domain):
            return True
        if domain.rpartition(".")[2].lower() in RESERVED_TLDS:
            continue  # a@shop.test: no public suffix, which the masker never masks either
        if documentation is None:
            documentation = documentation_text(text)
        if not documentation:
            return True
    return False


_GROUP = re.compile(r"\d+")


def _holds_card(text: str, start: int, number: str) -> bool:
    """``number`` (a ``_CARD`` match), or a card written in groups inside it: the match is greedy, and
    "4111 1111 1111 1111 09/27" read whole (18 digits) fails Luhn. Only spans grouped as cards are
    (4-4-4-1..4, 4-6-4/5), as the masker reads them, so a table of numbers is not read as cards."""
    if _is_card(text, start, number):
        return True
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(number)]
    widths = [end - begin for begin, end in groups]
    for first in range(len(groups)):
        for last in range(first + 2, min(first + 4, len(groups))):  # three or four groups
            shape = widths[first:last + 1]
            if (len(shape) == 4 and shape[:3] == [4, 4, 4] and shape[3] <= 4) or shape in ([4, 6, 4], [4, 6, 5]):
                begin, end = groups[first][0], groups[last][1]
                if _is_card(text, start + begin, number[begin:end]):
                    return True
    return False


def _is_card(text: str, start: int, number: str) -> bool:
    """A card, unless it is a bare id named by the word before it ("order 4539578763621486"), as the
    masker reads it (``checksums.labelled_id``): else every such answer was sampled as a PII hit."""
    return luhn_is_valid(number) and card_brand(number) is not None \
        and not labelled_id(text, start, start + len(number))


SCREEN_EDGE_CHARS = 32_768
"""A longer text is screened on its first and last this many characters: the screen runs on the
event loop, and over a 4 MB prompt (an attachment pasted in) its patterns took ~0.6 s, stalling
every other stream. Masking keeps only ``evaluation.max_content_chars`` of a text anyway."""


def _edges(text: str) -> str:
    if len(text) <= 2 * SCREEN_EDGE_CHARS:
        return text
    return text[:SCREEN_EDGE_CHARS] + "\n" + text[-SCREEN_EDGE_CHARS:]


def screen(prompt: str | None, completion: str | None, untrusted: str | None = None) -> list[str]:
    """Guardrail hits of one exchange, e.g. ``["pii_prompt:EMAIL", "injection:ignore_instructions"]``.

    PII is looked for in the whole ``prompt``; injection in ``untrusted`` when given (the user's and
    tools' messages: ``gateway.tokens.untrusted_prompt_text``), else in ``prompt``. An operator's
    system prompt says "never reveal your system prompt" on every request: read as an attack, it
    sampled all of a tenant's traffic as ``guardrail``."""
    hits: list[str] = []
    prompt, completion = prompt and _edges(prompt), completion and _edges(completion)
    untrusted = prompt if untrusted is None else _edges(untrusted)
    if prompt:
        hits += [f"pii_prompt:{k}" for k in pii_kinds(prompt)]
    if untrusted:
        hits += [f"injection:{name}" for name in injection_hits(untrusted)]
    if completion:
        hits += [f"pii_completion:{k}" for k in pii_kinds(completion)]
    return hits
