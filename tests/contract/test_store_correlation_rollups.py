"""The Store contract, part 8: hourly correlation rollups agree with the exact as-of join (both backends).

Eight hours of one model on two replicas, KV usage moving every minute, requests of two tenants. The
rollup read must count exactly what the raw join counts (per bucket, tenant and instance), give
quantiles within the sketches' accuracy, and never miss requests or samples that arrive after their hour
was built.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from infersight.store import correlation_rollup, telemetry_sql
from infersight.store.base import Store
from infersight.store.telemetry_sql import CorrelationQuery
from tests.contract.test_store import T0, rec
from tests.contract.test_store_rows import sample

A, B = "replica-a:8000", "replica-b:8000"
HOURS = 8
SINCE, UNTIL = T0 + timedelta(minutes=20), T0 + timedelta(hours=HOURS) - timedelta(minutes=20)
NOW = T0 + timedelta(hours=HOURS + 1)


def kv(minute: int, instance: str) -> float:
    return ((minute * 7 + (0 if instance == A else 31)) % 100) / 100.0


@pytest.fixture(params=["duckdb", "clickhouse"])
def backend(request: pytest.FixtureRequest) -> str:
    """The engines themselves: the checks below read the raw join through each store's own reader,
    which the store process does not expose (its calls are covered by the rest of the suite)."""
    return str(request.param)


@pytest.fixture
def loaded(store: Store) -> Store:
    rng = random.Random(7)
    samples = [sample(T0 + timedelta(minutes=m), "kv_cache_usage", kv(m, inst), instance=inst)
               for m in range(HOURS * 60) for inst in (A, B)]
    store.write_rows("telemetry", samples)
    records = []
    for i in range(HOURS * 90):
        at = T0 + timedelta(seconds=rng.uniform(0, HOURS * 3600))
        records.append(rec(1000 + i, at, tenant=rng.choice(("acme", "globex")), ttft_ms=rng.lognormvariate(5, 0.5),
                           itl_ms_mean=rng.lognormvariate(2.5, 0.3), instance=rng.choice((A, B, None)),
                           status_code=500 if i % 37 == 0 else 200))
    store.write_requests(records)
    return store


def exact(store: Store, q: CorrelationQuery) -> list[dict[str, Any]]:
    return telemetry_sql.correlation(store._telemetry_reader(), q)  # type: ignore[attr-defined]


def agree(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [r["bucket"] for r in got] == [r["bucket"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert (g["requests"], g["errors"]) == (w["requests"], w["errors"]), g["bucket"]
        for field in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99"):
            if w[field] is None:
                assert g[field] is None
            else:  # 1% sketches; p99 of a small bucket interpolates between neighbouring order statistics
                assert g[field] == pytest.approx(w[field], rel=0.05 if field.endswith("p99") else 0.03), field


def test_rollups_answer_long_windows_as_the_exact_join_does(loaded: Store) -> None:
    q = CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", model_id="m1")
    before = loaded.correlation(q)
    assert {r["source"] for r in before} == {"raw"}  # nothing built yet: the exact path answers
    assert loaded.build_correlation_rollups(now=NOW) == HOURS
    assert loaded.build_correlation_rollups(now=NOW) == 0  # nothing due any more
    for query in (q, CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", tenant_id="globex"),
                  CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", instance=B),
                  CorrelationQuery(SINCE, UNTIL, by="gpu_utilization")):  # no samples: all in no_sample
        got = loaded.correlation(query)
        assert {r["source"] for r in got} == {correlation_rollup.SOURCE}
        agree(got, exact(loaded, query))
    assert sum(r["requests"] for r in loaded.correlation(q)) == sum(r["requests"] for r in before)


def test_a_late_request_is_counted_before_and_after_its_hour_is_rebuilt(loaded: Store) -> None:
    loaded.build_correlation_rollups(now=NOW)
    q = CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage")
    total = sum(r["requests"] for r in loaded.correlation(q))
    loaded.write_requests([rec(9999, T0 + timedelta(hours=3, minutes=5), ttft_ms=100.0, instance=A)])
    late = loaded.correlation(q)  # hour 3 no longer matches its request count: read raw
    assert sum(r["requests"] for r in late) == total + 1
    agree(late, exact(loaded, q))
    assert loaded.build_correlation_rollups(now=NOW) == 1  # just that hour
    agree(loaded.correlation(q), exact(loaded, q))


def test_short_windows_and_other_staleness_read_raw(loaded: Store) -> None:
    loaded.build_correlation_rollups(now=NOW)
    short = loaded.correlation(CorrelationQuery(T0, T0 + timedelta(hours=2), by="kv_cache_usage"))
    assert {r["source"] for r in short} == {"raw"}
    stale = loaded.correlation(CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", max_staleness=timedelta(minutes=5)))
    assert {r["source"] for r in stale} == {"raw"}


def test_late_samples_unbuild_their_hours_until_they_are_rebuilt(loaded: Store) -> None:
    assert loaded.build_correlation_rollups(now=NOW) == HOURS
    reader = loaded._telemetry_reader()  # type: ignore[attr-defined]
    hours = [T0 + timedelta(hours=h) for h in range(HOURS)]
    whole = CorrelationQuery(T0, T0 + timedelta(hours=HOURS), by="kv_cache_usage")  # aligned: no raw edges
    queries = (whole, CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", model_id="m1"),
               CorrelationQuery(SINCE, UNTIL, by="kv_cache_usage", tenant_id="acme", instance=A))
    before = [exact(loaded, q) for q in queries]
    # A spool replayed after an outage: hour 3 gets a saturated sample at half past every minute, so
    # requests in [:30, :50] of each minute (no_sample until now) match it; the last one, 5 s before the
    # hour ends, also serves hour 4's first requests.
    h3 = T0 + timedelta(hours=3)
    late = [sample(h3 + timedelta(minutes=m, seconds=30), "kv_cache_usage", 0.99, instance=inst)
            for m in range(60) for inst in (A, B)]
    late.append(sample(h3 + timedelta(minutes=59, seconds=55), "kv_cache_usage", 0.99, instance=A))
    assert loaded.write_rows("telemetry", late) == len(late)
    stored = sorted(correlation_rollup.stored_counts(reader, T0, NOW))
    assert stored == [p for p in hours if p not in (h3, h3 + timedelta(hours=1))]  # both unbuilt, the rest kept
    after = [exact(loaded, q) for q in queries]
    top = [next(r["requests"] for r in rows if r["bucket"] == "0.95-1") for rows in (before[0], after[0])]
    assert top[1] > top[0]  # the late samples moved requests out of no_sample
    for q, want in zip(queries, after, strict=True):
        got = loaded.correlation(q)
        assert {r["source"] for r in got} == {correlation_rollup.SOURCE}  # the other hours still from rollups
        agree(got, want)
    # samples of an hour no build can have reached yet delete nothing
    loaded.write_rows("telemetry", [sample(NOW - timedelta(minutes=5), "kv_cache_usage", 0.5, instance=A)])
    assert sorted(correlation_rollup.stored_counts(reader, T0, NOW)) == stored
    assert loaded.build_correlation_rollups(now=NOW) == 2  # hours 4 and 3
    assert sorted(correlation_rollup.stored_counts(reader, T0, NOW)) == hours
    for q, want in zip(queries, after, strict=True):  # ``whole`` now comes from the rollups alone
        agree(loaded.correlation(q), want)
