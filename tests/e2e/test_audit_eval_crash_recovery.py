"""Audit of crash and restart recovery of the evaluation path (AREA 12).

Real parts only: the eval process (``owner_child``) and the store process are real child processes,
the store is DuckDB, the judge is a real OpenAI-compatible HTTP server on 127.0.0.1 (``FakeJudge``)
that counts the calls it is paid for, and Redis is a real redis-server (tests/redis_server.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_lib
from prometheus_client import CollectorRegistry

from infersight.bus.redis_conn import FIELD, encode
from infersight.config import settings_from_dict
from infersight.evaluation.breaker import period_start
from infersight.evaluation.eval_worker import eval_consumer
from infersight.evaluation.owner import ProcessSpend
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.remote import RemoteStore
from tests.conftest import config_dict
from tests.e2e.test_audit_eval_owner import (  # noqa: F401 - fixtures
    Gateway, judge_rows, judges, owned_settings, store, task, wait_for,
)
from tests.integration.bus.test_audit_eval_scale import FakeJudge, verdict
from tests.integration.bus.conftest import redis_server  # noqa: F401 (the fixture)
from tests.redis_server import RedisServer


def test_judge_spend_paid_before_an_eval_process_crash_still_counts(
        tmp_path: Path, store: RemoteStore, judges: Callable[..., FakeJudge]) -> None:
    """Spec (docs/evaluation.md, "Circuit breaker"): spend "is counted when the judge is paid ...: a
    task dead-lettered ..., a batch whose worker was killed before its write, and held attempts
    ... were all paid for, and all count; a task judged again (a replay ...) counts again, because
    it was paid again"; in-process "a restart does not forget the day's spend".

    The store process is away (OOM-killed) while the eval process judges three tasks: 3.0 paid,
    held unwritten in the child's memory (``LocalSpend._unwritten``). Then the eval process is
    SIGKILLed too. Its replacement seeds the day's spend from eval_results only, replays the journal
    and pays the judge again for the same three tasks: the judge was paid 6.0, the budget sees 3.0."""
    judge = judges(lambda body, n: verdict(1000))  # every verdict costs 1.0
    settings = owned_settings(tmp_path, judge.url, budget=100.0, check_interval_s=60)
    gateway = Gateway(settings, store)
    try:
        spend = ProcessSpend(gateway.process)
        today = period_start(time.time(), "day")
        assert spend.spend(today) == pytest.approx(0.0)  # seeded while the store answers
        store_pid = store.process.pid
        assert store_pid is not None
        os.kill(store_pid, signal.SIGKILL)
        tasks = [task(40 + i, f"Capital of country {i}?") for i in range(3)]
        for t in tasks:
            gateway.masking.submit(t)
        wait_for(lambda: judge.calls >= 3, 30, "three verdicts paid while the store is away")
        time.sleep(0.3)
        assert spend.spend(today) == pytest.approx(3.0)  # counted as paid, not yet written

        child_pid = gateway.process.pid
        assert child_pid is not None
        os.kill(child_pid, signal.SIGKILL)
        wait_for(lambda: not gateway.process.alive(), 10, "the eval process to be seen gone")
        store.eval_results_for(tasks[0].trace_id)  # the gateway's next store call restarts the store process
        readings: list[float] = []

        def all_written() -> bool:
            readings.append(spend.spend(today))  # also restarts the eval process, which replays its journal
            return all(judge_rows(store, t) for t in tasks)

        wait_for(all_written, 60, "the replayed tasks judged and written")
        time.sleep(0.5)
        paid = judge.calls * 1.0
        final = spend.spend(today)
        assert final == pytest.approx(paid), (
            f"the judge was paid {paid} (calls: {judge.calls}) but the breaker's spend reads {final} "
            "after the eval process was replaced: what it had paid and not yet written was forgotten")
    finally:
        gateway.stop()



# -- scale-out: the eval workers' consumer group on a real redis-server ---------------------------

def test_a_killed_eval_workers_batch_is_reclaimed_after_the_configured_claim_idle_ms(
        tmp_path: Path, redis_server: RedisServer, judges: Callable[..., FakeJudge]) -> None:
    """Spec (docs/config.md): ``bus.claim_idle_ms`` (default 30000): "a message pending this long on
    a dead consumer is reclaimed (XAUTOCLAIM)"; docs/evaluation.md: a worker killed before its
    acknowledgement "leaves the batch to the worker that claims it".

    An operator sets ``claim_idle_ms: 2000``. An eval worker read a batch and was SIGKILLed (its
    entries stay pending under its name, which holds its pid: the restarted worker has another).
    The surviving worker (the judge on its default settings: 60 s timeout, 2 retries) claims them
    only after max(claim_idle_ms, timeout x (retries + 2)) = 240 s (``eval_worker.eval_consumer``),
    not 2 s: the dead worker's sampled tasks wait four minutes, eight times the documented default."""
    judge = judges(lambda body, n: verdict(1000))
    settings = settings_from_dict(config_dict(
        tmp_path / "data", bus={"backend": "redis", "url": redis_server.url, "claim_idle_ms": 2000},
        evaluation={"judge": {"url": judge.url, "model": "judge"}}))
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis_lib.Redis.from_url(redis_server.url)
    tasks = [task(60 + i, f"Capital of Italy? {i}") for i in range(6)]
    client.xgroup_create(stream, group, id="0", mkstream=True)
    for t in tasks:
        client.xadd(stream, {FIELD: encode(t)})
    client.xreadgroup(group, "host-4242-eval", {stream: ">"}, count=6)  # read, then SIGKILLed: never acked
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    consumer, sink = eval_consumer(settings, store, CollectorRegistry())
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20  # ten times claim_idle_ms
        while time.monotonic() < deadline and consumer.stats().delivered < len(tasks):
            time.sleep(0.2)
        pending = client.xpending(stream, group)["pending"]
        assert consumer.stats().delivered == len(tasks) and pending == 0, (
            f"20 s after a worker died with claim_idle_ms 2000, {pending} of its {len(tasks)} tasks are still "
            f"pending on it (judge calls: {judge.calls})")
    finally:
        stop.set()
        runner.join(15)
        sink.shutdown()
        store.close()
