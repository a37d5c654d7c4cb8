"""ClickHouse rollups: tables, views, TTL, background merges, the v1 -> v2 upgrade, index agreement."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from infersight.store import schema
from infersight.store.base import RetentionPolicy, StatsQuery
from infersight.store.clickhouse_exec import ChdbExecutor
from infersight.store.clickhouse_rollup import index_sql
from infersight.store.clickhouse_schema import MIGRATIONS
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.sketch import DDSketch
from tests.contract.test_store_rollups import SINCE, UNTIL, assert_matches_exact, dataset
from tests.unit.store_clickhouse.helpers import show_create

WINDOWS: list[dict[str, Any]] = [
    dict(since=SINCE, until=UNTIL, group_by=("tenant_id", "model_id")),
    dict(since=SINCE, until=UNTIL, group_by=("use_case",), resolution=timedelta(hours=1)),
]


def rows_and_keys(store: ClickHouseStore, table: str) -> tuple[int, int]:
    (row,) = store._exec.query(
        f"SELECT count() AS n, uniqExact(tuple(period_start, tenant_id, model_id, use_case, backend)) AS k "
        f"FROM {store.database}.{table}"
    ).to_pylist()
    return int(row["n"]), int(row["k"])


def test_rollup_tables_aggregate_and_expire_after_rollups_days(store: ClickHouseStore) -> None:
    views = {r["name"]: r["engine"] for r in store._exec.query(
        "SELECT name, engine FROM system.tables WHERE database = 'infersight'").to_pylist()}
    for rollup in schema.ROLLUPS:
        ddl = show_create(store, rollup.name)
        assert "ENGINE = AggregatingMergeTree" in ddl
        assert "SimpleAggregateFunction(sumMap, Map(Int16, UInt64))" in ddl
        assert f"TTL period_start + toIntervalDay({RetentionPolicy().rollups_days})" in ddl
        assert views[f"{rollup.name}_mv"] == "MaterializedView"


def test_a_changed_rollup_retention_reaches_the_ttl(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    s = ClickHouseStore.embedded(path)
    s.migrate()
    s.close()
    s = ClickHouseStore.embedded(path, retention=RetentionPolicy(requests_days=30, rollups_days=30))
    try:
        s.migrate()
        for rollup in schema.ROLLUPS:
            assert "TTL period_start + toIntervalDay(30)" in show_create(s, rollup.name)
    finally:
        s.close()


def test_background_merges_collapse_partials_and_change_no_answer(store: ClickHouseStore) -> None:
    records = dataset(n=1200)
    random.Random(2).shuffle(records)
    for start in range(0, len(records), 40):
        store.write_requests(records[start:start + 40])
    before = [store.stats(StatsQuery(**w)) for w in WINDOWS]
    assert all(n > k for n, k in (rows_and_keys(store, r.name) for r in schema.ROLLUPS))
    for rollup in schema.ROLLUPS:
        store._exec.command(f"OPTIMIZE TABLE infersight.{rollup.name} FINAL")
        n, k = rows_and_keys(store, rollup.name)
        assert n == k
    after = [store.stats(StatsQuery(**w)) for w in WINDOWS]
    for a, b in zip(after, before, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x["requests"] == y["requests"] and x["ttft_ms_p99"] == y["ttft_ms_p99"]
    for window in WINDOWS:
        assert_matches_exact(store, **window)


def test_a_version_1_database_is_upgraded_and_backfilled(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    records = dataset(n=1000)
    old = ClickHouseStore(ChdbExecutor(path), migrations=MIGRATIONS[:1], ttl_merges=False)
    try:
        assert old.migrate() == 1
        assert old.write_requests(records) == 1000
    finally:
        old.close()
    store = ClickHouseStore.embedded(path)
    try:
        assert store.schema_version() == 1
        assert store.migrate() == schema.SCHEMA_VERSION
        for rollup in schema.ROLLUPS:
            n, k = rows_and_keys(store, rollup.name)
            assert n == k > 0
        for window in WINDOWS:
            rows = assert_matches_exact(store, **window)
            assert {r["source"] for r in rows} != {"raw"}
        assert store.write_requests(records[:100]) == 0
        assert store.migrate() == schema.SCHEMA_VERSION  # a re-run adds nothing
        assert_matches_exact(store, **WINDOWS[0])
    finally:
        store.close()


def test_the_sql_bucket_index_is_the_sketchs(store: ClickHouseStore) -> None:
    rng = random.Random(9)
    values = [0.0, -1.0, 1e-3, 1.0001e-3, 0.5, 1.0, 2.0, 1e6, math.inf]
    values += [rng.lognormvariate(3, 2.5) for _ in range(5000)]
    (row,) = store._exec.query(
        f"SELECT arrayMap(x -> {index_sql('x')}, {{v:Array(Float64)}}) AS i", {"v": values}
    ).to_pylist()
    sketch = DDSketch()
    assert row["i"] == [sketch.index(v) for v in values]
