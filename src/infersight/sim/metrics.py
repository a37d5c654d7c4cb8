"""vLLM-compatible Prometheus metrics of the simulator.

Names, types, label names and buckets follow vLLM 0.33.0 (``vllm/v1/metrics/loggers.py`` and
``buckets.py``) so that our vLLM scraper can be tested against the sim. Counters are declared
without ``_total``; prometheus_client adds it on exposition, as in vLLM. Gauges are computed at
scrape time from the live scheduler state, so the request path pays nothing for them. Each app has
a private ``CollectorRegistry``: several sims can live in one process (tests) without clashing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Bucket boundaries copied from vLLM 0.33.0 vllm/v1/metrics/buckets.py.
TIME_TO_FIRST_TOKEN_BUCKETS: list[float] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
]
INTER_TOKEN_LATENCY_BUCKETS: list[float] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
]
REQUEST_LATENCY_BUCKETS: list[float] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
]
# build_1_2_5_buckets(max_model_len=8192), used by vLLM for the request_tokens family.
REQUEST_TOKENS_BUCKETS: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

LABELS: tuple[str, str] = ("model_name", "engine")
ENGINE_INDEX = "0"

# (model_name, running, waiting, kv_cache_usage fraction)
GaugeSource = Callable[[], Iterable[tuple[str, int, int, float]]]


class _LiveGauges(Collector):
    """Scheduler gauges read at scrape time."""

    def __init__(self, source: GaugeSource) -> None:
        self._source = source

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families([]))

    def collect(self) -> list[GaugeMetricFamily]:
        return list(self._families(self._source()))

    @staticmethod
    def _families(rows: Iterable[tuple[str, int, int, float]]) -> Iterable[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            labels=LABELS,
        )
        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
            labels=LABELS,
        )
        for model, n_run, n_wait, usage in rows:
            running.add_metric([model, ENGINE_INDEX], n_run)
            waiting.add_metric([model, ENGINE_INDEX], n_wait)
            kv.add_metric([model, ENGINE_INDEX], usage)
        return (running, waiting, kv)


class _TokenHistogram(Collector):
    """A lock-free histogram for per-token observations (inter-token latency).

    prometheus_client's Histogram takes a lock and walks the buckets in Python on every observe;
    per token, under benchmark load, that was ~15% of the sim's CPU. All updates come from the
    app's event loop thread, so plain lists suffice.
    """

    def __init__(self, name: str, doc: str, buckets: list[float]) -> None:
        self.name, self.doc, self.bounds = name, doc, list(buckets)
        self._series: dict[tuple[str, ...], _TokenSeries] = {}

    def labels(self, *values: str) -> _TokenSeries:
        return self._series.setdefault(values, _TokenSeries(self.bounds))

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.doc, labels=LABELS)]

    def collect(self) -> list[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=LABELS)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for values, series in self._series.items():
            cum, buckets = 0, []
            for le, n in zip(les, series.counts):
                cum += n
                buckets.append((le, cum))
            fam.add_metric(list(values), buckets, series.total)
        return [fam]


class _TokenSeries:
    """Bucket counts of one label set; the last slot is +Inf."""

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, counts = self.bounds, self.counts
        total = 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1  # le semantics: v <= bound
            total += v
        self.total += total


class SimMetrics:
    """All metric families of one sim app, in its own registry."""

    def __init__(self, gauge_source: GaugeSource) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registry.register(_LiveGauges(gauge_source))

        def counter(name: str, doc: str, extra: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labelnames=[*LABELS, *extra], registry=r)

        def histogram(name: str, doc: str, buckets: list[float]) -> Histogram:
            return Histogram(name, doc, labelnames=LABELS, buckets=buckets, registry=r)

        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.num_preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.request_success = counter(
            "vllm:request_success", "Count of successfully processed requests.",
            ("finished_reason",),
        )
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.",
            REQUEST_TOKENS_BUCKETS,
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.",
            REQUEST_TOKENS_BUCKETS,
        )
        self.request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.",
            REQUEST_TOKENS_BUCKETS,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            TIME_TO_FIRST_TOKEN_BUCKETS,
        )
        self.itl = _TokenHistogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            INTER_TOKEN_LATENCY_BUCKETS,
        )
        r.register(self.itl)
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            INTER_TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """Children of every family bound to one model, so the hot path skips label lookups."""

    def __init__(self, m: SimMetrics, model: str) -> None:
        lv = (model, ENGINE_INDEX)
        self._m = m
        self._lv = lv
        self.prefix_cache_queries = m.prefix_cache_queries.labels(*lv)
        self.prefix_cache_hits = m.prefix_cache_hits.labels(*lv)
        self.prompt_tokens = m.prompt_tokens.labels(*lv)
        self.prompt_tokens_cached = m.prompt_tokens_cached.labels(*lv)
        self.generation_tokens = m.generation_tokens.labels(*lv)
        m.num_preemptions.labels(*lv)  # exposed at 0: the sim never preempts
        self.request_prompt_tokens = m.request_prompt_tokens.labels(*lv)
        self.request_generation_tokens = m.request_generation_tokens.labels(*lv)
        self.request_params_max_tokens = m.request_params_max_tokens.labels(*lv)
        self.ttft = m.ttft.labels(*lv)
        self.itl = m.itl.labels(*lv)
        self.tpot = m.tpot.labels(*lv)
        self.e2e = m.e2e.labels(*lv)
        self.queue = m.queue.labels(*lv)
        self.inference = m.inference.labels(*lv)
        self.prefill = m.prefill.labels(*lv)
        self.decode = m.decode.labels(*lv)
        self._success = {r: m.request_success.labels(*lv, r) for r in ("stop", "length", "abort")}

    def on_scheduled(self, prompt_tokens: int, cached_tokens: int, max_tokens: int) -> None:
        """Prefill accounting, done when the request leaves the waiting queue."""
        self.prefix_cache_queries.inc(prompt_tokens)
        self.prefix_cache_hits.inc(cached_tokens)
        self.prompt_tokens.inc(prompt_tokens)
        self.prompt_tokens_cached.inc(cached_tokens)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_params_max_tokens.observe(max_tokens)

    def on_finished(
        self,
        reason: str,
        *,
        queue_s: float,
        prefill_s: float,
        decode_s: float,
        e2e_s: float,
        ttft_s: float | None,
        itls: Sequence[float],
        generated: int,
    ) -> None:
        """Per-request histograms; ``reason`` is stop, length or abort."""
        self._success[reason].inc()
        self.generation_tokens.inc(generated)
        self.request_generation_tokens.observe(generated)
        self.queue.observe(queue_s)
        self.prefill.observe(prefill_s)
        self.decode.observe(decode_s)
        self.inference.observe(prefill_s + decode_s)
        self.e2e.observe(e2e_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        self.itl.observe_many(itls)
        if generated > 1:
            self.tpot.observe(decode_s / (generated - 1))
