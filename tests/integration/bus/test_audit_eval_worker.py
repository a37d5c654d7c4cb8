"""Audit of ``infersight eval-worker`` and the eval breaker's Redis signals, on real parts: a real
redis-server, a real DuckDB store, the simulator's ``sim-judge`` model as the judge."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from infersight.config import Settings, settings_from_dict
from infersight.evaluation.breaker import period_start
from infersight.evaluation.eval_health import RedisSpend
from infersight.evaluation.eval_worker import WorkerLag, eval_consumer
from infersight.model import EvalTask
from infersight.runtime_eval import spend_key
from infersight.sim.judge import sim_judge_profile
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.integration.bus.conftest import wait_until
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=11, profiles={**DEFAULT_PROFILES, "judge-ok": sim_judge_profile(10.0)}) as server:
        yield server


def make_settings(tmp_path: Path, redis_url: str, judge_url: str | None = None, **bus: Any) -> Settings:
    judge = {"url": judge_url, "model": "judge-ok", "max_retries": 0, "timeout_s": 0.5,
             "input_price_per_1m": 1000.0} if judge_url else {}
    return settings_from_dict(config_dict(tmp_path / "data", bus={"backend": "redis", "url": redis_url, **bus},
                                          evaluation={"judge": judge}))


def make_task(i: int) -> EvalTask:
    """A sampled task of now (the budget period's store seed counts requests of the period)."""
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", started_at=datetime.now(timezone.utc).isoformat(), status_code=200,
                    finish_reason="stop", prompt_text="What is the capital of France?", completion_text="Paris",
                    sample_reason="random")


def judge_cost(store: DuckDBStore, tasks: list[EvalTask]) -> float:
    return sum(r["judge_cost"] or 0.0 for t in tasks for r in store.eval_results_for(t.trace_id)
               if r["evaluator"] == "llm_judge")


def test_spend_counter_lost_by_redis_is_rebuilt_from_eval_results(
        redis_server: RedisServer, sim: SimServer, tmp_path: Path) -> None:
    """Before the fix, a spend counter that Redis lost (a Redis without persistence restarted, or
    flushed) started again from 0 mid-day: the gateways' breakers then read only what was judged
    after the loss, and the judge could spend the budget a second time. Now the eval worker sees
    the counter missing and rebuilds it from eval_results before adding."""
    settings = make_settings(tmp_path, redis_server.url, sim.url)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    _, sink = eval_consumer(settings, store, CollectorRegistry())
    client = redis.Redis.from_url(redis_server.url)
    gateway = RedisSpend(client, spend_key(settings), "day")
    today = period_start(time.time(), "day")
    try:
        first, second = [make_task(i) for i in range(3)], [make_task(i) for i in range(3, 5)]
        sink.export(first)
        spent_first = judge_cost(store, first)
        assert spent_first > 0
        assert gateway.spend(today) == pytest.approx(spent_first)
        client.flushall()  # what a restarted Redis without persistence holds
        sink.export(second)
        total = judge_cost(store, first + second)
        assert total > judge_cost(store, second)
        assert gateway.spend(today) == pytest.approx(total)
    finally:
        sink.shutdown()
        store.close()


def test_spend_is_not_lost_while_redis_is_unreachable(redis_server: RedisServer) -> None:
    """Before the fix, ``RedisSpend`` raised when Redis was down (the eval sink logged it and went
    on): the cost the judge was paid never reached the shared counter, so the budget read low for
    the rest of the period. Now it is owed and added once Redis answers."""
    worker = RedisSpend(redis.Redis.from_url(redis_server.url, socket_timeout=2), "evals:spend", "day")
    gateway = RedisSpend(redis.Redis.from_url(redis_server.url), "evals:spend", "day")
    today = period_start(time.time(), "day")
    worker.paid({("t1", "s"): 1.0})
    redis_server.stop()
    worker.paid({("t2", "s"): 0.5})  # the judge was paid; Redis is not there to count it
    assert worker.owed() == pytest.approx(0.5)
    redis_server.start()
    worker.paid({("t3", "s"): 0.25})
    assert worker.owed() == 0.0
    assert gateway.spend(today) == pytest.approx(1.75)


def test_two_workers_adding_spend_at_once_lose_nothing(redis_server: RedisServer) -> None:
    """Gap: workers of one group add to one counter concurrently (INCRBYFLOAT is atomic)."""
    workers = [RedisSpend(redis.Redis.from_url(redis_server.url), "evals:spend", "day") for _ in range(4)]

    def add(worker: RedisSpend) -> None:
        for i in range(50):
            worker.paid({(f"t{i}", "s"): 0.01})

    threads = [threading.Thread(target=add, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert workers[0].spend(period_start(time.time(), "day")) == pytest.approx(2.0)


def test_worker_metrics_and_healthz_show_the_groups_lag(redis_server: RedisServer, tmp_path: Path) -> None:
    """Before the fix the eval worker's /metrics and /healthz had no lag at all (only the gateways'
    breakers read it): a backlog behind a slow or down judge showed nowhere on the workers. Now
    ``infersight_eval_oldest_unevaluated_seconds`` and ``oldest_unevaluated_s`` show the group's
    oldest unread or unacknowledged task, pending ones included, and 0 once all are acknowledged."""
    settings = make_settings(tmp_path, redis_server.url)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis.Redis.from_url(redis_server.url)
    registry = CollectorRegistry()
    lag = WorkerLag(settings, registry)
    assert lag.read() == 0.0  # no stream yet: nothing waits
    now_ms = int(time.time() * 1000)
    old = client.xadd(stream, {"r": b"{}"}, id=f"{now_ms - 120_000}-0")
    client.xadd(stream, {"r": b"{}"}, id=f"{now_ms - 1_000}-0")
    client.xgroup_create(stream, group, id="0")
    client.xreadgroup(group, "crashed", {stream: ">"}, count=1)  # pending on a worker that died
    age = lag.read()
    assert age is not None and 119.0 < age < 180.0
    text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith("infersight_eval_oldest_unevaluated_seconds "))
    assert 119.0 < float(line.split()[1]) < 180.0
    client.xack(stream, group, old)
    client.xreadgroup(group, "w", {stream: ">"}, count=10)
    client.xack(stream, group, f"{now_ms - 1_000}-0")
    assert lag.read() == 0.0
    redis_server.stop()
    assert lag.read() is None  # unreadable: said so, not reported as "nothing waits"


def test_crashed_workers_tasks_are_claimed_and_judged_once(
        redis_server: RedisServer, sim: SimServer, tmp_path: Path) -> None:
    """Gap: a worker that died mid-batch (its tasks read, never acknowledged) leaves them pending;
    the other worker of the group claims them once idle and judges each once: one row per
    (task, evaluator, dimension) in eval_results, nothing left pending."""
    settings = make_settings(tmp_path, redis_server.url, sim.url, claim_idle_ms=300)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    client = redis.Redis.from_url(redis_server.url)
    from infersight.bus.redis_conn import FIELD, encode

    tasks = [make_task(100 + i) for i in range(8)]
    client.xgroup_create(stream, group, id="0", mkstream=True)
    for t in tasks:
        client.xadd(stream, {FIELD: encode(t)})
    client.xreadgroup(group, "crashed-worker", {stream: ">"}, count=5)  # then SIGKILLed: never acked
    consumer, sink = eval_consumer(settings, store, CollectorRegistry())
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: consumer.stats().delivered == len(tasks), 30, "all tasks evaluated")
        assert consumer.stats().claimed == 5
        assert client.xpending(stream, group)["pending"] == 0
        for t in tasks:
            rows = store.eval_results_for(t.trace_id)
            keys = Counter((r["evaluator"], r["dimension"]) for r in rows)
            assert keys and max(keys.values()) == 1, keys
            assert any(ev == "llm_judge" and dim != "_error" for ev, dim in keys)
    finally:
        stop.set()
        runner.join(10)
        sink.shutdown()
        store.close()
