"""Audit of ``infersight eval-worker`` at scale: what the judge was paid, and what the spend counter the
gateways' breakers read says it was paid, through dead letters, replays, kills and Redis restarts.

Real parts only: a real redis-server (tests/redis_server.py), real DuckDB, a real OpenAI-compatible
judge on 127.0.0.1 that counts what it bills (each call 1,000 prompt tokens at 1,000 per 1M: 1.0),
the real eval consumer (``eval_consumer``) and the real ``infersight deadletter`` command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry

from infersight.bus.redis_conn import FIELD, encode
from infersight.cli import main
from infersight.config import settings_from_dict
from infersight.evaluation.breaker import period_start
from infersight.evaluation.eval_health import RedisSpend
from infersight.evaluation.eval_worker import eval_consumer
from infersight.evaluation.rubric import load_rubric
from infersight.model import EvalTask
from infersight.runtime_eval import spend_key
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.integration.bus.conftest import wait_until
from tests.redis_server import RedisServer

PRICE_IN = 1000.0  # per 1M input tokens: a call of 1,000 prompt tokens costs 1.0
CALL_COST = 1.0
DIMENSIONS = load_rubric("default").dimension_names
REPO = Path(__file__).resolve().parents[3]


class BillingJudge:
    """An OpenAI-compatible judge on 127.0.0.1: every call is a verdict billed 1,000 prompt tokens."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        judge = self
        content = json.dumps({d: {"score": 5, "explanation": "fine"} for d in DIMENSIONS})
        reply = json.dumps({"id": "x", "object": "chat.completion", "model": "judge",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with judge.lock:
                    judge.calls += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def paid(self) -> float:
        with self.lock:
            return self.calls * CALL_COST

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge() -> Iterator[BillingJudge]:
    j = BillingJudge()
    yield j
    j.close()


def config_for(tmp_path: Path, redis_url: str, judge_url: str, **bus: Any) -> dict[str, Any]:
    judge_cfg = {"url": judge_url, "model": "judge", "max_retries": 0, "timeout_s": 2.0,
                 "input_price_per_1m": PRICE_IN}
    return config_dict(tmp_path / "data", bus={"backend": "redis", "url": redis_url, **bus},
                       evaluation={"judge": judge_cfg}, logging={"level": "warning"})


def task(i: int) -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", started_at=datetime.now(timezone.utc).isoformat(), status_code=200,
                    finish_reason="stop", prompt_text="What is the capital of France?", completion_text="Paris",
                    sample_reason="random")


def judge_rows(store: DuckDBStore, t: EvalTask) -> list[dict[str, Any]]:
    return [r for r in store.eval_results_for(t.trace_id) if r["evaluator"] == "llm_judge"]


def today() -> datetime:
    return period_start(time.time(), "day")


class RefusingStore(DuckDBStore):
    """A real DuckDB store that refuses any write holding a row of a trace in ``refuse`` (a schema or
    store bug that one task's rows hit), until the cause is fixed (``refuse`` emptied)."""

    refuse: set[str]

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        if any(r.get("trace_id") in self.refuse for r in rows):
            raise RuntimeError("the store refused the row")
        return super().write_rows(table, rows)


class Worker:
    """One member of the eval consumer group, on its own thread."""

    def __init__(self, settings: Any, store: DuckDBStore) -> None:
        self.consumer, self.sink = eval_consumer(settings, store, CollectorRegistry())
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.consumer.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.sink.shutdown()


# -- the spend counter through a Redis restart ---------------------------------------------------------


def test_cost_owed_through_a_redis_restart_is_not_counted_twice_when_another_worker_rebuilt_the_counter(
        redis_server: RedisServer, judge: BillingJudge, tmp_path: Path) -> None:
    """Spec: eval spend is what the judge was paid; the breaker compares it with the budget
    (docs/evaluation.md, "Circuit breaker": a counter Redis lost is rebuilt from eval_results by the
    next worker write; a cost Redis did not take is kept by the worker and added when it answers).

    Two eval workers; Redis restarts without its data (no persistence). Worker B wrote a batch
    while Redis was away: its cost is owed. Worker A's next write finds the counter gone and
    rebuilds it from eval_results, which hold B's rows already. B then adds what it owes on top:
    B's batch is counted twice, and the breaker sees more spend than the judge was paid."""
    settings = settings_from_dict(config_for(tmp_path, redis_server.url, judge.url))
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    _, worker_a = eval_consumer(settings, store, CollectorRegistry())
    _, worker_b = eval_consumer(settings, store, CollectorRegistry())
    gateway = RedisSpend(redis.Redis.from_url(redis_server.url), spend_key(settings), "day")
    try:
        worker_a.export([task(1)])
        assert gateway.spend(today()) == pytest.approx(judge.paid)
        redis_server.stop()
        worker_b.export([task(2)])  # judged and written; Redis did not take its cost: owed
        redis_server.start()
        redis.Redis.from_url(redis_server.url).flushall()  # what a Redis without persistence comes back with
        worker_a.export([task(3)])  # the counter is gone: rebuilt from eval_results (tasks 1, 2, 3)
        worker_b.export([task(4)])  # adds what it owes (task 2) and task 4
        assert judge.calls == 4
        assert gateway.spend(today()) == pytest.approx(judge.paid), (
            f"the breakers read a spend of {gateway.spend(today()):.1f}; the judge was paid {judge.paid:.1f}")
    finally:
        worker_a.shutdown()
        worker_b.shutdown()
        store.close()


# -- dead letters and their replay ------------------------------------------------------------------


def test_a_dead_lettered_tasks_judge_cost_is_counted_before_and_after_its_replay(
        redis_server: RedisServer, judge: BillingJudge, tmp_path: Path) -> None:
    """Spec: judge tokens and cost are recorded per evaluation, and eval spend (what the breaker
    holds against the observability budget) is what the judge was paid; docs/evaluation.md: "the
    spend counts both calls, because both were paid".

    A task whose rows the store keeps refusing is judged (paid 1.0), then dead-lettered to
    ``<evaluation.stream>:dead`` after ``bus.max_deliveries``. Its verdict was never written, so
    its cost reaches neither eval_results nor the spend counter: the breakers read 3.0 for 4.0
    paid. After the fix and ``infersight deadletter replay --stream evals``, a worker started since
    (a deploy, a restart) judges it again: 5.0 paid, 4.0 counted. A store bug that refuses a
    share of the rows thus lets the judge spend past the budget unseen."""
    cfg = config_for(tmp_path, redis_server.url, judge.url, max_deliveries=2, claim_idle_ms=300)
    settings = settings_from_dict(cfg)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    store = RefusingStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    client = redis.Redis.from_url(redis_server.url)
    gateway = RedisSpend(client, spend_key(settings), "day")
    client.xgroup_create(stream, group, id="0", mkstream=True)
    refused, good = task(1), [task(i) for i in range(2, 5)]
    store.refuse = {refused.trace_id}
    for t in [refused, *good]:
        client.xadd(stream, {FIELD: encode(t)})
    problems: list[str] = []
    first = Worker(settings, store)
    try:
        wait_until(lambda: client.xlen(f"{stream}:dead") == 1 and all(judge_rows(store, t) for t in good), 30,
                   "the refused task dead-lettered, the others written")
        assert judge.calls == 4, judge.calls  # each task judged once
        if gateway.spend(today()) != pytest.approx(judge.paid):
            problems.append(f"after the dead letter: spend {gateway.spend(today()):.1f}, paid {judge.paid:.1f}")
    finally:
        first.stop()  # a deploy: the worker that judged it is gone
    store.refuse = set()  # the cause is fixed
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["deadletter", "replay", "--config", str(config), "--stream", "evals"]) == 0
    second = Worker(settings, store)
    try:
        wait_until(lambda: bool(judge_rows(store, refused)), 30, "the replayed task judged and written")
        wait_until(lambda: client.xpending(stream, group)["pending"] == 0, 10, "the replay acknowledged")
        if gateway.spend(today()) != pytest.approx(judge.paid):
            problems.append(f"after the replay: spend {gateway.spend(today()):.1f}, paid {judge.paid:.1f} "
                            f"({judge.calls} judge calls for 4 tasks)")
        assert not problems, problems
    finally:
        second.stop()
        store.close()


# -- a worker killed mid-batch ------------------------------------------------------------------------

CHILD = """
import json, sys, threading, time
from prometheus_client import CollectorRegistry
from infersight.config import settings_from_dict
from infersight.evaluation.eval_worker import eval_consumer
from infersight.store.duckdb_store import DuckDBStore

class SlowStore(DuckDBStore):
    def write_rows(self, table, rows):  # a store write that takes long (a loaded ClickHouse)
        print("writing", flush=True)
        time.sleep(3600)

store = SlowStore(sys.argv[2])
store.migrate()
consumer, sink = eval_consumer(settings_from_dict(json.loads(sys.argv[1])), store, CollectorRegistry())
consumer.run(threading.Event())
"""


def test_a_worker_killed_mid_batch_leaves_what_the_judge_cost_it_in_the_spend(
        redis_server: RedisServer, judge: BillingJudge, tmp_path: Path) -> None:
    """Spec: workers are a consumer group (a dead worker's tasks are claimed by another), and eval
    spend, which the breaker holds against the budget, is what the judge was paid.

    An eval worker judges its batch (paid 3.0) and is SIGKILLed before its store write returns (an
    OOM kill, a deploy that does not wait). Another worker claims the batch and judges it again
    (the store holds no judge rows for it: 3.0 more). The spend counter is added to only after a
    write, by the worker that wrote: it reads 3.0 for 6.0 paid. A worker in a crash loop pays the
    judge for every batch it never writes, and the breaker never sees any of it."""
    cfg = config_for(tmp_path, redis_server.url, judge.url, claim_idle_ms=300)
    settings = settings_from_dict(cfg)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis.Redis.from_url(redis_server.url)
    gateway = RedisSpend(client, spend_key(settings), "day")
    client.xgroup_create(stream, group, id="0", mkstream=True)
    batch = [task(i) for i in range(1, 4)]
    for t in batch:
        client.xadd(stream, {FIELD: encode(t)})
    path = str(tmp_path / "s.duckdb")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), path], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the first write starts (after the judge)
        assert line.strip() == b"writing", line
        assert judge.calls == 3
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    store = DuckDBStore(path)
    store.migrate()
    other = Worker(settings, store)
    try:
        wait_until(lambda: all(judge_rows(store, t) for t in batch), 30, "the dead worker's batch claimed and judged")
        wait_until(lambda: client.xpending(stream, group)["pending"] == 0, 10, "the batch acknowledged")
        assert gateway.spend(today()) == pytest.approx(judge.paid), (
            f"the breakers read a spend of {gateway.spend(today()):.1f}; the judge was paid {judge.paid:.1f} "
            f"({judge.calls} calls for {len(batch)} tasks)")
    finally:
        other.stop()
        store.close()


# -- lag as the gateways and the workers read it ------------------------------------------------------


def test_lag_sees_an_old_task_pending_behind_a_fresher_entry(redis_server: RedisServer, tmp_path: Path) -> None:
    """Spec: lag is the age of the oldest unevaluated sample (docs/evaluation.md: each entry aged from
    the earlier of its request's start and its entry id, because a task a gateway journaled while
    it could not reach Redis reaches the stream late and would look fresh).

    One gateway lost Redis for ten minutes while the others did not; once back it ships its
    journal, so a task of a request ten minutes old lands right behind fresh ones. A worker reads
    both into one batch and holds it (a judge away). ``RedisStreamLag`` ages only the group's
    smallest pending id (the fresh entry) and the first undelivered one: the ten-minute-old sample
    is not seen, the lag reads ~0 s, and the breaker (max_lag_s 300) stays closed."""
    from infersight.runtime_eval import build_eval_bus, redis_health

    settings = settings_from_dict(config_dict(tmp_path / "data", bus={"backend": "redis", "url": redis_server.url}))
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    fresh = task(1)
    old = task(2)
    old.started_at = datetime.fromtimestamp(time.time() - 600, timezone.utc).isoformat()
    elsewhere = settings.storage.model_copy(update={"path": str(tmp_path / "other")})  # its own journal
    gateways = [build_eval_bus(settings, []), build_eval_bus(settings.model_copy(update={"storage": elsewhere}), [])]
    for bus in gateways:
        bus.start()
    try:
        gateways[0].publish(fresh)  # type: ignore[arg-type]  # from a gateway that kept its Redis
        assert gateways[0].flush(10)
        gateways[1].publish(old)  # type: ignore[arg-type]  # the partitioned gateway's journal, shipped late
        assert gateways[1].flush(10)
    finally:
        for bus in gateways:
            bus.stop()
    got = client.xreadgroup(group, "worker-1", {stream: ">"}, count=10)  # one batch, held while the judge is away
    ids = [entry_id for entry_id, _ in got[0][1]]  # type: ignore[index]
    lag, _ = redis_health(settings)  # as the gateways' breakers and the workers read it
    age = lag.oldest_age_s(time.time())
    assert age is not None and age >= 599.0, f"lag reads {age}; a sample 600 s old waits unevaluated"
    client.xack(stream, group, ids[1])  # the late one evaluated: it leaves the index, and the lag
    age = lag.oldest_age_s(time.time())
    assert age is not None and age < 60 and client.zcard(f"{stream}:late") == 0
    client.xack(stream, group, ids[0])
    assert lag.oldest_age_s(time.time()) is None


# -- in-process: the same dead letter, replayed through the redrive inbox ---------------------------------


def test_in_process_a_dead_lettered_tasks_judge_cost_is_counted_before_and_after_its_replay(
        judge: BillingJudge, tmp_path: Path) -> None:
    """Spec: as above, for the embedded shape (memory eval bus, ``LocalSpend``), and
    ``infersight deadletter replay --stream evals`` through the redrive inbox.

    The memory bus hands a task whose rows the store keeps refusing to ``EvalSink.dead_lettered``,
    which drops the verdict it had paid for (``_done``) without counting its cost: the breaker's
    spend reads 1.0 less than the judge was paid. Replayed once the store is fixed, the task is
    judged again (the verdict was thrown away): paid twice, counted once."""
    from infersight.evaluation.dead_letters import JsonlDeadLetters, dead_letter_dir
    from infersight.runtime_eval import wire_evaluation

    judge_cfg = {"url": judge.url, "model": "judge", "max_retries": 0, "timeout_s": 5.0, "input_price_per_1m": PRICE_IN}
    cfg = config_dict(tmp_path / "data", bus={"backend": "memory", "max_deliveries": 2, "flush_interval_s": 0.05},
                      evaluation={"judge": judge_cfg, "child_process": False}, logging={"level": "warning"})
    settings = settings_from_dict(cfg)
    store = RefusingStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    wiring = wire_evaluation(settings, store, CollectorRegistry())
    assert wiring is not None and wiring.bus is not None and wiring.breaker is not None
    assert wiring.redrive is not None
    bus, spend, pending = wiring.bus, wiring.breaker.spend_source, wiring.breaker.lag
    assert spend is not None and pending is not None
    refused = task(1)
    store.refuse = {refused.trace_id}
    dead_letters = JsonlDeadLetters(dead_letter_dir(settings.storage.path))
    bus.start()
    problems: list[str] = []
    try:
        def publish(t: EvalTask) -> None:
            pending.add(t)  # type: ignore[attr-defined]  # what the masking queue does at submit
            bus.publish(t)  # type: ignore[arg-type]

        publish(refused)
        published = [refused]
        deadline = time.monotonic() + 30
        i = 2
        while not any(e["task"]["trace_id"] == refused.trace_id for e in dead_letters.read()):  # type: ignore[index]
            assert time.monotonic() < deadline, ("the refused task was never dead-lettered", bus.stats())
            published.append(task(i))  # good company proves the store works, strike by strike
            publish(published[-1])
            i += 1
            time.sleep(0.1)
        assert bus.flush(10)
        wait_until(lambda: all(judge_rows(store, t) for t in published[1:]), 10, "the good tasks written")
        if spend.spend(today()) != pytest.approx(judge.paid):
            problems.append(f"after the dead letter: spend {spend.spend(today()):.1f}, paid {judge.paid:.1f}")
        store.refuse = set()  # the cause is fixed
        config = tmp_path / "gw.yaml"
        config.write_text(yaml.safe_dump(cfg))
        assert main(["deadletter", "replay", "--config", str(config), "--stream", "evals"]) == 0
        wiring.redrive.call()  # the eval bus's owner polls its inbox (every 2 s)
        wait_until(lambda: bool(judge_rows(store, refused)), 10, "the replayed task judged and written")
        if spend.spend(today()) != pytest.approx(judge.paid):
            problems.append(f"after the replay: spend {spend.spend(today()):.1f}, paid {judge.paid:.1f} "
                            f"({judge.calls} judge calls for {len(published)} tasks)")
        assert not problems, problems
    finally:
        bus.stop()
        store.close()
