"""The stats planner: which tables answer a window, and that the segments tile it exactly."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from infersight.store import schema
from infersight.store.base import StatsQuery, StoreError
from infersight.store.rollup import EPOCH, RAW_MAX_WINDOW, plan_stats

UTC = timezone.utc
NOW = datetime(2096, 3, 14, 13, 37, 12, 345678, tzinfo=UTC)
BY_SOURCE = {r.source: r for r in schema.ROLLUPS}


def aligned(t: datetime, period: timedelta) -> bool:
    return (t - EPOCH) % period == timedelta(0)


@pytest.mark.parametrize("seed", range(20))
def test_segments_tile_the_window_on_period_boundaries(seed: int) -> None:
    rng = random.Random(seed)
    since = NOW - timedelta(seconds=rng.uniform(7 * 3600, 90 * 86400))
    until = since + timedelta(seconds=rng.uniform(6 * 3600 + 1, 60 * 86400))
    resolution = rng.choice([None, timedelta(minutes=1), timedelta(minutes=15), timedelta(hours=1),
                             timedelta(hours=6), timedelta(days=1), timedelta(days=7)])
    plan = plan_stats(StatsQuery(since=since, until=until, resolution=resolution))
    assert not plan.raw
    assert plan.segments[0].since == since and plan.segments[-1].until == until
    for a, b in zip(plan.segments, plan.segments[1:]):
        assert a.until == b.since  # contiguous, no overlap
    raw = [s for s in plan.segments if s.rollup is None]
    assert all(s.until - s.since < timedelta(minutes=1) for s in raw)  # raw rows only at the very edges
    assert all(s is plan.segments[0] or s is plan.segments[-1] for s in raw)
    for seg in plan.segments:
        if seg.rollup is not None:
            assert aligned(seg.since, seg.rollup.period) and aligned(seg.until, seg.rollup.period)
            assert resolution is None or resolution % seg.rollup.period == timedelta(0)
    coarsest = max((s.rollup for s in plan.segments if s.rollup), key=lambda r: r.period)
    assert plan.source == coarsest.source


def test_a_month_reads_weeks_days_and_finer_edges_only() -> None:
    plan = plan_stats(StatsQuery(since=NOW - timedelta(days=30), until=NOW))
    counts: dict[str, int] = {}
    for seg in plan.segments:
        name = seg.rollup.source if seg.rollup else "raw"
        counts[name] = counts.get(name, 0) + 1
    assert plan.source == "rollup_7d"
    assert counts == {"raw": 2, "rollup_1m": 2, "rollup_1h": 2, "rollup_6h": 2, "rollup_1d": 2, "rollup_7d": 1}


@pytest.mark.parametrize(("window", "resolution", "exact", "source"), [
    (RAW_MAX_WINDOW, None, False, "raw"),
    (RAW_MAX_WINDOW + timedelta(hours=1), None, False, "rollup_1h"),
    (timedelta(days=30), None, True, "raw"),
    (timedelta(days=30), timedelta(seconds=30), False, "raw"),
    (timedelta(days=30), timedelta(seconds=90), False, "raw"),
    (timedelta(days=30), timedelta(minutes=2), False, "rollup_1m"),
    (timedelta(days=30), timedelta(hours=2), False, "rollup_1h"),
    (timedelta(days=30), timedelta(hours=12), False, "rollup_6h"),
    (timedelta(days=30), timedelta(days=2), False, "rollup_1d"),
    (timedelta(days=30), timedelta(days=14), False, "rollup_7d"),
])
def test_the_source(window: timedelta, resolution: timedelta | None, exact: bool, source: str) -> None:
    query = StatsQuery(since=NOW - window, until=NOW, resolution=resolution, exact=exact)
    assert plan_stats(query).source == source


@pytest.mark.parametrize("bad", [
    dict(resolution=timedelta(0)), dict(resolution=timedelta(minutes=-5)), dict(group_by=("prompt_text",)),
    dict(group_by=("tenant_id", "tenant_id")), dict(since=datetime(2096, 1, 1)),
])
def test_bad_queries_are_refused_before_any_sql(bad: dict[str, object]) -> None:
    fields: dict[str, object] = dict(since=NOW - timedelta(days=30), until=NOW)
    fields.update(bad)
    with pytest.raises(StoreError):
        plan_stats(StatsQuery(**fields))  # type: ignore[arg-type]
