"""The Store interface: what the ingester writes and what the query API and exports read.

One contract suite (tests/contract/test_store.py) runs against every backend. Rules for backends:

- Writes take whole batches and are idempotent by each table's key (a redelivered batch inserts
  nothing new); they return the number of rows actually inserted.
- Reads are always scoped: a ``tenant_id`` in a filter is a hard boundary, never a hint.
- Times are timezone-aware UTC ``datetime``s in and out.
- A backend that cannot be reached raises ``StoreUnavailable`` (the ingester then retries and the
  bus spools); any other failure raises ``StoreError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from infersight.model import RequestRecord

if TYPE_CHECKING:
    from infersight.store.evaluations_sql import EvaluationFilter
    from infersight.store.quality_sql import QualityQuery
    from infersight.store.telemetry_sql import CorrelationQuery, DiagnosisInputs, DiagnosisQuery, TelemetryQuery


class StoreError(Exception):
    """A store operation failed for a reason retrying will not fix (bad input, schema mismatch)."""


class InvalidQuery(StoreError):
    """A query's parameters are wrong. Its message names only the parameter and what it accepts
    (never a file path or engine internals), so the query API passes it to the caller as is."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; retry later."""


@dataclass(frozen=True)
class RequestFilter:
    tenant_id: str | None = None
    model_id: str | None = None
    use_case: str | None = None
    status_code: int | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class Page:
    data: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class StatsQuery:
    since: datetime
    until: datetime
    group_by: tuple[str, ...] = ()  # any of schema.GROUPABLE
    resolution: timedelta | None = None  # None: one bucket for the whole window
    tenant_id: str | None = None  # scope: set for tenant keys
    model_id: str | None = None
    use_case: str | None = None
    exact: bool = False  # True: read the raw requests (exact quantiles) whatever the window


STAT_FIELDS = (
    "requests", "errors",
    "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99",
    "itl_ms_p50", "itl_ms_p95", "itl_ms_p99",
    "total_ms_p50", "total_ms_p95", "total_ms_p99",
    "output_tokens_per_s_mean", "prompt_tokens_sum", "completion_tokens_sum",
)
"""Each stats row: the group_by columns, ``bucket_start`` (when a resolution is set), these, then
``source`` (one of STAT_SOURCES). ``errors`` counts rows with status_code >= 400 or an error_type.
Quantiles are of the per-request values (ITL: of each request's ``itl_ms_mean``)."""

STAT_SOURCES = ("raw", "rollup_1m", "rollup_1h", "rollup_6h", "rollup_1d", "rollup_7d")
"""Where a stats row came from. ``raw``: the requests table, quantiles exact. ``rollup_*``: the
rollup tables, the coarsest one named (window edges not aligned to its period come from finer
tables and raw rows, so counts and sums stay exact); quantiles from merged DDSketches, within
``sketch.ALPHA`` (1%) relative of the exact values (docs/store.md, "Rollups")."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of data is kept; ``text_days_by_tenant`` overrides ``text_days``."""

    requests_days: int = 90
    text_days: int = 30
    text_days_by_tenant: dict[str, int] = field(default_factory=dict)
    eval_results_days: int = 90
    telemetry_days: int = 90
    cost_lines_days: int = 455
    rollups_days: int = 455  # 15 months

    def __post_init__(self) -> None:
        """Text never outlives its request: ``requests_days`` caps every text retention (the
        story was a 404 while the masked prompt and answer stayed)."""
        cap = self.requests_days
        object.__setattr__(self, "text_days", min(self.text_days, cap))
        object.__setattr__(self, "text_days_by_tenant",
                           {tenant: min(days, cap) for tenant, days in self.text_days_by_tenant.items()})


class Store(Protocol):
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the schema version now in place."""
        ...

    def schema_version(self) -> int: ...

    def write_requests(self, records: list[RequestRecord]) -> int: ...

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        """eval_results, telemetry, cost_lines or request_content rows (dicts keyed by column name)."""
        ...

    def stored_keys(self, table: str, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        """Which of ``rows``' keys (``schema.Table.key`` tuples) the table holds already, found as a
        write of them would find them (the same time windows); a write-ahead check, e.g. an eval
        worker asking whether another worker judged a redelivered task before it pays the judge."""
        ...

    def get_requests(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Every request of a trace (usually one), oldest first, within the tenant scope."""
        ...

    def list_requests(self, flt: RequestFilter, limit: int = 100, cursor: str | None = None) -> Page:
        """Newest first; ``next_cursor`` is opaque and stable under concurrent inserts."""
        ...

    def count_requests(self, flt: RequestFilter) -> int: ...

    def eval_results_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]: ...

    def content_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """The trace's ``request_content`` rows (masked text, per span), oldest first, within the tenant scope."""
        ...

    def telemetry_around(self, model_id: str, at: datetime, window: timedelta) -> list[dict[str, Any]]:
        """Telemetry samples of the model's instances within ``at ± window``, oldest first."""
        ...

    def stats(self, query: StatsQuery) -> list[dict[str, Any]]: ...

    def list_evaluations(self, flt: EvaluationFilter, limit: int = 100, cursor: str | None = None) -> Page:
        """eval_results rows, newest judged request first, paged by keyset (store/evaluations_sql.py)."""
        ...

    def quality(self, query: QualityQuery) -> list[dict[str, Any]]:
        """eval_results per (evaluator, version, dimension) series; see ``quality_sql``."""
        ...

    def telemetry(self, query: TelemetryQuery) -> tuple[list[dict[str, Any]], bool]:
        """Samples oldest first, at most ``query.limit``, and whether more matched; see ``telemetry_sql``."""
        ...

    def correlation(self, query: CorrelationQuery) -> list[dict[str, Any]]:
        """Request latency per bucket of a telemetry metric, each request joined as-of to the latest
        earlier sample of its model (and instance); see ``telemetry_sql``. Long windows read the hourly
        correlation rollups where they are complete (``correlation_rollup``)."""
        ...

    def build_correlation_rollups(self, now: datetime | None = None, max_periods: int | None = None,
                                  lookback: timedelta | None = None) -> int:
        """Build the hourly correlation rollups that are due (closed hours within ``lookback``, default
        3 days, newest first, at most ``max_periods``); periods built. Writers call it themselves."""
        ...

    def diagnosis_inputs(self, query: DiagnosisQuery) -> DiagnosisInputs:
        """TTFT quantiles, prompt repeats and mean telemetry over a window (``telemetry.diagnosis``)."""
        ...

    def apply_retention(self, now: datetime, policy: RetentionPolicy) -> dict[str, int]:
        """Delete (or, where TTL does it, verify) what is past retention; rows removed per table.
        Text past ``text_days`` is nulled (prompt_text, completion_text), the row stays;
        ``request_content`` rows past ``text_days`` are deleted."""
        ...

    def close(self) -> None: ...
