"""A judge that is away holds its tasks on the embedded eval bus until it answers.

Was: once the judge's own retries ran out, every sampled task got an ``_error`` row and was never
judged again, so a judge outage of minutes left those requests without scores, eval lag never grew
and the breaker never saw it. Now the embedded sink raises ``JudgeUnavailable`` for failures that
say the judge is away (``OUTAGE_REASONS``); the bus holds the batch and retries it with backoff,
never bisecting it into dead letters; what was already scored is not asked again, and what needs no
judge, or has its verdict, is written meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infersight.bus.memory import MemoryBus
from infersight.evaluation.checks import run_checks
from infersight.evaluation.eval_health import PendingTasks
from infersight.evaluation.llm_judge import LLMJudge
from infersight.evaluation.settings import JudgeSettings
from infersight.evaluation.worker import EvalSink, JudgeUnavailable
from infersight.model import EvalResult, EvalTask
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore
from tests.redis_server import free_port
from tests.unit.evaluation.test_worker import PROFILES, CountingJudge, task


def rows_by_trace(store: DuckDBStore, n: int) -> dict[int, set[tuple[str, str]]]:
    return {i: {(r["evaluator"], r["dimension"]) for r in store.eval_results_for(f"{i:032x}")} for i in range(n)}


def test_a_judge_outage_holds_the_tasks_and_they_are_judged_when_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    judge = CountingJudge(LLMJudge.from_settings(JudgeSettings(
        url=f"http://127.0.0.1:{port}/v1", model="judge-ok", max_retries=0, timeout_s=2.0)))
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    pending = PendingTasks()
    sink = EvalSink(store, evaluators=[run_checks], judge=judge, pending=pending, max_failures=2,
                    hold_on_judge_outage=True)
    bus = MemoryBus([sink], journal_dir=str(tmp_path / "spool"), batch_size=16, flush_interval_s=0.05,
                    max_deliveries=2)
    bus.start()
    try:
        for i in range(4):  # two sampled (judge and checks), two not (checks only), one batch
            t = task(i, sampled=i < 2)
            pending.add(t)
            bus.publish(t)  # type: ignore[arg-type]
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and judge.calls < 6:  # several rounds against the closed port
            time.sleep(0.05)
        assert judge.calls >= 4
        held = rows_by_trace(store, 4)
        assert not held[0] and not held[1]  # the sampled tasks wait for their judge: nothing written yet
        assert ("checks", "refusal") in held[2] and ("checks", "refusal") in held[3]  # checks only: no wait
        assert sink.judge_failures == 0 and len(pending) == 2  # lag grows, no _error rows

        with SimServer(seed=5, profiles=PROFILES, port=port):  # the judge is back
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and len(pending):
                time.sleep(0.1)
            rows = rows_by_trace(store, 4)
        for i in range(4):
            judged = {dim for ev, dim in rows[i] if ev == "llm_judge"}
            assert ("checks", "refusal") in rows[i], i
            if i < 2:
                assert judged and "_error" not in judged, (i, judged)  # scored, once the judge was back
            else:
                assert not judged, i
        assert bus.stats().dead_lettered == 0 and not list((tmp_path / "spool").rglob("refused.jsonl"))
        assert len(pending) == 0
    finally:
        bus.stop()
        sink.shutdown()
        store.close()


def test_a_task_the_judge_refuses_still_ends_as_its_error_row(tmp_path: Path) -> None:
    """Not every failure is an outage: a judge that answers garbage after its repairs gives the
    task its ``_error`` row at once, held or not."""
    with SimServer(seed=5, profiles=PROFILES) as sim:
        judge = CountingJudge(LLMJudge.from_settings(JudgeSettings(url=sim.url, model="judge-broken",
                                                                   max_retries=0)))
        store = DuckDBStore(str(tmp_path / "s.duckdb"))
        store.migrate()
        sink = EvalSink(store, evaluators=[], judge=judge, hold_on_judge_outage=True)
        try:
            sink.export([task(7, sampled=True)])
            (row,) = store.eval_results_for(f"{7:032x}")
            assert (row["dimension"], row["label"]) == ("_error", "invalid_reply")
            assert sink.judge_failures == 1
        finally:
            sink.shutdown()
            store.close()


class _Timeout(Exception):
    reason = "timeout"


class OverloadedJudge:
    """Answers most tasks and times out on the ones named: an overloaded judge, not a down one."""

    evaluator_version, judge_model = "v-overloaded", "judge"

    def __init__(self, slow: set[str]) -> None:
        self.slow = slow
        self.calls: list[str] = []

    async def evaluate(self, t: EvalTask) -> list[EvalResult]:
        self.calls.append(t.trace_id)
        if t.trace_id in self.slow:
            raise _Timeout("judge call timed out")
        return [EvalResult.for_task(t, evaluator="llm_judge", evaluator_version=self.evaluator_version,
                                    dimension="relevance", evaluated_at="2096-01-01T00:00:01+00:00", score=4.0,
                                    judge_model=self.judge_model, judge_cost=0.5)]


def test_an_overloaded_judge_holds_only_the_tasks_it_timed_out_on(tmp_path: Path) -> None:
    """Was: one timeout in a round held the whole batch, verdicts in hand included, and the bus tops
    a held batch up with the tasks queued behind it, each of which an overloaded judge may time out
    on: nothing was written while the judge answered most calls."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    pending = PendingTasks()
    slow = task(1, sampled=True)
    judge = OverloadedJudge({slow.trace_id})
    sink = EvalSink(store, evaluators=[run_checks], judge=judge, pending=pending, hold_on_judge_outage=True)
    batch = [task(0, sampled=True), slow, task(2, sampled=False)]
    try:
        for t in batch:
            pending.add(t)
        with pytest.raises(JudgeUnavailable):
            sink.export(batch)
        rows = rows_by_trace(store, 3)
        assert ("llm_judge", "relevance") in rows[0] and ("checks", "refusal") in rows[2]  # written meanwhile
        assert not rows[1] and len(pending) == 1  # only the timed-out task is held (and is lag)
        with pytest.raises(JudgeUnavailable):
            sink.export([*batch, task(3, sampled=True)])  # the bus retries, topped up with a new task
        assert judge.calls.count(batch[0].trace_id) == 1  # a written verdict is not paid for again
        assert ("llm_judge", "relevance") in rows_by_trace(store, 4)[3] and len(pending) == 1
        judge.slow.clear()  # the judge catches up
        sink.export([*batch, task(3, sampled=True)])
        assert ("llm_judge", "relevance") in rows_by_trace(store, 2)[1] and len(pending) == 0
        assert len(store.eval_results_for(batch[0].trace_id)) == len(rows[0])  # one row each, written twice
    finally:
        sink.shutdown()
        store.close()
