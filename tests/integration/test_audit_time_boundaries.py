"""Audit of what changes with the clock: the judge's daily budget at midnight, forced windows and
their expiry across polls and restarts, and the eval lag the breaker reads.

Real components throughout (DuckDB, the file the gateways share their sampling overrides through,
the sampler's own poller thread, the breaker); the clocks the code takes are injected instead of
sleeping. Each test fails on the current code; its docstring says what a user expects and what
happens instead.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from infersight.evaluation.breaker import EvalBreaker, period_start
from infersight.evaluation.eval_health import LocalSpend, PendingTasks, store_spend
from infersight.evaluation.overrides import FileOverrides
from infersight.evaluation.sampler import FORCED_SKEW_S, Sampler
from infersight.evaluation.settings import BreakerSettings
from infersight.model import EvalResult, EvalTask
from infersight.store.duckdb_store import DuckDBStore

TRACE = "ef" * 16


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _task(i: int, started: float) -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-small",
                    started_at=_iso(started), status_code=200)


# -- forced windows ----------------------------------------------------------------------------------


def test_a_forced_deadline_cut_to_the_longest_window_still_ends_while_the_gateway_polls(tmp_path: Path) -> None:
    """Spec (docs/api.md, "Admin: evaluation sampling"): "A forced deadline further out than
    `evaluation.max_forced_window_s` (plus 5 minutes for clock skew between hosts) is cut to that:
    the breaker never lowers forced sampling, so an edited file must not force it for years."

    ``Sampler._refresh_locked`` cuts the deadline to ``now + max_forced_s + skew`` at every read,
    and the poller reads every second: the cut moves forward with the clock, so the window never
    ends (until the far deadline itself, ten years on), and a restart reads it again the same way.
    The existing unit test only passes because it never polls after moving its clock."""
    clock = Clock(1_900_000_000.0)
    path = tmp_path / "sampling-overrides.json"
    path.write_text('{"rates": {}, "forced": {"acme": %f}}' % (clock.now + 10 * 365 * 86_400))
    sampler = Sampler(0.0, overrides=FileOverrides(path), clock=clock, max_forced_s=3600, poll_s=0.02)
    sampler.start()  # the gateway's poller thread
    try:
        assert sampler.initial("acme", TRACE) == "forced"
        clock.now += 3600 + FORCED_SKEW_S + 1  # past the longest window the gateway allows
        time.sleep(0.2)  # ten polls of the running thread
        assert sampler.initial("acme", TRACE) is None, "still forced after the longest window the gateway allows"
    finally:
        sampler.stop()
    restarted = Sampler(0.0, overrides=FileOverrides(path), clock=clock, max_forced_s=3600)
    assert restarted.initial("acme", TRACE) is None, "forced again after a restart"


# -- the judge's daily budget at midnight ----------------------------------------------------------------


def _judge_rows(task: EvalTask, cost: float, evaluated: float) -> list[EvalResult]:
    row = EvalResult.for_task(task, evaluator="llm_judge", evaluator_version="v1", dimension="relevance",
                              evaluated_at=_iso(evaluated), score=4.0)
    row.judge_cost = cost
    return [row]


def test_judge_spend_paid_just_after_midnight_counts_in_the_new_days_budget(tmp_path: Path) -> None:
    """Spec (docs/evaluation.md, "Circuit breaker"): spend is the judge cost of the current UTC day,
    "counted when the judge is paid, as each judge call returns and before anything is written";
    a judge call paid at 00:00:01 is the new day's spend, and a restart reads it from the store.

    ``LocalSpend`` keeps paid-but-unwritten costs without their time, and the first breaker check
    of a new day (``_reseed(new_period=True)``) clears all of them as "paid in the period before".
    A call paid after midnight whose rows were not written by that check (the breaker's 5 s tick,
    a batch retried with backoff, the store process restarting) is then counted nowhere: not in the
    store's total at the reseed, and not when its rows are written (``written`` finds no unwritten
    cost to move; without ``--workers`` nothing re-reads the store). The running gateway reads 0
    for the rest of the day, a restart 1.5: the judge can spend past the budget all day."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    try:
        midnight = period_start(time.time(), "day").timestamp()
        if time.time() - midnight < 30:
            time.sleep(30 - (time.time() - midnight))
        clock = Clock(midnight - 2)
        spend = LocalSpend(seed=store_spend(store))
        breaker = EvalBreaker(BreakerSettings(budget=1.0, budget_period="day"), Sampler(0.5), None, spend, clock=clock)
        breaker.check()
        task = _task(1, midnight)
        spend.paid({(task.trace_id, task.span_id): 1.5})
        clock.now = midnight + 3  # the breaker's first check of the new day, before the rows are written
        at_first_check = breaker.check().spend
        rows = _judge_rows(task, 1.5, midnight + 1)
        store.write_rows("eval_results", [r.to_dict() for r in rows])
        spend.written(rows)
        clock.now = midnight + 8
        restarted = LocalSpend(seed=store_spend(store)).spend(period_start(clock.now, "day"))
        assert restarted == 1.5  # what a restart would read: the store has it
        state = breaker.check()
        assert (at_first_check, state.spend, state.open) == (1.5, 1.5, True), \
            f"the running gateway reads {at_first_check} then {state.spend}; a restart reads {restarted}"
    finally:
        store.close()


# -- eval lag --------------------------------------------------------------------------------------------


def test_lag_is_the_oldest_pending_task_when_a_long_request_finishes_after_a_short_one() -> None:
    """Spec (issue 4, "Workers"; docs/evaluation.md, "Lag"): lag is "the age of the oldest eval
    task not yet evaluated and written", measured from its request's start.

    ``PendingTasks`` reports the age of the first task *added*, assuming arrival order is start
    order. A task reaches it when its request ends, so a long stream (started 4 minutes ago)
    that ends after a short request is hidden behind it; so is a task replayed from the journal
    (``add_many``, an hour old) behind the fresh ones submitted since the restart. The breaker then
    reads seconds of lag while a task waits for an hour and never opens."""
    now = 1_900_000_000.0
    pending = PendingTasks(clock=lambda: now)
    pending.add(_task(1, now - 5))  # a short request, finished first
    pending.add(_task(2, now - 240))  # a 4-minute stream, finished just after

    after_restart = PendingTasks(clock=lambda: now)
    after_restart.add(_task(3, now - 2))  # a fresh request handed on since the restart
    after_restart.add_many([_task(4, now - 3600)])  # the sink meets a task replayed from the journal
    assert (pending.oldest_age_s(now), after_restart.oldest_age_s(now)) == (240.0, 3600.0)
