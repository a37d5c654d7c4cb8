"""Quality evaluation end to end on 127.0.0.1: the official openai client through the gateway, the
simulator as engine and as LLM judge, the embedded DuckDB store, and the query API reading scores."""

from __future__ import annotations

import dataclasses
import time
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

ADMIN = {"authorization": "Bearer sk-admin-test"}
JUDGE_DIMENSIONS = {"relevance", "coherence", "factual_fidelity", "no_hallucination", "no_undue_refusal",
                    "tone_compliance"}


@pytest.fixture(params=[True, False], ids=["eval-process", "in-process"])
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """Both shapes of the gateway's evaluation parts: in its eval process (the default) and on its
    own threads (``evaluation.child_process: false``)."""
    fast_judge = dataclasses.replace(DEFAULT_PROFILES["sim-judge"], ttft_base_ms=20.0)
    sim = SimServer(seed=3, profiles={**DEFAULT_PROFILES, "sim-judge": fast_judge}).start()
    tenants = [
        {"id": "acme", "api_keys": ["sk-acme-test"], "use_cases": ["chat"], "sample_rate": 1.0},
        {"id": "globex", "api_keys": ["sk-globex-test"], "sample_rate": 1.0, "content": "none"},
    ]
    settings = settings_from_dict(config_dict(
        tmp_path / "data", sim.url, tenants=tenants,
        evaluation={"child_process": request.param,
                    "judge": {"url": sim.url, "model": "sim-judge", "input_price_per_1m": 1.0,
                              "output_price_per_1m": 2.0}},
    ))
    app = build_gateway(settings)
    gateway = ThreadedServer(app).start()
    try:
        yield gateway.base_url, app
    finally:
        gateway.stop()
        sim.stop()


def wait_for(fn: Any, timeout_s: float = 30.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sampled_requests_are_checked_and_judged(stack: tuple[str, Any]) -> None:
    url, _ = stack
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-acme-test", max_retries=0)
    traces = []
    for question in QUESTION_BANK[:4]:
        raw = client.chat.completions.with_raw_response.create(
            model="sim-large", messages=[{"role": "user", "content": question.question}], stream=False,
            extra_headers={"x-infersight-use-case": "chat"},
        )
        traces.append(raw.headers["x-trace-id"])
    api = httpx.Client(base_url=url, headers=ADMIN, timeout=10)

    def story(trace: str) -> dict[str, Any] | None:
        got = api.get(f"/api/v1/requests/{trace}")
        if got.status_code != 200:
            return None
        body = got.json()
        judged = {e["dimension"] for e in body["evaluations"] if e["evaluator"] == "llm_judge"}
        return body if judged >= JUDGE_DIMENSIONS else None

    for trace in traces:
        body = wait_for(lambda t=trace: story(t))
        assert body["record"]["sampled_for_eval"] is True and body["record"]["sample_reason"] == "random"
        (kept,) = body["content"]  # written with the scores: the masked question and answer
        assert kept["span_id"] == body["record"]["span_id"] and kept["prompt_text"] and kept["completion_text"]
        by = {(e["evaluator"], e["dimension"]): e for e in body["evaluations"]}
        assert by[("checks", "empty")]["label"] == "pass"
        judge = [e for e in body["evaluations"] if e["evaluator"] == "llm_judge"]
        assert len({e["evaluator_version"] for e in judge}) == 1
        assert all(1 <= e["score"] <= 5 and e["judge_model"] == "sim-judge" for e in judge)
        assert sum(e["judge_cost"] for e in judge) > 0 and sum(e["judge_tokens"] for e in judge) > 0

    quality = api.get("/api/v1/quality", params={"group_by": "tenant,model,use_case,dimension",
                                                 "window": "1h"}).json()["data"]
    rows = {(r["tenant_id"], r["model_id"], r["use_case"], r["dimension"]): r for r in quality}
    assert rows[("acme", "sim-large", "chat", "factual_fidelity")]["evaluations"] == 4
    # the rows behind the series, row by row (both gateway shapes: the eval process writes through the store's)
    listed = api.get("/api/v1/evaluations", params={"dimension": "factual_fidelity", "limit": 3}).json()
    more = api.get("/api/v1/evaluations", params={"dimension": "factual_fidelity",
                                                 "cursor": listed["next_cursor"]}).json()
    assert {r["trace_id"] for r in listed["data"] + more["data"]} == set(traces)
    assert len(listed["data"]) == 3 and len(more["data"]) == 1 and more["next_cursor"] is None
    # tenants only see their own quality
    mine = httpx.get(f"{url}/api/v1/quality", headers={"authorization": "Bearer sk-acme-test"}).json()["data"]
    assert mine and all(r["dimension"] for r in mine)
    other = httpx.get(f"{url}/api/v1/quality", params={"tenant": "acme"},
                      headers={"authorization": "Bearer sk-globex-test"})
    assert other.status_code == 403
    metrics = httpx.get(f"{url}/metrics").text
    version = {e["evaluator_version"] for e in judge}.pop()  # the judge's series carries its version
    assert 'infersight_eval_score_count{dimension="factual_fidelity",evaluator="llm_judge",' \
           f'evaluator_version="{version}",model="sim-large",tenant="acme"}} 4.0' in metrics
    assert 'infersight_eval_sampled_total{reason="random",tenant="acme"} 4.0' in metrics


def test_masked_content_is_kept_and_shown_in_the_story(stack: tuple[str, Any]) -> None:
    url, _ = stack
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-acme-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="sim-large", messages=[{"role": "user", "content": "What is the capital of France? Reply to "
                                                                "jo.doe@example.com"}])
    trace = raw.headers["x-trace-id"]
    mine = httpx.Client(base_url=url, headers={"authorization": "Bearer sk-acme-test"}, timeout=10)

    def content() -> list[dict[str, Any]] | None:
        got = mine.get(f"/api/v1/requests/{trace}")
        return got.json()["content"] if got.status_code == 200 and got.json()["content"] else None

    (row,) = wait_for(content)
    assert "[EMAIL]" in row["prompt_text"] and "capital of France" in row["prompt_text"]
    assert all("jo.doe@example.com" not in (row[k] or "") for k in ("prompt_text", "completion_text"))
    assert row["completion_text"] and row["tenant_id"] == "acme" and row["span_id"]
    assert "pii_prompt:EMAIL" in (row["guardrail_hits"] or "").split(",") and row["sample_reason"] == "guardrail"
    record = mine.get(f"/api/v1/requests/{trace}").json()["record"]
    assert record["prompt_text"] is None  # the record itself never holds text
    other = httpx.get(f"{url}/api/v1/requests/{trace}", headers={"authorization": "Bearer sk-globex-test"})
    assert other.status_code == 404


def test_opted_out_tenant_sends_no_content(stack: tuple[str, Any]) -> None:
    url, _ = stack
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-globex-test", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "user", "content": "What is the capital of Japan? jo@x.io"}])
    trace = raw.headers["x-trace-id"]
    api = httpx.Client(base_url=url, headers=ADMIN, timeout=10)
    body = wait_for(lambda: api.get(f"/api/v1/requests/{trace}").json() if
                    api.get(f"/api/v1/requests/{trace}").status_code == 200 else None)
    assert body["record"]["sampled_for_eval"] is True  # the decision is metadata
    assert body["record"]["prompt_text"] is None and body["record"]["completion_text"] is None
    time.sleep(0.5)
    story = api.get(f"/api/v1/requests/{trace}").json()
    assert story["evaluations"] == [] and story["content"] == []  # no masked text kept either


def judged_through_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          **judge: Any) -> tuple[ThreadedServer, SimServer]:
    """A started gateway whose judge (``sim-judge``) is the gateway itself, under the documented
    observability tenant (docs/judge.md), and its simulator; the caller stops both."""
    from tests.redis_server import free_port

    fast_judge = dataclasses.replace(DEFAULT_PROFILES["sim-judge"], ttft_base_ms=20.0)
    sim = SimServer(seed=4, profiles={**DEFAULT_PROFILES, "sim-judge": fast_judge}).start()
    port = free_port()
    monkeypatch.setenv("OBS_JUDGE_KEY", "sk-obs-test")
    tenants = [
        {"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0},
        # the judge's own traffic: measured and attributed, never evaluated itself
        {"id": "observability", "api_keys": ["sk-obs-test"], "sample_rate": 0.0, "content": "none",
         "request_types": ["eval"]},  # the judge's header is granted to this tenant only
    ]
    data = config_dict(tmp_path / "data", sim.url, tenants=tenants, evaluation={"judge": {
        "url": f"http://127.0.0.1:{port}/v1", "model": "sim-judge", "api_key_env": "OBS_JUDGE_KEY", **judge}})
    data["backends"][0]["models"].append("sim-judge")
    return ThreadedServer(build_gateway(settings_from_dict(data)), port=port).start(), sim


def test_judge_routed_through_the_gateway_bills_an_observability_tenant(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, sim = judged_through_itself(tmp_path, monkeypatch)
    try:
        client = openai.OpenAI(base_url=gateway.url, api_key="sk-acme-test", max_retries=0)
        client.chat.completions.create(model="sim-small",
                                       messages=[{"role": "user", "content": QUESTION_BANK[0].question}])
        api = httpx.Client(base_url=gateway.base_url, headers=ADMIN, timeout=10)

        def judge_records() -> list[dict[str, Any]]:
            page = api.get("/api/v1/requests", params={"tenant": "observability"}).json()["data"]
            return [r for r in page if r["model_id"] == "sim-judge"]

        (judged,) = wait_for(judge_records)
        assert judged["request_type"] == "eval" and judged["status_code"] == 200
        assert judged["completion_tokens"] and not judged["sampled_for_eval"]
        quality = wait_for(lambda: api.get("/api/v1/quality", params={"tenant": "acme",
                                                                      "evaluator": "llm_judge"}).json()["data"])
        assert {r["dimension"] for r in quality} >= JUDGE_DIMENSIONS
    finally:
        gateway.stop()
        sim.stop()
