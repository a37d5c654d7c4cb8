"""Prometheus metrics of the quality axis, with bounded labels.

Tenants and models come from config (anything else is ``_unknown``); dimensions come from the
rubric and the fixed check names; ``reason`` and ``outcome`` are closed sets. Scores also carry
``evaluator_version``, so that a new judge (or checks revision) starts a new series there as in the
store: a process runs one version per evaluator (two for a judge whose JSON-mode fallback answers),
and past ``MAX_VERSIONS`` the rest are ``_other``. So the series count is tenants x models x
dimensions x a few versions at most, whatever the traffic.
"""

from __future__ import annotations

from collections.abc import Iterable

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from infersight.evaluation.breaker import BreakerState

UNKNOWN = "_unknown"
SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
BREAKER_REASONS = ("lag", "budget")
LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


MAX_VERSIONS = 8  # evaluator versions per process with their own score series; later ones are "_other"
OTHER = "_other"


class FirstSeen:
    """Maps the first ``cap`` distinct values to themselves and the rest to ``_other``: bounded
    cardinality for a label whose values are not in config (evaluator versions)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        if value in self.seen:
            return value
        if len(self.seen) < self.cap:
            self.seen.add(value)
            return value
        return OTHER


class Bounded:
    """Maps a label value to itself when known, else ``_unknown`` (config-bounded cardinality)."""

    def __init__(self, known: Iterable[str]) -> None:
        self.known = frozenset(known)

    def __call__(self, value: str | None) -> str:
        return value if value in self.known else UNKNOWN  # type: ignore[return-value]


class EvalGatewayMetrics:
    """The gateway's side: sampling decisions and what happened to the content it handed on."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sampled = Counter("infersight_eval_sampled", "Requests sampled for evaluation, by reason.",
                               ("tenant", "reason"), registry=registry)
        self.tasks = Counter("infersight_eval_tasks",
                             "Eval tasks by outcome: published (masked, on the eval bus) or dropped (reason).",
                             ("outcome",), registry=registry)
        self.mask_seconds = Histogram("infersight_eval_mask_seconds", "PII masking time per task.",
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
                                      registry=registry)
        self.mask_queue = Gauge("infersight_eval_mask_queue", "Tasks waiting for PII masking.", registry=registry,
                                multiprocess_mode="livesum")
        self.oldest_unevaluated = Gauge(
            "infersight_eval_oldest_unevaluated_seconds",
            "Age of the oldest eval task not yet evaluated and written (0 when none waits).",
            registry=registry, multiprocess_mode="livemax")
        self.breaker_open = Gauge("infersight_eval_breaker_open",
                                  "1 while the eval breaker has lowered random sampling (lag or budget).",
                                  ("reason",), registry=registry, multiprocess_mode="livemax")
        self.spend = Gauge("infersight_eval_spend", "Judge spend in the current budget period (breaker's reading).",
                           registry=registry, multiprocess_mode="livemax")
        self._bus_dropped_seen = 0
        self.process_restarts = Counter("infersight_eval_process_restarts",
                                        "Times the gateway's eval process was started again after it exited.",
                                        registry=registry)

    def sync_bus(self, dropped: int) -> None:
        """The gateway's eval bus's drop count (``BusStats.dropped``: memory full with no journal, or
        the journal failing) as ``infersight_eval_tasks_total{outcome="dropped_bus"}``, at scrape."""
        if dropped > self._bus_dropped_seen:
            self.tasks.labels("dropped_bus").inc(dropped - self._bus_dropped_seen)
            self._bus_dropped_seen = dropped

    def publish(self, state: BreakerState) -> None:
        """The eval breaker's latest reading (``evaluation.breaker``)."""
        self.oldest_unevaluated.set(state.lag_s or 0.0)
        for reason in BREAKER_REASONS:
            self.breaker_open.labels(reason).set(1 if reason in state.reasons and state.open else 0)
        self.spend.set(state.spend)


class EvalWorkerMetrics:
    """The eval worker's side: scores, lag, judge use and failures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("tenant", "model", "evaluator", "evaluator_version", "dimension")
        self.score = Histogram("infersight_eval_score", "Scores by dimension and evaluator version "
                               "(checks 0-1, judge 1-5).", labels, buckets=SCORE_BUCKETS, registry=registry)
        self.failed_checks = Counter("infersight_eval_check_failures", "Deterministic checks that failed.",
                                     ("tenant", "model", "evaluator_version", "dimension"), registry=registry)
        self.version = FirstSeen(MAX_VERSIONS)
        self.results = Counter("infersight_eval_results", "Eval result rows written.", ("evaluator",),
                               registry=registry)
        self.tasks = Counter("infersight_eval_worker_tasks", "Eval tasks handled, by outcome.", ("outcome",),
                             registry=registry)
        self.lag = Histogram("infersight_eval_lag_seconds", "From a request's start to its scores being written.",
                             buckets=LAG_BUCKETS, registry=registry)
        self.judge_failures = Counter("infersight_eval_judge_failures",
                                      "Judge calls that failed after repair and retries.", ("reason",),
                                      registry=registry)
        self.judge_tokens = Counter("infersight_eval_judge_tokens", "Judge tokens by type.", ("token_type",),
                                    registry=registry)
        self.judge_cost = Counter("infersight_eval_judge_cost", "Judge cost (currency of the configured price).",
                                  registry=registry)
        self.judge_seconds = Histogram("infersight_eval_judge_seconds", "Judge call latency, retries included.",
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=registry)
        self.store_failures = Counter("infersight_eval_store_failures", "eval_results writes that failed (retried).",
                                      registry=registry)
