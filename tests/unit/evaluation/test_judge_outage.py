"""A judge that is away holds its tasks on the embedded eval bus until it answers.

Was: once the judge's own retries ran out, every sampled task got an ``_error`` row and was never
judged again, so a judge outage of minutes left those requests without scores, eval lag never grew
and the breaker never saw it. Now the embedded sink raises ``JudgeUnavailable`` for failures that
say the judge is away (``OUTAGE_REASONS``); the bus holds the batch and retries it with backoff,
never bisecting it into dead letters; what was already scored is not asked again.
"""

from __future__ import annotations

import time
from pathlib import Path

from infersight.bus.memory import MemoryBus
from infersight.evaluation.checks import run_checks
from infersight.evaluation.eval_health import PendingTasks
from infersight.evaluation.llm_judge import LLMJudge
from infersight.evaluation.settings import JudgeSettings
from infersight.evaluation.worker import EvalSink
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
        assert all(not keys for keys in rows_by_trace(store, 4).values())  # held whole: nothing written yet
        assert sink.judge_failures == 0 and len(pending) == 4  # lag grows, no _error rows

        with SimServer(seed=5, profiles=PROFILES, port=port):  # the judge is back
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and sink.written == 0:
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
