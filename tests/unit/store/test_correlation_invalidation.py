"""Which built correlation hours a batch of late telemetry samples invalidates (``correlation_rollup``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from infersight.model import RequestRecord
from infersight.store.base import StoreError
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.correlation_rollup import (
    CLOCK_SKEW,
    LOOKBACK,
    SETTLE,
    TABLE,
    invalidated_periods,
    stored_counts,
)
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.telemetry_sql import TelemetryQuery

H = datetime(2030, 5, 6, 10, 0, tzinfo=timezone.utc)  # an hour start
NOW = H + timedelta(hours=5)


def test_a_sample_mid_hour_invalidates_its_hour_only() -> None:
    assert invalidated_periods([H + timedelta(minutes=30)], NOW) == [H]


def test_a_sample_within_staleness_of_the_hour_end_invalidates_the_next_hour_too() -> None:
    assert invalidated_periods([H + timedelta(minutes=59, seconds=55)], NOW) == [H, H + timedelta(hours=1)]
    at_end = H + timedelta(minutes=59, seconds=40)  # t + 20 s is the next hour's start: its build reads t
    assert invalidated_periods([at_end], NOW) == [H, H + timedelta(hours=1)]
    assert invalidated_periods([H + timedelta(minutes=59, seconds=39)], NOW) == [H]


def test_a_batch_gives_each_hour_once_oldest_first() -> None:
    times = [H + timedelta(hours=2, minutes=1), H + timedelta(minutes=59, seconds=50), H + timedelta(minutes=3)]
    assert invalidated_periods(times, NOW) == [H, H + timedelta(hours=1), H + timedelta(hours=2)]


def test_hours_no_builder_can_have_built_give_nothing() -> None:
    now = H + timedelta(minutes=30)
    assert invalidated_periods([now - timedelta(seconds=5), now - timedelta(minutes=29)], now) == []  # the current hour
    # the previous hour within SETTLE (less CLOCK_SKEW) of its end: not built yet, unless its next hour is
    assert invalidated_periods([H - timedelta(minutes=30)], H + SETTLE - CLOCK_SKEW - timedelta(seconds=1)) == []
    assert invalidated_periods([H - timedelta(minutes=30)], H + SETTLE - CLOCK_SKEW) == [H - timedelta(hours=1)]
    # a sample 5 s before a built hour's end whose next hour is the current one: only the built hour
    assert invalidated_periods([H - timedelta(seconds=5)], H + SETTLE) == [H - timedelta(hours=1)]


def test_hours_past_the_lookback_are_left_as_built() -> None:
    old = NOW - LOOKBACK - timedelta(hours=2)
    assert invalidated_periods([old], NOW) == []
    assert invalidated_periods([old, H], NOW) == [H]


# -- the stores: a failed invalidation never loses the samples ---------------------------------------

T0 = datetime(2031, 3, 4, 8, 0, tzinfo=timezone.utc)
BUILT_AT = T0 + timedelta(hours=2) + SETTLE  # hours T0 and T0 + 1 h are built


def _sample(at: datetime, value: float) -> dict[str, Any]:
    return dict(ts=at, source="vllm", instance="a:8000", gpu=None, model_id="m1", metric="kv_cache_usage", value=value)


def _load(store: Any) -> None:
    store.write_rows("telemetry", [_sample(T0 + timedelta(minutes=m), 0.1) for m in range(120)])
    store.write_requests([RequestRecord(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m1",
                                        backend="sim", started_at=(T0 + timedelta(minutes=i, seconds=30)).isoformat(),
                                        status_code=200, ttft_ms=50.0, instance="a:8000") for i in range(120)])
    assert store.build_correlation_rollups(now=BUILT_AT) == 2


def _built(store: Any) -> list[datetime]:
    return sorted(stored_counts(store._telemetry_reader(), T0, BUILT_AT))


def _samples(store: Any) -> int:
    rows, _ = store.telemetry(TelemetryQuery(T0, BUILT_AT, limit=1000))
    return len(rows)


def test_duckdb_writes_late_samples_and_their_invalidation_together(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "db.duckdb"))
    store.migrate()
    _load(store)
    late = [_sample(T0 + timedelta(minutes=5, seconds=40), 0.99)]
    store._write.execute(f"ALTER TABLE {TABLE} RENAME TO hidden")  # the delete fails
    with pytest.raises(StoreError):
        store.write_rows("telemetry", late)
    assert _samples(store) == 120  # rolled back with the delete: the bus retries the batch
    store._write.execute(f"ALTER TABLE hidden RENAME TO {TABLE}")
    assert store.write_rows("telemetry", late) == 1
    assert _samples(store) == 121 and _built(store) == [T0 + timedelta(hours=1)]
    assert store.build_correlation_rollups(now=BUILT_AT) == 1
    assert _built(store) == [T0, T0 + timedelta(hours=1)]
    store.close()


def test_clickhouse_keeps_a_failed_invalidation_for_the_next_write(tmp_path: Path) -> None:
    store = ClickHouseStore.embedded(str(tmp_path / "chdb"))
    store.migrate()
    _load(store)
    command = store._exec.command
    refused: list[str] = []

    def failing(sql: str, params: Any = None) -> None:
        if sql.startswith("DELETE") and not refused:
            refused.append(sql)
            raise StoreError("DELETE refused")
        command(sql, params)

    store._exec.command = failing  # type: ignore[method-assign]
    assert store.write_rows("telemetry", [_sample(T0 + timedelta(minutes=5, seconds=40), 0.99)]) == 1
    assert refused and _samples(store) == 121  # the samples are in
    assert _built(store) == [T0, T0 + timedelta(hours=1)]  # the hour still reads as built, for now
    store.write_rows("telemetry", [_sample(BUILT_AT - timedelta(minutes=1), 0.5)])  # a current sample: retried
    assert _built(store) == [T0 + timedelta(hours=1)]
    assert store.build_correlation_rollups(now=BUILT_AT) == 1
    assert _built(store) == [T0, T0 + timedelta(hours=1)]
    store.close()
