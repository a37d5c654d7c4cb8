"""SQL text for the DuckDB backend, built from the shared schema (no I/O here).

Identifiers only ever come from ``schema`` (tables, columns, GROUPABLE); every value is a bound
parameter, so nothing a client sends becomes SQL text.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infersight.store import schema
from infersight.store.base import STAT_FIELDS, RequestFilter, StatsQuery, StoreError
from infersight.store.cursor import Cursor

REQUEST_COLUMNS = ", ".join(schema.REQUESTS.names)
NEWEST_FIRST = "ORDER BY started_at DESC, span_id DESC, trace_id DESC"
QUANTILES = (0.5, 0.95, 0.99)
EPOCH_ORIGIN = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"


def aware(value: datetime, what: str) -> datetime:
    """Refuse naive datetimes: a reader's local-time guess would silently shift windows."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what} must be a timezone-aware datetime")
    return value


def new_rows_sql(table: schema.Table, view: str, *, unstable: bool = False) -> str:
    """SELECT the batch view's rows whose key is neither repeated in the batch nor already stored.

    The anti-join is limited to ``time_column BETWEEN ? AND ?`` (the batch's min and max) so that
    zone maps skip every row group outside the batch's time span: the cost follows the batch, not
    the table. A redelivered row carries its original time, so it always falls in that window; a
    re-run (``Table.stable_time``) is found by the time it keeps. ``unstable``: the batch has rows
    without that time, whose re-runs only a probe of the stored rows also without it can find (a
    row-group filter on ``IS NULL``, which the statistics skip wherever the column has no NULL).
    """
    cols = ", ".join(table.names)
    keys = ", ".join(table.key)
    match = " AND ".join(
        f"t.{k} = b.{k}" if k in table.required else f"t.{k} IS NOT DISTINCT FROM b.{k}" for k in table.key
    )
    sql = (
        f"SELECT {cols} FROM (SELECT DISTINCT ON ({keys}) * FROM {view}) b "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table.name} t "
        f"WHERE t.{table.time_column} BETWEEN ? AND ? AND {match})"
    )
    if table.stable_time:  # a re-run's time moved: look in the window of the time it kept as well
        sql += f" AND NOT EXISTS (SELECT 1 FROM {table.name} t WHERE t.{table.stable_time} BETWEEN ? AND ? AND {match})"
        if unstable:
            st = table.stable_time
            sql += f" AND (b.{st} IS NOT NULL OR NOT EXISTS (SELECT 1 FROM {table.name} t WHERE t.{st} IS NULL AND {match}))"
    return sql


def probe_params(table: schema.Table, batch: pa.Table) -> list[Any]:
    """``new_rows_sql``'s parameters: the batch's span of the time column (then of ``stable_time``,
    or the same span again when the batch has no value there)."""
    params = _span(batch, table.time_column)
    if table.stable_time:
        stable = _span(batch, table.stable_time)
        params += stable if stable[0] is not None else params
    return params


def _span(batch: pa.Table, column: str) -> list[Any]:
    bounds = pc.min_max(batch.column(column))
    return [bounds["min"].as_py(), bounds["max"].as_py()]


def insert_dedup(table: schema.Table, view: str, *, unstable: bool = False) -> str:
    """INSERT the batch view's new rows (``new_rows_sql``); its parameters: ``probe_params``."""
    return f"INSERT INTO {table.name} ({', '.join(table.names)}) {new_rows_sql(table, view, unstable=unstable)}"


def request_where(flt: RequestFilter, cursor: Cursor | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause (with leading keyword, or empty) and its parameters for a request filter."""
    conds: list[str] = []
    params: list[Any] = []
    for column in ("tenant_id", "model_id", "use_case", "status_code"):
        value = getattr(flt, column)
        if value is not None:
            conds.append(f"{column} = ?")
            params.append(value)
    if flt.since is not None:
        conds.append("started_at >= ?")
        params.append(aware(flt.since, "since"))
    if flt.until is not None:
        conds.append("started_at < ?")
        params.append(aware(flt.until, "until"))
    if cursor is not None:
        # The plain "<=" lets zone maps prune; the rest is the strict keyset comparison.
        conds.append(
            "started_at <= ? AND (started_at < ? OR (started_at = ? AND "
            "(span_id < ? OR (span_id = ? AND trace_id < ?))))"
        )
        ts = cursor.started_at
        params += [ts, ts, ts, cursor.span_id, cursor.span_id, cursor.trace_id]
    return (f"WHERE {' AND '.join(conds)}" if conds else ""), params


def resolution_micros(resolution: timedelta) -> int:
    micros = resolution // timedelta(microseconds=1)
    if micros <= 0:
        raise StoreError("resolution must be positive")
    return micros


def stats_sql(query: StatsQuery) -> tuple[str, list[Any]]:
    """One pass over ``requests`` in [since, until): counts, sums and all quantiles per group.

    ``quantile_cont`` with a list sorts each group once for its three quantiles. Buckets are
    aligned to the Unix epoch, so an hour bucket always starts on the hour (UTC).
    """
    bad = [g for g in query.group_by if g not in schema.GROUPABLE]
    if bad or len(set(query.group_by)) != len(query.group_by):
        raise StoreError(f"group_by must be distinct columns of {list(schema.GROUPABLE)}; got {list(query.group_by)}")
    keys = list(query.group_by)
    select = list(keys)
    if query.resolution is not None:
        micros = resolution_micros(query.resolution)
        select.append(f"time_bucket(INTERVAL {micros} MICROSECONDS, started_at, {EPOCH_ORIGIN}) AS bucket_start")
        keys.append("bucket_start")
    q = "[" + ", ".join(str(x) for x in QUANTILES) + "]"
    select += [
        "count(*) AS requests",
        "count(*) FILTER (WHERE status_code >= 400 OR error_type IS NOT NULL) AS errors",
        f"quantile_cont(ttft_ms, {q}) AS ttft_ms_q",
        f"quantile_cont(itl_ms_mean, {q}) AS itl_ms_q",
        f"quantile_cont(total_ms, {q}) AS total_ms_q",
        "avg(output_tokens_per_s) AS output_tokens_per_s_mean",
        "coalesce(sum(prompt_tokens), 0)::BIGINT AS prompt_tokens_sum",
        "coalesce(sum(completion_tokens), 0)::BIGINT AS completion_tokens_sum",
    ]
    conds = ["started_at >= ?", "started_at < ?"]
    params: list[Any] = [aware(query.since, "since"), aware(query.until, "until")]
    for column in ("tenant_id", "model_id", "use_case"):
        value = getattr(query, column)
        if value is not None:
            conds.append(f"{column} = ?")
            params.append(value)
    group = f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
    return f"SELECT {', '.join(select)} FROM requests WHERE {' AND '.join(conds)}{group}", params


def stats_row(raw: dict[str, Any], group_by: tuple[str, ...], bucketed: bool) -> dict[str, Any]:
    """A result row in the contract's shape: group columns, bucket_start, then STAT_FIELDS."""
    out = {g: raw[g] for g in group_by}
    if bucketed:
        out["bucket_start"] = raw["bucket_start"]
    for metric, prefix in (("ttft_ms", "ttft_ms"), ("itl_ms", "itl_ms"), ("total_ms", "total_ms")):
        values = raw[f"{prefix}_q"] or [None] * len(QUANTILES)
        for quantile, value in zip(("p50", "p95", "p99"), values, strict=True):
            raw[f"{metric}_{quantile}"] = value
    for field in STAT_FIELDS:
        out[field] = raw[field]
    out["source"] = "raw"
    return out
