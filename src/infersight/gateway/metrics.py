"""Prometheus metrics named after the OpenTelemetry GenAI semantic conventions.

OTel ``gen_ai.server.time_to_first_token`` (unit s) becomes ``gen_ai_server_time_to_first_token_seconds``,
and so on, with the convention's recommended buckets. Labels are bounded: tenant and model come from
config (unknown ones become ``_unknown``), use_case is bounded by tenancy. Counters that OTel does not
define carry the ``infersight_`` prefix.

One registry per app (a fresh one per test); with ``--workers N`` prometheus_client's multiprocess
mode aggregates all workers (``PROMETHEUS_MULTIPROC_DIR`` is set by the CLI before import).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from infersight.bus.base import BusStats
from infersight.model import RequestRecord
from infersight.model.genai import operation_name, provider_name

LABELS = ("tenant", "model", "backend", "use_case")
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name")
"""Required by the GenAI conventions on their histograms (the OTLP spans carry the same values)."""
UNKNOWN = "_unknown"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
disable_created_metrics()  # the *_created series double the exposition and no dashboard reads them

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token (first output-bearing chunk), streaming requests.",
            (*LABELS, *GENAI_LABELS), buckets=TTFT_BUCKETS, registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, successful streaming requests.",
            (*LABELS, *GENAI_LABELS), buckets=TPOT_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from request received to last byte sent.",
            (*LABELS, "error_type", *GENAI_LABELS), buckets=DURATION_BUCKETS, registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per request.",
            (*LABELS, "gen_ai_token_type", *GENAI_LABELS), buckets=TOKEN_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "infersight_tokens",
            "Tokens by type: input, output, cached_input, reasoning.",
            (*LABELS, "token_type"), registry=r,
        )
        self.requests = Counter(
            "infersight_requests",
            "Requests by HTTP status and error type.",
            (*LABELS, "status_code", "error_type"), registry=r,
        )
        self.disconnects = Counter(
            "infersight_client_disconnects", "Requests the client abandoned mid-flight.", LABELS, registry=r
        )
        self.tap_failures = Counter(
            "infersight_eval_tap_failures", "Requests whose evaluation tap raised (served, not evaluated), by stage.",
            ("stage",), registry=r,
        )
        self.inflight = Gauge(
            "infersight_inflight_requests", "Requests being proxied now.", registry=r, multiprocess_mode="livesum"
        )
        self.bus_dropped = Counter(
            "infersight_bus_dropped_records", "Records the bus could not keep (queue full).", registry=r
        )
        self.bus_spooled = Gauge("infersight_bus_spooled_records",
                                 "Records kept only in the on-disk journal (memory full or sink down).",
                                 registry=r, multiprocess_mode="livesum")
        self.bus_dead_lettered = Gauge("infersight_bus_dead_lettered_records",
                                       "Journal lines unreadable, or records a sink refused: set aside in dead-letter/.",
                                       registry=r, multiprocess_mode="livesum")
        self.bus_replayed = Gauge("infersight_bus_replayed_records",
                                  "Records replayed from journals left by earlier processes.",
                                  registry=r, multiprocess_mode="livesum")
        self.bus_queued = Gauge("infersight_bus_queued_records", "Records waiting in memory for the sink.",
                                registry=r, multiprocess_mode="livesum")
        self._bus_dropped_seen = 0
        self._series: dict[tuple[str, ...], _Series] = {}

    def observe(self, record: RequestRecord, model_label: str, tenant_label: str, tpot_s: float | None) -> None:
        labels = (tenant_label, model_label, record.backend or UNKNOWN, record.use_case)
        genai = (operation_name(record.api), provider_name(record.endpoint_type) or UNKNOWN)
        series = self._series.get(labels + genai)
        if series is None:  # labels are bounded, so this cache is too
            series = self._series[labels + genai] = _Series(self, labels, genai)
        error = record.error_type or ""
        self.requests.labels(*labels, str(record.status_code), error).inc()
        if record.total_ms is not None:
            self.duration.labels(*labels, error, *genai).observe(record.total_ms / 1000.0)
        if record.ttft_ms is not None:
            series.ttft.observe(record.ttft_ms / 1000.0)
        if tpot_s is not None:
            series.tpot.observe(tpot_s)
        if record.prompt_tokens is not None:
            series.input_usage.observe(record.prompt_tokens)
            series.input_tokens.inc(record.prompt_tokens)
        if record.completion_tokens is not None:
            series.output_usage.observe(record.completion_tokens)
            series.output_tokens.inc(record.completion_tokens)
        if record.cached_prompt_tokens:
            series.cached_tokens.inc(record.cached_prompt_tokens)
        if record.reasoning_tokens:
            series.reasoning_tokens.inc(record.reasoning_tokens)
        if record.client_disconnected:
            series.disconnects.inc()

    def sync_bus(self, stats: BusStats) -> None:
        self.bus_spooled.set(stats.spooled)
        self.bus_dead_lettered.set(stats.dead_lettered)
        self.bus_replayed.set(stats.replayed)
        self.bus_queued.set(stats.queued)
        if stats.dropped > self._bus_dropped_seen:
            self.bus_dropped.inc(stats.dropped - self._bus_dropped_seen)
            self._bus_dropped_seen = stats.dropped

    def exposition(self) -> bytes:
        if multiprocess_enabled():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class _Series:
    """The children of every per-request metric for one label set, resolved once."""

    __slots__ = ("ttft", "tpot", "input_usage", "output_usage", "input_tokens", "output_tokens", "cached_tokens",
                 "reasoning_tokens", "disconnects")

    def __init__(self, m: GatewayMetrics, labels: tuple[str, ...], genai: tuple[str, str]) -> None:
        self.ttft = m.ttft.labels(*labels, *genai)
        self.tpot = m.tpot.labels(*labels, *genai)
        self.input_usage = m.token_usage.labels(*labels, "input", *genai)
        self.output_usage = m.token_usage.labels(*labels, "output", *genai)
        self.input_tokens = m.tokens.labels(*labels, "input")
        self.output_tokens = m.tokens.labels(*labels, "output")
        self.cached_tokens = m.tokens.labels(*labels, "cached_input")
        self.reasoning_tokens = m.tokens.labels(*labels, "reasoning")
        self.disconnects = m.disconnects.labels(*labels)
