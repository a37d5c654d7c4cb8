"""The Store contract, part 2: ``stats`` against reference figures computed here in plain Python.

Quantiles use linear interpolation between closest ranks (numpy's default, "type 7"), which is what
DuckDB's quantile_cont and ClickHouse's quantileExactInclusive compute.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from infersight.model import RequestRecord
from infersight.store.base import STAT_FIELDS, StatsQuery, Store, StoreError
from tests.contract.test_store import T0, rec

UTC = timezone.utc
END = T0 + timedelta(hours=3)


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def reference(records: Iterable[RequestRecord]) -> dict[str, Any]:
    rs = list(records)

    def known(name: str) -> list[Any]:
        return [getattr(r, name) for r in rs if getattr(r, name) is not None]

    out: dict[str, Any] = {
        "requests": len(rs),
        "errors": sum(1 for r in rs if r.status_code >= 400 or r.error_type is not None),
    }
    for metric, source in (("ttft_ms", "ttft_ms"), ("itl_ms", "itl_ms_mean"), ("total_ms", "total_ms")):
        for label, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            out[f"{metric}_{label}"] = quantile(known(source), q)
    tps = known("output_tokens_per_s")
    out["output_tokens_per_s_mean"] = sum(tps) / len(tps) if tps else None
    out["prompt_tokens_sum"] = sum(known("prompt_tokens"))
    out["completion_tokens_sum"] = sum(known("completion_tokens"))
    return out


def assert_figures(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name in STAT_FIELDS:
        if want[name] is None:
            assert got[name] is None, name
        elif isinstance(want[name], int) and not isinstance(want[name], bool):
            assert got[name] == want[name], name
        else:
            assert got[name] == pytest.approx(want[name], rel=1e-6), name


def dataset() -> list[RequestRecord]:
    """Three hours of varied traffic: 3 tenants, 2 models, errors of both kinds, missing values."""
    rng = random.Random(20261122)
    out = []
    for i in range(600):
        status = rng.choice([200] * 8 + [429, 500])
        out.append(rec(
            i, T0 + timedelta(seconds=rng.uniform(0, 3 * 3600 - 1)),
            tenant=rng.choice(["acme", "globex", "initech"]), model=rng.choice(["m1", "m2"]),
            use_case=rng.choice(["chat", "summarize"]), backend=rng.choice(["vllm-a", "vllm-b"]),
            status_code=status,
            error_type="client_disconnected" if status == 200 and rng.random() < 0.05 else None,
            ttft_ms=None if rng.random() < 0.1 else round(rng.lognormvariate(4, 0.6), 3),
            total_ms=rng.uniform(50, 5000), itl_ms_mean=None if rng.random() < 0.2 else rng.uniform(5, 40),
            output_tokens_per_s=None if rng.random() < 0.1 else rng.uniform(10, 120),
            prompt_tokens=None if rng.random() < 0.05 else rng.randint(1, 4000),
            completion_tokens=rng.randint(0, 800),
        ))
    # the window's edges: since is inclusive, until is exclusive
    out.append(rec(10_000, T0, tenant="acme", model="m1", ttft_ms=1.0))
    out.append(rec(10_001, END, tenant="acme", model="m1", ttft_ms=99_999.0))
    out.append(rec(10_002, T0 - timedelta(microseconds=1), tenant="acme", model="m1", ttft_ms=99_999.0))
    return out


@pytest.fixture
def data(store: Store) -> list[RequestRecord]:
    records = dataset()
    for start in range(0, len(records), 128):
        store.write_requests(records[start:start + 128])
    return records


def in_window(records: list[RequestRecord], keep: Callable[[RequestRecord], bool] = lambda r: True) -> list[RequestRecord]:
    return [r for r in records if T0 <= datetime.fromisoformat(r.started_at) < END and keep(r)]


def test_one_row_for_the_whole_window(store: Store, data: list[RequestRecord]) -> None:
    (row,) = store.stats(StatsQuery(since=T0, until=END))
    assert list(row) == [*STAT_FIELDS, "source"]
    assert row["source"] == "raw"  # a three-hour window is read exactly
    assert_figures(row, reference(in_window(data)))


def test_group_by_tenant_and_model(store: Store, data: list[RequestRecord]) -> None:
    rows = store.stats(StatsQuery(since=T0, until=END, group_by=("tenant_id", "model_id")))
    groups: dict[tuple[str, str], list[RequestRecord]] = defaultdict(list)
    for r in in_window(data):
        groups[(r.tenant_id, r.model_id)].append(r)
    assert [(row["tenant_id"], row["model_id"]) for row in rows] == sorted(groups)  # ordered by the group
    for row in rows:
        assert list(row) == ["tenant_id", "model_id", *STAT_FIELDS, "source"]
        assert_figures(row, reference(groups[(row["tenant_id"], row["model_id"])]))


@pytest.mark.parametrize("column", ["use_case", "backend"])
def test_group_by_other_groupable_columns(store: Store, data: list[RequestRecord], column: str) -> None:
    rows = store.stats(StatsQuery(since=T0, until=END, group_by=(column,)))
    assert [row[column] for row in rows] == sorted({getattr(r, column) for r in in_window(data)})
    for row in rows:
        assert_figures(row, reference(in_window(data, lambda r: getattr(r, column) == row[column])))


def test_hourly_buckets(store: Store, data: list[RequestRecord]) -> None:
    rows = store.stats(StatsQuery(since=T0, until=END, group_by=("tenant_id",), resolution=timedelta(hours=1)))
    assert [list(row)[:2] for row in rows] == [["tenant_id", "bucket_start"]] * len(rows)
    keys = [(row["tenant_id"], row["bucket_start"]) for row in rows]
    assert keys == sorted(keys)
    assert len(rows) == 9  # 3 tenants x 3 hours
    for row in rows:
        start = row["bucket_start"]
        assert start.utcoffset() == timedelta(0) and start.minute == start.second == start.microsecond == 0
        expected = in_window(
            data, lambda r: r.tenant_id == row["tenant_id"]
            and start <= datetime.fromisoformat(r.started_at) < start + timedelta(hours=1),
        )
        assert_figures(row, reference(expected))


def test_buckets_align_to_the_epoch_not_to_since(store: Store, data: list[RequestRecord]) -> None:
    since = T0 + timedelta(minutes=10)
    rows = store.stats(StatsQuery(since=since, until=END, resolution=timedelta(minutes=30)))
    assert rows[0]["bucket_start"] == T0
    assert [r["bucket_start"] for r in rows] == [T0 + timedelta(minutes=30 * k) for k in range(6)]
    first = in_window(data, lambda r: since <= datetime.fromisoformat(r.started_at) < T0 + timedelta(minutes=30))
    assert_figures(rows[0], reference(first))


def test_tenant_scope_is_a_hard_boundary(store: Store, data: list[RequestRecord]) -> None:
    rows = store.stats(StatsQuery(since=T0, until=END, group_by=("model_id",), tenant_id="globex"))
    for row in rows:
        assert_figures(row, reference(in_window(data, lambda r: r.tenant_id == "globex" and r.model_id == row["model_id"])))
    assert store.stats(StatsQuery(since=T0, until=END, group_by=("model_id",), tenant_id="nobody")) == []


def test_model_and_use_case_filters(store: Store, data: list[RequestRecord]) -> None:
    (row,) = store.stats(StatsQuery(since=T0, until=END, model_id="m2", use_case="summarize"))
    assert_figures(row, reference(in_window(data, lambda r: r.model_id == "m2" and r.use_case == "summarize")))


def test_empty_window(store: Store, data: list[RequestRecord]) -> None:
    later = END + timedelta(days=1)
    assert store.stats(StatsQuery(since=later, until=later + timedelta(hours=1), group_by=("tenant_id",))) == []
    (row,) = store.stats(StatsQuery(since=later, until=later + timedelta(hours=1)))
    assert row["requests"] == 0 and row["errors"] == 0
    assert row["ttft_ms_p50"] is None and row["output_tokens_per_s_mean"] is None
    assert row["prompt_tokens_sum"] == 0 and row["completion_tokens_sum"] == 0


def test_unknown_values_are_ignored_not_zero(store: Store) -> None:
    store.write_requests([rec(1, T0, ttft_ms=10.0), rec(2, T0, ttft_ms=None), rec(3, T0, ttft_ms=30.0)])
    (row,) = store.stats(StatsQuery(since=T0, until=END))
    assert row["ttft_ms_p50"] == pytest.approx(20.0)
    assert row["itl_ms_p99"] is None and row["prompt_tokens_sum"] == 0


@pytest.mark.parametrize("group_by", [("prompt_text",), ("status_code",), ("tenant_id", "1; DROP TABLE requests")])
def test_group_by_outside_groupable_is_refused(store: Store, group_by: tuple[str, ...]) -> None:
    with pytest.raises(StoreError):
        store.stats(StatsQuery(since=T0, until=END, group_by=group_by))


def test_stats_reads_the_time_window_of_a_busy_table(store: Store) -> None:
    # rows far outside the window must not leak in (the backends prune on started_at first)
    store.write_requests([rec(i, T0 - timedelta(days=40 - i)) for i in range(40)])
    since = T0 - timedelta(days=10, hours=1)
    (row,) = store.stats(StatsQuery(since=since, until=T0))
    assert row["requests"] == 10
