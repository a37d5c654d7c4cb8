"""Deterministic checks: each rule on positive and tricky negative cases, and run_checks' rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from infersight.evaluation import checks
from infersight.evaluation.checks import (
    check_empty,
    check_json,
    check_pii_leak,
    check_refusal,
    check_repetition,
    check_truncated,
    evaluator_version,
    placeholder_re,
    repetition_stats,
    run_checks,
    task_outcomes,
)
from infersight.model import EvalTask

NATURAL = (
    "The Amazon rainforest covers much of the Amazon basin of South America. The basin spans seven "
    "million square kilometres, of which the forest covers about five and a half million. The region "
    "includes territory belonging to nine nations. The majority of the forest is contained within "
    "Brazil, with sixty percent of the rainforest, followed by Peru with thirteen percent, Colombia "
    "with ten percent, and with minor amounts in Venezuela, Ecuador, Bolivia, Guyana, Suriname and "
    "French Guiana. The rainforest likely formed during the Eocene era. It appeared following a global "
    "reduction of tropical temperatures when the Atlantic Ocean had widened sufficiently to provide a "
    "warm, moist climate to the Amazon basin. The rainforest has been in existence for at least fifty-"
    "five million years, and most of the region remained free of savanna-type biomes at least until "
    "the current ice age, when the climate was drier and savanna more widespread. Following the "
    "Cretaceous-Paleogene extinction event, the extinction of the dinosaurs and the wetter climate may "
    "have allowed the tropical rainforest to spread out across the continent. From sixty-six to thirty-"
    "four million years ago, the rainforest extended as far south as forty-five degrees. Climate "
    "fluctuations during the last thirty-four million years have allowed savanna regions to expand "
    "into the tropics. During the Oligocene, for example, the rainforest spanned a relatively narrow "
    "band. It expanded again during the Middle Miocene, then retracted to a mostly inland formation at "
    "the last glacial maximum. However, the rainforest still managed to thrive during these glacial "
    "periods, allowing for the survival and evolution of a broad diversity of species. The forest is "
    "home to the largest river, the largest number of species, and the largest carbon store on land. "
    "Scientists estimate that the Amazon holds around three hundred and ninety billion individual trees "
    "divided into sixteen thousand species, and that one in ten known species on Earth lives there."
)


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    placeholder_re.cache_clear()
    evaluator_version.cache_clear()
    yield
    placeholder_re.cache_clear()
    evaluator_version.cache_clear()


def task(**kw: Any) -> EvalTask:
    base: dict[str, Any] = dict(trace_id="a" * 32, span_id="b" * 16, tenant_id="t1", model_id="m1",
                                started_at="2025-01-02T03:04:05+00:00", status_code=200, finish_reason="stop",
                                prompt_text="question?", completion_text="A fine answer.")
    base.update(kw)
    return EvalTask(**base)


def dims(rows: list[Any]) -> dict[str, Any]:
    return {r.dimension: r for r in rows}


# ---- refusal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "I can't help with that request.",
    "I can\u2019t help with that.",  # curly apostrophe
    "I'm sorry, but I cannot provide instructions for that.",
    "As an AI language model, I cannot browse the internet.",
    "Sorry, as an AI language model, I don't have the ability to access files.",
    "I must respectfully decline.",
    "Desculpe, mas não posso ajudar com isso.",
    "Como um modelo de linguagem, não posso fornecer aconselhamento médico.",
    "Lo siento, pero no puedo ayudarte con eso.",
    "Como modelo de lenguaje, no puedo dar opiniones personales.",
    "  \n I won't assist with creating malware.",
])
def test_refusal_detected(text: str) -> None:
    out = check_refusal(text)
    assert (out.label, out.score) == ("fail", 0.0), out


def test_partial_refusal_scores_half() -> None:
    text = ("I'm sorry, but I cannot create charts. However, here is a table of the population by year, "
            "with every year from 2000 to 2015 and the totals in the last row.")
    out = check_refusal(text)
    assert (out.label, out.score) == ("fail", 0.5)
    assert "partial" in out.explanation


@pytest.mark.parametrize("text", [
    "I can't wait to see what you build! Here is the plan.",
    "I can't believe how simple this is: just add salt.",
    "I can't help but notice that the loop never ends; fix the index.",
    "I'm sorry for the late reply! I can't wait to start on Monday.",
    "As an AI language model, I can provide you with sample code in Python.",
    "Não posso esperar para ver o resultado!",
    "No puedo creer lo fácil que es.",
    "Sure. " + "x" * 200 + " I can't help with that, said the wizard.",  # a refusal far from the start
    NATURAL,
])
def test_refusal_negatives(text: str) -> None:
    assert check_refusal(text).label == "pass"


def test_refusal_explanation_does_not_quote_content() -> None:
    out = check_refusal("I cannot help with the secret project Zephyr.")
    assert "Zephyr" not in out.explanation and "help" not in out.explanation


# ---- empty, truncated -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_and_whitespace_fail(text: str) -> None:
    assert check_empty(text).label == "fail"
    assert dims(run_checks(task(completion_text=text)))["empty"].label == "fail"


def test_missing_completion_on_2xx_is_empty_but_not_on_failure_or_unknown_status() -> None:
    assert dims(run_checks(task(completion_text=None)))["empty"].label == "fail"
    assert "empty" not in dims(run_checks(task(completion_text=None, status_code=0)))
    assert run_checks(task(completion_text=None, status_code=502, finish_reason=None)) == []
    assert check_empty("ok").label == "pass"


@pytest.mark.parametrize(("reason", "label"), [("length", "fail"), ("max_tokens", "fail"), ("stop", "pass"),
                                               ("tool_calls", "pass")])
def test_truncated(reason: str, label: str) -> None:
    assert check_truncated(reason).label == label
    assert dims(run_checks(task(finish_reason=reason)))["truncated"].label == label


def test_truncated_not_reported_without_finish_reason() -> None:
    assert "truncated" not in dims(run_checks(task(finish_reason=None)))


# ---- repetition ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind"), [
    ("the the the", "word"),
    ("I am. I am. I am.", "sentence"),
    ("The record was set by a whale whale whale that swam far.", "word"),
    ("I love the food , the nightlife , the nightlife , the nightlife , the nightlife , the nightlife", "short"),
    ("Hughes was sent off and then banned for three weeks after the incident " * 3, "long"),
])
def test_repetition_loops_fail(text: str, kind: str) -> None:
    out = check_repetition(text)
    assert out.label == "fail", out
    loop = repetition_stats(text).loop
    assert loop is not None and loop.kind == kind
    assert out.score < 1.0


def test_degenerate_2000_char_loop_scores_low() -> None:
    text = ("Here is the answer. " + "I am not sure. " * 200)[:2000]
    out = check_repetition(text)
    assert out.label == "fail" and out.score < 0.1


def test_long_repeated_paragraph_fails_on_3gram_share() -> None:
    paragraph = " ".join(f"word{i}" for i in range(60)) + ". "  # longer than the loop detector's period
    out = check_repetition(paragraph * 3)
    assert repetition_stats(paragraph * 3).loop is None
    assert out.label == "fail" and "3-grams" in out.explanation
    assert out.score == pytest.approx(1 - 118 / 178, abs=1e-3)  # 60 of 178 trigrams are distinct


@pytest.mark.parametrize("text", [
    NATURAL,
    "I am. I am.",  # twice is emphasis, not a loop
    "very very good",
    "Shopping list:\n- Milk: yes\n- Eggs: yes\n- Bread: yes\n- Butter: no\n- Cheese: yes\n",
    "| Name | Mon | Tue | Wed |\n| --- | --- | --- | --- |\n| Ana | - | - | - |\n| Bo | 3 | - | - |\n",
    "zeros = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
    "Valid masks: 255.255.255.0, 255.255.0.0 and 255.255.255.255.",
    "Blues: I (E) - I (E) - I (E) - I (E) - IV (A) - IV (A) - I (E) - I (E) - V (B7) - IV (A) - I (E)",
    "Monday:\n- 9:00 AM: Calculus lecture\n- 1:00 PM: Biology lab\n\nWednesday:\n- 9:00 AM: Calculus "
    "lecture\n- 1:00 PM: Biology lab\n\nFriday:\n- 10:00 AM: Chemistry\n",
])
def test_repetition_negatives(text: str) -> None:
    out = check_repetition(text)
    assert out.label == "pass", (out, repetition_stats(text))


def test_natural_long_text_scores_high() -> None:
    assert len(NATURAL) > 2000
    assert check_repetition(NATURAL).score > 0.95


def test_repetition_is_fast_on_large_inputs() -> None:
    loop = "I am. " * 10_000
    varied = " ".join(f"w{i % 997} x{i % 13}" for i in range(8_000))
    for text in (loop, varied, NATURAL):
        t0 = time.perf_counter()
        check_repetition(text)
        assert time.perf_counter() - t0 < 2.0  # capped at MAX_CHARS and O(n * MAX_PERIOD)


# ---- pii_leak ----------------------------------------------------------------------------------

def test_pii_placeholders_fail_with_types() -> None:
    masked = ["pii_completion:EMAIL", "pii_completion:PHONE", "pii_completion:CARD_NUMBER"]  # as mask_tasks adds
    out = check_pii_leak("Write to [EMAIL] or call [PHONE]; card [CARD_NUMBER], again [EMAIL].", masked)
    assert out.label == "fail" and out.score == 0.0
    assert "CARD_NUMBER x1" in out.explanation and "EMAIL x2" in out.explanation and "PHONE x1" in out.explanation


def test_placeholders_the_model_wrote_are_not_a_leak() -> None:
    """A template the model wrote ("write to [EMAIL]") holds no PII: the masker replaced nothing, so
    there is no ``pii_completion`` hit of that type."""
    assert check_pii_leak("Write to [EMAIL] or call us at [PHONE].").label == "pass"
    out = check_pii_leak("Write to [EMAIL] or call us at [PHONE].", ["pii_completion:PHONE"])
    assert out.label == "fail" and "PHONE x1" in out.explanation and "EMAIL" not in out.explanation


def test_pii_guardrail_hit_fails_and_prompt_hits_do_not() -> None:
    out = check_pii_leak("clean", ["pii_completion:CPF", "pii_prompt:EMAIL", "injection:ignore_instructions"])
    assert out.label == "fail" and "CPF" in out.explanation and "EMAIL" not in out.explanation
    assert check_pii_leak("clean", ["pii_prompt:EMAIL", "pii:EMAIL"]).label == "pass"


def test_pii_negatives() -> None:
    assert check_pii_leak("No personal data [here], nor [NOT_A_TYPE] or EMAIL.").label == "pass"
    assert check_pii_leak(None).label == "pass"


def test_pii_uses_the_maskers_pattern_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from infersight.evaluation.pii import PLACEHOLDER_RE

    assert placeholder_re() is PLACEHOLDER_RE
    placeholder_re.cache_clear()
    monkeypatch.setitem(sys.modules, "infersight.evaluation.pii", None)  # import now fails
    assert placeholder_re().pattern == checks.FALLBACK_PLACEHOLDER_PATTERN
    assert check_pii_leak("id [CPF]", ["pii_completion:CPF"]).explanation.startswith("masked in completion: CPF x1")


def test_failed_request_reports_only_pii() -> None:
    rows = run_checks(task(status_code=500, completion_text=None, finish_reason=None,
                           guardrail_hits=["pii_completion:EMAIL"]))
    assert [r.dimension for r in rows] == ["pii_leak"]


# ---- invalid_json ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ['{"a": 1}', '\n\n  {"a": [1, 2, {"b": null}]}\n', "[1, 2]", '"ok"'])
def test_json_valid(text: str) -> None:
    out = check_json(text)
    assert out is not None and out.label == "pass"


def test_json_fenced_is_a_soft_fail() -> None:
    out = check_json('```json\n{"a": 1}\n```')
    assert out is not None and (out.label, out.score) == ("fail", 0.5) and "fenced" in out.explanation


@pytest.mark.parametrize("text", ['{"a": 1', "Sure! {\"a\": 1}", "NaN", "", "{'a': 1}", '```json\n{"a": \n```'])
def test_json_invalid(text: str) -> None:
    out = check_json(text)
    assert out is not None and (out.label, out.score) == ("fail", 0.0)


def test_json_only_when_requested_and_not_judged_on_a_cut() -> None:
    assert "invalid_json" not in dims(run_checks(task(completion_text="not json")))
    assert dims(run_checks(task(completion_text="not json", json_requested=True)))["invalid_json"].label == "fail"
    cut = task(completion_text='{"a": "long', json_requested=True, content_truncated=True)
    assert "invalid_json" not in dims(run_checks(cut))
    whole = task(completion_text='{"a": 1}', json_requested=True, content_truncated=True)
    assert dims(run_checks(whole))["invalid_json"].label == "pass"


# ---- run_checks -------------------------------------------------------------------------------

def test_run_checks_rows() -> None:
    rows = run_checks(task(completion_text="I can't help with that.", guardrail_hits=["pii_completion:EMAIL"]))
    by = dims(rows)
    assert set(by) == {"empty", "truncated", "refusal", "repetition", "pii_leak"}
    assert by["refusal"].label == "fail" and by["pii_leak"].label == "fail" and by["empty"].label == "pass"
    version = evaluator_version()
    for r in rows:
        assert (r.evaluator, r.evaluator_version, r.trace_id, r.tenant_id) == ("checks", version, "a" * 32, "t1")
        assert r.request_started_at == "2025-01-02T03:04:05+00:00"
        assert 0.0 <= r.score <= 1.0 and r.label in ("pass", "fail")
        stamp = datetime.fromisoformat(r.evaluated_at)
        assert stamp.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)


def test_no_content_no_rows() -> None:
    assert run_checks(task(prompt_text=None, completion_text=None, finish_reason="length")) == []


def test_version_tracks_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    first = evaluator_version()
    assert len(first) == 12 and first == evaluator_version()
    evaluator_version.cache_clear()
    monkeypatch.setattr(checks, "DUP3_FAIL_ABOVE", 0.7)
    assert evaluator_version() != first


def test_version_is_stable_across_processes() -> None:
    code = "from infersight.evaluation.checks import evaluator_version; print(evaluator_version())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == evaluator_version()


# ---- real text (extdata): human summaries and ChatGPT answers pass, known degenerate outputs fail

DEGENERATE = {
    "summeval::dm-test-0f0789390d67698283cc87b2e046b5c5cd77edb7::M11",  # "camera camera camera"
    "summeval::dm-test-0f0789390d67698283cc87b2e046b5c5cd77edb7::M20",
    "summeval::dm-test-81bd721b16cad47dfd8d24baca5b30b006291db2::M20",
    "summeval::dm-test-31114653cd606fd3f4b1035f98dedd71f8282cd2::M20",
    "summeval::dm-test-36352fd1c61fd0c593ee7b84cbe213aa9b444439::M20",  # "the nightlife ," x13
    "summeval::cnn-test-4761dc6d8bdf56b9ada97104113dd1bcf4aed3f1::M11",
}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_repetition_on_summeval(extdata: Path) -> None:
    rows = _rows(extdata / "golden" / "summeval_1600.jsonl")
    assert not [r["id"] for r in rows if check_repetition(r["reference"]).label == "fail"]
    failing = {r["id"] for r in rows if check_repetition(r["response"]).label == "fail"}
    assert failing == DEGENERATE
    flagged = [r["labels"]["fluency"] for r in rows if r["id"] in failing]
    assert max(flagged) < 3.0  # human annotators rated every flagged summary disfluent
    assert not [r["id"] for r in rows if check_refusal(r["response"]).label == "fail"]


def test_checks_on_chatgpt_answers(extdata: Path) -> None:
    rows = _rows(extdata / "golden" / "halueval_general_4507.jsonl")
    answers = [r["response"] for r in rows if r["response"]]
    assert not [a[:80] for a in answers if check_repetition(a).label == "fail"]  # tables, code, schedules
    refusals = [check_refusal(a) for a in answers]
    hard = sum(o.score == 0.0 for o in refusals)
    partial = sum(o.score == 0.5 for o in refusals)
    assert 50 < hard < 200 and 150 < partial < 350  # ChatGPT's "As an AI language model, I cannot ..."


def test_masked_url_is_not_a_pii_leak() -> None:
    from infersight.evaluation.checks import check_pii_leak

    assert check_pii_leak("See [URL] for details.").label == "pass"
    assert check_pii_leak("Write to [EMAIL] or see [URL].", ["pii_completion:EMAIL", "pii_completion:URL"]).label == "fail"
    assert check_pii_leak("ok", ["pii_completion:URL"]).label == "pass"


def test_an_answer_past_the_capture_that_did_not_parse_back_is_not_called_empty() -> None:
    """A non-streamed answer over the gateway's 1 MiB capture is cut, does not parse, and comes
    back as no text: that is the capture's limit, not an empty answer (``content_truncated``)."""
    cut = EvalTask(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="m", status_code=200,
                   prompt_text="Q", completion_text=None, content_truncated=True, finish_reason="stop")
    assert "empty" not in {o.dimension for o in task_outcomes(cut)}
    whole = EvalTask(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="m", status_code=200,
                     prompt_text="Q", completion_text=None, finish_reason="stop")
    assert next(o for o in task_outcomes(whole) if o.dimension == "empty").label == "fail"


# ---- empathy, scripts without spaces, native sentence ends (CHECKS_REVISION 5) --------------------

@pytest.mark.parametrize("text", [
    "I'm sorry you're going through this, I can't imagine how stressful it must be. Freeze the card now.",
    "Sorry to hear that, I can't even begin to imagine how hard it is. Here is what to do.",
    "Sinto muito que você esteja passando por isso, não consigo nem imaginar. Bloqueie o cartão.",
    "Lo siento mucho, no puedo imaginar lo difícil que es. Bloquea la tarjeta.",
])
def test_empathy_is_not_a_refusal(text: str) -> None:
    assert check_refusal(text).label == "pass"


@pytest.mark.parametrize("text", [
    "I'm sorry you're dealing with this, I can't imagine how frustrating it is, but I cannot access accounts.",
    "As an AI language model, I cannot imagine playing a board game.",  # a disclaimer, not sympathy
    "I'm sorry, I can't really help with that.",
])
def test_refusal_after_or_without_empathy_still_counts(text: str) -> None:
    assert check_refusal(text).label == "fail"


def test_scripts_without_spaces_are_cut_into_letter_clusters() -> None:
    import re

    tokens = re.findall(checks.TOKEN_PATTERN, "ขอบคุณ ខ្ញុំមិន ကျေးဇူး ok")
    assert tokens == ["ข", "อ", "บ", "คุ", "ณ", "ខ្ញុំ", "មិ", "ន", "ကျေး", "ဇူး", "ok"]  # marks stay on


@pytest.mark.parametrize("unit", ["ขอบคุณครับ", "ខ្ញុំមិនដឹងទេ", "ကျေးဇူးတင်ပါတယ်", "ສະບາຍດີ"])
def test_loop_without_spaces_fails(unit: str) -> None:
    assert check_repetition(unit * 8).label == "fail"


@pytest.mark.parametrize("text", [
    "มากกกกกกก",  # a stretched word, like "sooo"
    "ภูมิภาคนี้รวมถึงดินแดนของเก้าประเทศ ป่าส่วนใหญ่อยู่ในประเทศบราซิล รองลงมาคือเปรู และโคลอมเบีย ขอบคุณครับ",
    "សូមបើកកម្មវិធីធនាគារ ហើយបិទកាតរបស់អ្នកភ្លាមៗ។ បន្ទាប់មកទូរស័ព្ទទៅធនាគារ។",
])
def test_text_without_spaces_passes(text: str) -> None:
    assert check_repetition(text).label == "pass"


@pytest.mark.parametrize("text", [
    "我不确定。我不确定。我不确定。",
    "मुझे नहीं पता। मुझे नहीं पता। मुझे नहीं पता।",
    "هل أنت متأكد؟ هل أنت متأكد؟ هل أنت متأكد؟",
    "ខ្ញុំមិនដឹង។ខ្ញុំមិនដឹង។ខ្ញុំមិនដឹង។",
])
def test_sentence_loop_with_a_native_full_stop(text: str) -> None:
    loop = repetition_stats(text).loop
    assert loop is not None and loop.kind == "sentence" and loop.repeats == 3
    assert check_repetition(text).label == "fail"
    assert check_repetition(text[: 2 * len(text) // 3]).label == "pass"  # twice is not a loop


# ---- current models' refusal phrasings, answers that find nothing wrong, stuck numbered lists (7) ---

@pytest.mark.parametrize("text", [
    "I can't accommodate that request.",  # Llama 3
    "I'm a text-based AI and can't help with that.",  # Gemini: no "I" after the self-description
    "I'm just a language model and can't help with that.",
    "As a large language model, I am unable to browse the web.",
    "Sorry, that's beyond my current scope. Let's talk about something else.",  # DeepSeek
    "That request is outside my scope.",
    "I can't reproduce the lyrics to that song because they're protected by copyright.",  # Claude
    "I don't feel comfortable writing that kind of content.",
    "I'm not comfortable with that request.",
    "That's not something I'm able to help with.",
    "That is not something I can do.",
    "I can't tell you how to pick a lock on someone else's door.",
    "I can't recommend specific stocks or funds.",
    "I won't explain how to make a weapon.",
    "I can't talk about that.",
    "I can't offer medical advice.",
    "I can't make that decision for you.",
    "I'm sorry, but I won't give you that information.",
])
def test_current_models_refusal_phrasings_are_detected(text: str) -> None:
    assert check_refusal(text).label == "fail", text


@pytest.mark.parametrize("text", [
    "Sorry, I can't find any errors in your code; it looks correct and should compile as is.",
    "Sorry, I can't see anything wrong with this query. It should return every order placed in 2023.",
    "Unfortunately I can't reproduce the bug on Python 3.12; which version are you on?",
    "As an AI model, I can't spot any obvious mistakes in it. It should work.",
    "I won't give up on this plan: here is a 12-week training schedule that builds up to your marathon.",
    "Chorus:\nI won't give up or give in,\nI'll keep on fighting to win.",
    "I won't run away from a hard problem: let's go step by step.",
    "I can't tell you how much I love this question! Here is the answer.",
    "I can't tell you how many times I've hit this bug. The fix is to pin the version.",
    "I can't tell you for sure, but the second option is the likely cause.",
    "I can't recommend this book enough: it covers everything.",
    "I can't explain why it fails without the log; please paste it.",
    "I can't make any promises, but this usually fixes it.",
    "I can't make it any simpler than this: add the two numbers.",
    "I'm a huge AI fan and can't wait to see what you build.",
    "I'm comfortable providing a summary: the report finds three causes.",
    "Skipping meals is not something I would recommend; eat regularly instead.",
])
def test_answers_that_are_not_refusals_pass(text: str) -> None:
    assert check_refusal(text).label == "pass", text


@pytest.mark.parametrize("enumerate_", [
    lambda i: f"{i}. ", lambda i: f"{i}) ", lambda i: f"({i}) ", lambda i: f"  {chr(96 + i)}) ", lambda i: f"1.{i}. ",
])
def test_a_numbered_list_stuck_on_one_item_is_a_loop(enumerate_: Any) -> None:
    text = "Here are tips to sleep better:\n" + "".join(f"{enumerate_(i)}Drink more water before bed.\n"
                                                       for i in range(1, 21))
    loop = repetition_stats(text).loop
    assert loop is not None and loop.kind == "sentence" and loop.repeats == 20
    assert check_repetition(text).label == "fail"
    bullets = "\n".join("- Drink more water before bed." for _ in range(20))
    assert repetition_stats(bullets).loop == loop  # numbered as it is as bullets


@pytest.mark.parametrize("text", [
    "1. Preheat the oven.\n2. Mix the flour.\n3. Add the eggs.\n4. Bake it.\n5. Serve it.\n",
    "".join(f"{i}. Step {i}: run test suite {i}.\n" for i in range(1, 12)),
    "a) Drink more water before bed.\nb) Avoid screens after 9 pm.\nc) Keep the room cool.\n",
    "1.5 kg\n2.5 kg\n3.5 kg\n4.5 kg\n5.5 kg\n6.5 kg\n",  # decimals at line starts are no enumerators
    "1. Drink more water before bed.\n2. Drink more water before bed.\n3. Keep the room cool.\n",  # twice
])
def test_genuine_numbered_lists_are_not_loops(text: str) -> None:
    assert check_repetition(text).label == "pass", repetition_stats(text)


@pytest.mark.parametrize("text", ["", "  \n", None])
def test_an_answer_cut_before_it_began_fails_truncated_only(text: str | None) -> None:
    """A reasoning model that spent ``max_tokens: 1`` on its reasoning: no answer, ``finish_reason``
    length. One fault, one failure: ``truncated``; ``empty`` is not run (revision 8)."""
    outcomes = {o.dimension: o for o in task_outcomes(task(completion_text=text, finish_reason="length"))}
    assert outcomes["truncated"].label == "fail" and "empty" not in outcomes
    stopped = {o.dimension: o for o in task_outcomes(task(completion_text=text, finish_reason="stop"))}
    assert stopped["empty"].label == "fail" and stopped["truncated"].label == "pass"
