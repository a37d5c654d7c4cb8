"""The Store contract, part 4: ``stats`` from the rollup tables, checked against the exact answer.

Every backend must answer long windows from its rollups with counts, errors and token sums equal to
the raw table's (``StatsQuery(exact=True)``), and p50/p95/p99 within 1% relative (the sketches
promise ``sketch.ALPHA`` = 0.5%). The windows here deliberately start and end off the minute, so
each query also reads the finer tables and raw rows at its edges. Fixed dates in 2096: see the
docstring of test_store.py. Writes (redelivery) and retention of rollups: test_store_rollups_writes.py
(apart because chdb holds one embedded session per process, and this module keeps one open).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from infersight.model import RequestRecord
from infersight.store.base import STAT_FIELDS, RequestFilter, StatsQuery, Store
from infersight.store.sketch import ALPHA
from tests.contract.conftest import BACKENDS, open_backend
from tests.contract.test_store import rec

UTC = timezone.utc
START = datetime(2096, 11, 19, tzinfo=UTC)
END = START + timedelta(days=3)
SINCE = START + timedelta(minutes=7, seconds=13, microseconds=500)  # off the minute at both ends
UNTIL = END - timedelta(hours=3, minutes=2, seconds=1)
QUANTILE_FIELDS = [f for f in STAT_FIELDS if f.endswith(("_p50", "_p95", "_p99"))]


def dataset(
    n: int = 3000, seed: int = 2096, start: datetime = START, span: timedelta = END - START
) -> list[RequestRecord]:
    """Lognormal latencies over a few tenants, models, use cases (one unknown) and backends."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        status = rng.choice([200] * 9 + [500, 429])
        out.append(rec(
            i, start + timedelta(seconds=rng.uniform(0, span.total_seconds())),
            tenant=rng.choice(["acme", "globex", "initech"]), model=rng.choice(["m1", "m2"]),
            use_case=rng.choice(["chat", "summarize", None]), backend=rng.choice(["vllm-a", "vllm-b"]),
            status_code=status, error_type="client_disconnected" if status == 200 and rng.random() < 0.03 else None,
            ttft_ms=None if rng.random() < 0.1 else rng.lognormvariate(4, 0.6),
            itl_ms_mean=None if rng.random() < 0.2 else rng.lognormvariate(2.5, 0.3),
            total_ms=rng.lognormvariate(7, 0.8),
            output_tokens_per_s=None if rng.random() < 0.1 else rng.uniform(10, 120),
            prompt_tokens=None if rng.random() < 0.05 else rng.randint(1, 4000), completion_tokens=rng.randint(0, 800),
        ))
    return out


def write_shuffled(store: Store, records: list[RequestRecord], batch: int = 250, seed: int = 1) -> None:
    """Batches in random time order, so most periods get partial rollup rows from several batches."""
    shuffled = records[:]
    random.Random(seed).shuffle(shuffled)
    for start in range(0, len(shuffled), batch):
        store.write_requests(shuffled[start:start + batch])


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per backend with the dataset written, shared by the read-only tests below."""
    s = open_backend(str(request.param), Path(tmp_path_factory.mktemp(f"rollups-{request.param}")))
    s.migrate()
    write_shuffled(s, dataset())
    try:
        yield s
    finally:
        s.close()


def assert_matches_exact(store: Store, **query: Any) -> list[dict[str, Any]]:
    """The rollup answer against ``exact=True``: same rows, exact counts and sums, quantiles within 1%."""
    got = store.stats(StatsQuery(**query))
    want = store.stats(StatsQuery(**query, exact=True))
    assert {row["source"] for row in want} <= {"raw"}
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for name in w:
            if name == "source":
                continue
            if name in QUANTILE_FIELDS:
                if w[name] is None:
                    assert g[name] is None, name
                else:
                    assert g[name] == pytest.approx(w[name], rel=0.01), name
                    assert abs(g[name] - w[name]) <= ALPHA * abs(w[name]) * (1 + 1e-9), name  # the sketch's bound
            elif name == "output_tokens_per_s_mean" and w[name] is not None:
                assert g[name] == pytest.approx(w[name], rel=1e-9), name
            else:
                assert g[name] == w[name], name  # group keys, bucket_start, counts, errors, token sums
    return got


# -- reads from the rollups ----------------------------------------------------------------------------


def test_the_whole_window_comes_from_the_day_rollups(loaded: Store) -> None:
    (row,) = assert_matches_exact(loaded, since=SINCE, until=UNTIL)
    assert row["source"] == "rollup_1d"
    assert row["requests"] == loaded.count_requests(RequestFilter(since=SINCE, until=UNTIL))
    assert 2800 < row["requests"] < 3000  # the edges cut some off, the rest is in


@pytest.mark.parametrize("group_by", [("tenant_id", "model_id"), ("use_case",), ("backend", "tenant_id"),
                                      ("tenant_id", "model_id", "use_case", "backend")])
def test_grouping_matches_exact(loaded: Store, group_by: tuple[str, ...]) -> None:
    rows = assert_matches_exact(loaded, since=SINCE, until=UNTIL, group_by=group_by)
    assert len(rows) > 1 and {row["source"] for row in rows} == {"rollup_1d"}
    if group_by == ("use_case",):
        assert [row["use_case"] for row in rows].count(None) == 1  # unknown use case is its own group


@pytest.mark.parametrize(("resolution", "source"), [
    (timedelta(hours=1), "rollup_1h"), (timedelta(hours=6), "rollup_6h"), (timedelta(hours=12), "rollup_6h"),
    (timedelta(hours=3), "rollup_1h"), (timedelta(days=1), "rollup_1d"), (timedelta(days=7), "rollup_1d"),
    (timedelta(minutes=90), "rollup_1m"), (timedelta(minutes=5), "rollup_1m"),
])
def test_buckets_match_exact(loaded: Store, resolution: timedelta, source: str) -> None:
    rows = assert_matches_exact(loaded, since=SINCE, until=UNTIL, group_by=("tenant_id",), resolution=resolution)
    assert {row["source"] for row in rows} == {source}
    starts = sorted({row["bucket_start"] for row in rows})
    assert starts[0] <= SINCE < starts[0] + resolution  # the first bucket holds the window's start


@pytest.mark.parametrize("scope", [{"tenant_id": "globex"}, {"model_id": "m2", "use_case": "chat"},
                                   {"tenant_id": "nobody"}])
def test_filters_match_exact(loaded: Store, scope: dict[str, str]) -> None:
    assert_matches_exact(loaded, since=SINCE, until=UNTIL, group_by=("model_id",), **scope)
    assert_matches_exact(loaded, since=SINCE, until=UNTIL, **scope)


@pytest.mark.parametrize(("since", "until", "resolution", "source"), [
    (SINCE, SINCE + timedelta(hours=6), None, "raw"),  # short windows are read exactly
    (SINCE, SINCE + timedelta(hours=7), None, "rollup_1h"),
    (SINCE, SINCE + timedelta(hours=13), None, "rollup_6h"),
    (SINCE, SINCE + timedelta(days=1, hours=1), None, "rollup_6h"),  # no whole day inside
    (START, END, None, "rollup_1d"),
    (SINCE, UNTIL, timedelta(seconds=30), "raw"),  # finer than a minute
    (SINCE, UNTIL, timedelta(seconds=90), "raw"),  # not a whole number of minutes
])
def test_the_source_is_chosen_by_window_and_resolution(
    loaded: Store, since: datetime, until: datetime, resolution: timedelta | None, source: str
) -> None:
    rows = loaded.stats(StatsQuery(since=since, until=until, resolution=resolution, group_by=("tenant_id",)))
    assert rows and {row["source"] for row in rows} == {source}
    exact = loaded.stats(
        StatsQuery(since=since, until=until, resolution=resolution, group_by=("tenant_id",), exact=True)
    )
    assert {row["source"] for row in exact} == {"raw"}
    assert [r["requests"] for r in rows] == [r["requests"] for r in exact]


def test_an_empty_window_from_rollups(loaded: Store) -> None:
    later = END + timedelta(days=10)
    (row,) = loaded.stats(StatsQuery(since=later, until=later + timedelta(days=3)))
    assert row["source"] == "rollup_1d"
    assert row["requests"] == row["errors"] == row["prompt_tokens_sum"] == row["completion_tokens_sum"] == 0
    assert row["ttft_ms_p50"] is None and row["output_tokens_per_s_mean"] is None
    assert loaded.stats(StatsQuery(since=later, until=later + timedelta(days=3), group_by=("tenant_id",))) == []
