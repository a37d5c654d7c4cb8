"""Audit of the eval workers at scale: lag, dead letters, the breaker's spend and judge cost.

Real parts only: a real redis-server (tests/redis_server.py), a real DuckDB store, and a judge that
is a real OpenAI-compatible HTTP server on 127.0.0.1 (``FakeJudge``), whose answers each test sets.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from infersight.bus.redis_conn import FIELD, encode
from infersight.config import Settings, settings_from_dict
from infersight.evaluation.breaker import period_start
from infersight.evaluation.dead_letters import JsonlDeadLetters, dead_letter_dir
from infersight.evaluation.eval_health import LocalSpend, RedisSpend, RedisStreamLag, store_spend
from infersight.evaluation.eval_worker import eval_consumer
from infersight.evaluation.rubric import load_rubric
from infersight.evaluation.worker import JudgeUnavailable
from infersight.model import EvalTask
from infersight.runtime_eval import build_eval_bus, build_eval_sink, spend_key, wire_evaluation
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.integration.bus.conftest import wait_until
from tests.redis_server import RedisServer

PRICE_IN = 1000.0  # per 1M input tokens: 1,000 prompt tokens cost 1.0
DIMENSIONS = load_rubric("default").dimension_names
Reply = tuple[int, dict[str, Any] | str]


def verdict(prompt_tokens: int = 1000) -> Reply:
    content = json.dumps({d: {"score": 5, "explanation": "fine"} for d in DIMENSIONS})
    return 200, {"id": "x", "object": "chat.completion", "model": "judge",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                           "total_tokens": prompt_tokens}}


def garbage(prompt_tokens: int = 1000) -> Reply:
    """A 200 the judge is billed for (usage) whose content is no verdict."""
    return 200, {"id": "x", "object": "chat.completion", "model": "judge",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "I cannot decide."},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                           "total_tokens": prompt_tokens}}


def unavailable() -> Reply:
    return 503, "overloaded"


class FakeJudge:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1; ``answer(body, call_no)`` decides."""

    def __init__(self, answer: Callable[[dict[str, Any], int], Reply]) -> None:
        self.answer = answer
        self.calls = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                with judge.lock:
                    judge.calls += 1
                    n = judge.calls
                status, payload = judge.answer(body, n)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_server() -> Iterator[Callable[[Callable[[dict[str, Any], int], Reply]], FakeJudge]]:
    servers: list[FakeJudge] = []

    def start(answer: Callable[[dict[str, Any], int], Reply]) -> FakeJudge:
        servers.append(FakeJudge(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def settings_for(tmp_path: Path, *, redis_url: str | None = None, judge_url: str | None = None,
                 max_retries: int = 0, bus: dict[str, Any] | None = None, **evaluation: Any) -> Settings:
    judge = {"url": judge_url, "model": "judge", "max_retries": max_retries, "timeout_s": 2.0,
             "input_price_per_1m": PRICE_IN} if judge_url else {}
    bus_cfg = {"backend": "redis", "url": redis_url} if redis_url else {"backend": "memory"}
    return settings_from_dict(config_dict(tmp_path / "data", bus={**bus_cfg, **(bus or {})},
                                          evaluation={"judge": judge, **evaluation}))


def task(i: int, *, started: datetime | None = None, prompt: str = "What is the capital of France?",
         started_at: str | None = None) -> EvalTask:
    when = started_at or (started or datetime.now(timezone.utc)).isoformat()
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", started_at=when, status_code=200, finish_reason="stop",
                    prompt_text=prompt, completion_text="Paris", sample_reason="random")


def judge_rows(store: DuckDBStore, t: EvalTask) -> list[dict[str, Any]]:
    return [r for r in store.eval_results_for(t.trace_id) if r["evaluator"] == "llm_judge"]


def judged_cost(store: DuckDBStore, tasks: list[EvalTask]) -> float:
    return sum(r["judge_cost"] or 0.0 for t in tasks for r in judge_rows(store, t))


def prompt_of(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user")


# -- dead letters: one bad task must not hold the others -----------------------------------------


def test_a_task_the_judge_always_errors_on_does_not_hold_its_batch_mates_forever(
        redis_server: RedisServer, judge_server: Any, tmp_path: Path) -> None:
    """Spec: a poison event goes to dead-letter after N failures and never stalls the rest.

    A judge that answers every task but one with a verdict, and that one (always) with an HTTP 500
    (its text makes the judge's server fail), is not "away": the other calls of the same round
    went through. Yet ``EvalSink.export`` raises ``JudgeUnavailable`` for the whole batch whenever
    any task got an outage reason, so the consumer holds the batch (never bisected, never counted
    towards dead-letter) and retries it forever: the good tasks, judged long ago, are never
    written, the group's lag grows without end and the breaker stays open."""
    judge = judge_server(lambda body, n: (500, "internal error") if "POISON" in prompt_of(body) else verdict())
    settings = settings_for(tmp_path, redis_url=redis_server.url, judge_url=judge.url,
                            bus={"max_deliveries": 2, "claim_idle_ms": 300})
    stream, group = settings.evaluation.stream, settings.evaluation.group
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    poison = task(1, prompt="POISON: what is the capital of France?")
    good = [task(i) for i in range(2, 6)]
    for t in [poison, *good]:
        client.xadd(stream, {FIELD: encode(t)})
    consumer, sink = eval_consumer(settings, store, CollectorRegistry())
    sink.poison_hold_s = 1.0  # (60 s by default: a real outage starting mid-round must not cost verdicts)
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: all(judge_rows(store, t) for t in good), 20,
                   "the good tasks' verdicts written while one batch-mate keeps failing")
        # and the poison one is settled: an _error row or the dead-letter stream, nothing pending
        wait_until(lambda: bool(judge_rows(store, poison)) or client.xlen(f"{stream}:dead") == 1, 30,
                   "the poison task dead-lettered or recorded as a judge error")
    finally:
        stop.set()
        runner.join(10)
        sink.shutdown()
        store.close()


def test_a_task_the_store_refuses_leaves_the_lag_and_is_listed_with_the_eval_dead_letters(
        tmp_path: Path) -> None:
    """Spec: after N failures an event goes to dead-letter; lag is the oldest *unevaluated* task.

    In-process (memory bus, ``wire_evaluation``), a task whose rows the store refuses (here a
    ``started_at`` that is not a time; the evaluators take it) is dead-lettered by the memory bus
    after ``bus.max_deliveries`` refusals, not by the eval sink. Nothing then tells the breaker's
    ``PendingTasks``: the task stays the oldest "unevaluated" one for as long as the gateway runs,
    so the lag grows without end, the breaker opens after ``max_lag_s`` and never closes. And the
    task lands in ``spool-evals/dead-letter/refused.jsonl``, which ``infersight deadletter
    list|replay --stream evals`` (``eval-tasks.jsonl``) never reads."""
    settings = settings_for(tmp_path, bus={"max_deliveries": 2, "flush_interval_s": 0.05},
                            child_process=False)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    wiring = wire_evaluation(settings, store, CollectorRegistry())
    assert wiring is not None and wiring.bus is not None and wiring.breaker is not None
    pending = wiring.breaker.lag
    assert pending is not None
    bus = wiring.bus
    bus.start()
    poison = task(1, started_at="not-a-time")
    published = [poison]
    try:
        def publish(t: EvalTask) -> None:
            pending.add(t)  # type: ignore[attr-defined]  # what the masking queue does at submit
            bus.publish(t)  # type: ignore[arg-type]

        publish(poison)
        dead_letters = JsonlDeadLetters(dead_letter_dir(settings.storage.path))

        def given_up() -> bool:  # by the memory bus (refused.jsonl) or by the eval sink (eval-tasks.jsonl)
            return bus.stats().dead_lettered >= 1 or any(
                e["task"]["trace_id"] == poison.trace_id for e in dead_letters.read())  # type: ignore[index]

        deadline = time.monotonic() + 30
        i = 2
        while not given_up():  # good company proves the store works, strike by strike
            assert time.monotonic() < deadline, "the refused task was never dead-lettered"
            t = task(i)
            i += 1
            published.append(t)
            publish(t)
            time.sleep(0.1)
        assert bus.flush(10)
        good = published[1:]
        wait_until(lambda: all(store.eval_results_for(t.trace_id) for t in good), 10, "good tasks written")
        problems = []
        state = wiring.breaker.check()
        if state.lag_s is not None:
            problems.append(f"lag still reads {state.lag_s:.1f}s with nothing left to evaluate "
                            f"({len(pending)} task(s) pending: the dead-lettered one)")  # type: ignore[arg-type]
        if not any(e["task"]["trace_id"] == poison.trace_id for e in dead_letters.read()):  # type: ignore[index]
            problems.append("the dead-lettered task is not in eval-tasks.jsonl, where "
                            "`infersight deadletter list|replay --stream evals` looks")
        assert not problems, problems
    finally:
        bus.stop()
        store.close()


# -- judge cost and the breaker's spend ------------------------------------------------------------


def test_tokens_paid_before_a_judge_outage_still_count(
        redis_server: RedisServer, judge_server: Any, tmp_path: Path) -> None:
    """Spec: judge tokens and cost are recorded per evaluation, failed calls that cost tokens included.

    The judge is paid for an unusable reply (1,000 prompt tokens), then, on the re-ask, is away
    (503). The call ends as ``JudgeError(server_error, cost=1.0)`` and, the reason being an outage
    reason, the sink turns it into ``JudgeUnavailable`` and drops that cost: once the judge is
    back and the task is judged (another 1.0), eval_results and the shared spend counter the
    gateways' breakers read show 1.0, not the 2.0 the judge was paid."""
    healthy = threading.Event()

    def answer(body: dict[str, Any], n: int) -> Reply:
        if healthy.is_set():
            return verdict(1000)
        return garbage(1000) if n == 1 else unavailable()

    judge = judge_server(answer)
    settings = settings_for(tmp_path, redis_url=redis_server.url, judge_url=judge.url, max_retries=1)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    _, sink = eval_consumer(settings, store, CollectorRegistry())
    gateway = RedisSpend(redis.Redis.from_url(redis_server.url), spend_key(settings), "day")
    t = task(1)
    try:
        with pytest.raises(JudgeUnavailable):
            sink.export([t])  # the judge took our tokens, then went away: the bus holds the task
        assert judge.calls == 2
        healthy.set()
        sink.export([t])  # the bus's retry, with the judge back
        assert judged_cost(store, [t]) == pytest.approx(2.0), "eval_results' judge_cost"
        assert gateway.spend(period_start(time.time(), "day")) == pytest.approx(2.0), "the breaker's spend"
    finally:
        sink.shutdown()
        store.close()


def test_the_first_batch_of_a_period_counts_in_the_shared_spend_even_for_older_requests(
        redis_server: RedisServer, judge_server: Any, tmp_path: Path) -> None:
    """Spec: the breaker compares the judge spend of the current UTC period with the budget.

    The spend counter is added to by evaluation time (``period_start(time.time())``), but when it
    is missing (the first write of every new day, or a Redis that lost it) the worker rebuilds it
    from ``store_spend``, which sums eval_results by the *request's* start. A batch of a backlog
    (requests from before today, judged now: exactly what an outage at midnight leaves) is then
    in neither: the rebuilt counter leaves it out and the worker drops its cost as "already in
    the store". The judge was paid 2.0 today; the breakers read 0.0."""
    judge = judge_server(lambda body, n: verdict(1000))
    settings = settings_for(tmp_path, redis_url=redis_server.url, judge_url=judge.url)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    _, sink = eval_consumer(settings, store, CollectorRegistry())
    gateway = RedisSpend(redis.Redis.from_url(redis_server.url), spend_key(settings), "day")
    backlog = [task(i, started=datetime.now(timezone.utc) - timedelta(hours=26)) for i in range(2)]
    try:
        sink.export(backlog)  # today's first judged batch: the counter does not exist yet
        paid = judged_cost(store, backlog)
        assert paid == pytest.approx(2.0)
        assert gateway.spend(period_start(time.time(), "day")) == pytest.approx(paid)
    finally:
        sink.shutdown()
        store.close()


def test_a_restart_does_not_forget_todays_spend_on_older_requests(judge_server: Any, tmp_path: Path) -> None:
    """Spec: in-process, spend is seeded from eval_results at start "so a restart does not forget
    the day's spend" (docs/evaluation.md, "Circuit breaker").

    ``LocalSpend`` adds each judge call's cost as it is paid, but its seed (``store_spend``)
    counts eval_results by the request's start. The judging of yesterday's requests (a backlog)
    is today's spend for the running gateway and vanishes after a restart, or every 30 s with
    ``--workers N`` (the resync): the budget can then be overspent by that much."""
    judge = judge_server(lambda body, n: verdict(1000))
    settings = settings_for(tmp_path, judge_url=judge.url, child_process=False)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    today = period_start(time.time(), "day")
    live = LocalSpend(seed=store_spend(store))
    assert live.spend(today) == 0.0
    sink = build_eval_sink(settings, store, None, spend=live)
    try:
        sink.export([task(1, started=datetime.now(timezone.utc) - timedelta(hours=26))])
        assert live.spend(today) == pytest.approx(1.0)
        restarted = LocalSpend(seed=store_spend(store))
        assert restarted.spend(today) == pytest.approx(live.spend(today))
    finally:
        sink.shutdown()
        store.close()


# -- lag ------------------------------------------------------------------------------------------


def test_scale_out_lag_counts_the_time_a_task_waited_before_it_reached_the_stream(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Spec: lag is the age of the oldest unevaluated sample.

    In the scale-out shape ``RedisStreamLag`` takes an entry's id (its XADD time) as the task's
    age. A task the gateway journaled while Redis was away is XADDed when Redis is back, so the
    lag reads as if the sample had just been taken: after an outage (which the breaker cannot see
    either: an unreadable signal keeps the last reading) the backlog is reported as fresh and the
    breaker does not open. In-process lag (``PendingTasks``) counts from the request's start."""
    settings = settings_for(tmp_path, redis_url=redis_server.url, bus={"flush_interval_s": 0.05})
    bus = build_eval_bus(settings, [])
    bus.start()
    try:
        redis_server.stop()
        t = task(1)  # the request just ended; its eval task is published while Redis is down
        bus.publish(t)  # type: ignore[arg-type]
        time.sleep(3.0)
        redis_server.start()
        assert bus.flush(15), "the journaled task reached the stream"
    finally:
        bus.stop()
    lag = RedisStreamLag(redis.Redis.from_url(redis_server.url), settings.evaluation.stream,
                         settings.evaluation.group)
    now = time.time()
    age = now - datetime.fromisoformat(t.started_at).timestamp()  # type: ignore[arg-type]
    reported = lag.oldest_age_s(now)
    assert reported is not None and reported >= age - 0.5, (reported, age)


def test_a_judge_that_answers_nothing_holds_every_task_however_long(judge_server: Any, tmp_path: Path) -> None:
    """The other side of the poison rule: a judge that answers no task is away, not poisoned by
    one; its tasks are held round after round (no ``_error`` rows, however many rounds or seconds),
    and a task that failed in a round where others were answered is held for ``poison_hold_s``."""
    down = threading.Event()
    down.set()
    judge = judge_server(lambda body, n: unavailable() if down.is_set() or "POISON" in prompt_of(body)
                         else verdict(10))
    settings = settings_for(tmp_path, judge_url=judge.url, child_process=False)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = build_eval_sink(settings, store, None, hold_on_judge_outage=True)
    sink.max_failures, sink.poison_hold_s = 2, 0.0
    tasks = [task(1, prompt="POISON?"), task(2)]
    try:
        for _ in range(4):  # the judge answers nothing: held every round
            with pytest.raises(JudgeUnavailable):
                sink.export(tasks)
        assert sink.judge_failures == 0 and not judge_rows(store, tasks[0])
        down.clear()
        sink.poison_hold_s = 3600.0
        for _ in range(3):  # task 2 answered, task 1 a suspect, but not for an hour yet: held
            with pytest.raises(JudgeUnavailable):
                sink.export(tasks)
        assert not judge_rows(store, tasks[0]) and sink.judge_failures == 0
        assert judge_rows(store, tasks[1])  # its verdict came back: written meanwhile, not held with task 1
        sink.poison_hold_s = 0.0
        sink.export(tasks)  # a suspect for max_failures rounds and poison_hold_s: its error row
        assert {r["dimension"] for r in judge_rows(store, tasks[0])} == {"_error"}
        assert "_error" not in {r["dimension"] for r in judge_rows(store, tasks[1])}
        assert sink.judge_failures == 1
    finally:
        sink.shutdown()
        store.close()


def test_a_batch_another_worker_wrote_is_not_judged_again(judge_server: Any, tmp_path: Path) -> None:
    """Scale-out workers share a stream: one killed after its write and before its XACK leaves the
    batch to another, which judged it all again (the judge paid twice; the store kept the first
    rows). A consumer of the shared stream asks the store first: the judge is not called again,
    the rows stay one each, and no cost is observed twice."""
    judge = judge_server(lambda body, n: verdict(1000))
    settings = settings_for(tmp_path, judge_url=judge.url, child_process=False)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    batch = [task(i, started=datetime.now(timezone.utc) - timedelta(minutes=3)) for i in range(1, 5)]
    seen_by_b: list[float] = []
    worker_a = build_eval_sink(settings, store, None, shared_stream=True)
    worker_b = build_eval_sink(settings, store, None, shared_stream=True,
                               observers=[lambda rows: seen_by_b.append(sum(r.judge_cost or 0.0 for r in rows))])
    try:
        worker_a.export(batch)  # written; its XACK never happens
        assert judge.calls == 4
        rows_before = {t.trace_id: len(judge_rows(store, t)) for t in batch}
        worker_b.export(batch)  # claimed by the other worker
        assert judge.calls == 4, "the judge was paid again for tasks another worker had written"
        assert {t.trace_id: len(judge_rows(store, t)) for t in batch} == rows_before
        assert sum(seen_by_b) == 0.0 and worker_b.judged_elsewhere == 4
        fresh = task(9)
        worker_b.export([fresh])  # a task nobody judged is judged as before
        assert judge.calls == 5 and judge_rows(store, fresh)
    finally:
        worker_a.shutdown()
        worker_b.shutdown()
        store.close()
