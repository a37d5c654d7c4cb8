"""Engine behaviour over real sockets: determinism, prefix cache, queueing, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import openai
import orjson
from prometheus_client.parser import text_string_to_metric_families

from infersight.sim.metrics import TIME_TO_FIRST_TOKEN_BUCKETS
from infersight.sim.profiles import ModelProfile
from infersight.sim.server import SimServer

QUESTIONS = [
    "What is the capital of Japan?",
    "Who wrote Don Quixote?",
    "tell me something",
    "What is the capital of Japan?",  # repeated body: the 2nd occurrence draws anew
    "What is the smallest prime number?",
    "What is the capital of Japan?",
]


def _body(q: str) -> dict[str, object]:
    return {"model": "fast", "messages": [{"role": "user", "content": q}], "max_tokens": 60}


async def _run_sequence(sim: SimServer, concurrent: bool) -> list[str]:
    async with aiohttp.ClientSession() as s:
        async def one(q: str) -> str:
            async with s.post(sim.url + "/chat/completions", json=_body(q)) as r:
                return (await r.json())["choices"][0]["message"]["content"]

        if not concurrent:
            return [await one(q) for q in QUESTIONS]
        # Distinct bodies may run concurrently; equal bodies keep their order of arrival.
        results: dict[int, str] = {}
        firsts = [i for i, q in enumerate(QUESTIONS) if QUESTIONS.index(q) == i]
        texts = await asyncio.gather(*(one(QUESTIONS[i]) for i in firsts))
        results.update(zip(firsts, texts))
        for i, q in enumerate(QUESTIONS):
            if i not in results:
                results[i] = await one(q)
        return [results[i] for i in range(len(QUESTIONS))]


async def test_same_seed_same_answers_regardless_of_concurrency(
    sim: SimServer, make_sim: Callable[[int], SimServer]
) -> None:
    async with make_sim(7) as twin, make_sim(8) as other:
        a = await _run_sequence(sim, concurrent=False)
        b = await _run_sequence(twin, concurrent=True)
        c = await _run_sequence(other, concurrent=False)
    assert a == b
    assert a != c
    assert len({a[0], a[3], a[5]}) > 1  # the same question asked again gets a fresh draw


async def _ttft(
    s: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """Seconds to the first content token, and the usage chunk."""
    t0 = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with s.post(url + "/chat/completions", json=body) as r:
        async for line in r.content:
            if b'"content":"' in line and b'"role"' not in line and first is None:
                first = time.perf_counter() - t0
            if b'"usage":{' in line:
                usage = orjson.loads(line[6:])["usage"]
    assert first is not None
    return first, usage


async def test_prefix_cache_lowers_ttft_and_reports_cached_tokens(sim: SimServer) -> None:
    long_prompt = " ".join(f"word{i}" for i in range(500))  # ~500 tokens x 0.5 ms prefill
    body: dict[str, Any] = {"model": "prefill", "messages": [{"role": "user", "content": long_prompt}]}
    async with aiohttp.ClientSession() as s:
        cold, u1 = await _ttft(s, sim.url, body)
        warm, u2 = await _ttft(s, sim.url, body)
    assert u1["prompt_tokens_details"]["cached_tokens"] == 0
    cached = u2["prompt_tokens_details"]["cached_tokens"]
    assert cached == (u2["prompt_tokens"] - 1) // 16 * 16 and cached > 400
    assert cold > 0.2 and warm < cold / 2
    metrics = httpx.get(sim.base_url + "/metrics").text
    assert f'vllm:prefix_cache_hits_total{{engine="0",model_name="prefill"}} {float(cached)}' in metrics


async def test_queueing_beyond_max_num_seqs_adds_to_ttft(sim: SimServer) -> None:
    body: dict[str, Any] = {"model": "one-slot", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20, "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        alone, _ = await _ttft(s, sim.url, body)
        results = await asyncio.gather(*(_ttft(s, sim.url, body) for _ in range(3)))
    ttfts = sorted(t for t, _ in results)
    one_request_s = 0.005 + 19 * 0.003  # prefill + decode of the request ahead in the queue
    assert ttfts[1] > ttfts[0] + one_request_s * 0.8
    assert ttfts[2] > ttfts[0] + 2 * one_request_s * 0.8
    assert ttfts[0] < alone + 0.05
    metrics = httpx.get(sim.base_url + "/metrics").text
    queue = _sample(metrics, "vllm:request_queue_time_seconds_sum", "one-slot")
    assert queue > 2 * one_request_s * 0.8


def _sample(text: str, name: str, model: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels.get("model_name") == model and all(
                s.labels.get(k) == v for k, v in labels.items()
            ):
                return s.value
    raise AssertionError(f"{name}{{model_name={model}}} missing")


def test_metrics_use_vllm_names_buckets_and_follow_the_load(sim: SimServer) -> None:
    async def scrape_under_load() -> str:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 30, "ignore_eos": True, "stream": True}
        async with aiohttp.ClientSession() as s:
            async def drain() -> None:
                async with s.post(sim.url + "/chat/completions", json=body) as r:
                    await r.read()

            tasks = [asyncio.create_task(drain()) for _ in range(5)]
            await asyncio.sleep(0.15)
            async with s.get(sim.base_url + "/metrics") as r:
                during = await r.text()
            await asyncio.gather(*tasks)
            return during

    idle = httpx.get(sim.base_url + "/metrics").text
    assert _sample(idle, "vllm:num_requests_running", "slow") == 0
    during = asyncio.run(scrape_under_load())
    assert _sample(during, "vllm:num_requests_running", "slow") == 3  # max_num_seqs
    assert _sample(during, "vllm:num_requests_waiting", "slow") == 2
    assert _sample(during, "vllm:kv_cache_usage_perc", "slow") > 0
    after = httpx.get(sim.base_url + "/metrics").text
    assert _sample(after, "vllm:num_requests_running", "slow") == 0
    assert _sample(after, "vllm:kv_cache_usage_perc", "slow") == 0
    assert _sample(after, "vllm:request_success_total", "slow", finished_reason="length") == 5
    assert _sample(after, "vllm:generation_tokens_total", "slow") == 150
    assert _sample(after, "vllm:prompt_tokens_total", "slow") > 0
    assert _sample(after, "vllm:prefix_cache_queries_total", "slow") > 0
    assert _sample(after, "vllm:inter_token_latency_seconds_count", "slow") == 5 * 29
    assert _sample(after, "vllm:time_to_first_token_seconds_count", "slow") == 5
    assert _sample(after, "vllm:e2e_request_latency_seconds_count", "slow") == 5
    ttft_les = [
        float(s.labels["le"]) for f in text_string_to_metric_families(after)
        if f.name == "vllm:time_to_first_token_seconds" for s in f.samples
        if s.name.endswith("_bucket") and s.labels["model_name"] == "slow"
    ]
    assert ttft_les[:-1] == TIME_TO_FIRST_TOKEN_BUCKETS


def test_metrics_registry_is_private_per_app() -> None:
    prof = {"m": ModelProfile(ttft_base_ms=1, prefill_ms_per_token=0, decode_ms_per_token=0.1)}
    with SimServer(profiles=prof) as a, SimServer(profiles=prof) as b:
        with openai.OpenAI(base_url=a.url, api_key="x", max_retries=0) as c:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        ma, mb = (httpx.get(x.base_url + "/metrics").text for x in (a, b))
    assert _sample(ma, "vllm:e2e_request_latency_seconds_count", "m") == 1
    assert _sample(mb, "vllm:e2e_request_latency_seconds_count", "m") == 0
