"""DuckDB migrations: ordered steps keyed by version, each applied once, atomically."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from infersight.store import schema
from infersight.store.base import StoreError
from infersight.store.duckdb_schema import MIGRATIONS, Migration, current_version, migrate, run
from infersight.store.duckdb_store import DuckDBStore


def add_column(con: duckdb.DuckDBPyConnection) -> None:
    run(con, "ALTER TABLE telemetry ADD COLUMN unit VARCHAR")


NOW = schema.SCHEMA_VERSION
NEXT = NOW + 1
V_NEXT = (*MIGRATIONS, Migration(NEXT, "telemetry.unit", add_column))


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(tmp_path / "m.duckdb"))
    yield c
    c.close()


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in run(con, f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'")]


def test_a_new_file_gets_every_table(con: duckdb.DuckDBPyConnection) -> None:
    assert current_version(con) == 0
    assert migrate(con) == schema.SCHEMA_VERSION
    for table in schema.TABLES.values():
        assert columns(con, table.name) == list(table.names)
    assert run(con, "SELECT version, description FROM schema_version ORDER BY version") == [
        (m.version, m.description) for m in MIGRATIONS
    ]


def test_migrating_twice_is_a_no_op(con: duckdb.DuckDBPyConnection) -> None:
    migrate(con)
    run(con, "INSERT INTO telemetry (ts, source, instance, metric, value) VALUES (now(), 'nvml', 'h', 'm', 1)")
    assert migrate(con) == NOW
    assert run(con, "SELECT count(*) FROM schema_version") == [(len(MIGRATIONS),)]
    assert run(con, "SELECT count(*) FROM telemetry") == [(1,)]


def test_an_older_file_is_upgraded_step_by_step(con: duckdb.DuckDBPyConnection) -> None:
    assert migrate(con) == NOW
    run(con, "INSERT INTO telemetry (ts, source, instance, metric, value) VALUES (now(), 'nvml', 'h', 'm', 1)")
    assert migrate(con, V_NEXT) == NEXT
    assert columns(con, "telemetry")[-1] == "unit"
    assert run(con, "SELECT count(*), count(unit) FROM telemetry") == [(1, 0)]
    assert [v for v, in run(con, "SELECT version FROM schema_version ORDER BY version")] == [*range(1, NEXT + 1)]
    assert migrate(con, V_NEXT) == NEXT


def test_a_version_3_file_gains_request_content(con: duckdb.DuckDBPyConnection) -> None:
    assert migrate(con, MIGRATIONS[:3]) == 3
    assert columns(con, "request_content") == []
    run(con, "INSERT INTO telemetry (ts, source, instance, metric, value) VALUES (now(), 'nvml', 'h', 'm', 1)")
    assert migrate(con, MIGRATIONS[:4]) == 4
    assert columns(con, "request_content") == list(schema.REQUEST_CONTENT.names)
    assert run(con, "SELECT count(*) FROM telemetry") == [(1,)]


def test_a_version_8_file_gains_requests_trace_flags(con: duckdb.DuckDBPyConnection) -> None:
    """Step 9 adds the column to a file written before it (step 1 builds today's table, so drop it first)."""
    assert migrate(con, MIGRATIONS[:8]) == 8
    run(con, "ALTER TABLE requests DROP COLUMN trace_flags")
    run(con, "INSERT INTO requests (trace_id, span_id, tenant_id, model_id, started_at, status_code) "
             "VALUES ('t', 's', 'acme', 'm', now(), 200)")
    assert migrate(con, MIGRATIONS[:9]) == 9
    assert columns(con, "requests") == list(schema.REQUESTS.names)
    assert run(con, "SELECT trace_id, trace_flags FROM requests") == [("t", None)]


def test_a_new_file_runs_all_steps_in_order(con: duckdb.DuckDBPyConnection) -> None:
    assert migrate(con, V_NEXT) == NEXT
    assert "unit" in columns(con, "telemetry")


def test_a_failing_step_leaves_the_previous_version(con: duckdb.DuckDBPyConnection) -> None:
    def half_done(c: duckdb.DuckDBPyConnection) -> None:
        run(c, "CREATE TABLE half (x INTEGER)")
        run(c, "SELECT * FROM no_such_table")

    migrate(con)
    with pytest.raises(duckdb.Error):
        migrate(con, (*MIGRATIONS, Migration(NEXT, "broken", half_done)))
    assert current_version(con) == NOW
    assert columns(con, "half") == []  # rolled back with the version row


def test_a_file_from_newer_code_is_refused(con: duckdb.DuckDBPyConnection) -> None:
    migrate(con, V_NEXT)
    with pytest.raises(StoreError, match="newer than this code"):
        migrate(con)


@pytest.mark.parametrize("versions", [(2, 1), (1, 1), (0,)])
def test_step_lists_must_be_ascending_and_unique(con: duckdb.DuckDBPyConnection, versions: tuple[int, ...]) -> None:
    steps = [Migration(v, "x", lambda c: None) for v in versions]
    with pytest.raises(StoreError):
        migrate(con, steps)


def test_the_store_migrates_through_the_same_steps(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    try:
        assert store.schema_version() == 0
        assert store.migrate() == store.migrate() == schema.SCHEMA_VERSION
        assert store.schema_version() == schema.SCHEMA_VERSION
    finally:
        store.close()
