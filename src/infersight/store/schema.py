"""Table schemas shared by every backend: column names are the public contract (docs/record.md).

Kinds map to backend types in each backend module: ``str`` (VARCHAR / String), ``int`` (BIGINT /
Int64), ``float`` (DOUBLE / Float64), ``bool`` (BOOLEAN / Bool), ``ts`` (TIMESTAMP WITH TIME ZONE in
UTC with microseconds / DateTime64(6, 'UTC')). Every column is nullable unless listed in ``required``.
Bump SCHEMA_VERSION and add a migration step in each backend when a table changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

SCHEMA_VERSION = 10


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    required: frozenset[str]
    time_column: str
    key: tuple[str, ...]  # idempotency key: a redelivered row with the same key is not inserted twice
    stable_time: str | None = None
    """A time column a re-run of the row keeps, where ``time_column`` does not (an eval task judged
    again after a redelivery gets a new ``evaluated_at`` but judges the same request): the
    idempotency probes look for the key in this column's window of the batch too."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


REQUESTS = Table(
    name="requests",
    columns=(
        ("trace_id", "str"), ("span_id", "str"), ("parent_span_id", "str"), ("tenant_id", "str"),
        ("model_id", "str"), ("backend", "str"), ("endpoint_type", "str"), ("use_case", "str"),
        ("request_type", "str"), ("api", "str"),
        ("started_at", "ts"), ("ttft_ms", "float"), ("total_ms", "float"), ("itl_ms_mean", "float"),
        ("itl_ms_p50", "float"), ("itl_ms_p99", "float"), ("output_tokens_per_s", "float"), ("queue_ms", "float"),
        ("prompt_tokens", "int"), ("completion_tokens", "int"), ("cached_prompt_tokens", "int"),
        ("reasoning_tokens", "int"), ("prompt_tokens_estimated", "int"), ("prompt_tokens_estimate_kind", "str"),
        ("token_source", "str"),
        ("status_code", "int"), ("error_type", "str"), ("finish_reason", "str"), ("stream", "bool"),
        ("client_disconnected", "bool"),
        ("prompt_hash", "str"), ("prompt_text", "str"), ("completion_text", "str"),
        ("sampled_for_eval", "bool"), ("sample_reason", "str"),
        ("instance", "str"), ("engine_inference_ms", "float"),  # v7: appended, as ALTER TABLE adds them
        ("trace_flags", "str"),  # v9
    ),
    required=frozenset({"trace_id", "span_id", "tenant_id", "model_id", "started_at", "status_code"}),
    time_column="started_at",
    key=("trace_id", "span_id"),
)

EVAL_RESULTS = Table(
    name="eval_results",
    columns=(
        ("trace_id", "str"), ("span_id", "str"), ("tenant_id", "str"), ("model_id", "str"), ("evaluator", "str"),
        ("evaluator_version", "str"), ("dimension", "str"), ("score", "float"), ("label", "str"),
        ("explanation", "str"), ("judge_model", "str"), ("judge_tokens", "int"), ("judge_cost", "float"),
        ("evaluated_at", "ts"), ("request_started_at", "ts"), ("use_case", "str"), ("representative", "bool"),
    ),
    required=frozenset({"trace_id", "tenant_id", "evaluator", "evaluator_version", "dimension", "evaluated_at"}),
    time_column="evaluated_at",
    key=("trace_id", "span_id", "evaluator", "evaluator_version", "dimension"),
    stable_time="request_started_at",
)

TELEMETRY = Table(
    name="telemetry",
    columns=(("ts", "ts"), ("source", "str"), ("instance", "str"), ("gpu", "str"), ("model_id", "str"),
             ("metric", "str"), ("value", "float")),
    required=frozenset({"ts", "source", "instance", "metric", "value"}),
    time_column="ts",
    key=("ts", "source", "instance", "gpu", "model_id", "metric"),  # v6: one engine serves several models
)

COST_LINES = Table(
    name="cost_lines",
    columns=(("period_start", "ts"), ("period", "str"), ("tenant_id", "str"), ("model_id", "str"),
             ("use_case", "str"), ("kind", "str"), ("input_tokens", "int"), ("output_tokens", "int"),
             ("amount", "float"), ("currency", "str"), ("pricing_version", "str")),
    required=frozenset({"period_start", "period", "tenant_id", "kind", "amount", "currency"}),
    time_column="period_start",
    key=("period_start", "period", "tenant_id", "model_id", "use_case", "kind", "pricing_version"),
)

REQUEST_CONTENT = Table(
    name="request_content",
    columns=(
        ("trace_id", "str"), ("span_id", "str"), ("tenant_id", "str"), ("model_id", "str"), ("started_at", "ts"),
        ("prompt_text", "str"), ("completion_text", "str"), ("reference_text", "str"),
        ("guardrail_hits", "str"), ("content_truncated", "bool"), ("sample_reason", "str"),
    ),
    required=frozenset({"trace_id", "span_id", "tenant_id", "model_id", "started_at"}),
    time_column="started_at",
    key=("trace_id", "span_id"),
)
"""PII-masked, truncated text of a request, per the tenant's content policy (docs/evaluation.md).

Written by the eval worker, because the request row is stored before masking ends; ``started_at``
is the request's start, so the row lives ``text_days`` (or the tenant's override) like request text.
``guardrail_hits`` is comma-joined (``pii_prompt:EMAIL,injection:...``)."""

JUDGE_EVALUATOR = "llm_judge"
"""The evaluator whose ``eval_results.explanation`` is free text that can quote the request's (masked)
text: retention nulls it at the text cutoff, like the text itself."""

TABLES: dict[str, Table] = {
    t.name: t for t in (REQUESTS, EVAL_RESULTS, TELEMETRY, COST_LINES, REQUEST_CONTENT)
}

# Columns a client may group stats by; anything else is refused (they become SQL identifiers).
GROUPABLE = ("tenant_id", "model_id", "use_case", "backend")


# -- rollups ----------------------------------------------------------------------------------------
# Per-period aggregates of ``requests`` (docs/store.md, "Rollups"): one table per period, all with the
# same columns. A row summarises the requests of one (period, tenant, model, use case, backend);
# several rows may exist for the same key (partials written by different batches): readers always
# sum them. Sketch columns hold DDSketch bucket counts (``store/sketch.py``), stored as
# ``MAP(SMALLINT, BIGINT)`` in DuckDB and ``Map(Int16, UInt64)`` in ClickHouse.


@dataclass(frozen=True)
class Rollup:
    name: str  # the table
    source: str  # what stats rows answered from it say in their "source" field
    period: timedelta  # rows cover [period_start, period_start + period), aligned to the Unix epoch

    @property
    def micros(self) -> int:
        return self.period // timedelta(microseconds=1)


ROLLUPS: tuple[Rollup, ...] = (  # finest first
    Rollup("request_rollups_1m", "rollup_1m", timedelta(minutes=1)),
    Rollup("request_rollups_1h", "rollup_1h", timedelta(hours=1)),
    Rollup("request_rollups_6h", "rollup_6h", timedelta(hours=6)),
    Rollup("request_rollups_1d", "rollup_1d", timedelta(days=1)),
    Rollup("request_rollups_7d", "rollup_7d", timedelta(days=7)),
)
"""Why five periods: a read merges every sketch entry of the rows it touches, so its cost follows the
number of rows per key. A sliding 30-day window reads 3-4 week rows, up to 6 day rows, 3 six-hour,
5 hour and 59 minute rows at each edge, instead of 29 day rows and up to 23 hour rows per edge with
minutes, hours and days alone (measured 2-2.5x faster at seed scale). Weeks start on Thursdays (epoch-aligned)."""
ROLLUP_KEYS = GROUPABLE  # so that any stats grouping is a merge of rollup rows
ROLLUP_COUNTERS: tuple[tuple[str, str], ...] = (
    ("requests", "int"), ("errors", "int"), ("prompt_tokens_sum", "int"), ("completion_tokens_sum", "int"),
    ("tokens_per_s_sum", "float"), ("tokens_per_s_count", "int"),
)
ROLLUP_SKETCHES: tuple[tuple[str, str, str], ...] = (  # sketch column, stats prefix, requests column
    ("ttft_ms_sketch", "ttft_ms", "ttft_ms"),
    ("itl_ms_sketch", "itl_ms", "itl_ms_mean"),
    ("total_ms_sketch", "total_ms", "total_ms"),
)
ROLLUP_COLUMNS: tuple[str, ...] = (
    "period_start", *ROLLUP_KEYS, *(name for name, _ in ROLLUP_COUNTERS), *(name for name, _, _ in ROLLUP_SKETCHES)
)
