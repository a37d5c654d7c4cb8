"""Audit of the simulated judge (issue 4 part 7) and the demo's quality columns (part 8).

Real components only: the simulator over real HTTP on 127.0.0.1 (as engine and as judge), the real
judge client (``LLMJudge``), the gateway with its eval pipeline and embedded DuckDB store, and the
demo's own table aggregator. Each test pins a defect; its docstring says what was expected
(docs/judge.md "The simulated judge", docs/simulator.md, docs/evaluation.md) and what happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from rich.console import Console

from infersight.config import settings_from_dict
from infersight.demo.live import LiveAggregator
from infersight.evaluation.llm_judge import LLMJudge
from infersight.evaluation.settings import JudgeSettings
from infersight.model import EvalResult, RequestRecord
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.judge import sim_judge_profile, with_judge
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.questions import QUESTIONS_BY_ID
from infersight.sim.server import SimServer
from tests.conftest import config_dict
from tests.e2e.test_evaluation import wait_for

ADMIN = {"authorization": "Bearer sk-admin-test"}
FAST_MS = 20.0


# -- the judge reads the question that was asked last --------------------------------------------


@pytest.fixture
def judged_stack(tmp_path: Path) -> Iterator[tuple[str, SimServer]]:
    """Gateway + eval pipeline (in-process threads) + sim engine + an exact sim judge (noise 0)."""
    fast_large = dataclasses.replace(DEFAULT_PROFILES["sim-large"], ttft_base_ms=5.0, decode_ms_per_token=1.0,
                                     jitter_ms=0.0)  # p_correct 0.9, as in the demo; quick answers
    profiles = {**DEFAULT_PROFILES, "sim-large": fast_large, "sim-judge": sim_judge_profile(FAST_MS, noise=0.0)}
    sim = SimServer(seed=3, profiles=profiles).start()
    tenants = [{"id": "acme", "api_keys": ["sk-acme-test"], "use_cases": ["chat"], "sample_rate": 1.0}]
    settings = settings_from_dict(config_dict(
        tmp_path / "data", sim.url, tenants=tenants,
        evaluation={"child_process": False, "judge": {"url": sim.url, "model": "sim-judge"}},
    ))
    gateway = ThreadedServer(build_gateway(settings)).start()
    try:
        yield gateway.base_url, sim
    finally:
        gateway.stop()
        sim.stop()


def test_a_multi_turn_chat_is_judged_against_the_question_asked_last(judged_stack) -> None:
    """A chat of two turns: France first (already answered), then Japan. The sim engine answers the
    last user message's question (docs/simulator.md, "Answers"), here "Tokyo", and says it is right
    (``sim.correct``). The pipeline hands the judge the whole conversation as the question
    (``tokens.prompt_text``); the sim judge then looks up the *first bank question in bank order*
    that appears anywhere in it (``find_question``: France, geo-01), so the right answer "Tokyo" is
    scored as a wrong answer to "capital of France" (factual_fidelity 1, no_hallucination 1). Every
    multi-turn chat is judged against the wrong question, and the demo/tests' truth
    (``x-sim-correct``) and the sim judge disagree. Expected: an exact judge (noise 0) gives a right
    answer 5 on every dimension, as for a one-turn chat."""
    url, _ = judged_stack
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-acme-test", max_retries=0)
    france, japan = QUESTIONS_BY_ID["geo-01"], QUESTIONS_BY_ID["geo-08"]
    traces = []
    for i in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model="sim-large", max_tokens=400, user=f"u{i}", extra_headers={"x-infersight-use-case": "chat"},
            messages=[{"role": "user", "content": france.question},
                      {"role": "assistant", "content": f"{france.correct}."},
                      {"role": "user", "content": japan.question}],
        )
        body = raw.http_response.json()
        if body["sim"]["correct"]:
            assert body["sim"]["question_id"] == japan.id
            assert japan.correct in body["choices"][0]["message"]["content"]
            traces.append(raw.headers["x-trace-id"])
    assert traces, "sim-large (p_correct 0.9) answered none of 6 right"
    api = httpx.Client(base_url=url, headers=ADMIN, timeout=10)

    def judged(trace: str) -> dict[str, float] | None:
        got = api.get(f"/api/v1/requests/{trace}")
        if got.status_code != 200:
            return None
        scores = {e["dimension"]: e["score"] for e in got.json()["evaluations"] if e["evaluator"] == "llm_judge"}
        return scores if "factual_fidelity" in scores else None

    for trace in traces:
        scores = wait_for(lambda t=trace: judged(t), what="the judge's rows")
        assert scores["factual_fidelity"] == 5 and scores["no_hallucination"] == 5, scores


# -- knobs of the simulated judge: bad values are refused, naming the knob -------------------------


@pytest.mark.parametrize(("knob", "value"), [
    pytest.param("latency_ms", -100.0, id="negative-latency"),
    pytest.param("noise", -0.3, id="negative-noise"),
    pytest.param("malformed_rate", 1.5, id="malformed-rate-above-1"),
    pytest.param("position_bias", 1.5, id="position-bias-above-1"),
    pytest.param("max_num_seqs", 0, id="no-slots-hangs-every-call"),
])
def test_out_of_range_judge_knobs_are_refused_naming_the_knob(knob: str, value: float) -> None:
    """``sim_judge_profile`` validates ``malformed_kinds`` (ValueError naming the kinds) but takes any
    number for the other knobs: a negative latency or noise (``gauss`` with a negative sigma is just
    noise again), a ``malformed_rate`` or ``position_bias`` above 1 (a probability), and
    ``max_num_seqs=0``, with which every call to the judge waits for a slot forever (the client
    times out, the sim never answers). A typo in a test's or benchmark's judge profile then
    silently simulates something else, or hangs. Expected: ValueError naming the knob."""
    with pytest.raises(ValueError, match=knob):
        sim_judge_profile(**{knob: value})


@pytest.mark.parametrize("knobs", [
    pytest.param({"malformed_rate": 0.5, "malformed_kinds": ()}, id="no-kinds"),
    pytest.param({"malformed_rate": 0.5, "malformed_kinds": ("zalgo",)}, id="unknown-kind"),
])
def test_with_judge_checks_the_knobs_as_sim_judge_profile_does(knobs: dict[str, Any]) -> None:
    """docs/judge.md: ``with_judge(profile, bias=0.5)`` changes knobs of a judge profile. Unlike
    ``sim_judge_profile`` it checks nothing: no malformed kinds with a positive rate makes half the
    judge's replies an HTTP 500 (``randrange`` of an empty range: a traceback in the sim, server
    errors nobody configured, so a client's retry tests measure the wrong thing), and an unknown
    kind ("zalgo") is silently served as ``garbage``. Expected: the same ValueError as
    ``sim_judge_profile`` when the profile is built (or, failing that, a judge that answers 200)."""
    try:
        profile = with_judge(DEFAULT_PROFILES["sim-judge"], **knobs)
    except ValueError:
        return
    if knobs["malformed_kinds"]:
        pytest.fail(f"unknown malformed kinds accepted: {profile.judge}")
    q = QUESTIONS_BY_ID["geo-01"]
    content = f"Score relevance.\n<question>\n{q.question}\n</question>\n<answer>\n{q.correct}\n</answer>\n"
    fast = dataclasses.replace(profile, ttft_base_ms=FAST_MS)
    with SimServer(seed=4, profiles={"sim-judge": fast}) as sim:
        statuses = [httpx.post(sim.url + "/chat/completions", timeout=10, json={
            "model": "sim-judge", "max_tokens": 400, "user": f"u{i}",
            "messages": [{"role": "user", "content": content}]}).status_code for i in range(10)]
    assert statuses == [200] * 10


# -- malformed pairwise replies ---------------------------------------------------------------------


def test_a_pairwise_reply_drawn_as_malformed_is_malformed() -> None:
    """``malformed_rate`` is "the share of replies that are broken" (docs/judge.md), in the kinds
    chosen. In pairwise mode, a reply drawn as ``string_scores`` (a repairable kind) is
    ``{"explanation", "winner"}`` unchanged, since there is no ``"score"`` to turn into "5/5": valid
    JSON, nothing for the client to repair. A test of the pairwise path's repair with
    ``malformed_rate=1.0`` gets intact replies. Expected: the compare verdict is ``repaired``
    (or the kind is refused for pairwise prompts)."""
    profile = sim_judge_profile(FAST_MS, noise=0.0, malformed_rate=1.0, malformed_kinds=("string_scores",))
    q = QUESTIONS_BY_ID["geo-02"]

    async def compare(url: str) -> Any:
        async with LLMJudge.from_settings(JudgeSettings(url=url, model="sim-judge"), rubric="pairwise") as judge:
            return await judge.compare(q.question, q.correct, f"It is {q.wrong[0]}.")

    with SimServer(seed=5, profiles={"sim-judge": profile}) as sim:
        verdict = asyncio.run(compare(sim.url))
    assert verdict.winner == "a"
    assert verdict.repaired, "every reply was drawn as malformed, yet none needed repair"


# -- bias --------------------------------------------------------------------------------------------


def test_a_negative_half_point_bias_is_a_strict_judge() -> None:
    """docs/judge.md: ``bias`` is "added to every score before rounding; 0.5 is a lenient judge (a
    wrong answer's 1 becomes 2)". The mirror, ``bias=-0.5`` (a strict judge, the other half of
    what a calibration gate must catch), changes nothing at all: scores are rounded half *up*
    (``floor(raw + 0.5)``), so 5 - 0.5 = 4.5 rounds back to 5 and every score is the unbiased one.
    ``eval calibrate`` against this judge reports a mean bias of 0 for a judge configured at -0.5.
    Expected (noise 0): a right answer scores 4 on each dimension, as +0.5 turns a wrong answer's
    1 into 2 (rounding away from the unbiased score, or half to the bias's side)."""
    q = QUESTIONS_BY_ID["geo-01"]

    async def score(url: str, model: str) -> dict[str, float]:
        async with LLMJudge.from_settings(JudgeSettings(url=url, model=model)) as judge:
            return (await judge.score(q.question, f"The answer is {q.correct}.")).scores

    profiles = {"strict": sim_judge_profile(FAST_MS, noise=0.0, bias=-0.5),
                "exact": sim_judge_profile(FAST_MS, noise=0.0)}
    with SimServer(seed=6, profiles=profiles) as sim:
        exact, strict = asyncio.run(score(sim.url, "exact")), asyncio.run(score(sim.url, "strict"))
    assert set(exact.values()) == {5.0}
    assert set(strict.values()) == {4.0}, strict


# -- the demo's live table ----------------------------------------------------------------------------


def _render(aggregator: LiveAggregator) -> dict[tuple[str, str], list[str]]:
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(aggregator.table("t", final=True))
    rows = {}
    for line in console.file.getvalue().splitlines():  # type: ignore[attr-defined]
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[(cells[0], cells[1])] = cells
    return rows


def test_the_quality_column_is_the_mean_of_every_judged_answer_it_counts() -> None:
    """docs/evaluation.md: the demo's live table shows "judged answers, mean judge score, share of
    failed checks per tenant and model"; the caption says quality is the "mean LLM-judge score
    (1-5) of sampled answers". ``judged`` and ``checks failed`` count the whole run, but the
    quality mean is kept in a deque of the last 2,000 judged answers (the latency percentiles'
    ``WINDOW``), so past 2,000 judged answers in a row (about 10 minutes of the default demo) the
    row reads e.g. "judged 2500, quality 5.00" while the store and ``GET /api/v1/quality`` for the
    same run say 4.20: the columns disagree with each other and with the API. Expected: the mean
    over the answers the row counts (a running sum and count)."""
    since = datetime(2026, 11, 22, tzinfo=timezone.utc)
    started = "2026-11-22T00:00:01+00:00"
    aggregator = LiveAggregator(since)
    aggregator.export([RequestRecord(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme",
                                     model_id="sim-small", backend="sim", started_at=started)
                       for i in range(1, 2501)])
    results = []
    for i in range(1, 2501):
        score = 1.0 if i <= 500 else 5.0  # the first 500 judged answers were wrong, the rest right
        results.extend(EvalResult(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-small",
                                  evaluator="llm_judge", evaluator_version="v1", dimension=d,
                                  evaluated_at=started, score=score, request_started_at=started)
                       for d in ("relevance", "factual_fidelity"))
    for at in range(0, len(results), 500):  # relayed once a second, a batch at a time
        aggregator.results(results[at:at + 500])
    row = _render(aggregator)[("acme", "sim-small")]
    assert row[9] == "2500"
    assert row[10] == "4.20", row
