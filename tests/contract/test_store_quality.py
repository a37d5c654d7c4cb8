"""The Store contract, part 6: the quality query over eval_results (both backends)."""

from __future__ import annotations

import statistics
from datetime import timedelta

import pytest

from infersight.store.base import Store, StoreError
from infersight.store.quality_sql import QUALITY_FIELDS, QualityQuery
from tests.contract.test_store import T0
from tests.contract.test_store_rows import eval_row

WINDOW = QualityQuery(since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=1))


def _rows(n: int, **fields: object) -> list[dict[str, object]]:
    base = {"dimension": "relevance", "evaluator": "llm_judge", "evaluator_version": "v1"}
    base.update(fields)
    return [eval_row(str(base["dimension"]), T0, trace_id=f"{i:032x}", **{k: v for k, v in base.items()
                                                                           if k != "dimension"})
            for i in range(n)]


def test_quality_groups_by_series_and_never_mixes_versions(store: Store) -> None:
    rows = [
        *_rows(3, score=4.0, tenant_id="acme"),
        *[{**r, "trace_id": f"a{r['trace_id'][1:]}", "score": 2.0} for r in _rows(2, tenant_id="acme")],
        *[{**r, "trace_id": f"b{r['trace_id'][1:]}"} for r in _rows(4, score=1.0, evaluator_version="v2")],
    ]
    store.write_rows("eval_results", rows)
    got = store.quality(WINDOW)
    assert [(r["evaluator_version"], r["evaluations"]) for r in got] == [("v1", 5), ("v2", 4)]
    v1 = got[0]
    assert v1["score_mean"] == pytest.approx((3 * 4.0 + 2 * 2.0) / 5)
    assert (v1["score_min"], v1["score_max"]) == (2.0, 4.0)
    assert set(QUALITY_FIELDS) <= set(v1)
    assert v1["scored"] == 5 and v1["score_stddev"] == pytest.approx(statistics.stdev([4.0] * 3 + [2.0] * 2))


def test_quality_stddev_counts_only_scored_rows_and_is_null_for_one(store: Store) -> None:
    """The drift check's inputs: judge errors carry no score, and one score has no sample stddev (DuckDB
    says NULL, ClickHouse nan: both must read as null)."""
    rows = [*_rows(1, score=3.0),
            *[{**r, "trace_id": f"e{r['trace_id'][1:]}", "score": None} for r in _rows(2)]]
    store.write_rows("eval_results", rows)
    [row] = store.quality(WINDOW)
    assert (row["evaluations"], row["scored"], row["score_mean"], row["score_stddev"]) == (3, 1, 3.0, None)


def test_a_constant_series_has_no_spread(store: Store) -> None:
    """Reference metrics repeat exactly (the same answer and reference give 0.4 each time). Was:
    ClickHouse's ``stddevSamp`` gave 8e-9 there, a spread that is not in the data."""
    store.write_rows("eval_results", _rows(8, score=0.4))
    [row] = store.quality(WINDOW)
    assert (row["scored"], row["score_mean"], row["score_stddev"]) == (8, pytest.approx(0.4), 0.0)


def test_quality_group_by_filters_and_failures(store: Store) -> None:
    rows = [
        *_rows(4, dimension="empty", evaluator="checks", label="pass", score=1.0, tenant_id="acme", use_case="chat"),
        *[{**r, "trace_id": f"c{r['trace_id'][1:]}"} for r in
          _rows(1, dimension="empty", evaluator="checks", label="fail", score=0.0, tenant_id="acme", use_case="chat")],
        *[{**r, "trace_id": f"d{r['trace_id'][1:]}"} for r in
          _rows(2, dimension="empty", evaluator="checks", label="fail", score=0.0, tenant_id="globex", use_case="rag")],
    ]
    store.write_rows("eval_results", rows)
    got = store.quality(QualityQuery(since=WINDOW.since, until=WINDOW.until, group_by=("tenant_id", "use_case")))
    by_tenant = {(r["tenant_id"], r["use_case"]): r for r in got}
    assert by_tenant[("acme", "chat")]["failures"] == 1
    assert by_tenant[("acme", "chat")]["failure_rate"] == pytest.approx(1 / 5)
    assert by_tenant[("globex", "rag")]["failure_rate"] == 1.0
    scoped = store.quality(QualityQuery(since=WINDOW.since, until=WINDOW.until, tenant_id="globex"))
    assert [r["evaluations"] for r in scoped] == [2]
    outside = store.quality(QualityQuery(since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=3)))
    assert outside == []


def test_quality_refuses_unknown_grouping(store: Store) -> None:
    with pytest.raises(StoreError):
        store.quality(QualityQuery(since=WINDOW.since, until=WINDOW.until, group_by=("prompt_text",)))


def test_quality_windows_on_the_request_or_on_when_it_was_judged(store: Store) -> None:
    """By default a late judgement lands in its request's window; ``window_on="evaluation"`` (the
    breaker's spend) counts it when the judge was paid."""
    late = [{**r, "request_started_at": T0 - timedelta(hours=26), "judge_cost": 0.5} for r in _rows(2)]
    store.write_rows("eval_results", [*late, *[{**r, "trace_id": "f" * 32, "judge_cost": 0.25} for r in _rows(1)]])
    by_request = store.quality(WINDOW)
    assert [(r["evaluations"], r["judge_cost"]) for r in by_request] == [(1, pytest.approx(0.25))]
    by_evaluation = store.quality(QualityQuery(since=WINDOW.since, until=WINDOW.until, window_on="evaluation"))
    assert [(r["evaluations"], r["judge_cost"]) for r in by_evaluation] == [(3, pytest.approx(1.25))]
