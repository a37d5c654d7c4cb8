"""The demo's live table: a bus exporter that aggregates records per tenant and model."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from rich.table import Table

from infersight.gateway.meter import percentile
from infersight.model import EvalResult, RequestRecord

WINDOW = 2000  # recent samples kept per row for percentiles


@dataclass
class _Row:
    requests: int = 0
    errors: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    itl: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tps: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    tokens: int = 0
    judge_scores: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))  # mean over dimensions
    judged: int = 0
    checks: int = 0
    check_failures: int = 0


def _pct(values: deque[float], q: float) -> str:
    return f"{percentile(sorted(values), q):.0f}" if values else "-"


class LiveAggregator:
    """Thread-safe: ``export`` runs on the bus thread, ``table`` on the UI thread."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], _Row] = {}
        self._lock = threading.Lock()

    def export(self, batch: list[RequestRecord]) -> None:
        with self._lock:
            for r in batch:
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
                row = self._rows.setdefault((r.tenant_id, r.model_id), _Row())
                if r.evaluator == "checks":
                    row.checks += 1
                    row.check_failures += r.label == "fail"
                elif r.evaluator == "llm_judge" and r.score is not None:
                    judged.setdefault((r.tenant_id, r.model_id, r.trace_id), []).append(r.score)
            for (tenant, model, _), scores in judged.items():
                row = self._rows[(tenant, model)]
                row.judged += 1
                row.judge_scores.append(sum(scores) / len(scores))

    def shutdown(self) -> None:
        return None

    def total_requests(self) -> int:
        with self._lock:
            return sum(row.requests for row in self._rows.values())

    def table(self, title: str = "infersight demo") -> Table:
        table = Table(title=title, caption="latencies in ms over the last 2,000 requests per row; quality: "
                      "mean LLM-judge score (1-5) of sampled answers; checks failed: share of deterministic checks")
        for name, justify in [("tenant", "left"), ("model", "left"), ("requests", "right"), ("errors", "right"),
                              ("TTFT p50", "right"), ("TTFT p99", "right"), ("ITL p50", "right"),
                              ("tok/s p50", "right"), ("tokens", "right"), ("judged", "right"),
                              ("quality", "right"), ("checks failed", "right")]:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        with self._lock:
            for (tenant, model), row in sorted(self._rows.items()):
                table.add_row(
                    tenant, model, str(row.requests), str(row.errors), _pct(row.ttft, 0.5), _pct(row.ttft, 0.99),
                    _pct(row.itl, 0.5), _pct(row.tps, 0.5), str(row.tokens), str(row.judged),
                    f"{sum(row.judge_scores) / len(row.judge_scores):.2f}" if row.judge_scores else "-",
                    f"{row.check_failures / row.checks:.0%}" if row.checks else "-",
                )
        return table
