"""``infersight ingest``: the scale-out ingest worker (Redis Streams -> store).

Run one or more beside the gateways; they share the consumer group, so each message is written
once, and a worker that dies has its pending messages reclaimed by the others (XAUTOCLAIM). The
worker serves /metrics, /healthz and the query API (/api/v1) on ``--port``, and runs the retention
loop when it owns the store.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.api.app import QueryApi
from infersight.bus.redis_conn import connect
from infersight.bus.redis_leader import RedisLeader
from infersight.config import ConfigError, Settings, load_settings
from infersight.gateway.asgi import JSON_CT, Receive, Scope, Send, header, send_bytes, send_error
from infersight.gateway.tenancy import TenantDirectory
from infersight.ingest.sink import IngestMetrics, StoreSink
from infersight.logs import configure_logging
from infersight.retention import RetentionLoop, policy_from
from infersight.scheduling import lower_priority
from infersight.serving import ThreadedServer
from infersight.store.factory import open_store

RETENTION_LEASE_S = 7200.0  # twice the retention interval: the holder renews it each run


def retention_leader(settings: Settings) -> RedisLeader:
    """One ingest worker among all hosts runs retention: they share the store (and ran the same
    deletes N times an hour). A lease in the bus's Redis, ``<bus.stream>:retention-leader``."""
    assert settings.bus.url is not None
    return RedisLeader(connect(settings.bus.url), f"{settings.bus.stream}:retention-leader", RETENTION_LEASE_S)

log = logging.getLogger("infersight.ingest")
PROM_CT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")


class IngestApp:
    """/metrics, /healthz and the query API of an ingest worker."""

    def __init__(self, registry: CollectorRegistry, api: Any, health: Any, tenants: TenantDirectory | None = None) -> None:
        self.registry = registry
        self.api = api
        self.health = health
        self.tenants = tenants  # guards /metrics as the gateway does (server.metrics_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        if path == "/metrics":
            authorization = header(scope, b"authorization")
            refusal = self.tenants.metrics_refusal(authorization) if self.tenants is not None else None
            if refusal is not None:
                await send_error(send, refusal, [])
                return
            self.health()  # refreshes the consumer gauges
            await send_bytes(send, 200, generate_latest(self.registry), [PROM_CT])
        elif path == "/healthz":
            await send_bytes(send, 200, orjson.dumps(self.health()), [JSON_CT])
        else:
            await self.api(scope, receive, send)


def run_ingest(config_path: str, port: int, host: str = "127.0.0.1") -> int:
    settings: Settings = load_settings(config_path)
    configure_logging(settings.logging.level)
    if settings.bus.backend != "redis" or settings.bus.url is None:
        raise ConfigError("`infersight ingest` consumes Redis Streams; set bus.backend: redis and bus.url "
                          "(with the memory bus the gateway ingests in-process)", path=config_path, key="bus.backend")
    from infersight.bus.redis_consumer import RedisStreamConsumer
    from infersight.runtime_eval import check_judge_rubric, eval_dead_stream_sweep

    check_judge_rubric(settings, config_path)  # it evaluates too when the store is DuckDB
    lower_priority(settings.bus.consumer_nice)
    store = open_store(settings)
    store.migrate()
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    sink = StoreSink(store, metrics)
    consumer = RedisStreamConsumer.for_settings(
        settings.bus, sink=sink, stream=settings.bus.stream, consumer=f"{socket.gethostname()}-{os.getpid()}"
    )

    side_consumers: dict[str, Any] = {}  # telemetry (and eval tasks with DuckDB), started below
    eval_lag: list[Any] = []  # the eval group's lag, where this worker evaluates (as eval-worker's)

    def health() -> dict[str, Any]:
        stats = consumer.stats()
        side = {name: con.stats() for name, con in side_consumers.items()}
        metrics.sync_consumers([stats, *side.values()])
        lag = {"oldest_unevaluated_s": eval_lag[0].read()} if eval_lag else {}
        return {"status": "ok", "inserted": sink.inserted, "duplicates": sink.duplicates,
                "consumer": dataclasses.asdict(stats), **{f"{name}_consumer": dataclasses.asdict(s)
                                                          for name, s in side.items()}, **lag}

    tenants = TenantDirectory(settings)
    api = QueryApi(store, tenants, settings.telemetry.diagnosis, settings.evaluation.drift,
                   calibrations=CalibrationIndex(settings.storage.path))
    server = ThreadedServer(IngestApp(registry, api, health, tenants), host, port)
    server.start()
    retention = RetentionLoop(store, policy_from(settings.retention, settings.tenants), leader=retention_leader(settings),
                              sweeps=eval_dead_stream_sweep(settings))
    retention.start()
    evals: threading.Thread | None = None
    eval_stop = threading.Event()
    if settings.evaluation.enabled and settings.store.backend == "duckdb":
        # DuckDB has one owner: this process also runs the eval consumer group (docs/scale-out.md).
        from infersight.evaluation.eval_worker import WorkerLag, eval_consumer

        eval_con, eval_sink = eval_consumer(settings, store, registry)
        side_consumers["eval"] = eval_con
        eval_lag.append(WorkerLag(settings, registry))
        evals = threading.Thread(target=eval_con.run, args=(eval_stop,), name="infersight-eval-consumer",
                                 daemon=True)
        evals.start()
    from infersight.runtime_telemetry import telemetry_consumer, telemetry_stream

    tele_con, _ = telemetry_consumer(settings, store)  # GPU and engine samples (docs/telemetry.md)
    side_consumers["telemetry"] = tele_con
    tele = threading.Thread(target=tele_con.run, args=(eval_stop,),  # eval_stop: every side consumer's stop
                            name="infersight-telemetry-consumer", daemon=True)
    tele.start()
    from infersight.bus.redis_trim import StreamTrimmer  # trims what every group acknowledged (docs/bus.md)

    trimmed = [settings.bus.stream, telemetry_stream(settings)]
    trimmed += [settings.evaluation.stream] if evals is not None else []
    trimmer = StreamTrimmer.for_settings(settings.bus.url, settings.bus, trimmed, registry).start()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("ingest worker running", extra={"fields": {"port": server.port, "stream": settings.bus.stream}})
    try:
        consumer.run(stop)
    finally:
        eval_stop.set()
        trimmer.stop()
        if evals is not None:
            evals.join(10)
            eval_sink.shutdown()
        tele.join(10)
        retention.stop()
        if isinstance(retention.leader, RedisLeader):
            retention.leader.release()
        server.stop()
        store.close()
    return 0
