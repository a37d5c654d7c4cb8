"""ClickHouse SQL for the rollup tables: DDL, the materialized views that fill them, stats reads.

Each rollup table is an ``AggregatingMergeTree`` whose value columns are
``SimpleAggregateFunction(sum, ...)`` and, for the DDSketches, ``SimpleAggregateFunction(sumMap,
Map(Int16, UInt64))``: parts merge in the background by summing counters and bucket counts, so a
key's partial rows collapse by themselves (DuckDB needs ``compact`` for that). Reads never rely on
merges having happened: they always ``sum``/``sumMap`` with ``GROUP BY``.

Layout: ``ORDER BY (period_start, tenant_id, model_id, use_case, backend)`` and, from the hour table
up, granules of 256 rows. A stats query reads a few contiguous period ranges of every table; with
the tenant first (the layout of schema step 2) each tenant's range began and ended inside a granule
of up to thousands of multi-kilobyte sketch rows, so a 30-day query read ~30 times the rows it used
from the six-hour table (measured: 0.7 s of a 0.85 s query went to reading). Tenant-scoped reads
still prune by the primary key inside each period.

Reads merge with ``sumMap`` in one ``UNION ALL`` part per table (``stats_sql``). From a server,
each quantile's order statistics are then found in SQL (running counts with ``arrayCumSum``, the
first bucket past each rank with ``arrayFirstIndex``), so a group returns a count and six bucket
indexes per sketch instead of its ~1,000 buckets: a server sends little. In-process (chdb) moving
the merged maps costs nothing, and numpy finds the quantiles faster than the engine plans those
lookups (``map_quantile_rows``). Measured on chdb at seed scale, 30 days by tenant and model (2 cores):
the time is CPU, about 45% in reading and merging ~3.4M sketch entries (``sumMap`` grows with
groups x buckets), 40% in the two raw sub-minute edges (``requests`` is tenant-first, so an edge of
seconds decompresses ~1 granule per tenant of every column it needs), the rest planning.

The tables are filled by materialized views on ``requests``: every block inserted into ``requests``
(only rows the idempotency check found new, see ``ClickHouseStore._insert``) is aggregated into each
rollup in the same insert, on a server as in chdb. So a redelivered batch, which inserts nothing,
adds nothing to the rollups. Limitation: two writers racing on one batch can both insert it;
``requests`` hides that duplicate (ReplacingMergeTree + ``FINAL``), the rollups count it twice.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pyarrow as pa

from infersight.store import schema
from infersight.store.base import RetentionPolicy, StatsQuery
from infersight.store.clickhouse_exec import quote_ident
from infersight.store.clickhouse_sql import TS_PARAM, table_ref, ts_param
from infersight.store.rollup import QUANTILES, Plan, Segment
from infersight.store.rollup_merge import row_quantiles
from infersight.store.sketch import LN_GAMMA, MAX_INDEX, MIN_INDEXABLE, V2_ALPHA, ZERO_INDEX, gamma_of
from infersight.store.sketch import quantiles_from_order_stats

TS = "DateTime64(6, 'UTC')"
SKETCH_TYPE = "Map(Int16, UInt64)"
ORDER_BY = ("period_start", "tenant_id", "model_id", "use_case", "backend")  # see the module docstring
ORDER_BY_V2 = ("tenant_id", "period_start", "model_id", "use_case", "backend")  # schema step 2's layout
V2_LN_GAMMA = math.log(gamma_of(V2_ALPHA))
_VALUE_TYPES = {"requests": "UInt64", "errors": "UInt64", "prompt_tokens_sum": "Int64",
                "completion_tokens_sum": "Int64", "tokens_per_s_sum": "Float64", "tokens_per_s_count": "UInt64"}
_COLUMNS = ", ".join(quote_ident(c) for c in schema.ROLLUP_COLUMNS)
_FILTERS = ("tenant_id", "model_id", "use_case")


def _key_type(name: str) -> str:
    base = "String" if name in schema.REQUESTS.required else "Nullable(String)"
    return f"LowCardinality({base})"


def row_ttl_expr(policy: RetentionPolicy) -> str:
    """``rollups_days``, but never less than ``requests_days``: stats read a rollup period in place of
    its raw rows, so a rollup gone before its requests made stored requests count as none."""
    return f"period_start + toIntervalDay({int(max(policy.rollups_days, policy.requests_days))})"


def granularity(rollup: schema.Rollup) -> int:
    """Rows per granule: 256 for sketch rows of an hour or more (kilobytes each), else the default."""
    return 256 if rollup.period >= timedelta(hours=1) else 8192


def create_table_sql(
    database: str, rollup: schema.Rollup, policy: RetentionPolicy, name: str | None = None, v2: bool = False
) -> str:
    """The table of ``rollup`` (under ``name`` if given); ``v2``: schema step 2's layout."""
    cols = [f"period_start {TS} CODEC(Delta, ZSTD(1))"]
    cols += [f"{quote_ident(k)} {_key_type(k)}" for k in schema.ROLLUP_KEYS]
    cols += [f"{quote_ident(n)} SimpleAggregateFunction(sum, {_VALUE_TYPES[n]})" for n, _ in schema.ROLLUP_COUNTERS]
    cols += [f"{quote_ident(n)} SimpleAggregateFunction(sumMap, {SKETCH_TYPE})" for n, _, _ in schema.ROLLUP_SKETCHES]
    body = ",\n  ".join(cols)
    settings = "" if v2 else f", index_granularity = {granularity(rollup)}"
    return (
        f"CREATE TABLE IF NOT EXISTS {table_ref(database, name or rollup.name)} (\n  {body}\n)\n"
        "ENGINE = AggregatingMergeTree\n"
        "PARTITION BY toYYYYMM(period_start)\n"
        f"ORDER BY ({', '.join(ORDER_BY_V2 if v2 else ORDER_BY)})\n"
        f"TTL {row_ttl_expr(policy)} DELETE\n"
        f"SETTINGS allow_nullable_key = 1{settings}"
    )


def index_sql(column: str, ln_gamma: float = LN_GAMMA) -> str:
    """The DDSketch bucket index of a (non-NULL) value, as ``sketch.DDSketch.index`` computes it."""
    v = f"assumeNotNull({column})"
    return (
        f"toInt16(if({v} <= {MIN_INDEXABLE!r}, {ZERO_INDEX}, "
        f"least(greatest(ceil(log({v}) / {ln_gamma!r}), {-MAX_INDEX}), {MAX_INDEX})))"
    )


def bucket_sql(micros: str, column: str) -> str:
    """Epoch-aligned buckets of ``micros`` (a literal or a parameter), as the raw stats query makes them."""
    return f"fromUnixTimestamp64Micro(intDiv(toUnixTimestamp64Micro({column}), {micros}) * {micros}, 'UTC')"


def rollup_select_sql(micros: int, source: str, ln_gamma: float = LN_GAMMA) -> str:
    """Rollup rows (columns of ``schema.ROLLUP_COLUMNS``) of the request rows in ``source``."""
    keys = ", ".join(schema.ROLLUP_KEYS)
    sketches = ", ".join(
        f"sumMapIf(map({index_sql(col, ln_gamma)}, toUInt64(1)), isNotNull({col}) AND NOT isNaN(assumeNotNull({col}))) AS {name}"
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


def _view_sql(database: str, rollup: schema.Rollup, ln_gamma: float = LN_GAMMA) -> str:
    requests = table_ref(database, "requests")
    return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table_ref(database, view_name(rollup))} "
            f"TO {table_ref(database, rollup.name)} AS {rollup_select_sql(rollup.micros, requests, ln_gamma)}")


def migration_statements(database: str, policy: RetentionPolicy) -> list[str]:
    """Schema step 2: the rollup tables and the views that fill them, as step 2 made them (the
    tenant-first layout, sketches at ``V2_ALPHA``): ``alpha_statements`` moves them on."""
    out = []
    for rollup in schema.ROLLUPS:
        out += [create_table_sql(database, rollup, policy, v2=True), _view_sql(database, rollup, V2_LN_GAMMA)]
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
        select = rollup_select_sql(rollup.micros, f"{requests} FINAL", V2_LN_GAMMA)
        out += [f"TRUNCATE TABLE {target}", f"INSERT INTO {target} ({_COLUMNS}) {select}"]
    return out


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _v2_remap_sql(column: str) -> str:
    """A step-2 sketch (``V2_ALPHA``) as an ``ALPHA`` sketch: bucket ``i`` goes to ``ceil(i / 2)``
    (``sketch.v2_index``; intDiv truncates, so shift to non-negative first) and counts that meet add."""
    key = f"if(k = {ZERO_INDEX}, k, toInt16(intDiv(toInt32(k) + {-ZERO_INDEX + 1}, 2) - {-ZERO_INDEX // 2}))"
    merged = f"arrayReduce('sumMap', [arrayMap(k -> {key}, mapKeys({column}))], [mapValues({column})])"
    return f"CAST({merged}, '{SKETCH_TYPE}')"


def alpha_statements(database: str, policy: RetentionPolicy) -> list[str]:
    """Schema step 5: every rollup table rebuilt in this module's layout, its sketches moved to
    ``sketch.ALPHA`` (lossless: ``sketch.v2_index``), and the views recreated with the new index.

    Each table is copied into a fresh ``<table>_rebuild`` and exchanged with it, so every statement
    can run again after a crash: the copy converts only a table still in the step-2 layout (which
    is what marks step-2 sketches) and copies an already rebuilt one as it is. Run with ingest
    stopped, as ``migrate()`` is at start-up.
    """
    out = [f"DROP VIEW IF EXISTS {table_ref(database, view_name(r))}" for r in schema.ROLLUPS]
    plain = ", ".join(quote_ident(c) for c in schema.ROLLUP_COLUMNS[:-len(schema.ROLLUP_SKETCHES)])
    for rollup in schema.ROLLUPS:
        live, staging = table_ref(database, rollup.name), table_ref(database, f"{rollup.name}_rebuild")
        is_v2 = (f"((SELECT sorting_key FROM system.tables WHERE database = {_literal(database)} "
                 f"AND name = {_literal(rollup.name)}) = {_literal(', '.join(ORDER_BY_V2))})")
        sketches = ", ".join(f"if({is_v2}, {_v2_remap_sql(quote_ident(n))}, {quote_ident(n)}) AS {quote_ident(n)}"
                             for n, _, _ in schema.ROLLUP_SKETCHES)
        out += [
            f"DROP TABLE IF EXISTS {staging}",
            create_table_sql(database, rollup, policy, name=f"{rollup.name}_rebuild"),
            f"INSERT INTO {staging} ({_COLUMNS}) SELECT {plain}, {sketches} FROM {live}",
            f"EXCHANGE TABLES {live} AND {staging}",
            f"DROP TABLE IF EXISTS {staging}",
        ]
    return out + [_view_sql(database, r) for r in schema.ROLLUPS]


def ttl_statements(database: str, policy: RetentionPolicy) -> list[str]:
    settings = " SETTINGS materialize_ttl_after_modify = 0"
    return [
        f"ALTER TABLE {table_ref(database, r.name)} MODIFY TTL {row_ttl_expr(policy)} DELETE{settings}"
        for r in schema.ROLLUPS
    ]


def stats_sql(
    database: str, query: StatsQuery, plan: Plan, order_stats: bool = True
) -> tuple[str, dict[str, Any]]:
    """The merged rows of a rollup plan: one per group (and bucket), ordered like the raw query.

    ``order_stats``: each sketch as the buckets of its order statistics (``quantile_rows``), which is
    little to send from a server; else as its merged map (``map_quantile_rows``), which in-process
    costs nothing to move and spares the engine planning the lookups (~7 ms a query on chdb).

    One part per table, not per segment: a window's segments come in pairs from each table (its
    two edges), and every ``UNION ALL`` part costs the engine ~2-3 ms to plan whatever it reads
    (chdb, a 30-day window over no data: 34 ms for one part per segment, 18 ms for one per table).
    Each part selects only the query's group columns (and bucket): no more to read or hash.
    """
    params: dict[str, Any] = {}
    where = ""
    for column in _FILTERS:
        value = getattr(query, column)
        if value is not None:
            where += f" AND {column} = {{{column}:String}}"
            params[column] = value
    keys = list(query.group_by)
    if query.resolution is not None:
        params["res"] = query.resolution // timedelta(microseconds=1)
    tables: dict[str | None, list[tuple[int, Segment]]] = {}  # table (None: requests) -> its segments
    for i, seg in enumerate(plan.segments):
        tables.setdefault(seg.rollup.name if seg.rollup is not None else None, []).append((i, seg))
    bucket = ["bucket_start"] if query.resolution is not None else []
    parts: list[str] = []
    for name, segs in tables.items():
        column = "started_at" if name is None else "period_start"
        ranges = []
        for i, seg in segs:
            params[f"lo{i}"], params[f"hi{i}"] = ts_param(seg.since), ts_param(seg.until)
            ranges.append(f"({column} >= {{lo{i}:{TS_PARAM}}} AND {column} < {{hi{i}:{TS_PARAM}}})")
        head = [*keys, *(f"{bucket_sql('{res:Int64}', column)} AS bucket_start" for _ in bucket)]
        cond = f"({' OR '.join(ranges)}){where}"
        if name is None:
            parts.append(_raw_part_sql(table_ref(database, "requests"), head, cond, keys + bucket))
        else:
            values = [quote_ident(c) for c, *_ in (*schema.ROLLUP_COUNTERS, *schema.ROLLUP_SKETCHES)]
            parts.append(f"SELECT {', '.join(head + values)} FROM {table_ref(database, name)} WHERE {cond}")
    keys += bucket
    select = list(keys)
    select += [f"sum({n}) AS agg_{n}" for n, _ in schema.ROLLUP_COUNTERS]
    select += [f"sumMap({n}) AS agg_{n}" for n, _, _ in schema.ROLLUP_SKETCHES]
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    inner = f"SELECT {', '.join(select)} FROM ({' UNION ALL '.join(parts)}){group}"
    outer = list(keys) + [f"agg_{n} AS {n}" for n, _ in schema.ROLLUP_COUNTERS]
    if order_stats:
        outer += [_order_stats_sql(f"agg_{n}", p) for n, p, _ in schema.ROLLUP_SKETCHES]
    else:
        outer += [f"agg_{n} AS {n}" for n, _, _ in schema.ROLLUP_SKETCHES]
    order = f" ORDER BY {', '.join(keys)}" if keys else ""
    return f"SELECT {', '.join(outer)} FROM ({inner}){order}", params


def _raw_part_sql(requests: str, head: list[str], cond: str, group_by: list[str]) -> str:
    """Raw requests (the sub-minute edges) aggregated straight to the query's groups (no minute or
    key columns the query does not group by: fewer columns to read, fewer groups), rollup-shaped.

    No FINAL: like the views, count a racing writer's duplicate (see the module docstring). Every
    usable resolution is whole minutes, so bucketing ``started_at`` equals bucketing its minute.
    """
    sketches = ", ".join(
        f"sumMapIf(map({index_sql(col)}, toUInt64(1)), isNotNull({col}) AND NOT isNaN(assumeNotNull({col}))) AS {name}"
        for name, _, col in schema.ROLLUP_SKETCHES
    )
    group = f" GROUP BY {', '.join(group_by)}" if group_by else ""
    return (
        f"SELECT {''.join(h + ', ' for h in head)}"
        "count() AS requests, countIf(status_code >= 400 OR error_type IS NOT NULL) AS errors, "
        "toInt64(ifNull(sum(prompt_tokens), 0)) AS prompt_tokens_sum, "
        "toInt64(ifNull(sum(completion_tokens), 0)) AS completion_tokens_sum, "
        "toFloat64(ifNull(sum(output_tokens_per_s), 0)) AS tokens_per_s_sum, "
        f"count(output_tokens_per_s) AS tokens_per_s_count, {sketches} "
        f"FROM {requests} WHERE {cond}{group}"
    )


def _order_stats_sql(merged: str, prefix: str) -> str:
    """``<prefix>_n`` (values in the merged sketch) and ``<prefix>_b``: per quantile, the buckets of the
    order statistics ``floor(q·(n - 1))`` and the next one (``sketch.quantiles_from_order_stats``).

    ``sumMap`` returns its keys sorted, so the running counts find the j-th value's bucket: the first
    whose running count exceeds j. Floats as in Python (``q * (n - 1)`` in Float64). One lambda over
    the ranks rather than one expression per rank: the engine plans each lambda apart, and six per
    sketch cost ~12 ms a query (most of an empty window's time).
    """
    n, cum = f"{prefix}_n", f"_cum_{prefix}"
    qs = ", ".join(repr(q) for q in QUANTILES)
    lo = f"toInt64(floor(q * ({n} - 1)))"
    ranks = f"arrayFlatten(arrayMap(q -> [{lo}, least({lo} + 1, {n} - 1)], [{qs}]))"
    return (f"arrayCumSum(mapValues({merged})) AS {cum}, toInt64(arraySum(mapValues({merged}))) AS {n}, "
            f"arrayMap(j -> mapKeys({merged})[arrayFirstIndex(c -> c > j, {cum})], {ranks}) AS {prefix}_b")


def map_quantile_rows(table: pa.Table) -> list[dict[str, Any]]:
    """``stats_sql(order_stats=False)``'s rows with each sketch's ``<prefix>_q`` for ``rollup.stats_rows``."""
    sketches = [n for n, _, _ in schema.ROLLUP_SKETCHES]
    rows: list[dict[str, Any]] = table.drop_columns(sketches).to_pylist()
    for name, prefix, _ in schema.ROLLUP_SKETCHES:
        for row, q in zip(rows, row_quantiles(table.column(name), QUANTILES), strict=True):
            row[f"{prefix}_q"] = q
    return rows


def quantile_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``stats_sql``'s rows with each sketch's ``<prefix>_q`` (its quantiles) for ``rollup.stats_rows``."""
    for row in rows:
        for _, prefix, _ in schema.ROLLUP_SKETCHES:
            row[f"{prefix}_q"] = quantiles_from_order_stats(row[f"{prefix}_n"], row[f"{prefix}_b"], QUANTILES)
    return rows
