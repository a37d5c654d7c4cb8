"""ClickHouse: the schema step that rebuilds the rollups period-first with 1% sketches (``alpha_statements``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infersight.store import schema
from infersight.store.base import RetentionPolicy
from infersight.store.clickhouse_exec import ChdbExecutor
from infersight.store.clickhouse_rollup import ORDER_BY, ORDER_BY_V2, alpha_statements, granularity
from infersight.store.clickhouse_schema import MIGRATIONS
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.sketch import v2_index
from tests.contract.test_store_rollups import assert_matches_exact, dataset
from tests.unit.store_clickhouse.helpers import show_create
from tests.unit.store_clickhouse.test_rollups import WINDOWS

STEP = next(m.version for m in MIGRATIONS if m.statements is alpha_statements)


def sketches(store: ClickHouseStore) -> dict[tuple[Any, ...], list[dict[int, int]]]:
    """Every stored sketch (merged per key, as reads see it), by table and key."""
    out = {}
    names = ", ".join(f"sumMap({n}) AS {n}" for n, _, _ in schema.ROLLUP_SKETCHES)
    for r in schema.ROLLUPS:
        rows = store._exec.query(
            f"SELECT toString(period_start) AS p, tenant_id, model_id, use_case, backend, {names} "
            f"FROM {store.database}.{r.name} GROUP BY p, tenant_id, model_id, use_case, backend"
        ).to_pylist()
        for row in rows:
            key = (r.name, row["p"], row["tenant_id"], row["model_id"], row["use_case"], row["backend"])
            out[key] = [dict(row[n]) for n, _, _ in schema.ROLLUP_SKETCHES]
    return out


def remapped(old: dict[int, int]) -> dict[int, int]:
    new: dict[int, int] = {}
    for k, c in old.items():
        new[v2_index(k)] = new.get(v2_index(k), 0) + c
    return new


def sorting_key(store: ClickHouseStore, table: str) -> str:
    rows = store._exec.query(
        f"SELECT sorting_key FROM system.tables WHERE database = '{store.database}' AND name = '{table}'"
    ).to_pylist()
    return str(rows[0]["sorting_key"])


def test_step_4_rollups_are_rebuilt_losslessly_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    records = dataset(n=1500)
    old = ClickHouseStore(ChdbExecutor(path), migrations=MIGRATIONS[:STEP - 1], ttl_merges=False)
    try:
        assert old.migrate() == STEP - 1
        assert old.write_requests(records[:1000]) == 1000  # through the step-2 views: 0.5% sketches
        assert all(sorting_key(old, r.name) == ", ".join(ORDER_BY_V2) for r in schema.ROLLUPS)
        before = sketches(old)
    finally:
        old.close()
    store = ClickHouseStore.embedded(path)
    try:
        assert store.migrate() == schema.SCHEMA_VERSION
        after = sketches(store)
        assert after.keys() == before.keys() and len(after) > 100 and after != before
        assert all(after[k] == [remapped(s) for s in before[k]] for k in before)
        for r in schema.ROLLUPS:
            assert sorting_key(store, r.name) == ", ".join(ORDER_BY)
            assert f"index_granularity = {granularity(r)}" in show_create(store, r.name)
        for sql in alpha_statements(store.database, RetentionPolicy()):  # as after a crash before the version row
            store._exec.command(sql)
        assert sketches(store) == after
        assert store.write_requests(records) == 500  # the recreated views write 1% sketches
        for window in WINDOWS:
            assert {r["source"] for r in assert_matches_exact(store, **window)} != {"raw"}
    finally:
        store.close()
