"""ClickHouse rollup stats: the in-process read (merged maps, quantiles in numpy) and the server read
(order statistics in SQL) must give the same rows; ``Executor.in_process`` picks between them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest

from infersight.store import rollup
from infersight.store.base import StatsQuery
from infersight.store.clickhouse_exec import Params
from infersight.store.clickhouse_rollup import map_quantile_rows, quantile_rows, stats_sql
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.rollup_merge import row_quantiles
from infersight.store.sketch import ZERO_INDEX, quantiles_from_bins
from tests.contract.test_store_rollups import SINCE, UNTIL, dataset, write_shuffled

QUERIES: list[dict[str, Any]] = [
    dict(group_by=("tenant_id", "model_id")),
    dict(group_by=()),
    dict(group_by=("use_case", "backend"), resolution=timedelta(hours=1)),
    dict(group_by=("model_id",), resolution=timedelta(days=1), tenant_id="acme"),
    dict(group_by=("tenant_id",), use_case="chat", model_id="m2"),
]


class ServerLike:
    """A chdb executor that says it is remote, so the store takes the server's read path."""

    in_process = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        return self._inner.query(sql, params)

    def command(self, sql: str, params: Params | None = None) -> None:
        self._inner.command(sql, params)

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        self._inner.insert(database, table, data)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("shape", QUERIES)
def test_both_reads_give_the_same_rows(store: ClickHouseStore, shape: dict[str, Any]) -> None:
    write_shuffled(store, dataset(800))
    query = StatsQuery(since=SINCE, until=UNTIL, **shape)
    plan = rollup.plan_stats(query)
    assert not plan.raw and any(s.rollup is None for s in plan.segments)  # raw edges are read too
    sql, params = stats_sql(store.database, query, plan, order_stats=False)
    local = map_quantile_rows(store._exec.query(sql, params))
    sql, params = stats_sql(store.database, query, plan, order_stats=True)
    remote = quantile_rows(store._rows(sql, params))
    assert local
    assert_same_rows(local, [{k: v for k, v in b.items() if not k.endswith(("_n", "_b")) and not k.startswith("_cum")}
                             for b in remote])
    server = ClickHouseStore(ServerLike(store._exec), database=store.database)
    assert_same_rows(server.stats(query), store.stats(query))


def assert_same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal rows; floats up to summation order (the engine sums in parallel)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for name, value in w.items():
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                assert g[name] == pytest.approx(value, rel=1e-12), name
            else:
                assert g[name] == value, name


def test_an_empty_window_reads_nothing_on_either_path(store: ClickHouseStore) -> None:
    query = StatsQuery(since=SINCE, until=UNTIL, group_by=("tenant_id",))
    server = ClickHouseStore(ServerLike(store._exec), database=store.database)
    assert store.stats(query) == server.stats(query) == []
    total = store.stats(StatsQuery(since=SINCE, until=UNTIL))
    assert total == server.stats(StatsQuery(since=SINCE, until=UNTIL))
    assert total[0]["requests"] == 0 and total[0]["ttft_ms_p50"] is None


def test_row_quantiles_match_the_reference_per_row() -> None:
    rows = [{3: 2, 5: 1}, {}, None, {ZERO_INDEX: 4, 10: 1}, {-7: 1, 2: 0, 9: 5}]
    maps = pa.chunked_array([pa.array([None if r is None else list(r.items()) for r in rows],
                                      type=pa.map_(pa.int16(), pa.uint64()))])
    got = row_quantiles(maps, rollup.QUANTILES)
    for row, q in zip(rows, got, strict=True):
        want = quantiles_from_bins(list((row or {}).keys()), list((row or {}).values()), rollup.QUANTILES)
        assert q == pytest.approx(want, rel=1e-12) if want[0] is not None else q == want
