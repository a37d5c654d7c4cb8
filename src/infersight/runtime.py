"""Wires the backends chosen by config and runs them; the only module that knows concrete classes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry

from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.bus.base import Bus, Exporter
from infersight.bus.memory import MemoryBus
from infersight.config import ConfigError, Settings, load_settings
from infersight.exporters.jsonl import JsonlExporter
from infersight.api.admin import AdminApi
from infersight.api.app import QueryApi
from infersight.gateway.app import GatewayApp
from infersight.gateway.metrics import GatewayMetrics
from infersight.gateway.tenancy import TenantDirectory
from infersight.gateway.upstreams.base import Transport
from infersight.gateway.upstreams.http1 import Http1Transport
from infersight.ingest.sink import IngestMetrics, StoreSink
from infersight.logs import configure_logging
from infersight.model import EvalResult
from infersight.runtime_eval import EvalWiring, eval_dead_letter_sweep, eval_process_owns_path, wire_evaluation
from infersight.runtime_telemetry import Observer as TelemetryObserver
from infersight.runtime_telemetry import FileLeader, wire_telemetry
from infersight.retention import RetentionLoop, policy_from
from infersight.store.base import Store
from infersight.store.factory import open_gateway_store
from infersight.store.remote import RemoteStore

log = logging.getLogger("infersight.runtime")
RETENTION_LOCK = "retention.lock"


def build_exporters(settings: Settings, registry: CollectorRegistry | None = None) -> list[Exporter]:
    """Optional exporters beside the store: JSON lines files and OTLP spans (counted on ``registry``)."""
    exporters: list[Exporter] = []
    if settings.exporters.jsonl:
        exporters.append(JsonlExporter(settings.storage.path))
    if settings.tracing.otlp_endpoint:
        from infersight.tracing.otlp import OtlpHttpSpanExporter

        exporters.append(OtlpHttpSpanExporter(settings.tracing, registry=registry))
    return exporters


def journal_dir(settings: Settings) -> str | None:
    return str(Path(settings.storage.path) / "spool") if settings.bus.journal else None


def upstream_transport(settings: Settings) -> Transport:
    """The configured upstream client; both are pooled, http1 is the faster (benchmarks/README.md)."""
    if settings.upstream.client == "aiohttp":
        # imported here: aiohttp is ~13 MB of RSS that a gateway on the default client never uses
        from infersight.gateway.upstreams.aiohttp_transport import AiohttpTransport

        return AiohttpTransport(settings.upstream)
    return Http1Transport(settings.upstream)


def build_bus(settings: Settings, exporters: list[Exporter]) -> Bus:
    """Memory bus delivering to ``exporters`` in-process, or the Redis producer (exporters then run
    in ``infersight ingest``)."""
    cfg = settings.bus
    if cfg.backend == "redis":
        from infersight.bus.redis_streams import RedisStreamBus

        assert cfg.url is not None  # validated by config
        return RedisStreamBus(cfg.url, stream=cfg.stream, journal_dir=journal_dir(settings),
                              max_queue=cfg.max_queue, batch_size=cfg.batch_size, max_batch_size=cfg.write_batch,
                              flush_interval_s=cfg.flush_interval_s, max_journal_bytes=cfg.max_journal_bytes)
    return MemoryBus(exporters, journal_dir=journal_dir(settings), max_queue=cfg.max_queue,
                     batch_size=cfg.batch_size, max_batch_size=cfg.write_batch,
                     flush_interval_s=cfg.flush_interval_s, max_journal_bytes=cfg.max_journal_bytes,
                     max_deliveries=cfg.max_deliveries)


def gateway_owns_store(settings: Settings) -> bool:
    """DuckDB belongs to one process: the gateway (memory bus) or else the ingest worker."""
    return settings.bus.backend == "memory" or settings.store.backend == "clickhouse"


def build_gateway(
    settings: Settings,
    *,
    transport: Transport | None = None,
    bus: Bus | None = None,
    store: Store | None | Literal["auto"] = "auto",
    extra_exporters: list[Exporter] | None = None,
    clock: Callable[[], float] | None = None,
    eval_bus: Bus | None = None,
    eval_observers: list[Callable[[list[EvalResult]], None]] | None = None,
    telemetry_observers: list[TelemetryObserver] | None = None,
) -> GatewayApp:
    """A ready GatewayApp. The bus, the store and the retention loop start and stop with the ASGI
    lifespan. Tests pass their own ``bus`` (then no store is opened unless one is given)."""
    transport = transport or upstream_transport(settings)
    metrics = GatewayMetrics()
    owned: Store | None = None
    if store == "auto":
        store = owned = open_gateway_store(settings, listen=eval_process_owns_path(settings)) \
            if bus is None and gateway_owns_store(settings) else None
    if bus is None:
        exporters: list[Exporter] = []
        if store is not None and settings.bus.backend == "memory":
            exporters.append(StoreSink(store, IngestMetrics(metrics.registry)))
        bus = build_bus(settings, [*exporters, *build_exporters(settings, metrics.registry), *(extra_exporters or [])])
    # One process per host deletes: the others' loops find the lock held (--workers N).
    retention_leader = FileLeader(Path(settings.storage.path) / RETENTION_LOCK)
    retention = RetentionLoop(owned, policy_from(settings.retention, settings.tenants), leader=retention_leader,
                              sweeps=eval_dead_letter_sweep(settings)) if owned is not None else None
    the_bus = bus
    evaluation = wire_evaluation(settings, store if settings.bus.backend == "memory" else None, metrics.registry,
                                 eval_bus, eval_observers)
    telemetry = wire_telemetry(settings, store if settings.bus.backend == "memory" else None, metrics.registry,
                               observers=telemetry_observers)

    async def start() -> None:
        the_bus.start()
        if evaluation is not None:
            await evaluation.start()
        if retention is not None:
            retention.start()
        if telemetry is not None:
            await telemetry.start()

    async def stop() -> None:
        if evaluation is not None:
            await evaluation.stop()  # before the store closes: the eval sink writes to it
        if telemetry is not None:
            await telemetry.stop()  # likewise: the telemetry sink writes to it
        the_bus.stop()
        if retention is not None:
            retention.stop()
            retention_leader.release()
        if owned is not None:
            owned.close()

    kwargs = {"clock": clock} if clock is not None else {}
    tenants = TenantDirectory(settings)
    api = QueryApi(store, tenants, settings.telemetry.diagnosis, settings.evaluation.drift,
                   calibrations=CalibrationIndex(settings.storage.path)) if store is not None else None
    admin = AdminApi(evaluation.sampler, tenants, [t.id for t in settings.tenants], evaluation.breaker) \
        if evaluation else None
    return GatewayApp(settings, transport, bus, metrics=metrics, on_startup=[start],
                      on_shutdown=[transport.aclose, stop], api=api, admin=admin,
                      tap=evaluation.tap if evaluation else None,
                      health=child_health(evaluation, owned),
                      on_scrape=[evaluation.sync_metrics] if evaluation else None,
                      **kwargs)


def child_health(evaluation: EvalWiring | None, store: Store | None) -> dict[str, Callable[[], dict[str, object]]]:
    """``/healthz``'s view of the gateway's child processes (eval and store), where they run."""
    health: dict[str, Callable[[], dict[str, object]]] = {}
    if evaluation is not None and evaluation.process is not None:
        health["eval_process"] = evaluation.process.health
    if evaluation is not None and evaluation.bus is not None:
        health["eval_bus"] = evaluation.bus_health
    if isinstance(store, RemoteStore):
        health["store_process"] = store.health
    return health


def uvicorn_options(settings: Settings, port: int | None) -> dict[str, object]:
    return {
        "host": settings.server.host,
        "port": settings.server.port if port is None else port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_config": None,
        "lifespan": "on",
        "timeout_keep_alive": 30,
        "backlog": 4096,
    }


def prefer_the_event_loop(settings: Settings) -> None:
    """Shorten the GIL switch interval of a gateway process (``server.switch_interval_ms``).

    The relay runs on one event loop beside threads that do bulk Python work (the bus writer's
    store writes, the eval worker, the collector). When the loop needs the GIL it waits up to the
    switch interval for the holder to let go: 5 ms by default, which showed up in the added TTFT's
    tail. At 1 ms, with evaluation on at 231 requests/s, the p50 change against evaluation off fell
    from 0.31 to 0.22 ms and the p99 change from 13.5 to 5.7 ms (benchmarks/README.md).
    """
    sys.setswitchinterval(settings.server.switch_interval_ms / 1000.0)


def check_workers(settings: Settings, config_path: str, workers: int) -> None:
    """More than one gateway process needs the Redis bus; ``check-config`` asks too."""
    if workers > 1 and settings.bus.backend == "memory" and settings.store.backend == "duckdb":
        raise ConfigError("--workers N needs bus.backend: redis (DuckDB is owned by one process); "
                          "run `infersight ingest` beside the gateways (see docs/scale-out.md)", path=config_path,
                          key="server.workers")


def warn_unshared_hash_key(settings: Settings) -> None:
    """A Redis bus is how several gateway hosts feed one store; each host's own ``prompt_hash`` key
    would hash the same prompt differently per host, with nothing else to show it."""
    from infersight.gateway.hash_key import PROMPT_HASH_KEY_ENV, hosts_may_disagree

    if hosts_may_disagree(settings.bus.backend == "redis"):
        log.warning(f"${PROMPT_HASH_KEY_ENV} is not set: prompts are hashed with this host's own key (in "
                    "storage.path); give every gateway host the same one, or repeats are only seen within a "
                    "host (docs/scale-out.md)")


def serve(config_path: str, port: int | None = None, workers: int | None = None) -> int:
    """Run the gateway in the foreground until SIGINT/SIGTERM; returns the exit status."""
    import uvicorn

    settings = load_settings(config_path)
    configure_logging(settings.logging.level)
    workers = workers or settings.server.workers
    check_workers(settings, config_path, workers)
    warn_unshared_hash_key(settings)
    options = uvicorn_options(settings, port)
    if workers == 1:
        prefer_the_event_loop(settings)
        # Not uvicorn.run: it swallows a Ctrl-C that lands before the server has started (once the
        # gateway is built, before uvicorn's own handlers are in) and then exits 3, "startup failed".
        # Here the KeyboardInterrupt reaches cli.main, which stops a service with 0.
        server = uvicorn.Server(uvicorn.Config(build_gateway(settings), **options))  # type: ignore[arg-type]
        server.run()
        return 0 if server.started else 3  # 3: the start failed (uvicorn's STARTUP_FAILURE), as uvicorn.run
    from infersight.gateway.hash_key import prompt_hash_key
    from infersight.gateway.routing import Router
    from infersight.workers import supervise

    # What only build_gateway would find (a tokenizer file) is a config error here, once, with the
    # key named, rather than a traceback in every worker and a restart loop.
    Router(settings)
    prompt_hash_key(settings.storage.path, config_path)  # made here, once, not by racing workers
    cpus = os.cpu_count() or 1
    if workers > cpus:
        log.warning("more gateway workers than CPUs: they will compete for the cores (and each has its own "
                    "upstream pool, bus and eval process)", extra={"workers": workers, "cpus": cpus})
    return supervise(str(Path(config_path).resolve()), settings.server.host,
                     int(options["port"]), workers,  # type: ignore[arg-type]
                     Path(settings.storage.path) / "prometheus-multiproc")
