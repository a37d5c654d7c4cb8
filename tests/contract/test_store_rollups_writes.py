"""The Store contract, part 5: rollups on write (idempotent under redelivery) and their retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from infersight.store.base import RequestFilter, RetentionPolicy, StatsQuery, Store
from tests.contract.test_store import rec
from tests.contract.test_store_rollups import END, SINCE, START, UNTIL, assert_matches_exact, dataset, write_shuffled

UTC = timezone.utc


def test_a_redelivered_batch_is_not_counted_twice(store: Store) -> None:
    records = dataset(n=600, seed=7)
    first, second = records[:300], records[300:]
    assert store.write_requests(first) == 300
    assert store.write_requests(first) == 0  # redelivered whole
    assert store.write_requests(first[:100] + second[:100]) == 100  # half old, half new
    assert store.write_requests(second) == 200
    (row,) = assert_matches_exact(store, since=START, until=END)
    assert row["requests"] == 600 and row["source"] == "rollup_1d"
    assert_matches_exact(store, since=SINCE, until=UNTIL, group_by=("tenant_id", "model_id"),
                         resolution=timedelta(hours=1))


def test_rollups_outlive_the_raw_rows_and_then_expire(store: Store) -> None:
    now = datetime(2096, 12, 1, tzinfo=UTC)
    day = timedelta(days=1)
    write_shuffled(store, dataset(n=60, seed=3, start=now - 50 * day, span=day)
                   + [rec(1000 + i, now - 120 * day + i * timedelta(minutes=1)) for i in range(30)]
                   + [rec(2000 + i, now - 5 * day + i * timedelta(minutes=1)) for i in range(20)], batch=16)
    rows = assert_matches_exact(store, since=now - 60 * day, until=now - 40 * day + timedelta(minutes=7, seconds=3),
                                group_by=("tenant_id",))
    assert {r["source"] for r in rows} == {"rollup_7d"}  # whole weeks inside the window
    removed = store.apply_retention(now, RetentionPolicy(requests_days=30, rollups_days=100))
    assert removed["requests"] == 90
    assert removed["request_rollups_1m"] == 30 and removed["request_rollups_1h"] == 1  # 120 days ago:
    assert removed["request_rollups_6h"] == removed["request_rollups_1d"] == 1  # 30 minutes, one hour, ...
    assert removed["request_rollups_7d"] == 1  # ... and the week that holds them
    assert store.count_requests(RequestFilter()) == 20
    (kept,) = store.stats(StatsQuery(since=now - 60 * day, until=now - 40 * day))
    assert kept["source"] == "rollup_7d" and kept["requests"] == 60  # raw rows gone, the rollups answer
    assert kept["ttft_ms_p50"] is not None
    (gone,) = store.stats(StatsQuery(since=now - 130 * day, until=now - 110 * day))
    assert gone["requests"] == 0
    again = store.apply_retention(now, RetentionPolicy(requests_days=30, rollups_days=100))
    assert all(v == 0 for v in again.values()), again
