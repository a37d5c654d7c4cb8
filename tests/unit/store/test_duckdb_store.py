"""DuckDB-specific behaviour the contract suite cannot see: file ownership, reopening, threads, SQL shape."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from infersight.model import RequestRecord
from infersight.store import schema
from infersight.store.base import RequestFilter, StatsQuery, StoreError, StoreUnavailable
from infersight.store.duckdb_store import DuckDBStore

T0 = datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc)
HOLD = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


def rec(i: int, at: datetime = T0) -> RequestRecord:
    return RequestRecord(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m1",
                         backend="sim", started_at=at.isoformat(), status_code=200, ttft_ms=float(i))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(str(tmp_path / "x.duckdb"))
    s.migrate()
    yield s
    s.close()


def test_a_file_locked_by_another_process_is_unavailable_with_a_clear_message(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.duckdb")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreUnavailable) as err:
            DuckDBStore(path)
        message = str(err.value)
        assert path in message and "only one process may own it" in message
        assert f"PID {holder.pid}" in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    DuckDBStore(path).close()  # free again once the holder is gone


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "p.duckdb")
    first = DuckDBStore(path)
    first.migrate()
    first.write_requests([rec(1), rec(2)])
    first.close()
    again = DuckDBStore(path)
    try:
        assert again.migrate() == schema.SCHEMA_VERSION
        assert again.count_requests(RequestFilter()) == 2
        assert again.write_requests([rec(2)]) == 0
    finally:
        again.close()


def test_naive_datetimes_are_refused(store: DuckDBStore) -> None:
    with pytest.raises(StoreError, match="timezone-aware"):
        store.list_requests(RequestFilter(since=datetime(2026, 11, 22)))
    with pytest.raises(StoreError, match="timezone-aware"):
        store.stats(StatsQuery(since=datetime(2026, 11, 22), until=datetime(2026, 11, 23)))
    with pytest.raises(StoreError, match="timezone-aware"):
        store.telemetry_around("m1", datetime(2026, 11, 22), timedelta(seconds=1))


def test_stats_refuses_a_repeated_group_column_and_a_zero_resolution(store: DuckDBStore) -> None:
    with pytest.raises(StoreError):
        store.stats(StatsQuery(since=T0, until=T0 + timedelta(hours=1), group_by=("tenant_id", "tenant_id")))
    with pytest.raises(StoreError):
        store.stats(StatsQuery(since=T0, until=T0 + timedelta(hours=1), resolution=timedelta(0)))


def test_write_rows_does_not_take_requests(store: DuckDBStore) -> None:
    with pytest.raises(StoreError, match="write_rows takes one of"):
        store.write_rows("requests", [{"trace_id": "x"}])


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    s = DuckDBStore(str(tmp_path / "c.duckdb"))
    s.migrate()
    s.close()
    s.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        s.count_requests(RequestFilter())


def test_sql_errors_become_store_errors(store: DuckDBStore) -> None:
    store._write.execute("DROP TABLE telemetry")  # a schema mismatch, as after a bad manual edit
    with pytest.raises(StoreError, match="telemetry"):
        store.write_rows("telemetry", [{"ts": T0, "source": "nvml", "instance": "h", "metric": "m", "value": 1.0}])


def test_the_ingester_writes_while_the_api_reads(store: DuckDBStore) -> None:
    errors: list[BaseException] = []
    batches = [[rec(b * 500 + i, T0 + timedelta(seconds=b)) for i in range(500)] for b in range(20)]

    def write() -> None:
        try:
            for batch in batches:
                store.write_requests(batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(50):
                store.list_requests(RequestFilter(), limit=10)
                store.stats(StatsQuery(since=T0, until=T0 + timedelta(hours=1), group_by=("model_id",)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert store.count_requests(RequestFilter()) == 10_000
