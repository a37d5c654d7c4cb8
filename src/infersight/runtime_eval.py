"""Wires the evaluation layer: the eval bus, the gateway's tap and masking queue, the eval sink.

Kept beside ``runtime`` (the only other module that knows concrete classes) so each stays small.
Embedded: gateway tap -> masking thread -> MemoryBus (journal ``<storage.path>/spool-evals``) ->
EvalSink -> store, all in the gateway process. Scale-out: the tap publishes to the Redis stream
``evaluation.stream``; ``infersight eval-worker`` processes form the consumer group.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from infersight.bus.base import Bus, Exporter
from infersight.bus.memory import MemoryBus
from infersight.config import Settings
from infersight.evaluation.masking import MaskingQueue
from infersight.evaluation.metrics import EvalGatewayMetrics, EvalWorkerMetrics
from infersight.evaluation.overrides import FileOverrides, OverrideStore, RedisOverrides
from infersight.evaluation.sampler import Sampler
from infersight.evaluation.tap import EvalTap
from infersight.evaluation.worker import EvalSink, Evaluate, Judge
from infersight.model import EvalResult, EvalTask
from infersight.store.base import Store

SAMPLING_OVERRIDES = "sampling-overrides.json"


def build_sampler(settings: Settings) -> Sampler:
    """Overrides shared through Redis when the bus is Redis (gateways on many hosts), else a file."""
    cfg = settings.evaluation
    store: OverrideStore
    if settings.bus.backend == "redis" and settings.bus.url:
        from infersight.bus.redis_conn import connect

        store = RedisOverrides(connect(settings.bus.url), key=f"{settings.bus.stream}:sampling-overrides")
    else:
        store = FileOverrides(Path(settings.storage.path) / SAMPLING_OVERRIDES)
    return Sampler(cfg.sample_rate, {t.id: t.sample_rate for t in settings.tenants}, overrides=store,
                   max_forced_s=cfg.max_forced_window_s)


def build_evaluators(settings: Settings) -> list[Evaluate]:
    if not settings.evaluation.checks:
        return []
    from infersight.evaluation.checks import run_checks
    from infersight.evaluation.reference import run_reference

    return [run_checks, run_reference]


def build_judge(settings: Settings) -> Judge | None:
    if not settings.evaluation.judge.url:
        return None
    from infersight.evaluation.llm_judge import LLMJudge

    return LLMJudge.from_settings(settings.evaluation.judge)


def build_eval_sink(settings: Settings, store: Store, registry: CollectorRegistry | None,
                    close_store: bool = False, observers: list[Callable[[list[EvalResult]], None]] | None = None
                    ) -> EvalSink:
    return EvalSink(
        store,
        observers=observers,
        evaluators=build_evaluators(settings),
        judge=build_judge(settings),
        metrics=EvalWorkerMetrics(registry) if registry is not None else None,
        tenants=[t.id for t in settings.tenants],
        models=[m.name for b in settings.backends for m in b.models],
        close_store=close_store,
    )


def build_eval_bus(settings: Settings, exporters: list[Exporter]) -> Bus:
    """The eval tasks' bus: in-process to ``exporters``, or the Redis stream of the eval workers."""
    cfg, bus = settings.evaluation, settings.bus
    journal = str(Path(settings.storage.path) / "spool-evals") if bus.journal else None
    if bus.backend == "redis":
        from infersight.bus.redis_streams import RedisStreamBus

        assert bus.url is not None
        return RedisStreamBus(bus.url, stream=cfg.stream, journal_dir=journal, max_queue=cfg.max_queue,
                              batch_size=bus.batch_size, flush_interval_s=bus.flush_interval_s,
                              record_type=EvalTask)
    return MemoryBus(exporters, journal_dir=journal, max_queue=cfg.max_queue, batch_size=min(bus.batch_size, 256),
                     flush_interval_s=bus.flush_interval_s, record_type=EvalTask)


@dataclass
class EvalWiring:
    tap: EvalTap
    sampler: Sampler
    masking: MaskingQueue
    bus: Bus

    async def start(self) -> None:
        self.bus.start()
        self.masking.start()
        self.sampler.start()

    async def stop(self) -> None:
        self.sampler.stop()
        self.masking.stop()
        self.bus.stop()


def wire_evaluation(settings: Settings, store: Store | None, registry: CollectorRegistry,
                    eval_bus: Bus | None = None,
                    observers: list[Callable[[list[EvalResult]], None]] | None = None) -> EvalWiring | None:
    """The gateway's evaluation parts, or None when there is nowhere for eval tasks to go (no
    store in this process and no Redis) or evaluation is off."""
    if not settings.evaluation.enabled:
        return None
    if eval_bus is None:
        if settings.bus.backend == "redis":
            eval_bus = build_eval_bus(settings, [])
        elif store is not None:
            eval_bus = build_eval_bus(settings, [build_eval_sink(settings, store, registry, observers=observers)])
        else:
            return None
    masking = MaskingQueue(eval_bus, EvalGatewayMetrics(registry), max_chars=settings.evaluation.max_content_chars)
    sampler = build_sampler(settings)
    return EvalWiring(EvalTap(settings, sampler, masking, masking.metrics), sampler, masking, eval_bus)


Hook = Callable[[], Awaitable[None]]
