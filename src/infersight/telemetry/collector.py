"""The telemetry loop: every ``interval_s``, scrape every target, map to common names, publish.

Why it is shaped this way:

- **Its own thread, with its own asyncio loop.** Parsing and mapping 64 targets costs about
  150 ms of CPU per round (docs/telemetry.md, "Cost"); on the gateway's event loop that would be
  150 ms of added latency for every request in flight. The collector thread only shares the GIL
  with the gateway, which Python hands over every few milliseconds.
- **Concurrent scrapes, one timeout each.** One aiohttp session (kept-alive connections across
  rounds) fetches all pages at once; a slow or dead target costs at most ``timeout_s`` and never
  delays the others' samples.
- **Fetch every page, then parse.** Parsing is CPU on this loop: a page parsed while other fetches
  are in flight holds their responses unread, and a big one (a 20 MiB page takes seconds) would run
  their clocks out, counting healthy targets as timed out. So a round fetches all pages first
  (bounded by ``timeout_s``), then parses and maps them one by one.
- **Never raises, logs once per outage.** A failed scrape (connection refused, timeout, HTTP
  error, oversized page, a page the mapping cannot read, a 200 page that is not Prometheus text,
  e.g. an HTML or JSON answer from a mistyped URL, which would otherwise look healthy and report
  nothing) is counted in
  ``infersight_telemetry_scrape_failures_total{instance,kind}`` and logged when the target goes
  down, and again when it comes back; not on every interval. NVML counts the same way (kind
  ``nvml``): its failure costs its own samples, never the round's scraped ones.
- **One RateTracker** for all targets (keyed by instance), so counters become rates and
  histograms quantiles between two scrapes of the same target.
- **Publish, do not write.** Samples go to a ``publish`` callable (a bus's ``publish``: O(1), no
  I/O), so a slow store never slows the loop; the bus's writer thread writes to the store.

- **CloudWatch on its own cadence.** ``sagemaker`` and ``bedrock`` targets are polled every
  ``cloudwatch.interval_s`` by a task beside the rounds, each region's blocking ``GetMetricData`` on a
  thread of its own (``telemetry/cloudwatch_loop.py``); failures count in the same metric.

With ``--workers N`` every gateway process builds a collector; ``leader`` (a lock file, see
``runtime_telemetry``) lets exactly one of them scrape, and another takes over if it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from infersight.logs import safe_url
from infersight.model.telemetry import TelemetrySample
from infersight.telemetry.cloudwatch_loop import ClientFactory, CloudWatchPoller, off_loop
from infersight.telemetry.dcgm import FAMILIES as DCGM_FAMILIES
from infersight.telemetry.dcgm import map_dcgm
from infersight.telemetry.engines import map_engine, wanted_families
from infersight.telemetry.nvml import NvmlCollector
from infersight.telemetry.prom_text import parse_text
from infersight.telemetry.rates import RateTracker
from infersight.telemetry.settings import CLOUDWATCH_KINDS, SCRAPE_KINDS, TelemetrySettings, TelemetryTarget

log = logging.getLogger("infersight.telemetry")

Publish = Callable[[TelemetrySample], None]
MAX_PAGE_BYTES = 32 << 20  # a metrics page is ~60 KiB; far beyond this something is wrong
SCRAPE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ACCEPT = "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1"


class ScrapeFailed(Exception):
    """A target answered badly (HTTP status, page too large, not Prometheus text); the message is safe to log."""


@dataclass(frozen=True, slots=True)
class _Page:
    """A fetched page, waiting for the round's other fetches before it is parsed."""

    body: bytes
    ts: float  # when the response started: the samples' time
    fetch_s: float


class TelemetryMetrics:
    """The collector's own health, on the gateway's /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter("infersight_telemetry_scrape_failures",
                                "Telemetry scrapes that failed (refused, timeout, HTTP error, unreadable page, "
                                "failed CloudWatch poll).",
                                ("instance", "kind"), registry=registry)
        self.seconds = Histogram("infersight_telemetry_scrape_seconds",
                                 "Time to fetch, parse and map one target's page.", ("kind",),
                                 buckets=SCRAPE_BUCKETS, registry=registry)
        self.samples = Counter("infersight_telemetry_samples", "Telemetry samples published, by source.",
                               ("source",), registry=registry)


class TelemetryCollector:
    """Scrapes ``settings.targets`` every ``settings.interval_s`` on its own thread; see the module doc.

    ``cloudwatch_client``: region -> CloudWatch client, for the ``sagemaker`` and ``bedrock`` targets
    (default: boto3's; tests pass a stubbed one)."""

    def __init__(
        self,
        settings: TelemetrySettings,
        publish: Publish,
        metrics: TelemetryMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        nvml: NvmlCollector | None = None,
        leader: Callable[[], bool] | None = None,
        cloudwatch_client: ClientFactory | None = None,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self.metrics = metrics
        self.clock = clock
        self.leader = leader
        self.tracker = RateTracker()
        self.scrape_targets = [t for t in settings.targets if t.kind in SCRAPE_KINDS]
        self.nvml = nvml
        nvml_target = next((t for t in settings.targets if t.kind == "nvml"), None)
        if self.nvml is None and nvml_target is not None:
            self.nvml = NvmlCollector(nvml_target.instance, nvml_target.process_models, clock=clock)
        self._nvml_target = nvml_target
        self.cloudwatch = (CloudWatchPoller(settings, cloudwatch_client, clock=clock)
                           if any(t.kind in CLOUDWATCH_KINDS for t in settings.targets) else None)
        self.rounds = 0
        self.cloudwatch_rounds = 0
        self.failures = 0
        self._down: dict[tuple[str, str], str] = {}  # (instance, kind) -> why, while a target is down
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._round: asyncio.Future[Any] | None = None
        self._round_failed = False
        self._cloudwatch_failed = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TelemetryCollector:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infersight-telemetry", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the round in flight, end the loop, release NVML. Samples already published stay on the bus."""
        self._stop.set()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._interrupt)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.nvml is not None:
            try:
                self.nvml.shutdown()
            except Exception:  # stopping must finish whatever the NVML binding does
                log.warning("NVML shutdown failed", exc_info=True)

    def _interrupt(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._round is not None:
            self._round.cancel()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # never expected; a dead collector must say so once
            log.exception("telemetry collector stopped unexpectedly")

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        interval = self.settings.interval_s
        cloudwatch = asyncio.ensure_future(self._cloudwatch_main()) if self.cloudwatch is not None else None
        try:
            async with self.session() as session:
                next_at = time.monotonic()
                while not self._stop.is_set():
                    if self.leader is None or self.leader():
                        self._round = asyncio.ensure_future(self.run_round(session))
                        try:
                            await self._round
                        except asyncio.CancelledError:
                            pass
                        except Exception:  # a bug, not a target's fault: say so once, keep the loop alive
                            if not self._round_failed:
                                self._round_failed = True
                                log.exception("telemetry round failed; the loop goes on")
                        self._round = None
                    next_at = _next_slot(next_at, interval)
                    if self._stop.is_set():
                        break
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=next_at - time.monotonic())
        finally:
            if cloudwatch is not None:  # abandons a poll in flight: its daemon thread ends on its own
                cloudwatch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cloudwatch

    async def _cloudwatch_main(self) -> None:
        """Poll CloudWatch every ``cloudwatch.interval_s`` (when leading) until cancelled by ``_main``."""
        interval = self.settings.cloudwatch.interval_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.leader is None or self.leader():
                try:
                    await self.cloudwatch_round()
                except Exception:  # a bug: say so once, keep polling
                    if not self._cloudwatch_failed:
                        self._cloudwatch_failed = True
                        log.exception("CloudWatch poll failed; the loop goes on")
            next_at = _next_slot(next_at, interval)
            await asyncio.sleep(next_at - time.monotonic())

    def session(self) -> aiohttp.ClientSession:
        """One pooled session for every round (kept-alive connections to each target)."""
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            connector=aiohttp.TCPConnector(limit=max(100, len(self.scrape_targets))),
            headers={"Accept": _ACCEPT},
        )

    # -- one round ------------------------------------------------------------------------------

    async def run_round(self, session: aiohttp.ClientSession) -> list[TelemetrySample]:
        """Scrape every target once, publish the samples and return them. Never raises.

        All pages are fetched before any is parsed (see the module doc: parsing holds the loop)."""
        pages = await asyncio.gather(*(self._fetch(session, t) for t in self.scrape_targets))
        samples: list[TelemetrySample] = []
        for target, page in zip(self.scrape_targets, pages):
            if page is not None:
                samples.extend(self._read(target, page))
        if self.nvml is not None:
            samples.extend(self._nvml_samples())
        self.tracker.expire(self.clock())
        self._publish(samples)
        self.rounds += 1
        return samples

    async def cloudwatch_round(self) -> list[TelemetrySample]:
        """Poll every CloudWatch region once, concurrently off the loop; publish the samples and count one
        failure per (instance, kind) with a failed target. Returns the samples; [] without CloudWatch targets."""
        poller = self.cloudwatch
        if poller is None:
            return []
        polls = await asyncio.gather(*(off_loop(partial(poller.poll, region)) for region in poller.regions))
        outcome: dict[tuple[str, str], tuple[TelemetryTarget, str | None]] = {}
        for poll in polls:
            for target, why in poll.polled:
                key = (target.instance, target.kind)
                if key not in outcome or outcome[key][1] is None:
                    outcome[key] = (target, why)
        for target, why in outcome.values():
            if why is None:
                self._recovered(target)
            else:
                self._failed(target, why)
        samples = [s for poll in polls for s in poll.samples]
        self._publish(samples)
        self.cloudwatch_rounds += 1
        return samples

    def _publish(self, samples: Iterable[TelemetrySample]) -> None:
        counts: dict[str, int] = {}
        for sample in samples:
            self.publish(sample)
            counts[sample.source] = counts.get(sample.source, 0) + 1
        if self.metrics is not None:
            for source, n in counts.items():
                self.metrics.samples.labels(source).inc(n)

    async def collect_once(self) -> list[TelemetrySample]:
        """One round with a throw-away session (tests, one-off reads)."""
        async with self.session() as session:
            return await self.run_round(session)

    async def _fetch(self, session: aiohttp.ClientSession, target: TelemetryTarget) -> _Page | None:
        """The target's page, or None with the failure counted. Only I/O: parsing waits for the round."""
        started = time.perf_counter()
        assert target.url is not None  # validated by settings
        try:
            async with session.get(target.url) as resp:
                ts = self.clock()
                if resp.status != 200:
                    raise ScrapeFailed(f"HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise ScrapeFailed(f"page larger than {MAX_PAGE_BYTES} bytes")
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ScrapeFailed) as exc:
            self._failed(target, _why(exc))
            return None
        except Exception as exc:  # a response aiohttp cannot read: count it, keep the loop alive
            self._failed(target, f"unreadable response ({type(exc).__name__})")
            return None
        return _Page(bytes(body), ts, time.perf_counter() - started)

    def _read(self, target: TelemetryTarget, page: _Page) -> list[TelemetrySample]:
        """Parse and map a fetched page; a page that yields nothing and is not exposition text fails."""
        started = time.perf_counter()
        try:
            samples = self._map(target, page.body, page.ts)
            if not samples:
                problem = _empty_page_problem(target.kind, page.body)
                if problem is not None:
                    raise ScrapeFailed(problem)
        except ScrapeFailed as exc:
            self._failed(target, str(exc))
            return []
        except Exception as exc:  # a page the mapping cannot read: count it, keep the loop alive
            self._failed(target, f"unreadable page ({type(exc).__name__})")
            return []
        if self.metrics is not None:
            self.metrics.seconds.labels(target.kind).observe(page.fetch_s + time.perf_counter() - started)
        self._recovered(target)
        return samples

    def _map(self, target: TelemetryTarget, body: bytes, ts: float) -> list[TelemetrySample]:
        # strict=False: one malformed series must not hide the rest of the page
        if target.kind == "dcgm":
            return map_dcgm(parse_text(body, strict=False, only=DCGM_FAMILIES), target.instance, ts, target.models)
        families = parse_text(body, strict=False, only=wanted_families(target.kind))
        return map_engine(target.kind, families, self.tracker, target.instance, ts, target.models)

    def _nvml_samples(self) -> list[TelemetrySample]:
        """This host's GPUs. NVML logs its own problems once; whatever still escapes it (a binding error
        that is not an ``NVMLError``) is counted as an ``nvml`` failure and costs only these samples."""
        assert self.nvml is not None
        target = self._nvml_target or TelemetryTarget(instance=self.nvml.instance, kind="nvml")
        try:
            samples = self.nvml.collect()
        except Exception as exc:
            self._failed(target, f"NVML failed ({type(exc).__name__})")
            return []
        self._recovered(target)
        return samples

    def _failed(self, target: TelemetryTarget, why: str) -> None:
        self.failures += 1
        if self.metrics is not None:
            self.metrics.failures.labels(target.instance, target.kind).inc()
        key = (target.instance, target.kind)
        if key not in self._down:
            self._down[key] = why
            fields = {"instance": target.instance, "kind": target.kind, "url": safe_url(target.url), "reason": why}
            if target.region:  # a CloudWatch target
                fields["region"] = target.region
            log.warning("telemetry target down; counting failures until it answers again", extra={"fields": fields})

    def _recovered(self, target: TelemetryTarget) -> None:
        why = self._down.pop((target.instance, target.kind), None)
        if why is not None:
            log.info("telemetry target answers again",
                     extra={"fields": {"instance": target.instance, "kind": target.kind, "was": why}})

    @property
    def down(self) -> dict[tuple[str, str], str]:
        """Targets currently failing: (instance, kind) -> the first reason."""
        return dict(self._down)


def _next_slot(next_at: float, interval: float) -> float:
    """The next tick after ``next_at``; one that overran skips the slots it ate, keeping the phase."""
    now = time.monotonic()
    next_at += interval
    if next_at <= now:
        next_at += interval * ((now - next_at) // interval + 1)
    return next_at


def _empty_page_problem(kind: str, body: bytes) -> str | None:
    """Why a page that mapped to nothing is a failure, or None when it is a healthy empty page.

    Only asked when a page mapped to nothing, so the full parse costs nothing on a healthy round.
    Failures: content of which no line reads as a sample (HTML, JSON, an error text), and samples
    of which none belongs to ``kind`` (a dcgm-exporter configured as ``vllm``: it used to report
    nothing and count nothing). A page of comments only (an exporter with nothing observed yet),
    or one whose families of ``kind`` have no samples yet, is healthy."""
    families = parse_text(body, strict=False)
    with_samples = [name for name, fam in families.items() if fam.samples]
    if not with_samples:
        if any(line.strip() and not line.lstrip().startswith(b"#") for line in body.splitlines()):
            return "not Prometheus text"
        return None
    wanted = DCGM_FAMILIES if kind == "dcgm" else wanted_families(kind)
    if any(name in wanted for name in families):
        return None
    return f"no {kind} metrics on the page (is the target's kind right?)"


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ScrapeFailed):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
