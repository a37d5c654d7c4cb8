"""DuckDB rollups: compaction of partial rows, the v1 -> v2 upgrade, and SQL/Python index agreement."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from infersight.store import schema
from infersight.store.arrow import records_to_arrow
from infersight.store.base import StatsQuery
from infersight.store.duckdb_rollup import PENDING, index_sql
from infersight.store.duckdb_schema import MIGRATIONS, migrate, run
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.sketch import DDSketch
from tests.contract.test_store_rollups import END, SINCE, START, UNTIL, assert_matches_exact, dataset

WINDOWS: list[dict[str, Any]] = [
    dict(since=SINCE, until=UNTIL),
    dict(since=SINCE, until=UNTIL, group_by=("tenant_id", "use_case"), resolution=timedelta(hours=1)),
    dict(since=START, until=END, group_by=("model_id",), resolution=timedelta(minutes=30)),
]


def rows_per_table(store: DuckDBStore) -> dict[str, tuple[int, int]]:
    """(stored rows, distinct keys) per rollup table."""
    out = {}
    for r in schema.ROLLUPS:
        (row,) = store._query(
            f"SELECT count(*) AS n, count(DISTINCT (period_start, tenant_id, model_id, use_case, backend)) AS k "
            f"FROM {r.name}", [],
        )
        out[r.name] = (row["n"], row["k"])
    return out


def answers(store: DuckDBStore) -> list[list[dict[str, Any]]]:
    return [store.stats(StatsQuery(**w)) for w in WINDOWS]


def same(a: list[list[dict[str, Any]]], b: list[list[dict[str, Any]]]) -> bool:
    """Equal, up to float sums added in another order."""
    def norm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return all(x == norm(y) for x, y in zip(a, b, strict=True))


def test_compaction_merges_partial_rows_and_changes_no_answer(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "r.duckdb"), fold_every_s=0, compact_every_s=3600)
    try:
        store.migrate()
        records = dataset(n=1500)
        random.Random(5).shuffle(records)
        for start in range(0, len(records), 100):
            store.write_requests(records[start:start + 100])
        before = rows_per_table(store)
        assert all(n > k for n, k in before.values()), before  # partial rows from many batches
        answered = answers(store)
        removed = store.compact_rollups()
        after = rows_per_table(store)
        assert all(n == k for n, k in after.values()), after
        assert removed == sum(n for n, _ in before.values()) - sum(n for n, _ in after.values())
        assert same(answers(store), answered)
        assert store.compact_rollups() == 0  # nothing new to merge
        assert store.write_requests(records[:500]) == 0  # redelivered after compaction: still nothing counted twice
        for window in WINDOWS:
            assert_matches_exact(store, **window)
    finally:
        store.close()


def test_the_writer_compacts_by_itself(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "r.duckdb"), fold_every_s=0, compact_every_s=0)  # after every write
    try:
        store.migrate()
        records = dataset(n=400)
        for start in range(0, len(records), 50):
            store.write_requests(records[start:start + 50])
        assert all(n == k for n, k in rows_per_table(store).values())
        assert_matches_exact(store, **WINDOWS[1])
    finally:
        store.close()


def test_closing_compacts_what_was_written(tmp_path: Path) -> None:
    path = str(tmp_path / "r.duckdb")
    store = DuckDBStore(path, fold_every_s=0, compact_every_s=3600)
    store.migrate()
    for start in range(0, 300, 20):
        store.write_requests(dataset(n=300)[start:start + 20])
    store.close()
    again = DuckDBStore(path)
    try:
        assert all(n == k for n, k in rows_per_table(again).values())
    finally:
        again.close()


def pending(store: DuckDBStore) -> int:
    return int(store._query(f"SELECT count(*) AS n FROM {PENDING}", [])[0]["n"])


def test_rows_not_yet_folded_are_in_every_answer(tmp_path: Path) -> None:
    path = str(tmp_path / "r.duckdb")
    store = DuckDBStore(path, fold_every_s=3600, compact_every_s=3600)
    store.migrate()
    records = dataset(n=900)
    store.write_requests(records[:300])  # the first write folds (rows a crash may have left)
    store.write_requests(records[300:])
    assert pending(store) == 600
    answered = answers(store)
    for window in WINDOWS:
        assert_matches_exact(store, **window)
    store.compact_rollups()
    assert pending(store) == 0
    assert same(answers(store), answered)
    store.write_requests(dataset(n=1000)[900:])
    store._pending, store._dirty = 0, None  # as if the process died: close() has nothing to do
    store.close()
    again = DuckDBStore(path, fold_every_s=3600)
    try:
        assert pending(again) == 100  # committed with the requests, so a crash loses nothing
        assert_matches_exact(again, **WINDOWS[0])
        again.write_requests([])
        again.write_requests(dataset(n=1001)[1000:])  # the first write of a process folds
        assert pending(again) == 0
        assert_matches_exact(again, **WINDOWS[0])
    finally:
        again.close()


def test_a_version_1_file_is_upgraded_and_its_requests_rolled_up(tmp_path: Path) -> None:
    path = str(tmp_path / "v1.duckdb")
    records = dataset(n=1200)
    con = duckdb.connect(path)
    assert migrate(con, MIGRATIONS[:1]) == 1
    batch = records_to_arrow(records)
    con.register("batch", batch)
    run(con, "INSERT INTO requests SELECT * FROM batch")
    con.close()
    store = DuckDBStore(path)
    try:
        assert store.schema_version() == 1
        assert store.migrate() == schema.SCHEMA_VERSION
        assert all(n == k > 0 for n, k in rows_per_table(store).values())  # one compact row per key
        for window in WINDOWS:
            rows = assert_matches_exact(store, **window)
            assert {r["source"] for r in rows} != {"raw"}
        assert store.write_requests(records[:100]) == 0  # already there: the backfill is not added to
        assert_matches_exact(store, **WINDOWS[0])
    finally:
        store.close()


def test_the_sql_bucket_index_is_the_sketchs() -> None:
    rng = random.Random(9)
    values = [0.0, -1.0, 1e-3, 1.0001e-3, 0.5, 1.0, 2.0, 1e6, math.inf]
    values += [rng.lognormvariate(3, 2.5) for _ in range(5000)]
    con = duckdb.connect()
    try:
        got = run(con, f"SELECT {index_sql('x')} FROM unnest(?::DOUBLE[]) WITH ORDINALITY AS t(x, i) ORDER BY i",
                  [values])
    finally:
        con.close()
    sketch = DDSketch()
    assert [g for (g,) in got] == [sketch.index(v) for v in values]
    con = duckdb.connect()
    try:
        assert run(con, f"SELECT {index_sql('x')} FROM (SELECT 'nan'::DOUBLE AS x UNION ALL SELECT NULL)") == [
            (None,), (None,)]
    finally:
        con.close()
