"""Audit of the gateway's /metrics as a platform team scrapes it: a real gateway on 127.0.0.1 with the
simulator as engine, the official ``openai`` client, and the page parsed by prometheus_client's parser.

- client-chosen values (model names, use-case headers, keys) never become label values, and odd
  bytes in them never break the exposition;
- every request is counted once, tokens and durations agree with the records, in seconds;
- the histograms carry the OTel GenAI names, units and recommended buckets (extdata);
- with ``--workers 2`` counters are summed over workers, a SIGKILLed one's kept, and its in-flight
  gauge is gone once it is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infersight.gateway import metrics as gateway_metrics
from infersight.sim.server import SimServer
from tests.conftest import EXTDATA
from tests.e2e.conftest import Stack, start_stack
from tests.e2e.test_audit_workers import BODY, _config, _kill_group, _serve, _started, _workers
from tests.e2e.test_evaluation import wait_for
from tests.redis_server import RedisServer, free_port

KEY = "sk-acme-test"
MESSAGES = [{"role": "user", "content": "hello there"}]
Samples = list[tuple[str, dict[str, str], float]]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack, sim = start_stack(tmp_path)
    try:
        yield stack
    finally:
        stack.gateway.stop()
        sim.stop()


def scrape(base: str) -> Samples:
    """Every sample on the page; the parser raises on anything a Prometheus scrape would refuse."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


def root(stack: Stack) -> str:
    return stack.url.removesuffix("/v1")


def test_client_chosen_names_never_become_label_values(stack: Stack) -> None:
    """Unknown models (quotes, backslashes, newlines, 10 kB names), free-form and non-UTF-8 use-case
    headers and wrong keys: the page still parses, and every label value is a configured one or a
    placeholder, so the series count does not grow with what clients send."""
    base = root(stack)
    odd = ['a"b', "back\\slash", "new\nline", "x" * 10_000, "caf\u00e9-\U0001f600", "{le=\"1\"}"]
    with httpx.Client(timeout=20) as client:
        for i, model in enumerate(odd):
            got = client.post(base + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                              headers={"authorization": f"Bearer {KEY}", "x-infersight-use-case": f"uc-{i}"})
            assert got.status_code == 404, got.text
        for use_case in (b"chat", b"\xff\xfe\x80", b'q"\\', b"uc-" + b"9" * 4000):
            got = client.post(base + "/v1/chat/completions",
                              json={"model": "sim-small", "messages": MESSAGES, "max_tokens": 2},
                              headers=[(b"authorization", f"Bearer {KEY}".encode()),
                                       (b"x-infersight-use-case", use_case)])
            assert got.status_code == 200, got.text
        got = client.post(base + "/v1/chat/completions", json={"model": "sim-small", "messages": MESSAGES},
                          headers={"authorization": 'Bearer sk-"nope\\'})
        assert got.status_code == 401
    samples = scrape(base)
    request_labels = [ls for n, ls, _ in samples if n == "infersight_requests_total"]
    assert {ls["model"] for ls in request_labels} == {"sim-small", "_unknown"}
    assert {ls["tenant"] for ls in request_labels} == {"acme", "_unauthenticated"}
    assert {ls["use_case"] for ls in request_labels} == {"chat", "other"}
    assert {ls["backend"] for ls in request_labels} == {"sim", "_unknown"}
    assert total(samples, "infersight_requests_total") == len(odd) + 4 + 1
    assert total(samples, "infersight_requests_total", model="_unknown", status_code="404",
                 error_type="model_not_found") == len(odd)
    longest = max(len(v) for _, ls, _ in samples for v in ls.values())
    assert longest <= 64, "a label value as long as what a client sent"


def test_every_request_is_counted_once_and_agrees_with_its_record(stack: Stack) -> None:
    """Plain, streamed, cut by the engine, refused by the engine (500), refused by the gateway (404)
    and abandoned by the client mid-stream: requests, tokens, TTFT and duration on /metrics are
    exactly what the stored records say, and durations are in seconds."""
    client = openai.OpenAI(base_url=stack.url, api_key=KEY, max_retries=0)
    client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=5)
    for _ in client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=5, stream=True):
        pass
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=50, stream=True,
                                                extra_headers={"x-sim-fault": "disconnect"}):
            pass
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim-small", messages=MESSAGES, extra_headers={"x-sim-fault": "500"})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    stream = client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=400, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()  # the client leaves after its first token
    records = wait_for(lambda: (r := stack.records(6)) and len(r) >= 6 and r, 10, "six records")
    assert len(records) == 6
    samples = wait_for(lambda: (s := scrape(root(stack)))
                       and total(s, "infersight_requests_total") >= 6 and s, 10, "six requests on /metrics")

    by_outcome = Counter((str(r.status_code), r.error_type or "") for r in records)
    on_page = Counter({(ls["status_code"], ls["error_type"]): v for n, ls, v in samples
                       if n == "infersight_requests_total" and v})
    assert on_page == by_outcome
    assert ("499", "client_disconnected") in by_outcome
    assert total(samples, "infersight_client_disconnects_total") == sum(r.client_disconnected for r in records)
    assert total(samples, "infersight_inflight_requests") == 0
    for token_type, field in (("input", "prompt_tokens"), ("output", "completion_tokens")):
        want = sum(getattr(r, field) or 0 for r in records)
        assert total(samples, "infersight_tokens_total", token_type=token_type) == want, token_type
        assert total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type=token_type) == want, token_type
    ttfts = [r.ttft_ms for r in records if r.ttft_ms is not None]
    assert total(samples, "gen_ai_server_time_to_first_token_seconds_count") == len(ttfts)
    assert total(samples, "gen_ai_server_time_to_first_token_seconds_sum") == pytest.approx(sum(ttfts) / 1000)
    assert total(samples, "gen_ai_server_request_duration_seconds_count") == len(records)
    want_s = sum(r.total_ms or 0.0 for r in records) / 1000
    assert total(samples, "gen_ai_server_request_duration_seconds_sum") == pytest.approx(want_s)


@pytest.mark.skipif(not EXTDATA, reason="INFERSIGHT_EXTDATA is not set")
def test_histograms_follow_the_otel_genai_names_units_and_buckets(stack: Stack) -> None:
    """docs/metrics.md: ``gen_ai.x.y`` becomes ``gen_ai_x_y`` plus the unit (``s`` -> ``_seconds``,
    ``{token}`` -> nothing), with the convention's recommended buckets."""
    summary = json.loads((Path(str(EXTDATA)) / "otel_genai" / "otel_genai_semconv_summary.json").read_text())
    spec = {m["name"]: m for m in summary["metrics"]}
    client = openai.OpenAI(base_url=stack.url, api_key=KEY, max_retries=0)
    for _ in client.chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=4, stream=True):
        pass
    samples = scrape(root(stack))
    for otel in ("gen_ai.server.time_to_first_token", "gen_ai.server.time_per_output_token",
                 "gen_ai.server.request.duration", "gen_ai.client.token.usage"):
        unit = spec[otel]["unit"]
        name = otel.replace(".", "_") + {"s": "_seconds", "{token}": ""}[unit]
        bounds = sorted({float(ls["le"]) for n, ls, _ in samples if n == name + "_bucket"})
        assert bounds == [*spec[otel]["recommended_buckets"], float("inf")], otel
        assert total(samples, name + "_count") >= 1, otel
    attrs = {a["ref"] for a in spec["gen_ai.client.token.usage"]["attributes"]}
    assert "gen_ai.token.type" in attrs
    types = {ls["gen_ai_token_type"] for n, ls, _ in samples if n == "gen_ai_client_token_usage_count"}
    assert types == {"input", "output"}  # the registry's values (``output``, not the deprecated ``completion``)
    assert gateway_metrics.TOKEN_BUCKETS == tuple(spec["gen_ai.client.token.usage"]["recommended_buckets"])


def _post(base: str, body: dict[str, object]) -> int:
    with httpx.Client(timeout=30) as client:  # a new connection: SO_REUSEPORT spreads them
        return client.post(base + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-a"}).status_code


def test_workers_sum_counters_and_forget_a_killed_workers_inflight(tmp_path: Path) -> None:
    """--workers 2: requests served by either worker, and by one SIGKILLed mid-stream, are all on the
    page once; the killed worker's in-flight request is not counted (it never finished), and its
    in-flight gauge is dropped once the supervisor reaps it (no phantom load for ever)."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        with SimServer(seed=7) as sim:
            port = free_port()
            config = _config(tmp_path, sim.url, port, redis.url, bus_extra=", flush_interval_s: 0.05")
            log = tmp_path / "serve.log"
            proc = _serve(config, 2, log)
            try:
                wait_for(lambda: _started(log) >= 2 and len(_workers(proc.pid)) == 2, 40, "two workers")
                base = f"http://127.0.0.1:{port}"
                served = sum(_post(base, BODY) == 200 for _ in range(8))
                assert served == 8
                stall = {"authorization": "Bearer sk-a", "x-sim-fault": "timeout", "x-sim-timeout-s": "30"}
                with httpx.Client(timeout=30) as client:
                    with client.stream("POST", base + "/v1/chat/completions", json={**BODY, "stream": True},
                                       headers=stall) as response:
                        assert response.status_code == 200
                        chunks = response.iter_bytes()
                        next(chunks)  # the engine stalls after its first event
                        page = httpx.get(base + "/metrics", timeout=10).text
                        assert "infersight_inflight_requests 1.0" in page, [l for l in page.splitlines() if "inflight" in l or "requests_total" in l]
                        for pid in _workers(proc.pid):
                            os.kill(pid, signal.SIGKILL)  # whichever serves it: both go
                        with pytest.raises(httpx.HTTPError):
                            for _ in chunks:
                                pass
                wait_for(lambda: _started(log) >= 4 and len(_workers(proc.pid)) == 2, 40, "replacement workers")
                served += sum(_post(base, BODY) == 200 for _ in range(4))
                samples = wait_for(lambda: (s := scrape(base)) and total(s, "infersight_requests_total") >= 12 and s,
                                   20, "twelve requests on /metrics")
                time.sleep(0.5)
                samples = scrape(base)
            finally:
                _kill_group(proc)
    finally:
        redis.stop()
    assert total(samples, "infersight_requests_total") == served == 12
    assert total(samples, "infersight_requests_total", status_code="200", error_type="") == 12
    assert total(samples, "gen_ai_server_request_duration_seconds_count") == 12
    assert total(samples, "infersight_tokens_total", token_type="output") > 0
    assert total(samples, "infersight_inflight_requests") == 0
