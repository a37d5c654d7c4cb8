"""Wires GPU, engine and CloudWatch telemetry: the collector thread, the telemetry bus, the telemetry sink.

Kept beside ``runtime`` (like ``runtime_eval``) so each stays small. Samples take the same road as
request records, on a bus of their own so that a burst of samples never queues behind records:

- embedded: collector -> MemoryBus (journal ``<storage.path>/spool-telemetry``) -> TelemetrySink
  -> ``store.write_rows("telemetry", ...)``, all in the gateway process;
- scale-out (``bus.backend: redis``): collector -> Redis stream ``<bus.stream>:telemetry`` ->
  ``infersight ingest`` (consumer group ``bus.group``) -> TelemetrySink.

Only one process per host scrapes: with ``--workers N`` every worker wires a collector, and the
one holding the lock file ``<storage.path>/telemetry.lock`` runs the rounds (``FileLeader``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from infersight.bus.base import Bus, Exporter
from infersight.bus.memory import MemoryBus
from infersight.config import Settings
from infersight.model.telemetry import TelemetrySample
from infersight.store.base import Store
from infersight.telemetry.cloudwatch_loop import ClientFactory
from infersight.telemetry.sink import TelemetrySink

if TYPE_CHECKING:  # the collector brings aiohttp (~13 MB of RSS): imported only when a target is configured
    from infersight.telemetry.collector import TelemetryCollector

LOCK_FILE = "telemetry.lock"
Observer = Callable[[list[TelemetrySample]], None]


class FileLeader:
    """True in the one process that holds an exclusive flock on ``path``; others try again each round,
    so when the holder dies (the kernel frees its lock) another worker takes over within an interval."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1

    def __call__(self) -> bool:
        if self._fd >= 0:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1


def telemetry_stream(settings: Settings) -> str:
    """The Redis stream of samples: ``<bus.stream>:telemetry``."""
    return f"{settings.bus.stream}:telemetry"


def build_telemetry_bus(settings: Settings, exporters: list[Exporter]) -> Bus:
    """In-process to ``exporters``, or the Redis producer of the ingest workers' telemetry stream."""
    cfg = settings.bus
    journal = str(Path(settings.storage.path) / "spool-telemetry") if cfg.journal else None
    if cfg.backend == "redis":
        from infersight.bus.redis_streams import RedisStreamBus

        assert cfg.url is not None  # validated by config
        return RedisStreamBus(cfg.url, stream=telemetry_stream(settings), journal_dir=journal, max_queue=cfg.max_queue,
                              batch_size=cfg.batch_size, max_batch_size=cfg.write_batch,
                              flush_interval_s=cfg.flush_interval_s, record_type=TelemetrySample)
    return MemoryBus(exporters, journal_dir=journal, max_queue=cfg.max_queue, batch_size=cfg.batch_size,
                     max_batch_size=cfg.write_batch, flush_interval_s=cfg.flush_interval_s,
                     record_type=TelemetrySample, max_deliveries=cfg.max_deliveries)


@dataclass
class TelemetryWiring:
    collector: TelemetryCollector
    bus: Bus
    leader: FileLeader | None = None

    async def start(self) -> None:
        self.bus.start()
        self.collector.start()

    async def stop(self) -> None:
        self.collector.stop()  # cancels the round in flight: returns within milliseconds
        self.bus.stop()  # flushes what the collector published to the store (or Redis)
        if self.leader is not None:
            self.leader.release()


def wire_telemetry(settings: Settings, store: Store | None, registry: CollectorRegistry,
                   telemetry_bus: Bus | None = None, observers: list[Observer] | None = None,
                   cloudwatch_client: ClientFactory | None = None) -> TelemetryWiring | None:
    """The gateway's collector and bus, or None when no target is configured or samples have
    nowhere to go (no store in this process and no Redis). ``cloudwatch_client`` (region -> client)
    replaces boto3's for the ``sagemaker`` and ``bedrock`` targets (tests)."""
    if not settings.telemetry.targets:
        return None
    if telemetry_bus is None:
        if settings.bus.backend == "redis":
            telemetry_bus = build_telemetry_bus(settings, [])
        elif store is not None:
            telemetry_bus = build_telemetry_bus(settings, [TelemetrySink(store, observers or [])])
        else:
            return None
    from infersight.telemetry.collector import TelemetryCollector, TelemetryMetrics

    leader = FileLeader(Path(settings.storage.path) / LOCK_FILE)
    collector = TelemetryCollector(settings.telemetry, telemetry_bus.publish, TelemetryMetrics(registry), leader=leader,
                                   cloudwatch_client=cloudwatch_client)
    return TelemetryWiring(collector, telemetry_bus, leader)


def telemetry_consumer(settings: Settings, store: Store) -> tuple[Any, TelemetrySink]:
    """``infersight ingest``: a member of ``bus.group`` on the telemetry stream, writing through a TelemetrySink."""
    from infersight.bus.redis_consumer import RedisStreamConsumer

    sink = TelemetrySink(store)
    stream = telemetry_stream(settings)
    consumer = RedisStreamConsumer.for_settings(
        settings.bus, sink=sink, stream=stream, consumer=f"{socket.gethostname()}-{os.getpid()}-telemetry",
        record_type=TelemetrySample,
    )
    return consumer, sink
