"""The demo's live table: a bus exporter that aggregates records per tenant and model, plus the latest
GPU and engine telemetry (an observer of the telemetry sink) for the instances serving each model."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from rich.table import Table

from infersight.gateway.meter import percentile
from infersight.model import EvalResult, RequestRecord, TelemetrySample

WINDOW = 2000  # recent samples kept per row for percentiles


@dataclass
class _Row:
    requests: int = 0
    errors: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    itl: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tps: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tokens: int = 0
    judge_score_sum: float = 0.0  # of each judged answer's mean over dimensions: every one, as `judged` counts
    judged: int = 0
    checks: int = 0
    check_failures: int = 0


def _pct(values: deque[float], q: float) -> str:
    return f"{percentile(sorted(values), q):.0f}" if values else "-"


def _latest(values: list[float]) -> str:
    return f"{max(values):.0%}" if values else "-"


def _before(ts: str | None, since: datetime | None) -> bool:
    """True for a time before ``since``: a record an earlier run left in the journal, replayed now."""
    if since is None or not ts:
        return False
    try:
        at = datetime.fromisoformat(ts)
    except ValueError:
        return False
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)) < since


class LiveAggregator:
    """Thread-safe: ``export`` runs on the bus thread, ``table`` on the UI thread.

    ``since`` (aware): records, results and readings from before it are left out. The buses replay what
    a killed earlier run left in the data dir's journals; the store gets it, this run's table must not.
    ``content_off``: tenants whose content policy is ``none``; their quality cells say "off", not "-".
    """

    def __init__(self, since: datetime | None = None, content_off: Iterable[str] = ()) -> None:
        self._since = since
        self._content_off = frozenset(content_off)
        self._rows: dict[tuple[str, str], _Row] = {}
        self._lock = threading.Lock()
        self._kv: dict[tuple[str, str], float] = {}  # (instance, model) -> latest kv_cache_usage
        self._gpu: dict[tuple[str, str], float] = {}  # (instance, metric) -> latest, over the instance's GPUs
        self._gpu_ts: dict[str, str] = {}  # instance -> ts of the GPU readings held
        # The final table is printed after the traffic stopped, when the latest readings are idle
        # (GPU util 0%): it shows each series' peak over the run instead.
        self._kv_peak: dict[tuple[str, str], float] = {}
        self._gpu_peak: dict[tuple[str, str], float] = {}

    def export(self, batch: list[RequestRecord]) -> None:
        with self._lock:
            for r in batch:
                if _before(r.started_at, self._since):
                    continue
                row = self._rows.setdefault((r.tenant_id, r.model_id), _Row())
                row.requests += 1
                if r.status_code >= 400 or r.error_type:
                    row.errors += 1
                if r.ttft_ms is not None:
                    row.ttft.append(r.ttft_ms)
                if r.itl_ms_mean is not None:
                    row.itl.append(r.itl_ms_mean)
                if r.output_tokens_per_s is not None:
                    row.tps.append(r.output_tokens_per_s)
                row.tokens += (r.prompt_tokens or 0) + (r.completion_tokens or 0)

    def results(self, results: list[EvalResult]) -> None:
        """Eval results (the eval worker calls this after each write): quality per tenant and model."""
        judged: dict[tuple[str, str, str], list[float]] = {}
        with self._lock:
            for r in results:
                if _before(r.request_started_at, self._since):
                    continue
                row = self._rows.setdefault((r.tenant_id, r.model_id), _Row())
                if r.evaluator == "checks":
                    row.checks += 1
                    row.check_failures += r.label == "fail"
                elif r.evaluator == "llm_judge" and r.score is not None:
                    judged.setdefault((r.tenant_id, r.model_id, r.trace_id), []).append(r.score)
            for (tenant, model, _), scores in judged.items():
                row = self._rows[(tenant, model)]
                row.judged += 1
                row.judge_score_sum += sum(scores) / len(scores)

    def telemetry(self, samples: list[TelemetrySample]) -> None:
        """Telemetry just written (the telemetry sink calls this): keep the latest value per model/instance."""
        with self._lock:
            for s in samples:
                if _before(s.ts, self._since):
                    continue
                if s.metric == "kv_cache_usage" and s.model_id is not None:
                    kv_key = (s.instance, s.model_id)
                    self._kv[kv_key] = s.value
                    self._kv_peak[kv_key] = max(self._kv_peak.get(kv_key, 0.0), s.value)
                elif s.metric in ("gpu_utilization", "gpu_memory_utilization"):
                    if self._gpu_ts.get(s.instance, "") < s.ts:  # a newer reading: forget the older GPUs
                        self._gpu_ts[s.instance] = s.ts
                        self._gpu = {k: v for k, v in self._gpu.items() if k[0] != s.instance}
                    key = (s.instance, s.metric)
                    self._gpu[key] = max(self._gpu.get(key, 0.0), s.value)  # the busiest GPU
                    self._gpu_peak[key] = max(self._gpu_peak.get(key, 0.0), s.value)

    def _model_telemetry(self, model: str, peak: bool = False) -> tuple[str, str, str]:
        """(GPU util, GPU memory, KV cache) of the instances that report this model; the busiest one.

        ``peak``: the highest reading of the run rather than the latest.
        """
        kv_values, gpu_values = (self._kv_peak, self._gpu_peak) if peak else (self._kv, self._gpu)
        instances = [i for i, m in kv_values if m == model]
        kv = [kv_values[(i, model)] for i in instances]
        util = [v for (i, metric), v in gpu_values.items() if i in instances and metric == "gpu_utilization"]
        mem = [v for (i, metric), v in gpu_values.items() if i in instances and metric == "gpu_memory_utilization"]
        return _latest(util), _latest(mem), _latest(kv)

    def shutdown(self) -> None:
        return None

    def total_requests(self) -> int:
        with self._lock:
            return sum(row.requests for row in self._rows.values())

    def table(self, title: str = "infersight demo", final: bool = False) -> Table:
        """The live table; ``final`` (after the traffic stopped) shows the telemetry's peak of the run."""
        telemetry = "the highest reading of the run" if final else "the latest reading"
        table = Table(title=title, caption="latencies in ms over the last 2,000 requests per row; GPU util, GPU "
                      f"mem, KV cache: {telemetry} from the model's engine; quality: mean LLM-judge score (1-5) of "
                      "sampled answers; checks failed: share of deterministic checks; -: none evaluated yet; off: "
                      "the tenant's content policy is none, so its answers never leave the gateway to be evaluated")
        for name, justify in [("tenant", "left"), ("model", "left"), ("requests", "right"), ("errors", "right"),
                              ("TTFT p50", "right"), ("TTFT p99", "right"), ("ITL p50", "right"),
                              ("tok/s p50", "right"), ("tokens", "right"), ("judged", "right"),
                              ("quality", "right"), ("checks failed", "right"), ("GPU util", "right"),
                              ("GPU mem", "right"), ("KV cache", "right")]:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        with self._lock:
            for (tenant, model), row in sorted(self._rows.items()):
                quality = ["off"] * 3 if tenant in self._content_off else [
                    str(row.judged),
                    f"{row.judge_score_sum / row.judged:.2f}" if row.judged else "-",
                    f"{row.check_failures / row.checks:.0%}" if row.checks else "-",
                ]
                table.add_row(
                    tenant, model, str(row.requests), str(row.errors), _pct(row.ttft, 0.5), _pct(row.ttft, 0.99),
                    _pct(row.itl, 0.5), _pct(row.tps, 0.5), str(row.tokens), *quality,
                    *self._model_telemetry(model, peak=final),
                )
        return table
