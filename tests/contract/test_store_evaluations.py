"""The Store contract, part 7: listing single eval_results rows (every backend)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from infersight.store.base import InvalidQuery, Store
from infersight.store.evaluations_sql import EvaluationFilter, encode_evaluation_cursor
from infersight.store.quality_sql import QualityQuery
from tests.contract.test_store import T0
from tests.contract.test_store_rows import eval_row


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The documented order: judged request's time, then the table key (span ids may be null)."""
    when = row["request_started_at"] or row["evaluated_at"]
    return (when, row["trace_id"], row["span_id"] or "", int(row["span_id"] is None), row["evaluator"],
            row["evaluator_version"], row["dimension"])


def _ids(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [_key(r) for r in rows]


def _all_pages(store: Store, flt: EvaluationFilter, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = store.list_evaluations(flt, limit=limit, cursor=cursor)
        assert len(page.data) <= limit
        out.extend(page.data)
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("paging did not end")


def _mixed_rows() -> list[dict[str, Any]]:
    """Ties on every sort column in turn: same request time, same trace, same span, same evaluator."""
    rows = []
    for i in range(3):
        for dim in ("relevance", "coherence"):
            rows.append(eval_row(dim, T0 + timedelta(minutes=5), trace_id=f"{i:032x}",
                                 request_started_at=T0 + timedelta(seconds=i % 2)))
    rows.append(eval_row("relevance", T0, trace_id="f" * 32, span_id=None))  # null span id
    rows.append(eval_row("relevance", T0, trace_id="e" * 32, evaluator_version="sha256:def"))
    rows.append(eval_row("empty", T0, trace_id="e" * 32, evaluator="checks", label="fail", score=0.0))
    rows.append(eval_row("_error", T0, trace_id="d" * 32, score=None, label="timeout"))
    # judged long after the request: listed at the request's time, not the judgement's
    rows.append(eval_row("relevance", T0 + timedelta(hours=5), trace_id="c" * 32,
                         request_started_at=T0 - timedelta(minutes=30)))
    rows.append(eval_row("tone", T0 - timedelta(minutes=10), trace_id="b" * 32, request_started_at=None))
    return rows


def test_pages_cover_every_row_once_in_the_documented_order(store: Store) -> None:
    rows = _mixed_rows()
    store.write_rows("eval_results", rows)
    everything = store.list_evaluations(EvaluationFilter(), limit=1000)
    assert everything.next_cursor is None
    assert _ids(everything.data) == sorted(_ids(rows), reverse=True)
    for limit in (1, 2, 3, 5):
        assert _ids(_all_pages(store, EvaluationFilter(), limit)) == _ids(everything.data), limit
    first = everything.data[0]
    assert first["explanation"] == "Clair et concis ✓" and first["judge_tokens"] == 321
    assert first["request_started_at"].tzinfo is not None


def test_a_cursor_stays_valid_when_rows_arrive_between_pages(store: Store) -> None:
    store.write_rows("eval_results", _mixed_rows())
    page = store.list_evaluations(EvaluationFilter(), limit=4)
    assert page.next_cursor is not None
    newer = eval_row("relevance", T0 + timedelta(hours=9), trace_id="9" * 32,
                     request_started_at=T0 + timedelta(hours=9))
    older = eval_row("relevance", T0, trace_id="8" * 32, request_started_at=T0 - timedelta(days=1))
    store.write_rows("eval_results", [newer, older])
    rest: list[dict[str, Any]] = []
    cursor = page.next_cursor
    while cursor is not None:
        nxt = store.list_evaluations(EvaluationFilter(), limit=4, cursor=cursor)
        rest.extend(nxt.data)
        cursor = nxt.next_cursor
    seen = _ids(page.data) + _ids(rest)
    assert len(seen) == len(set(seen)) == len(_mixed_rows()) + 1  # the older row is still ahead; the newer is not
    assert _key(older) in seen and _key(newer) not in seen


def test_filters_scope_and_the_failures_quality_counts(store: Store) -> None:
    rows = _mixed_rows() + [eval_row("relevance", T0, trace_id="7" * 32, tenant_id="globex", score=0.1)]
    store.write_rows("eval_results", rows)

    def listed(**fields: Any) -> list[tuple[Any, ...]]:
        return _ids(store.list_evaluations(EvaluationFilter(**fields), limit=1000).data)

    assert listed(tenant_id="globex") == [_key(rows[-1])]
    assert all(k[6] == "relevance" for k in listed(dimension="relevance"))
    assert len(listed(dimension="relevance")) == 7
    assert listed(evaluator="checks") == [_key(rows[8])]
    assert listed(label="timeout") == [_key(rows[9])]
    failed = listed(failed=True)
    assert sorted(failed) == sorted([_key(rows[8]), _key(rows[9])])
    window = QualityQuery(since=T0 - timedelta(days=1), until=T0 + timedelta(days=1))
    assert len(failed) == sum(r["failures"] for r in store.quality(window))
    assert len(listed(failed=False)) == len(rows) - 2
    low = listed(max_score=0.5)  # the failed check (0.0) and globex's 0.1; a null score never matches
    assert sorted(low) == sorted([_key(rows[8]), _key(rows[-1])])
    assert listed(min_score=0.1, max_score=0.1) == [_key(rows[-1])]
    hour = listed(since=T0 - timedelta(hours=1), until=T0)  # on the request's time: the late judgement is in
    assert sorted(hour) == sorted([_key(rows[10]), _key(rows[11])])
    assert listed(tenant_id="nobody") == []


def test_bad_cursors_and_bounds_are_invalid_queries(store: Store) -> None:
    good = encode_evaluation_cursor(T0, "a", "b", 0, "c", "d", "e")
    ancient = encode_evaluation_cursor(T0.replace(year=1900), "a", "b", 0, "c", "d", "e")
    for token in ("nope", "", "x" * 5000, good[:-3], ancient):
        with pytest.raises(InvalidQuery):
            store.list_evaluations(EvaluationFilter(), cursor=token)
    with pytest.raises(InvalidQuery):
        store.list_evaluations(EvaluationFilter(min_score=3, max_score=2))
    with pytest.raises(InvalidQuery):
        store.list_evaluations(EvaluationFilter(min_score=float("nan")))
    with pytest.raises(InvalidQuery):
        store.list_evaluations(EvaluationFilter(), limit=0)
