"""The scale-out store: ClickHouse, on a server (clickhouse-connect) or embedded (chdb).

``ClickHouseStore.from_url(url, database)`` is the production shape; ``ClickHouseStore.embedded(path)``
runs the very same SQL in-process on chdb, which is how CI tests the schema, TTLs and queries
without a server (docs: DESIGN.md, "Scale-out store"). The SQL lives in ``clickhouse_sql`` and
``clickhouse_schema``; only the executor (``clickhouse_exec``) differs between the two.

Writes are idempotent by each table's key in two layers: ``_insert`` drops keys repeated in the
batch and keys already stored in the batch's time window (so the return value counts rows that are
really new), and ReplacingMergeTree plus ``FINAL`` reads hide the duplicate that two writers racing
on the same batch could still produce.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infersight.model import RequestRecord
from infersight.store.evaluations_sql import EvaluationFilter, evaluations_page, evaluations_sql
from infersight.store.quality_sql import QualityQuery, quality_rows, quality_sql
from infersight.store import correlation_rollup, telemetry_sql
from infersight.store import rollup, schema
from infersight.store.arrow import key_tuples, lacks_stable_time, records_to_arrow, rows_to_arrow
from infersight.store.base import Page, RequestFilter, RetentionPolicy, StatsQuery, StoreError
from infersight.store.clickhouse_exec import ChdbExecutor, Executor, ServerExecutor
from infersight.store.clickhouse_retention import apply_retention
from infersight.store.clickhouse_rollup import map_quantile_rows, quantile_rows
from infersight.store.clickhouse_rollup import stats_sql as rollup_stats_sql
from infersight.store.clickhouse_schema import (
    LAYOUTS,
    MIGRATIONS,
    Migration,
    bookkeeping_sql,
    check_steps,
    policy_fingerprint,
    ttl_statements,
)
from infersight.store.clickhouse_sql import (
    NEWEST_FIRST,
    TS_PARAM,
    aware,
    columns,
    existing_keys_sql,
    request_where,
    stats_row,
    stats_sql,
    table_ref,
    ts_param,
)
from infersight.store.cursor import decode_cursor, encode_cursor

log = logging.getLogger("infersight.store.clickhouse")
_WRITABLE = ("eval_results", "telemetry", "cost_lines", "request_content")
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ClickHouseStore:
    """The ``Store`` on ClickHouse. Build it with ``from_url`` or ``embedded``."""

    def __init__(
        self,
        executor: Executor,
        database: str = "infersight",
        retention: RetentionPolicy | None = None,
        migrations: tuple[Migration, ...] = MIGRATIONS,
        ttl_merges: bool = True,
    ) -> None:
        if not _DATABASE_NAME.match(database):
            raise StoreError(f"database name must match {_DATABASE_NAME.pattern}, got {database!r}")
        self.database = database
        self.retention = retention or RetentionPolicy()
        self._exec = executor
        self._migrations = migrations
        self.ttl_merges = ttl_merges
        self.correlation_every_s = 10.0  # build at most one due correlation hour this often (writes)
        self._correlated_at = time.monotonic()
        self._built_now = correlation_rollup.EPOCH  # the newest ``now`` a correlation build here used
        self._stale: set[datetime] = set()  # correlation hours to delete (kept while the delete fails)

    @classmethod
    def from_url(
        cls,
        url: str,
        database: str = "infersight",
        retention: RetentionPolicy | None = None,
        ttl_merges: bool = True,
    ) -> ClickHouseStore:
        """A ClickHouse server at ``http(s)://[user:pass@]host[:port]``; connects on first use.

        ``ttl_merges=False`` pauses TTL merges on this database's tables (``SYSTEM STOP TTL
        MERGES`` at ``migrate()``, needs the SYSTEM privilege, lasts until the server restarts):
        for contract runs with fixed timestamps on a scratch database, never for production.
        """
        return cls(ServerExecutor(url), database, retention, ttl_merges=ttl_merges)

    @classmethod
    def embedded(
        cls,
        path: str,
        database: str = "infersight",
        retention: RetentionPolicy | None = None,
        ttl_merges: bool = False,
    ) -> ClickHouseStore:
        """The ClickHouse engine in-process (chdb), keeping its data in the directory ``path``.

        The tables carry the same TTL clauses as on a server, but TTL merges are paused by default
        (``SYSTEM STOP TTL MERGES``, per session): in-process, TTL would judge rows by the wall
        clock at unpredictable moments, so tests with fixed timestamps would lose rows as the
        calendar moves on. Retention is then ``apply_retention``'s job, as with DuckDB. Pass
        ``ttl_merges=True`` to let the engine enforce TTL as a server does. The pause is per
        session: reopening a directory, the engine may run one TTL merge on rows the wall clock has
        already expired before the pause lands (it acts within milliseconds of start-up).
        """
        store = cls(ChdbExecutor(path), database, retention, ttl_merges=ttl_merges)
        if not ttl_merges:
            store._pause_ttl_merges()  # tables of a reopened directory exist before migrate()
        return store

    # -- plumbing -------------------------------------------------------------------------------

    def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._exec.query(sql, params).to_pylist()
        return rows

    def _t(self, table: str) -> str:
        return table_ref(self.database, table)

    def _insert(self, table: schema.Table, batch: pa.Table) -> int:
        """Insert the batch's rows whose key is neither repeated in the batch nor already stored.

        The probe reads only the keys in ``[min, max]`` of the batch's time column and the batch's
        values of one low-cardinality column (tenant, or instance for telemetry), so its cost
        follows the batch, not the table. A redelivered row carries its original time, so it always falls in that window;
        a re-run with a new time (``Table.stable_time``) is found in the window of the time it keeps.
        """
        if batch.num_rows == 0:
            return 0
        keys = key_tuples(batch, table.key)
        seen: set[tuple[Any, ...]] = set()
        first: list[int] = []
        for i, k in enumerate(keys):
            if k not in seen:
                seen.add(k)
                first.append(i)
        stored = self._stored(table, batch)
        new = [i for i in first if keys[i] not in stored]
        if new:
            self._exec.insert(self.database, table.name, batch.take(pa.array(new, type=pa.int64())))
        return len(new)

    def stored_keys(self, table: str, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        """Which of ``rows``' keys the table holds already (``Store.stored_keys``)."""
        if table not in _WRITABLE:
            raise StoreError(f"stored_keys takes one of {list(_WRITABLE)}, not {table!r}")
        if not rows:
            return set()
        spec = schema.TABLES[table]
        batch = rows_to_arrow(spec, rows)
        return self._stored(spec, batch) & set(key_tuples(batch, spec.key))

    def _stored(self, table: schema.Table, batch: pa.Table) -> set[tuple[Any, ...]]:
        """The idempotency probe: keys stored in the batch's time window (and stable time's) and scopes."""
        bounds = pc.min_max(batch.column(table.time_column))
        scope = LAYOUTS[table.name].scope
        params = {
            "lo": ts_param(bounds["min"].as_py()),
            "hi": ts_param(bounds["max"].as_py()),
            "scopes": sorted(set(batch.column(scope).to_pylist())),
        }
        if table.stable_time:  # a re-run keeps this time (schema.Table.stable_time); none: the same span
            stable = pc.min_max(batch.column(table.stable_time))
            if stable["min"].is_valid:
                bounds = stable
            params.update(stable_lo=ts_param(bounds["min"].as_py()), stable_hi=ts_param(bounds["max"].as_py()))
        lacking = lacks_stable_time(table, batch)
        if lacking is not None:  # rows without the stable time: their re-runs are found by trace
            params["unstable_traces"] = sorted(set(batch.column("trace_id").filter(lacking).to_pylist()))
        probe = existing_keys_sql(self.database, table, scope, unstable=lacking is not None)
        return set(key_tuples(self._exec.query(probe, params), table.key))

    # -- schema ---------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply every step above the database's version, then bring TTLs in line with the policy.

        A database written by newer code (a version above the last step) is refused rather than
        guessed at, as in the DuckDB backend.
        """
        target = check_steps(self._migrations)
        for sql in bookkeeping_sql(self.database):
            self._exec.command(sql)
        have = before = self.schema_version()
        if have > target:
            raise StoreError(f"the database is at schema version {have}, newer than this code ({target}); upgrade infersight")
        for step in self._migrations:
            if step.version <= have:
                continue
            for sql in step.statements(self.database, self.retention):
                self._exec.command(sql)
            if step.backfill is not None and before > 0:  # a new database has nothing to backfill
                for sql in step.backfill(self.database):
                    self._exec.command(sql)
            self._exec.command(
                f"INSERT INTO {self._t('schema_version')} (version, description) SELECT {{v:UInt32}}, {{d:String}}",
                {"v": step.version, "d": step.description},
            )
            have = step.version
        self._sync_ttl(created=before == 0)
        if not self.ttl_merges:
            self._pause_ttl_merges()
        return have

    def _pause_ttl_merges(self) -> None:
        """Stop TTL merges on this database's existing tables (an in-memory switch of the engine)."""
        rows = self._rows(
            "SELECT name FROM system.tables WHERE database = {db:String} AND name IN {names:Array(String)}",
            {"db": self.database, "names": [*schema.TABLES, *(r.name for r in schema.ROLLUPS)]},
        )
        for row in rows:
            self._exec.command(f"SYSTEM STOP TTL MERGES {self._t(row['name'])}")

    def _sync_ttl(self, created: bool) -> None:
        """Re-issue the TTL clauses when the retention policy differs from the one last applied.

        Tables this call created already carry this policy's TTLs; otherwise the ALTERs are cheap
        metadata changes, skipped entirely while the policy stays the same.
        """
        fingerprint = policy_fingerprint(self.retention)
        rows = self._rows(f"SELECT fingerprint FROM {self._t('retention_policy')} ORDER BY applied_at DESC LIMIT 1")
        if rows and rows[0]["fingerprint"] == fingerprint:
            return
        if not created:  # tables made under another (or an unrecorded) policy
            for sql in ttl_statements(self.database, self.retention):
                self._exec.command(sql)
        self._exec.command(
            f"INSERT INTO {self._t('retention_policy')} (fingerprint) SELECT {{f:String}}", {"f": fingerprint}
        )

    def schema_version(self) -> int:
        exists = self._rows(
            "SELECT count() AS n FROM system.tables WHERE database = {db:String} AND name = 'schema_version'",
            {"db": self.database},
        )
        if not exists or not exists[0]["n"]:
            return 0
        rows = self._rows(f"SELECT toInt64(max(version)) AS v, count() AS n FROM {self._t('schema_version')}")
        return int(rows[0]["v"]) if rows and rows[0]["n"] else 0

    # -- writes ---------------------------------------------------------------------------------

    def write_requests(self, records: list[RequestRecord]) -> int:
        """Insert a batch; records whose (trace_id, span_id) is stored or repeated are skipped."""
        if not records:
            return 0
        inserted = self._insert(schema.REQUESTS, records_to_arrow(records))
        if time.monotonic() - self._correlated_at >= self.correlation_every_s:
            self._correlated_at = time.monotonic()
            try:
                self.build_correlation_rollups(max_periods=1)
            except Exception:  # the batch is in; the hour is built at a later write
                log.exception("correlation rollup build failed")
        return inserted

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        if table not in _WRITABLE:
            raise StoreError(f"write_rows takes one of {list(_WRITABLE)}, not {table!r}")
        if not rows:
            return 0
        spec = schema.TABLES[table]
        batch = rows_to_arrow(spec, rows)
        inserted = self._insert(spec, batch)
        if table == "telemetry":  # late samples: the built correlation hours they change (correlation_rollup)
            now = max(datetime.now(timezone.utc), self._built_now)  # a build may have run with a later ``now``
            self._stale.update(correlation_rollup.invalidated_periods(pc.unique(batch.column("ts")).to_pylist(), now))
            self._invalidate(now)
        return inserted

    def _invalidate(self, now: datetime) -> None:
        """Delete the correlation hours in ``self._stale`` (lightweight DELETE: a row mask, read by FINAL).

        ClickHouse has no transaction over the samples' insert and this delete, so the samples go first
        and are never lost for it. A failed delete is logged and kept for the next telemetry write or
        build rather than raised: the samples are in, and a server refusing deletes must not stall
        ingestion with retried batches. Until the delete lands (or if this process stops first) the
        hour reads as built, the gap this closes otherwise.
        """
        lo = now - correlation_rollup.LOOKBACK  # older hours are not rebuilt: leave them (invalidated_periods)
        self._stale = {p for p in self._stale if p + correlation_rollup.PERIOD > lo}
        if not self._stale:
            return
        periods = sorted(self._stale)
        try:
            self._exec.command(f"DELETE FROM {self._t(correlation_rollup.TABLE)} WHERE period_start IN "
                               f"{{periods:Array({TS_PARAM})}}", {"periods": [ts_param(p) for p in periods]})
        except StoreError:
            log.exception("invalidating correlation hours %s failed; retried at the next write", periods)
            return
        self._stale.difference_update(periods)
        log.info("late telemetry samples: correlation hours %s to be rebuilt", [p.isoformat() for p in periods])

    # -- reads ----------------------------------------------------------------------------------

    def get_requests(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {columns(schema.REQUESTS)} FROM {self._t('requests')} FINAL WHERE trace_id = {{trace:String}}"
        params: dict[str, Any] = {"trace": trace_id}
        if tenant_id is not None:
            sql += " AND tenant_id = {tenant:String}"
            params["tenant"] = tenant_id
        return self._rows(sql + " ORDER BY started_at, span_id", params)

    def list_requests(self, flt: RequestFilter, limit: int = 100, cursor: str | None = None) -> Page:
        if limit < 1:
            raise StoreError("limit must be at least 1")
        where, params = request_where(flt, decode_cursor(cursor) if cursor else None)
        params["limit"] = limit + 1
        rows = self._rows(
            f"SELECT {columns(schema.REQUESTS)} FROM {self._t('requests')} FINAL {where} {NEWEST_FIRST} "
            "LIMIT {limit:UInt64}",
            params,
        )
        if len(rows) <= limit:
            return Page(rows, None)
        last = rows[limit - 1]
        return Page(rows[:limit], encode_cursor(last["started_at"], last["span_id"], last["trace_id"]))

    def count_requests(self, flt: RequestFilter) -> int:
        where, params = request_where(flt)
        return int(self._rows(f"SELECT count() AS n FROM {self._t('requests')} FINAL {where}", params)[0]["n"])

    def list_evaluations(self, flt: EvaluationFilter, limit: int = 100, cursor: str | None = None) -> Page:
        sql, params = evaluations_sql(self._t("eval_results"), flt, limit, cursor, "clickhouse")
        return evaluations_page(self._rows(sql, params), limit)

    def quality(self, query: QualityQuery) -> list[dict[str, Any]]:
        sql, params = quality_sql(self._t("eval_results"), query, "clickhouse")
        return quality_rows(self._rows(sql, params))

    # -- telemetry reads (shared SQL: store/telemetry_sql.py) ----------------------------------------

    def _telemetry_reader(self) -> telemetry_sql.Reader:
        return telemetry_sql.Reader("clickhouse", self._rows, lambda t: f"{self._t(t)} FINAL")

    def telemetry(self, query: telemetry_sql.TelemetryQuery) -> tuple[list[dict[str, Any]], bool]:
        return telemetry_sql.telemetry(self._telemetry_reader(), query)

    def correlation(self, query: telemetry_sql.CorrelationQuery) -> list[dict[str, Any]]:
        reader = self._telemetry_reader()
        rows = correlation_rollup.read(reader, query, self._hourly_counts)
        return rows if rows is not None else telemetry_sql.correlation(reader, query)

    def _hourly_counts(self, lo: datetime, hi: datetime) -> dict[datetime, int]:
        """Requests per hour from the hourly request rollups (their views count every insert)."""
        rows = self._rows(
            f"SELECT period_start AS p, sum(requests) AS n FROM {self._t('request_rollups_1h')} "
            f"WHERE period_start >= {{lo:{TS_PARAM}}} AND period_start < {{hi:{TS_PARAM}}} GROUP BY period_start",
            {"lo": ts_param(lo), "hi": ts_param(hi)})
        return {correlation_rollup.aware_utc(r["p"]): int(r["n"]) for r in rows}

    def build_correlation_rollups(self, now: datetime | None = None, max_periods: int | None = None,
                                  lookback: timedelta | None = None) -> int:
        """Build the correlation hours that are due (``correlation_rollup``); periods built. Safe to run
        from several ingest workers at once: the table keeps one row per key (ReplacingMergeTree)."""
        now = now or datetime.now(timezone.utc)
        self._built_now = max(self._built_now, now)
        self._invalidate(now)  # hours whose delete failed: rebuilt below once it lands
        reader = self._telemetry_reader()
        due = correlation_rollup.due_periods(reader, self._hourly_counts, now,
                                             lookback or correlation_rollup.LOOKBACK)
        due = due[:max_periods] if max_periods is not None else due
        for period in due:
            for sql, params in correlation_rollup.build_statements(reader, period, self._t(correlation_rollup.TABLE)):
                self._exec.command(sql, params)
        return len(due)

    def diagnosis_inputs(self, query: telemetry_sql.DiagnosisQuery) -> telemetry_sql.DiagnosisInputs:
        return telemetry_sql.diagnosis_inputs(self._telemetry_reader(), query)

    def eval_results_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {columns(schema.EVAL_RESULTS)} FROM {self._t('eval_results')} FINAL "
            "WHERE trace_id = {trace:String}"
        )
        params: dict[str, Any] = {"trace": trace_id}
        if tenant_id is not None:
            sql += " AND tenant_id = {tenant:String}"
            params["tenant"] = tenant_id
        return self._rows(sql + " ORDER BY evaluated_at, evaluator, dimension, span_id", params)

    def content_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {columns(schema.REQUEST_CONTENT)} FROM {self._t('request_content')} FINAL "
            "WHERE trace_id = {trace:String}"
        )
        params: dict[str, Any] = {"trace": trace_id}
        if tenant_id is not None:
            sql += " AND tenant_id = {tenant:String}"
            params["tenant"] = tenant_id
        return self._rows(sql + " ORDER BY started_at, span_id", params)

    def telemetry_around(self, model_id: str, at: datetime, window: timedelta) -> list[dict[str, Any]]:
        """Samples labelled with the model, plus unlabelled ones (e.g. NVML GPU samples) of the
        instances that served it in the window: GPU collectors do not know which model runs."""
        lo, hi = aware(at, "at") - window, at + window
        t = self._t("telemetry")
        in_window = f"ts >= {{lo:{TS_PARAM}}} AND ts <= {{hi:{TS_PARAM}}}"
        sql = (
            f"SELECT {columns(schema.TELEMETRY)} FROM {t} FINAL WHERE {in_window} "
            "AND (model_id = {model:String} OR (model_id IS NULL AND instance IN "
            f"(SELECT instance FROM {t} WHERE {in_window} AND model_id = {{model:String}}))) "
            "ORDER BY ts, source, instance, gpu, metric"
        )
        return self._rows(sql, {"lo": ts_param(lo), "hi": ts_param(hi), "model": model_id})

    def stats(self, query: StatsQuery) -> list[dict[str, Any]]:
        """From the raw table or the rollups, as ``rollup.plan_stats`` decides (docs/store.md)."""
        plan = rollup.plan_stats(query)
        if plan.raw:
            sql, params = stats_sql(self.database, query)
            bucketed = query.resolution is not None
            return [stats_row(raw, query.group_by, bucketed) for raw in self._rows(sql, params)]
        local = self._exec.in_process  # see Executor.in_process
        sql, params = rollup_stats_sql(self.database, query, plan, order_stats=not local)
        rows = map_quantile_rows(self._exec.query(sql, params)) if local else quantile_rows(self._rows(sql, params))
        return rollup.stats_rows(rows, query, plan.source)

    # -- retention ------------------------------------------------------------------------------

    def apply_retention(self, now: datetime, policy: RetentionPolicy) -> dict[str, int]:
        """Delete rows past retention and null text past ``text_days``, exactly, relative to ``now``.

        The tables' TTL clauses do the same in production at merge time against the server clock;
        this is the exact, immediate pass (see ``clickhouse_retention``).
        """
        return apply_retention(self._exec, self.database, now, policy)

    def close(self) -> None:
        self._exec.close()

