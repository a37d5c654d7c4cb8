"""Audit of the collector's reading of engine and DCGM pages: bad values, resets, OpenMetrics quirks,
data-parallel engines, and targets that never finish their page (real HTTP on 127.0.0.1).

Before the audit a non-finite reading from one series was skipped and the rest reported as the whole:
one data-parallel engine's ``NaN`` halved ``requests_running`` and the token rates, and a ``NaN`` (or a
first-seen) hits counter reported a prefix-cache hit rate of 0.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from infersight.model.telemetry import TelemetrySample
from infersight.serving import ThreadedServer
from infersight.telemetry import collector as collector_mod
from infersight.telemetry.collector import TelemetryCollector, TelemetryMetrics
from infersight.telemetry.engines import map_engine
from infersight.telemetry.prom_text import parse_text
from infersight.telemetry.rates import RateTracker
from infersight.telemetry.settings import TelemetrySettings


def scrape(kind: str, page: str, tracker: RateTracker, t: float, models: tuple[str, ...] = ()) -> dict[
        tuple[str, str | None], float]:
    """(metric, model_id) -> value of one page, as the collector parses it (strict=False)."""
    samples = map_engine(kind, parse_text(page, strict=False), tracker, "host-1", t, models)
    return {(s.metric, s.model_id): s.value for s in samples}


def vllm_dp_page(running1: str, tokens1: str, hits: str, ttft_inf1: str, n: int) -> str:
    """A vLLM 0.33 page (prometheus_client 0.0.4) for model ``m`` on two data-parallel engines."""
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} 4.0
vllm:num_requests_running{{engine="1",model_name="m"}} {running1}
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="m"}} {100 * n}.0
vllm:prompt_tokens_total{{engine="1",model_name="m"}} {tokens1}
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {200 * n}.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {hits}
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="m"}} {10 * n}.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="m"}} {10 * n}.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="0.1",model_name="m"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="+Inf",model_name="m"}} {ttft_inf1}
"""


def test_a_nan_on_one_data_parallel_engine_gives_no_figure_not_half_of_one() -> None:
    """Was: engine 1's NaN was skipped and engine 0 reported as the model: requests_running 4 (of 8),
    prompt_tokens_per_s 10 (of 20), TTFT quantiles from engine 0 alone, prefix_cache_hit_rate 0.0."""
    tr = RateTracker()
    assert scrape("vllm", vllm_dp_page("4.0", "0.0", "0.0", "0.0", 0), tr, 1000.0) == {
        ("requests_running", "m"): 8.0}
    bad = scrape("vllm", vllm_dp_page("NaN", "NaN", "NaN", "+Inf", 1), tr, 1010.0)
    for metric in ("requests_running", "prompt_tokens_per_s", "prefix_cache_hit_rate", "engine_ttft_p50_s"):
        assert (metric, "m") not in bad, f"{metric} reported from part of the model: {bad}"
    # The next good scrape is measured against the last finite one of each series.
    good = scrape("vllm", vllm_dp_page("4.0", "200.0", "100.0", "5.0", 2), tr, 1020.0)
    assert good[("requests_running", "m")] == 8.0
    assert good[("prompt_tokens_per_s", "m")] == pytest.approx((200 - 100) / 10 + (200 - 0) / 20)
    assert good[("prefix_cache_hit_rate", "m")] == pytest.approx(100 / 400)  # hits over 20 s / queries over 20 s
    assert good[("engine_ttft_p99_s", "m")] == 0.1  # engine 1's 5 observations above the top bound


def sglang_page(prompt: int, cached: dict[str, int]) -> str:
    lines = ["# TYPE sglang:prompt_tokens_total counter",
             f'sglang:prompt_tokens_total{{model_name="qwen",tp_rank="0",is_streaming="true"}} {prompt}.0',
             "# TYPE sglang:cached_tokens_total counter"]
    lines += [f'sglang:cached_tokens_total{{model_name="qwen",tp_rank="0",cache_source="{src}"}} {n}.0'
              for src, n in cached.items()]
    return "\n".join(lines) + "\n"


def test_sglang_hit_rate_when_cached_token_series_appear_lazily() -> None:
    """SGLang creates ``cached_tokens_total{cache_source=...}`` on the first hit from that source.
    No series yet: no hits, a rate of 0. The series' first appearance: its increase is unknown.
    Was: 0.0 at that first appearance, though 300 of 1000 prompt tokens had just hit the cache."""
    tr = RateTracker()
    scrape("sglang", sglang_page(500, {}), tr, 0.0)
    assert scrape("sglang", sglang_page(1000, {}), tr, 10.0)[("prefix_cache_hit_rate", "qwen")] == 0.0
    assert ("prefix_cache_hit_rate", "qwen") not in scrape("sglang", sglang_page(2000, {"device": 300}), tr, 20.0)
    assert scrape("sglang", sglang_page(3000, {"device": 800}), tr, 30.0)[("prefix_cache_hit_rate", "qwen")] == 0.5


def test_tgi_kv_estimate_with_an_infinite_or_nan_budget_is_no_figure() -> None:
    """TGI's KV estimate divides two gauges; a NaN or +Inf one must not read as 0 % or 100 % used."""
    def page(cur: str, budget: str) -> str:
        return (f"# TYPE tgi_batch_current_max_tokens gauge\ntgi_batch_current_max_tokens {cur}\n"
                f"# TYPE tgi_batch_max_total_tokens gauge\ntgi_batch_max_total_tokens {budget}\n")
    tr = RateTracker()
    assert scrape("tgi", page("4096", "16384"), tr, 0.0, ("mistral",)) == {("kv_cache_usage", "mistral"): 0.25}
    for cur, budget in (("NaN", "16384"), ("+Inf", "16384"), ("4096", "+Inf"), ("4096", "NaN"), ("4096", "0")):
        assert scrape("tgi", page(cur, budget), tr, 1.0, ("mistral",)) == {}, (cur, budget)


def test_openmetrics_page_with_escaped_model_and_a_restart() -> None:
    """An OpenMetrics page (counter family without ``_total``, ``_created``, ``# EOF``) whose model label
    holds an escaped quote, backslash and newline; the engine restarts between the 2nd and 3rd scrape."""
    model = 'org\\"x\\\\y\\nz'  # as written on the page
    def page(tokens: int, created: float) -> str:
        return (f"# TYPE vllm:generation_tokens counter\n# UNIT vllm:generation_tokens tokens\n"
                f'vllm:generation_tokens_total{{model_name="{model}",engine="0"}} {tokens}\n'
                f'vllm:generation_tokens_created{{model_name="{model}",engine="0"}} {created}\n'
                f"# EOF\nvllm:generation_tokens_total{{model_name=\"junk\"}} 1e9\n")
    tr = RateTracker()
    assert scrape("vllm", page(1000, 1.7e9), tr, 0.0) == {}
    assert scrape("vllm", page(3000, 1.7e9), tr, 10.0) == {("generation_tokens_per_s", 'org"x\\y\nz'): 200.0}
    after = scrape("vllm", page(500, 1.7e9 + 15), tr, 20.0)  # restarted: 500 tokens since, not -2500
    assert after == {("generation_tokens_per_s", 'org"x\\y\nz'): 50.0}


def test_histogram_of_one_restarted_engine_counts_its_new_observations() -> None:
    """Engine 1 restarts (its buckets go backwards) while engine 0 runs on: engine 1's counts since the
    restart are its increase, added to engine 0's; nothing negative reaches the quantile."""
    def page(e0: tuple[int, int], e1: tuple[int, int]) -> str:
        rows = ["# TYPE vllm:request_queue_time_seconds histogram"]
        for engine, (fast, total) in (("0", e0), ("1", e1)):
            rows += [f'vllm:request_queue_time_seconds_bucket{{engine="{engine}",le="0.3",model_name="m"}} {fast}',
                     f'vllm:request_queue_time_seconds_bucket{{engine="{engine}",le="0.5",model_name="m"}} {total}',
                     f'vllm:request_queue_time_seconds_bucket{{engine="{engine}",le="+Inf",model_name="m"}} {total}']
        return "\n".join(rows) + "\n"
    tr = RateTracker()
    scrape("vllm", page((10, 10), (500, 900)), tr, 0.0)
    got = scrape("vllm", page((20, 20), (0, 10)), tr, 10.0)
    # 10 new fast ones on engine 0, 10 slow ones (0.3-0.5 s) on restarted engine 1: the median is at 0.3
    assert got[("engine_queue_p50_s", "m")] == pytest.approx(0.3)
    assert got[("engine_queue_p99_s", "m")] == pytest.approx(0.3 + 0.2 * (19.8 - 10) / 10)


# --- the collector over real HTTP ---------------------------------------------------------------

GOOD_PAGE = (b"# TYPE vllm:num_requests_running gauge\n"
             b'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n')


class EndlessPages:
    """``/good``: a small vLLM page. ``/trickle``: a valid page that never ends, a line every 50 ms.
    ``/flood``: a valid page streamed as fast as the client reads, without end. Both stop at teardown."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})  # lifespan.startup / lifespan.shutdown
                if kind == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4")]})
        if scope["path"] == "/good":
            await send({"type": "http.response.body", "body": GOOD_PAGE})
            return
        line = GOOD_PAGE * (1 if scope["path"] == "/trickle" else 1024)
        await send({"type": "http.response.body", "body": line, "more_body": True})
        while not self.stop.is_set():
            await asyncio.sleep(0.05 if scope["path"] == "/trickle" else 0)
            await send({"type": "http.response.body", "body": b"# still here\n" * (1 if scope["path"] == "/trickle"
                                                                                      else 4096),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def endless() -> Iterator[str]:
    app = EndlessPages()
    server = ThreadedServer(app).start()
    try:
        yield server.base_url
    finally:
        app.stop.set()
        server.stop()


def test_pages_that_never_end_fail_alone_and_the_round_ends(endless: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page that trickles forever is cut by the target's timeout, one that floods by the size bound
    (lowered here to 256 KiB); each is counted for its target, logged once, and the healthy target's
    samples flow every round."""
    monkeypatch.setattr(collector_mod, "MAX_PAGE_BYTES", 256 << 10)
    registry = CollectorRegistry()
    published: list[TelemetrySample] = []
    settings = TelemetrySettings(interval_s=1, timeout_s=0.5, targets=[
        {"instance": "good", "kind": "vllm", "url": f"{endless}/good", "models": ["m"]},
        {"instance": "slow", "kind": "vllm", "url": f"{endless}/trickle"},
        {"instance": "huge", "kind": "vllm", "url": f"{endless}/flood"},
    ])
    collector = TelemetryCollector(settings, published.append, TelemetryMetrics(registry))

    async def rounds(n: int) -> None:
        async with collector.session() as session:
            for _ in range(n):
                await asyncio.wait_for(collector.run_round(session), 60)  # a hang fails, not blocks

    asyncio.run(rounds(2))
    assert collector.down == {("slow", "vllm"): "timeout", ("huge", "vllm"): "page larger than 262144 bytes"}
    for instance in ("slow", "huge"):
        assert registry.get_sample_value("infersight_telemetry_scrape_failures_total",
                                         {"instance": instance, "kind": "vllm"}) == 2
    assert [(s.instance, s.metric, s.value) for s in published] == [("good", "requests_running", 3.0)] * 2
