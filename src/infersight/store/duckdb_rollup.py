"""DuckDB SQL for the rollup tables: DDL, a batch's rollups, merging, compaction and stats reads.

Sketches are ``MAP(SMALLINT, BIGINT)`` columns (DDSketch bucket index -> count, ``store/sketch.py``).
The bucket index is computed in SQL (``index_sql``), and ``histogram()`` turns a group's indexes
into that map, so no Python touches individual records on the write path.

DuckDB has no ``sumMap``; merging maps in SQL is "unnest the entries, ``sum`` per (group, bucket),
list them again" (``merge_sql``, which compaction uses). The groups get dense integer ids first
(``dense_rank``), so the big aggregation hashes two small integers and a bucket index rather than
strings: measured twice as fast. Stats reads do not merge here: ``stats_sql`` returns the rows of
the window unmerged and ``rollup_merge`` merges them in numpy, three times faster at seed scale.

Writes do not aggregate: the rollup SQL has a fixed cost of ~10 ms a statement (three
``histogram``s), which at the ingester's small batches (a few records every 0.2 s) would triple
the cost of a write. Instead the write transaction appends the new rows' rollup columns to
``request_rollups_pending`` (one cheap INSERT), and ``fold`` aggregates that table into every
rollup table and empties it, in one transaction, every few seconds. Reads add the pending rows of
their window (``stats_sql``), so answers are exact and current whether or not a fold has run.

Each fold adds partial rows (one per key and period it saw), until ``compact`` merges a key's
partials into one row. Reads never depend on that either: they always sum.

Sketches written by schema step 2 are at ``sketch.V2_ALPHA`` (that step still backfills at it, so
every file goes through the same conversion); ``to_alpha``, step 5, moves them to ``ALPHA``.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import duckdb

from infersight.store import schema
from infersight.store.base import StatsQuery
from infersight.store.rollup import Plan
from infersight.store.rollup_merge import SCALAR_PREFIX
from infersight.store.sketch import LN_GAMMA, MAX_INDEX, MIN_INDEXABLE, V2_ALPHA, ZERO_INDEX, gamma_of

SKETCH_TYPE = "MAP(SMALLINT, BIGINT)"
EPOCH_ORIGIN = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
_KIND_TYPES = {"int": "BIGINT", "float": "DOUBLE"}
_TABLE_KEYS = ("period_start", *schema.ROLLUP_KEYS)
_COLUMNS = ", ".join(schema.ROLLUP_COLUMNS)
_FILTERS = ("tenant_id", "model_id", "use_case")
_MINUTE = schema.ROLLUPS[0]  # a raw row's period_start is its minute: every usable resolution is whole minutes
PENDING = "request_rollups_pending"
PENDING_COLUMNS = (
    "started_at", *schema.ROLLUP_KEYS, "status_code", "error_type", "prompt_tokens", "completion_tokens",
    "output_tokens_per_s", *(column for _, _, column in schema.ROLLUP_SKETCHES),
)
_SQL_TYPES = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "ts": "TIMESTAMPTZ"}
V2_LN_GAMMA = math.log(gamma_of(V2_ALPHA))
"""The bucket width of schema step 2's sketches: that step backfills with it, ``to_alpha`` converts."""


def create_table_sql(rollup: schema.Rollup) -> str:
    required = schema.REQUESTS.required
    cols = ["period_start TIMESTAMPTZ NOT NULL"]
    cols += [f"{k} VARCHAR{' NOT NULL' if k in required else ''}" for k in schema.ROLLUP_KEYS]
    cols += [f"{name} {_KIND_TYPES[kind]} NOT NULL" for name, kind in schema.ROLLUP_COUNTERS]
    cols += [f"{name} {SKETCH_TYPE}" for name, _, _ in schema.ROLLUP_SKETCHES]
    return f"CREATE TABLE IF NOT EXISTS {rollup.name} ({', '.join(cols)})"


def create_pending_sql() -> str:
    kinds = dict(schema.REQUESTS.columns)
    cols = ", ".join(
        f"{c} {_SQL_TYPES[kinds[c]]}{' NOT NULL' if c in schema.REQUESTS.required else ''}" for c in PENDING_COLUMNS
    )
    return f"CREATE TABLE IF NOT EXISTS {PENDING} ({cols})"


def stage_sql(source: str) -> str:
    """Append rows of ``source`` (the new rows of a write) to the pending table."""
    cols = ", ".join(PENDING_COLUMNS)
    return f"INSERT INTO {PENDING} ({cols}) SELECT {cols} FROM {source}"


def fold(con: duckdb.DuckDBPyConnection) -> tuple[int, int] | None:
    """Aggregate the pending rows into every rollup table and empty it (in the caller's transaction).

    Returns the pending rows' time span as epoch microseconds (what compaction should look at),
    or None when nothing was pending.
    """
    span = f"SELECT epoch_us(min(started_at)), epoch_us(max(started_at)), count(*) FROM {PENDING}"
    lo, hi, n = con.execute(span).fetchall()[0]
    if not n:
        return None
    for rollup in schema.ROLLUPS:
        con.execute(insert_rollups_sql(rollup, PENDING)).fetchall()
    con.execute(f"DELETE FROM {PENDING}").fetchall()
    return int(lo), int(hi)


def index_sql(column: str, ln_gamma: float = LN_GAMMA) -> str:
    """The DDSketch bucket index of a column, as ``sketch.DDSketch.index`` computes it (NaN: NULL)."""
    return (
        f"CASE WHEN {column} IS NULL OR isnan({column}) THEN NULL "
        f"WHEN {column} <= {MIN_INDEXABLE!r} THEN {ZERO_INDEX} "
        f"ELSE least(greatest(ceil(ln({column}) / {ln_gamma!r}), {-MAX_INDEX}), {MAX_INDEX})::SMALLINT END"
    )


def bucket_sql(micros: int, column: str) -> str:
    """Epoch-aligned buckets, as the raw stats query makes them."""
    return f"time_bucket(INTERVAL {micros} MICROSECONDS, {column}, {EPOCH_ORIGIN})"


def rollup_select_sql(micros: int, source: str, ln_gamma: float = LN_GAMMA) -> str:
    """Rollup rows (columns of ``schema.ROLLUP_COLUMNS``) of the request rows in ``source``."""
    sketches = ", ".join(
        f"histogram({index_sql(column, ln_gamma)})::{SKETCH_TYPE} AS {name}"
        for name, _, column in schema.ROLLUP_SKETCHES
    )
    return (
        f"SELECT {bucket_sql(micros, 'started_at')} AS period_start, {', '.join(schema.ROLLUP_KEYS)}, "
        "count(*) AS requests, "
        "count(*) FILTER (WHERE status_code >= 400 OR error_type IS NOT NULL) AS errors, "
        "coalesce(sum(prompt_tokens), 0)::BIGINT AS prompt_tokens_sum, "
        "coalesce(sum(completion_tokens), 0)::BIGINT AS completion_tokens_sum, "
        "coalesce(sum(output_tokens_per_s), 0)::DOUBLE AS tokens_per_s_sum, "
        f"count(output_tokens_per_s) AS tokens_per_s_count, {sketches} "
        f"FROM {source} GROUP BY ALL"
    )


def insert_rollups_sql(rollup: schema.Rollup, source: str, ln_gamma: float = LN_GAMMA) -> str:
    """Append the rollups of the request rows in ``source`` (a table or view of new rows)."""
    return f"INSERT INTO {rollup.name} ({_COLUMNS}) {rollup_select_sql(rollup.micros, source, ln_gamma)}"


def _v2_remap_sql(column: str) -> str:
    """A step-2 sketch (``V2_ALPHA``) as an ``ALPHA`` sketch: bucket ``i`` goes to ``ceil(i / 2)``
    (``sketch.v2_index``), and the counts of the two old buckets that meet there add up.

    DuckDB has no ``sumMap``: sort the entries by bucket, so the (at most two) entries that meet are
    neighbours, and keep each first one with its neighbour's count added. No unnest: a per-row list
    expression, so the migration streams through the table.
    """
    e = f"list_sort(map_entries({column}))"

    def new(at: str) -> str:
        return f"CASE WHEN {at} = {ZERO_INDEX} THEN {at} ELSE ({at}::INTEGER + 1) >> 1 END"

    entry = (f"{{'key': {new('x.key')}::SMALLINT, 'value': x.value + CASE WHEN i < len(es) "
             f"AND {new('es[i + 1].key')} = {new('x.key')} THEN es[i + 1].value ELSE 0 END, "
             f"'first': i = 1 OR {new('es[i - 1].key')} <> {new('x.key')}}}")
    kept = f"list_filter(list_transform(es, lambda x, i: {entry}), lambda s: s.first)"
    merged = f"map_from_entries(list_transform({kept}, lambda s: {{'key': s.key, 'value': s.value}}))"
    return f"(SELECT CASE WHEN es IS NULL THEN NULL ELSE {merged}::{SKETCH_TYPE} END FROM (SELECT {e} AS es))"


def to_alpha(con: duckdb.DuckDBPyConnection) -> None:
    """Schema step 5: every stored sketch moved from ``V2_ALPHA`` to ``sketch.ALPHA``
    (lossless, ``sketch.v2_index``), in the caller's transaction. Pending rows hold raw values."""
    sets = ", ".join(f"{name} = {_v2_remap_sql(name)}" for name, _, _ in schema.ROLLUP_SKETCHES)
    for rollup in schema.ROLLUPS:
        con.execute(f"UPDATE {rollup.name} SET {sets}").fetchall()


_SCALARS = tuple(f"{SCALAR_PREFIX}{m}" for m in range(len(schema.ROLLUP_SKETCHES)))  # a raw row's bucket per sketch


def rolled_part(table: str, where: str) -> str:
    """Rollup rows as input to ``merge_sql`` and ``stats_sql``."""
    return f"SELECT {_COLUMNS}, {', '.join(f'NULL::SMALLINT AS {i}' for i in _SCALARS)} FROM {table} WHERE {where}"


def raw_part(table: str, where: str) -> str:
    """Request rows as input to ``merge_sql`` and ``stats_sql``, one each: counters of one request and a bucket index
    per sketch. Not aggregated first: the edges of a window hold few rows, and an aggregation with
    ``histogram`` has a fixed cost (~10 ms) far above reading them as they are."""
    sketches = ", ".join(f"NULL::{SKETCH_TYPE} AS {name}" for name, _, _ in schema.ROLLUP_SKETCHES)
    scalars = ", ".join(f"{index_sql(column)} AS {i}" for (_, _, column), i in zip(schema.ROLLUP_SKETCHES, _SCALARS))
    return (
        f"SELECT {bucket_sql(_MINUTE.micros, 'started_at')} AS period_start, {', '.join(schema.ROLLUP_KEYS)}, "
        "1::BIGINT AS requests, (status_code >= 400 OR error_type IS NOT NULL)::BIGINT AS errors, "
        "coalesce(prompt_tokens, 0)::BIGINT AS prompt_tokens_sum, "
        "coalesce(completion_tokens, 0)::BIGINT AS completion_tokens_sum, "
        "coalesce(output_tokens_per_s, 0)::DOUBLE AS tokens_per_s_sum, "
        f"(output_tokens_per_s IS NOT NULL)::BIGINT AS tokens_per_s_count, {sketches}, {scalars} "
        f"FROM {table} WHERE {where}"
    )


def merge_sql(parts: list[str], keys: list[tuple[str, str]]) -> str:
    """Merge ``rolled_part``/``raw_part`` rows into one row per distinct ``keys`` (expression, alias).

    Each output row holds the keys, the summed counters and, per sketch, ``<prefix>_k`` and
    ``<prefix>_v``: bucket indexes and their summed counts, in no particular order (NULL when
    empty). Without keys there is exactly one row, even over no input.
    """
    aliases = [alias for _, alias in keys]
    key_select = "".join(f"{expr} AS {alias}, " for expr, alias in keys)
    gid = f"dense_rank() OVER (ORDER BY {', '.join(aliases)})" if keys else "1"
    counters = ", ".join(
        f"sum({name})::{'DOUBLE' if kind == 'float' else 'BIGINT'} AS {name}" for name, kind in schema.ROLLUP_COUNTERS
    )
    bins = " UNION ALL ".join(
        f"SELECT gid, {m} AS m, unnest(map_keys({name})) AS k, unnest(map_values({name})) AS v FROM src "
        f"UNION ALL SELECT gid, {m} AS m, {i} AS k, 1 AS v FROM src WHERE {i} IS NOT NULL"
        for m, ((name, _, _), i) in enumerate(zip(schema.ROLLUP_SKETCHES, _SCALARS))
    )
    lists = ", ".join(  # unordered: quantiles_from_bins sorts, MAP() does not care
        f"list(k) FILTER (WHERE m = {m}) AS {prefix}_k, list(v) FILTER (WHERE m = {m}) AS {prefix}_v"
        for m, (_, prefix, _) in enumerate(schema.ROLLUP_SKETCHES)
    )
    group = (f"SELECT gid, {', '.join(f'any_value({a}) AS {a}' for a in aliases)}, {counters} FROM src GROUP BY gid"
             if keys else f"SELECT 1 AS gid, {counters} FROM src")
    order = f" ORDER BY {', '.join(aliases)}" if keys else ""
    values = ", ".join((*(n for n, _ in schema.ROLLUP_COUNTERS), *(n for n, _, _ in schema.ROLLUP_SKETCHES), *_SCALARS))
    return (
        f"WITH keyed AS (SELECT {key_select}{values} FROM ({' UNION ALL '.join(parts)}) seg), "
        f"src AS MATERIALIZED (SELECT *, {gid} AS gid FROM keyed), "
        f"grp AS ({group}), "
        f"agg AS (SELECT gid, m, k, sum(v)::BIGINT AS v FROM ({bins}) GROUP BY gid, m, k), "
        f"lists AS (SELECT gid, {lists} FROM agg GROUP BY gid) "
        f"SELECT grp.* EXCLUDE (gid), lists.* EXCLUDE (gid) FROM grp LEFT JOIN lists USING (gid){order}"
    )


def _filters(query: StatsQuery) -> tuple[str, list[Any]]:
    conds, params = [], []
    for column in _FILTERS:
        value = getattr(query, column)
        if value is not None:
            conds.append(f" AND {column} = ?")
            params.append(value)
    return "".join(conds), params


def stats_sql(query: StatsQuery, plan: Plan) -> tuple[str, list[Any], list[str]]:
    """The input rows of a rollup plan, unmerged, and the names of the group columns.

    One row per rollup row or raw request of the window (``rolled_part``/``raw_part``), with the
    group columns computed; ``rollup_merge.merged_rows`` groups them and merges their sketches.
    """
    where, filter_params = _filters(query)
    span = f"{{col}} >= ? AND {{col}} < ?{where}"
    parts: list[str] = []
    params: list[Any] = []
    for seg in plan.segments:
        if seg.rollup is not None:
            parts.append(rolled_part(seg.rollup.name, span.format(col="period_start")))
        else:
            parts.append(raw_part("requests", span.format(col="started_at")))
        params += [seg.since, seg.until, *filter_params]
    # Rows not folded yet, over the stretch the rollup segments cover (contiguous: raw only at the ends).
    covered = [seg for seg in plan.segments if seg.rollup is not None]
    if covered:
        parts.append(raw_part(PENDING, span.format(col="started_at")))
        params += [covered[0].since, covered[-1].until, *filter_params]
    keys = [(g, g) for g in query.group_by]
    if query.resolution is not None:
        keys.append((bucket_sql(query.resolution // timedelta(microseconds=1), "period_start"), "bucket_start"))
    values = ", ".join((*(n for n, _ in schema.ROLLUP_COUNTERS), *(n for n, _, _ in schema.ROLLUP_SKETCHES), *_SCALARS))
    key_select = "".join(f"{expr} AS {alias}, " for expr, alias in keys)
    return f"SELECT {key_select}{values} FROM ({' UNION ALL '.join(parts)}) seg", params, [a for _, a in keys]


def _match(left: str, right: str) -> str:
    required = schema.REQUESTS.required | {"period_start"}
    return " AND ".join(
        f"{left}.{k} = {right}.{k}" if k in required else f"{left}.{k} IS NOT DISTINCT FROM {right}.{k}"
        for k in _TABLE_KEYS
    )


def compact(con: duckdb.DuckDBPyConnection, rollup: schema.Rollup, lo: Any, hi: Any) -> int:
    """Merge the partial rows of each key with ``lo <= period_start < hi`` into one row.

    Runs inside the caller's transaction; returns how many rows went away. Keys with one row are
    left alone, so compacting an already compact range only costs the duplicate check.
    """
    table = rollup.name

    def in_range(alias: str) -> str:
        return f"{alias}.period_start >= ? AND {alias}.period_start < ?"

    keys = ", ".join(_TABLE_KEYS)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _rollup_dups AS SELECT {keys}, count(*) AS n FROM {table} "
        f"WHERE {in_range(table)} GROUP BY ALL HAVING count(*) > 1",
        [lo, hi],
    ).fetchall()
    dups = con.execute("SELECT count(*), coalesce(sum(n), 0)::BIGINT FROM _rollup_dups").fetchall()[0]
    if not dups[0]:
        return 0
    segment = f"(SELECT t.* FROM {table} t SEMI JOIN _rollup_dups d ON {_match('t', 'd')} WHERE {in_range('t')})"
    merged = merge_sql([rolled_part(segment, "true")], [(k, k) for k in _TABLE_KEYS])
    con.execute(f"CREATE OR REPLACE TEMP TABLE _rollup_merged AS {merged}", [lo, hi]).fetchall()
    con.execute(  # the range lets zone maps skip the table outside it
        f"DELETE FROM {table} USING _rollup_dups d WHERE {in_range(table)} AND {_match(table, 'd')}", [lo, hi]
    ).fetchall()
    maps = ", ".join(
        f"CASE WHEN {prefix}_k IS NULL THEN NULL ELSE MAP({prefix}_k, {prefix}_v) END"
        for _, prefix, _ in schema.ROLLUP_SKETCHES
    )
    plain = ", ".join((*_TABLE_KEYS, *(name for name, _ in schema.ROLLUP_COUNTERS)))
    con.execute(f"INSERT INTO {table} ({_COLUMNS}) SELECT {plain}, {maps} FROM _rollup_merged").fetchall()
    con.execute("DROP TABLE _rollup_dups").fetchall()
    con.execute("DROP TABLE _rollup_merged").fetchall()
    return int(dups[1]) - int(dups[0])
