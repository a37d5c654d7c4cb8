"""Audit: does the simulator say what a real engine says?

Compared with vLLM 0.33.0's metric definitions and dcgm-exporter's counters (``INFERSIGHT_EXTDATA``),
with the OpenAI wire format, and with what the telemetry collector makes of a vLLM page. Everything
runs over real HTTP on 127.0.0.1 (``SimServer``); the page is read with prometheus_client's parser.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infersight.sim.judge import classify, find_question
from infersight.sim.profiles import ModelProfile
from infersight.sim.server import SimServer
from infersight.sim.text import count_tokens
from infersight.telemetry.engines import COMMON_METRICS, map_engine, wanted_families
from infersight.telemetry.prom_text import parse_text
from infersight.telemetry.rates import RateTracker

QUICK = ModelProfile(ttft_base_ms=1.0, prefill_ms_per_token=0.0, decode_ms_per_token=0.2, p_correct=1.0,
                     typical_output_tokens=12)
PROFILES: dict[str, ModelProfile] = {
    "always-right": QUICK,
    "thinker": dataclasses.replace(QUICK, typical_reasoning_tokens=30),
    "mixed": dataclasses.replace(QUICK, p_correct=0.5, typical_output_tokens=10),
}
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=11, profiles=PROFILES) as server:
        yield server


def chat(sim: SimServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(sim.url + "/chat/completions", json=body, timeout=10)


def ask(text: str = FRANCE) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_openai_error(resp: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    return dict(error)


def sse_payloads(text: str) -> list[dict[str, Any]]:
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    return [orjson.loads(e[len("data: "):]) for e in events[:-1]]


# --- bugs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", [
    [{"type": "text", "text": 5}],
    [{"type": "text"}],
    [{"type": "text", "text": None}],
    ["just a string"],
    [{"text": "no type"}],
])
def test_malformed_content_parts_are_a_400_not_a_crash(sim: SimServer, parts: list[Any]) -> None:
    """Before the fix a text part whose ``text`` was not a string raised a TypeError in the sim: HTTP 500
    and an "Exception in ASGI application" traceback, where OpenAI and vLLM answer 400. A part without
    ``text``, or a part that is not an object, was silently read as empty text."""
    resp = chat(sim, {"model": "mixed", "messages": [{"role": "user", "content": parts}]})
    assert_openai_error(resp, 400, "messages")


def test_well_formed_content_parts_still_pass(sim: SimServer) -> None:
    parts = [{"type": "text", "text": FRANCE},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    resp = chat(sim, {"model": "mixed", "messages": [{"role": "user", "content": parts}]})
    assert resp.status_code == 200 and resp.json()["sim"]["question_id"] == "geo-01"


def test_stream_options_without_stream_is_refused(sim: SimServer) -> None:
    """Before the fix ``stream_options`` on a non-streamed request was ignored (200), where OpenAI and
    vLLM answer 400: a client that expects a usage chunk learns nothing is coming. A malformed
    ``stream_options`` on a stream was ignored too."""
    body = {"model": "mixed", "messages": ask(), "stream_options": {"include_usage": True}}
    assert_openai_error(chat(sim, body), 400, "stream_options")
    assert_openai_error(chat(sim, {**body, "stream": False}), 400, "stream_options")
    assert_openai_error(chat(sim, {**body, "stream": True, "stream_options": "yes"}), 400, "stream_options")
    assert chat(sim, {**body, "stream_options": None}).status_code == 200  # null is "not given"
    streamed = sse_payloads(chat(sim, {**body, "stream": True}).text)
    assert streamed[-1]["choices"] == [] and streamed[-1]["usage"]["completion_tokens"] > 0


def _truth_agrees_with_the_text(resp: httpx.Response, stream: bool) -> tuple[bool, str]:
    if stream:
        payloads = sse_payloads(resp.text)
        text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
    else:
        text = resp.json()["choices"][0]["message"]["content"]
    said = resp.headers["x-sim-correct"] == "true"
    verdict, _, _ = classify(find_question(FRANCE), text, None)
    assert said == (verdict == "correct"), (said, verdict, text)
    return said, text


@pytest.mark.parametrize("stream", [False, True])
def test_a_right_answer_cut_before_it_is_stated_is_not_correct(sim: SimServer, stream: bool) -> None:
    """Before the fix ``x-sim-correct`` (and the ``sim`` field) said true for "The answer" cut at
    ``max_tokens=2``, for "The" cut at a stop sequence, and for an empty answer when a reasoner's trace
    used up the budget, while the sim judge, reading the same text, scores it wrong: judge calibration
    against the truth header counted the judge wrong. Now the truth is what the text states."""
    seen: set[bool] = set()
    for i in range(12):  # several wordings ("Paris.", "It is Paris.", "The answer is Paris.", ...)
        for extra in ({"max_tokens": 1 + i % 4}, {"stop": [" answer", " is"], "max_tokens": 50}):
            body = {"model": "always-right", "messages": ask(f"{FRANCE} ({i})"), "stream": stream, **extra}
            said, text = _truth_agrees_with_the_text(chat(sim, body), stream)
            seen.add(said)
    assert seen == {True, False}  # p_correct=1: every "false" is a right answer cut short
    body = {"model": "thinker", "messages": ask(), "max_tokens": 10, "stream": stream}
    said, text = _truth_agrees_with_the_text(chat(sim, body), stream)
    assert text == "" and not said
    if not stream:
        full = chat(sim, {**body, "max_tokens": 500})
        assert full.json()["sim"]["correct"] is True and full.headers["x-sim-correct"] == "true"


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_text_holds_every_counted_token(sim: SimServer, stream: bool) -> None:
    """Before the fix a reasoner on ``/v1/completions`` (which has no ``reasoning_content``) streamed its
    reasoning inside ``text``, glued to the answer ("...would" + "The answer is"), while the non-streamed
    reply left it out of ``text`` but still counted it in ``usage.completion_tokens`` (22 counted, 12 in
    the text). Now a reasoner answers the legacy API at once: text and usage agree either way."""
    body: dict[str, Any] = {"model": "thinker", "prompt": FRANCE, "max_tokens": 200, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    resp = httpx.post(sim.url + "/completions", json=body, timeout=10)
    assert resp.status_code == 200
    if stream:
        payloads = sse_payloads(resp.text)
        text = "".join(p["choices"][0]["text"] for p in payloads if p["choices"])
        usage = payloads[-1]["usage"]
    else:
        text, usage = resp.json()["choices"][0]["text"], resp.json()["usage"]
    assert count_tokens(text) == usage["completion_tokens"] > 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert "Paris" in text or "Lyon" in text or "Marseille" in text  # it answers first


# --- gaps: the metrics page against vLLM 0.33.0 and the collector ------------------------------


def _page(sim: SimServer) -> str:
    resp = httpx.get(sim.base_url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return resp.text


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


_BUCKET_KEYS = {
    "time_to_first_token_buckets": "TIME_TO_FIRST_TOKEN_BUCKETS",
    "inter_token_latency_buckets": "INTER_TOKEN_LATENCY_BUCKETS",
    "request_latency_buckets": "REQUEST_LATENCY_BUCKETS",
    "request_tokens_buckets": "build_1_2_5_buckets(max_model_len=8192) [request_tokens family]",
}


def test_metric_families_are_vllm_0_33_names_types_labels_help_and_buckets(sim: SimServer,
                                                                            extdata: Path) -> None:
    """Every family the sim serves is one vLLM 0.33.0 defines, as the same type, with the same label
    names, help text, exposition name (``_total`` on counters) and bucket boundaries (max_model_len
    8192, as every sim profile has)."""
    ref_dir = extdata / "engines" / "vllm"
    ref = {m["name"]: m for m in json.loads((ref_dir / "vllm_0.33.0_metrics.json").read_text())}
    buckets = json.loads((ref_dir / "vllm_0.33.0_histogram_buckets.json").read_text())
    chat(sim, {"model": "mixed", "messages": ask(), "max_tokens": 5})  # every series has samples
    fams = {n: f for n, f in _families(_page(sim)).items() if not n.endswith("_created")}
    assert len(fams) >= 20
    for name, fam in fams.items():
        r = ref.get(name)
        assert r is not None, f"{name} is not a vLLM 0.33.0 metric"
        assert fam.type == r["type"], name
        assert fam.documentation == r["documentation"], name
        labels = {k for s in fam.samples for k in s.labels} - {"le"}
        assert labels == set(re.findall(r'"(\w+)"', r["labelnames"])), name
        exposed = {s.name for s in fam.samples}
        want = r["exposition_sample_name"]
        assert exposed == (set(want) if isinstance(want, list) else {want}), name
        if fam.type == "histogram":
            les = sorted({float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")})
            assert les[:-1] == [float(b) for b in buckets[_BUCKET_KEYS[r["buckets"]]]], name
            assert les[-1] == float("inf")
        for s in fam.samples:
            assert s.labels["engine"] == "0" and s.labels["model_name"] in PROFILES
    success = {s.labels["finished_reason"] for s in fams["vllm:request_success"].samples}
    assert {"stop", "length", "abort"} <= success  # pre-created at 0, as vLLM does


def test_dcgm_page_uses_dcgm_exporter_names_types_and_help(sim: SimServer, extdata: Path) -> None:
    known: dict[str, tuple[str, str]] = {}
    for csv_name in ("default-counters.csv", "dcp-metrics-included.csv"):
        lines = (extdata / "engines" / "dcgm" / csv_name).read_text().splitlines()
        for row in csv.reader(line.lstrip("# ") for line in lines):
            if len(row) >= 3 and row[0].strip().startswith("DCGM_FI_"):
                known[row[0].strip()] = (row[1].strip(), ",".join(row[2:]).strip())
    text = httpx.get(sim.base_url + "/dcgm/metrics", timeout=10).text
    fams = _families(text)
    assert len(fams) >= 8
    for name, fam in fams.items():
        assert name in known, f"{name} is not a dcgm-exporter counter"
        kind, help_text = known[name]
        assert (fam.type, fam.documentation) == (kind, help_text), name
        [sample] = fam.samples
        assert {"gpu", "UUID", "modelName", "Hostname"} <= set(sample.labels)
    used, free, reserved = (fams[f"DCGM_FI_DEV_FB_{k}"].samples[0].value
                            for k in ("USED", "FREE", "RESERVED"))
    assert used + free + reserved == 81_559  # an H100 80GB's framebuffer, in MiB
    assert 0 <= fams["DCGM_FI_DEV_GPU_UTIL"].samples[0].value <= 100
    assert 0 <= fams["DCGM_FI_PROF_SM_ACTIVE"].samples[0].value <= 1


def _value(fams: dict[str, Any], family: str, sample: str, model: str, **labels: str) -> float:
    total = 0.0
    for s in fams[family].samples:
        if s.name == sample and s.labels.get("model_name") == model and all(
            s.labels.get(k) == v for k, v in labels.items()
        ):
            total += s.value
    return total


def test_counters_agree_with_the_usage_the_wire_reported() -> None:
    """The page is what the requests were: token counters are the sums of ``usage``, prefix hits the
    sum of ``cached_tokens`` (and never above queries), successes by ``finish_reason``; histograms are
    cumulative with ``+Inf == _count``; counters never go down between scrapes; gauges stay in range."""
    long_prompt = " ".join(f"w{i}" for i in range(90))
    usages: list[dict[str, Any]] = []
    reasons: dict[str, int] = {}
    with SimServer(seed=5, profiles=PROFILES) as sim, \
            openai.OpenAI(base_url=sim.url, api_key="x", max_retries=0, timeout=10) as client:
        before = _families(_page(sim))
        for i in range(6):
            kw: dict[str, Any] = {"model": "mixed", "messages": ask(long_prompt), "max_tokens": 4 + 5 * i}
            if i % 2:
                chunks = list(client.chat.completions.create(**kw, stream=True,
                                                             stream_options={"include_usage": True}))
                assert chunks[-1].usage is not None
                usages.append(chunks[-1].usage.model_dump())
                reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            else:
                resp = client.chat.completions.create(**kw)
                assert resp.usage is not None
                usages.append(resp.usage.model_dump())
                reason = resp.choices[0].finish_reason
            reasons[str(reason)] = reasons.get(str(reason), 0) + 1
        legacy = client.completions.create(model="mixed", prompt=long_prompt, max_tokens=7)
        assert legacy.usage is not None
        usages.append(legacy.usage.model_dump())
        reasons[legacy.choices[0].finish_reason] = reasons.get(legacy.choices[0].finish_reason, 0) + 1
        after = _families(_page(sim))

    def total(name: str) -> float:
        return _value(after, name, name + "_total", "mixed")

    assert total("vllm:generation_tokens") == sum(u["completion_tokens"] for u in usages)
    assert total("vllm:prompt_tokens") == sum(u["prompt_tokens"] for u in usages)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert cached > 0  # the repeated long prompt hit the prefix cache
    assert total("vllm:prefix_cache_hits") == total("vllm:prompt_tokens_cached") == cached
    assert total("vllm:prefix_cache_queries") == total("vllm:prompt_tokens") >= cached
    for reason, n in reasons.items():
        assert _value(after, "vllm:request_success", "vllm:request_success_total", "mixed",
                      finished_reason=reason) == n
    assert _value(after, "vllm:request_generation_tokens", "vllm:request_generation_tokens_sum",
                  "mixed") == total("vllm:generation_tokens")
    for name, fam in after.items():
        if fam.type == "counter":
            for s in fam.samples:
                old = [b.value for b in before[name].samples if b.labels == s.labels]
                assert s.value >= (old[0] if old else 0.0), s
        if fam.type == "histogram":
            for model in PROFILES:
                counts = [s.value for s in fam.samples if s.name.endswith("_bucket")
                          and s.labels["model_name"] == model]
                assert counts == sorted(counts), name
                assert counts[-1] == _value(after, name, name + "_count", model), name
                assert _value(after, name, name + "_sum", model) >= 0, name
        if fam.type == "gauge" and name.startswith("vllm:"):
            for s in fam.samples:
                assert s.value >= 0 and (name != "vllm:kv_cache_usage_perc" or s.value <= 1), s
    n = len(usages)
    for hist in ("vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
                 "vllm:request_queue_time_seconds", "vllm:request_prompt_tokens"):
        assert _value(after, hist, hist + "_count", "mixed") == n, hist


def test_the_collector_reads_the_sim_page_as_a_vllm_page() -> None:
    """The collector's vLLM mapping, fed two scrapes of the sim's page, yields every common engine
    metric, each consistent with the counters on the page: no sim-only name is needed."""
    tracker = RateTracker()
    long_prompt = " ".join(f"w{i}" for i in range(70))
    with SimServer(seed=9, profiles=PROFILES) as sim:
        def scrape(t: float) -> tuple[str, list[Any]]:
            body = httpx.get(sim.base_url + "/metrics", timeout=10).content
            fams = parse_text(body, strict=True, only=wanted_families("vllm"))
            return body.decode(), map_engine("vllm", fams, tracker, "sim-0", t, ["mixed"])

        first_page, first = scrape(1000.0)
        for i in range(5):
            resp = chat(sim, {"model": "mixed", "messages": ask(long_prompt), "max_tokens": 8})
            assert resp.status_code == 200
        second_page, second = scrape(1010.0)
    assert {s.metric for s in first if s.model_id == "mixed"} == {
        "kv_cache_usage", "requests_running", "requests_waiting"}  # gauges only: rates need two scrapes
    got = {s.metric: s.value for s in second if s.model_id == "mixed"}
    assert set(got) == set(COMMON_METRICS)
    a, b = _families(first_page), _families(second_page)

    def delta(name: str, **labels: str) -> float:
        return (_value(b, name, name + "_total", "mixed", **labels)
                - _value(a, name, name + "_total", "mixed", **labels))

    assert got["generation_tokens_per_s"] == pytest.approx(delta("vllm:generation_tokens") / 10)
    assert got["prompt_tokens_per_s"] == pytest.approx(delta("vllm:prompt_tokens") / 10)
    assert got["requests_per_s"] == pytest.approx(0.5)
    assert got["prefix_cache_hit_rate"] == pytest.approx(
        delta("vllm:prefix_cache_hits") / delta("vllm:prefix_cache_queries"))
    assert 0.5 < got["prefix_cache_hit_rate"] < 1  # 4 of 5 identical prompts hit
    assert got["preemptions_per_s"] == 0.0
    assert (got["kv_cache_usage"], got["requests_running"], got["requests_waiting"]) == (0.0, 0.0, 0.0)
    assert 0 < got["engine_ttft_p50_s"] <= got["engine_ttft_p99_s"] < 0.25  # ~1 ms TTFTs: first bucket
    assert 0 < got["engine_itl_p50_s"] <= got["engine_itl_p99_s"] <= 0.01
