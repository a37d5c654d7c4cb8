"""The config's CloudWatch targets (kinds ``sagemaker`` and ``bedrock``) as pollers for the telemetry loop.

Why it is shaped this way:

- **Its own cadence.** CloudWatch publishes per minute and bills per metric asked for, so these
  targets are polled every ``telemetry.cloudwatch.interval_s`` (60 s), not every scrape round.
- **One importer per region.** A CloudWatch client is regional; each region's targets share one
  ``CloudWatchImporter`` (their queries share requests), built on the first poll from the client
  factory (default: boto3 with bounded timeouts), so start-up never waits on boto3.
- **Off the event loop, on daemon threads.** ``GetMetricData`` blocks (network, retries, up to
  ``timeout_s``); each region is polled on a thread of its own (``off_loop``), so neither the
  collector's scrapes nor the other regions wait on AWS, and a call still in flight at shutdown holds
  neither ``asyncio.run`` (as ``asyncio.to_thread``'s executor would) nor the interpreter's exit.
- **boto3 is optional** (the ``aws`` extra): without it one line says ``pip install
  'infersight[aws]'`` and these targets stand down; the other targets run on. Nothing here raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from infersight.model.telemetry import TelemetrySample
from infersight.telemetry.cloudwatch import (
    BedrockModel,
    CloudWatchImporter,
    SageMakerInferenceComponent,
    SageMakerVariant,
    Target,
    cloudwatch_client,
)
from infersight.telemetry.settings import CLOUDWATCH_KINDS, DEFAULT_VARIANT, TelemetrySettings, TelemetryTarget

log = logging.getLogger("infersight.telemetry.cloudwatch")

ClientFactory = Callable[[str], Any]  # region -> a client with ``get_metric_data`` (boto3's CloudWatch client)
T = TypeVar("T")
INSTALL_HINT = "pip install 'infersight[aws]'"


def importer_target(target: TelemetryTarget) -> Target:
    """The importer's target for a config target; labels (``instance``, ``model_id``) as the config says."""
    model = target.models[0] if target.models else None
    if target.kind == "bedrock":
        assert target.bedrock_model_id is not None  # validated by settings
        return BedrockModel(target.bedrock_model_id, model_label=model, instance=target.instance)
    if target.inference_component:
        return SageMakerInferenceComponent(target.instance, target.inference_component, model_id=model,
                                           instance=target.instance)
    assert target.endpoint is not None  # validated by settings
    return SageMakerVariant(target.endpoint, target.variant or DEFAULT_VARIANT, model_id=model,
                            gpus_per_instance=target.gpus_per_instance, instance=target.instance)


def default_client_factory(timeout_s: float) -> ClientFactory:
    """boto3 CloudWatch clients whose calls cannot hang a poll: ``timeout_s`` to connect and to read,
    standard retries (3 attempts). Raises ImportError, naming the extra, without boto3."""

    def make(region: str) -> Any:
        try:
            from botocore.config import Config  # type: ignore[import-not-found, import-untyped, unused-ignore]
        except ImportError as exc:
            raise ImportError(f"CloudWatch import needs boto3: {INSTALL_HINT}") from exc
        config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                        retries={"max_attempts": 3, "mode": "standard"})
        return cloudwatch_client(region, config=config)

    return make


@dataclass
class RegionPoll:
    """One region's poll: the samples, and each polled target with why it failed (None: it did not)."""

    region: str
    samples: list[TelemetrySample] = field(default_factory=list)
    polled: list[tuple[TelemetryTarget, str | None]] = field(default_factory=list)


class CloudWatchPoller:
    """The ``sagemaker`` and ``bedrock`` targets of ``settings``, grouped by region; ``poll(region)`` blocks."""

    def __init__(self, settings: TelemetrySettings, client_factory: ClientFactory | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings.cloudwatch
        self.client_factory = client_factory or default_client_factory(self.settings.timeout_s)
        self.clock = clock
        self.by_region: dict[str, list[tuple[TelemetryTarget, Target]]] = {}
        for target in settings.targets:
            if target.kind in CLOUDWATCH_KINDS:
                assert target.region is not None  # validated by settings
                self.by_region.setdefault(target.region, []).append((target, importer_target(target)))
        self.importers: dict[str, CloudWatchImporter] = {}
        self.unavailable: str | None = None  # why every CloudWatch target stood down (no boto3)
        self._client_failing: dict[str, str] = {}  # region -> why its client cannot be built, logged once
        self._bug_logged: set[str] = set()
        self._lock = threading.Lock()  # regions poll on threads of their own; boto3 builds clients serially

    @property
    def regions(self) -> list[str]:
        return list(self.by_region)

    def importer(self, region: str) -> CloudWatchImporter:
        """The region's importer, built on first use. Raises what the client factory raises."""
        with self._lock:
            if region not in self.importers:
                cfg = self.settings
                self.importers[region] = CloudWatchImporter(
                    self.client_factory(region), [t for _, t in self.by_region[region]], self.clock,
                    period_s=cfg.period_s, lookback_s=cfg.lookback_s, settle_s=cfg.settle_s, region=region)
            return self.importers[region]

    def poll(self, region: str) -> RegionPoll:
        """Read the region's newly completed periods. Never raises: failures are in the result, logged once."""
        targets = self.by_region[region]
        if self.unavailable is not None:
            return RegionPoll(region)
        try:
            importer = self.importer(region)
        except ImportError as exc:
            self._stand_down(exc)
            return RegionPoll(region)
        except Exception as exc:  # bad credentials config, unknown region...: retried next poll
            why = f"CloudWatch client failed ({type(exc).__name__}: {exc})"
            if self._client_failing.get(region) != why:
                self._client_failing[region] = why
                log.warning(f"{why} for region {region}; retrying next poll")
            return RegionPoll(region, polled=[(t, why) for t, _ in targets])
        self._client_failing.pop(region, None)
        try:
            samples = importer.collect()
        except Exception as exc:  # only a broken invariant escapes the importer; keep the loop alive
            why = f"CloudWatch import failed ({type(exc).__name__})"
            if region not in self._bug_logged:
                self._bug_logged.add(region)
                log.exception(f"{why} for region {region}; retrying next poll")
            return RegionPoll(region, polled=[(t, why) for t, _ in targets])
        return RegionPoll(region, samples, [(t, importer.failed.get(it)) for t, it in targets])

    def _stand_down(self, exc: ImportError) -> None:
        with self._lock:
            if self.unavailable is not None:
                return
            text = str(exc) if INSTALL_HINT in str(exc) else f"{exc} ({INSTALL_HINT})"
            self.unavailable = text
        n = sum(len(t) for t in self.by_region.values())
        log.warning(f"{n} CloudWatch target(s) (kinds sagemaker, bedrock) stand down: {text}")


async def off_loop(fn: Callable[[], T], name: str = "infersight-cloudwatch") -> T:
    """``fn()`` on a daemon thread, awaited. Cancelling the await abandons the call instead of waiting for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
