"""The simulator's ``logprobs``: OpenAI's shapes (parsed by the official client), confident when the
answer is right and a guess when it is wrong (so the gateway's entropy threshold tells them apart),
and bad values refused as OpenAI does."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from infersight.evaluation.extract import extract, token_entropies
from infersight.sim.server import SimServer
from tests.unit.sim.test_sim_openai_wire import ask


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_chat_logprobs_follow_the_answer_and_the_openai_shape(client: openai.OpenAI) -> None:
    seen = set()
    for i in range(12):
        raw = client.chat.completions.with_raw_response.create(
            model="fast", messages=ask(f"What is the capital of France? ({i})"), logprobs=True, top_logprobs=5)
        resp = raw.parse()
        content = resp.choices[0].logprobs.content
        text = resp.choices[0].message.content or ""
        assert "".join(t.token for t in content) == text  # one entry per answer token
        assert all(len(t.top_logprobs) == 5 and t.bytes == list(t.token.encode()) for t in content)
        assert all(t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in content)  # most likely first
        assert all(any(alt.token == t.token and alt.logprob == t.logprob for alt in t.top_logprobs) for t in content)
        entropy = mean(token_entropies(resp.choices[0].logprobs.model_dump()))
        right = raw.headers["x-sim-correct"] == "true"
        seen.add(right)
        assert (entropy < 1.0) if right else (entropy > 1.5)  # 1.5: evaluation.low_confidence_entropy
    assert seen == {True, False}


def test_streamed_logprobs_ride_on_each_answer_token(sim: SimServer) -> None:
    body = {"model": "thinker", "messages": ask(), "stream": True, "logprobs": True, "top_logprobs": 2}
    with httpx.stream("POST", sim.url + "/chat/completions", json=body, timeout=10) as resp:
        raw = resp.read()
    got = extract(raw, stream=True, api="chat")
    assert got.text and got.mean_entropy is not None
    events = [line for line in raw.split(b"\n") if line.startswith(b"data: {")]
    reasoning = [e for e in events if b'"reasoning_content"' in e]
    assert reasoning and all(b'"logprobs":null' in e for e in reasoning)  # only answer tokens carry them


def test_completions_logprobs_are_the_legacy_shape(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="fast", prompt="The capital of France is", logprobs=3, max_tokens=6)
    lp = resp.choices[0].logprobs
    assert lp is not None and "".join(lp.tokens) == resp.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset[0] == 0 and all(len(top) == 3 for top in lp.top_logprobs)
    assert all(math.isclose(top[tok], own) for tok, own, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs,
                                                                        strict=True))


@pytest.mark.parametrize("extra, param", [
    ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
])
def test_bad_chat_logprobs_are_refused(sim: SimServer, extra: dict[str, object], param: str) -> None:
    got = httpx.post(sim.url + "/chat/completions", json={"model": "fast", "messages": ask(), **extra}, timeout=5)
    assert got.status_code == 400 and got.json()["error"]["param"] == param


def test_bad_completions_logprobs_are_refused(sim: SimServer) -> None:
    got = httpx.post(sim.url + "/completions", json={"model": "fast", "prompt": "x", "logprobs": 6}, timeout=5)
    assert got.status_code == 400 and got.json()["error"]["param"] == "logprobs"
