"""Hourly correlation rollups: the as-of join of ``telemetry_sql`` done once per closed hour, kept as sketches.

Why: ``GET /api/v1/correlation`` over 30 days joins tens of millions of requests to their samples at
read time (seconds). The join of one hour never changes once the hour's requests and samples are in,
so a background step (``build_due``, run by the store's writer) stores, per hour, metric, tenant,
model, instance and load bucket, the request and error counts and DDSketches of TTFT and ITL
(``sketch.ALPHA``: quantiles within 1% relative). A read then merges a few thousand rows.

**The same join.** A period is built with ``telemetry_sql.joined_sql`` over ``[hour, hour + 1 h)`` at
the default ``max_staleness``, so its rows are what the exact read would count. Rows with
``tenant_id = '*'`` hold all tenants (admin reads, and the check below); the others one tenant each.

**When rollups answer** (``read``): windows longer than ``RAW_MAX_WINDOW`` at the default staleness.
The hours whose stored count equals the requests counted for that hour by the request rollups
(``hourly_counts``) come from here; everything else (the window's unaligned edges, hours not built
yet or built before late requests arrived) is joined from the raw tables, as sketches, and merged.
So a late request is never missed: its hour is read raw until ``build_due`` rebuilds it.

**Building.** Hours are built once they ended ``SETTLE`` ago (samples and requests of the hour have
arrived), newest first, a few per call, within ``LOOKBACK`` (older hours whose raw rows may be gone
are left as they are).

**Late samples** (a collector's spool replayed after an outage) cannot be caught by the count check:
they change which sample a request matches, not how many requests an hour has. So a write of samples
deletes the built hours they may change (``invalidated_periods``: the sample's hour, and the next one
when the sample is the as-of match of its first requests); those hours are read raw, exactly, until
the writer finds them due (``due_periods``: no stored count) and builds them again, newest first.
Samples of hours no builder can have built yet, the normal case, delete nothing. The stores pass
the later of the wall clock and the newest ``now`` they built at; DuckDB inserts and deletes in one
transaction, ClickHouse inserts first and retries a failed delete at its next write or build. Hours
older than ``LOOKBACK`` are not rebuilt, so they are not invalidated either: samples that late do not
move them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.store.base import RetentionPolicy
from infersight.store.sketch import quantiles_from_bins
from infersight.store.telemetry_sql import (
    CORRELATION_METRICS,
    NO_SAMPLE,
    CorrelationQuery,
    Reader,
    _checked,
    _Sql,
    joined_sql,
    unlabelled_sql,
)

TABLE = "correlation_rollups_1h"
PERIOD = timedelta(hours=1)
ALL_TENANTS = "*"  # not a valid tenant id (config: [A-Za-z0-9_.-])
SETTLE = timedelta(minutes=10)
LOOKBACK = timedelta(days=3)
RAW_MAX_WINDOW = timedelta(hours=6)
DEFAULT_STALENESS: timedelta = CorrelationQuery.__dataclass_fields__["max_staleness"].default
METRICS = tuple(CORRELATION_METRICS)
MARKER = METRICS[-1]  # built last: its count says the whole period is in
COLUMNS = ("period_start", "metric", "tenant_id", "model_id", "instance", "bucket", "requests", "errors",
           "ttft_ms_sketch", "itl_ms_sketch")
SOURCE = "rollup_1h"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CLOCK_SKEW = timedelta(minutes=1)  # another writer's clock may run this far ahead of ours
Counts = Callable[[datetime, datetime], dict[datetime, int]]
"""Requests per hour start in ``[lo, hi)``, from the request rollups: what a complete period holds."""


def duckdb_create_sql() -> str:
    return (f"CREATE TABLE IF NOT EXISTS {TABLE} (period_start TIMESTAMPTZ NOT NULL, metric VARCHAR NOT NULL, "
            "tenant_id VARCHAR NOT NULL, model_id VARCHAR NOT NULL, instance VARCHAR NOT NULL, bucket SMALLINT NOT NULL, "
            "requests BIGINT NOT NULL, errors BIGINT NOT NULL, ttft_ms_sketch MAP(SMALLINT, BIGINT), "
            "itl_ms_sketch MAP(SMALLINT, BIGINT))")


def clickhouse_create_sql(database: str, policy: RetentionPolicy) -> str:
    """ReplacingMergeTree: a period built twice (two ingest workers, or a rebuild after late requests,
    which only adds) keeps one row per key; reads use FINAL. Late samples delete the period first
    (lightweight DELETE), as they may move requests out of a key."""
    from infersight.store.clickhouse_sql import table_ref

    return (f"CREATE TABLE IF NOT EXISTS {table_ref(database, TABLE)} (period_start DateTime64(6, 'UTC'), "
            "metric LowCardinality(String), tenant_id LowCardinality(String), model_id LowCardinality(String), "
            "instance LowCardinality(String), bucket Int16, requests UInt64, errors UInt64, "
            "ttft_ms_sketch Map(Int16, UInt64), itl_ms_sketch Map(Int16, UInt64), built_at DateTime64(6, 'UTC') "
            "DEFAULT now64(6)) ENGINE = ReplacingMergeTree(built_at) "
            "ORDER BY (metric, tenant_id, period_start, model_id, instance, bucket) "
            f"TTL {clickhouse_ttl_expr(policy)} DELETE")


def clickhouse_ttl_expr(policy: RetentionPolicy) -> str:
    return f"toDateTime(period_start) + toIntervalDay({int(policy.rollups_days)})"


def _floor(t: datetime) -> datetime:
    return EPOCH + (t - EPOCH) // PERIOD * PERIOD


def _ceil(t: datetime) -> datetime:
    f = _floor(t)
    return f if f == t else f + PERIOD


def _sketch(b: _Sql, column: str) -> str:
    if b.ch:
        from infersight.store.clickhouse_rollup import index_sql as ch_index

        return (f"sumMapIf(map({ch_index(column)}, toUInt64(1)), isNotNull({column}) "
                f"AND NOT isNaN(assumeNotNull({column})))")
    from infersight.store.duckdb_rollup import index_sql

    return f"histogram({index_sql(column)})::MAP(SMALLINT, BIGINT)"


def _grouped(b: _Sql, q: CorrelationQuery, unlabelled: tuple[str, ...], keys: tuple[str, ...],
             all_tenants: bool) -> str:
    """Requests, errors and both sketches of the join, grouped by ``keys`` (+ bucket); with
    ``all_tenants`` a second set of rows with ``tenant_id = '*'``."""
    ctes, joined = joined_sql(b, q, unlabelled)
    aggs = (f"count(*) AS requests, sum(failed) AS errors, {_sketch(b, 'ttft_ms')} AS ttft_ms_sketch, "
            f"{_sketch(b, 'itl_ms_mean')} AS itl_ms_sketch")
    group = ", ".join((*keys, "bucket"))
    sql = f"WITH {ctes}, j AS ({joined}) SELECT {group}, {aggs} FROM j GROUP BY {group}"
    if all_tenants:
        others = ", ".join(k if k != "tenant_id" else f"'{ALL_TENANTS}' AS tenant_id" for k in keys)
        rest = ", ".join(k for k in (*keys, "bucket") if k != "tenant_id")
        sql += f" UNION ALL SELECT {others}, bucket, {aggs} FROM j GROUP BY {rest}"
    return sql


def _settings(b: _Sql) -> str:
    return " SETTINGS join_use_nulls = 1" if b.ch else ""  # an unmatched request reads NULL, not 1970-01-01


def _unlabelled(reader: Reader, q: CorrelationQuery) -> tuple[str, ...]:
    return tuple(sorted(str(row["instance"]) for row in reader.run(*unlabelled_sql(reader, q))))


# -- building ---------------------------------------------------------------------------------------


def build_statements(reader: Reader, period: datetime, table_ref: str) -> list[tuple[str, dict[str, Any]]]:
    """INSERT ... SELECT statements that build ``period`` (every metric, ``MARKER`` last)."""
    out = []
    for metric in METRICS:
        q = CorrelationQuery(period, period + PERIOD, by=metric)
        b = _Sql(reader)
        select = _grouped(b, q, _unlabelled(reader, q), ("tenant_id", "model_id", "instance"), all_tenants=True)
        start = b.p("period", period)
        cols = ", ".join(COLUMNS)
        out.append((f"INSERT INTO {table_ref} ({cols}) SELECT {start} AS period_start, {b.p('metric_name', metric)} "
                    f"AS metric, tenant_id, model_id, instance, bucket, requests, errors, ttft_ms_sketch, "
                    f"itl_ms_sketch FROM ({select}) AS built{_settings(b)}", b.params))
    return out


def stored_counts(reader: Reader, lo: datetime, hi: datetime, metric: str = MARKER) -> dict[datetime, int]:
    """Requests per built period in ``[lo, hi)`` (all tenants), as stored for ``metric``."""
    b = _Sql(reader)
    rows = reader.run(f"SELECT period_start, sum(requests) AS n FROM {b.table(TABLE)} WHERE metric = "
                      f"{b.p('metric', metric)} AND tenant_id = '{ALL_TENANTS}' AND period_start >= {b.p('lo', lo)} "
                      f"AND period_start < {b.p('hi', hi)} GROUP BY period_start", b.params)
    return {aware_utc(r["period_start"]): int(r["n"]) for r in rows}


def due_periods(reader: Reader, counts: Counts, now: datetime, lookback: timedelta = LOOKBACK,
                settle: timedelta = SETTLE) -> list[datetime]:
    """Closed hours within ``lookback`` whose stored count differs from their requests, newest first."""
    hi = _floor(now - settle)
    lo = _floor(now - lookback)
    if lo >= hi:
        return []
    want = counts(lo, hi)
    have = stored_counts(reader, lo, hi)
    return sorted((p for p, n in want.items() if n and have.get(p) != n), reverse=True)


def invalidated_periods(times: Iterable[datetime], now: datetime, staleness: timedelta = DEFAULT_STALENESS,
                        settle: timedelta = SETTLE, lookback: timedelta = LOOKBACK) -> list[datetime]:
    """The hours, oldest first, whose rollups samples at ``times`` may change and that may already be built.

    A build of hour ``h`` joins the samples of ``[h - staleness, h + 1 h)``: a sample at ``t`` can be the
    as-of match of requests up to ``staleness`` later, so it moves its own hour and, when ``t + staleness``
    reaches the next hour, that one too. Every metric counts, not only the ``by`` ones: a labelled sample
    also says which model an instance's unlabelled GPU samples belong to. Only hours a builder can have
    built by ``now`` are returned (ended ``settle`` ago, ``CLOCK_SKEW`` early for a writer whose clock
    runs ahead), so samples of the current hour, the normal case, give none; and only hours within
    ``lookback``, the ones ``due_periods`` offers for building again (see the module docstring).
    """
    hi = _floor(now - settle + CLOCK_SKEW)
    lo = _floor(now - lookback)
    out: set[datetime] = set()
    for t in times:
        if t >= hi:  # neither its hour nor the next can be built yet
            continue
        for period in (_floor(t), _floor(t + staleness)):
            if lo <= period < hi:
                out.add(period)
    return sorted(out)


# -- reading ----------------------------------------------------------------------------------------


def aware_utc(value: datetime) -> datetime:
    """A period start as an aware UTC datetime (engines return TIMESTAMPTZ with or without a zone)."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _runs(periods: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive hours as ``[start, end)`` ranges."""
    out: list[list[datetime]] = []
    for p in sorted(periods):
        if out and out[-1][1] == p:
            out[-1][1] = p + PERIOD
        else:
            out.append([p, p + PERIOD])
    return [(a, b) for a, b in out]


def _gaps(lo: datetime, hi: datetime, covered: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out, at = [], lo
    for a, b in covered:
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < hi:
        out.append((at, hi))
    return out


def _as_dict(value: Any) -> dict[int, int]:
    if not value:
        return {}
    items = value.items() if isinstance(value, dict) else value
    return {int(k): int(v) for k, v in items}


def _merge(into: dict[int, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    for row in rows:
        acc = into.setdefault(int(row["bucket"]), {"requests": 0, "errors": 0, "ttft": {}, "itl": {}})
        acc["requests"] += int(row["requests"] or 0)
        acc["errors"] += int(row["errors"] or 0)
        for name, column in (("ttft", "ttft_ms_sketch"), ("itl", "itl_ms_sketch")):
            for k, v in _as_dict(row[column]).items():
                acc[name][k] = acc[name].get(k, 0) + v


def _stored(reader: Reader, q: CorrelationQuery, runs: list[tuple[datetime, datetime]]) -> list[dict[str, Any]]:
    """The stored rows of ``runs``, merged per bucket in the engine."""
    b = _Sql(reader)
    conds = [f"metric = {b.p('metric', q.by)}", f"tenant_id = {b.p('tenant', q.tenant_id or ALL_TENANTS)}"]
    if q.model_id:
        conds.append(f"model_id = {b.p('model', q.model_id)}")
    if q.instance:
        conds.append(f"instance = {b.p('instance', q.instance)}")
    spans = " OR ".join(f"(period_start >= {b.p(f'a{i}', a)} AND period_start < {b.p(f'b{i}', z)})"
                        for i, (a, z) in enumerate(runs))
    where = f"{' AND '.join(conds)} AND ({spans})"
    if b.ch:
        return reader.run(f"SELECT bucket, sum(requests) AS requests, sum(errors) AS errors, sumMap(ttft_ms_sketch) "
                          f"AS ttft_ms_sketch, sumMap(itl_ms_sketch) AS itl_ms_sketch FROM {b.table(TABLE)} "
                          f"WHERE {where} GROUP BY bucket", b.params)
    # DuckDB has no sumMap: unnest the entries, sum per (bucket, index), list them again
    merged = {}
    for column in ("ttft_ms_sketch", "itl_ms_sketch"):
        merged[column] = reader.run(
            f"SELECT bucket, list(k ORDER BY k) AS ks, list(c ORDER BY k) AS cs FROM (SELECT bucket, k, sum(c) AS c "
            f"FROM (SELECT bucket, unnest(map_keys({column})) AS k, unnest(map_values({column})) AS c FROM "
            f"{TABLE} WHERE {where}) GROUP BY bucket, k) GROUP BY bucket", b.params)
    totals = reader.run(f"SELECT bucket, sum(requests) AS requests, sum(errors) AS errors FROM {TABLE} WHERE {where} "
                        "GROUP BY bucket", b.params)
    maps = {c: {int(r["bucket"]): list(zip(r["ks"], r["cs"], strict=True)) for r in rows} for c, rows in merged.items()}
    return [{**t, **{c: maps[c].get(int(t["bucket"]), []) for c in maps}} for t in totals]


def _raw(reader: Reader, q: CorrelationQuery, lo: datetime, hi: datetime) -> list[dict[str, Any]]:
    part = CorrelationQuery(lo, hi, by=q.by, model_id=q.model_id, instance=q.instance, tenant_id=q.tenant_id,
                            max_staleness=q.max_staleness)
    b = _Sql(reader)
    return reader.run(_grouped(b, part, _unlabelled(reader, part), (), all_tenants=False) + _settings(b), b.params)


def read(reader: Reader, q: CorrelationQuery, counts: Counts) -> list[dict[str, Any]] | None:
    """Per-bucket rows from the rollups plus raw edges, or None when the exact raw read should answer."""
    buckets = _checked(q)
    if q.until - q.since <= RAW_MAX_WINDOW or q.max_staleness != DEFAULT_STALENESS:
        return None
    lo, hi = _ceil(q.since), _floor(q.until)
    if lo >= hi:
        return None
    want = counts(lo, hi)
    have = stored_counts(reader, lo, hi, q.by)
    good = [p for p, n in have.items() if want.get(p, 0) == n]
    if not good:
        return None
    runs = _runs(good)
    acc: dict[int, dict[str, Any]] = {}
    _merge(acc, _stored(reader, q, runs))
    for a, z in _gaps(q.since, q.until, runs):
        _merge(acc, _raw(reader, q, a, z))
    total = sum(v["requests"] for v in acc.values())
    out = []
    for i, (label, blo, bhi) in [*((i, (bk.label, bk.lo, bk.hi)) for i, bk in enumerate(buckets)),
                                 (-1, (NO_SAMPLE, None, None))]:
        got = acc.get(i, {"requests": 0, "errors": 0, "ttft": {}, "itl": {}})
        n = got["requests"]
        ttft = quantiles_from_bins(list(got["ttft"]), list(got["ttft"].values()), (0.5, 0.99))
        itl = quantiles_from_bins(list(got["itl"]), list(got["itl"].values()), (0.5, 0.99))
        out.append({"bucket": label, "lo": blo, "hi": bhi, "requests": n, "share": n / total if total else 0.0,
                    "errors": got["errors"], "ttft_ms_p50": ttft[0], "ttft_ms_p99": ttft[1],
                    "itl_ms_p50": itl[0], "itl_ms_p99": itl[1], "source": SOURCE})
    return out
