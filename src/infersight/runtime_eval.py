"""Wires the evaluation layer: the eval bus, the gateway's tap and masking queue, the eval sink.

Kept beside ``runtime`` (the only other module that knows concrete classes) so each stays small.
Embedded, by default: gateway tap -> masking thread -> hand-off to the eval process, which owns
the rest (``wire_owned_path``, ``evaluation/owner.py``). Embedded otherwise: tap -> masking thread ->
MemoryBus (journal ``<storage.path>/spool-evals``) -> EvalSink -> store in the gateway process; the
eval breaker reads the pending tasks and the spend. Either embedded owner of the eval bus also polls
the redrive inbox, where ``infersight deadletter replay --stream evals`` hands dead letters back. Scale-out: the tap publishes to the Redis stream
``evaluation.stream``; ``infersight eval-worker`` processes form the consumer group.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from infersight.bus.base import Bus, Exporter
from infersight.bus.memory import MemoryBus
from infersight.config import ConfigError, Settings
from infersight.evaluation.breaker import EvalBreaker, LagSource, SpendSource
from infersight.evaluation.dead_letters import JsonlDeadLetters, dead_letter_dir, spool_dir
from infersight.evaluation.eval_health import (
    LocalSpend, PendingTasks, RedisSpend, RedisStreamLag, epoch_of, store_spend,
)
from infersight.evaluation.masking import MaskingQueue
from infersight.evaluation.metrics import EvalGatewayMetrics, EvalWorkerMetrics
from infersight.evaluation.offload import EvalProcess, RemoteEvaluate, RemoteJudge, RemoteMask
from infersight.evaluation.offload_child import EVALUATE, JUDGE, MASK
from infersight.evaluation.overrides import FileOverrides, OverrideStore, RedisOverrides
from infersight.evaluation.owner import EvalOwnerProcess, ProcessLag, ProcessMetrics, ProcessSpend, ResultsRelay
from infersight.evaluation.rubric import Rubric, RubricError, load_rubric
from infersight.evaluation.redrive import POLL_S as REDRIVE_POLL_S
from infersight.evaluation.redrive import RedriveInbox
from infersight.evaluation.sampler import Sampler
from infersight.evaluation.sampling_key import KEY_FILE, FileSamplingKey, RedisSamplingKey, SamplingKeyStore
from infersight.evaluation.spend_ledger import LEDGER_NAME
from infersight.evaluation.tap import EvalTap
from infersight.evaluation.worker import DeadLetter, EvalSink, Evaluate, Judge, SpendRecorder
from infersight.gateway.metrics import multiprocess_enabled
from infersight.model import EvalResult, EvalTask
from infersight.periodic import Periodic
from infersight.store.base import Store
from infersight.store.remote import RemoteStore

SPEND_RESYNC_S = 30.0  # --workers N: how often each worker re-reads the budget period's spend from the store

SAMPLING_OVERRIDES = "sampling-overrides.json"


def build_sampler(settings: Settings) -> Sampler:
    """Overrides and the sampling key shared through Redis when the bus is Redis (gateways on many
    hosts), else files under storage.path."""
    cfg = settings.evaluation
    store: OverrideStore
    keys: SamplingKeyStore
    if settings.bus.backend == "redis" and settings.bus.url:
        from infersight.bus.redis_conn import connect

        client = connect(settings.bus.url)
        store = RedisOverrides(client, key=f"{settings.bus.stream}:sampling-overrides")
        keys = RedisSamplingKey(client, f"{settings.bus.stream}:sampling-key")
    else:
        store = FileOverrides(Path(settings.storage.path) / SAMPLING_OVERRIDES)
        keys = FileSamplingKey(Path(settings.storage.path) / KEY_FILE)
    return Sampler(cfg.sample_rate, {t.id: t.sample_rate for t in settings.tenants}, overrides=store,
                   max_forced_s=cfg.max_forced_window_s, key_store=keys)


def build_evaluators(settings: Settings) -> list[Evaluate]:
    if not settings.evaluation.checks:
        return []
    from infersight.evaluation.checks import run_checks
    from infersight.evaluation.reference import reference_evaluator

    return [run_checks, reference_evaluator(settings.evaluation.embedding_model_dir,
                                            settings.evaluation.embedding_device)]


def check_embedding_model(settings: Settings, config: str | None = None) -> None:
    """``evaluation.embedding_model_dir`` must be a directory, and sentence-transformers installed:
    a ``ConfigError`` naming the key before anything starts (not a traceback in the eval process)."""
    import importlib.util

    folder = settings.evaluation.embedding_model_dir
    if not (settings.evaluation.enabled and folder):
        return
    if not Path(folder).expanduser().is_dir():
        raise ConfigError(f"{folder!r} is not a directory: give a local sentence-transformers model directory "
                          "(saved with SentenceTransformer(...).save(dir); hub ids are refused, nothing is "
                          "downloaded), or remove the key", path=config, key="evaluation.embedding_model_dir")
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError("embedding similarity needs the optional package sentence-transformers: "
                          "pip install sentence-transformers, or remove the key",
                          path=config, key="evaluation.embedding_model_dir")


def check_judge_rubric(settings: Settings, config: str | None = None) -> None:
    """The pipeline's judge must be buildable, checked before anything starts: its rubric must load
    and be pointwise (a missing file was a traceback at start, a pairwise rubric an ``_error`` row
    for every sampled task), and the variable holding its key must be set (a traceback after the
    store had started). A ``ConfigError`` naming the key and the config file. The embedding model,
    when one is configured, too (``check_embedding_model``)."""
    check_embedding_model(settings, config)
    evaluation = settings.evaluation
    if not (evaluation.enabled and evaluation.judge.url):
        return
    try:
        load_rubric(evaluation.judge.rubric, kind="pointwise")
    except RubricError as exc:
        raise ConfigError(str(exc), path=config, key="evaluation.judge.rubric") from None
    env = evaluation.judge.api_key_env
    if env and not os.environ.get(env):
        raise ConfigError(f"the environment variable {env!r} that holds the judge's key is not set (or empty); "
                          "set it, or remove api_key_env for a judge without a key",
                          path=config, key="evaluation.judge.api_key_env")


def build_judge(settings: Settings, rubric: Rubric | None = None) -> Judge | None:
    """The judge of ``evaluation.judge``; ``rubric``: the one its owner read at start, not the file now."""
    if not settings.evaluation.judge.url:
        return None
    from infersight.evaluation.llm_judge import LLMJudge

    return LLMJudge.from_settings(settings.evaluation.judge, rubric=rubric, kind="pointwise")


def build_eval_sink(settings: Settings, store: Store, registry: CollectorRegistry | None,
                    close_store: bool = False, observers: list[Callable[[list[EvalResult]], None]] | None = None,
                    pending: PendingTasks | None = None, dead_letter: DeadLetter | None = None,
                    process: EvalProcess | None = None, hold_on_judge_outage: bool = False,
                    rubric: Rubric | None = None, shared_stream: bool = False,
                    spend: SpendRecorder | None = None) -> EvalSink:
    """The eval sink; with ``process``, its checks and judge run in the gateway's eval process.
    ``hold_on_judge_outage``: the embedded bus's sink, which holds a batch while the judge is away.
    ``shared_stream``: a consumer of the Redis eval stream, which asks the store before judging."""
    evaluators: list[Evaluate]
    judge: Judge | None
    if process is not None:  # nothing of the checks or the judge (aiohttp) is loaded in this process
        evaluators = [RemoteEvaluate(process)] if settings.evaluation.checks else []
        judge = RemoteJudge(process) if settings.evaluation.judge.url else None
    else:
        evaluators, judge = build_evaluators(settings), build_judge(settings, rubric)
    return EvalSink(
        store,
        observers=observers,
        pending=pending,
        dead_letter=dead_letter,
        max_failures=settings.bus.max_deliveries,
        evaluators=evaluators,
        judge=judge,
        metrics=EvalWorkerMetrics(registry) if registry is not None else None,
        tenants=[t.id for t in settings.tenants],
        models=[m.name for b in settings.backends for m in b.models],
        close_store=close_store,
        hold_on_judge_outage=hold_on_judge_outage,
        content_policy={t.id: t.content for t in settings.tenants},
        ask_store_before_judging=shared_stream,
        spend=spend,
        text_days=text_retention(settings),
    )


def eval_dead_letter_sweep(settings: Settings) -> dict[str, Callable[[datetime], int]]:
    """The retention pass over the in-process eval dead letters (``spool-evals/dead-letter/``): their
    masked text must not outlive the store's (``redrive.prune_expired``)."""
    from infersight.evaluation.redrive import prune_expired

    days = text_retention(settings)
    spool = spool_dir(settings.storage.path)
    return {"eval_dead_letters": lambda now: prune_expired(spool, days, now.timestamp())}


def eval_dead_stream_sweep(settings: Settings) -> dict[str, Callable[[datetime], int]]:
    """The retention pass over the scale-out eval dead-letter stream (``<evaluation.stream>:dead``),
    run by the retention leader among the ingest workers (``redrive.prune_expired_stream``)."""
    if settings.bus.backend != "redis" or not settings.bus.url:
        return {}
    from infersight.bus.redis_conn import connect
    from infersight.evaluation.redrive import prune_expired_stream

    client, days, stream = connect(settings.bus.url), text_retention(settings), f"{settings.evaluation.stream}:dead"
    return {"eval_dead_stream": lambda now: prune_expired_stream(client, stream, days, now.timestamp())}


def text_retention(settings: Settings) -> Callable[[str], int]:
    """Days a tenant's text is kept, as the store's retention keeps it (``retention.policy_from``)."""
    from infersight.retention import policy_from

    policy = policy_from(settings.retention, settings.tenants)
    return lambda tenant: policy.text_days_by_tenant.get(tenant, policy.text_days)


def build_eval_bus(settings: Settings, exporters: list[Exporter],
                   on_drop: Callable[[EvalTask], None] | None = None) -> Bus:
    """The eval tasks' bus: in-process to ``exporters``, or the Redis stream of the eval workers.
    ``on_drop`` (in-process): told of a task the bus had to drop, which must leave the lag, or it
    would hold the breaker open until a restart."""
    cfg, bus = settings.evaluation, settings.bus
    journal = str(spool_dir(settings.storage.path)) if bus.journal else None
    if bus.backend == "redis":
        from infersight.bus.redis_streams import LateIndex, RedisStreamBus

        assert bus.url is not None
        return RedisStreamBus(bus.url, stream=cfg.stream, journal_dir=journal, max_queue=cfg.max_queue,
                              batch_size=bus.batch_size, flush_interval_s=bus.flush_interval_s,
                              record_type=EvalTask, max_journal_bytes=bus.max_journal_bytes,
                              late=LateIndex(late_key(settings), lambda task: epoch_of(task.started_at)))
    flush_s = cfg.flush_interval_s if cfg.flush_interval_s is not None else bus.flush_interval_s
    return MemoryBus(exporters, journal_dir=journal, max_queue=cfg.max_queue, batch_size=min(bus.batch_size, 256),
                     flush_interval_s=flush_s, record_type=EvalTask, max_deliveries=bus.max_deliveries,
                     max_journal_bytes=bus.max_journal_bytes,
                     on_drop=on_drop, journal_carry=(LEDGER_NAME,))  # a departed slot's unwritten spend


def keep_spend_on_disk(spend: LocalSpend, bus: Bus) -> None:
    """Unwritten judge costs also go to the eval journal's slot (``spend_ledger``), which a restarted
    process takes over: a kill during a store outage no longer drops them from the budget."""
    from infersight.evaluation.spend_ledger import SpendLedger

    journal = getattr(bus, "journal", None)  # MemoryBus.journal; the Redis bus ships to the stream
    if journal is not None:
        spend.attach_ledger(SpendLedger(journal.directory / LEDGER_NAME))


def redrive_poller(settings: Settings, bus: Bus, before_publish: Callable[[EvalTask], None] | None) -> Periodic:
    """The embedded eval bus's owner publishes what ``infersight deadletter replay --stream evals``
    hands back (``evaluation/redrive.py``), every ``redrive.POLL_S``."""
    inbox = RedriveInbox(spool_dir(settings.storage.path), bus.publish,  # type: ignore[arg-type]  # EvalTasks
                         before_publish=before_publish)
    return Periodic("infersight-eval-redrive", lambda: REDRIVE_POLL_S, inbox.poll)


def spend_key(settings: Settings) -> str:
    """The Redis key prefix of the per-period judge spend counters (eval workers add, gateways read)."""
    return f"{settings.evaluation.stream}:spend"


def redis_health(settings: Settings) -> tuple[LagSource, RedisSpend]:
    """The breaker's signals in the scale-out shape: the eval stream's group and a shared counter."""
    from infersight.bus.redis_conn import connect

    assert settings.bus.url is not None
    client = connect(settings.bus.url)
    cfg = settings.evaluation
    return (RedisStreamLag(client, cfg.stream, cfg.group, late_key=late_key(settings)),
            RedisSpend(client, spend_key(settings), cfg.breaker.budget_period))


def late_key(settings: Settings) -> str:
    """The sorted set of eval tasks that reached the stream late (``bus.redis_streams.LateIndex``)."""
    return f"{settings.evaluation.stream}:late"


@dataclass
class EvalWiring:
    tap: EvalTap
    sampler: Sampler
    masking: MaskingQueue
    bus: Bus | None  # None: the eval process owns the eval bus (``owner.py``)
    breaker: EvalBreaker | None = None
    process: EvalProcess | EvalOwnerProcess | None = None
    relay: ResultsRelay | None = None
    redrive: Periodic | None = None  # the embedded eval bus in this process: dead letters handed back
    metrics: EvalGatewayMetrics | None = None

    def sync_metrics(self) -> None:
        """At each scrape: what the eval bus in this process had to drop (never silently)."""
        if self.bus is not None and self.metrics is not None:
            self.metrics.sync_bus(self.bus.stats().dropped)

    def bus_health(self) -> dict[str, object]:
        """``/healthz``'s ``eval_bus``: the eval bus in this process (None: the eval process owns it)."""
        if self.bus is None:
            return {}
        stats = self.bus.stats()
        return {"queued": stats.queued, "dropped": stats.dropped, "dead_lettered": stats.dead_lettered}

    async def start(self) -> None:
        if self.process is not None:
            self.process.start()  # before the bus: a replayed spool goes straight to the judge
        if self.bus is not None:
            self.bus.start()
        if self.redrive is not None:
            self.redrive.start()
        self.masking.start()
        self.sampler.start()
        if self.breaker is not None:
            self.breaker.start()
        if self.relay is not None:
            self.relay.start()

    async def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        if self.breaker is not None:
            self.breaker.stop()
        self.sampler.stop()
        self.masking.stop()
        if self.relay is not None:
            await asyncio.to_thread(self.relay.final)
        if self.redrive is not None:
            self.redrive.stop()
        if self.bus is not None:
            self.bus.stop()
        if self.process is not None:  # last: the masking queue and the sink drained through it
            self.process.stop()


def eval_process_owns_path(settings: Settings) -> bool:
    """Whether the gateway's eval process owns the sampled path (``owner.py``): the embedded shape
    with both child processes, where its writes can go straight to the store process."""
    return (settings.evaluation.enabled and settings.evaluation.child_process and settings.bus.backend == "memory"
            and settings.store.backend == "duckdb" and settings.store.child_process and not multiprocess_enabled())


def wire_owned_path(settings: Settings, store: RemoteStore, registry: CollectorRegistry,
                    observers: list[Callable[[list[EvalResult]], None]] | None) -> EvalWiring:
    """The gateway's parts when its eval process owns the sampled path: the sampler, the tap and a
    queue that hands batches over; lag, spend and the eval metrics are asked of the child."""
    assert store.address is not None
    metrics = EvalGatewayMetrics(registry)
    process = EvalOwnerProcess(settings, store.address, relay_results=bool(observers),
                               on_restart=metrics.process_restarts.inc)
    registry.register(ProcessMetrics(process))  # type: ignore[arg-type]  # a collector: describe + collect
    handed = PendingTasks()  # from the submit to the child's answer for its batch
    masking = MaskingQueue(None, metrics, max_chars=settings.evaluation.max_content_chars,
                           linger_s=settings.evaluation.mask_linger_s, handoff=process.handoff, pending=handed)
    sampler = build_sampler(settings)
    breaker = EvalBreaker(settings.evaluation.breaker, sampler, ProcessLag(process, handed), ProcessSpend(process),
                          gauges=metrics)
    relay = ResultsRelay(process, observers) if observers else None
    return EvalWiring(EvalTap(settings, sampler, masking, metrics), sampler, masking, None, breaker, process, relay)


def wire_evaluation(settings: Settings, store: Store | None, registry: CollectorRegistry,
                    eval_bus: Bus | None = None,
                    observers: list[Callable[[list[EvalResult]], None]] | None = None) -> EvalWiring | None:
    """The gateway's evaluation parts, or None when there is nowhere for eval tasks to go (no
    store in this process and no Redis) or evaluation is off."""
    if not settings.evaluation.enabled:
        return None
    if eval_bus is None and isinstance(store, RemoteStore) and store.address is not None \
            and eval_process_owns_path(settings):
        return wire_owned_path(settings, store, registry, observers)
    metrics = EvalGatewayMetrics(registry)
    process = eval_process(settings, in_process_sink=eval_bus is None and settings.bus.backend != "redis"
                           and store is not None, metrics=metrics)
    pending: PendingTasks | None = None
    redrive: Periodic | None = None
    lag: LagSource | None = None
    spend: SpendSource | None = None
    if settings.bus.backend == "redis" and settings.bus.url:
        lag, spend = redis_health(settings)
    if eval_bus is None:
        if settings.bus.backend == "redis":
            eval_bus = build_eval_bus(settings, [])
        elif store is not None:
            pending = PendingTasks()
            # with --workers N the store holds every worker's spend: re-read it (LocalSpend)
            local_spend = LocalSpend(seed=store_spend(store), resync_s=SPEND_RESYNC_S if multiprocess_enabled() else None,
                                     period=settings.evaluation.breaker.budget_period)
            lag, spend = pending, local_spend
            dead = JsonlDeadLetters(dead_letter_dir(settings.storage.path))
            sink = build_eval_sink(settings, store, registry, observers=observers, spend=local_spend,
                                   pending=pending, dead_letter=dead, process=process, hold_on_judge_outage=True)
            eval_bus = build_eval_bus(settings, [sink], on_drop=pending.drop)
            keep_spend_on_disk(local_spend, eval_bus)
            redrive = redrive_poller(settings, eval_bus, pending.add)
        else:
            return None
    masking = MaskingQueue(eval_bus, metrics, max_chars=settings.evaluation.max_content_chars, pending=pending,
                           linger_s=settings.evaluation.mask_linger_s,
                           mask=RemoteMask(process) if process is not None else None)
    sampler = build_sampler(settings)
    breaker = EvalBreaker(settings.evaluation.breaker, sampler, lag, spend, gauges=metrics) \
        if lag is not None or spend is not None else None
    return EvalWiring(EvalTap(settings, sampler, masking, metrics), sampler, masking, eval_bus, breaker, process,
                      redrive=redrive, metrics=metrics)


def eval_process(settings: Settings, *, in_process_sink: bool, metrics: EvalGatewayMetrics) -> EvalProcess | None:
    """The gateway's eval process (``evaluation.child_process``): masking always; the checks and the
    judge too when the eval sink runs in this gateway (the embedded shape)."""
    if not settings.evaluation.child_process:
        return None
    ops = {MASK, EVALUATE, JUDGE} if in_process_sink else {MASK}
    return EvalProcess(settings.evaluation, ops, log_level=settings.logging.level,
                       on_restart=metrics.process_restarts.inc)


Hook = Callable[[], Awaitable[None]]
