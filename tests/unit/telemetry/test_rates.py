"""Rate, quantile and hit-rate maths against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from infersight.telemetry.rates import RateTracker, hit_ratio, quantile

INF = math.inf


def test_counter_rate_reset_and_first_scrape() -> None:
    tr = RateTracker()
    assert tr.counter_rate("i", "c", 100.0, 0.0) is None  # first scrape: no interval yet
    assert tr.counter_rate("i", "c", 150.0, 10.0) == 5.0  # (150 - 100) / 10
    assert tr.counter_rate("i", "c", 30.0, 20.0) == 3.0  # reset: the new value is the increase
    assert tr.counter_rate("i", "c", 30.0, 40.0) == 0.0  # idle interval: a real 0
    assert tr.counter_rate("i", "c", 40.0, 40.0) is None  # no time passed
    assert tr.counter_increase("i", "c", 70.0, 50.0) == (30.0, 10.0)


def test_series_are_kept_apart_by_instance_and_key() -> None:
    tr = RateTracker()
    for inst in ("a", "b"):
        tr.counter_rate(inst, "c", 0.0, 0.0)
    assert tr.counter_rate("a", "c", 10.0, 10.0) == 1.0
    assert tr.counter_rate("b", "c", 50.0, 10.0) == 5.0
    assert tr.counter_rate("a", "other", 10.0, 10.0) is None


def test_quantile_interpolates_like_histogram_quantile() -> None:
    b = [(0.1, 2.0), (0.5, 6.0), (1.0, 8.0), (INF, 10.0)]
    assert quantile(0.5, b) == pytest.approx(0.1 + 0.4 * (5 - 2) / 4)  # rank 5 in (0.1, 0.5]
    assert quantile(0.1, b) == pytest.approx(0.0 + 0.1 * 1 / 2)  # first bucket starts at 0
    assert quantile(0.75, b) == pytest.approx(0.5 + 0.5 * (7.5 - 6) / 2)
    assert quantile(0.99, b) == 1.0  # rank 9.9 is in +Inf: the largest finite bound


def test_quantile_undefined_cases() -> None:
    assert quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None  # empty interval
    assert quantile(0.5, [(0.1, 1.0), (1.0, 2.0)]) is None  # no +Inf bucket
    assert quantile(0.5, [(INF, 4.0)]) is None  # +Inf only
    assert quantile(0.5, [(0.1, 0.0), (INF, 4.0)]) == 0.1  # all in +Inf
    with pytest.raises(ValueError):
        quantile(1.5, [(0.1, 1.0), (INF, 1.0)])


def test_quantile_fixes_non_monotonic_counts() -> None:
    # A scrape can catch a bucket mid-update; Prometheus takes the running max.
    assert quantile(0.5, [(1.0, 4.0), (2.0, 3.0), (INF, 4.0)]) == quantile(0.5, [(1.0, 4.0), (2.0, 4.0), (INF, 4.0)])


def test_quantile_tracks_true_quantiles_of_data() -> None:
    rng = random.Random(7)
    bounds = [i / 100 for i in range(1, 101)]
    data = sorted(rng.random() for _ in range(20000))
    buckets = [(b, float(sum(1 for x in data if x <= b))) for b in bounds] + [(INF, float(len(data)))]
    for q in (0.5, 0.9, 0.99):
        assert quantile(q, buckets) == pytest.approx(data[int(q * len(data))], abs=0.011)


def test_histogram_increase_reset_and_layout_change() -> None:
    tr = RateTracker()
    assert tr.histogram_increase("i", "h", [(0.1, 1.0), (INF, 2.0)], 0.0) is None
    inc = tr.histogram_increase("i", "h", [(0.1, 4.0), (INF, 8.0)], 10.0)
    assert inc == ([(0.1, 3.0), (INF, 6.0)], 10.0)
    assert quantile(0.5, inc[0]) == pytest.approx(0.1)  # rank 3 of 6 fills the first bucket
    # Restart: counts drop, so the current counts are the increase.
    assert tr.histogram_increase("i", "h", [(0.1, 1.0), (INF, 1.0)], 20.0) == ([(0.1, 1.0), (INF, 1.0)], 10.0)
    # New bucket layout (engine restarted with other buckets): same rule.
    assert tr.histogram_increase("i", "h", [(0.2, 5.0), (INF, 5.0)], 30.0) == ([(0.2, 5.0), (INF, 5.0)], 10.0)
    # Nothing observed in the interval: deltas are zero and the quantile is undefined.
    empty = tr.histogram_increase("i", "h", [(0.2, 5.0), (INF, 5.0)], 40.0)
    assert empty is not None and quantile(0.99, empty[0]) is None


def test_hit_rate() -> None:
    assert hit_ratio(30.0, 60.0) == 0.5
    assert hit_ratio(0.0, 0.0) is None
    tr = RateTracker()
    assert tr.hit_rate("i", "prefix", 10.0, 100.0, 0.0) is None
    assert tr.hit_rate("i", "prefix", 40.0, 160.0, 10.0) == 0.5  # 30 / 60
    assert tr.hit_rate("i", "prefix", 40.0, 160.0, 20.0) is None  # no queries in the interval
    assert tr.hit_rate("i", "prefix", 5.0, 20.0, 30.0) == 0.25  # both reset: 5 / 20


def test_forget_and_expire() -> None:
    tr = RateTracker(max_age_s=100.0)
    tr.counter_rate("a", "c", 1.0, 0.0)
    tr.counter_rate("b", "c", 1.0, 50.0)
    tr.histogram_increase("a", "h", [(INF, 1.0)], 0.0)
    assert len(tr) == 3
    assert tr.expire(now=120.0) == 2  # a's series are older than 100 s
    assert len(tr) == 1
    tr.forget("b")
    assert len(tr) == 0
