"""EvalSink: checks on every task, the real judge (the simulator over HTTP) on sampled ones, rows in a
real DuckDB store; a failed store write is retried without paying the judge twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from infersight.bus.memory import MemoryBus
from infersight.evaluation.checks import run_checks
from infersight.evaluation.dead_letters import JsonlDeadLetters
from infersight.evaluation.eval_health import PendingTasks
from infersight.evaluation.llm_judge import LLMJudge
from infersight.evaluation.metrics import EvalWorkerMetrics
from infersight.evaluation.reference import run_reference
from infersight.evaluation.settings import JudgeSettings
from infersight.evaluation.worker import EvalSink
from infersight.model import EvalResult, EvalTask
from infersight.sim.judge import sim_judge_profile
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore

PROFILES = {**DEFAULT_PROFILES, "judge-ok": sim_judge_profile(10.0),
            "judge-broken": sim_judge_profile(10.0, malformed_rate=1.0, malformed_kinds=("garbage",))}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, profiles=PROFILES) as server:
        yield server


class CountingJudge:
    """The real judge, counting calls (to prove a redelivery does not judge twice)."""

    def __init__(self, inner: LLMJudge) -> None:
        self.inner = inner
        self.calls = 0
        self.evaluator_version = inner.evaluator_version
        self.judge_model = inner.judge_model

    async def evaluate(self, task: EvalTask) -> list[EvalResult]:
        self.calls += 1
        return await self.inner.evaluate(task)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FlakyStore:
    def __init__(self, inner: DuckDBStore, failures: int) -> None:
        self.inner, self.failures = inner, failures

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError("store down")
        return self.inner.write_rows(table, rows)


def task(i: int, *, sampled: bool, answer: str = "Paris", reference: str | None = None) -> EvalTask:
    return EvalTask(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large", use_case="chat",
        started_at="2096-01-01T00:00:00+00:00", status_code=200, finish_reason="stop",
        prompt_text="What is the capital of France?", completion_text=answer, reference=reference,
        sample_reason="random" if sampled else None,
    )


def judge(sim: SimServer, model: str) -> CountingJudge:
    return CountingJudge(LLMJudge.from_settings(JudgeSettings(url=sim.url, model=model, max_retries=1,
                                                              input_price_per_1m=1.0)))


def test_checks_on_all_judge_on_sampled_and_retry_without_rejudging(sim: SimServer, tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    counting = judge(sim, "judge-ok")
    registry = CollectorRegistry()
    sink = EvalSink(FlakyStore(store, failures=1), evaluators=[run_checks, run_reference], judge=counting,
                    metrics=EvalWorkerMetrics(registry), tenants=["acme"], models=["sim-large"])
    batch = [task(1, sampled=True), task(2, sampled=False, answer="Lyon", reference="Paris")]
    try:
        with pytest.raises(OSError):
            sink.export(batch)
        assert counting.calls == 1
        sink.export(batch)  # the bus redelivers the same batch
        assert counting.calls == 1  # scores were kept: the judge is not paid twice
        first = store.eval_results_for(f"{1:032x}")
        judged = [r for r in first if r["evaluator"] == "llm_judge"]
        assert {r["dimension"] for r in judged} >= {"factual_fidelity", "relevance"}
        assert all(r["use_case"] == "chat" and r["evaluator_version"] == counting.evaluator_version for r in judged)
        assert next(r for r in judged if r["dimension"] == "factual_fidelity")["score"] >= 4  # "Paris" is right
        second = store.eval_results_for(f"{2:032x}")
        assert {r["evaluator"] for r in second} == {"checks", "reference"}  # not sampled: no judge
        assert next(r for r in second if r["dimension"] == "token_f1")["score"] == 0.0
        sample = registry.get_sample_value("infersight_eval_results_total", {"evaluator": "llm_judge"})
        assert sample == len(judged)
        assert registry.get_sample_value("infersight_eval_store_failures_total") == 1
        rows_before = len(store.eval_results_for(f"{1:032x}"))
        sink.export(batch[:1])  # written already: a bus's probe (EvalSink is idempotent) or a redelivery
        assert counting.calls == 1 and len(store.eval_results_for(f"{1:032x}")) == rows_before
        assert registry.get_sample_value("infersight_eval_worker_tasks_total", {"outcome": "evaluated"}) == 2
    finally:
        sink.shutdown()
        store.close()


def test_a_task_twice_in_one_batch_is_judged_once(sim: SimServer, tmp_path: Path) -> None:
    """A journal replayed beside its stream entry can put one task twice in a batch. Was: judged
    twice (paid twice, with only one payment counted against the budget)."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    counting = judge(sim, "judge-ok")
    sink = EvalSink(store, evaluators=[run_checks], judge=counting, tenants=["acme"], models=["sim-large"])
    try:
        sink.export([task(1, sampled=True), task(2, sampled=True), task(1, sampled=True)])
        assert counting.calls == 2
        judged = [r for r in store.eval_results_for(f"{1:032x}") if r["evaluator"] == "llm_judge"]
        assert len(judged) == len({r["dimension"] for r in judged}) > 0
    finally:
        sink.shutdown()
        store.close()


def test_judge_failure_is_a_row_with_its_cost(sim: SimServer, tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    broken = judge(sim, "judge-broken")
    sink = EvalSink(store, evaluators=[], judge=broken)
    try:
        sink.export([task(3, sampled=True)])
        (row,) = store.eval_results_for(f"{3:032x}")
        assert (row["evaluator"], row["dimension"], row["label"]) == ("llm_judge", "_error", "invalid_reply")
        assert row["judge_tokens"] > 0 and row["judge_cost"] > 0
        assert sink.judge_failures == 1
    finally:
        sink.shutdown()
        store.close()


class FailsOnce:
    """A real store whose first write to ``table`` fails (the writes before it go through)."""

    def __init__(self, inner: DuckDBStore, table: str) -> None:
        self.inner, self.table, self.failed = inner, table, False

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        if table == self.table and not self.failed:
            self.failed = True
            raise OSError("store down")
        return self.inner.write_rows(table, rows)


def test_masked_content_is_kept_once_per_task_with_text(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = EvalSink(FailsOnce(store, "eval_results"), evaluators=[run_checks])
    masked = task(1, sampled=True, reference="Paris")
    masked.prompt_text, masked.guardrail_hits, masked.content_truncated = "Mail [EMAIL] please", ["pii:EMAIL"], True
    empty = task(2, sampled=False)
    empty.prompt_text = empty.completion_text = None
    try:
        with pytest.raises(OSError):
            sink.export([masked, empty])  # content written, then the eval_results write fails
        sink.export([masked, empty])  # redelivered: content again (a no-op), scores now
        (row,) = store.content_for(masked.trace_id, tenant_id="acme")
        assert row["prompt_text"] == "Mail [EMAIL] please" and row["completion_text"] == "Paris"
        assert row["reference_text"] == "Paris" and row["guardrail_hits"] == "pii:EMAIL"
        assert row["content_truncated"] is True and row["sample_reason"] == "random"
        assert row["started_at"].isoformat() == "2096-01-01T00:00:00+00:00"
        assert store.content_for(empty.trace_id) == []  # no text, no row
        assert store.content_for(masked.trace_id, tenant_id="globex") == []
        assert {r["dimension"] for r in store.eval_results_for(masked.trace_id)} >= {"empty", "truncated"}
        assert sink.content_written == 1
    finally:
        sink.shutdown()
        store.close()


POISON = f"{2:032x}"


def poison_check(task: EvalTask) -> list[EvalResult]:
    """Checks that crash on one task (a poison task), like an evaluator bug meeting odd input would."""
    if task.trace_id == POISON:
        raise ValueError("evaluator bug")
    return run_checks(task)


def test_a_task_the_evaluators_keep_failing_on_goes_to_dead_letter_and_the_rest_is_written(tmp_path: Path) -> None:
    """The memory bus bisects, counts the poison task's proven failures and, after
    ``max_deliveries``, hands it to the sink's ``dead_lettered``: the eval dead-letter file (with
    the evaluators' error), out of the lag, counted; its batch-mates are written."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    dead = JsonlDeadLetters(tmp_path / "dead-letter")
    pending = PendingTasks()
    registry = CollectorRegistry()
    sink = EvalSink(store, evaluators=[poison_check], dead_letter=dead, pending=pending,
                    metrics=EvalWorkerMetrics(registry))
    bus = MemoryBus([sink], journal_dir=str(tmp_path / "spool-evals"), flush_interval_s=0.01, max_backoff_s=0.05,
                    max_deliveries=3, record_type=EvalTask)
    bus.start()
    try:
        for i in (1, 2, 3):
            t = task(i, sampled=False)
            pending.add(t)
            bus.publish(t)  # type: ignore[arg-type]
        assert bus.flush(timeout_s=10)
        assert store.eval_results_for(f"{1:032x}") and store.eval_results_for(f"{3:032x}")
        assert store.eval_results_for(POISON) == []
        (letter,) = dead.read()
        assert letter["task"]["trace_id"] == POISON  # type: ignore[index]
        assert str(letter["reason"]).startswith("evaluators failed: ValueError; EvalSink refused it 3 times")
        assert sink.dead_lettered_count == 1 and len(pending) == 0
        assert registry.get_sample_value("infersight_eval_worker_tasks_total", {"outcome": "dead_lettered"}) == 1
        assert bus.stats().dead_lettered == 1 and not list((tmp_path / "spool-evals").rglob("refused.jsonl"))
    finally:
        bus.stop()
        sink.shutdown()
        store.close()


def test_evaluators_that_are_away_dead_letter_nothing(tmp_path: Path) -> None:
    """An eval process that is away (restarting) fails every task. Counted per call, that
    dead-lettered healthy tasks within a second: the first task of each part of a bisected batch
    took a strike per part. Nothing proves a task bad while nothing goes through: the batch is
    held, and written once the evaluators are back."""
    down_until = time.monotonic() + 1.0

    def away_for_a_second(t: EvalTask) -> list[EvalResult]:
        if time.monotonic() < down_until:
            raise ConnectionError("eval process gone")
        return run_checks(t)

    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    dead = JsonlDeadLetters(tmp_path / "dead-letter")
    sink = EvalSink(store, evaluators=[away_for_a_second], dead_letter=dead)
    bus = MemoryBus([sink], journal_dir=str(tmp_path / "spool-evals"), batch_size=64, flush_interval_s=0.05,
                    max_backoff_s=0.2, max_deliveries=5, record_type=EvalTask)
    bus.start()
    try:
        for i in range(64):
            bus.publish(task(i, sampled=False))  # type: ignore[arg-type]
        assert bus.flush(timeout_s=20)
        assert dead.read() == [] and sink.dead_lettered_count == 0 and bus.stats().dead_lettered == 0
        assert all(store.eval_results_for(f"{i:032x}") for i in range(64))
    finally:
        bus.stop()
        sink.shutdown()
        store.close()


def test_without_a_dead_letter_sink_every_failure_goes_back_to_the_bus(tmp_path: Path) -> None:
    """The Redis consumer dead-letters by delivery count itself: the sink must keep raising."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = EvalSink(store, evaluators=[poison_check], max_failures=2)
    try:
        for _ in range(4):
            with pytest.raises(ValueError):
                sink.export([task(2, sampled=False)])
    finally:
        sink.shutdown()
        store.close()


def test_an_observer_failure_does_not_redeliver_written_results(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()

    def broken(results: list[EvalResult]) -> None:
        raise ConnectionError("redis down")

    sink = EvalSink(store, evaluators=[run_checks], observers=[broken])
    try:
        sink.export([task(1, sampled=False)])  # does not raise: the rows are in
        assert store.eval_results_for(f"{1:032x}") and sink.written > 0
    finally:
        sink.shutdown()
        store.close()


def test_score_metrics_keep_each_evaluator_version_a_series_of_its_own(tmp_path: Path) -> None:
    """A new judge or checks revision starts a new series in /metrics as in the store; the label's
    values stay bounded whatever comes (metrics.MAX_VERSIONS, then ``_other``)."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    versions = iter([f"v{i}" for i in range(20)])

    def versioned(task: EvalTask) -> list[EvalResult]:
        return [EvalResult.for_task(task, evaluator="judge_x", evaluator_version=next(versions),
                                     dimension="relevance", evaluated_at="2096-01-01T00:00:01+00:00",
                                     score=4.0, label="fail")]

    registry = CollectorRegistry()
    sink = EvalSink(store, evaluators=[versioned], metrics=EvalWorkerMetrics(registry), tenants=["acme"],
                    models=["sim-large"])
    try:
        sink.export([task(i, sampled=False) for i in range(20)])
    finally:
        sink.shutdown()
        store.close()

    def count(version: str) -> float | None:
        return registry.get_sample_value("infersight_eval_score_count", {
            "tenant": "acme", "model": "sim-large", "evaluator": "judge_x", "evaluator_version": version,
            "dimension": "relevance"})

    assert count("v0") == 1 and count("v7") == 1  # not mixed: one series per version
    assert count("v8") is None and count("_other") == 12  # bounded
    assert registry.get_sample_value("infersight_eval_check_failures_total", {
        "tenant": "acme", "model": "sim-large", "evaluator_version": "v3", "dimension": "relevance"}) == 1


def test_a_task_past_its_tenants_text_retention_is_checked_without_its_text(tmp_path: Path) -> None:
    """A task replayed long after its request (a journal after a long outage, a dead letter handed
    back) must not write back text the retention pass deleted, nor pay the judge for it."""
    from datetime import datetime, timedelta, timezone

    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    judged: list[str] = []

    class Judge:
        evaluator_version, judge_model = "v", "judge"

        async def evaluate(self, t: EvalTask) -> list[EvalResult]:
            judged.append(t.trace_id)
            return []

    registry = CollectorRegistry()
    sink = EvalSink(store, evaluators=[run_checks], judge=Judge(), metrics=EvalWorkerMetrics(registry),
                    text_days=lambda tenant: 30)
    old, recent = task(1, sampled=True), task(2, sampled=True)
    old.started_at = (datetime.now(timezone.utc) - timedelta(days=40)).isoformat()
    recent.started_at = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    try:
        sink.export([old, recent])
        assert {r["evaluator"] for r in store.eval_results_for(old.trace_id)} == {"checks"}  # checked
        assert store.content_for(old.trace_id) == [] and store.content_for(recent.trace_id)  # no text back
        assert judged == [recent.trace_id] and sink.text_expired == 1
        assert registry.get_sample_value("infersight_eval_worker_tasks_total", {"outcome": "text_expired"}) == 1
    finally:
        sink.shutdown()
        store.close()
