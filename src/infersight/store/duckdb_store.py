"""The embedded store: one DuckDB file, owned by one process.

DuckDB locks its file for one process (even read-only opens are refused elsewhere), so the store
holds two connections to the same database: a write connection for the ingester thread and a read
connection for the API, each behind its own lock. Writers and readers then never wait on each
other (DuckDB's MVCC keeps reads consistent), while each connection is used by one thread at a time.

Every write goes in as an Arrow batch (``store/arrow.py``); ``executemany`` is ~3,000x slower.
There is no TTL in DuckDB, so retention is the scheduled ``apply_retention`` delete.

Each ``write_requests`` also stages exactly the rows it inserted for the rollups, in the same
transaction, so the rollups never disagree with the raw table. The writer folds staged rows into
the rollup tables every few seconds and compacts partial rollup rows about once a minute
(``duckdb_rollup``); ``apply_retention`` and ``close`` do both too.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from infersight.model import RequestRecord
from infersight.store.evaluations_sql import EvaluationFilter, evaluations_page, evaluations_sql
from infersight.store.quality_sql import QualityQuery, quality_rows, quality_sql
from infersight.store import correlation_rollup, telemetry_sql
from infersight.store import rollup, schema
from infersight.store.arrow import key_tuples, lacks_stable_time, records_to_arrow, rows_to_arrow
from infersight.store.base import (
    Page,
    RequestFilter,
    RetentionPolicy,
    StatsQuery,
    StoreError,
    StoreUnavailable,
)
from infersight.store.cursor import decode_cursor, encode_cursor
from infersight.store.duckdb_rollup import compact, fold, stage_sql
from infersight.store.duckdb_rollup import stats_sql as rollup_stats_sql
from infersight.store.duckdb_schema import current_version, migrate, run
from infersight.store.rollup_merge import merged_rows
from infersight.store.duckdb_sql import (
    NEWEST_FIRST,
    REQUEST_COLUMNS,
    aware,
    insert_dedup,
    new_rows_sql,
    probe_params,
    request_where,
    stats_row,
    stats_sql,
)

if TYPE_CHECKING:
    from infersight.store.duckdb_compact import CompactReport

log = logging.getLogger("infersight.store")
_BATCH_VIEW = "_infersight_batch"
_NEW_ROWS = "_infersight_new"
_NEW_ROWS_SQL = f"CREATE OR REPLACE TEMP TABLE {_NEW_ROWS} AS {new_rows_sql(schema.REQUESTS, _BATCH_VIEW)}"
_STAGE_SQL = stage_sql(_NEW_ROWS)
_FOLD_AT_ROWS = 200_000  # fold early when this many rows wait, whatever the time
CHECKPOINT_THRESHOLD = "64MB"
_WRITABLE = ("eval_results", "telemetry", "cost_lines", "request_content")
_INSERT_SQL = {name: insert_dedup(table, _BATCH_VIEW) for name, table in schema.TABLES.items()}
# batches with rows lacking the table's stable_time (hand-written eval results): see new_rows_sql
_INSERT_UNSTABLE_SQL = {name: insert_dedup(table, _BATCH_VIEW, unstable=True)
                        for name, table in schema.TABLES.items() if table.stable_time}
_RETENTION = (  # table, its policy field
    ("requests", "requests_days"),
    ("eval_results", "eval_results_days"),
    ("telemetry", "telemetry_days"),
    ("cost_lines", "cost_lines_days"),
)
_NULL_TEXT = (
    "UPDATE requests SET prompt_text = NULL, completion_text = NULL "
    "WHERE started_at < ? AND (prompt_text IS NOT NULL OR completion_text IS NOT NULL)"
)
_DELETE_CONTENT = "DELETE FROM request_content WHERE started_at < ?"  # masked text: the whole row is text
_NULL_JUDGE_TEXT = (  # the judge's explanations can quote the (masked) text it read: text, not metadata
    "UPDATE eval_results SET explanation = NULL WHERE coalesce(request_started_at, evaluated_at) < ? "
    f"AND evaluator = '{schema.JUDGE_EVALUATOR}' AND explanation IS NOT NULL"
)


def _past_text_days(con: duckdb.DuckDBPyConnection, sql: str, now: datetime, policy: RetentionPolicy) -> int:
    """Run ``sql`` (its one parameter: a ``started_at`` cutoff) once per tenant with its own
    ``text_days``, then for everyone else; rows touched."""
    overrides = policy.text_days_by_tenant
    touched = 0
    for tenant, days in overrides.items():
        touched += int(run(con, sql + " AND tenant_id = ?", [now - timedelta(days=days), tenant])[0][0])
    rest = sql
    params: list[Any] = [now - timedelta(days=policy.text_days)]
    if overrides:
        rest += f" AND tenant_id NOT IN ({', '.join('?' * len(overrides))})"
        params += list(overrides)
    return touched + int(run(con, rest, params)[0][0])


def _unordered(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pa.Table:
    """A result whose row order does not matter, collected by all threads at once.

    With ``preserve_insertion_order`` (the default) DuckDB gathers a result in scan order, one
    thread copying the rollup maps into Arrow: 40% of a 30-day stats query. The setting is global,
    so for these few milliseconds the writer's appends may land in any order too, which nothing
    relies on (reads sort, and the zone maps of a batch's rows barely move).
    """
    (before,) = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0]
    con.execute("SET preserve_insertion_order = false").fetchall()
    try:
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.execute(f"SET preserve_insertion_order = {bool(before)}").fetchall()


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    run(con, "BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        run(con, "ROLLBACK")
        raise
    run(con, "COMMIT")


def _open(path: str) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(path)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            pid = re.search(r"\(PID (\d+)\)", text)
            holder = f" (PID {pid.group(1)})" if pid else ""
            raise StoreUnavailable(
                f"the DuckDB file {path} is locked by another process{holder}: only one process may own it. "
                "Stop that process, or point store.path at another file."
            ) from exc
        raise StoreUnavailable(f"cannot open the DuckDB file {path}: {text}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"cannot open the DuckDB file {path}: {exc}") from exc


class DuckDBStore:
    """The ``Store`` for the embedded runtime shape (``infersight.duckdb`` under the data folder)."""

    def __init__(self, path: str, fold_every_s: float = 5.0, compact_every_s: float = 60.0,
                 threads: int | None = None) -> None:
        self.path = path
        self.threads = threads  # DuckDB worker threads (None: its default, one per core)
        self.fold_every_s = fold_every_s
        self.compact_every_s = compact_every_s
        self._pending = 0  # rows staged since the last fold (by this process)
        self._folded_at = 0.0  # monotonic; 0: fold at the first write (rows a crash left pending)
        self._dirty: tuple[datetime, datetime] | None = None  # time span folded into, not compacted
        self._compacted_at = time.monotonic()
        self.correlation_every_s = 10.0  # build at most one due correlation hour this often (writes)
        self._correlated_at = time.monotonic()
        self._built_now = correlation_rollup.EPOCH  # the newest ``now`` a correlation build here used
        self._connect()
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------

    def _connect(self) -> None:
        """Open the write connection and the read cursor: at start, and again after ``compact``."""
        self._write = _open(self.path)
        self._read = self._write.cursor()
        for con in (self._write, self._read):
            run(con, "SET TimeZone = 'UTC'")  # time_bucket and casts work in UTC, not the host's zone
        # Each checkpoint rewrites the row groups touched since the last one and frees the old blocks,
        # which DuckDB never gives back: at the default 16 MB a file under steady ingest is ~40% free
        # blocks (257 B/record); at 64 MB it stays at ~177 B/record (benchmarks/README.md, compaction).
        # The cost: up to 64 MB of WAL to replay after a crash (measured 0.27 s).
        run(self._write, f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        if self.threads is not None:
            run(self._write, f"SET threads = {int(self.threads)}")

    @contextmanager
    def _use(self, writing: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._write_lock if writing else self._read_lock:
            if self._closed:
                raise StoreError("the store is closed")
            con = self._write if writing else self._read  # taken under the lock: compact() replaces them
            try:
                yield con
            except StoreError:
                raise
            except duckdb.IOException as exc:  # disk full, file gone: maybe fixed by the time of a retry
                raise StoreUnavailable(f"{self.path}: {exc}") from exc
            except duckdb.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

    def _query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        # Through Arrow: TIMESTAMPTZ comes back as aware UTC datetimes without needing pytz.
        with self._use(writing=False) as con:
            rel = con.sql(sql, params=params)
            # duckdb >= 1.4 names it to_arrow_table; older releases fetch_arrow_table
            table: pa.Table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table()
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows

    def _insert(self, table: schema.Table, batch: pa.Table, stale: list[datetime] | None = None) -> int:
        """Insert the batch's new rows; with ``stale``, also delete those correlation hours.

        Both in one transaction: the samples that change a built hour and the hour's removal commit
        together, so no read sees the old hour beside the new samples. A failure rolls both back and
        raises, and the caller's retry (the bus keeps a failed batch) writes and invalidates again:
        the samples are never kept without their invalidation, nor lost for it.
        """
        if batch.num_rows == 0:
            return 0
        window = probe_params(table, batch)
        insert = (_INSERT_SQL if lacks_stable_time(table, batch) is None else _INSERT_UNSTABLE_SQL)[table.name]
        with self._use(writing=True) as con:
            con.register(_BATCH_VIEW, batch)
            try:
                if not stale:  # the normal case: no transaction, no delete
                    return int(run(con, insert, window)[0][0])
                with _transaction(con):
                    inserted = run(con, insert, window)[0][0]
                    run(con, f"DELETE FROM {correlation_rollup.TABLE} WHERE period_start IN "
                             f"({', '.join('?' * len(stale))})", list(stale))
            finally:
                con.unregister(_BATCH_VIEW)
        log.info("late telemetry samples: correlation hours %s to be rebuilt", [p.isoformat() for p in stale])
        return int(inserted)

    # -- schema ---------------------------------------------------------------------------------

    def migrate(self) -> int:
        with self._use(writing=True) as con:
            return migrate(con)

    def schema_version(self) -> int:
        with self._use(writing=False) as con:
            return current_version(con)

    # -- writes ---------------------------------------------------------------------------------

    def write_requests(self, records: list[RequestRecord]) -> int:
        """Insert a batch; records whose (trace_id, span_id) is stored or repeated are skipped."""
        if not records:
            return 0
        batch = records_to_arrow(records)
        bounds = pc.min_max(batch.column("started_at"))
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        with self._use(writing=True) as con:
            con.register(_BATCH_VIEW, batch)
            try:
                inserted = self._insert_and_stage(con, lo, hi)
            finally:
                con.unregister(_BATCH_VIEW)
            self._pending += inserted
            try:
                self._maintain(con, force=False)
                if time.monotonic() - self._correlated_at >= self.correlation_every_s:
                    self._correlated_at = time.monotonic()
                    self._build_correlation(con, datetime.now(timezone.utc), max_periods=1)
            except duckdb.Error:  # the batch is in; folding is retried at the next write
                log.exception("rollup maintenance failed")
        return inserted

    @staticmethod
    def _insert_and_stage(con: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime) -> int:
        """Insert the batch's new rows and stage exactly those rows for the rollups, all or nothing.

        The new rows are set apart once (a temp table), so a redelivered row, which is not new,
        is neither inserted nor staged: it is never counted twice.
        """
        with _transaction(con):
            run(con, _NEW_ROWS_SQL, [lo, hi])
            inserted = int(run(con, f"INSERT INTO requests SELECT * FROM {_NEW_ROWS}")[0][0])
            if inserted:
                run(con, _STAGE_SQL)
            run(con, f"DROP TABLE {_NEW_ROWS}")
        return inserted

    def compact_rollups(self) -> int:
        """Fold the pending rows into the rollups and merge partial rollup rows; rows merged away."""
        with self._use(writing=True) as con:
            return self._maintain(con, force=True)

    def _maintain(self, con: duckdb.DuckDBPyConnection, force: bool) -> int:
        """Fold pending rows (every ``fold_every_s``, or when many are pending), and compact the
        periods folded into since the last compaction (every ``compact_every_s``)."""
        now = time.monotonic()
        if force or self._pending >= _FOLD_AT_ROWS or now - self._folded_at >= self.fold_every_s:
            self._folded_at = now
            with _transaction(con):
                span = fold(con)
            self._pending = 0
            if span is not None:
                lo, hi = (rollup.EPOCH + timedelta(microseconds=us) for us in span)
                self._dirty = (min(lo, self._dirty[0]), max(hi, self._dirty[1])) if self._dirty else (lo, hi)
        if not (force or now - self._compacted_at >= self.compact_every_s) or self._dirty is None:
            return 0
        self._compacted_at = now
        lo, hi = self._dirty
        removed = 0
        with _transaction(con):
            for r in schema.ROLLUPS:
                removed += compact(con, r, *rollup.period_range(r, lo, hi))
        self._dirty = None
        return removed

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        if table not in _WRITABLE:
            raise StoreError(f"write_rows takes one of {list(_WRITABLE)}, not {table!r}")
        if not rows:
            return 0
        spec = schema.TABLES[table]
        batch = rows_to_arrow(spec, rows)
        stale = None
        if table == "telemetry":  # late samples: the built correlation hours they change (correlation_rollup)
            now = max(datetime.now(timezone.utc), self._built_now)  # a build may have run with a later ``now``
            stale = correlation_rollup.invalidated_periods(pc.unique(batch.column("ts")).to_pylist(), now)
        return self._insert(spec, batch, stale)

    def stored_keys(self, table: str, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        """Which of ``rows``' keys the table holds already (``Store.stored_keys``): the write's own
        idempotency probe (``new_rows_sql``), run without the insert."""
        if table not in _WRITABLE:
            raise StoreError(f"stored_keys takes one of {list(_WRITABLE)}, not {table!r}")
        if not rows:
            return set()
        spec = schema.TABLES[table]
        batch = rows_to_arrow(spec, rows)
        sql = f"SELECT {', '.join(spec.key)} FROM ({new_rows_sql(spec, _BATCH_VIEW, unstable=lacks_stable_time(spec, batch) is not None)})"
        with self._use(writing=False) as con:
            con.register(_BATCH_VIEW, batch)
            try:
                new = {tuple(row) for row in run(con, sql, probe_params(spec, batch))}
            finally:
                con.unregister(_BATCH_VIEW)
        return set(key_tuples(batch, spec.key)) - new

    # -- reads ----------------------------------------------------------------------------------

    def get_requests(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {REQUEST_COLUMNS} FROM requests WHERE trace_id = ?"
        params: list[Any] = [trace_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        return self._query(sql + " ORDER BY started_at, span_id", params)

    def list_requests(self, flt: RequestFilter, limit: int = 100, cursor: str | None = None) -> Page:
        if limit < 1:
            raise StoreError("limit must be at least 1")
        where, params = request_where(flt, decode_cursor(cursor) if cursor else None)
        rows = self._query(f"SELECT {REQUEST_COLUMNS} FROM requests {where} {NEWEST_FIRST} LIMIT {limit + 1}", params)
        if len(rows) <= limit:
            return Page(rows, None)
        last = rows[limit - 1]
        return Page(rows[:limit], encode_cursor(last["started_at"], last["span_id"], last["trace_id"]))

    def count_requests(self, flt: RequestFilter) -> int:
        where, params = request_where(flt)
        return int(self._query(f"SELECT count(*) AS n FROM requests {where}", params)[0]["n"])

    def list_evaluations(self, flt: EvaluationFilter, limit: int = 100, cursor: str | None = None) -> Page:
        sql, params = evaluations_sql("eval_results", flt, limit, cursor, "duckdb")
        return evaluations_page(self._query(sql, params), limit)

    def quality(self, query: QualityQuery) -> list[dict[str, Any]]:
        sql, params = quality_sql("eval_results", query, "duckdb")
        return quality_rows(self._query(sql, params))

    # -- telemetry reads (shared SQL: store/telemetry_sql.py) ----------------------------------------

    def _telemetry_reader(self) -> telemetry_sql.Reader:
        return telemetry_sql.Reader("duckdb", self._query, str)  # type: ignore[arg-type]

    def telemetry(self, query: telemetry_sql.TelemetryQuery) -> tuple[list[dict[str, Any]], bool]:
        return telemetry_sql.telemetry(self._telemetry_reader(), query)

    def correlation(self, query: telemetry_sql.CorrelationQuery) -> list[dict[str, Any]]:
        reader = self._telemetry_reader()
        rows = correlation_rollup.read(reader, query, _hourly_counts(reader))
        return rows if rows is not None else telemetry_sql.correlation(reader, query)

    def build_correlation_rollups(self, now: datetime | None = None, max_periods: int | None = None,
                                  lookback: timedelta | None = None) -> int:
        """Build the correlation hours that are due (``correlation_rollup``); periods built."""
        with self._use(writing=True) as con:
            return self._build_correlation(con, now or datetime.now(timezone.utc), max_periods, lookback)

    def _build_correlation(self, con: duckdb.DuckDBPyConnection, now: datetime, max_periods: int | None,
                           lookback: timedelta | None = None) -> int:
        self._built_now = max(self._built_now, now)
        reader = telemetry_sql.Reader("duckdb", lambda sql, params: _dicts(con, sql, params), str)
        due = correlation_rollup.due_periods(reader, _hourly_counts(reader), now,
                                             lookback or correlation_rollup.LOOKBACK)
        due = due[:max_periods] if max_periods is not None else due
        for period in due:
            statements = correlation_rollup.build_statements(reader, period, correlation_rollup.TABLE)
            with _transaction(con):
                run(con, f"DELETE FROM {correlation_rollup.TABLE} WHERE period_start = ?", [period])
                for sql, params in statements:
                    con.execute(sql, params).fetchall()
        return len(due)

    def diagnosis_inputs(self, query: telemetry_sql.DiagnosisQuery) -> telemetry_sql.DiagnosisInputs:
        return telemetry_sql.diagnosis_inputs(self._telemetry_reader(), query)

    def eval_results_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(schema.EVAL_RESULTS.names)} FROM eval_results WHERE trace_id = ?"
        params: list[Any] = [trace_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        return self._query(sql + " ORDER BY evaluated_at, evaluator, dimension, span_id", params)

    def content_for(self, trace_id: str, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(schema.REQUEST_CONTENT.names)} FROM request_content WHERE trace_id = ?"
        params: list[Any] = [trace_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        return self._query(sql + " ORDER BY started_at, span_id", params)

    def telemetry_around(self, model_id: str, at: datetime, window: timedelta) -> list[dict[str, Any]]:
        """Samples labelled with the model, plus unlabelled ones (e.g. NVML GPU samples) of the
        instances that served it in the window: GPU collectors do not know which model runs."""
        lo, hi = aware(at, "at") - window, at + window
        sql = (
            f"SELECT {', '.join(schema.TELEMETRY.names)} FROM telemetry WHERE ts BETWEEN ? AND ? "
            "AND (model_id = ? OR (model_id IS NULL AND instance IN "
            "(SELECT instance FROM telemetry WHERE ts BETWEEN ? AND ? AND model_id = ?))) "
            "ORDER BY ts, source, instance, gpu, metric"
        )
        return self._query(sql, [lo, hi, model_id, lo, hi, model_id])

    def stats(self, query: StatsQuery) -> list[dict[str, Any]]:
        """From the raw table or the rollups, as ``rollup.plan_stats`` decides (docs/store.md)."""
        plan = rollup.plan_stats(query)
        if plan.raw:
            sql, params = stats_sql(query)
            bucketed = query.resolution is not None
            return [stats_row(raw, query.group_by, bucketed) for raw in self._query(sql, params)]
        sql, params, keys = rollup_stats_sql(query, plan)
        with self._use(writing=False) as con:  # Arrow straight to numpy: no Python object per bucket
            table = _unordered(con, sql, params)
        return rollup.stats_rows(merged_rows(table, keys, rollup.QUANTILES), query, plan.source)

    # -- retention ------------------------------------------------------------------------------

    def apply_retention(self, now: datetime, policy: RetentionPolicy) -> dict[str, int]:
        """Delete rows past each table's retention, then request content and request text past
        ``text_days`` (or the tenant's override): ``request_content`` rows go, request text and the
        judge's explanations are nulled.

        Rollups go after ``rollups_days`` (a period goes when its start is past the cutoff), once
        their partial rows are compacted; request rollups never before ``requests_days``, as stats
        read them in place of the raw rows. Deleted space is reused by later inserts; the file
        itself does not shrink.
        """
        aware(now, "now")
        removed: dict[str, int] = {}
        with self._use(writing=True) as con:
            self._maintain(con, force=True)
            kept = {r.name: max(policy.rollups_days, policy.requests_days) for r in schema.ROLLUPS}
            for name in (*kept, correlation_rollup.TABLE):  # correlation hours fall back to raw rows
                cutoff = now - timedelta(days=kept.get(name, policy.rollups_days))
                removed[name] = int(run(con, f"DELETE FROM {name} WHERE period_start < ?", [cutoff])[0][0])
            for table, days_field in _RETENTION:
                cutoff = now - timedelta(days=getattr(policy, days_field))
                column = schema.TABLES[table].time_column
                removed[table] = int(run(con, f"DELETE FROM {table} WHERE {column} < ?", [cutoff])[0][0])
            removed["request_content"] = _past_text_days(con, _DELETE_CONTENT, now, policy)
            removed["requests_text"] = _past_text_days(con, _NULL_TEXT, now, policy)
            removed["eval_results_text"] = _past_text_days(con, _NULL_JUDGE_TEXT, now, policy)
        return removed

    def compact(self, keep_backup: bool = False) -> CompactReport:
        """Rewrite the file without its free blocks and reopen it (``duckdb_compact``, docs/store.md)."""
        from infersight.store.duckdb_compact import compact_open_store

        return compact_open_store(self, keep_backup)

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            try:
                if self._pending or self._dirty:
                    self._maintain(self._write, force=True)
            except duckdb.Error:  # pending and partial rows stay correct, only less compact
                log.exception("rollup maintenance at close failed")
            self._closed = True
            self._read.close()
            self._write.close()


def _dicts(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``sql`` on ``con`` as dicts (through Arrow, like ``_query``)."""
    rel = con.sql(sql, params=params)
    if rel is None:
        return []
    table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


_COUNTS_SQL = (
    "SELECT period_start AS p, sum(requests) AS n FROM request_rollups_1h WHERE period_start >= $lo "
    "AND period_start < $hi GROUP BY period_start UNION ALL "
    "SELECT time_bucket(INTERVAL 1 HOUR, started_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS p, count(*) AS n "
    "FROM request_rollups_pending WHERE started_at >= $lo AND started_at < $hi GROUP BY p"
)


def _hourly_counts(reader: telemetry_sql.Reader) -> correlation_rollup.Counts:
    """Requests per hour from the hourly rollups plus the rows not folded yet: exact, and cheap."""

    def counts(lo: datetime, hi: datetime) -> dict[datetime, int]:
        out: dict[datetime, int] = {}
        for row in reader.run(_COUNTS_SQL, {"lo": lo, "hi": hi}):
            p = correlation_rollup.aware_utc(row["p"])
            out[p] = out.get(p, 0) + int(row["n"])
        return out

    return counts
