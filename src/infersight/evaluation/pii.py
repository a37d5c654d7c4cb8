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

Values that identify no one: IPs that name no host (netmasks, loopback, 0.0.0.0, multicast,
reserved) are not masked at all; documentation values (addresses at RFC 2606/6761 reserved domains
such as example.com, IPs in the RFC 5737/3849 documentation ranges) are masked, but in a text that
names such values twice or more (sample code, API docs) they are not counted as PII
(``PiiFinding.identifying``). Private IPs are masked and counted: they map internal infrastructure.

Offline: presidio's e-mail recognizer calls ``tldextract.extract``, whose first use downloads the
public suffix list. ``_OfflineEmailRecognizer`` validates against tldextract's bundled snapshot
instead (``suffix_list_urls=()``, ``cache_dir=None``: no network, no cache written).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import infersight.evaluation.no_gpu_probe  # noqa: F401  # before Presidio (spaCy): no CUDA context
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

from infersight.evaluation.checksums import ascii_shadow, documentation_text, reserved_domain
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
# Shapes that phonenumbers accepts but that are something else: dates, CPF, SSN, dotted quads,
# decimals ("31.41592654", "-22.9068467": one dot and nothing else). ISBNs end in a one-character
# check group ("0-306-40615-2"); phone numbers do not.
_NOT_A_PHONE_RE = re.compile(
    r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{3}\.\d{3}\.\d{3}-\d{2}|\d{3}-\d{2}-\d{4}|\d+\.\d+\.\d+\.\d+"
    r"|(?:\d+-){2,}[\dXx]|-?\d+\.\d+"
)
# Inside a match: a decimal number ("0.610865 - 0.436332": digits, one dot, digits, with no dot or
# digit around), or a dotted quad ("2. 255.255.0.0": a list number before a netmask). Dotted phones
# use two dots or more ("415.555.0132", "01.23.45.67.89") and are neither.
_DECIMAL_IN_RE = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")
_QUAD_IN_RE = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_AREA_CODE_RE = re.compile(r"(?:\+\d{1,3}\s*)?\(\d{1,4}\)")  # "(11) 98765.4321": a phone, dot or not
# Numbers joined by an arithmetic operator are a computation: "= 0.174533", "12 × 345678 = ...". The
# operator stands apart ("**+55 11 98765-4321**" is Markdown bold, "<td>" HTML); a spaced dash is not
# one ("(11) 3456 - 7890" is a phone). A ``*`` is Markdown unless a number stands on its other side:
# "* +1 415-555-0132" is a bullet and "*(415) 555-0132*" italics, "12345 * 678901" a product. Any
# operator needs an operand on its other side (or a line of its own before it, "= 4148136"): a record
# written "Phone = +1 415 555 0132" and a note "+1 415-555-0132 *(preferred)*" hold phones.
_OPERATOR_BEFORE_RE = re.compile(r"(?:(?:^|\n)[ \t]*|[\d)][ \t]*)[=×÷^][ \t]*$|[\d)]\s*\*\s*$")
_OPERATOR_AFTER_RE = re.compile(r"\s*(?:[=×÷^]\s*[(-]?\s*\d|\*\s*\(?\s*\d)")
_OPERATOR_IN_RE = re.compile(r"\d\s+[+=×*÷^]\s+[-+]?\d")
# A range "N-M" (N < M, N without a leading zero) is a quantity when a unit follows it ("4000-6000
# pounds", "1500-2000 kcal") or when both ends are round hundreds ("8000-10000"). Not "030-1234567 in
# Berlin": a trunk prefix starts with 0, and "in" is no unit here.
_RANGE_RE = re.compile(r"(\d+)\s*-\s*(\d+)")
_UNIT_AFTER_RE = re.compile(
    r"\s*(?:%|°|‰|\$|€|£|"
    r"(?:pounds?|lbs?|kg|kilos?|kilograms?|grams?|g|mg|tons?|tonnes?|ounces?|oz|stones?|"
    r"km|kilometers?|kilometres?|m|meters?|metres?|cm|mm|nm|miles?|mi|feet|foot|ft|inch(?:es)?|yards?|yd|"
    r"years?|yrs?|months?|weeks?|days?|hours?|hrs?|h|minutes?|mins?|seconds?|secs?|ms|bce?|"
    r"dollars?|usd|eur(?:os?)?|gbp|brl|reais|cents?|"
    r"calories|kcal|cal|kj|joules?|watts?|w|kw|kwh|mw|volts?|v|mah|amps?|rpm|hz|khz|mhz|ghz|"
    r"bytes?|kb|mb|gb|tb|bits?|kbps|mbps|gbps|"
    r"people|persons|users|employees|words|pages|steps|points|units|items|times|degrees|percent|"
    r"anos|meses|semanas|dias|horas|minutos|segundos|quilos|gramas|metros|quil[ôo]metros|pessoas|palavras|"
    r"p[áa]ginas|graus|por\s*cento)\b)",
    re.IGNORECASE,
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
    """One span of PII: ``entity_type`` is the placeholder type (``EMAIL``, ``CPF``, ...).

    ``identifying`` is False for a documentation value in documentation text (an address at a
    reserved domain, or in a documentation IP range, in a text that names such values twice or more:
    ``checksums.documentation_text``): it is masked like any other, but is no PII signal (not counted
    in ``MaskedText.entities``, so no guardrail hit and no ``pii_leak``).
    """

    entity_type: str
    start: int
    end: int
    score: float
    identifying: bool = True


@dataclass(slots=True)
class MaskedText:
    """Masked, possibly truncated text; ``entities`` counts the placeholders kept in ``text``, those
    of documentation values left out (``PiiFinding.identifying``)."""

    text: str
    entities: dict[str, int] = field(default_factory=dict)
    truncated: bool = False


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, validating the domain against the bundled suffix snapshot."""

    def validate_result(self, pattern_text: str) -> bool:  # noqa: D102
        # The domain alone: Presidio's local part takes "/", and "sales/ana@acme.com" read whole as a
        # URL has a path and no host, so the address was dropped and stored in clear.
        return _TLD_EXTRACT(pattern_text.rpartition("@")[2]).fqdn != ""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        for r in results:  # "Contact:\nana@x.com" in JSON: the escape's n is not the address's
            if r.start > 0 and text[r.start - 1] == "\\" and text[r.start] in "ntr":
                r.start += 1
            at = text.find("@", r.start, r.end)
            slash = text.rfind("/", r.start, at) if at > 0 else -1
            if slash >= 0:  # "sales/ana@acme.com": the address starts after the slash
                r.start = slash + 1
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
    """Presidio's IPv4/IPv6 recognizer, minus dotted quads introduced as a version ("version 1.2.3.4")
    and minus addresses that name no host (``_names_no_host``: netmasks, loopback, ...)."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not _VERSION_BEFORE_RE.search(text[max(0, r.start - 16):r.start])
                and not _names_no_host(text[r.start:r.end])]


_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this network", and wildcard masks (0.0.0.255)
_DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32",  # RFC 5737, RFC 3849
))


def _ip_of(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``value`` (CIDR allowed) names, an IPv4-mapped IPv6 one as its IPv4; None if invalid."""
    try:
        ip = ipaddress.ip_interface(value).ip
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _names_no_host(value: str) -> bool:
    """An IP that is no one's: a netmask (255.255.255.0, contiguous ones then zeros), loopback
    (127.0.0.1, ::1), unspecified or "this network" (0.0.0.0, 0.0.0.0/8), multicast or reserved
    (224/4, 240/4 with the broadcast 255.255.255.255). Private ranges (10/8, 172.16/12,
    192.168/16) are kept: they map a company's internal infrastructure."""
    ip = _ip_of(value)
    if ip is None:
        return False
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _THIS_NETWORK:
            return True
        inverse = int(ip) ^ 0xFFFFFFFF
        return "/" not in value and inverse & (inverse + 1) == 0  # 255.255.0.0, 255.255.255.252, ...
    return False


def _documentation_value(entity_type: str, value: str) -> bool:
    """An e-mail address at a reserved domain (RFC 2606/6761) or an IP in a documentation range."""
    if entity_type == "EMAIL":
        return reserved_domain(value.rpartition("@")[2])
    if entity_type == "IP_ADDRESS":
        ip = _ip_of(value)
        return ip is not None and any(ip in net for net in _DOCUMENTATION_NETWORKS if net.version == ip.version)
    return False


class _PhoneRecognizer(PhoneRecognizer):
    """phonenumbers-based phones (valid for one of ``REGIONS``), rescored by how they are written.

    ``+55 11 98765-4321`` or ``(415) 555-0132`` score 0.5; a bare digit run such as ``8005551234``
    (an order or ticket number as often as a phone) scores 0.2 and needs a context word. Dates,
    ISBN-, CPF- and SSN-shaped strings, dotted quads, numbers right after an identifier noun
    ("order", "invoice", "pedido", "nº", "#"), decimals and arithmetic on them, and numeric ranges
    (``_not_a_phone``) are dropped: phonenumbers accepts all of them.
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
                    if (start, end) in found or _not_a_phone(text, start, end):
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


def _not_a_phone(text: str, start: int, end: int) -> bool:
    """``text[start:end]``, which phonenumbers accepts as a phone, is something else."""
    raw = text[start:end]
    if _NOT_A_PHONE_RE.fullmatch(raw.lstrip("+ ")) or _NOT_A_PHONE_BEFORE_RE.search(text[max(0, start - 24):start]):
        return True
    if _QUAD_IN_RE.search(raw):
        return True
    if _DECIMAL_IN_RE.search(raw) and not _AREA_CODE_RE.match(raw):  # "0.610865 - 0.436332"
        return True
    before, after = text[max(0, start - 8):start], text[end:end + 8]
    # a fragment of a longer number: "0.93456712" read from its "93456712", or "12345678.5"
    if (before[-1:] == "." and before[-2:-1].isdigit()) or (after[:1] == "." and after[1:2].isdigit()):
        return True
    if _OPERATOR_BEFORE_RE.search(before) or _OPERATOR_AFTER_RE.match(after) or _OPERATOR_IN_RE.search(raw):
        return True
    span = _RANGE_RE.fullmatch(raw)
    if span is not None:
        low, high = int(span.group(1)), int(span.group(2))
        if low < high and not span.group(1).startswith("0") and (_UNIT_AFTER_RE.match(text, end) or (low % 100 == 0 and high % 100 == 0)):
            return True
    return False


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
        findings = resolve_overlaps(
            PiiFinding(PLACEHOLDERS[r.entity_type], r.start, r.end, r.score) for r in results if r.end > r.start
        )
        documentation = [i for i, f in enumerate(findings)
                         if _documentation_value(f.entity_type, text[f.start:f.end])]
        if documentation and documentation_text(text):  # sample code or docs: masked, but no one's
            for i in documentation:
                findings[i] = replace(findings[i], identifying=False)
        return findings

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
            for s, e, _, _ in spans:
                if s < cut < e:
                    cut = s
                    break
            out = out[:cut] + ELLIPSIS
            spans = [sp for sp in spans if sp[1] <= cut]
        entities = Counter(t for _, _, t, identifying in spans if identifying)
        return MaskedText(text=out, entities=dict(entities), truncated=truncated)


def _replace(text: str, findings: list[PiiFinding]) -> tuple[str, list[tuple[int, int, str, bool]]]:
    """``text`` with each finding replaced, and the (start, end, type, identifying) of each
    placeholder in it."""
    parts: list[str] = []
    spans: list[tuple[int, int, str, bool]] = []
    pos = out_len = 0
    for f in findings:
        parts.append(text[pos:f.start])
        out_len += f.start - pos
        placeholder = f"[{f.entity_type}]"
        spans.append((out_len, out_len + len(placeholder), f.entity_type, f.identifying))
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
