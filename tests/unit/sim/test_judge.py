"""The simulated judge (``sim-judge``): truth-based scores, bias, noise, malformed replies, over HTTP."""

from __future__ import annotations

import random
import statistics
import time

import httpx
import orjson
import pytest

from infersight.sim.judge import (
    DIMENSIONS, REPAIRABLE_KINDS, JudgeProfile, classify, judge_reply, sim_judge_profile, with_judge,
)
from infersight.sim.profiles import DEFAULT_PROFILES, MALFORMED_KINDS
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer

EXACT = JudgeProfile(noise=0.0)
Q = QUESTION_BANK[1]  # capital of Australia: Canberra; wrong: Sydney, Melbourne


def _prompt(question: str, answer: str, reference: str | None = None, dims: str = "") -> str:
    ref = f"<reference>\n{reference}\n</reference>\n" if reference else ""
    task = f"<question>\n{question}\n</question>\n{ref}<answer>\n{answer}\n</answer>\n"
    return f"<|system|>\nScore {dims}\n<|user|>\n{task}"


def _scores(cfg: JudgeProfile, prompt: str, seed: int = 0) -> dict[str, int]:
    data = orjson.loads(judge_reply(random.Random(seed), cfg, prompt).text)
    return {d: v["score"] for d, v in data.items()}


def test_scores_follow_the_truth_not_the_length() -> None:
    padded = "The answer is Canberra." + " This is a well established fact in geography." * 20
    assert _scores(EXACT, _prompt(Q.question, "Canberra")) == dict.fromkeys(DIMENSIONS, 5)
    assert _scores(EXACT, _prompt(Q.question, padded)) == dict.fromkeys(DIMENSIONS, 5)
    wrong = _scores(EXACT, _prompt(Q.question, "It is Sydney." + padded[23:]))
    assert wrong["factual_fidelity"] == 1 and wrong["no_hallucination"] == 1
    refused = _scores(EXACT, _prompt(Q.question, "I'm sorry, but I can't help with that."))
    assert refused["no_undue_refusal"] == 1
    assert classify(Q, "Canberra, not Sydney", None)[0] == "hedged"
    assert classify(None, "whatever", None)[0] == "unknown"
    assert classify(None, "It is mauve.", "mauve")[0] == "correct"
    assert classify(QUESTION_BANK[13], "The answer is 12.", None)[0] == "wrong"  # carbon: 6, not "12"


def test_the_last_tagged_sections_are_judged_and_only_the_asked_dimensions() -> None:
    few_shot = _prompt("What is the capital of Italy?", "Rome.")
    prompt = few_shot + _prompt(Q.question, "Melbourne", dims="relevance and factual_fidelity")
    reply = judge_reply(random.Random(0), EXACT, prompt)
    assert reply.question is Q and not reply.correct
    assert _scores(EXACT, prompt) == {"relevance": 3, "factual_fidelity": 1}


def test_bias_inflates_and_noise_is_seeded() -> None:
    wrong = _prompt(Q.question, "Sydney")
    lenient = _scores(JudgeProfile(noise=0.0, bias=1.0), wrong)
    assert lenient["factual_fidelity"] == 2 and lenient["relevance"] == 4
    assert _scores(JudgeProfile(noise=0.0, bias=1.0), _prompt(Q.question, "Canberra"))["relevance"] == 5
    noisy = JudgeProfile(noise=1.0)
    assert _scores(noisy, wrong, seed=5) == _scores(noisy, wrong, seed=5)
    runs = [_scores(noisy, wrong, seed=s)["relevance"] for s in range(200)]
    assert len(set(runs)) >= 3 and 2.5 < statistics.mean(runs) < 3.5


def test_malformed_kinds_break_the_json_as_named() -> None:
    prompt = _prompt(Q.question, "Canberra")
    texts = {
        k: judge_reply(random.Random(0), JudgeProfile(noise=0.0, malformed_rate=1.0, malformed_kinds=(k,)), prompt).text
        for k in MALFORMED_KINDS
    }
    assert texts["fenced"].startswith("```json\n{") and texts["fenced"].endswith("```")
    assert texts["prose"].startswith("Here is my evaluation:")
    assert ",\n}" in texts["trailing_comma"] and '"' not in texts["single_quotes"]
    assert '"score": "5/5"' in texts["string_scores"]
    assert "{" not in texts["garbage"]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(texts["truncated"])
    assert len(orjson.loads(texts["missing_dimension"])) == len(DIMENSIONS) - 1
    for kind in set(REPAIRABLE_KINDS) - {"string_scores"}:  # that one is valid JSON with "5/5" scores
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(texts[kind])
    with pytest.raises(ValueError, match="unknown malformed_kinds"):
        sim_judge_profile(malformed_kinds=("zalgo",))


def test_pairwise_prefers_the_correct_answer_unless_position_biased() -> None:
    def pair(a: str, b: str, cfg: JudgeProfile = EXACT) -> str:
        prompt = f"<question>\n{Q.question}\n</question>\n<answer_a>\n{a}\n</answer_a>\n<answer_b>\n{b}\n</answer_b>"
        return orjson.loads(judge_reply(random.Random(1), cfg, prompt).text)["winner"]

    assert pair("Canberra", "Sydney, a lovely city.") == "A"
    assert pair("Sydney, a lovely city.", "Canberra") == "B"
    assert pair("Canberra", "It is Canberra.") == "tie"
    assert pair("Sydney", "Canberra", JudgeProfile(position_bias=1.0)) == "A"


def test_default_sim_judge_profile() -> None:
    prof = DEFAULT_PROFILES["sim-judge"]
    assert prof.judge is not None and prof.ttft_base_ms == 1000.0 and prof.decode_ms_per_token == 0.0
    assert prof.judge.malformed_rate == 0.0 and prof.judge.bias == 0.0
    assert with_judge(prof, bias=0.5).judge == JudgeProfile(bias=0.5)
    assert sim_judge_profile(20.0).ttft_base_ms == 20.0


def test_over_http_with_usage_latency_and_truth_headers() -> None:
    profiles = {"sim-judge": sim_judge_profile(120.0, noise=0.0), "sim-small": DEFAULT_PROFILES["sim-small"]}
    body = {
        "model": "sim-judge", "max_tokens": 400, "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "Rate relevance."},
                     {"role": "user", "content": _prompt(Q.question, "Canberra").split("<|user|>\n")[1]}],
    }
    with SimServer(seed=2, profiles=profiles) as sim:
        t0 = time.perf_counter()
        r = httpx.post(sim.url + "/chat/completions", json=body, timeout=10)
        elapsed = time.perf_counter() - t0
        cut = httpx.post(sim.url + "/chat/completions", json={**body, "max_tokens": 5}, timeout=10).json()
        models = {m["id"] for m in httpx.get(sim.url + "/models").json()["data"]}
    assert r.status_code == 200 and elapsed >= 0.12
    assert r.headers["x-sim-correct"] == "true" and r.headers["x-sim-question-id"] == Q.id
    data = r.json()
    content = data["choices"][0]["message"]["content"]
    why = "The answer states Canberra, which is correct."
    assert orjson.loads(content) == {"relevance": {"explanation": why, "score": 5}}
    usage = data["usage"]
    assert usage["prompt_tokens"] > 20 and 10 < usage["completion_tokens"] <= 400
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 5
    assert models == {"sim-judge", "sim-small"}
