"""``infersight eval-worker``: the scale-out eval worker (Redis stream of eval tasks -> eval_results).

Eval workers form their own consumer group (``evaluation.group``) on ``evaluation.stream``, so each
task is evaluated once, judge calls are spread over the workers, and a dead worker's tasks are
reclaimed (XAUTOCLAIM) by the others; acknowledgement follows the store write. The worker serves
/metrics and /healthz on ``--port``.

DuckDB belongs to one process: with ``store.backend: duckdb`` the ingest worker consumes the eval
stream itself (``eval_consumer`` below, started by ``infersight ingest``), and this command refuses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from infersight.config import ConfigError, Settings, load_settings
from infersight.evaluation.settings import JudgeSettings
from infersight.logs import configure_logging
from infersight.model import EvalTask
from infersight.serving import ThreadedServer
from infersight.store.base import Store
from infersight.store.factory import open_store

log = logging.getLogger("infersight.evaluation.worker")


def eval_consumer(settings: Settings, store: Store, registry: CollectorRegistry) -> tuple[Any, Any]:
    """A Redis consumer of eval tasks writing through an EvalSink: (consumer, sink)."""
    from infersight.bus.redis_consumer import RedisStreamConsumer
    from infersight.runtime_eval import build_eval_sink, redis_health

    assert settings.bus.url is not None
    cfg = settings.evaluation
    from infersight.evaluation.eval_health import store_spend

    _, spend = redis_health(settings)  # the gateways' breakers read the spend this adds to
    spend.seed = store_spend(store)  # a counter Redis lost is rebuilt from eval_results, not restarted at 0
    # a judge that is away holds the batch on the stream (pending, claim kept fresh) until it answers
    sink = build_eval_sink(settings, store, registry, spend=spend, hold_on_judge_outage=True, shared_stream=True)
    batch_size = max(16, cfg.judge.concurrency * 2)
    waves = -(-batch_size // max(1, cfg.judge.concurrency))  # judge calls in a row for one batch
    consumer = RedisStreamConsumer(
        settings.bus.url, sink=sink, stream=cfg.stream, group=cfg.group,
        consumer=f"{socket.gethostname()}-{os.getpid()}-eval", batch_size=batch_size,
        # a dead worker's batch is claimed after claim_idle_ms, as configured (a floor of the judge's
        # timeouts made it 240 s by default); a live one's claim is kept while it judges, for the
        # batch's longest run: its waves of judge calls, each with every retry timing out, or, paced
        # (max_calls_per_s), every call and retry of the batch waiting its turn
        claim_idle_ms=settings.bus.claim_idle_ms,
        hung_after_s=judge_horizon_s(cfg.judge, batch_size, waves),
        max_deliveries=settings.bus.max_deliveries, dead_letter_stream=f"{cfg.stream}:dead", record_type=EvalTask,
    )
    return consumer, sink


def judge_horizon_s(judge: JudgeSettings, batch_size: int, waves: int) -> float:
    """The longest a live worker's batch can take to judge."""
    per_call = judge.timeout_s * (judge.max_retries + 2)
    horizon = waves * per_call
    if judge.max_calls_per_s:
        horizon = max(horizon, batch_size * (judge.max_retries + 1) / judge.max_calls_per_s + per_call)
    return horizon


def run_eval_worker(config_path: str, port: int, host: str = "127.0.0.1") -> int:
    settings = load_settings(config_path)
    configure_logging(settings.logging.level)
    if settings.bus.backend != "redis" or settings.bus.url is None:
        raise ConfigError("`infersight eval-worker` consumes Redis Streams; set bus.backend: redis (with the memory "
                          "bus the gateway evaluates in-process)", path=config_path, key="bus.backend")
    if settings.store.backend == "duckdb":
        raise ConfigError("DuckDB is owned by one process: `infersight ingest` evaluates too when "
                          "store.backend is duckdb; use store.backend: clickhouse for separate eval workers",
                          path=config_path, key="store.backend")
    from infersight.ingest.worker import IngestApp
    from infersight.runtime_eval import check_judge_rubric
    from infersight.scheduling import lower_priority

    check_judge_rubric(settings, config_path)

    lower_priority(settings.bus.consumer_nice)
    store = open_store(settings)
    store.migrate()
    registry = CollectorRegistry()
    consumer, sink = eval_consumer(settings, store, registry)
    from infersight.bus.consumer_metrics import ConsumerGauges

    gauges = ConsumerGauges(registry, "infersight_eval_worker")
    lag = WorkerLag(settings, registry)

    def health() -> dict[str, Any]:
        stats = consumer.stats()
        gauges.sync([stats])  # dead letters and lost messages on /metrics, not only in /healthz
        return {"status": "ok", "written": sink.written, "judge_failures": sink.judge_failures,
                "oldest_unevaluated_s": lag.read(), "consumer": dataclasses.asdict(stats)}

    from infersight.gateway.tenancy import TenantDirectory

    server = ThreadedServer(IngestApp(registry, _NoApi(), health, TenantDirectory(settings)), host, port).start()
    from infersight.bus.redis_trim import StreamTrimmer  # trims what every group acknowledged (docs/bus.md)

    trimmer = StreamTrimmer.for_settings(settings.bus.url, settings.bus, [settings.evaluation.stream], registry).start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("eval worker running", extra={"fields": {"port": server.port, "stream": settings.evaluation.stream}})
    try:
        consumer.run(stop)
    finally:
        trimmer.stop()
        sink.shutdown()
        server.stop()
        store.close()
    return 0


class WorkerLag:
    """The group's lag (oldest unread or unacknowledged task) on the worker's /healthz and /metrics.

    The gateways' breakers read it too, but an operator looking at the eval workers needs it there:
    without it a backlog (a slow or down judge) showed nowhere on the workers themselves."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        from prometheus_client import Gauge

        from infersight.bus.redis_conn import connect
        from infersight.evaluation.eval_health import RedisStreamLag
        from infersight.runtime_eval import late_key

        assert settings.bus.url is not None
        cfg = settings.evaluation
        self.source = RedisStreamLag(connect(settings.bus.url), cfg.stream, cfg.group, late_key=late_key(settings))
        self.gauge = Gauge("infersight_eval_oldest_unevaluated_seconds",
                           "Age of the oldest eval task not yet evaluated and written (0 when none waits).",
                           registry=registry)

    def read(self) -> float | None:
        """Seconds, 0.0 when nothing waits; None (gauge unchanged) when Redis cannot be read."""
        import time

        import redis

        try:
            age = self.source.oldest_age_s(time.time()) or 0.0
        except redis.RedisError:
            return None
        self.gauge.set(age)
        return age


class _NoApi:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from infersight.gateway import errors
        from infersight.gateway.asgi import send_error

        await send_error(send, errors.not_found(scope["path"]), [])
