"""The eval circuit breaker: opens on lag or spend, lowers only random sampling, closes with hysteresis."""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import CollectorRegistry

from infersight.evaluation.breaker import EvalBreaker, period_start
from infersight.evaluation.eval_health import LocalSpend, PendingTasks
from infersight.evaluation.metrics import EvalGatewayMetrics
from infersight.evaluation.sampler import Sampler
from infersight.evaluation.settings import BreakerSettings
from infersight.model import EvalResult, EvalTask

DAY = 86_400.0
T0 = datetime(2096, 3, 14, 12, 0, tzinfo=timezone.utc).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Lag:
    def __init__(self) -> None:
        self.value: float | None = None
        self.fail = False

    def oldest_age_s(self, now: float) -> float | None:
        if self.fail:
            raise ConnectionError("redis down")
        return self.value


class Spend:
    """Spend per period start, as a shared counter would hold it."""

    def __init__(self) -> None:
        self.by_period: dict[datetime, float] = {}

    def spend(self, start: datetime) -> float:
        return self.by_period.get(start, 0.0)


def build(cfg: BreakerSettings, lag: Lag | None = None, spend: Spend | None = None,
          clock: Clock | None = None) -> tuple[EvalBreaker, Sampler, CollectorRegistry]:
    sampler = Sampler(0.2, {"acme": 0.5})
    registry = CollectorRegistry()
    breaker = EvalBreaker(cfg, sampler, lag, spend, gauges=EvalGatewayMetrics(registry), clock=clock or Clock())
    return breaker, sampler, registry


def test_lag_opens_lowers_random_sampling_and_closes_only_below_the_recovery_lag() -> None:
    lag = Lag()
    breaker, sampler, registry = build(BreakerSettings(max_lag_s=300, recover_lag_s=60, reduced_factor=0.1), lag)
    lag.value = 299.0
    assert breaker.check().open is False and sampler.rate("acme") == 0.5
    lag.value = 301.0
    state = breaker.check()
    assert state.open and state.reasons == ("lag",)
    assert abs(sampler.rate("acme") - 0.05) < 1e-12 and abs(sampler.rate("other") - 0.02) < 1e-12
    assert registry.get_sample_value("infersight_eval_breaker_open", {"reason": "lag"}) == 1
    assert registry.get_sample_value("infersight_eval_oldest_unevaluated_seconds") == 301.0
    lag.value = 120.0  # below the trip point, above the recovery point: stays open (no flapping)
    assert breaker.check().open
    lag.value = 59.0
    assert breaker.check().open is False
    assert sampler.rate("acme") == 0.5
    assert registry.get_sample_value("infersight_eval_breaker_open", {"reason": "lag"}) == 0
    assert breaker.trips == 1


def test_stratified_and_forced_samples_are_not_lowered() -> None:
    lag = Lag()
    breaker, sampler, _ = build(BreakerSettings(reduced_factor=0.0), lag)
    lag.value = 10_000.0
    assert breaker.check().open
    ids = [f"{i:032x}" for i in range(2000)]
    assert all(sampler.initial("acme", t) is None for t in ids)  # random sampling off at factor 0
    assert sampler.final(None, error=True, guardrail=False, low_confidence=False) == "error"
    assert sampler.final(None, error=False, guardrail=True, low_confidence=False) == "guardrail"
    sampler.force("acme", 60)
    assert sampler.initial("acme", ids[0]) == "forced"


def test_budget_opens_for_the_rest_of_the_period_and_a_new_day_closes_it() -> None:
    spend, clock = Spend(), Clock()
    breaker, sampler, registry = build(BreakerSettings(budget=10.0, budget_period="day"), None, spend, clock)
    today = period_start(clock.now, "day")
    spend.by_period[today] = 9.99
    assert breaker.check().open is False
    spend.by_period[today] = 10.0
    state = breaker.check()
    assert state.open and state.reasons == ("budget",) and state.spend == 10.0
    assert registry.get_sample_value("infersight_eval_spend") == 10.0
    assert abs(sampler.rate("acme") - 0.05) < 1e-12
    clock.now += DAY  # a new UTC day: its counter starts at zero
    assert breaker.check().open is False and sampler.rate("acme") == 0.5
    assert breaker.snapshot()["spend"] == 0.0


def test_a_breaker_opened_for_the_budget_closes_with_it_whatever_the_lag_below_max() -> None:
    """The recovery hysteresis is for lag that opened the breaker: one opened by the budget, with a
    lag between recover_lag_s and max_lag_s, closed only when the lag fell too, and said "lag"."""
    lag, spend, clock = Lag(), Spend(), Clock()
    breaker, sampler, _ = build(BreakerSettings(budget=10.0, max_lag_s=300, recover_lag_s=60), lag, spend, clock)
    today = period_start(clock.now, "day")
    lag.value, spend.by_period[today] = 120.0, 10.0
    assert breaker.check().reasons == ("budget",)
    clock.now += DAY  # a new day: the budget recovers; the lag (120 s) never passed max_lag_s
    state = breaker.check()
    assert not state.open and state.reasons == () and sampler.rate("acme") == 0.5
    lag.value = 301.0
    assert breaker.check().reasons == ("lag",)
    lag.value = 120.0  # opened by lag: held open until it is under recover_lag_s
    assert breaker.check().reasons == ("lag",)
    lag.value = 59.0
    assert not breaker.check().open


def test_month_period_starts_on_the_first() -> None:
    assert period_start(T0, "month") == datetime(2096, 3, 1, tzinfo=timezone.utc)
    assert period_start(T0, "day") == datetime(2096, 3, 14, tzinfo=timezone.utc)


def test_an_unreadable_signal_keeps_the_last_state() -> None:
    lag = Lag()
    breaker, _, _ = build(BreakerSettings(), lag)
    lag.value = 900.0
    assert breaker.check().open
    lag.fail = True
    state = breaker.check()
    assert state.open and state.lag_s == 900.0 and state.errors == {"lag": "ConnectionError"}
    lag.fail, lag.value = False, 1.0
    assert breaker.check().open is False


def test_disabled_breaker_reports_but_never_lowers() -> None:
    lag = Lag()
    breaker, sampler, registry = build(BreakerSettings(enabled=False), lag)
    lag.value = 10_000.0
    assert breaker.check().open is False
    assert sampler.rate("acme") == 0.5
    assert registry.get_sample_value("infersight_eval_oldest_unevaluated_seconds") == 10_000.0


def test_the_breaker_thread_checks_on_its_own() -> None:
    lag = Lag()
    lag.value = 1_000.0
    breaker, sampler, _ = build(BreakerSettings(check_interval_s=0.01), lag)
    breaker.start()
    try:
        import time

        deadline = time.monotonic() + 5
        while not breaker.state.open and time.monotonic() < deadline:
            time.sleep(0.01)
        assert breaker.state.open and sampler.rate("acme") < 0.5
    finally:
        breaker.stop()


def eval_task(i: int, started_at: str) -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m", started_at=started_at)


def test_pending_tasks_report_the_oldest_until_it_is_done() -> None:
    pending = PendingTasks()
    assert pending.oldest_age_s(T0) is None
    first = datetime.fromtimestamp(T0 - 400, timezone.utc).isoformat()
    second = datetime.fromtimestamp(T0 - 10, timezone.utc).isoformat()
    pending.add(eval_task(1, first))
    pending.add(eval_task(2, second))
    pending.add(eval_task(1, second))  # already pending: keeps its first time
    assert pending.oldest_age_s(T0) == 400.0
    pending.done([("%032x" % 1, "%016x" % 1)])
    assert pending.oldest_age_s(T0) == 10.0 and len(pending) == 1
    pending.done([("%032x" % 2, "%016x" % 2), ("unknown", "x")])
    assert pending.oldest_age_s(T0) is None


def test_pending_tasks_are_bounded() -> None:
    pending = PendingTasks(cap=2, clock=lambda: T0)
    for i in range(5):
        pending.add(eval_task(i, ""))
    assert len(pending) == 2


def test_local_spend_is_seeded_per_period_and_adds_paid_costs() -> None:
    seeded: list[datetime] = []

    def seed(start: datetime) -> float:
        seeded.append(start)
        return 2.5

    wall = [T0]
    spend = LocalSpend(seed, wall_clock=lambda: wall[0])
    day = period_start(T0, "day")
    assert spend.spend(day) == 2.5
    spend.paid({("t1", "s"): 0.25, ("t2", "s"): 0.25})
    assert spend.spend(day) == 3.0
    wall[0] = T0 + DAY
    spend.paid({("t3", "s"): 0.5})  # paid just after midnight, before the new day's first reading
    next_day = period_start(T0 + DAY, "day")
    assert spend.spend(next_day) == 3.0 and seeded == [day, next_day]  # yesterday's unwritten are not today's


def test_workers_sharing_a_store_each_see_the_whole_spend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Was: with --workers N each worker seeded its spend from the store once, then added only its own
    results, so the budget held per worker. With ``resync_s`` each re-reads the store's total."""
    from infersight.evaluation.eval_health import store_spend
    from infersight.store.duckdb_store import DuckDBStore

    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    now = [0.0]
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    workers = [LocalSpend(seed=store_spend(store), resync_s=30.0, clock=lambda: now[0]) for _ in range(2)]
    assert [w.spend(today) for w in workers] == [0.0, 0.0]

    def judged(i: int, cost: float) -> list[EvalResult]:
        task = EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m",
                        started_at=datetime.now(timezone.utc).isoformat(), status_code=200)
        row = EvalResult.for_task(task, evaluator="llm_judge", evaluator_version="v", dimension="relevance",
                                  evaluated_at=datetime.now(timezone.utc).isoformat(), score=4.0)
        row.judge_cost = cost
        return [row]

    for worker, (i, cost) in zip(workers, [(1, 2.0), (2, 3.0)], strict=True):
        rows = judged(i, cost)
        worker.paid({(rows[0].trace_id, rows[0].span_id): cost})  # as the EvalSink tells it: paid,
        store.write_rows("eval_results", [r.to_dict() for r in rows])
        worker.written(rows)  # then written
    assert [w.spend(today) for w in workers] == [2.0, 3.0]  # before a resync: its own only
    now[0] = 31.0
    assert [w.spend(today) for w in workers] == [5.0, 5.0]  # every worker's results
    workers[0].paid({("dead", "lettered"): 0.5})  # paid, never written: the store will not say
    now[0] = 62.0
    assert [w.spend(today) for w in workers] == [5.5, 5.0]
    store.close()
