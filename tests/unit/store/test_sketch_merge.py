"""Merging many sketches at once (numpy), quantiles from order statistics, and the 0.5% -> 1% remap."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from infersight.store import schema, sketch
from infersight.store.rollup_merge import merged_rows
from infersight.store.sketch import (
    ALPHA,
    GAMMA,
    V2_ALPHA,
    ZERO_INDEX,
    DDSketch,
    bucket_value,
    gamma_of,
    grouped_quantiles,
    quantiles_from_bins,
    quantiles_from_order_stats,
    v2_index,
)

QS = (0.0, 0.5, 0.95, 0.99, 1.0)


def random_sketches(seed: int, n: int) -> list[DDSketch]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        values = [rng.lognormvariate(rng.uniform(1, 6), rng.uniform(0.1, 2)) for _ in range(rng.randint(0, 400))]
        values += [0.0] * rng.choice([0, 0, 1, 5])  # the zero bucket, sometimes
        out.append(DDSketch.of(values))
    return out


def entries(sketches: list[DDSketch], rows_per_sketch: int = 3) -> list[sketch.Entries]:
    """Each sketch's buckets split over a few "rows", as rollup rows of one group are."""
    groups, keys, counts = [], [], []
    for g, s in enumerate(sketches):
        for k, c in s.bins.items():
            parts = [c // rows_per_sketch] * (rows_per_sketch - 1)
            for part in [*parts, c - sum(parts)]:
                groups.append(g), keys.append(k), counts.append(part)
    return [(np.array(groups), np.array(keys, dtype=np.int16), np.array(counts, dtype=np.int64))]


def same(got: list[float], want: list[float | None]) -> bool:
    return all((w is None and math.isnan(g)) or (w is not None and g == pytest.approx(w, rel=1e-12))
               for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("seed", range(3))
def test_grouped_quantiles_equal_merging_each_sketch_alone(seed: int) -> None:
    sketches = random_sketches(seed, 40)
    got = grouped_quantiles(entries(sketches), len(sketches), QS)
    for row, s in zip(got.tolist(), sketches, strict=True):
        assert same(row, s.quantiles(QS))


def test_groups_are_taken_in_slices_when_the_matrix_would_be_large(monkeypatch: pytest.MonkeyPatch) -> None:
    sketches = random_sketches(7, 25)
    whole = grouped_quantiles(entries(sketches), len(sketches), QS)
    monkeypatch.setattr(sketch, "_DENSE_CELLS", 1)  # one group per slice
    assert np.array_equal(grouped_quantiles(entries(sketches), len(sketches), QS), whole, equal_nan=True)


def test_several_parts_add_up_and_groups_without_entries_are_nan() -> None:
    a, b = DDSketch.of([1.0, 2.0, 3.0]), DDSketch.of([2.5, 40.0])
    parts = [entries([a])[0], (np.array([0, 0]), np.array(list(b.bins), dtype=np.int16), np.array([1, 1]))]
    got = grouped_quantiles(parts, 2, (0.5,))
    a.merge(b)
    assert got[0, 0] == pytest.approx(a.quantile(0.5)) and math.isnan(got[1, 0])
    assert np.isnan(grouped_quantiles([], 3, (0.5,))).all()


def test_quantiles_from_order_stats_match_quantiles_from_bins() -> None:
    s = DDSketch.of([random.Random(3).lognormvariate(4, 1) for _ in range(999)] + [0.0])
    keys = sorted(s.bins)
    cum = list(np.cumsum([s.bins[k] for k in keys]))
    buckets = []
    for q in QS:
        lo = math.floor(q * (s.count - 1))
        for j in (lo, min(lo + 1, s.count - 1)):
            buckets.append(keys[next(i for i, c in enumerate(cum) if c > j)])
    assert quantiles_from_order_stats(s.count, buckets, QS) == s.quantiles(QS)
    assert quantiles_from_order_stats(0, [0] * 10, QS) == [None] * len(QS)


def test_alpha_is_the_v2_buckets_two_by_two_and_within_one_percent() -> None:
    assert ALPHA < 0.01 and GAMMA == pytest.approx(gamma_of(V2_ALPHA) ** 2, rel=1e-15)
    old, new = DDSketch(V2_ALPHA), DDSketch()
    rng = random.Random(5)
    for x in [rng.lognormvariate(0, 4) for _ in range(20_000)] + [1e-4, 0.0011, 1.0, 7.5, 1e6]:
        assert new.index(x) == v2_index(old.index(x))  # type: ignore[arg-type]
        assert abs(bucket_value(new.index(x)) - x) <= ALPHA * x * (1 + 1e-12) or x <= 1e-3  # type: ignore[arg-type]
    assert [v2_index(i) for i in (-3, -2, -1, 0, 1, 2, 3, ZERO_INDEX)] == [-1, -1, 0, 0, 1, 1, 2, ZERO_INDEX]


def test_a_remapped_sketch_keeps_the_one_percent_bound() -> None:
    rng = random.Random(8)
    values = [rng.lognormvariate(7, 0.8) for _ in range(5000)]
    old = DDSketch.of(values, alpha=V2_ALPHA)
    remapped: dict[int, int] = {}
    for k, c in old.bins.items():
        remapped[v2_index(k)] = remapped.get(v2_index(k), 0) + c
    xs = sorted(values)
    for q in (0.5, 0.95, 0.99):
        pos = q * (len(xs) - 1)
        exact = xs[math.floor(pos)] + (xs[min(math.floor(pos) + 1, len(xs) - 1)] - xs[math.floor(pos)]) * (pos % 1)
        (got,) = quantiles_from_bins(list(remapped), list(remapped.values()), (q,))
        assert got is not None and abs(got - exact) <= ALPHA * exact * (1 + 1e-12)


# -- rollup_merge: rows as DuckDB hands them over ------------------------------------------------


def table(rows: list[dict[str, object]]) -> pa.Table:
    sketch_type = pa.map_(pa.int16(), pa.int64())
    cols: dict[str, pa.Array] = {
        "tenant_id": pa.array([r["tenant_id"] for r in rows], pa.string()),
        "use_case": pa.array([r["use_case"] for r in rows], pa.string()),
    }
    for name, kind in schema.ROLLUP_COUNTERS:
        cols[name] = pa.array([r.get(name, 1) for r in rows], pa.float64() if kind == "float" else pa.int64())
    for m, (column, _, _) in enumerate(schema.ROLLUP_SKETCHES):
        cols[column] = pa.array([r.get(column) for r in rows], sketch_type)
        cols[f"_i{m}"] = pa.array([r.get(f"_i{m}") for r in rows], pa.int16())
    return pa.table(cols)


def test_merged_rows_group_sort_nulls_last_and_add_raw_values() -> None:
    s1, s2 = DDSketch.of([10.0, 20.0]), DDSketch.of([30.0])
    raw = DDSketch().index(40.0)
    t = table([
        {"tenant_id": "b", "use_case": None, "ttft_ms_sketch": list(s1.bins.items()), "requests": 2},
        {"tenant_id": "a", "use_case": "chat", "_i0": raw},
        {"tenant_id": "b", "use_case": None, "ttft_ms_sketch": list(s2.bins.items()), "tokens_per_s_sum": 2.5},
        {"tenant_id": "b", "use_case": "chat"},
        {"tenant_id": "a", "use_case": "chat", "ttft_ms_sketch": None, "_i0": None},
    ])
    rows = merged_rows(t, ["tenant_id", "use_case"], (0.5,))
    assert [(r["tenant_id"], r["use_case"]) for r in rows] == [("a", "chat"), ("b", "chat"), ("b", None)]
    assert [r["requests"] for r in rows] == [2, 1, 3] and rows[2]["tokens_per_s_sum"] == 3.5
    s1.merge(s2)
    assert rows[2]["ttft_ms_q"] == [pytest.approx(s1.quantile(0.5))]
    assert rows[0]["ttft_ms_q"] == [pytest.approx(bucket_value(raw))]  # type: ignore[arg-type]
    assert rows[1]["ttft_ms_q"] == [None] and rows[0]["itl_ms_q"] == [None]


def test_without_keys_there_is_one_row_even_over_nothing() -> None:
    rows = merged_rows(table([]), [], (0.5, 0.99))
    assert len(rows) == 1 and rows[0]["requests"] == 0 and rows[0]["total_ms_q"] == [None, None]
