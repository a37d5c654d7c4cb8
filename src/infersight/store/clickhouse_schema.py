"""ClickHouse DDL and migrations: MergeTree tables keyed for the reads, with TTL for retention.

Layout choices, table by table (every ORDER BY holds the table's idempotency key, because
ReplacingMergeTree collapses rows whose whole sorting key is equal):

- ``requests``: ``ORDER BY (tenant_id, started_at, span_id, trace_id)``. Every read is scoped to a
  tenant and a time range, and newest-first pages walk exactly this order (the keyset cursor is
  ``(started_at, span_id, trace_id)``). A bloom filter on ``trace_id`` serves trace look-ups that
  carry no tenant.
- ``eval_results``: ``ORDER BY (tenant_id, trace_id, span_id, evaluator, evaluator_version, dimension)``:
  results are read per trace, and a re-run judged at another ``evaluated_at`` still collapses.
- ``telemetry``: ``ORDER BY (ts, source, instance, gpu, model_id, metric)``: reads are "a window around
  t"; ``model_id`` since v6, so two models' samples of one engine do not collapse into one row.
- ``cost_lines``: ``ORDER BY (tenant_id, period_start, ...key)``.
- ``request_content``: ``ORDER BY (tenant_id, trace_id, span_id)``: read per trace; its rows expire
  with request text (``text_days``, per tenant), not with ``requests_days``.
- ``request_rollups_1m``/``_1h``/``_1d``: AggregatingMergeTree filled by materialized views on
  ``requests``; see ``clickhouse_rollup``.

All tables are partitioned by month of their time column, so a key always lands in one partition
(ReplacingMergeTree only collapses within a partition) and retention can drop whole months.

Retention is belt and braces. The TTL clauses below (rows ``DELETE`` after the policy's days, and
column TTLs that reset ``prompt_text``/``completion_text`` to NULL after ``text_days``, per tenant)
are what a production server enforces, at insert and in background merges, against its own clock.
``ClickHouseStore.apply_retention`` additionally deletes and nulls exactly, relative to a given
``now``, so the behaviour is testable and immediate. Note that TTL also acts right after insert
(the engine schedules a TTL merge at once): a row already past retention when written is gone
within moments, which is what retention means. The embedded (chdb) store pauses TTL merges per
session by default, so tests with fixed timestamps do not race the calendar; see
``ClickHouseStore.embedded``.

Migrations are ordered steps keyed by version, each made of idempotent statements (``IF NOT EXISTS``),
and the version row is written after the step, so a crash mid-step just re-runs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from infersight.store import schema
from infersight.store.base import RetentionPolicy, StoreError
from infersight.store import clickhouse_rollup, correlation_rollup
from infersight.store.clickhouse_exec import encode_param, quote_ident

TS = "DateTime64(6, 'UTC')"
BASE_TYPES = {"str": "String", "int": "Int64", "float": "Float64", "bool": "Bool", "ts": TS}
TEXT_COLUMNS = ("prompt_text", "completion_text")

# Repeated labels: dictionary-encoded on disk and in memory (a handful of distinct values each).
LOW_CARDINALITY = frozenset({
    "tenant_id", "model_id", "backend", "endpoint_type", "use_case", "request_type", "api",
    "prompt_tokens_estimate_kind", "token_source", "error_type", "finish_reason", "sample_reason",
    "evaluator", "evaluator_version", "dimension", "label", "judge_model",
    "source", "instance", "gpu", "metric", "period", "kind", "currency", "pricing_version",
})


@dataclass(frozen=True)
class Layout:
    """Physical layout of one table: sorting key, skip indexes, and the column its dedup check scopes by."""

    order_by: tuple[str, ...]
    scope: str  # low-cardinality column the idempotency check filters on, with the time window
    indexes: tuple[str, ...] = ()
    retention_days: Callable[[RetentionPolicy], int] = lambda p: p.requests_days
    expires_with_text: bool = False  # rows hold request text: their TTL is text_days, per tenant


LAYOUTS: dict[str, Layout] = {
    "requests": Layout(
        order_by=("tenant_id", "started_at", "span_id", "trace_id"),
        scope="tenant_id",
        indexes=("INDEX idx_trace trace_id TYPE bloom_filter(0.01) GRANULARITY 1",
                 "INDEX idx_model model_id TYPE set(256) GRANULARITY 4"),
        retention_days=lambda p: p.requests_days,
    ),
    "eval_results": Layout(
        order_by=("tenant_id", "trace_id", "span_id", "evaluator", "evaluator_version", "dimension"),
        scope="tenant_id",
        indexes=("INDEX idx_trace trace_id TYPE bloom_filter(0.01) GRANULARITY 1",),
        retention_days=lambda p: p.eval_results_days,
    ),
    "telemetry": Layout(
        order_by=("ts", "source", "instance", "gpu", "model_id", "metric"),
        scope="instance",
        indexes=("INDEX idx_model model_id TYPE set(256) GRANULARITY 4",),
        retention_days=lambda p: p.telemetry_days,
    ),
    "cost_lines": Layout(
        order_by=("tenant_id", "period_start", "period", "kind", "model_id", "use_case", "pricing_version"),
        scope="tenant_id",
        retention_days=lambda p: p.cost_lines_days,
    ),
    "request_content": Layout(
        order_by=("tenant_id", "trace_id", "span_id"),
        scope="tenant_id",
        indexes=("INDEX idx_trace trace_id TYPE bloom_filter(0.01) GRANULARITY 1",),
        expires_with_text=True,
    ),
}


def column_type(table: schema.Table, name: str, kind: str) -> str:
    """The ClickHouse type of a column: Nullable unless required, LowCardinality for labels."""
    base = BASE_TYPES[kind]
    if name not in table.required:
        base = f"Nullable({base})"
    if kind == "str" and name in LOW_CARDINALITY:
        base = f"LowCardinality({base})"
    return base


def _codec(kind: str, name: str) -> str:
    if name in LOW_CARDINALITY:
        return ""
    if kind == "ts":
        return " CODEC(Delta, ZSTD(1))"
    return " CODEC(ZSTD(1))"


def text_ttl_expr(policy: RetentionPolicy) -> str:
    """When a request's text expires: ``text_days``, or the tenant's override."""
    overrides = policy.text_days_by_tenant
    if not overrides:
        return f"started_at + toIntervalDay({int(policy.text_days)})"
    tenants = encode_param([str(t) for t in overrides], top_level=False)
    days = "[" + ", ".join(str(int(d)) for d in overrides.values()) + "]"
    return f"started_at + toIntervalDay(transform(tenant_id, {tenants}, {days}, {int(policy.text_days)}))"


def row_ttl_expr(table: schema.Table, policy: RetentionPolicy) -> str:
    if LAYOUTS[table.name].expires_with_text:
        return text_ttl_expr(policy)
    return f"{table.time_column} + toIntervalDay({int(LAYOUTS[table.name].retention_days(policy))})"


def create_table_sql(database: str, table: schema.Table, policy: RetentionPolicy, as_name: str | None = None) -> str:
    """``as_name``: create the table under another name (a rebuild's copy), with ``table``'s layout."""
    layout = LAYOUTS[table.name]
    cols = []
    for name, kind in table.columns:
        ttl = f" TTL {text_ttl_expr(policy)}" if table.name == "requests" and name in TEXT_COLUMNS else ""
        cols.append(f"{quote_ident(name)} {column_type(table, name, kind)}{_codec(kind, name)}{ttl}")
    body = ",\n  ".join(cols + list(layout.indexes))
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(as_name or table.name)} (\n  {body}\n)\n"
        f"ENGINE = ReplacingMergeTree\n"
        f"PARTITION BY toYYYYMM({table.time_column})\n"
        f"ORDER BY ({', '.join(layout.order_by)})\n"
        f"TTL {row_ttl_expr(table, policy)} DELETE\n"
        f"SETTINGS allow_nullable_key = 1"
    )


def ttl_statements(database: str, policy: RetentionPolicy) -> list[str]:
    """ALTERs that bring every TTL in line with ``policy`` (used when the policy changes).

    ``materialize_ttl_after_modify = 0``: rewriting every part at once would be a heavy mutation;
    merges apply the new TTL over time and ``apply_retention`` is exact meanwhile.
    """
    out = []
    settings = " SETTINGS materialize_ttl_after_modify = 0"
    for table in schema.TABLES.values():
        target = f"{quote_ident(database)}.{quote_ident(table.name)}"
        out.append(f"ALTER TABLE {target} MODIFY TTL {row_ttl_expr(table, policy)} DELETE{settings}")
    reqs = f"{quote_ident(database)}.{quote_ident('requests')}"
    for name in TEXT_COLUMNS:
        out.append(f"ALTER TABLE {reqs} MODIFY COLUMN {quote_ident(name)} TTL {text_ttl_expr(policy)}{settings}")
    corr = f"{quote_ident(database)}.{quote_ident(correlation_rollup.TABLE)}"
    out.append(f"ALTER TABLE {corr} MODIFY TTL {correlation_rollup.clickhouse_ttl_expr(policy)} DELETE{settings}")
    return out + clickhouse_rollup.ttl_statements(database, policy)


def policy_fingerprint(policy: RetentionPolicy) -> str:
    """Identifies the TTLs a policy produces, to skip ALTERs when nothing changed."""
    text = "\n".join(ttl_statements("db", policy))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: Callable[[str, RetentionPolicy], list[str]]
    backfill: Callable[[str], list[str]] | None = None  # run after ``statements`` on a database that had data


def _v1(database: str, policy: RetentionPolicy) -> list[str]:
    tables = (schema.REQUESTS, schema.EVAL_RESULTS, schema.TELEMETRY, schema.COST_LINES)
    return [create_table_sql(database, t, policy) for t in tables]


def _v3(database: str, policy: RetentionPolicy) -> list[str]:
    """eval_results.use_case: quality is reported per use case (a no-op on a database created at v3)."""
    table = schema.EVAL_RESULTS
    return [
        f"ALTER TABLE {quote_ident(database)}.{quote_ident(table.name)} ADD COLUMN IF NOT EXISTS "
        f"{quote_ident('use_case')} {column_type(table, 'use_case', 'str')}"
    ]


def _v4(database: str, policy: RetentionPolicy) -> list[str]:
    """request_content: the masked text the eval worker receives, kept per the content policy."""
    return [create_table_sql(database, schema.REQUEST_CONTENT, policy)]


TELEMETRY_REBUILD = "telemetry_v6"


def _v6(database: str, policy: RetentionPolicy) -> list[str]:
    """telemetry ORDER BY gains model_id, as its idempotency key did: ReplacingMergeTree collapses rows
    whose sorting key is equal, so the old key merged two models' samples of one instance into one.

    A sorting key cannot take a column in the middle in place, so the table is rebuilt: a copy with
    the new key, every row copied (without FINAL: duplicates not yet merged away are rescued), the
    two swapped atomically (EXCHANGE, an Atomic database), the old one dropped. Each statement is
    safe to re-run after a crash at any point: the copy is dropped first, and once swapped the table
    copied from already has the new key. Writes to telemetry during the copy are lost: upgrade
    with the collectors' writers (gateways, ingest workers) stopped, one process migrating first.
    """
    db = quote_ident(database)
    old, new = f"{db}.{quote_ident(schema.TELEMETRY.name)}", f"{db}.{quote_ident(TELEMETRY_REBUILD)}"
    cols = ", ".join(quote_ident(n) for n in schema.TELEMETRY.names)
    return [
        f"DROP TABLE IF EXISTS {new} SYNC",
        create_table_sql(database, schema.TELEMETRY, policy, as_name=TELEMETRY_REBUILD),
        f"INSERT INTO {new} ({cols}) SELECT {cols} FROM {old}",
        f"EXCHANGE TABLES {old} AND {new}",
        f"DROP TABLE IF EXISTS {new} SYNC",
    ]


def _v7(database: str, policy: RetentionPolicy) -> list[str]:
    """requests.instance and engine_inference_ms: which engine instance served, and its compute time."""
    table = schema.REQUESTS
    return [
        f"ALTER TABLE {quote_ident(database)}.{quote_ident(table.name)} ADD COLUMN IF NOT EXISTS "
        f"{quote_ident(name)} {column_type(table, name, kind)}"
        for name, kind in (("instance", "str"), ("engine_inference_ms", "float"))
    ]


def _v9(database: str, policy: RetentionPolicy) -> list[str]:
    """requests.trace_flags: whether the caller sampled the trace, so unsampled spans are not exported."""
    table = schema.REQUESTS
    return [f"ALTER TABLE {quote_ident(database)}.{quote_ident(table.name)} ADD COLUMN IF NOT EXISTS "
            f"trace_flags {column_type(table, 'trace_flags', 'str')}"]


def _v10(database: str, policy: RetentionPolicy) -> list[str]:
    """eval_results.representative: whether the row's request was sampled whatever its outcome (drift)."""
    table = schema.EVAL_RESULTS
    return [f"ALTER TABLE {quote_ident(database)}.{quote_ident(table.name)} ADD COLUMN IF NOT EXISTS "
            f"representative {column_type(table, 'representative', 'bool')}"]


def _v8(database: str, policy: RetentionPolicy) -> list[str]:
    """Hourly correlation rollups (``correlation_rollup``): built from the raw rows by ingest."""
    return [correlation_rollup.clickhouse_create_sql(database, policy)]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "requests, eval_results, telemetry, cost_lines", _v1),
    Migration(2, "request rollups per minute, hour, six hours, day and week", clickhouse_rollup.migration_statements,
              clickhouse_rollup.backfill_statements),
    Migration(3, "eval_results.use_case", _v3),
    Migration(4, "request_content", _v4),
    Migration(5, "rollup sketches at 1% relative accuracy (half the buckets), rollups ordered by period",
              clickhouse_rollup.alpha_statements),
    Migration(6, "telemetry ORDER BY includes model_id (table rebuilt)", _v6),
    Migration(7, "requests.instance, requests.engine_inference_ms", _v7),
    Migration(8, "hourly correlation rollups", _v8),
    Migration(9, "requests.trace_flags", _v9),
    Migration(10, "eval_results.representative", _v10),
)


def bookkeeping_sql(database: str) -> list[str]:
    """The database and the two small tables that record applied versions and TTL policies."""
    db = quote_ident(database)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        (
            f"CREATE TABLE IF NOT EXISTS {db}.schema_version (version UInt32, description String, "
            f"applied_at {TS} DEFAULT now64(6)) ENGINE = MergeTree ORDER BY version"
        ),
        (
            f"CREATE TABLE IF NOT EXISTS {db}.retention_policy (fingerprint String, "
            f"applied_at {TS} DEFAULT now64(6)) ENGINE = MergeTree ORDER BY applied_at"
        ),
    ]


def check_steps(steps: tuple[Migration, ...]) -> int:
    """The target version of ``steps``; refuses duplicate, unordered or non-positive versions."""
    versions = [s.version for s in steps]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise StoreError(f"migration versions must be unique, ascending and >= 1: {versions}")
    return versions[-1] if versions else 0
