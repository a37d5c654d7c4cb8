"""ClickHouse SQL for the rollup tables: DDL, the materialized views that fill them, stats reads.

Each rollup table is an ``AggregatingMergeTree`` whose value columns are
``SimpleAggregateFunction(sum, ...)`` and, for the DDSketches, ``SimpleAggregateFunction(sumMap,
Map(Int16, UInt64))``: parts merge in the background by summing counters and bucket counts, so a
key's partial rows collapse by themselves (DuckDB needs ``compact`` for that). Reads never rely on
merges having happened: they always ``sum``/``sumMap`` with ``GROUP BY``.

The tables are filled by materialized views on ``requests``: every block inserted into ``requests``
(only rows the idempotency check found new, see ``ClickHouseStore._insert``) is aggregated into each
rollup in the same insert, on a server as in chdb. So a redelivered batch, which inserts nothing,
adds nothing to the rollups. Limitation: two writers racing on one batch can both insert it;
``requests`` hides that duplicate (ReplacingMergeTree + ``FINAL``), the rollups count it twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from infersight.store import schema
from infersight.store.base import RetentionPolicy, StatsQuery
from infersight.store.clickhouse_exec import quote_ident
from infersight.store.clickhouse_sql import TS_PARAM, table_ref, ts_param
from infersight.store.rollup import Plan
from infersight.store.sketch import LN_GAMMA, MAX_INDEX, MIN_INDEXABLE, ZERO_INDEX

TS = "DateTime64(6, 'UTC')"
SKETCH_TYPE = "Map(Int16, UInt64)"
ORDER_BY = ("tenant_id", "period_start", "model_id", "use_case", "backend")  # tenant-scoped reads first
_VALUE_TYPES = {"requests": "UInt64", "errors": "UInt64", "prompt_tokens_sum": "Int64",
                "completion_tokens_sum": "Int64", "tokens_per_s_sum": "Float64", "tokens_per_s_count": "UInt64"}
_COLUMNS = ", ".join(quote_ident(c) for c in schema.ROLLUP_COLUMNS)
_FILTERS = ("tenant_id", "model_id", "use_case")
_MINUTE = schema.ROLLUPS[0]  # raw edges are aggregated per minute: every usable resolution is whole minutes


def _key_type(name: str) -> str:
    base = "String" if name in schema.REQUESTS.required else "Nullable(String)"
    return f"LowCardinality({base})"


def row_ttl_expr(policy: RetentionPolicy) -> str:
    return f"period_start + toIntervalDay({int(policy.rollups_days)})"


def create_table_sql(database: str, rollup: schema.Rollup, policy: RetentionPolicy) -> str:
    cols = [f"period_start {TS} CODEC(Delta, ZSTD(1))"]
    cols += [f"{quote_ident(k)} {_key_type(k)}" for k in schema.ROLLUP_KEYS]
    cols += [f"{quote_ident(n)} SimpleAggregateFunction(sum, {_VALUE_TYPES[n]})" for n, _ in schema.ROLLUP_COUNTERS]
    cols += [f"{quote_ident(n)} SimpleAggregateFunction(sumMap, {SKETCH_TYPE})" for n, _, _ in schema.ROLLUP_SKETCHES]
    body = ",\n  ".join(cols)
    return (
        f"CREATE TABLE IF NOT EXISTS {table_ref(database, rollup.name)} (\n  {body}\n)\n"
        "ENGINE = AggregatingMergeTree\n"
        "PARTITION BY toYYYYMM(period_start)\n"
        f"ORDER BY ({', '.join(ORDER_BY)})\n"
        f"TTL {row_ttl_expr(policy)} DELETE\n"
        "SETTINGS allow_nullable_key = 1"
    )


def index_sql(column: str) -> str:
    """The DDSketch bucket index of a (non-NULL) value, as ``sketch.DDSketch.index`` computes it."""
    v = f"assumeNotNull({column})"
    return (
        f"toInt16(if({v} <= {MIN_INDEXABLE!r}, {ZERO_INDEX}, "
        f"least(greatest(ceil(log({v}) / {LN_GAMMA!r}), {-MAX_INDEX}), {MAX_INDEX})))"
    )


def bucket_sql(micros: str, column: str) -> str:
    """Epoch-aligned buckets of ``micros`` (a literal or a parameter), as the raw stats query makes them."""
    return f"fromUnixTimestamp64Micro(intDiv(toUnixTimestamp64Micro({column}), {micros}) * {micros}, 'UTC')"


def rollup_select_sql(micros: int, source: str) -> str:
    """Rollup rows (columns of ``schema.ROLLUP_COLUMNS``) of the request rows in ``source``."""
    keys = ", ".join(schema.ROLLUP_KEYS)
    sketches = ", ".join(
        f"sumMapIf(map({index_sql(col)}, toUInt64(1)), isNotNull({col}) AND NOT isNaN(assumeNotNull({col}))) AS {name}"
        for name, _, col in schema.ROLLUP_SKETCHES
    )
    return (
        f"SELECT {bucket_sql(str(micros), 'started_at')} AS period_start, {keys}, "
        "count() AS requests, countIf(status_code >= 400 OR error_type IS NOT NULL) AS errors, "
        "toInt64(ifNull(sum(prompt_tokens), 0)) AS prompt_tokens_sum, "
        "toInt64(ifNull(sum(completion_tokens), 0)) AS completion_tokens_sum, "
        "toFloat64(ifNull(sum(output_tokens_per_s), 0)) AS tokens_per_s_sum, "
        f"count(output_tokens_per_s) AS tokens_per_s_count, {sketches} "
        f"FROM {source} GROUP BY period_start, {keys}"
    )


def view_name(rollup: schema.Rollup) -> str:
    return f"{rollup.name}_mv"


def migration_statements(database: str, policy: RetentionPolicy) -> list[str]:
    """Schema step 2: the rollup tables and the materialized views that fill them."""
    out = []
    requests = table_ref(database, "requests")
    for rollup in schema.ROLLUPS:
        target = table_ref(database, rollup.name)
        out += [
            create_table_sql(database, rollup, policy),
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table_ref(database, view_name(rollup))} TO {target} AS "
            f"{rollup_select_sql(rollup.micros, requests)}",
        ]
    return out


def backfill_statements(database: str) -> list[str]:
    """Step 2 on a database that already holds requests: their rollups, computed afresh.

    Re-runnable after a crash (the version row is written last): each table is emptied first. Run
    it with ingest stopped, as ``migrate()`` is at start-up: the views already count new inserts,
    so rows inserted during the backfill would be counted twice.
    """
    requests = table_ref(database, "requests")
    out = []
    for rollup in schema.ROLLUPS:
        target = table_ref(database, rollup.name)
        out += [f"TRUNCATE TABLE {target}",
                f"INSERT INTO {target} ({_COLUMNS}) {rollup_select_sql(rollup.micros, f'{requests} FINAL')}"]
    return out


def ttl_statements(database: str, policy: RetentionPolicy) -> list[str]:
    settings = " SETTINGS materialize_ttl_after_modify = 0"
    return [
        f"ALTER TABLE {table_ref(database, r.name)} MODIFY TTL {row_ttl_expr(policy)} DELETE{settings}"
        for r in schema.ROLLUPS
    ]


def stats_sql(database: str, query: StatsQuery, plan: Plan) -> tuple[str, dict[str, Any]]:
    """The merged rows of a rollup plan: one per group (and bucket), ordered like the raw query.

    Raw segments (the window's sub-minute edges) are aggregated on the fly with the views' own
    SELECT, so every segment is rollup-shaped and one ``GROUP BY`` with ``sum``/``sumMap`` merges all.
    """
    params: dict[str, Any] = {}
    where = ""
    for column in _FILTERS:
        value = getattr(query, column)
        if value is not None:
            where += f" AND {column} = {{{column}:String}}"
            params[column] = value
    parts = []
    for i, seg in enumerate(plan.segments):
        params[f"s{i}_lo"], params[f"s{i}_hi"] = ts_param(seg.since), ts_param(seg.until)
        lo, hi = f"{{s{i}_lo:{TS_PARAM}}}", f"{{s{i}_hi:{TS_PARAM}}}"
        if seg.rollup is not None:
            parts.append(
                f"SELECT {_COLUMNS} FROM {table_ref(database, seg.rollup.name)} "
                f"WHERE period_start >= {lo} AND period_start < {hi}{where}"
            )
        else:
            # No FINAL: like the views, count a racing writer's duplicate (see the module docstring).
            requests = table_ref(database, "requests")
            raw = f"(SELECT * FROM {requests} WHERE started_at >= {lo} AND started_at < {hi}{where})"
            parts.append(rollup_select_sql(_MINUTE.micros, raw))
    keys = list(query.group_by)
    select = list(keys)
    if query.resolution is not None:
        params["res"] = query.resolution // timedelta(microseconds=1)
        select.append(f"{bucket_sql('{res:Int64}', 'period_start')} AS bucket_start")
        keys.append("bucket_start")
    select += [f"sum({n}) AS agg_{n}" for n, _ in schema.ROLLUP_COUNTERS]
    select += [f"sumMap({n}) AS agg_{n}" for n, _, _ in schema.ROLLUP_SKETCHES]
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    inner = f"SELECT {', '.join(select)} FROM ({' UNION ALL '.join(parts)}){group}"
    outer = list(keys) + [f"agg_{n} AS {n}" for n, _ in schema.ROLLUP_COUNTERS]
    outer += [f"mapKeys(agg_{n}) AS {p}_k, mapValues(agg_{n}) AS {p}_v" for n, p, _ in schema.ROLLUP_SKETCHES]
    order = f" ORDER BY {', '.join(keys)}" if keys else ""
    return f"SELECT {', '.join(outer)} FROM ({inner}){order}", params
