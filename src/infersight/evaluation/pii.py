"""PII masking inside the gateway, before prompt or completion text leaves its trust boundary.

Nothing downstream (the bus, the store, an LLM judge) ever sees the raw text: the gateway masks it
with a ``PiiMasker`` and only then truncates and publishes it. Detection is Presidio with pattern
recognizers only (a ``NoOpNlpEngine``, no spaCy model: nothing to download, a few ms per text),
so names and addresses in free prose are *not* found; identifiers with a shape or a checksum are.

Placeholders (``PLACEHOLDERS`` maps Presidio entity -> placeholder; docs/pii.md has the table)::

    EMAIL_ADDRESS -> [EMAIL]        PHONE_NUMBER -> [PHONE]        CREDIT_CARD -> [CARD_NUMBER]
    IBAN_CODE     -> [IBAN]         US_SSN       -> [US_SSN]       BR_CPF      -> [CPF]
    ACCOUNT_NUMBER-> [ACCOUNT_NUMBER]  IP_ADDRESS -> [IP_ADDRESS]  URL         -> [URL]
    CRYPTO        -> [CRYPTO_WALLET]

Left out on purpose: DATE_TIME (dates are what evaluators need, and not identifying alone), NRP,
PERSON and LOCATION (need NER), UUID (trace and request ids), MAC, driver's licences and passports
(their bare patterns flag ordinary codes far more often than real documents).

Offline: presidio's e-mail recognizer calls ``tldextract.extract``, whose first use downloads the
public suffix list. ``_OfflineEmailRecognizer`` validates against tldextract's bundled snapshot
instead (``suffix_list_urls=()``, ``cache_dir=None``: no network, no cache written).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import phonenumbers
import tldextract
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CryptoRecognizer,
    EmailRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UrlRecognizer,
)

from infersight.evaluation.checksums import ascii_shadow
from infersight.evaluation.finance_recognizers import finance_recognizers

logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)  # one info line per recognizer at start

__all__ = [
    "ANALYSIS_MARGIN",
    "CONTEXT_BOOST",
    "ELLIPSIS",
    "PLACEHOLDERS",
    "PLACEHOLDER_RE",
    "SCORE_THRESHOLD",
    "MaskedText",
    "PiiFinding",
    "PiiMasker",
    "default_masker",
    "resolve_overlaps",
]

PLACEHOLDERS: dict[str, str] = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CARD_NUMBER",
    "IBAN_CODE": "IBAN",
    "US_SSN": "US_SSN",
    "BR_CPF": "CPF",
    "ACCOUNT_NUMBER": "ACCOUNT_NUMBER",
    "IP_ADDRESS": "IP_ADDRESS",
    "URL": "URL",
    "CRYPTO": "CRYPTO_WALLET",
}
"""Presidio entity name -> placeholder type; the masked text carries ``[TYPE]``."""

# When two findings of equal length cover the same text, the earlier type here names the span:
# checksummed identifiers first, then context-bound ones, URL last (it overlaps e-mail domains).
_PRIORITY: tuple[str, ...] = (
    "EMAIL", "CARD_NUMBER", "IBAN", "CPF", "US_SSN", "CRYPTO_WALLET", "IP_ADDRESS", "ACCOUNT_NUMBER", "PHONE", "URL",
)
_RANK = {t: i for i, t in enumerate(_PRIORITY)}

PLACEHOLDER_RE: re.Pattern[str] = re.compile(r"\[(" + "|".join(_PRIORITY) + r")\]")
"""Matches any placeholder we write; group 1 is its type (e.g. to spot masked PII in a completion)."""

SCORE_THRESHOLD = 0.5
"""Findings scoring under this are not masked. Checksum-validated ones score 1.0, well-shaped ones
0.5-0.6; weak shapes (bare digit runs as phones, SSNs or account numbers) start at 0.15-0.2 and
reach it only with a context word."""

CONTEXT_BOOST = 0.35
"""Added to a finding's score when one of its recognizer's context words is near it."""

CONTEXT_WORDS_BEFORE = 5
CONTEXT_WORDS_AFTER = 2

ANALYSIS_MARGIN = 256
"""``mask`` analyses only ``max_chars + ANALYSIS_MARGIN`` characters (more if masking shrank the
text): every identifier we mask is far shorter than this, so one that starts before the cut is
seen whole, and a huge prompt costs no more than a 2 kB one."""

ELLIPSIS = "…"
"""Appended (as one character, within ``max_chars``) when ``mask`` truncates."""

_WORD_RE = re.compile(r"[\w/]+")
_DIGIT_RE = re.compile(r"\d")
# Shapes that phonenumbers accepts but that are something else: dates, CPF, SSN, dotted quads.
# ISBNs end in a one-character check group ("0-306-40615-2"); phone numbers do not.
_NOT_A_PHONE_RE = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{3}\.\d{3}\.\d{3}-\d{2}|\d{3}-\d{2}-\d{4}|\d+\.\d+\.\d+\.\d+"
    r"|(?:\d+-){2,}[\dXx]"
)
# An identifier noun right before a number says it is not a phone ("order 2024-000123", "nº ...").
_NOT_A_PHONE_BEFORE_RE = re.compile(
    r"(?:\b(?:order|invoice|ticket|ref|reference|id|code|serial|lot|batch|isbn|version|build|pedido|protocolo|"
    r"nota|fatura|boleto|código|codigo|lote|rastreio)|\bn[º°]\.?|\bno\.|#)\s*[:.]?\s*$",
    re.IGNORECASE,
)
_PHONE_CANDIDATE_RE = re.compile(r"\+?\(?\d[\d \t().\-/]{5,24}\d")
_PAD = 4
_VERSION_BEFORE_RE = re.compile(r"\b(?:version|vers[ãa]o|release|build|v)[\s:]*$", re.IGNORECASE)
_URL_TRAILING = ".,;:!?'\")]}"

_TLD_EXTRACT = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


@dataclass(frozen=True, slots=True)
class PiiFinding:
    """One span of PII: ``entity_type`` is the placeholder type (``EMAIL``, ``CPF``, ...)."""

    entity_type: str
    start: int
    end: int
    score: float


@dataclass(slots=True)
class MaskedText:
    """Masked, possibly truncated text; ``entities`` counts the placeholders kept in ``text``."""

    text: str
    entities: dict[str, int] = field(default_factory=dict)
    truncated: bool = False


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, validating the domain against the bundled suffix snapshot."""

    def validate_result(self, pattern_text: str) -> bool:  # noqa: D102
        return _TLD_EXTRACT(pattern_text).fqdn != ""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        for r in results:  # "Contact:\nana@x.com" in JSON: the escape's n is not the address's
            if r.start > 0 and text[r.start - 1] == "\\" and text[r.start] in "ntr":
                r.start += 1
        return results


class _UrlRecognizer(UrlRecognizer):
    """URLs with a scheme, a ``www.`` host, or a domain followed by a path.

    A bare ``name.tld`` is not masked: ``setup.py``, ``main.rs`` and ``README.md`` are ccTLD-shaped
    file names that code answers are full of, and a bare domain rarely identifies a person. Trailing
    sentence punctuation is trimmed from the span.
    """

    def __init__(self) -> None:
        base = UrlRecognizer.BASE_URL_REGEX
        super().__init__(
            patterns=[
                UrlRecognizer.PATTERNS[0],  # "Standard Url": https?:// + domain
                Pattern("Non schema URL", r"(?i)(?<![\w@.-])" + base, 0.5),
            ],
            context=["url", "website", "link", "site"],
        )

    def invalidate_result(self, pattern_text: str) -> bool:  # noqa: D102
        lower = pattern_text.lower()
        return not (lower.startswith(("http://", "https://", "www")) or "/" in lower)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        for r in results:
            escape = text.find("\\", r.start, r.end)  # a JSON escape (\" ending a string) is not the URL's:
            if escape != -1:  # swallowed, it left '"[URL]rates\""', which no longer parses
                r.end = escape
            while r.end > r.start and text[r.end - 1] in _URL_TRAILING:
                r.end -= 1
        return results


class _IpRecognizer(IpRecognizer):
    """Presidio's IPv4/IPv6 recognizer, minus dotted quads introduced as a version ("version 1.2.3.4")."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not _VERSION_BEFORE_RE.search(text[max(0, r.start - 16):r.start])]


class _PhoneRecognizer(PhoneRecognizer):
    """phonenumbers-based phones (valid for one of ``REGIONS``), rescored by how they are written.

    ``+55 11 98765-4321`` or ``(415) 555-0132`` score 0.5; a bare digit run such as ``8005551234``
    (an order or ticket number as often as a phone) scores 0.2 and needs a context word. Dates,
    ISBN-, CPF- and SSN-shaped strings, dotted quads, and numbers right after an identifier noun
    ("order", "invoice", "pedido", "nº", "#") are dropped: phonenumbers accepts all of them.
    """

    REGIONS = ("US", "BR", "GB", "DE", "FR", "PT")
    CONTEXT_WORDS = [
        "phone", "telephone", "tel", "cell", "cellphone", "mobile", "call", "whatsapp", "fax", "sms",
        "telefone", "celular", "ligue", "ligar", "contato", "fone", "contact",
    ]

    def __init__(self) -> None:
        super().__init__(context=list(self.CONTEXT_WORDS), supported_regions=self.REGIONS)

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:  # noqa: D102
        found: dict[tuple[int, int], RecognizerResult] = {}
        for lo, hi, international in _phone_windows(text):
            window = text[lo:hi]
            core = (lo + _PAD if lo else 0, hi - _PAD if hi < len(text) else hi)
            # An international number parses the same whatever the default region: scan once. Else
            # stop at the first region whose match covers the whole run (the others agree or miss).
            for region in self.REGIONS[:1] if international else self.REGIONS:
                if any(s <= core[0] + 1 and e >= core[1] - 1 for s, e in found):
                    break
                for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=self.leniency):
                    start, end = lo + match.start, lo + match.end
                    raw = text[start:end]
                    if (
                        (start, end) in found
                        or _NOT_A_PHONE_RE.fullmatch(raw.lstrip("+ "))
                        or _NOT_A_PHONE_BEFORE_RE.search(text[max(0, start - 24):start])
                    ):
                        continue
                    formatted = raw.startswith("+") or "(" in raw or re.search(r"\d[ .-]\d", raw) is not None
                    found[(start, end)] = RecognizerResult(
                        entity_type="PHONE_NUMBER", start=start, end=end, score=0.5 if formatted else 0.2,
                        recognition_metadata={
                            RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                        },
                    )
        return list(found.values())


def _phone_windows(text: str) -> list[tuple[int, int, bool]]:
    """Stretches of ``text`` that could hold a phone number: (start, end, all start with "+").

    Why: phonenumbers' matcher, run once per region over the whole text, tries every date, price
    and section number in it and took ~90% of the masking time. Running it only on number-like runs
    of 7-15 digits (padded, so it still sees the characters around them) finds the same phones.
    """
    windows: list[tuple[int, int, bool]] = []
    for m in _PHONE_CANDIDATE_RE.finditer(text):
        digits = len(_DIGIT_RE.findall(m.group()))
        if not 7 <= digits <= 15 or _NOT_A_PHONE_RE.fullmatch(m.group()):
            continue  # E.164 numbers have at most 15 digits
        lo, hi, plus = max(0, m.start() - _PAD), min(len(text), m.end() + _PAD), m.group().startswith("+")
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], hi, windows[-1][2] and plus)
        else:
            windows.append((lo, hi, plus))
    return windows


class _WindowContextEnhancer(ContextAwareEnhancer):
    """Context boosting that works without NLP tokens.

    Presidio's ``LemmaContextAwareEnhancer`` reads lemmas from the NLP artifacts, which a
    ``NoOpNlpEngine`` leaves empty, so it never fires. This one splits the few words around a
    finding with a regex and adds ``CONTEXT_BOOST`` when one equals a context word of the finding's
    recognizer (or starts with it, for context words of four letters or more: "accounts").
    """

    def __init__(self) -> None:
        super().__init__(CONTEXT_BOOST, SCORE_THRESHOLD, CONTEXT_WORDS_BEFORE, CONTEXT_WORDS_AFTER)

    def enhance_using_context(self, text: str, raw_results: list[RecognizerResult], nlp_artifacts: NlpArtifacts,
                              recognizers: list[EntityRecognizer],
                              context: list[str] | None = None) -> list[RecognizerResult]:  # noqa: D102
        by_id = {rec.id: rec for rec in recognizers}
        for result in raw_results:
            if result.score >= 1.0:
                continue
            rec = by_id.get((result.recognition_metadata or {}).get(RecognizerResult.RECOGNIZER_IDENTIFIER_KEY, ""))
            words = getattr(rec, "context", None) if rec is not None else None
            if words and self._near(text, result.start, result.end, words):
                result.score = min(1.0, result.score + self.context_similarity_factor)
        return raw_results

    def _near(self, text: str, start: int, end: int, context: Iterable[str]) -> bool:
        before = _WORD_RE.findall(text[max(0, start - 80):start].lower())[-self.context_prefix_count:]
        after = _WORD_RE.findall(text[end:end + 40].lower())[: self.context_suffix_count]
        for word in before + after:
            for ctx in context:
                if word == ctx or (len(ctx) >= 4 and word.startswith(ctx)):
                    return True
        return False


def resolve_overlaps(findings: Iterable[PiiFinding]) -> list[PiiFinding]:
    """Merge overlapping findings into one span each, sorted by start.

    The merged span is the union (nothing any recognizer found is left half-visible); its type is
    the longest member's, ties broken by ``_PRIORITY``. So ``ana@example.com`` stays one
    ``[EMAIL]`` even though a URL pattern also matches ``example.com`` inside it, while a URL whose
    query carries an e-mail stays one ``[URL]``.
    """
    ordered = sorted(findings, key=lambda f: (f.start, -f.end))
    merged: list[PiiFinding] = []
    group: list[PiiFinding] = []
    group_end = -1

    def close() -> None:
        if group:
            best = max(group, key=lambda f: (f.end - f.start, -_RANK.get(f.entity_type, 99), f.score))
            merged.append(PiiFinding(best.entity_type, group[0].start, group_end, best.score))

    for f in ordered:
        if group and f.start < group_end:
            group.append(f)
            group_end = max(group_end, f.end)
        else:
            close()
            group, group_end = [f], f.end
    close()
    return merged


class PiiMasker:
    """Finds and masks PII with Presidio pattern recognizers; build it once (``default_masker``).

    Construction builds the analyzer (a few hundred ms, mostly imports and regex compilation);
    ``find`` and ``mask`` are thread-safe and take a few ms per 2,000-character text.
    """

    def __init__(self, score_threshold: float = SCORE_THRESHOLD) -> None:
        self.score_threshold = score_threshold
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "noop"}])
        recognizers: list[EntityRecognizer] = [
            _OfflineEmailRecognizer(context=["email", "e-mail", "mail"]),
            _PhoneRecognizer(),
            _UrlRecognizer(),
            _IpRecognizer(),
            CryptoRecognizer(context=["wallet", "bitcoin", "btc", "carteira"]),
            *finance_recognizers(),
        ]
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        self._analyzer = AnalyzerEngine(
            registry=registry, nlp_engine=nlp, supported_languages=["en"],
            context_aware_enhancer=_WindowContextEnhancer(), default_score_threshold=score_threshold,
        )
        self._entities = list(PLACEHOLDERS)
        # Warm up: phonenumbers' region metadata and tldextract's suffix snapshot load lazily
        # (~150 ms); pay that here rather than on the first request.
        self.find("ana@example.com +1 415-555-0132 (11) 98765-4321")

    def find(self, text: str) -> list[PiiFinding]:
        """All PII spans in ``text``, overlaps merged (``resolve_overlaps``), sorted by start."""
        if not text:
            return []
        results = self._analyzer.analyze(  # the shadow has the same length: its spans are the text's
            text=ascii_shadow(text), language="en", entities=self._entities, score_threshold=self.score_threshold
        )
        return resolve_overlaps(
            PiiFinding(PLACEHOLDERS[r.entity_type], r.start, r.end, r.score) for r in results if r.end > r.start
        )

    def mask(self, text: str, max_chars: int = 2000) -> MaskedText:
        """Replace PII by ``[TYPE]`` placeholders, then truncate to ``max_chars`` characters.

        Masking comes first so that a number cut in half by the truncation is never leaked. A
        truncated text ends with ``ELLIPSIS`` (counted in ``max_chars``), and the cut never splits
        a placeholder. Only ``max_chars + ANALYSIS_MARGIN`` characters are analysed (see there).
        """
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, not {max_chars}")
        window = max_chars + ANALYSIS_MARGIN
        while True:
            complete = window >= len(text)
            findings = self.find(text if complete else text[:window])
            stop = len(text) if complete else window - ANALYSIS_MARGIN
            findings = [f for f in findings if f.start < stop]
            if findings:
                stop = max(stop, findings[-1].end)
            out, spans = _replace(text[:stop], findings)
            if complete or len(out) >= max_chars:
                break
            window *= 2  # placeholders shrank the text: look further so the output can be full
        truncated = len(out) > max_chars or stop < len(text)
        if truncated:
            cut = max_chars - len(ELLIPSIS)
            for s, e, _ in spans:
                if s < cut < e:
                    cut = s
                    break
            out = out[:cut] + ELLIPSIS
            spans = [sp for sp in spans if sp[1] <= cut]
        return MaskedText(text=out, entities=dict(Counter(t for _, _, t in spans)), truncated=truncated)


def _replace(text: str, findings: list[PiiFinding]) -> tuple[str, list[tuple[int, int, str]]]:
    """``text`` with each finding replaced, and the (start, end, type) of each placeholder in it."""
    parts: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = out_len = 0
    for f in findings:
        parts.append(text[pos:f.start])
        out_len += f.start - pos
        placeholder = f"[{f.entity_type}]"
        spans.append((out_len, out_len + len(placeholder), f.entity_type))
        parts.append(placeholder)
        out_len += len(placeholder)
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), spans


_default: PiiMasker | None = None
_default_lock = threading.Lock()


def default_masker() -> PiiMasker:
    """The process-wide masker, built on first use (construction is the slow part)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PiiMasker()
    return _default
