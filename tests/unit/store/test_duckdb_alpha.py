"""DuckDB: the schema step that moves stored sketches from 0.5% to 1% buckets (``duckdb_rollup.to_alpha``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from infersight.store import schema
from infersight.store.arrow import records_to_arrow
from infersight.store.duckdb_rollup import _v2_remap_sql
from infersight.store.duckdb_schema import MIGRATIONS, migrate, run
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.sketch import ZERO_INDEX, v2_index
from tests.contract.test_store_rollups import assert_matches_exact, dataset
from tests.unit.store.test_duckdb_rollups import WINDOWS

STEP = next(m.version for m in MIGRATIONS if m.apply.__name__ == "_v5")  # to_alpha, after missing rollups


def sketches(con: duckdb.DuckDBPyConnection) -> dict[tuple[Any, ...], list[dict[int, int] | None]]:
    """Every stored sketch, by table and key."""
    out = {}
    for r in schema.ROLLUPS:
        names = ", ".join(n for n, _, _ in schema.ROLLUP_SKETCHES)
        sql = f"SELECT epoch_us(period_start), tenant_id, model_id, use_case, backend, {names} FROM {r.name}"
        for row in run(con, sql):
            out[(r.name, *row[:5])] = list(row[5:])
    return out


def remapped(old: dict[int, int] | None) -> dict[int, int] | None:
    if old is None:
        return None
    new: dict[int, int] = {}
    for k, c in old.items():
        new[v2_index(k)] = new.get(v2_index(k), 0) + c
    return new


def test_step_2_sketches_move_to_the_new_buckets_losslessly(tmp_path: Path) -> None:
    path = str(tmp_path / "v4.duckdb")
    con = duckdb.connect(path)
    assert migrate(con, MIGRATIONS[:1]) == 1
    con.register("batch", records_to_arrow(dataset(n=1500)))
    run(con, "INSERT INTO requests SELECT * FROM batch")
    assert migrate(con, MIGRATIONS[:STEP - 1]) == STEP - 1  # step 2 backfilled 0.5% sketches
    before = sketches(con)
    con.close()
    store = DuckDBStore(path)
    try:
        assert store.migrate() == schema.SCHEMA_VERSION
        with store._use(writing=False) as c:
            after = sketches(c)
        assert after.keys() == before.keys() and len(after) > 100 and after != before
        assert all(after[k] == [remapped(s) for s in before[k]] for k in before)
        for window in WINDOWS:
            assert {r["source"] for r in assert_matches_exact(store, **window)} != {"raw"}
        store.write_requests(dataset(n=1600)[1500:])  # new rows go in at the new accuracy, next to the old
        store.compact_rollups()
        assert_matches_exact(store, **WINDOWS[0])
    finally:
        store.close()


def test_the_remap_sql_merges_neighbours_and_keeps_zero_and_null() -> None:
    con = duckdb.connect()
    try:
        rows = run(con, f"SELECT {_v2_remap_sql('m')} FROM (SELECT MAP([3::SMALLINT, -2, 1, -3, {ZERO_INDEX}, 2, 10], "
                        f"[1::BIGINT, 2, 4, 8, 16, 32, 64]) AS m UNION ALL SELECT NULL UNION ALL SELECT MAP([], []))")
    finally:
        con.close()
    got = sorted(rows, key=lambda r: -1 if r[0] is None else len(r[0]))
    assert got[0][0] is None and got[1][0] == {}
    assert got[2][0] == {-1: 10, 1: 36, 2: 1, 5: 64, ZERO_INDEX: 16}
