"""Low-confidence sampling end to end: the official openai client asks for logprobs through the gateway,
the simulator returns them (confident when its answer is right, a guess when it is wrong), and the
gateway samples for evaluation exactly the answers whose mean token entropy is above
``evaluation.low_confidence_entropy``, with ``sample_reason: low_confidence``; the judge then scores
them. Random sampling is off, so nothing else is sampled."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer
from tests.conftest import config_dict
from tests.e2e.test_evaluation import ADMIN, wait_for


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, SimServer]]:
    # sim-small answers wrongly often enough to see both kinds in a dozen requests
    fast_judge = dataclasses.replace(DEFAULT_PROFILES["sim-judge"], ttft_base_ms=20.0)
    sim = SimServer(seed=11, profiles={**DEFAULT_PROFILES, "sim-judge": fast_judge}).start()
    tenants = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 0.0}]
    settings = settings_from_dict(config_dict(
        tmp_path / "data", sim.url, tenants=tenants,
        evaluation={"guardrail_scan": True, "judge": {"url": sim.url, "model": "sim-judge"}},
    ))
    server = ThreadedServer(build_gateway(settings)).start()
    try:
        yield server.base_url, sim
    finally:
        server.stop()
        sim.stop()


def ask(url: str, question: str, *, stream: bool) -> tuple[str, bool]:
    """(trace id, whether the simulator's answer was right), through the official client."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-acme-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "user", "content": question}], logprobs=True, top_logprobs=5,
        max_tokens=40, stream=stream)
    parsed = raw.parse()
    if stream:
        chunks = list(parsed)
        tokens = [entry for c in chunks for ch in c.choices if ch.logprobs for entry in ch.logprobs.content or []]
    else:
        tokens = parsed.choices[0].logprobs.content
    assert tokens and all(len(t.top_logprobs) == 5 for t in tokens)  # the client parsed the sim's logprobs
    return raw.headers["x-trace-id"], raw.headers["x-sim-correct"] == "true"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_low_confidence_answers_are_sampled_and_judged(gateway: tuple[str, SimServer], stream: bool) -> None:
    url, _ = gateway
    asked = [ask(url, q.question, stream=stream) for q in QUESTION_BANK[:14]]
    assert {right for _, right in asked} == {True, False}  # both kinds, or the test proves nothing
    api = httpx.Client(base_url=url, headers=ADMIN, timeout=10)

    def story(trace: str) -> dict[str, Any] | None:
        got = api.get(f"/api/v1/requests/{trace}")
        return got.json() if got.status_code == 200 else None

    for trace, right in asked:
        body = wait_for(lambda t=trace: story(t))
        record = body["record"]
        if right:
            assert record["sampled_for_eval"] is False and record["sample_reason"] is None
            continue
        assert record["sampled_for_eval"] is True and record["sample_reason"] == "low_confidence"
        judged = wait_for(lambda t=trace: [e for e in (story(t) or {}).get("evaluations", [])
                                           if e["evaluator"] == "llm_judge" and e["dimension"] == "factual_fidelity"])
        assert judged[0]["score"] <= 3  # the judge agrees the guess was wrong
    metrics = httpx.get(f"{url}/metrics").text
    wrong = sum(1 for _, right in asked if not right)
    assert f'infersight_eval_sampled_total{{reason="low_confidence",tenant="acme"}} {float(wrong)}' in metrics
