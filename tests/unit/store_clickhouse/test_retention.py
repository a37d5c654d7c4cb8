"""Retention on ClickHouse: the exact ``apply_retention`` pass, and the engine's own TTL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from infersight.store import schema
from infersight.store.base import RequestFilter, RetentionPolicy
from infersight.store.clickhouse_store import ClickHouseStore
from tests.unit.store_clickhouse.helpers import T0, at, rec


def texts(store: ClickHouseStore) -> dict[str, tuple[str | None, str | None]]:
    rows = store.list_requests(RequestFilter(), limit=1000).data
    return {r["tenant_id"] + ":" + r["trace_id"][-2:]: (r["prompt_text"], r["completion_text"]) for r in rows}


def test_apply_retention_is_exact_relative_to_now(store: ClickHouseStore) -> None:
    records = [rec(i, at(d), prompt_text="p", completion_text="c") for i, d in enumerate([0, 10, 31, 89, 91, 200])]
    store.write_requests(records)
    store.write_rows("telemetry", [
        {"ts": at(d), "source": "nvml", "instance": "h1", "metric": "gpu_util", "value": 1.0} for d in (1, 95)
    ])
    removed = store.apply_retention(T0, RetentionPolicy())
    assert removed == {"requests": 2, "eval_results": 0, "telemetry": 1, "cost_lines": 0, "requests_text": 2,
                       "request_content": 0, "eval_results_text": 0, **{r.name: 0 for r in schema.ROLLUPS}, "correlation_rollups_1h": 0}
    assert store.count_requests(RequestFilter()) == 4
    kept = texts(store)
    assert kept["acme:00"] == ("p", "c") and kept["acme:01"] == ("p", "c")
    assert kept["acme:02"] == (None, None) and kept["acme:03"] == (None, None)
    # a second pass finds nothing left to do
    assert set(store.apply_retention(T0, RetentionPolicy()).values()) == {0}


def test_text_days_can_be_overridden_per_tenant(store: ClickHouseStore) -> None:
    store.write_requests([
        rec(1, at(5), tenant="bank", prompt_text="p"),
        rec(2, at(5), tenant="acme", prompt_text="p"),
        rec(3, at(40), tenant="lab", prompt_text="p"),
        rec(4, at(40), tenant="acme", completion_text="c"),
    ])
    policy = RetentionPolicy(text_days=30, text_days_by_tenant={"bank": 1, "lab": 60})
    assert store.apply_retention(T0, policy)["requests_text"] == 2
    assert texts(store) == {
        "bank:01": (None, None), "acme:02": ("p", None), "lab:03": ("p", None), "acme:04": (None, None),
    }


def test_engine_ttl_deletes_and_nulls_when_ttl_merges_run(tmp_path: Path) -> None:
    # As on a server: TTL judged by the engine's clock, at insert and merge (forced here).
    s = ClickHouseStore.embedded(str(tmp_path / "chdb"), ttl_merges=True)
    try:
        s.migrate()
        now = s._exec.query("SELECT now64(6) AS now").to_pylist()[0]["now"]
        s.write_requests([
            rec(1, now - timedelta(days=1), prompt_text="fresh"),
            rec(2, now - timedelta(days=45), prompt_text="stale"),
            rec(3, now - timedelta(days=120), prompt_text="expired"),
        ])
        s._exec.command("OPTIMIZE TABLE infersight.requests FINAL")
        rows = {r["trace_id"][-1]: r["prompt_text"] for r in s.list_requests(RequestFilter()).data}
        assert rows == {"1": "fresh", "2": None}
    finally:
        s.close()


def test_engine_ttl_expires_content_per_tenant(tmp_path: Path) -> None:
    # request_content rows are text: their row TTL is text_days, with the tenant's override.
    policy = RetentionPolicy(text_days=30, text_days_by_tenant={"vip": 60})
    s = ClickHouseStore.embedded(str(tmp_path / "chdb"), retention=policy, ttl_merges=True)
    try:
        s.migrate()
        now = s._exec.query("SELECT now64(6) AS now").to_pylist()[0]["now"]
        s.write_rows("request_content", [
            {"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "tenant_id": tenant, "model_id": "m1",
             "started_at": now - timedelta(days=days), "prompt_text": "[EMAIL] asks"}
            for i, tenant, days in ((1, "acme", 1), (2, "acme", 45), (3, "vip", 45), (4, "vip", 90))
        ])
        s._exec.command("OPTIMIZE TABLE infersight.request_content FINAL")
        assert [i for i in range(1, 5) if s.content_for(f"{i:032x}")] == [1, 3]
    finally:
        s.close()


def test_embedded_store_pauses_ttl_so_fixed_times_stay_put(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    s = ClickHouseStore.embedded(path)
    s.migrate()
    s.write_requests([rec(1, T0 - timedelta(days=3650), prompt_text="old")])
    for i in range(2, 6):  # parts to merge: merges run, TTL does not
        s.write_requests([rec(i, T0 - timedelta(days=3650))])
    s._exec.command("OPTIMIZE TABLE infersight.requests FINAL")
    assert s.count_requests(RequestFilter()) == 5
    assert s.get_requests(f"{1:032x}")[0]["prompt_text"] == "old"
    assert s.apply_retention(T0, RetentionPolicy())["requests"] == 5
    s.close()
    # Reopened, the pause is in force again for what is written from then on. (The engine may run
    # one TTL merge on rows already expired while the session starts, before the pause lands.)
    again = ClickHouseStore.embedded(path)
    try:
        again.write_requests([rec(9, T0 - timedelta(days=3650), prompt_text="old")])
        again._exec.command("OPTIMIZE TABLE infersight.requests FINAL")
        assert [r["prompt_text"] for r in again.list_requests(RequestFilter()).data] == ["old"]
    finally:
        again.close()
