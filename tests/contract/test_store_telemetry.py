"""The Store contract, part 7: telemetry reads, the as-of correlation and diagnosis inputs (both backends).

One constructed dataset with a known answer: model m1 on gpu-host-1 (engine samples labelled m1,
GPU samples unlabelled), m2 on gpu-host-2, requests at known times with known TTFTs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from infersight.store.base import Store, StoreError
from infersight.store.telemetry_sql import (
    CORRELATION_FIELDS,
    NO_SAMPLE,
    CorrelationQuery,
    DiagnosisQuery,
    TelemetryQuery,
)
from tests.contract.test_store import T0, rec
from tests.contract.test_store_rows import sample

H1, H2, IDLE = "gpu-host-1:8000", "gpu-host-2:8000", "idle-host:8000"
SINCE, UNTIL = T0 - timedelta(minutes=1), T0 + timedelta(minutes=2)


def s(sec: float, metric: str, value: float, **kw: Any) -> dict[str, Any]:
    return sample(T0 + timedelta(seconds=sec), metric, value, instance=kw.pop("instance", H1), **kw)


def gpu(sec: float, metric: str, value: float, gpu_id: str, instance: str = H1) -> dict[str, Any]:
    return s(sec, metric, value, instance=instance, source="nvml", gpu=gpu_id, model_id=None)


SAMPLES = [
    # m1 KV cache every 10 s, then a gap from 30 s to 60 s
    s(0, "kv_cache_usage", 0.30), s(10, "kv_cache_usage", 0.60), s(20, "kv_cache_usage", 0.90),
    s(30, "kv_cache_usage", 0.97), s(60, "kv_cache_usage", 0.30),
    s(0, "requests_waiting", 0.0), s(10, "requests_waiting", 5.0),
    # m2 on another host, near saturation
    s(0, "kv_cache_usage", 0.99, instance=H2, model_id="m2"),
    # GPU samples carry no model: they belong to m1 through their instance; two GPUs, the max counts
    gpu(0, "gpu_memory_utilization", 0.80, "0"), gpu(0, "gpu_memory_utilization", 0.90, "1"),
    gpu(0, "gpu_utilization", 0.30, "0"), gpu(0, "gpu_utilization", 0.40, "1"),
    gpu(0, "gpu_memory_utilization", 0.10, "0", instance=IDLE),  # a host that never served m1
    s(0, "prefix_cache_hit_rate", 0.2), s(10, "prefix_cache_hit_rate", 0.3),
]

# (id, seconds after T0, ttft_ms, itl_ms, model, tenant, status)
REQUESTS = [
    (1, 9, 100.0, 10.0, "m1", "acme", 200),    # latest earlier sample: 0 s (0.30), not the nearer 10 s (0.60)
    (2, 10, 200.0, 20.0, "m1", "acme", 200),   # a sample at the same instant counts (0.60)
    (3, 15, 400.0, 40.0, "m1", "acme", 500),   # 0.60
    (4, 25, 800.0, 80.0, "m1", "acme", 200),   # 0.90
    (5, 35, 1600.0, 160.0, "m1", "globex", 200),  # 0.97
    (6, 55, 50.0, 5.0, "m1", "acme", 200),     # latest sample 25 s old: stale at 20 s
    (7, -5, 60.0, 6.0, "m1", "acme", 200),     # before any sample
    (8, 65, 300.0, 30.0, "m1", "acme", 200),   # 0.30 again
    (9, 9, 5000.0, 500.0, "m2", "globex", 200),  # m2's own sample (0.99)
]


@pytest.fixture
def loaded(store: Store) -> Store:
    store.write_rows("telemetry", SAMPLES)
    store.write_requests([
        rec(i, T0 + timedelta(seconds=sec), tenant=tenant, model=model, ttft_ms=ttft, itl_ms_mean=itl,
            status_code=status, prompt_hash="same" if i in (1, 2, 3) else f"h{i}", instance=H2 if i == 9 else None)
        for i, sec, ttft, itl, model, tenant, status in REQUESTS
    ])
    return store


def by_bucket(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["bucket"]: r for r in rows}


def test_correlation_joins_each_request_to_the_latest_earlier_sample(loaded: Store) -> None:
    rows = loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", model_id="m1"))
    assert [r["bucket"] for r in rows] == ["0-0.5", "0.5-0.7", "0.7-0.85", "0.85-0.95", "0.95-1", NO_SAMPLE]
    assert all(list(r) == list(CORRELATION_FIELDS) for r in rows)
    got = by_bucket(rows)
    assert {k: v["requests"] for k, v in got.items()} == {
        "0-0.5": 2, "0.5-0.7": 2, "0.7-0.85": 0, "0.85-0.95": 1, "0.95-1": 1, NO_SAMPLE: 2}
    low = got["0-0.5"]  # requests 1 and 8: TTFT 100 and 300
    assert low["ttft_ms_p50"] == pytest.approx(200.0) and low["ttft_ms_p99"] == pytest.approx(298.0)
    assert low["itl_ms_p50"] == pytest.approx(20.0) and low["itl_ms_p99"] == pytest.approx(29.8)
    assert (low["lo"], low["hi"]) == (0.0, 0.5) and low["share"] == pytest.approx(2 / 8)
    mid = got["0.5-0.7"]
    assert mid["ttft_ms_p50"] == pytest.approx(300.0) and mid["errors"] == 1
    assert got["0.95-1"]["ttft_ms_p50"] == pytest.approx(1600.0)
    assert got["0.7-0.85"]["ttft_ms_p50"] is None and got["0.7-0.85"]["share"] == 0.0
    stale = got[NO_SAMPLE]
    assert stale["ttft_ms_p50"] == pytest.approx(55.0) and (stale["lo"], stale["hi"]) == (None, None)


def test_correlation_staleness_is_a_parameter(loaded: Store) -> None:
    rows = by_bucket(loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", model_id="m1",
                                                         max_staleness=timedelta(seconds=30))))
    assert rows["0.95-1"]["requests"] == 2 and rows[NO_SAMPLE]["requests"] == 1  # only the one before any sample


def test_correlation_keys_by_model_and_scopes_by_tenant(loaded: Store) -> None:
    every = by_bucket(loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage")))
    assert every["0.95-1"]["requests"] == 2  # m1's request 5 and m2's request 9, each on its own model's samples
    assert sum(r["requests"] for r in every.values()) == 9
    globex = by_bucket(loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", tenant_id="globex")))
    assert {k: v["requests"] for k, v in globex.items() if v["requests"]} == {"0.95-1": 2}
    host2 = by_bucket(loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", instance=H2)))
    assert {k: v["ttft_ms_p50"] for k, v in host2.items() if v["requests"]} == {"0.95-1": 5000.0}


def test_correlation_joins_a_request_to_the_instance_that_served_it(store: Store) -> None:
    # m3 on two replicas: A nearly idle, B saturated, scraped at the same instants
    a, b, elsewhere = "replica-a:8000", "replica-b:8000", "not-scraped:8000"
    store.write_rows("telemetry", [s(0, "kv_cache_usage", 0.20, instance=a, model_id="m3"),
                                   s(0, "kv_cache_usage", 0.96, instance=b, model_id="m3")])
    store.write_requests([
        rec(21, T0 + timedelta(seconds=5), model="m3", ttft_ms=100.0, instance=a),
        rec(22, T0 + timedelta(seconds=5), model="m3", ttft_ms=900.0, instance=b),
        rec(23, T0 + timedelta(seconds=5), model="m3", ttft_ms=500.0),  # no instance: the most loaded replica
        rec(24, T0 + timedelta(seconds=5), model="m3", ttft_ms=700.0, instance=elsewhere),  # unknown: model-wide too
    ])
    rows = by_bucket(store.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", model_id="m3")))
    assert {k: v["requests"] for k, v in rows.items() if v["requests"]} == {"0-0.5": 1, "0.95-1": 3}
    assert rows["0-0.5"]["ttft_ms_p50"] == pytest.approx(100.0)
    only_a = by_bucket(store.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", instance=a)))
    assert {k: v["requests"] for k, v in only_a.items() if v["requests"]} == {"0-0.5": 1}


def test_correlation_by_gpu_metric_and_queue_depth(loaded: Store) -> None:
    mem = by_bucket(loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="gpu_memory_utilization", model_id="m1")))
    # GPU samples only at 0 s (max of the two GPUs: 0.90): requests 1 (9 s) and 2 (10 s), 3 (15 s) match;
    # the idle host's 0.10 never applies to m1
    assert {k: v["requests"] for k, v in mem.items() if v["requests"]} == {"0.85-0.95": 3, NO_SAMPLE: 5}
    queue = by_bucket(loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="requests_waiting", model_id="m1")))
    assert [r["bucket"] for r in queue.values()][:7] == ["0", "1", "2-3", "4-7", "8-15", "16-31", "32+"]
    assert queue["32+"]["hi"] is None
    assert {k: v["requests"] for k, v in queue.items() if v["requests"]} == {"0": 1, "4-7": 3, NO_SAMPLE: 4}


def test_correlation_refuses_bad_queries(loaded: Store) -> None:
    with pytest.raises(StoreError):
        loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="gpu_temperature_c"))
    with pytest.raises(StoreError):
        loaded.correlation(CorrelationQuery(UNTIL, SINCE, by="kv_cache_usage"))
    with pytest.raises(StoreError):
        loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", max_staleness=timedelta(0)))
    empty = loaded.correlation(CorrelationQuery(T0 + timedelta(hours=5), T0 + timedelta(hours=6), by="kv_cache_usage"))
    assert [r["requests"] for r in empty] == [0] * 6


def test_telemetry_samples_filtered_ordered_and_capped(loaded: Store) -> None:
    rows, more = loaded.telemetry(TelemetryQuery(SINCE, UNTIL, metrics=("kv_cache_usage",), model_id="m1"))
    assert [(r["ts"], r["value"]) for r in rows] == [
        (T0 + timedelta(seconds=sec), v) for sec, v in ((0, 0.30), (10, 0.60), (20, 0.90), (30, 0.97), (60, 0.30))]
    assert not more and set(rows[0]) == {"ts", "source", "instance", "gpu", "model_id", "metric", "value"}
    gpus, _ = loaded.telemetry(TelemetryQuery(SINCE, UNTIL, metrics=("gpu_memory_utilization",), model_id="m1"))
    assert [(r["instance"], r["gpu"]) for r in gpus] == [(H1, "0"), (H1, "1")]  # not the idle host
    two, more = loaded.telemetry(TelemetryQuery(SINCE, UNTIL, metrics=("kv_cache_usage", "requests_waiting"), limit=3))
    assert len(two) == 3 and more and all(r["ts"] == T0 for r in two)
    host2, _ = loaded.telemetry(TelemetryQuery(SINCE, UNTIL, instance=H2))
    assert [r["model_id"] for r in host2] == ["m2"]


def test_telemetry_for_a_tenant_covers_only_models_its_requests_used(loaded: Store) -> None:
    early = T0 + timedelta(seconds=20)  # globex's m1 request is at 35 s: before it, globex used only m2
    rows, _ = loaded.telemetry(TelemetryQuery(SINCE, early, tenant_id="globex"))
    assert {(r["instance"], r["model_id"]) for r in rows} == {(H2, "m2")}
    later, _ = loaded.telemetry(TelemetryQuery(SINCE, UNTIL, tenant_id="globex", metrics=("gpu_utilization",)))
    assert len(later) == 2  # m1's unlabelled GPU samples, through its instance
    assert loaded.telemetry(TelemetryQuery(SINCE, UNTIL, tenant_id="nobody"))[0] == []


def test_telemetry_diagnosis_inputs(loaded: Store) -> None:
    got = loaded.diagnosis_inputs(DiagnosisQuery(SINCE, UNTIL, model_id="m1"))
    assert got.requests == 8
    assert got.ttft_ms_p50 == pytest.approx(250.0)  # 50 60 100 200 300 400 800 1600
    assert got.ttft_ms_p99 == pytest.approx(800 + 0.93 * 800)
    assert (got.hashed_requests, got.repeated_requests) == (8, 3)
    assert got.metric_means["gpu_memory_utilization"] == pytest.approx(0.85)
    assert got.metric_means["gpu_utilization"] == pytest.approx(0.35)
    assert got.metric_means["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert got.metric_samples["kv_cache_usage"] == 5
    scoped = loaded.diagnosis_inputs(DiagnosisQuery(SINCE, UNTIL, instance=H2))
    assert scoped.requests == 1 and scoped.metric_means == {"kv_cache_usage": pytest.approx(0.99)}
    none = loaded.diagnosis_inputs(DiagnosisQuery(T0 + timedelta(hours=5), T0 + timedelta(hours=6)))
    assert (none.requests, none.ttft_ms_p50, none.hashed_requests, none.metric_means) == (0, None, 0, {})
