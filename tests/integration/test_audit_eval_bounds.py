"""Audit: state of the evaluation path that must stay bounded on a gateway that runs for months.

A platform gateway sees millions of requests a day, many of them long streams, and its eval workers
are restarted by every deploy and autoscaling step. Whatever the evaluation path keeps per task or
per process (in memory, on disk, in Redis) must stay bounded, and the lag the breaker reads must stay
right while it does. Real parts only: a real redis-server (tests/redis_server.py), the real eval bus
of the scale-out shape (``build_eval_bus``), the breaker's real lag reader (``redis_health``) and the
real eval consumer (``eval_consumer``) over a real DuckDB store.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from infersight.config import settings_from_dict
from infersight.model import EvalTask
from tests.conftest import config_dict
from tests.integration.bus.conftest import redis_server  # noqa: F401 (the fixture)
from tests.redis_server import RedisServer


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def task(i: int, started: float) -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", started_at=iso(started), status_code=200, finish_reason="stop",
                    prompt_text="What is the capital of France?", completion_text="Paris", sample_reason="random")


def redis_settings(tmp_path: Path, url: str, name: str = "data") -> Any:
    return settings_from_dict(config_dict(tmp_path / name, bus={"backend": "redis", "url": url},
                                          logging={"level": "warning"}))


def read_and_ack_all(client: redis.Redis, stream: str, group: str) -> int:
    """What the eval workers do when they keep up: read every new task, write it, acknowledge it."""
    done = 0
    while True:
        got: Any = client.xreadgroup(group, "worker-1", {stream: ">"}, count=500)
        if not got or not got[0][1]:
            return done
        ids = [entry_id for entry_id, _ in got[0][1]]
        client.xack(stream, group, *ids)
        done += len(ids)


# -- the eval stream's late index (<evaluation.stream>:late) ------------------------------------------


def test_late_index_stays_bounded_under_steady_long_streams(redis_server: RedisServer, tmp_path: Path) -> None:
    """Spec: nothing in the eval path grows without bound (issue 4, "Workers": lag is exported; the
    scale-out shape runs for months); docs/evaluation.md: the gateway notes a task XADDed more than
    30 s after its request started in ``<evaluation.stream>:late``, and "readers remove the
    acknowledged ones".

    Every request that lasted more than 30 s (a long generation, a reasoning model: common in LLM
    traffic) is noted there, even when its task reaches the stream the moment the request ends.
    The readers (each gateway's breaker, every ``check_interval_s`` = 5 s) remove at most 16
    acknowledged members per reading, and every ZADD pushes the key's 7-day TTL out again. So a
    gateway whose long requests finish faster than 16 per breaker check (here 50 per check, 10/s,
    all evaluated and acknowledged at once by the workers) grows the sorted set by the difference
    forever: after 20 checks it holds ~700 members, every one of them evaluated long ago."""
    from infersight.runtime_eval import build_eval_bus, late_key, redis_health

    settings = redis_settings(tmp_path, redis_server.url)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    lag, _ = redis_health(settings)  # as every gateway's breaker reads it
    bus = build_eval_bus(settings, [])
    bus.start()
    per_check, checks = 50, 20
    try:
        n = 0
        for _ in range(checks):
            for _ in range(per_check):  # 45-second streams, each published as it ends
                n += 1
                bus.publish(task(n, time.time() - 45))  # type: ignore[arg-type]  # the eval bus carries EvalTasks
            assert bus.flush(10)
            read_and_ack_all(client, stream, group)  # the workers keep up: nothing waits
            assert lag.oldest_age_s(time.time()) is None  # one breaker check: nothing unevaluated
    finally:
        bus.stop()
    members = client.zcard(late_key(settings))
    assert members <= per_check, (
        f"{late_key(settings)} holds {members} members after {checks} breaker checks, every one of "
        f"{n} tasks evaluated and acknowledged; it grows by ~{per_check - 16} per check for as long "
        f"as long requests keep coming (TTL {client.ttl(late_key(settings))} s, renewed by each ZADD)")


def test_lag_sees_a_late_task_behind_acknowledged_late_entries(redis_server: RedisServer, tmp_path: Path) -> None:
    """Spec: lag is the age of the oldest unevaluated sample, and the breaker lowers sampling when
    it passes 5 minutes (issue 4, "Workers"); docs/evaluation.md: a late task behind fresher entries
    is found through ``<evaluation.stream>:late``, "the oldest member not yet acknowledged".

    A gateway lost Redis for half an hour and shipped its journal when Redis came back: 400 tasks
    of that half hour, all noted late, all evaluated and acknowledged by the workers within
    seconds. A second gateway then ships a task of a request 400 s old behind a fresh entry, and a
    worker holds both (judge away). The lag reader looks only at the index's first 16 members:
    they are acknowledged, it removes them and stops, so the 400-second-old sample is not a
    candidate and the lag reads ~0 s. It stays hidden for 25 breaker checks (400 / 16, two minutes
    at 5 s a check) while the breaker (max_lag_s 300) stays closed."""
    from infersight.runtime_eval import build_eval_bus, redis_health

    settings = redis_settings(tmp_path, redis_server.url)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    now = time.time()
    replayed = build_eval_bus(settings, [])
    replayed.start()
    try:
        for i in range(1, 401):  # the journal of a half-hour partition, shipped at once
            replayed.publish(task(i, now - 1800 + i))  # type: ignore[arg-type]
        assert replayed.flush(10)
    finally:
        replayed.stop()
    assert read_and_ack_all(client, stream, group) == 400  # all evaluated
    lag, _ = redis_health(settings)
    assert lag.oldest_age_s(time.time()) is None  # one breaker check: nothing waits
    other_settings = redis_settings(tmp_path, redis_server.url, name="other")  # its own journal
    gateway = build_eval_bus(other_settings, [])
    gateway.start()
    try:
        gateway.publish(task(1000, time.time()))  # type: ignore[arg-type]  # a fresh request
        gateway.publish(task(1001, time.time() - 400))  # type: ignore[arg-type]  # shipped late
        assert gateway.flush(10)
    finally:
        gateway.stop()
    got: Any = client.xreadgroup(group, "worker-1", {stream: ">"}, count=10)  # one batch, held
    assert len(got[0][1]) == 2
    readings = [lag.oldest_age_s(time.time()) for _ in range(3)]  # three breaker checks (15 s)
    assert all(age is not None and age >= 399.0 for age in readings), (
        f"lag read {readings} over three breaker checks while a sample 400 s old waits unevaluated: "
        "the reader looked only at the late index's first 16 members, all acknowledged")


# -- the eval consumer group's members -----------------------------------------------------------------


def test_eval_consumer_group_does_not_keep_a_member_per_process_ever_started(
        redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spec: nothing in the eval path grows without bound; docs/evaluation.md "Scale-out": eval
    workers share the consumer group ``evaluation.group``, and a dead worker's tasks are claimed.

    Each eval worker joins the group as ``<hostname>-<pid>-eval``: a new name on every start (a new
    pod name on every deploy or autoscaling step). Nothing ever removes a member (no XGROUP
    DELCONSUMER: not at a clean stop with nothing pending, not by the others once a member's
    pending list is empty and it has been idle for days). Six workers started and stopped cleanly
    one after the other, each with nothing pending, leave six members in the group for good; a
    fleet that scales its workers up and down every day accumulates thousands, in Redis memory and
    in every XINFO CONSUMERS an operator or a dashboard reads."""
    import socket as socket_module

    from infersight.evaluation.eval_worker import eval_consumer
    from infersight.store.duckdb_store import DuckDBStore

    settings = redis_settings(tmp_path, redis_server.url)
    stream, group = settings.evaluation.stream, settings.evaluation.group
    client = redis.Redis.from_url(redis_server.url)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    from infersight.bus.redis_conn import FIELD, encode

    try:
        for i in range(6):  # six worker pods, one after the other (a rolling deploy, autoscaling)
            monkeypatch.setattr(socket_module, "gethostname", lambda i=i: f"eval-worker-7d9f-{i}")
            consumer, sink = eval_consumer(settings, store, CollectorRegistry())
            stop = threading.Event()
            thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
            thread.start()
            try:
                client.xadd(stream, {FIELD: encode(task(i + 1, time.time()))})
                wait_until(lambda: consumer.stats().delivered >= 1, 20, "the worker's task evaluated")
            finally:
                stop.set()
                thread.join(10)
                sink.shutdown()
    finally:
        store.close()
    assert client.xpending(stream, group)["pending"] == 0  # every task evaluated, nothing held
    members = client.xinfo_consumers(stream, group)
    names = sorted(m["name"].decode() if isinstance(m["name"], bytes) else m["name"] for m in members)
    assert len(members) <= 1, (
        f"the eval group keeps {len(members)} members, every one stopped with nothing pending: {names}")


# -- the masking queue in the default embedded shape (the eval process owns the sampled path) -----------


def test_raw_tasks_waiting_for_masking_stay_bounded_when_the_eval_process_owns_the_path(tmp_path: Path) -> None:
    """Spec: docs/evaluation.md: raw text waits in the masking queue, "bounded; beyond it they are
    dropped and counted" (``dropped_queue_full``); the eval process is "~120 MB of RSS whatever the
    traffic"; ``infersight_eval_mask_queue`` is the tasks waiting for masking (docs/metrics.md).

    In the default shape the gateway's masking thread does not mask: it hands each batch to the
    eval process and returns at once (``MaskingQueue._hand_off`` only adds a done-callback). So the
    gateway's bounded deque is emptied as fast as tasks arrive and the raw tasks pile up instead in
    the child's ``ordered`` queue (a ``SimpleQueue`` with no bound), waiting for Presidio. When tasks
    arrive faster than the child masks them (a tenant on ``content: all``, which the breaker never
    lowers, or a burst of errors or guardrail hits), nothing is ever dropped: the raw backlog, and
    the child's memory, grow for as long as the burst lasts, past ``max_queue`` (1,000), while the
    mask-queue gauge reads 0. Wired as ``runtime_eval.wire_owned_path`` does, with the real eval
    process and store process."""
    from infersight.evaluation.eval_health import PendingTasks
    from infersight.evaluation.masking import MaskingQueue
    from infersight.evaluation.metrics import EvalGatewayMetrics
    from infersight.evaluation.owner import EvalOwnerProcess
    from infersight.store.remote import RemoteStore

    settings = settings_from_dict(config_dict(tmp_path / "data", logging={"level": "warning"}))
    store = RemoteStore(settings, listen=True)
    assert store.address is not None
    registry = CollectorRegistry()
    metrics = EvalGatewayMetrics(registry)
    process = EvalOwnerProcess(settings, store.address)
    handed = PendingTasks()  # from the submit to the child's answer for its batch, as wire_owned_path
    masking = MaskingQueue(None, metrics, max_chars=settings.evaluation.max_content_chars,
                           linger_s=settings.evaluation.mask_linger_s, handoff=process.handoff, pending=handed)
    bound = masking.max_queue + masking.max_batch
    process.start()
    masking.start()
    prompt = "Write to john.doe@example.com or call 555-123-4567; card 4111 1111 1111 1111, " \
             "IBAN DE89 3704 0044 0532 0130 00. " * 40  # a long prompt with PII in it
    peak, waiting_gauge, full = 0, 0.0, 0.0
    try:
        t0, rate, n = time.monotonic(), 800.0, 2400  # 800 sampled requests a second for 3 s
        for i in range(1, n + 1):
            masking.submit(_with_prompt(task(i, time.time()), prompt))
            peak = max(peak, len(handed))
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(0.5)
        peak = max(peak, len(handed))
        waiting_gauge = registry.get_sample_value("infersight_eval_mask_queue") or 0.0
        full = registry.get_sample_value("infersight_eval_tasks_total", {"outcome": "dropped_queue_full"}) or 0.0
    finally:
        masking.stop(1.0)
        process.stop(1.0)  # what is queued in the child is raw: nothing of it is kept
        store.close()
    assert peak <= bound, (
        f"{peak} raw tasks waited for masking at once (bound: the masking queue's {masking.max_queue} "
        f"plus a batch); dropped_queue_full: {full:g}, infersight_eval_mask_queue read {waiting_gauge:g}")


def _with_prompt(t: EvalTask, prompt: str) -> EvalTask:
    t.prompt_text = prompt
    return t
