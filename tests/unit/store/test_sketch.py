"""DDSketch: relative accuracy against the exact (linear-interpolation) quantiles, merging, edge cases."""

from __future__ import annotations

import math
import random

import pytest

from infersight.store.sketch import (
    ALPHA,
    MAX_INDEX,
    MIN_INDEXABLE,
    ZERO_INDEX,
    DDSketch,
    bucket_value,
    quantiles_from_bins,
)


def exact(values: list[float], q: float) -> float:
    """numpy's default / DuckDB quantile_cont / ClickHouse quantileExactInclusive."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [1, 2, 7, 100, 20_000])
def test_quantiles_are_within_alpha_of_exact_on_lognormal_data(seed: int, n: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(4, 1.2) for _ in range(n)]
    sketch = DDSketch.of(values)
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        want = exact(values, q)
        got = sketch.quantile(q)
        assert got is not None
        assert abs(got - want) <= ALPHA * want * (1 + 1e-12), (q, got, want)


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.02])
def test_other_accuracies_keep_their_bound(alpha: float) -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(7, 0.8) for _ in range(5_000)]
    sketch = DDSketch.of(values, alpha=alpha)
    for q in (0.5, 0.95, 0.99):
        want = exact(values, q)
        assert abs(sketch.quantile(q) - want) <= alpha * want * (1 + 1e-12)  # type: ignore[operator]
    assert len(sketch.bins) < len(DDSketch.of(values, alpha=alpha / 2).bins)  # coarser: fewer buckets


def test_bucket_representatives_are_within_alpha_of_their_values() -> None:
    sketch = DDSketch()
    for x in (MIN_INDEXABLE * 1.0001, 0.5, 1.0, 1.0101, 37.2, 1e3, 123456.789, 1e12):
        assert abs(sketch.value(sketch.index(x)) - x) <= ALPHA * x * (1 + 1e-12)  # type: ignore[arg-type]
        assert sketch.value(sketch.index(x)) == bucket_value(sketch.index(x))  # type: ignore[arg-type]


def test_merge_equals_adding_everything() -> None:
    rng = random.Random(3)
    parts = [[rng.lognormvariate(3, 0.5) for _ in range(rng.randint(0, 300))] for _ in range(6)]
    merged = DDSketch()
    for part in parts:
        merged.merge(DDSketch.of(part))
    everything = DDSketch.of([v for part in parts for v in part])
    assert merged.to_dict() == everything.to_dict()
    assert merged.count == everything.count
    assert merged.quantiles((0.5, 0.95, 0.99)) == everything.quantiles((0.5, 0.95, 0.99))


def test_sketches_of_different_accuracy_do_not_merge() -> None:
    with pytest.raises(ValueError):
        DDSketch(0.01).merge(DDSketch(0.02))


def test_an_empty_sketch_has_no_quantiles() -> None:
    sketch = DDSketch()
    assert sketch.quantile(0.5) is None
    assert sketch.quantiles((0.5, 0.99)) == [None, None]
    assert quantiles_from_bins([], [], (0.5,)) == [None]
    assert DDSketch.from_dict({}).count == 0


def test_serialised_form_round_trips() -> None:
    sketch = DDSketch.of([1.0, 2.0, 2.0, 50.0, 0.0])
    again = DDSketch.from_dict(sketch.to_dict())
    assert again.to_dict() == sketch.to_dict() and again.count == 5
    assert DDSketch.from_dict({"5": 2, 7: 0}).to_dict() == {5: 2}  # JSON keys are text; empty buckets drop


def test_zero_nan_and_infinity() -> None:
    sketch = DDSketch()
    assert sketch.index(0.0) == sketch.index(-3.0) == sketch.index(MIN_INDEXABLE) == ZERO_INDEX
    assert sketch.index(math.inf) == MAX_INDEX
    assert sketch.index(math.nan) is None
    sketch.add(math.nan)
    assert sketch.count == 0
    for v in (0.0, 0.0, 0.0, 10.0):
        sketch.add(v)
    assert sketch.quantile(0.5) == 0.0  # the zero bucket stands for 0
    assert sketch.quantile(1.0) == pytest.approx(10.0, rel=ALPHA)


def test_bins_need_not_be_sorted_and_zero_counts_are_ignored() -> None:
    sketch = DDSketch.of([5.0, 50.0, 500.0])
    keys = list(sketch.to_dict())
    assert quantiles_from_bins(keys[::-1] + [9999], [1, 1, 1, 0], (0.0, 0.5, 1.0)) == sketch.quantiles((0.0, 0.5, 1.0))


def test_weighted_adds_and_bad_quantiles() -> None:
    sketch = DDSketch()
    sketch.add(10.0, count=3)
    sketch.add(20.0, count=0)
    assert sketch.count == 3 and sketch.quantile(0.99) == pytest.approx(10.0, rel=ALPHA)
    with pytest.raises(ValueError):
        sketch.quantile(1.5)
    with pytest.raises(ValueError):
        DDSketch(alpha=1.0)
