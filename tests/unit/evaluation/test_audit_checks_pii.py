"""Audit of the checks, reference metrics and PII masking on realistic LLM answers.

Each regression test says in its docstring what the code did before the fix; the rest fill gaps
(behaviour that could break and was not tested).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from infersight.evaluation.checks import (
    check_json,
    check_pii_leak,
    check_refusal,
    check_repetition,
    repetition_stats,
    run_checks,
)
from infersight.evaluation.pii import ELLIPSIS, PLACEHOLDER_RE, PiiMasker, default_masker
from infersight.evaluation.reference import normalize_answer, rouge_l, rouge_tokens, token_f1
from infersight.model import EvalTask


@pytest.fixture(scope="module")
def masker() -> PiiMasker:
    return default_masker()


def task(**kw: Any) -> EvalTask:
    base: dict[str, Any] = dict(trace_id="a" * 32, span_id="b" * 16, tenant_id="t1", model_id="m1",
                                started_at="2025-01-02T03:04:05+00:00", status_code=200, finish_reason="stop",
                                prompt_text="question?", completion_text="A fine answer.")
    base.update(kw)
    return EvalTask(**base)


def dims(eval_task: EvalTask) -> dict[str, Any]:
    return {r.dimension: r for r in run_checks(eval_task)}


# ---- refusal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "I'm unable to help with that.",
    "I\u2019m not able to help with that request.",
    "I'm sorry, but I'm not able to provide that.",
    "Sorry, as an AI language model, I'm unable to browse or access external links.",
])
def test_contracted_i_am_refusals_are_detected(text: str) -> None:
    """Before: the patterns read "i 'm unable" (a space after "i"), so the contraction, the way
    models actually write it, never matched and these refusals passed as answers."""
    assert (check_refusal(text).label, check_refusal(text).score) == ("fail", 0.0)


@pytest.mark.parametrize("text", [
    "I won't be able to help with that.",
    "I cannot and will not provide instructions for making weapons.",
    "I can't and won't help with that.",
    "I'm not going to help with that.",
    "I refuse to help with that request.",
    "Não posso te ajudar com isso.",
    "No te puedo ayudar con eso.",
])
def test_common_refusal_phrasings_are_detected(text: str) -> None:
    """Before: each of these common phrasings (compound modal, "not going to", a clitic pronoun
    between the negation and the verb in Portuguese and Spanish) passed as a normal answer."""
    assert check_refusal(text).label == "fail"


@pytest.mark.parametrize("text", [
    'Great question! Many users say "I can\'t help with that" when a chatbot refuses; here is how to fix it.',
    "If the model replies \u201cI'm sorry, but I cannot help with that\u201d, retry with a clearer prompt.",
    "Sure, here's a polite way to decline: \"I'm sorry, but I can't attend the meeting.\"",
    "Here is a template: 'Unfortunately, I am unable to attend.'",
    "Q: What should a bot say to harmful requests?\nA: \"I can't help with that.\"",
    "```python\nraise PermissionError(\"I cannot do that\")\n```",
    "> I'm sorry, but I can't help with that.\n\nThat is a typical refusal message from a model.",
    "Use `I can't help with that` as the fallback string.",
])
def test_quoted_refusals_are_not_refusals(text: str) -> None:
    """Before: a refusal phrase the answer only quotes (dialogue, a template, code, a block quote)
    near the start was counted as the model refusing."""
    assert check_refusal(text).label == "pass"


def test_quoting_does_not_hide_a_real_refusal() -> None:
    assert check_refusal('I can\'t help with "jailbreak" prompts.').score == 0.0
    assert check_refusal("I'm sorry, but I can't write the user's password reset tool.").score == 0.0
    partial = check_refusal("I can't give legal advice. However, here is what 'adverse possession' usually means: "
                            "a person who occupies land openly for many years may gain title to it.")
    assert (partial.label, partial.score) == ("fail", 0.5)


# ---- repetition -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '{"sentiments": ["positive", "positive", "positive", "positive", "positive", "negative"]}',
    '[{"label": "positive"}, {"label": "positive"}, {"label": "positive"}, {"label": "positive"}]',
    '```json\n{"flags": [false, false, false, false, false, true]}\n```',
    "Supported: true, true, true, true, true, false.",
    "| Model | Q1 | Q2 | Q3 | Q4 | Q5 |\n|---|---|---|---|---|---|\n| A | N/A | N/A | N/A | N/A | N/A |",
])
def test_repeated_data_values_are_not_loops(text: str) -> None:
    """Before: JSON-mode answers with identical labels or records, boolean lists and tables of
    N/A cells failed as degeneration loops ("a phrase of 4 tokens repeated 5 times")."""
    out = check_repetition(text)
    assert out.label == "pass", out


def test_loop_inside_a_json_string_value_still_fails() -> None:
    out = check_repetition('{"answer": "The capital is Paris Paris Paris Paris.", "confidence": "high"}')
    assert out.label == "fail" and out.explanation.startswith("JSON string values:")
    assert check_repetition('{"ids": [1, 2, 3]}').label == "pass"


def test_cjk_degeneration_loops_are_found() -> None:
    """Before: Chinese/Japanese have no spaces, so a whole run was one token and a loop inside it
    ("好的好的好的...", "的的的的...") was invisible: these passed with score 1.0."""
    for text in ("答案是" + "好的" * 30, "这是一个问题" + "的" * 40, "はい、" + "そうですね" * 12):
        out = check_repetition(text)
        assert out.label == "fail", (text, out)
        assert out.score < 0.5


@pytest.mark.parametrize("text", [
    "哈哈哈，这个问题很有意思。",  # laughter: one syllable three times
    "亚马逊雨林覆盖了南美洲亚马逊盆地的大部分地区。该盆地面积七百万平方公里，其中雨林约占五百五十万平方公里。",
    "東京は日本の首都です。人口は約千四百万人で、世界有数の大都市です。",
])
def test_natural_cjk_text_passes(text: str) -> None:
    assert check_repetition(text).label == "pass", repetition_stats(text)


@pytest.mark.parametrize("text", [
    "def sign(x):\n    if x > 0:\n        return 1\n    if x < 0:\n        return -1\n    return 0\n\n"
    "assert sign(1) == 1\nassert sign(2) == 1\nassert sign(3) == 1\nassert sign(-4) == -1\n",
    "INSERT INTO t VALUES (1, 'a');\nINSERT INTO t VALUES (2, 'b');\nINSERT INTO t VALUES (3, 'c');\n"
    "INSERT INTO t VALUES (4, 'd');",
    "1. Preheat the oven.\n2. Mix the flour.\n3. Add the eggs.\n4. Bake it.\n5. Serve it.\n",
    "Row, row, row your boat,\nGently down the stream.\nMerrily, merrily, merrily, merrily,\nLife is but a dream.\n",
    "We will, we will rock you\nWe will, we will rock you\n",
])
def test_legitimate_structure_passes(text: str) -> None:
    """Gap: code with repeated lines, SQL, numbered steps and a song's refrain are not loops."""
    assert check_repetition(text).label == "pass", repetition_stats(text)


def test_degeneration_at_the_end_of_a_good_answer_fails() -> None:
    """Gap: a model that answers well and then loops until the token limit."""
    text = "The capital of France is Paris. It is known for the Eiffel Tower and " + "and the " * 30
    assert check_repetition(text).label == "fail"


# ---- invalid_json -------------------------------------------------------------------------------

def test_json_cut_at_the_token_limit_is_flagged_once() -> None:
    """Before: finish_reason=length with JSON mode gave two failures for one fault: `truncated`
    and `invalid_json` (the cut JSON cannot parse)."""
    rows = dims(task(finish_reason="length", completion_text='{"items": [1, 2, 3', json_requested=True))
    assert rows["truncated"].label == "fail"
    assert "invalid_json" not in rows
    whole = dims(task(finish_reason="length", completion_text='{"items": [1, 2, 3]}', json_requested=True))
    assert whole["invalid_json"].label == "pass"
    stopped = dims(task(finish_reason="stop", completion_text='{"items": [1, 2, 3', json_requested=True))
    assert stopped["invalid_json"].label == "fail"


@pytest.mark.parametrize(("text", "score"), [
    ('```JSON\r\n[{"a": 1},\r\n {"b": 2}]\r\n```\n', 0.5),  # top-level array, CRLF, upper-case tag
    ('```\n{"a": "```"}\n```', 0.5),  # a fence inside a string value
    ('[{"a": 1}, {"b": 2}]\n\n   ', 1.0),
    ('Here is the JSON:\n```json\n{"a": 1}\n```', 0.0),  # prose before the fence: a client's parse fails
    ('{"a": 1}\n{"b": 2}', 0.0),  # JSON lines are not one JSON document
    ('\ufeff{"a": 1}', 0.0),
])
def test_json_shapes(text: str, score: float) -> None:
    """Gap: the shapes JSON-mode answers take in practice."""
    out = check_json(text)
    assert out is not None and out.score == score, out


# ---- reference metrics --------------------------------------------------------------------------

def test_cjk_reference_metrics_are_per_character() -> None:
    """Before: a Chinese or Japanese answer was one token, so any difference from the reference
    scored 0.0 on both metrics (here they were 0.0, 0.0, 0.0)."""
    # Same 8 characters (bag: F1 1.0); LCS "法国的首都" = 5 of 8 each way.
    assert token_f1("巴黎是法国的首都", "法国的首都是巴黎") == pytest.approx(1.0)
    assert rouge_l("巴黎是法国的首都", "法国的首都是巴黎") == pytest.approx(5 / 8)
    # 5 of the reference's 8 characters, in order: P = 1, R = 5/8, F = 10/13 on both.
    assert token_f1("巴黎是首都", "巴黎是法国的首都") == pytest.approx(10 / 13)
    assert rouge_l("巴黎是首都", "巴黎是法国的首都") == pytest.approx(10 / 13)
    # Japanese: LCS "日本の首都です" = 7 of 10 each way.
    assert rouge_l("東京は日本の首都です", "日本の首都は東京です") == pytest.approx(0.7)
    assert rouge_tokens("GPT-4是模型") == ["gpt", "4", "是", "模", "型"]
    assert normalize_answer("GPT-4是模型。") == "gpt4 是 模 型"


@pytest.mark.parametrize(("pred", "ref"), [
    ("caf\u00e9 cr\u00e8me", "cafe\u0301 cre\u0300me"),  # precomposed vs combining accents (NFC vs NFD)
    ("ＡＢＣ ２０２４", "abc 2024"),  # full-width forms
    ("Straße", "STRASSE"),
])
def test_unicode_forms_of_the_same_text_score_one(pred: str, ref: str) -> None:
    """Before: plain lower() kept these apart, so the same visible words scored 0.0."""
    assert token_f1(pred, ref) == pytest.approx(1.0)
    assert rouge_l(pred, ref) == pytest.approx(1.0)


def test_accents_punctuation_and_case_hand_computed() -> None:
    """Gap: accents still distinguish words; punctuation and case do not."""
    assert token_f1("Não, é Lisboa!", "não é lisboa") == pytest.approx(1.0)
    # "pais"/"país" and "e"/"é" differ: 2 of 4 tokens shared each way -> P = R = F1 = 2/4.
    assert token_f1("o pais e grande", "o país é grande") == pytest.approx(2 / 4)
    assert rouge_l("Hello, WORLD!", "hello world") == pytest.approx(1.0)
    assert token_f1("", "Paris") == 0.0 and rouge_l("Paris", "") == 0.0


# ---- PII ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "masked"), [
    ("IBAN de89 3704 0044 0532 0130 00, thanks", "IBAN [IBAN], thanks"),
    ("my iban is gb82west12345698765432.", "my iban is [IBAN]."),
    ("Pode transferir para pt50 0002 0123 1234 5678 9015 4", "Pode transferir para [IBAN]"),
])
def test_lower_case_iban_is_masked(masker: PiiMasker, text: str, masked: str) -> None:
    """Before: presidio's IBAN pattern is upper case only, so an IBAN pasted in lower case was left
    in the clear (in the store and in front of the judge)."""
    assert masker.mask(text).text == masked


def test_iban_with_a_word_after_it_still_masked(masker: PiiMasker) -> None:
    assert masker.mask("IBAN BE68539007547034 received the payment").text == "IBAN [IBAN] received the payment"
    assert masker.mask("de89 3704 0044 0532 0130 01 is wrong").text == "de89 3704 0044 0532 0130 01 is wrong"


@pytest.mark.parametrize("text", [
    "Order id 4539578763621486 confirmed.",
    "Your order #4532015112830366 has shipped.",
    "Tracking number 4000000000000002 for your parcel.",
    "Pedido nº 4539578763621486 enviado.",
])
def test_luhn_valid_order_ids_are_not_cards(masker: PiiMasker, text: str) -> None:
    """Before: a Luhn-valid, Visa-shaped order or tracking id became [CARD_NUMBER], so a support
    bot's answer confirming an order failed `pii_leak` as a card leak."""
    out = masker.mask(text)
    assert out.text == text
    assert check_pii_leak(out.text).label == "pass"


@pytest.mark.parametrize(("text", "masked"), [
    ("order paid with card 4539578763621486", "order paid with card [CARD_NUMBER]"),
    ("order 4539 5787 6362 1486", "order [CARD_NUMBER]"),  # grouped like a card: written as one
    ("my card is 4539578763621486", "my card is [CARD_NUMBER]"),
])
def test_cards_near_order_words_are_still_masked(masker: PiiMasker, text: str, masked: str) -> None:
    assert masker.mask(text).text == masked


def test_digit_runs_inside_hex_digests_are_not_cards_or_cpfs(masker: PiiMasker) -> None:
    """Before: "a4111111111111111f" became "a[CARD_NUMBER]f": part of a hash masked, its letters left."""
    for text in ("sha a4111111111111111f done", "digest a4012888888881881fe09c3b7d", "id x52998224725y"):
        assert masker.mask(text).text == text
    assert masker.mask("card:4111111111111111.").text == "card:[CARD_NUMBER]."


MIXED = ("mail ana@example.com, card 4111 1111 1111 1111, CPF 529.982.247-25, "
         "IBAN DE89 3704 0044 0532 0130 00, SSN 536-22-8190, +55 11 98765-4321, "
         "https://x.example.com/a?b=1, 203.0.113.42, conta 12345-6")


def test_masking_is_idempotent(masker: PiiMasker) -> None:
    """Gap: a masked text masked again (a retried task, a completion that quotes a masked prompt)
    is unchanged, and placeholders next to each other or to text are not re-typed."""
    once = masker.mask(MIXED).text
    assert len(PLACEHOLDER_RE.findall(once)) == 9
    assert masker.mask(once).text == once
    for text in ("[EMAIL][PHONE] [CARD_NUMBER]-[CPF] see [URL]/path and [IP_ADDRESS]:8080",
                 "mailto:[EMAIL]", "http://[IP_ADDRESS]/x", "acct [ACCOUNT_NUMBER] card [CARD_NUMBER] 1111"):
        assert masker.mask(text).text == text


@pytest.mark.parametrize("value", [
    "4111 1111 1111 1111", "4111111111111111", "DE89 3704 0044 0532 0130 00", "529.982.247-25", "+55 11 98765-4321",
])
def test_truncation_boundary_never_leaks_part_of_a_value(masker: PiiMasker, value: str) -> None:
    """Gap: a value that starts anywhere around the 2,000-character cut leaves no four of its
    digits in the output, no half placeholder, and the output fits."""
    digits = re.sub(r"\D", "", value)
    for offset in range(1975, 2005):
        out = masker.mask("x" * offset + " " + value + " tail " + "y" * 300, max_chars=2000)
        assert len(out.text) <= 2000 and out.text.endswith(ELLIPSIS)
        assert not any(digits[i:i + 4] in out.text for i in range(len(digits) - 3)), offset
        assert re.search(r"\[[A-Z_]*$", out.text[:-1]) is None, offset
        assert out.entities == ({} if "[" not in out.text else {PLACEHOLDER_RE.search(out.text).group(1): 1})


@pytest.mark.parametrize("text", ["SSN 000-12-3456", "SSN 666-12-3456", "SSN 912-34-5678", "SSN: 536-22-0000"])
def test_ssns_the_ssa_never_issues_stay_visible(masker: PiiMasker, text: str) -> None:
    """Gap: through the whole masker (not only the recognizer), invalid SSNs are not masked."""
    assert masker.mask(text).text == text


def test_cpf_with_and_without_punctuation(masker: PiiMasker) -> None:
    assert masker.mask("CPF 529.982.247-25 e 52998224725").text == "CPF [CPF] e [CPF]"
    assert masker.mask("CPF 529.982.247-24").text == "CPF 529.982.247-24"  # wrong check digit
