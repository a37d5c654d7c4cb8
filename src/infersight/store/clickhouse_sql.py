"""SQL text for the ClickHouse backend, built from the shared schema (no I/O here).

Identifiers only come from ``schema`` (tables, columns, GROUPABLE) and the validated database
name; every value travels as a ``{name:Type}`` query parameter, which chdb and a server parse the
same way, so nothing a client sends becomes SQL text.

Reads use ``FINAL``: ReplacingMergeTree collapses a key's duplicates only when parts merge, and a
duplicate can exist between merges if two writers race on the same batch. ``FINAL`` makes every
count, page and quantile exact under that race, at the cost of merging overlapping ranges at read.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.store import schema
from infersight.store.base import STAT_FIELDS, RequestFilter, StatsQuery, StoreError
from infersight.store.clickhouse_exec import quote_ident
from infersight.store.cursor import Cursor

TS_PARAM = "DateTime64(6, 'UTC')"
NEWEST_FIRST = "ORDER BY started_at DESC, span_id DESC, trace_id DESC"
QUANTILES = (0.5, 0.95, 0.99)
_FILTER_TYPES = {"tenant_id": "String", "model_id": "String", "use_case": "String", "status_code": "Int64"}


def aware(value: datetime, what: str) -> datetime:
    """Refuse naive datetimes: a reader's local-time guess would silently shift windows."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what} must be a timezone-aware datetime")
    return value


def ts_param(value: datetime, what: str = "time") -> str:
    """A time as parameter text in UTC with microseconds (clickhouse-connect would drop them)."""
    return aware(value, what).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def columns(table: schema.Table) -> str:
    return ", ".join(quote_ident(n) for n in table.names)


def table_ref(database: str, table: str) -> str:
    return f"{quote_ident(database)}.{quote_ident(table)}"


def request_where(flt: RequestFilter, cursor: Cursor | None = None) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (with leading keyword, or empty) and its parameters for a request filter."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    for column, ch_type in _FILTER_TYPES.items():
        value = getattr(flt, column)
        if value is not None:
            conds.append(f"{column} = {{{column}:{ch_type}}}")
            params[column] = value
    if flt.since is not None:
        conds.append(f"started_at >= {{since:{TS_PARAM}}}")
        params["since"] = ts_param(flt.since, "since")
    if flt.until is not None:
        conds.append(f"started_at < {{until:{TS_PARAM}}}")
        params["until"] = ts_param(flt.until, "until")
    if cursor is not None:
        # The plain "<=" prunes by the sorting key; the rest is the strict keyset comparison.
        conds.append(
            f"started_at <= {{c_ts:{TS_PARAM}}} AND (started_at < {{c_ts:{TS_PARAM}}} OR "
            "(started_at = {c_ts:DateTime64(6, 'UTC')} AND (span_id < {c_span:String} OR "
            "(span_id = {c_span:String} AND trace_id < {c_trace:String}))))"
        )
        params.update(c_ts=ts_param(cursor.started_at), c_span=cursor.span_id, c_trace=cursor.trace_id)
    return (f"WHERE {' AND '.join(conds)}" if conds else ""), params


def resolution_micros(resolution: timedelta) -> int:
    micros = resolution // timedelta(microseconds=1)
    if micros <= 0:
        raise StoreError("resolution must be positive")
    return micros


def stats_sql(database: str, query: StatsQuery) -> tuple[str, dict[str, Any]]:
    """One pass over ``requests`` in [since, until): counts, sums and all quantiles per group.

    ``quantilesExactInclusive`` is the R-7 estimator (linear interpolation between order
    statistics), the same as numpy's default and DuckDB's ``quantile_cont``; one sort per group
    serves all three quantiles. Buckets are aligned to the Unix epoch, like the DuckDB backend,
    so an hour bucket always starts on the hour (UTC).
    """
    bad = [g for g in query.group_by if g not in schema.GROUPABLE]
    if bad or len(set(query.group_by)) != len(query.group_by):
        raise StoreError(f"group_by must be distinct columns of {list(schema.GROUPABLE)}; got {list(query.group_by)}")
    keys = list(query.group_by)
    select = list(keys)
    params: dict[str, Any] = {"since": ts_param(query.since, "since"), "until": ts_param(query.until, "until")}
    if query.resolution is not None:
        params["res"] = resolution_micros(query.resolution)
        select.append(
            "fromUnixTimestamp64Micro(intDiv(toUnixTimestamp64Micro(started_at), {res:Int64}) * {res:Int64}, 'UTC')"
            " AS bucket_start"
        )
        keys.append("bucket_start")
    qs = ", ".join(str(q) for q in QUANTILES)
    select += [
        "count() AS requests",
        "countIf(status_code >= 400 OR error_type IS NOT NULL) AS errors",
        f"quantilesExactInclusive({qs})(ttft_ms) AS ttft_ms_q",
        f"quantilesExactInclusive({qs})(itl_ms_mean) AS itl_ms_q",
        f"quantilesExactInclusive({qs})(total_ms) AS total_ms_q",
        "avg(output_tokens_per_s) AS output_tokens_per_s_mean",
        "toInt64(ifNull(sum(prompt_tokens), 0)) AS prompt_tokens_sum",
        "toInt64(ifNull(sum(completion_tokens), 0)) AS completion_tokens_sum",
    ]
    conds = [f"started_at >= {{since:{TS_PARAM}}}", f"started_at < {{until:{TS_PARAM}}}"]
    for column in ("tenant_id", "model_id", "use_case"):
        value = getattr(query, column)
        if value is not None:
            conds.append(f"{column} = {{{column}:String}}")
            params[column] = value
    group = f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}" if keys else ""
    sql = f"SELECT {', '.join(select)} FROM {table_ref(database, 'requests')} FINAL WHERE {' AND '.join(conds)}{group}"
    return sql, params


def _nan_to_none(value: Any) -> Any:
    # quantiles of a group whose values are all NULL come back as NaN; the contract says None.
    return None if isinstance(value, float) and math.isnan(value) else value


def stats_row(raw: dict[str, Any], group_by: tuple[str, ...], bucketed: bool) -> dict[str, Any]:
    """A result row in the contract's shape: group columns, bucket_start, then STAT_FIELDS."""
    out = {g: raw[g] for g in group_by}
    if bucketed:
        out["bucket_start"] = raw["bucket_start"]
    for metric in ("ttft_ms", "itl_ms", "total_ms"):
        values = raw[f"{metric}_q"] or [None] * len(QUANTILES)
        for name, value in zip(("p50", "p95", "p99"), values, strict=True):
            raw[f"{metric}_{name}"] = _nan_to_none(value)
    for field in STAT_FIELDS:
        out[field] = _nan_to_none(raw[field])
    out["source"] = "raw"
    return out


def existing_keys_sql(database: str, table: schema.Table, scope: str, *, unstable: bool = False) -> str:
    """Keys already stored in the batch's time window and scope values: the idempotency probe.

    Parameters: ``lo``/``hi`` (the batch's span of the time column), ``scopes``, and for a table
    with ``stable_time`` ``stable_lo``/``stable_hi`` (the span of that column). ``unstable``: the
    batch has rows without that time (hand-written eval results), whose re-runs only the stored
    rows also without it, of the same traces (``unstable_traces``), can show.
    """
    keys = ", ".join(quote_ident(k) for k in table.key)
    tc = quote_ident(table.time_column)
    window = f"{tc} >= {{lo:{TS_PARAM}}} AND {tc} <= {{hi:{TS_PARAM}}}"
    if table.stable_time:  # a re-run's time moved: look in the window of the time it kept as well
        st = quote_ident(table.stable_time)
        stable = f"({st} >= {{stable_lo:{TS_PARAM}}} AND {st} <= {{stable_hi:{TS_PARAM}}})"
        if unstable:
            stable += f" OR ({st} IS NULL AND trace_id IN {{unstable_traces:Array(String)}})"
        window = f"(({window}) OR {stable})"
    return (
        f"SELECT DISTINCT {keys} FROM {table_ref(database, table.name)} "
        f"WHERE {window} AND {quote_ident(scope)} IN {{scopes:Array(String)}}"
    )
