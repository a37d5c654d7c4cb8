"""Idempotency on ClickHouse: the write-side probe, and ReplacingMergeTree + FINAL behind it.

A duplicate can still reach the table when two writers race on the same batch (both probe, both
find nothing, both insert). These tests put such a duplicate in directly, through the executor,
and check that every read still sees one row.
"""

from __future__ import annotations

from datetime import timedelta

from infersight.store import schema
from infersight.store.arrow import records_to_arrow, rows_to_arrow
from infersight.store.base import RequestFilter, StatsQuery
from infersight.store.clickhouse_store import ClickHouseStore
from tests.unit.store_clickhouse.helpers import T0, rec


def raw_count(store: ClickHouseStore, table: str) -> int:
    """Physical rows, without FINAL: what a careless read would count."""
    return int(store._exec.query(f"SELECT count() AS n FROM infersight.{table}").to_pylist()[0]["n"])


def test_a_raced_duplicate_is_invisible_to_every_read(store: ClickHouseStore) -> None:
    records = [rec(i, T0 + timedelta(seconds=i), ttft_ms=float(i)) for i in range(10)]
    assert store.write_requests(records) == 10
    store._exec.insert("infersight", "requests", records_to_arrow(records[3:5]))  # the race
    assert raw_count(store, "requests") == 12

    assert store.count_requests(RequestFilter()) == 10
    assert len(store.get_requests(records[3].trace_id)) == 1
    listed = store.list_requests(RequestFilter(), limit=100).data
    assert len(listed) == 10 and len({r["trace_id"] for r in listed}) == 10
    (row,) = store.stats(StatsQuery(since=T0, until=T0 + timedelta(hours=1)))
    assert row["requests"] == 10 and row["ttft_ms_p50"] == 4.5


def test_merges_collapse_duplicates_physically(store: ClickHouseStore) -> None:
    records = [rec(i, T0) for i in range(4)]
    store.write_requests(records)
    store._exec.insert("infersight", "requests", records_to_arrow(records))
    store._exec.command("OPTIMIZE TABLE infersight.requests FINAL")
    assert raw_count(store, "requests") == 4


def test_write_returns_only_rows_that_are_new(store: ClickHouseStore) -> None:
    batch = [rec(i, T0 + timedelta(seconds=i)) for i in range(6)]
    assert store.write_requests(batch[:3]) == 3
    assert store.write_requests(batch + batch[:2]) == 3
    assert store.write_requests(batch) == 0
    assert raw_count(store, "requests") == 6


def test_the_same_ids_under_another_tenant_are_another_row(store: ClickHouseStore) -> None:
    # The probe and the sorting key are per tenant: one tenant's ids can never hide another's row.
    store.write_requests([rec(1, T0, tenant="acme")])
    assert store.write_requests([rec(1, T0, tenant="globex")]) == 1
    assert store.count_requests(RequestFilter()) == 2
    assert [r["tenant_id"] for r in store.get_requests(f"{1:032x}", tenant_id="globex")] == ["globex"]


def test_rows_of_other_tables_are_idempotent_too(store: ClickHouseStore) -> None:
    eval_row = {
        "trace_id": "a" * 32, "span_id": None, "tenant_id": "acme", "evaluator": "judge", "evaluator_version": "v1",
        "dimension": "faithfulness", "score": 0.8, "evaluated_at": T0,
    }
    sample = {"ts": T0, "source": "nvml", "instance": "gpu-host-1", "gpu": None, "metric": "gpu_util", "value": 0.5}
    cost = {
        "period_start": T0, "period": "hour", "tenant_id": "acme", "model_id": None, "use_case": None,
        "kind": "tokens", "amount": 1.25, "currency": "USD", "pricing_version": None,
    }
    for table, row in (("eval_results", eval_row), ("telemetry", sample), ("cost_lines", cost)):
        assert store.write_rows(table, [row, dict(row)]) == 1, table  # NULLs in the key compare equal
        assert store.write_rows(table, [row]) == 0, table
        store._exec.insert("infersight", table, rows_to_arrow(schema.TABLES[table], [row]))
        assert raw_count(store, table) == 2
    assert len(store.eval_results_for("a" * 32)) == 1
    assert len(store.telemetry_around("m1", T0, timedelta(minutes=1))) == 0  # no model label, no instance of m1
    sample_m1 = dict(sample, metric="kv_cache_usage", model_id="m1", source="vllm")
    store.write_rows("telemetry", [sample_m1])
    assert [r["metric"] for r in store.telemetry_around("m1", T0, timedelta(minutes=1))] == ["gpu_util", "kv_cache_usage"]
