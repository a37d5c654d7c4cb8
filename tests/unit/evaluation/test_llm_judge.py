"""The LLM judge over real HTTP against the simulated judge (``sim-judge``) on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from infersight.evaluation.judge_parse import (
    ReplyError, coerce_score, extract_scores, extract_winner, parse_json_object,
)
from infersight.evaluation.llm_judge import (
    JudgeError, JudgeVerdict, LLMJudge, PairwiseVerdict, judge_cost, to_results,
)
from infersight.evaluation.rubric import DIMENSION_NAMES, load_rubric
from infersight.evaluation.settings import JudgeSettings
from infersight.model.evaluation import EvalTask
from infersight.sim.judge import REPAIRABLE_KINDS, sim_judge_profile
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer

FAST_MS = 2.0
PROFILES = {
    "sim-judge": sim_judge_profile(FAST_MS),
    "judge-exact": sim_judge_profile(FAST_MS, noise=0.0),
    "judge-repairable": sim_judge_profile(FAST_MS, malformed_rate=1.0, malformed_kinds=REPAIRABLE_KINDS),
    "judge-flaky": sim_judge_profile(
        FAST_MS, malformed_rate=0.5, malformed_kinds=("garbage", "truncated", "missing_dimension")
    ),
    "judge-broken": sim_judge_profile(FAST_MS, malformed_rate=1.0, malformed_kinds=("garbage",)),
    "judge-positional": sim_judge_profile(FAST_MS, position_bias=1.0),
    "judge-500": dataclasses.replace(sim_judge_profile(FAST_MS), rate_500=1.0),
    "judge-half-500": dataclasses.replace(sim_judge_profile(FAST_MS), rate_500=0.5),
    "judge-stall": dataclasses.replace(sim_judge_profile(FAST_MS), rate_timeout=1.0),
    "judge-slow": sim_judge_profile(150.0),
}
QUESTIONS = QUESTION_BANK[:8]
PADDING = " This is a well established fact. Most reference works agree on this point." * 4


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=11, profiles=PROFILES) as server:
        yield server


def _settings(sim: SimServer, model: str = "sim-judge", **kw: object) -> JudgeSettings:
    return JudgeSettings(url=sim.url, model=model, **kw)  # type: ignore[arg-type]


def _judge(sim: SimServer, model: str = "sim-judge", rubric: str = "default", **kw: object) -> LLMJudge:
    return LLMJudge.from_settings(_settings(sim, model, **kw), rubric=rubric, backoff_s=0.01)


def _mean(v: JudgeVerdict) -> float:
    return sum(v.scores.values()) / len(v.scores)


async def test_correct_answers_score_higher_than_wrong_ones_whatever_their_length(sim: SimServer) -> None:
    async with _judge(sim) as judge:
        for q in QUESTIONS:
            right = await judge.score(q.question, q.correct.capitalize() + ".")  # short and right
            wrong = await judge.score(q.question, f"The answer is {q.wrong[0]}." + PADDING)  # long, wrong
            assert set(right.scores) == set(DIMENSION_NAMES) == set(wrong.explanations)
            assert right.scores["factual_fidelity"] >= 4 and wrong.scores["factual_fidelity"] <= 2
            assert _mean(right) > _mean(wrong) + 1.0
            assert all(1.0 <= s <= 5.0 for s in (*right.scores.values(), *wrong.scores.values()))
            assert right.attempts == 1 and right.prompt_tokens > 500 and right.completion_tokens > 20
            assert right.judge_model == "sim-judge" and right.evaluator_version == judge.evaluator_version
            assert q.wrong[0] in wrong.explanations["factual_fidelity"]


async def test_reference_is_the_truth_for_questions_the_judge_cannot_know(sim: SimServer) -> None:
    async with _judge(sim, "judge-exact") as judge:
        q = "What colour is the sky of planet Zork?"
        right = await judge.score(q, "It is mauve.", reference="mauve")
        wrong = await judge.score(q, "It is green.", reference="mauve")
    assert right.scores["factual_fidelity"] == 5.0 and wrong.scores["factual_fidelity"] == 1.0


async def test_fenced_prose_trailing_comma_and_quoted_replies_are_repaired_without_a_reask(
    sim: SimServer,
) -> None:
    before = sim.app.stats["requests"]
    async with _judge(sim, "judge-repairable") as judge:
        verdicts = [await judge.score(q.question, q.correct) for q in QUESTIONS]
    assert all(v.attempts == 1 and v.repaired for v in verdicts)
    assert all(v.scores["factual_fidelity"] >= 4 for v in verdicts)
    assert sim.app.stats["requests"] - before == len(QUESTIONS)


async def test_unusable_replies_are_reasked_and_tokens_summed_over_attempts(sim: SimServer) -> None:
    before = sim.app.stats["requests"]
    async with _judge(sim, "judge-flaky", max_retries=8) as judge:
        verdicts = [await judge.score(q.question, q.correct) for q in QUESTION_BANK[:12]]
    assert sum(v.attempts for v in verdicts) == sim.app.stats["requests"] - before
    retried = [v for v in verdicts if v.attempts > 1]
    once = [v for v in verdicts if v.attempts == 1]
    assert retried and once  # about half the replies were broken
    assert all(set(v.scores) == set(DIMENSION_NAMES) for v in verdicts)
    single = min(v.prompt_tokens for v in once)
    assert all(v.prompt_tokens > single * (v.attempts - 0.5) for v in retried)  # every attempt counted


async def test_judge_error_after_exhausting_retries_keeps_what_was_spent(sim: SimServer) -> None:
    before = sim.app.stats["requests"]
    async with _judge(sim, "judge-broken", max_retries=2, input_price_per_1m=1.0) as judge:
        with pytest.raises(JudgeError) as err:
            await judge.score("What is the capital of France?", "Paris")
    e = err.value
    assert e.reason == "invalid_reply" and "3 attempt(s)" in str(e) and "no JSON object" in str(e)
    assert e.attempts == 3 and sim.app.stats["requests"] - before == 3
    assert e.prompt_tokens > 0 and e.cost == pytest.approx(e.prompt_tokens / 1e6)


async def test_transient_http_errors_are_retried_with_backoff(sim: SimServer) -> None:
    async with _judge(sim, "judge-500", max_retries=2) as judge:
        with pytest.raises(JudgeError) as err:
            await judge.score("What is 7 multiplied by 8?", "56")
    assert err.value.reason == "server_error" and err.value.attempts == 3 and "HTTP 500" in str(err.value)
    async with _judge(sim, "judge-half-500", max_retries=10) as judge:
        verdicts = [await judge.score(q.question, q.correct) for q in QUESTIONS]
    assert any(v.attempts > 1 for v in verdicts) and all(v.scores for v in verdicts)
    settings = _settings(sim, "judge-stall", max_retries=1, timeout_s=0.3)
    t0 = time.perf_counter()
    async with LLMJudge(settings, load_rubric("default"), headers={"x-sim-timeout-s": "5"}, backoff_s=0.01) as judge:
        with pytest.raises(JudgeError) as err:
            await judge.score("What is 7 multiplied by 8?", "56")
    assert err.value.reason == "timeout" and err.value.attempts == 2
    assert time.perf_counter() - t0 < 3.0


async def test_client_errors_are_not_retried(sim: SimServer) -> None:
    before = sim.app.stats["requests"]
    async with _judge(sim, "no-such-model", max_retries=5) as judge:
        with pytest.raises(JudgeError) as err:
            await judge.score("What is 7 multiplied by 8?", "56")
    assert err.value.reason == "http_error" and err.value.attempts == 1 and "404" in str(err.value)
    assert sim.app.stats["requests"] - before == 1


async def test_api_key_is_sent_as_bearer_and_calls_are_labelled_eval(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-judge-123")
    async with _judge(sim, api_key_env="JUDGE_TEST_KEY") as judge:
        await judge.score("What is 7 multiplied by 8?", "56")
    assert sim.app.last_headers["authorization"] == "Bearer sk-judge-123"
    assert sim.app.last_headers["x-infersight-request-type"] == "eval"
    with pytest.raises(ValueError, match="JUDGE_MISSING_KEY"):
        _judge(sim, api_key_env="JUDGE_MISSING_KEY")
    with pytest.raises(ValueError, match="disabled"):
        LLMJudge.from_settings(JudgeSettings())


def test_evaluator_version_changes_with_model_rubric_text_and_parameters(tmp_path: Path) -> None:
    base = JudgeSettings(url="http://127.0.0.1:9/v1")
    v0 = LLMJudge.from_settings(base).evaluator_version
    assert len(v0) == 16 and int(v0, 16) >= 0
    same = [
        base, base.model_copy(update={"url": "http://gateway:8700/v1", "timeout_s": 5.0, "max_retries": 7,
                                      "concurrency": 3, "input_price_per_1m": 9.0, "api_key_env": None}),
    ]
    assert {LLMJudge.from_settings(s).evaluator_version for s in same} == {v0}
    edited = tmp_path / "default.yaml"
    edited.write_text(load_rubric("default").text.replace("# The default", "# An edited"))
    changed = [
        LLMJudge.from_settings(base.model_copy(update={"model": "gpt-4o-mini"})),
        LLMJudge.from_settings(base.model_copy(update={"temperature": 0.7})),
        LLMJudge.from_settings(base.model_copy(update={"max_tokens": 800})),
        LLMJudge.from_settings(base, rubric=str(edited)),
        LLMJudge.from_settings(base, rubric="pairwise"),
    ]
    versions = [j.evaluator_version for j in changed]
    assert v0 not in versions and len(set(versions)) == len(versions)


async def test_pairwise_swaps_positions_and_prefers_the_correct_answer(sim: SimServer) -> None:
    q = QUESTION_BANK[1]
    right, wrong = q.correct, f"The answer is {q.wrong[0]}." + PADDING
    async with _judge(sim, rubric="pairwise") as judge:
        a_wins = await judge.compare(q.question, right, wrong)
        b_wins = await judge.compare(q.question, wrong, right)
        both = await judge.compare(q.question, right, right + ".")
    assert (a_wins.winner, a_wins.consistent, a_wins.raw) == ("a", True, ("A", "B"))
    assert (b_wins.winner, b_wins.consistent, b_wins.raw) == ("b", True, ("B", "A"))
    assert (b_wins.first_order, b_wins.second_order) == ("b", "b")
    assert both.winner == "tie" and both.consistent
    assert a_wins.attempts == 2 and a_wins.prompt_tokens > 0 and a_wins.completion_tokens > 0
    with pytest.raises(ValueError, match="pointwise"):
        await judge.score(q.question, right)


async def test_a_position_biased_judge_gives_a_tie(sim: SimServer) -> None:
    q = QUESTION_BANK[2]
    async with _judge(sim, "judge-positional", rubric="pairwise") as judge:
        v = await judge.compare(q.question, q.wrong[0], q.correct)
    assert v.raw == ("A", "A") and (v.first_order, v.second_order) == ("a", "b")
    assert v.winner == "tie" and not v.consistent


async def test_cost_is_priced_per_million_tokens_and_split_across_rows(sim: SimServer) -> None:
    async with _judge(sim, input_price_per_1m=3.0, output_price_per_1m=15.0) as judge:
        task = EvalTask(
            trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="sim-small",
            started_at="2026-11-22T10:00:00+00:00", prompt_text=QUESTIONS[0].question,
            completion_text=QUESTIONS[0].correct, sample_reason="random",
        )
        rows = await judge.evaluate(task)
        pair = await LLMJudge.from_settings(judge.settings, rubric="pairwise").compare("Q?", "x", "y")
    verdict_cost = (sum(r.judge_tokens or 0 for r in rows), math.fsum(r.judge_cost or 0 for r in rows))
    assert [r.dimension for r in rows] == list(DIMENSION_NAMES)
    assert all(r.evaluator == "llm_judge" and r.judge_model == "sim-judge" for r in rows)
    assert all(r.evaluator_version == judge.evaluator_version and r.trace_id == task.trace_id for r in rows)
    assert all(r.request_started_at == task.started_at and r.explanation for r in rows)
    assert datetime.fromisoformat(rows[0].evaluated_at).tzinfo == timezone.utc
    v = JudgeVerdict(scores={"relevance": 5.0, "coherence": 4.0, "tone_compliance": 3.0}, explanations={},
                     prompt_tokens=1000, completion_tokens=101, cost=judge_cost(judge.settings, 1000, 101),
                     judge_model="m", evaluator_version="v", attempts=1)
    assert v.cost == pytest.approx(1000 * 3.0 / 1e6 + 101 * 15.0 / 1e6)
    split = to_results(task, v)
    assert [r.judge_tokens for r in split] == [367, 367, 367]
    assert math.fsum(r.judge_cost or 0 for r in split) == pytest.approx(v.cost, rel=1e-12)
    assert verdict_cost[0] > 0 and verdict_cost[1] > 0
    assert isinstance(pair, PairwiseVerdict)
    assert pair.cost == pytest.approx((pair.prompt_tokens * 3.0 + pair.completion_tokens * 15.0) / 1e6)
    (row,) = to_results(task, pair)
    assert row.dimension == "pairwise" and row.label == pair.winner and row.judge_tokens == pair.total_tokens


async def test_concurrency_is_bounded_by_the_semaphore(sim: SimServer) -> None:
    import asyncio

    async with _judge(sim, "judge-slow", concurrency=2) as judge:
        t0 = time.perf_counter()
        await asyncio.gather(*(judge.score(q.question, q.correct) for q in QUESTIONS[:6]))
        elapsed = time.perf_counter() - t0
    assert elapsed >= 3 * 0.150 * 0.95  # 6 calls of 150 ms, 2 at a time


# The repair rules themselves, on the strings judges really send back.

SIX = ", ".join(f'"{d}": {{"score": 4, "explanation": "ok"}}' for d in DIMENSION_NAMES)


@pytest.mark.parametrize(
    "reply",
    [
        "```json\n{" + SIX + "}\n```",
        "Sure! Here is my evaluation:\n{" + SIX + "}\nHope this helps.",
        "{" + SIX + ",}",
        "{" + SIX.replace('"', "'") + "}",
    ],
)
def test_repairable_replies(reply: str) -> None:
    parsed = parse_json_object(reply)
    assert parsed.repaired
    scores, expl, _ = extract_scores(parsed.data, DIMENSION_NAMES)
    assert scores == dict.fromkeys(DIMENSION_NAMES, 4.0) and expl["relevance"] == "ok"


def test_single_quotes_keep_apostrophes_in_double_quoted_strings() -> None:
    parsed = parse_json_object("""{'relevance': {'score': 5, 'explanation': "it's right, 'truly'"},}""")
    assert parsed.data == {"relevance": {"score": 5, "explanation": "it's right, 'truly'"}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4, 4.0), ("4", 4.0), ("4/5", 4.0), ("8 out of 10", 4.0), ("Score: 3", 3.0), (7, 5.0), (0, 1.0),
     (4.5, 4.5), ("n/a", None), (True, None), (None, None), (float("nan"), None),
     ("Score: 2/10", 1.0), ("80%", 4.0), ("4 (out of 5)", 4.0), ("on a scale of 1 to 5, 3", None),
     ("1-5 scale: 4", None)],
)
def test_scores_are_coerced_and_clamped(value: object, expected: float | None) -> None:
    assert coerce_score(value) == expected


def test_other_reply_shapes_and_clear_failures() -> None:
    nested = {"Scores": {"Relevance": "5/5", "Factual Fidelity": 2}, "explanations": {"relevance": "on topic"}}
    scores, expl, coerced = extract_scores(nested, ("relevance", "factual_fidelity"))
    assert scores == {"relevance": 5.0, "factual_fidelity": 2.0} and expl["relevance"] == "on topic" and coerced
    with pytest.raises(ReplyError, match="missing dimensions: coherence, tone_compliance"):
        extract_scores({"relevance": 5}, ("relevance", "coherence", "tone_compliance"))
    with pytest.raises(ReplyError, match="no usable 1-5 score for: relevance"):
        extract_scores({"relevance": "excellent"}, ("relevance",))
    with pytest.raises(ReplyError, match="no JSON object"):
        parse_json_object("I would give it a 4.")
    with pytest.raises(ReplyError, match="not closed"):
        parse_json_object('{"relevance": {"score": 4, "expl')
    with pytest.raises(ReplyError, match="not valid JSON"):
        parse_json_object('{"relevance": [4, 5}')
    assert extract_winner({"winner": "Answer B", "explanation": "x"}) == ("B", "x")
    assert extract_winner({"Winner": "tie."})[0] == "tie"
    with pytest.raises(ReplyError, match="winner"):
        extract_winner({"winner": "C"})


def test_a_dimension_given_twice_is_re_asked_and_a_summary_beside_the_dimensions_is_ignored() -> None:
    """Case-variant keys with different scores were read as the last one; a top-level "scores"
    summary beside complete dimensions threw the reply away (the nested form replaced them)."""
    twice = {"Relevance": 1, "relevance": 5, **{d: 4 for d in DIMENSION_NAMES if d != "relevance"}}
    with pytest.raises(ReplyError, match="relevance given twice"):
        extract_scores(twice, DIMENSION_NAMES)
    same = {"Relevance": 4, **{d: 4 for d in DIMENSION_NAMES}}  # the same value twice: no doubt
    assert extract_scores(same, DIMENSION_NAMES)[0] == dict.fromkeys(DIMENSION_NAMES, 4.0)
    with_summary = {**{d: 3 for d in DIMENSION_NAMES}, "scores": {"overall": 3}}
    assert extract_scores(with_summary, DIMENSION_NAMES)[0] == dict.fromkeys(DIMENSION_NAMES, 3.0)
