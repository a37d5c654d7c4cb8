"""Telemetry reads shared by both backends: samples, latency-by-load correlation, diagnosis inputs.

The SQL text is the same for DuckDB and ClickHouse (``quality_sql`` does the same for eval
results); what differs goes through ``_Sql``: placeholders (``$name`` for DuckDB, typed
``{name:Type}`` for ClickHouse), ``FINAL`` on ClickHouse tables, the epoch-microsecond and exact
quantile functions. Both ``ASOF LEFT JOIN`` syntaxes agree: equality keys, then one ``>=``.

**Which samples belong to a model.** A sample labelled with the model does; so does an unlabelled
one (a GPU collector that does not know the model) from an instance that reported labelled samples
of the model in the window: the rule of ``Store.telemetry_around``. With ``instance``, requests are
those that instance served (``requests.instance``, recorded since schema v7).

**The as-of join** (``correlation``): each request is paired with the latest sample of the metric,
for its model and the instance that served it, at or before its ``started_at``. A request without a
recorded instance, or whose instance has no samples of its model in the request's hour, joins the
model-wide series: samples
of one model at the same ``ts`` (several GPUs, several replicas scraped together) combined with ``max``,
the most loaded one. Samples of one instance at the same ``ts`` (its GPUs) are combined with ``max`` too. A request
whose latest sample is older than ``max_staleness``, or that has none, goes to the ``no_sample``
bucket: counted, never dropped. Quantiles are exact (R-7, as ``stats`` on raw rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from infersight.store.base import InvalidQuery

Dialect = Literal["duckdb", "clickhouse"]
TS_TYPE = "DateTime64(6, 'UTC')"
NO_SAMPLE = "no_sample"
MAX_METRICS = 50


@dataclass(frozen=True)
class Bucket:
    label: str
    lo: float  # inclusive
    hi: float | None  # exclusive; None: open-ended


def _buckets(edges: tuple[float, ...], labels: tuple[str, ...], open_end: bool) -> tuple[Bucket, ...]:
    los = edges if open_end else edges[:-1]
    his: list[float | None] = [float(e) for e in edges[1:]]
    if open_end:
        his.append(None)
    return tuple(Bucket(label, float(lo), hi) for label, lo, hi in zip(labels, los, his, strict=True))


FRACTION_BUCKETS = _buckets((0.0, 0.5, 0.7, 0.85, 0.95, 1.0), ("0-0.5", "0.5-0.7", "0.7-0.85", "0.85-0.95", "0.95-1"),
                            open_end=False)
"""For 0-1 metrics: coarse where nothing happens, fine near saturation, where latency turns. A value
below 0 falls in the first bucket, one at or above 0.95 (1.0 and float noise above it) in the last."""
QUEUE_BUCKETS = _buckets((0, 1, 2, 4, 8, 16, 32), ("0", "1", "2-3", "4-7", "8-15", "16-31", "32+"), open_end=True)
"""For request counts: fixed powers of two, so buckets mean the same on every model and every day
(quantile-based edges would move with the data and could not be compared across queries)."""
CORRELATION_METRICS: dict[str, tuple[Bucket, ...]] = {
    "gpu_memory_utilization": FRACTION_BUCKETS,
    "kv_cache_usage": FRACTION_BUCKETS,
    "gpu_utilization": FRACTION_BUCKETS,
    "gpu_sm_active": FRACTION_BUCKETS,
    "requests_waiting": QUEUE_BUCKETS,
    "requests_running": QUEUE_BUCKETS,
}
CORRELATION_FIELDS = ("bucket", "lo", "hi", "requests", "share", "errors",
                      "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "source")
"""Each correlation row. ``share`` is the bucket's part of all requests; ITL is of each request's
``itl_ms_mean``, as in stats. Quantiles are None where no request of the bucket has the value.
``source``: ``raw`` (quantiles exact) or ``rollup_1h`` (``correlation_rollup``; within 1%)."""
DIAGNOSIS_METRICS = ("gpu_memory_utilization", "gpu_utilization", "kv_cache_usage", "prefix_cache_hit_rate")


@dataclass(frozen=True)
class TelemetryQuery:
    """Samples in [since, until), oldest first. ``tenant_id`` (tenant keys) limits them to the models
    the tenant's requests used in the window, plus unlabelled samples of instances serving those."""

    since: datetime
    until: datetime
    metrics: tuple[str, ...] = ()  # empty: all
    instance: str | None = None
    model_id: str | None = None
    tenant_id: str | None = None
    limit: int = 10_000


@dataclass(frozen=True)
class CorrelationQuery:
    since: datetime
    until: datetime
    by: str  # one of CORRELATION_METRICS
    model_id: str | None = None
    instance: str | None = None
    tenant_id: str | None = None  # scope: only this tenant's requests
    max_staleness: timedelta = timedelta(seconds=20)  # 2 x the 10 s scrape interval


@dataclass(frozen=True)
class DiagnosisQuery:
    since: datetime
    until: datetime
    model_id: str | None = None
    instance: str | None = None
    tenant_id: str | None = None


@dataclass(frozen=True)
class DiagnosisInputs:
    """What the diagnosis rules read (``telemetry.diagnosis``), gathered in three small queries."""

    requests: int  # requests with a TTFT (streamed ones): what the quantiles are over, so what min_requests counts
    ttft_ms_p50: float | None
    ttft_ms_p99: float | None
    hashed_requests: int  # requests with a prompt_hash
    repeated_requests: int  # of those, requests whose prompt_hash occurs more than once in the window
    metric_means: dict[str, float] = field(default_factory=dict)  # DIAGNOSIS_METRICS with samples
    metric_samples: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reader:
    """How one backend runs shared SQL: its dialect, its query function, its table references."""

    dialect: Dialect
    run: Callable[[str, dict[str, Any]], list[dict[str, Any]]]
    table: Callable[[str], str]  # table name -> reference (ClickHouse: `db`.`t` FINAL)


class _Sql:
    """Placeholders and parameters of one statement, in one dialect."""

    def __init__(self, reader: Reader) -> None:
        self.ch = reader.dialect == "clickhouse"
        self.table = reader.table
        self.params: dict[str, Any] = {}

    def p(self, name: str, value: Any, ch_type: str = "String") -> str:
        if isinstance(value, datetime):
            value, ch_type = _time(value, name, self.ch), TS_TYPE
        self.params[name] = value
        return f"{{{name}:{ch_type}}}" if self.ch else f"${name}"

    def micros(self, expr: str) -> str:
        return f"toUnixTimestamp64Micro({expr})" if self.ch else f"epoch_us({expr})"

    def quantiles(self, expr: str) -> str:  # p50 and p99, R-7 in both engines
        return f"quantilesExactInclusive(0.5, 0.99)({expr})" if self.ch else f"quantile_cont({expr}, [0.5, 0.99])"

    def hour(self, micros: str) -> str:  # the epoch hour of a time in epoch microseconds (>= 0)
        return f"intDiv({micros}, 3600000000)" if self.ch else f"(({micros}) // 3600000000)"

    def not_null(self, expr: str) -> str:  # ClickHouse join keys must not be Nullable
        return f"assumeNotNull({expr})" if self.ch else expr


def _time(value: datetime, name: str, ch: bool) -> Any:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidQuery(f"{name} must be a timezone-aware datetime")
    if not ch:
        return value
    from infersight.store.clickhouse_sql import ts_param

    return ts_param(value, name)


def _check_window(since: datetime, until: datetime) -> None:
    for name, value in (("since", since), ("until", until)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidQuery(f"{name} must be a timezone-aware datetime")
    if since >= until:
        raise InvalidQuery("since must be before until")


def _models_of(b: _Sql, since: datetime, until: datetime, tenant: str | None, model: str | None) -> str | None:
    """The set of model ids samples are limited to, as SQL (``(...)``), or None for any model: the
    model asked for, narrowed for a tenant to the models its requests used in the window."""
    if tenant is None:
        return f"({b.p('model', model)})" if model else None
    sql = (f"SELECT DISTINCT model_id FROM {b.table('requests')} WHERE tenant_id = {b.p('tenant', tenant)} "
           f"AND started_at >= {b.p('since', since)} AND started_at < {b.p('until', until)}")
    if model:
        sql += f" AND model_id = {b.p('model', model)}"
    return f"({sql})"


def _sample_scope(b: _Sql, since: datetime, until: datetime, instance: str | None, model: str | None,
                  tenant: str | None) -> list[str]:
    window = f"ts >= {b.p('since', since)} AND ts < {b.p('until', until)}"
    conds = [window]
    if instance:
        conds.append(f"instance = {b.p('instance', instance)}")
    models = _models_of(b, since, until, tenant, model)
    if models is not None:
        conds.append(f"(model_id IN {models} OR (model_id IS NULL AND instance IN (SELECT instance FROM "
                     f"{b.table('telemetry')} WHERE {window} AND model_id IN {models})))")
    return conds


def _request_scope(b: _Sql, since: datetime, until: datetime, instance: str | None, model: str | None,
                   tenant: str | None) -> list[str]:
    conds = [f"started_at >= {b.p('since', since)}", f"started_at < {b.p('until', until)}"]
    if tenant:
        conds.append(f"tenant_id = {b.p('tenant', tenant)}")
    if model:
        conds.append(f"model_id = {b.p('model', model)}")
    if instance:  # the requests that instance served (recorded since schema v7)
        conds.append(f"instance = {b.p('instance', instance)}")
    return conds


# -- samples ----------------------------------------------------------------------------------------

SAMPLE_COLUMNS = ("ts", "source", "instance", "gpu", "model_id", "metric", "value")


def telemetry(reader: Reader, q: TelemetryQuery) -> tuple[list[dict[str, Any]], bool]:
    """Samples oldest first (then source, instance, gpu, metric), at most ``limit``; and whether
    more matched (the caller narrows the window or the metrics)."""
    _check_window(q.since, q.until)
    if q.limit < 1:
        raise InvalidQuery("limit must be at least 1")
    if len(q.metrics) > MAX_METRICS:
        raise InvalidQuery(f"at most {MAX_METRICS} metrics at once")
    b = _Sql(reader)
    conds = _sample_scope(b, q.since, q.until, q.instance, q.model_id, q.tenant_id)
    if q.metrics:
        conds.append(f"metric IN ({', '.join(b.p(f'm{i}', m) for i, m in enumerate(q.metrics))})")
    sql = (f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM {b.table('telemetry')} WHERE {' AND '.join(conds)} "
           f"ORDER BY ts, source, instance, gpu, metric LIMIT {int(q.limit) + 1}")
    rows = reader.run(sql, b.params)
    return rows[: q.limit], len(rows) > q.limit


# -- correlation ------------------------------------------------------------------------------------


def _checked(q: CorrelationQuery) -> tuple[Bucket, ...]:
    _check_window(q.since, q.until)
    buckets = CORRELATION_METRICS.get(q.by)
    if buckets is None:
        raise InvalidQuery(f"by must be one of {sorted(CORRELATION_METRICS)}, not {q.by!r}")
    if q.max_staleness <= timedelta(0):
        raise InvalidQuery("max_staleness must be positive")
    return buckets


HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _hour_floor(t: datetime) -> datetime:
    return _EPOCH + (t - _EPOCH) // HOUR * HOUR


def _samples_span(q: CorrelationQuery) -> tuple[datetime, datetime]:
    """The samples the join reads: from ``max_staleness`` before the first request's hour to the end of
    the last one's. Whether a request's instance "has samples" is decided per hour (``joined_sql``), so
    the whole hours are read; samples outside ``[since - max_staleness, until)`` never match a request
    (too old, or after it), they only make that decision the same for every window."""
    end = _hour_floor(q.until)
    return _hour_floor(q.since) - q.max_staleness, end if end == q.until else end + HOUR


def unlabelled_sql(reader: Reader, q: CorrelationQuery) -> tuple[str, dict[str, Any]]:
    """Instances with samples of the metric that carry no model (GPU collectors). Asked first, because
    mapping them to models reads every labelled sample of the window: skipped when there are none,
    the usual case for engine metrics, and limited to these instances otherwise."""
    _checked(q)
    b = _Sql(reader)
    lo, hi = _samples_span(q)
    sql = (f"SELECT DISTINCT instance FROM {b.table('telemetry')} WHERE metric = {b.p('metric', q.by)} "
           f"AND ts >= {b.p('lo', lo)} AND ts < {b.p('hi', hi)} AND model_id IS NULL")
    return sql, b.params  # every instance, with ``instance=`` too: the model-wide series spans them all


def joined_sql(b: _Sql, q: CorrelationQuery, unlabelled: tuple[str, ...] = ()) -> tuple[str, str]:
    """The as-of join as ``(WITH-list, SELECT)``: one row per request of ``q``'s scope with its
    ``bucket`` (-1: no sample), ``tenant_id``, ``model_id``, ``instance`` ('' when not recorded),
    ``ttft_ms``, ``itl_ms_mean`` and ``failed``. Shared by the exact read and the rollup build.

    Join keys: the request's model, and its instance when it recorded one that has samples of this
    model in the request's hour (UTC) or the ``max_staleness`` before it (the GPU that served it);
    otherwise ('' key) the model-wide series, the most loaded replica at each instant. Per hour, not per
    query window: the hourly rollups are built with this SQL one hour at a time, so a request must get
    the same answer from any window (a whole-window rule sent an instance's requests during its
    collector's outage to ``no_sample`` in a long exact read, to the other replicas' load in the rollups).
    ``instance=`` selects requests only: their samples, model-wide ones included, are the same as unscoped.
    """
    buckets = _checked(q)
    t = b.table("telemetry")
    lo, hi = _samples_span(q)
    in_window = f"ts >= {b.p('lo', lo)} AND ts < {b.p('hi', hi)}"
    metric = f"metric = {b.p('metric', q.by)}"
    model = f" AND model_id = {b.p('model', q.model_id)}" if q.model_id else ""
    samples = (f"SELECT {b.not_null('model_id')} AS model_key, instance, ts, value FROM {t} "
               f"WHERE {metric} AND {in_window} AND model_id IS NOT NULL{model}")
    cte = ""
    if unlabelled:  # their samples, each attributed to every model (im) its instance reported in the window
        hosts = ", ".join(b.p(f"u{i}", name) for i, name in enumerate(unlabelled))
        cte = (f"im AS (SELECT DISTINCT instance, {b.not_null('model_id')} AS model_key FROM {t} "
               f"WHERE {in_window} AND model_id IS NOT NULL{model} AND instance IN ({hosts})), ")
        samples += (f" UNION ALL SELECT im.model_key AS model_key, u.instance AS instance, u.ts AS ts, "
                    f"u.value AS value FROM (SELECT instance, ts, value FROM {t} WHERE {metric} AND {in_window} "
                    f"AND model_id IS NULL AND instance IN (SELECT instance FROM im)) AS u "
                    f"INNER JOIN im ON u.instance = im.instance")
    cases = " ".join(f"WHEN s.value < {bk.hi!r} THEN {i}" for i, bk in enumerate(buckets[:-1]))
    stale_us = b.p('stale_us', q.max_staleness // timedelta(microseconds=1), 'Int64')
    stale = f"s.us IS NULL OR r.us - s.us > {stale_us}"
    requests = " AND ".join(_request_scope(b, q.since, q.until, q.instance, q.model_id, q.tenant_id))
    inst = "coalesce(q.instance, '')"
    inst_key = b.not_null("CASE WHEN pairs.inst_key IS NULL THEN '' ELSE pairs.inst_key END")
    ctes = (
        # Times as epoch microseconds: grouping by (a constant model, a range-filtered TIMESTAMPTZ) sets off
        # a DuckDB 2.0 plan that scans the table once per time slice (10x slower).
        f"{cte}sp AS (SELECT model_key, {b.not_null('instance')} AS inst_key, {b.micros('ts')} AS us, max(value) AS value "
        f"FROM ({samples}) AS labelled GROUP BY model_key, inst_key, us), "
        # (model, instance, hour) with samples in [hour - max_staleness, hour + 1 h): a sample's own hour and,
        # within max_staleness of the next one, that one too (as a build of that hour reads it)
        f"pairs AS (SELECT DISTINCT model_key, inst_key, h FROM (SELECT model_key, inst_key, {b.hour('us')} AS h "
        f"FROM sp UNION ALL SELECT model_key, inst_key, {b.hour(f'us + {stale_us}')} AS h FROM sp) AS ph), "
        "s AS (SELECT model_key, inst_key, us, value FROM sp UNION ALL "
        "SELECT model_key, '' AS inst_key, us, max(value) AS value FROM sp GROUP BY model_key, us), "
        f"q AS (SELECT tenant_id, model_id, instance, {b.micros('started_at')} AS us, ttft_ms, itl_ms_mean, "
        f"CASE WHEN status_code >= 400 OR error_type IS NOT NULL THEN 1 ELSE 0 END AS failed "
        f"FROM {b.table('requests')} WHERE {requests}), "
        f"r AS (SELECT q.tenant_id AS tenant_id, q.model_id AS model_id, {inst} AS instance, q.us AS us, "
        "q.ttft_ms AS ttft_ms, q.itl_ms_mean AS itl_ms_mean, q.failed AS failed, "
        f"{inst_key} AS inst_key "
        f"FROM q LEFT JOIN pairs ON q.model_id = pairs.model_key AND {inst} = pairs.inst_key "
        f"AND {b.hour('q.us')} = pairs.h)"
    )
    select = (
        f"SELECT CASE WHEN {stale} THEN -1 {cases} ELSE {len(buckets) - 1} END AS bucket, r.tenant_id AS tenant_id, "
        "r.model_id AS model_id, r.instance AS instance, r.ttft_ms AS ttft_ms, r.itl_ms_mean AS itl_ms_mean, "
        "r.failed AS failed FROM r ASOF LEFT JOIN s ON r.model_id = s.model_key AND r.inst_key = s.inst_key "
        "AND r.us >= s.us"
    )
    return ctes, select


def correlation_sql(reader: Reader, q: CorrelationQuery,
                    unlabelled: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """The as-of join and the per-bucket aggregates, quantiles exact; ``unlabelled``: ``unlabelled_sql``'s instances."""
    b = _Sql(reader)
    ctes, joined = joined_sql(b, q, unlabelled)
    sql = (f"WITH {ctes} SELECT bucket, count(*) AS requests, sum(failed) AS errors, "
           f"{b.quantiles('ttft_ms')} AS ttft_q, {b.quantiles('itl_ms_mean')} AS itl_q FROM ({joined}) AS j "
           "GROUP BY bucket")
    if b.ch:
        sql += " SETTINGS join_use_nulls = 1"  # an unmatched request reads NULL, not 1970-01-01
    return sql, b.params


def correlation(reader: Reader, q: CorrelationQuery) -> list[dict[str, Any]]:
    """One row per bucket of ``q.by`` (all of them, in order, empty ones included), then ``no_sample``."""
    unlabelled = tuple(sorted(str(row["instance"]) for row in reader.run(*unlabelled_sql(reader, q))))
    sql, params = correlation_sql(reader, q, unlabelled)
    found = {int(row["bucket"]): row for row in reader.run(sql, params)}
    total = sum(int(row["requests"]) for row in found.values())
    out = []
    buckets = CORRELATION_METRICS[q.by]
    for i, (label, lo, hi) in [*((i, (bk.label, bk.lo, bk.hi)) for i, bk in enumerate(buckets)),
                               (-1, (NO_SAMPLE, None, None))]:
        row = found.get(i, {})
        n = int(row.get("requests", 0))
        ttft, itl = _pair(row.get("ttft_q")), _pair(row.get("itl_q"))
        out.append({"bucket": label, "lo": lo, "hi": hi, "requests": n, "share": n / total if total else 0.0,
                    "errors": int(row.get("errors") or 0), "ttft_ms_p50": ttft[0], "ttft_ms_p99": ttft[1],
                    "itl_ms_p50": itl[0], "itl_ms_p99": itl[1], "source": "raw"})
    return out


def _num(value: Any) -> float | None:
    """NULL and NaN (ClickHouse's quantile of nothing) as None."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _pair(values: Any) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return _num(values[0]), _num(values[1])


# -- diagnosis --------------------------------------------------------------------------------------


def diagnosis_inputs(reader: Reader, q: DiagnosisQuery) -> DiagnosisInputs:
    """Request TTFT quantiles, prompt repeats and mean telemetry over the window, in three queries."""
    _check_window(q.since, q.until)
    b = _Sql(reader)
    where = " AND ".join(_request_scope(b, q.since, q.until, q.instance, q.model_id, q.tenant_id))
    reqs = b.table("requests")
    # count(ttft_ms), not count(*): non-streamed requests have no TTFT, and counting them let 3 values pass
    # for "at least min_requests" and fire contention on nonsense
    latency = reader.run(f"SELECT count(ttft_ms) AS n, {b.quantiles('ttft_ms')} AS ttft_q FROM {reqs} WHERE {where}",
                         b.params)[0]
    repeats = reader.run(
        "SELECT sum(c) AS hashed, sum(CASE WHEN c > 1 THEN c ELSE 0 END) AS repeated FROM "
        f"(SELECT prompt_hash, count(*) AS c FROM {reqs} WHERE {where} AND prompt_hash IS NOT NULL "
        "GROUP BY prompt_hash) AS h", b.params)[0]
    s = _Sql(reader)
    conds = _sample_scope(s, q.since, q.until, q.instance, q.model_id, q.tenant_id)
    conds.append(f"metric IN ({', '.join(s.p(f'm{i}', m) for i, m in enumerate(DIAGNOSIS_METRICS))})")
    means = reader.run(f"SELECT metric, avg(value) AS mean, count(*) AS n FROM {s.table('telemetry')} "
                       f"WHERE {' AND '.join(conds)} GROUP BY metric", s.params)
    p50, p99 = _pair(latency.get("ttft_q"))
    return DiagnosisInputs(
        requests=int(latency["n"] or 0), ttft_ms_p50=p50, ttft_ms_p99=p99,
        hashed_requests=int(repeats["hashed"] or 0), repeated_requests=int(repeats["repeated"] or 0),
        metric_means={str(m["metric"]): float(m["mean"]) for m in means if _num(m["mean"]) is not None},
        metric_samples={str(m["metric"]): int(m["n"]) for m in means},
    )
