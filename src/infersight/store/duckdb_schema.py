"""DuckDB DDL and migrations: an ordered list of steps keyed by schema version.

Each step runs in its own transaction together with the row that records it in ``schema_version``,
so a crash mid-upgrade leaves the file at the previous version, never half-way. To change a table:
bump ``schema.SCHEMA_VERSION`` and append a ``Migration`` here (and in the ClickHouse backend).

No indexes: an ART index (what PRIMARY KEY builds) slows every insert and lives in memory, while
DuckDB's per-row-group min/max zone maps already prune ``started_at`` ranges, which is the filter
every read and every idempotency check starts from (docs/store.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from infersight.store import correlation_rollup, schema
from infersight.store.base import StoreError
from infersight.store.duckdb_rollup import V2_LN_GAMMA, create_pending_sql, insert_rollups_sql, to_alpha
from infersight.store.duckdb_rollup import create_table_sql as create_rollup_sql

SQL_TYPES = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "ts": "TIMESTAMPTZ"}


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]


def run(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Execute and fetch everything: DuckDB 2 refuses new work on a connection with unread results."""
    return con.execute(sql, params).fetchall()


def create_table_sql(table: schema.Table) -> str:
    cols = ", ".join(
        f"{name} {SQL_TYPES[kind]}{' NOT NULL' if name in table.required else ''}" for name, kind in table.columns
    )
    return f"CREATE TABLE IF NOT EXISTS {table.name} ({cols})"


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    for table in (schema.REQUESTS, schema.EVAL_RESULTS, schema.TELEMETRY, schema.COST_LINES):
        run(con, create_table_sql(table))


def _v2(con: duckdb.DuckDBPyConnection) -> None:
    """The rollup tables, backfilled from the requests already stored (one compact row per key)."""
    run(con, create_pending_sql())
    for rollup in schema.ROLLUPS:
        run(con, create_rollup_sql(rollup))
        run(con, f"DELETE FROM {rollup.name}")  # the step is all or nothing, but be sure of a clean slate
        run(con, insert_rollups_sql(rollup, "requests", V2_LN_GAMMA))  # step 2's sketches: step 5 converts


def _v5(con: duckdb.DuckDBPyConnection) -> None:
    """Step 5 (``to_alpha``), after creating the rollups an early step 2 lacked: the first builds'
    step 2 made only the minute, hour and day rollups, so a file they wrote had no six-hour or week
    rollup here (backfilled as step 2 does today, then converted with the others)."""
    present = {row[0] for row in run(con, "SELECT table_name FROM information_schema.tables")}
    for rollup in schema.ROLLUPS:
        if rollup.name not in present:
            run(con, create_rollup_sql(rollup))
            run(con, insert_rollups_sql(rollup, "requests", V2_LN_GAMMA))
    to_alpha(con)


def _v3(con: duckdb.DuckDBPyConnection) -> None:
    """eval_results.use_case: quality is reported per use case (a no-op on a file created at v3)."""
    run(con, "ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS use_case VARCHAR")


def _v4(con: duckdb.DuckDBPyConnection) -> None:
    """request_content: the masked text the eval worker receives, kept per the content policy."""
    run(con, create_table_sql(schema.REQUEST_CONTENT))


def _v6(con: duckdb.DuckDBPyConnection) -> None:
    """telemetry's key gains model_id: nothing to do here, DuckDB's dedupe reads ``schema.TELEMETRY.key``."""


def _v7(con: duckdb.DuckDBPyConnection) -> None:
    """requests.instance and engine_inference_ms: which engine instance served, and its compute time."""
    run(con, "ALTER TABLE requests ADD COLUMN IF NOT EXISTS instance VARCHAR")
    run(con, "ALTER TABLE requests ADD COLUMN IF NOT EXISTS engine_inference_ms DOUBLE")


def _v8(con: duckdb.DuckDBPyConnection) -> None:
    """Hourly correlation rollups (``correlation_rollup``): built from the raw rows by the writer."""
    run(con, correlation_rollup.duckdb_create_sql())


def _v9(con: duckdb.DuckDBPyConnection) -> None:
    """requests.trace_flags: whether the caller sampled the trace, so unsampled spans are not exported."""
    run(con, "ALTER TABLE requests ADD COLUMN IF NOT EXISTS trace_flags VARCHAR")


def _v10(con: duckdb.DuckDBPyConnection) -> None:
    """eval_results.representative: whether the row's request was sampled whatever its outcome (drift)."""
    run(con, "ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS representative BOOLEAN")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "requests, eval_results, telemetry, cost_lines", _v1),
    Migration(2, "request rollups per minute, hour, six hours, day and week", _v2),
    Migration(3, "eval_results.use_case", _v3),
    Migration(4, "request_content", _v4),
    Migration(5, "rollup sketches at 1% relative accuracy (half the buckets)", _v5),
    Migration(6, "telemetry key includes model_id", _v6),
    Migration(7, "requests.instance, requests.engine_inference_ms", _v7),
    Migration(8, "hourly correlation rollups", _v8),
    Migration(9, "requests.trace_flags", _v9),
    Migration(10, "eval_results.representative", _v10),
)

_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER NOT NULL, description VARCHAR, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The highest applied version; 0 for a new file."""
    if not run(con, "SELECT 1 FROM information_schema.tables WHERE table_name = 'schema_version'"):
        return 0
    return int(run(con, "SELECT coalesce(max(version), 0) FROM schema_version")[0][0])


def migrate(con: duckdb.DuckDBPyConnection, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every step above the file's version, in order; returns the version now in place.

    A file written by newer code (a version above the last step) is refused rather than guessed at.
    """
    versions = [s.version for s in steps]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise StoreError(f"migration versions must be unique, ascending and >= 1: {versions}")
    run(con, _VERSION_DDL)
    have = current_version(con)
    target = versions[-1] if versions else 0
    if have > target:
        raise StoreError(f"the database is at schema version {have}, newer than this code ({target}); upgrade infersight")
    for step in steps:
        if step.version <= have:
            continue
        run(con, "BEGIN TRANSACTION")
        try:
            step.apply(con)
            run(con, "INSERT INTO schema_version (version, description) VALUES (?, ?)", [step.version, step.description])
            run(con, "COMMIT")
        except BaseException:
            run(con, "ROLLBACK")
            raise
        have = step.version
    return have
