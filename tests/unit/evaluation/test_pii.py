"""PiiMasker: placeholders, overlaps, thresholds, masking before truncation, offline use, and the corpus."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import pytest
from presidio_analyzer.predefined_recognizers import UrlRecognizer

from infersight.evaluation import pii
from infersight.evaluation.guardrails import guardrail_hits
from infersight.evaluation.pii import (
    ELLIPSIS,
    PLACEHOLDER_RE,
    PLACEHOLDERS,
    MaskedText,
    PiiFinding,
    PiiMasker,
    default_masker,
    resolve_overlaps,
)

CORPUS = Path(__file__).resolve().parents[2] / "data" / "pii_corpus.jsonl"


@pytest.fixture(scope="module")
def masker() -> PiiMasker:
    return default_masker()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mail ana.souza@example.com.br now", "mail [EMAIL] now"),
        ("call (415) 555-0132 today", "call [PHONE] today"),
        ("card 4111 1111 1111 1111.", "card [CARD_NUMBER]."),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
        ("SSN 536-22-8190", "SSN [US_SSN]"),
        ("CPF 529.982.247-25", "CPF [CPF]"),
        ("conta corrente 45678-9", "conta corrente [ACCOUNT_NUMBER]"),
        ("from 203.0.113.42:", "from [IP_ADDRESS]:"),
        ("see https://bank.example.com/reset?t=1.", "see [URL]."),
        ("btc 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "btc [CRYPTO_WALLET]"),
    ],
)
def test_each_type_gets_its_placeholder(masker: PiiMasker, text: str, masked: str) -> None:
    out = masker.mask(text)
    assert out.text == masked
    assert out.entities == {PLACEHOLDER_RE.search(masked).group(1): 1}
    assert not out.truncated


def test_placeholder_re_matches_every_placeholder_and_nothing_else() -> None:
    for placeholder in PLACEHOLDERS.values():
        assert PLACEHOLDER_RE.fullmatch(f"[{placeholder}]")
    assert PLACEHOLDER_RE.search("[PERSON] [email] [EMAIL_ADDRESS] EMAIL") is None


def test_email_beats_the_url_pattern_inside_it(masker: PiiMasker) -> None:
    text = "write to ana@example.com please"
    # The overlap is real: presidio's stock URL recognizer matches the e-mail's domain.
    stock = UrlRecognizer().analyze(text, ["URL"])
    assert [text[r.start:r.end] for r in stock] == ["example.com"]
    out = masker.mask(text)
    assert out.text == "write to [EMAIL] please" and out.entities == {"EMAIL": 1}


def test_resolve_overlaps_merges_to_union_named_by_longest() -> None:
    email = PiiFinding("EMAIL", 9, 24, 1.0)
    url_in_email = PiiFinding("URL", 13, 24, 0.5)
    assert resolve_overlaps([url_in_email, email]) == [email]
    # A URL that carries an e-mail in its query is the longer span: it stays one [URL].
    url = PiiFinding("URL", 0, 40, 0.6)
    assert resolve_overlaps([PiiFinding("EMAIL", 20, 40, 1.0), url]) == [url]
    # Partial overlap: the union is masked (neither half is left visible), named by the longer one.
    merged = resolve_overlaps([PiiFinding("ACCOUNT_NUMBER", 10, 18, 0.5), PiiFinding("PHONE", 5, 15, 0.5)])
    assert merged == [PiiFinding("PHONE", 5, 18, 0.5)]
    # Same span: priority decides (checksummed CPF over a context-bound account number).
    same = resolve_overlaps([PiiFinding("ACCOUNT_NUMBER", 0, 11, 0.5), PiiFinding("CPF", 0, 11, 1.0)])
    assert same == [PiiFinding("CPF", 0, 11, 1.0)]
    # Disjoint findings stay apart and sorted.
    a, b = PiiFinding("EMAIL", 30, 40, 1.0), PiiFinding("PHONE", 0, 10, 0.5)
    assert resolve_overlaps([a, b]) == [b, a]


@pytest.mark.parametrize(
    "text",
    [
        "Order 2024-01-15 shipped on 15/01/2024 at 10:30.",
        "Ticket 8005551234 is open.",
        "Invoice 12345678901 and order 98765432.",
        "ISBN 978-3-16-148410-0, version 1.2.3.4, total $1,299.00.",
        "Edit setup.py, see example.com.",
        "btc 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb (last character changed: base58 checksum fails)",
        "Build 1.2.3.4 and version 10.0.0.1 are released.",
    ],
)
def test_dates_ids_and_bare_numbers_are_left_alone(masker: PiiMasker, text: str) -> None:
    assert masker.find(text) == []
    assert masker.mask(text).text == text


def test_context_words_lift_weak_shapes_over_the_threshold(masker: PiiMasker) -> None:
    assert masker.find("ref 8005550143 done") == []
    assert [f.entity_type for f in masker.find("call 8005550143 done")] == ["PHONE"]
    assert masker.find("ref 12345678 done") == []
    assert masker.mask("my account number is 12345678").text == "my account number is [ACCOUNT_NUMBER]"
    assert masker.find("number 536228190") == []
    assert masker.mask("SSN: 536228190").text == "SSN: [US_SSN]"


def test_mask_counts_each_placeholder(masker: PiiMasker) -> None:
    text = "a@empresa.com.br, b@firma.de, +55 11 98765-4321 e CPF 529.982.247-25"
    out = masker.mask(text)
    assert out.text == "[EMAIL], [EMAIL], [PHONE] e CPF [CPF]"
    assert out.entities == {"EMAIL": 2, "PHONE": 1, "CPF": 1}
    assert [f.entity_type for f in masker.find(text)] == ["EMAIL", "EMAIL", "PHONE", "CPF"]


def test_mask_before_truncate_never_leaks_a_cut_number(masker: PiiMasker) -> None:
    text = "x" * 1990 + " 4111 1111 1111 1111 tail"
    out = masker.mask(text, max_chars=2000)
    assert out.truncated
    assert len(out.text) <= 2000 and out.text.endswith(ELLIPSIS)
    assert "4111" not in out.text and "41" not in out.text[1980:]
    assert "[CARD" not in out.text  # the cut fell inside the placeholder: it moved before it
    assert out.entities == {}


def test_truncation_keeps_whole_placeholders_and_counts_only_kept_ones(masker: PiiMasker) -> None:
    text = "mail a@empresa.com.br " + "y" * 50 + " and b@empresa.com.br"
    out = masker.mask(text, max_chars=40)
    assert out.truncated and len(out.text) == 40
    assert out.text == "mail [EMAIL] " + "y" * 26 + ELLIPSIS
    assert out.entities == {"EMAIL": 1}


def test_short_text_is_not_truncated(masker: PiiMasker) -> None:
    out = masker.mask("ok", max_chars=2)
    assert out == MaskedText(text="ok", entities={}, truncated=False)
    assert masker.mask("") == MaskedText(text="", entities={}, truncated=False)
    with pytest.raises(ValueError, match="max_chars"):
        masker.mask("x", max_chars=0)


def test_long_urls_shrink_so_the_window_grows_until_the_output_is_full(masker: PiiMasker) -> None:
    text = " ".join("https://example.com/" + "a" * 300 for _ in range(30))  # ~9,000 chars
    out = masker.mask(text, max_chars=100)
    assert out.truncated and "aaa" not in out.text
    assert 100 - len("[URL] ") <= len(out.text) <= 100
    assert out.entities["URL"] == out.text.count("[URL]") >= 15


def test_pii_far_beyond_the_cut_does_not_matter_and_is_not_analysed(masker: PiiMasker, monkeypatch) -> None:
    seen: list[int] = []
    real_find = PiiMasker.find

    def spy(self: PiiMasker, text: str) -> list[PiiFinding]:
        seen.append(len(text))
        return real_find(self, text)

    monkeypatch.setattr(PiiMasker, "find", spy)
    out = masker.mask("word " * 20_000 + "a@example.com", max_chars=2000)
    assert out.truncated and out.entities == {}
    assert seen == [2000 + pii.ANALYSIS_MARGIN]


def test_default_masker_is_built_once() -> None:
    assert default_masker() is default_masker()


def test_masker_works_with_the_network_blocked(monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = PiiMasker()  # builds its own engine with the network unavailable
    assert fresh.mask("ana@empresa.com.br e bob@uni.ac.uk").text == "[EMAIL] e [EMAIL]"
    assert pii._TLD_EXTRACT.suffix_list_urls == ()
    assert pii._TLD_EXTRACT._cache.enabled is False  # no suffix-list cache written to disk


def _corpus_scores(masker: PiiMasker) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Entity-level true positives, false positives and false negatives per type.

    A gold value is found when a predicted span of the same type covers it; a predicted span that
    covers no gold value of its type is a false positive.
    """
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        text = case["text"]
        predicted = masker.find(text)
        matched: set[PiiFinding] = set()
        for gold in case["entities"]:
            start = text.index(gold["value"])
            end = start + len(gold["value"])
            hits = [p for p in predicted if p.entity_type == gold["type"] and p.start <= start and p.end >= end]
            if hits:
                tp[gold["type"]] += 1
                matched.update(hits)
            else:
                fn[gold["type"]] += 1
        for p in predicted:
            if p not in matched:
                fp[p.entity_type] += 1
    return tp, fp, fn


def test_corpus_is_large_and_covers_every_type() -> None:
    cases = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    assert len(cases) >= 120
    assert sum(1 for c in cases if not c["entities"]) >= 40
    types = Counter(e["type"] for c in cases for e in c["entities"])
    assert set(types) == set(PLACEHOLDERS.values())
    assert all(n >= 2 for n in types.values())


def test_corpus_precision_and_recall(masker: PiiMasker) -> None:
    tp, fp, fn = _corpus_scores(masker)
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    precision = total_tp / (total_tp + total_fp)
    recall = total_tp / (total_tp + total_fn)
    per_type = {
        t: (tp[t] / max(1, tp[t] + fp[t]), tp[t] / max(1, tp[t] + fn[t])) for t in sorted(set(tp) | set(fp) | set(fn))
    }
    assert precision >= 0.95, (precision, dict(fp))
    assert recall >= 0.95, (recall, dict(fn))
    weak = {t: pr for t, pr in per_type.items() if min(pr) < 0.8}
    assert not weak, weak


def test_a_url_stops_at_a_json_escape_so_masked_json_still_parses() -> None:
    """The URL pattern swallowed the backslash of an escaped quote ending a JSON string: the
    masked answer '"[URL]rates\\""' no longer parsed (request_content, the judge's view)."""
    import orjson

    from infersight.evaluation.pii import default_masker

    out = default_masker().mask('{"source": "https://example.com/search?q=\\"rates\\""}')
    assert orjson.loads(out.text) == {"source": '[URL]"rates"'}


# ---- numbers that are not phones, addresses that name no host, documentation values --------------------

@pytest.mark.parametrize("text", [
    "Circumference = π × 10 cm = 31.41592654 cm",  # HaluEval general::1343
    "Δφ = φ2 - φ1 = 0.610865 - 0.436332 = 0.174533",  # general::2713: arithmetic on decimals
    "converted to radians = 0.436332\nnext",
    "= -1.658063 - (-1.396263) = -0.261800",
    "c) 4000-6000 pounds \nd) 8000-10000 pounds",  # general::4419: ranges with a unit
    "between 1500-3000 kg of cargo",
    "Accuracy: 0.93456712",
    "Rio de Janeiro: -22.9068467, -43.1728965",
    "v = 0.5 * 9.81 * 12.3456",
    "12345 × 678901 = 8381733345",
    "12345 * 678901 = 8381733345",  # a * between numbers is a product
    "(12345)*678901",
    "pi = 3.1415926535",
])
def test_decimals_arithmetic_and_ranges_are_not_phones(masker: PiiMasker, text: str) -> None:
    """Was: phonenumbers read a decimal ("31.41592654"), a difference of decimals or a range
    ("4000-6000 pounds") as a phone; the stored answer lost the numbers being checked."""
    assert [f for f in masker.find(text) if f.entity_type == "PHONE"] == []
    assert "[PHONE]" not in masker.mask(text).text


@pytest.mark.parametrize(("text", "masked"), [
    ("call +1 415.555.0132 now", "call [PHONE] now"),  # dots as group separators: two or more
    ("tel 01.23.45.67.89", "tel [PHONE]"),
    ("ligue (11) 98765.4321", "ligue [PHONE]"),  # one dot, after an area code in parentheses
    ("**+55 11 98765-4321**", "**[PHONE]**"),  # Markdown bold is no multiplication
    ("Contacts:\n* +1 415-555-0132\n* desk", "Contacts:\n* [PHONE]\n* desk"),  # nor a bullet
    ("Call *(415) 555-0132* now", "Call *[PHONE]* now"),  # nor italics
    ("a*b: 415-555-0132 *", "a*b: [PHONE] *"),
    ("<td>(415) 555-0132</td>", "<td>[PHONE]</td>"),
    ("Tel.: 213-555-0147; 213-555-0148", "Tel.: [PHONE]; [PHONE]"),
    ("phones: 11987654321,11912345678", "phones: [PHONE],[PHONE]"),
])
def test_phones_written_with_dots_or_markup_are_still_phones(masker: PiiMasker, text: str, masked: str) -> None:
    assert masker.mask(text).text == masked


@pytest.mark.parametrize("text", [
    "Valid subnet masks:\n1. 255.255.255.0\n2. 255.255.0.0\n3. 255.0.0.0\n4. 255.255.255.252",
    "open http://127.0.0.1:8000 or bind to 0.0.0.0:8080",
    "loopback ::1 and ::ffff:127.0.0.1, default route 0.0.0.0/0, 127.0.0.0/8",
    "mDNS joins 224.0.0.251; 240.0.0.1 is reserved; broadcast 255.255.255.255",
    "ACL wildcard 0.0.0.255 and 0.0.255.255",
])
def test_netmasks_loopback_and_other_non_hosts_are_not_ip_addresses(masker: PiiMasker, text: str) -> None:
    """Was: HaluEval general::1186 (a list of subnet masks) failed pii_leak as 7 leaked addresses, and
    "2. 255.255.0.0" became one [PHONE], list number included."""
    assert masker.find(text) == []
    assert masker.mask(text).text == text


@pytest.mark.parametrize(("text", "masked"), [
    ("gateway 192.168.1.1, mask 255.255.255.0", "gateway [IP_ADDRESS], mask 255.255.255.0"),  # private: kept
    ("allow 10.0.0.0/8 and 172.16.5.4", "allow [IP_ADDRESS] and [IP_ADDRESS]"),
    ("client 8.8.8.8 and 2606:4700:4700::1111", "client [IP_ADDRESS] and [IP_ADDRESS]"),
    ("mapped ::ffff:8.8.8.8", "mapped [IP_ADDRESS]"),
    ("link-local fe80::1ff:fe23:4567:890a", "link-local [IP_ADDRESS]"),
])
def test_private_and_public_addresses_are_still_masked(masker: PiiMasker, text: str, masked: str) -> None:
    out = masker.mask(text)
    assert out.text == masked
    assert out.entities == {"IP_ADDRESS": masked.count("[IP_ADDRESS]")}


SAMPLE_REQUESTS = """1. POST http://api.example.com/users
Content-Type: application/json

{"name": "John Doe", "email": "johndoe@example.com", "password": "mypassword"}

2. PUT http://api.example.com/users/123

name=Jane+Doe&email=janedoe@example.com&password=janepassword"""


def test_documentation_values_in_documentation_are_masked_but_not_counted(masker: PiiMasker) -> None:
    """HaluEval general::562: sample HTTP requests with johndoe@example.com (RFC 2606 reserves
    example.com: no one has a mailbox there) failed pii_leak as a leaked e-mail."""
    out = masker.mask(SAMPLE_REQUESTS)
    assert "johndoe@" not in out.text and out.text.count("[EMAIL]") == 2  # still masked: nothing shown
    assert "EMAIL" not in out.entities  # but no PII signal: no guardrail hit, no pii_leak
    emails = [f for f in masker.find(SAMPLE_REQUESTS) if f.entity_type == "EMAIL"]
    assert len(emails) == 2 and not any(f.identifying for f in emails)
    docs = masker.mask("Docs: 203.0.113.5 and 198.51.100.7, mail ops@infra.example.net")
    assert docs.text == "Docs: [IP_ADDRESS] and [IP_ADDRESS], mail [EMAIL]" and docs.entities == {}
    assert guardrail_hits(None, SAMPLE_REQUESTS, masker) == ["pii_completion:URL"]


@pytest.mark.parametrize(("text", "entities"), [
    ("Mail the answer to jane.doe@example.com please", {"EMAIL": 1}),  # one alone: a stand-in, counted
    ("request from 203.0.113.42", {"IP_ADDRESS": 1}),
    ("ana@example.com.br and bob@example.com.br", {"EMAIL": 2}),  # .com.br: an ordinary domain
    ("sample: johndoe@example.com at https://api.example.com; real: ana@empresa.com.br", {"EMAIL": 1, "URL": 1}),
    ("a@myexample.com and b@example.company.com", {"EMAIL": 2}),
])
def test_only_documentation_values_in_documentation_go_uncounted(masker: PiiMasker, text: str,
                                                                   entities: dict[str, int]) -> None:
    out = masker.mask(text)
    assert out.entities == entities
    assert "@" not in out.text and "203." not in out.text
