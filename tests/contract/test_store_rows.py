"""The Store contract, part 3: eval results, telemetry and cost lines (``write_rows``) and retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from infersight.store import schema
from infersight.store.base import RequestFilter, RetentionPolicy, Store, StoreError
from tests.contract.test_store import T0, rec

UTC = timezone.utc
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def eval_row(dimension: str, at: datetime, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        trace_id=TRACE, span_id="00f067aa0ba902b7", tenant_id="acme", model_id="m1", evaluator="llm_judge",
        evaluator_version="sha256:abc", dimension=dimension, score=0.75, label="good",
        explanation="Clair et concis ✓", judge_model="judge-1", judge_tokens=321, judge_cost=0.00042,
        evaluated_at=at, request_started_at=T0, use_case="chat", representative=True,
    )
    row.update(fields)
    return row


def sample(at: datetime, metric: str, value: float, instance: str = "gpu-host-1:8000", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(ts=at, source="vllm", instance=instance, gpu=None, model_id="m1", metric=metric, value=value)
    row.update(fields)
    return row


def cost_line(at: datetime, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        period_start=at, period="hour", tenant_id="acme", model_id="m1", use_case="chat", kind="tokens",
        input_tokens=1000, output_tokens=200, amount=0.0123, currency="USD", pricing_version="2026-11",
    )
    row.update(fields)
    return row


# -- eval results -----------------------------------------------------------------------------------


def test_eval_results_round_trip_oldest_first(store: Store) -> None:
    rows = [eval_row("relevance", T0 + timedelta(minutes=2)), eval_row("faithfulness", T0 + timedelta(minutes=1))]
    assert store.write_rows("eval_results", rows) == 2
    got = store.eval_results_for(TRACE)
    assert [r["dimension"] for r in got] == ["faithfulness", "relevance"]
    assert set(got[0]) == set(schema.EVAL_RESULTS.names)
    assert got[0] == rows[1]
    assert got[0]["evaluated_at"].utcoffset() == timedelta(0)


def test_eval_results_accept_iso_strings_and_nulls(store: Store) -> None:
    row = eval_row("toxicity", T0, span_id=None, score=None, label=None, explanation=None, judge_model=None,
                   judge_tokens=None, judge_cost=None, request_started_at=None, representative=None)
    row["evaluated_at"] = "2096-11-22T09:00:00.000001+02:00"
    assert store.write_rows("eval_results", [row]) == 1
    (got,) = store.eval_results_for(TRACE)
    assert got == {**row, "evaluated_at": T0 + timedelta(microseconds=1)}


def test_eval_results_are_idempotent_by_key(store: Store) -> None:
    rows = [eval_row("relevance", T0), eval_row("relevance", T0, span_id=None), eval_row("tone", T0)]
    assert store.write_rows("eval_results", rows + [rows[1]]) == 3  # a nullable key column still dedupes
    assert store.write_rows("eval_results", rows) == 0
    newer_version = eval_row("relevance", T0, evaluator_version="sha256:def")
    assert store.write_rows("eval_results", [newer_version]) == 1
    assert len(store.eval_results_for(TRACE)) == 4


def test_a_rerun_keeps_the_first_result_with_or_without_the_request_time(store: Store) -> None:
    """A task judged again gets a later evaluated_at, often in another batch: the first result
    stays. Rows without request_started_at (written by hand) were kept twice by DuckDB and
    collapsed to the later one by ClickHouse; a stored row at another trace, or without a span,
    must not hide a new one."""
    first = [eval_row("relevance", T0, score=0.9),
             eval_row("relevance", T0, request_started_at=None, span_id=None, score=0.8)]
    assert store.write_rows("eval_results", first) == 2
    later = T0 + timedelta(hours=30)
    rerun = [eval_row("relevance", later, score=0.1),
             eval_row("relevance", later, request_started_at=None, span_id=None, score=0.2),
             eval_row("relevance", later, request_started_at=None, span_id="1" * 16, score=0.3),  # new
             eval_row("relevance", later, request_started_at=None, trace_id="e" * 32, score=0.4)]  # other trace
    assert store.write_rows("eval_results", rerun) == 2
    assert store.write_rows("eval_results", rerun) == 0
    got = {(r["trace_id"], r["span_id"]): r["score"] for r in store.eval_results_for(TRACE)}
    assert got == {(TRACE, "00f067aa0ba902b7"): 0.9, (TRACE, None): 0.8, (TRACE, "1" * 16): 0.3}
    assert [r["score"] for r in store.eval_results_for("e" * 32)] == [0.4]


def test_stored_keys_finds_what_a_write_would_find(store: Store) -> None:
    """A write-ahead check: the keys a write of these rows would find stored, re-runs included (a
    later evaluated_at, the same request_started_at), and nothing else."""
    store.write_rows("eval_results", [eval_row("relevance", T0), eval_row("tone", T0, request_started_at=None)])
    later = T0 + timedelta(hours=5)
    probe = [eval_row("relevance", later), eval_row("relevance", later, trace_id="e" * 32),
             eval_row("tone", later, request_started_at=None), eval_row("coherence", later)]
    key = (TRACE, "00f067aa0ba902b7", "llm_judge", "sha256:abc")
    assert store.stored_keys("eval_results", probe) == {(*key, "relevance"), (*key, "tone")}
    assert store.stored_keys("eval_results", []) == set()
    with pytest.raises(StoreError):
        store.stored_keys("requests", probe)


def test_eval_results_are_scoped_by_tenant(store: Store) -> None:
    store.write_rows("eval_results", [eval_row("relevance", T0)])
    assert len(store.eval_results_for(TRACE, tenant_id="acme")) == 1
    assert store.eval_results_for(TRACE, tenant_id="globex") == []
    assert store.eval_results_for("f" * 32) == []


# -- telemetry ----------------------------------------------------------------------------------------


def test_telemetry_around_a_moment(store: Store) -> None:
    rows = [
        sample(T0 - timedelta(seconds=31), "kv_cache_usage", 0.1),  # outside the window
        sample(T0 - timedelta(seconds=30), "kv_cache_usage", 0.2),  # window edges are inclusive
        sample(T0, "num_requests_waiting", 3.0),
        sample(T0 + timedelta(seconds=30), "kv_cache_usage", 0.4),
        sample(T0 + timedelta(seconds=31), "kv_cache_usage", 0.5),
        sample(T0, "kv_cache_usage", 0.9, model_id="m2", instance="other-host:8000"),  # another model
        # a GPU sample knows its instance but not the model: it belongs to the model's instance
        sample(T0 + timedelta(seconds=5), "gpu_utilization", 87.5, source="nvml", gpu="0", model_id=None),
        sample(T0 + timedelta(seconds=5), "gpu_utilization", 10.0, source="nvml", gpu="0", model_id=None,
               instance="idle-host:8000"),  # an instance that never served m1
    ]
    assert store.write_rows("telemetry", rows) == len(rows)
    got = store.telemetry_around("m1", T0, timedelta(seconds=30))
    assert [(r["metric"], r["value"]) for r in got] == [
        ("kv_cache_usage", 0.2), ("num_requests_waiting", 3.0), ("gpu_utilization", 87.5), ("kv_cache_usage", 0.4),
    ]
    assert set(got[0]) == set(schema.TELEMETRY.names)
    assert got[0]["ts"] == T0 - timedelta(seconds=30) and got[0]["ts"].utcoffset() == timedelta(0)
    assert store.telemetry_around("unknown-model", T0, timedelta(hours=1)) == []


def test_telemetry_is_idempotent_by_key(store: Store) -> None:
    rows = [sample(T0, "kv_cache_usage", 0.5), sample(T0, "gpu_utilization", 50.0, gpu=None, source="nvml")]
    assert store.write_rows("telemetry", rows) == 2
    assert store.write_rows("telemetry", rows + rows) == 0
    assert store.write_rows("telemetry", [sample(T0, "gpu_utilization", 51.0, gpu="1", source="nvml")]) == 1


# -- cost lines -----------------------------------------------------------------------------------------


def test_cost_lines_are_idempotent_by_key(store: Store) -> None:
    lines = [cost_line(T0), cost_line(T0, model_id=None, use_case=None, kind="instance", amount=3.5)]
    assert store.write_rows("cost_lines", lines + lines) == 2
    assert store.write_rows("cost_lines", lines) == 0
    assert store.write_rows("cost_lines", [cost_line(T0, pricing_version="2026-12")]) == 1


# -- write_rows validation ------------------------------------------------------------------------------


def test_write_rows_refuses_bad_input(store: Store) -> None:
    assert store.write_rows("telemetry", []) == 0
    with pytest.raises(StoreError):
        store.write_rows("no_such_table", [sample(T0, "x", 1.0)])
    with pytest.raises(StoreError):  # a required column missing
        store.write_rows("telemetry", [{k: v for k, v in sample(T0, "x", 1.0).items() if k != "metric"}])
    with pytest.raises(StoreError):  # a misspelt column is not dropped silently
        store.write_rows("telemetry", [{**sample(T0, "x", 1.0), "valeu": 2.0}])
    with pytest.raises(StoreError):
        store.write_rows("telemetry", [sample(T0, "x", 1.0, ts="yesterday")])


# -- retention --------------------------------------------------------------------------------------------

NOW = datetime(2096, 12, 1, tzinfo=UTC)
POLICY = RetentionPolicy(requests_days=90, text_days=30, text_days_by_tenant={"vip": 60, "strict": 7},
                         eval_results_days=90, telemetry_days=30, cost_lines_days=455)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def text(i: int, days: float, tenant: str = "acme") -> Any:
    return rec(i, days_ago(days), tenant=tenant, prompt_text=f"prompt {i}", completion_text=f"answer {i}",
               prompt_hash="ab" * 32)


def test_retention_deletes_old_rows_and_nulls_old_text(store: Store) -> None:
    store.write_requests([
        text(1, 91), text(2, 89.9),  # 1: past requests_days; 2: kept, text past text_days
        text(3, 31), text(4, 29),  # default text_days = 30
        text(5, 45, tenant="vip"), text(6, 61, tenant="vip"),  # vip keeps text 60 days
        text(7, 8, tenant="strict"), text(8, 6, tenant="strict"),  # strict keeps text 7 days
        rec(9, days_ago(50)),  # no text to null: not counted
    ])
    store.write_rows("eval_results", [eval_row("a", days_ago(91)), eval_row("b", days_ago(89))])
    store.write_rows("telemetry", [sample(days_ago(31), "m", 1.0), sample(days_ago(29), "m", 2.0)])
    store.write_rows("cost_lines", [cost_line(days_ago(456)), cost_line(days_ago(454))])

    removed = store.apply_retention(NOW, POLICY)

    assert {k: removed[k] for k in ("requests", "requests_text", "eval_results", "telemetry", "cost_lines")} == {
        "requests": 1, "requests_text": 4, "eval_results": 1, "telemetry": 1, "cost_lines": 1,
    }
    assert store.get_requests(f"{1:032x}") == []
    for i, has_text in ((2, False), (3, False), (4, True), (5, True), (6, False), (7, False), (8, True)):
        (row,) = store.get_requests(f"{i:032x}")
        assert (row["prompt_text"] is not None) is has_text, i
        assert (row["completion_text"] is not None) is has_text, i
        assert row["prompt_hash"] == "ab" * 32  # the row and its other fields stay
    assert store.count_requests(RequestFilter()) == 8
    assert [r["dimension"] for r in store.eval_results_for(TRACE)] == ["b"]
    assert [r["value"] for r in store.telemetry_around("m1", days_ago(30), timedelta(days=2))] == [2.0]
    assert store.write_rows("cost_lines", [cost_line(days_ago(454))]) == 0  # still there
    assert store.write_rows("cost_lines", [cost_line(days_ago(456))]) == 1  # gone, so it is new again


def test_retention_nulls_the_judges_explanations_with_the_text(store: Store) -> None:
    """Was: the judge's explanations (free text that can quote the masked prompt or answer it read)
    stayed for eval_results_days (90) after the text they quote was gone at text_days."""
    store.write_rows("eval_results", [
        eval_row("relevance", days_ago(31), request_started_at=days_ago(31)),  # past text_days (30)
        eval_row("coherence", days_ago(29), request_started_at=days_ago(29)),
        eval_row("tone", days_ago(8), request_started_at=days_ago(8), tenant_id="strict"),  # strict: 7 days
        eval_row("factual_fidelity", days_ago(45), request_started_at=days_ago(45), tenant_id="vip"),  # vip: 60
        eval_row("refusal", days_ago(31), request_started_at=days_ago(31), evaluator="checks",
                 explanation="no refusal phrase near the start"),  # a check's explanation is not text
        eval_row("relevance", days_ago(31), request_started_at=None, evaluator_version="sha256:old"),  # old row
    ])

    removed = store.apply_retention(NOW, POLICY)

    assert removed["eval_results_text"] == 3
    rows = {(r["dimension"], r["evaluator_version"]): r for r in store.eval_results_for(TRACE)}
    assert len(rows) == 6  # the rows stay, with their scores
    nulled = {key for key, r in rows.items() if r["explanation"] is None}
    assert nulled == {("relevance", "sha256:abc"), ("tone", "sha256:abc"), ("relevance", "sha256:old")}
    assert all(r["score"] == 0.75 and r["label"] == "good" for r in rows.values())
    assert store.apply_retention(NOW, POLICY)["eval_results_text"] == 0


def test_retention_is_idempotent_and_spares_recent_rows(store: Store) -> None:
    store.write_requests([text(1, 1), text(2, 10, tenant="vip")])
    store.write_rows("telemetry", [sample(days_ago(1), "m", 1.0)])
    first = store.apply_retention(NOW, POLICY)
    assert all(v == 0 for v in first.values()), first
    assert store.apply_retention(NOW, POLICY) == first
    assert store.get_requests(f"{1:032x}")[0]["prompt_text"] == "prompt 1"
    assert store.count_requests(RequestFilter()) == 2
