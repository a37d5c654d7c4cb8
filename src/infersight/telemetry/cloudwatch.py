"""CloudWatch import: SageMaker endpoint and Bedrock metrics as TelemetrySamples, through ``GetMetricData``.

Why: managed endpoints expose no NVML and no ``/metrics``; CloudWatch is where AWS publishes their
GPU, latency and traffic figures. The importer turns them into the same common metric names the
other collectors use, per model, so one query answers "how is model X doing" wherever it runs.

What is asked for (namespaces and dimensions as AWS documents them: ``extdata/aws`` and the current
"SageMaker AI metrics in Amazon CloudWatch" page for inference components):

- ``SageMakerVariant``: ``AWS/SageMaker`` and ``/aws/sagemaker/Endpoints`` with dimensions
  ``EndpointName, VariantName``.
- ``SageMakerInferenceComponent``: ``AWS/SageMaker`` and ``/aws/sagemaker/InferenceComponents`` with
  the one dimension ``InferenceComponentName``. Each component is queried on its own, so several
  components on one endpoint are attributed per component, never blended.
- ``BedrockModel``: ``AWS/Bedrock`` with dimension ``ModelId``.

Labels: ``source`` ``sagemaker`` or ``bedrock``; ``instance`` the target's ``instance`` when set (the
config's, see ``cloudwatch_loop``), else the endpoint name, or ``bedrock:<region>``; ``model_id`` the
target's explicit ``model_id`` (Bedrock: ``model_label``) when set, else the inference component name,
else the variant name, else (Bedrock) the ``ModelId``; ``gpu`` None (CloudWatch's GPU
figures are per instance, not per device); ``ts`` the start of the CloudWatch period.

Units: percent -> 0-1; microseconds -> ms; Sum over a period -> per second (Sum / period). The
variant-level ``GPUUtilization`` and ``GPUMemoryUtilization`` are 0-100 *times the number of GPUs*;
with ``gpus_per_instance`` set they become ``gpu_utilization`` / ``gpu_memory_utilization`` (0-1),
without it they are kept as ``gpu_utilization_sum`` / ``gpu_memory_utilization_sum`` (0-N, the sum
over the GPUs), never passed off as a 0-1 figure.

Incremental: each query remembers where its next window starts. A window ends ``settle_s`` before
now (aligned to the period), so a period is read once it is complete. ``PartialData`` pages are
followed through ``NextToken`` and merged per query id; once every page is read a query moves on to
the window's end (if ``max_pages`` cuts the answer short, to just past its last datapoint). A query
any page marks ``InternalError``/``Forbidden``, or a failed call, stays where it was (retried next time). Queries
with the same start share a request (at most 500 queries each); pages follow ``NextToken``.
A result whose datapoints cannot be read (a timestamp or value that is not one, or
``Timestamps`` and ``Values`` of different lengths) loses that page of that query only: counted in
``failed`` and logged once, and the query moves on, since asking again would get the same answer; an
exception here would leave every query of the request unread, poll after poll.
State is in memory: after a restart the importer reads ``lookback_s`` again, and the store's
idempotent writes absorb the overlap. Errors are logged once per kind, never raised; the targets a
failure left unread in the last ``collect()`` are in ``failed`` (the collector counts them).

boto3 is optional (the ``aws`` extra): this module never imports it; pass any client with
``get_metric_data``, or build one with ``cloudwatch_client(region)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from infersight.model.telemetry import TelemetrySample

log = logging.getLogger("infersight.telemetry.cloudwatch")

MAX_QUERIES_PER_REQUEST = 500  # GetMetricData's limit
#: Metric names this importer emits (docs/telemetry.md, "CloudWatch"): name -> unit.
METRICS: dict[str, str] = {
    "gpu_utilization": "fraction 0-1",
    "gpu_memory_utilization": "fraction 0-1",
    "gpu_utilization_sum": "0-N (sum over N GPUs; gpus_per_instance unknown)",
    "gpu_memory_utilization_sum": "0-N (sum over N GPUs; gpus_per_instance unknown)",
    "model_latency_ms": "ms",
    "overhead_latency_ms": "ms",
    "invocations_per_s": "1/s",
    "errors_4xx_per_s": "1/s",
    "errors_5xx_per_s": "1/s",
    "invocation_latency_ms": "ms",
    "input_tokens_per_s": "tokens/s",
    "output_tokens_per_s": "tokens/s",
}
Scale = Literal["none", "percent", "gpu_percent", "us_to_ms", "per_s"]


@dataclass(frozen=True)
class SageMakerVariant:
    """A production variant of a SageMaker endpoint (one model per variant)."""

    endpoint: str
    variant: str = "AllTraffic"
    model_id: str | None = None
    gpus_per_instance: int | None = None
    instance: str | None = None  # the samples' ``instance`` label; default the endpoint


@dataclass(frozen=True)
class SageMakerInferenceComponent:
    """An inference component: one model of an endpoint that hosts several."""

    endpoint: str
    component: str
    model_id: str | None = None
    instance: str | None = None  # the samples' ``instance`` label; default the endpoint


@dataclass(frozen=True)
class BedrockModel:
    """A Bedrock model (or inference profile), as CloudWatch's ``ModelId`` dimension names it."""

    model_id: str
    model_label: str | None = None  # the samples' ``model_id`` label; default ``model_id``
    instance: str | None = None  # the samples' ``instance`` label; default ``bedrock:<region>``


Target = SageMakerVariant | SageMakerInferenceComponent | BedrockModel


@dataclass(frozen=True)
class MetricSpec:
    """One CloudWatch metric, the statistic asked for, and the common name and unit it becomes."""

    namespace: str
    name: str
    stat: str
    metric: str
    scale: Scale


def _invocation_specs() -> tuple[MetricSpec, ...]:
    ns = "AWS/SageMaker"
    return (
        MetricSpec(ns, "ModelLatency", "Average", "model_latency_ms", "us_to_ms"),
        MetricSpec(ns, "OverheadLatency", "Average", "overhead_latency_ms", "us_to_ms"),
        MetricSpec(ns, "Invocations", "Sum", "invocations_per_s", "per_s"),
        MetricSpec(ns, "Invocation4XXErrors", "Sum", "errors_4xx_per_s", "per_s"),
        MetricSpec(ns, "Invocation5XXErrors", "Sum", "errors_5xx_per_s", "per_s"),
    )


SAGEMAKER_VARIANT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("/aws/sagemaker/Endpoints", "GPUUtilization", "Average", "gpu_utilization", "gpu_percent"),
    MetricSpec("/aws/sagemaker/Endpoints", "GPUMemoryUtilization", "Average", "gpu_memory_utilization", "gpu_percent"),
    *_invocation_specs(),
)
SAGEMAKER_COMPONENT_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("/aws/sagemaker/InferenceComponents", "GPUUtilizationNormalized", "Average", "gpu_utilization",
               "percent"),
    MetricSpec("/aws/sagemaker/InferenceComponents", "GPUMemoryUtilizationNormalized", "Average",
               "gpu_memory_utilization", "percent"),
    *_invocation_specs(),
)
BEDROCK_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("AWS/Bedrock", "InvocationLatency", "Average", "invocation_latency_ms", "none"),
    MetricSpec("AWS/Bedrock", "Invocations", "Sum", "invocations_per_s", "per_s"),
    MetricSpec("AWS/Bedrock", "InputTokenCount", "Sum", "input_tokens_per_s", "per_s"),
    MetricSpec("AWS/Bedrock", "OutputTokenCount", "Sum", "output_tokens_per_s", "per_s"),
)


@dataclass(frozen=True)
class _Query:
    id: str
    key: tuple[Any, ...]  # what the watermark is remembered by: stable while the config is
    spec: MetricSpec
    target: Target
    dimensions: tuple[tuple[str, str], ...]
    source: str
    instance: str
    model_id: str

    def request(self, period_s: int) -> dict[str, Any]:
        dims = [{"Name": n, "Value": v} for n, v in self.dimensions]
        metric = {"Namespace": self.spec.namespace, "MetricName": self.spec.name, "Dimensions": dims}
        return {"Id": self.id, "MetricStat": {"Metric": metric, "Period": period_s, "Stat": self.spec.stat},
                "ReturnData": True}


def build_queries(targets: Iterable[Target], region: str) -> list[_Query]:
    """Every (target, metric) query, with ids valid for CloudWatch (lowercase first, then [a-z0-9_])."""
    out: list[_Query] = []
    seen: set[tuple[Any, ...]] = set()
    for target in targets:
        if isinstance(target, SageMakerVariant):
            specs = SAGEMAKER_VARIANT_METRICS
            dims: tuple[tuple[str, str], ...] = (("EndpointName", target.endpoint), ("VariantName", target.variant))
            source, instance, model = ("sagemaker", target.instance or target.endpoint,
                                       target.model_id or target.variant)
        elif isinstance(target, SageMakerInferenceComponent):
            specs = SAGEMAKER_COMPONENT_METRICS
            dims = (("InferenceComponentName", target.component),)
            source, instance, model = ("sagemaker", target.instance or target.endpoint,
                                       target.model_id or target.component)
        elif isinstance(target, BedrockModel):
            specs = BEDROCK_METRICS
            dims = (("ModelId", target.model_id),)
            source, instance = "bedrock", target.instance or f"bedrock:{region}"
            model = target.model_label or target.model_id
        else:
            raise TypeError(f"unknown CloudWatch target {target!r}")
        for spec in specs:
            key = (spec.namespace, spec.name, spec.stat, dims)
            if key in seen:  # the same target listed twice
                continue
            seen.add(key)
            qid = f"q{len(out)}_{spec.name.lower()}"
            out.append(_Query(qid, key, spec, target, dims, source, instance, model))
    return out


def cloudwatch_client(region: str, **kwargs: Any) -> Any:
    """A boto3 CloudWatch client (credentials from the standard AWS chain). Needs ``infersight[aws]``."""
    try:
        import boto3  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        raise ImportError("CloudWatch import needs boto3: pip install 'infersight[aws]'") from exc
    return boto3.client("cloudwatch", region_name=region, **kwargs)


def _datapoints(result: Any) -> dict[datetime, float] | None:
    """A result's (timestamp, value) pairs, or None when they cannot be read as such."""
    try:
        stamps, values = list(result.get("Timestamps") or ()), list(result.get("Values") or ())
        if len(stamps) != len(values):  # which value belongs to which time is then unknown
            return None
        return {_utc(t): float(v) for t, v in zip(stamps, values)}
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)


class CloudWatchImporter:
    """Imports new CloudWatch datapoints for the targets on each ``collect()``; see the module docstring."""

    def __init__(
        self,
        client: Any,
        targets: Sequence[Target],
        clock: Callable[[], float] = time.time,
        *,
        period_s: int = 60,
        lookback_s: int = 3600,
        settle_s: int = 120,
        region: str | None = None,
        max_pages: int = 100,
    ) -> None:
        if period_s < 60 or period_s % 60:
            raise ValueError("period_s must be a multiple of 60 (SageMaker and Bedrock publish per minute)")
        self.client = client
        self.period_s = period_s
        self.lookback_s = lookback_s
        self.settle_s = settle_s
        self.max_pages = max_pages
        self.region = region or getattr(getattr(client, "meta", None), "region_name", None) or "unknown"
        self.queries = build_queries(targets, self.region)
        self._clock = clock
        self._next: dict[tuple[Any, ...], float] = {}  # query key -> epoch seconds the next window starts
        self._said: set[tuple[Any, ...]] = set()  # one-off warnings already logged
        self._call_failing: str | None = None  # the error kind of the failing call, logged once
        self._query_failing: dict[str, str] = {}  # query id -> status code, logged once
        #: Targets a failed call or query left unread in the last ``collect()`` -> why (for the caller's
        #: failure counts: ``collect()`` itself never raises).
        self.failed: dict[Target, str] = {}

    def watermarks(self) -> dict[str, str]:
        """Query id -> ISO time its next window starts (only queries that have moved on)."""
        return {q.id: datetime.fromtimestamp(self._next[q.key], timezone.utc).isoformat()
                for q in self.queries if q.key in self._next}

    def collect(self) -> list[TelemetrySample]:
        """Datapoints that completed since the last call, as samples, oldest first per query. Never raises."""
        self.failed = {}
        now = self._clock()
        period = self.period_s
        end = math.floor((now - self.settle_s) / period) * period
        first = math.floor((now - self.lookback_s) / period) * period
        groups: dict[float, list[_Query]] = {}
        for q in self.queries:
            start = self._next.get(q.key, first)
            if start < end:
                groups.setdefault(start, []).append(q)
        out: list[TelemetrySample] = []
        for start, queries in sorted(groups.items()):
            for i in range(0, len(queries), MAX_QUERIES_PER_REQUEST):
                out.extend(self._fetch(queries[i:i + MAX_QUERIES_PER_REQUEST], start, end))
        return out

    def _fetch(self, queries: list[_Query], start: float, end: float) -> list[TelemetrySample]:
        by_id = {q.id: q for q in queries}
        request: dict[str, Any] = {
            "MetricDataQueries": [q.request(self.period_s) for q in queries],
            "StartTime": datetime.fromtimestamp(start, timezone.utc),
            "EndTime": datetime.fromtimestamp(end, timezone.utc),
            "ScanBy": "TimestampAscending",
        }
        points: dict[str, dict[datetime, float]] = {q.id: {} for q in queries}
        failed: dict[str, str] = {}  # query id -> InternalError / Forbidden seen on any page
        malformed: set[str] = set()  # query ids with a page of datapoints that could not be read
        token: str | None = None
        for _ in range(self.max_pages):
            try:
                page = self.client.get_metric_data(**request, **({"NextToken": token} if token else {}))
            except AssertionError:  # a broken invariant or a test stub's complaint, not an AWS condition
                raise
            except Exception as exc:  # throttled, denied, offline: retried from the same start next time
                if self._call_failing != type(exc).__name__:
                    self._call_failing = type(exc).__name__
                    log.warning(f"CloudWatch GetMetricData failed ({type(exc).__name__}: {exc}); retrying next round")
                for q in queries:
                    self.failed.setdefault(q.target, f"GetMetricData failed ({type(exc).__name__})")
                return []
            for message in page.get("Messages") or ():
                self._once(("message", message.get("Code")), logging.WARNING,
                           f"CloudWatch: {message.get('Code')}: {message.get('Value')}")
            for result in page.get("MetricDataResults") or ():
                qid = result.get("Id")
                if qid not in by_id:
                    continue
                got = _datapoints(result)
                if got is None:
                    malformed.add(qid)
                else:
                    points[qid].update(got)
                code = result.get("StatusCode", "Complete")
                if code not in ("Complete", "PartialData"):
                    failed.setdefault(qid, code)
            token = page.get("NextToken")
            if not token:
                break
        else:
            self._once(("pages",), logging.WARNING,
                       f"CloudWatch answer longer than {self.max_pages} pages; the rest is read next round")
        if self._call_failing is not None:
            log.info("CloudWatch GetMetricData works again", extra={"after": self._call_failing})
            self._call_failing = None
        out: list[TelemetrySample] = []
        for q in queries:
            if q.id in failed:
                self.failed.setdefault(q.target, f"{q.spec.name}: {failed[q.id]}")
                if self._query_failing.get(q.id) != failed[q.id]:
                    self._query_failing[q.id] = failed[q.id]
                    log.warning(f"CloudWatch returned {failed[q.id]} for {q.spec.namespace} {q.spec.name} "
                                f"{dict(q.dimensions)}; retrying next round")
                continue
            self._query_failing.pop(q.id, None)
            if q.id in malformed:  # counted and logged; the rest of its answer is kept, and it moves on
                self.failed.setdefault(q.target, f"{q.spec.name}: malformed datapoints")
                self._once(("malformed", q.id), logging.WARNING,
                           f"CloudWatch sent datapoints that are not (timestamp, number) pairs for {q.spec.namespace} "
                           f"{q.spec.name} {dict(q.dimensions)}; that page is skipped")
            series = sorted(points[q.id].items())
            out.extend(s for ts, value in series if (s := self._sample(q, ts, value)) is not None)
            if not token:  # every page read: the window is complete for this query
                self._next[q.key] = end
            elif series:  # cut short: go on just after what arrived
                self._next[q.key] = series[-1][0].timestamp() + self.period_s
        return out

    def _sample(self, q: _Query, ts: datetime, value: float) -> TelemetrySample | None:
        metric, scale = q.spec.metric, q.spec.scale
        if scale == "percent":
            value /= 100.0
        elif scale == "gpu_percent":
            gpus = getattr(q.target, "gpus_per_instance", None)
            if gpus:
                value /= 100.0 * gpus
            else:
                metric, value = f"{metric}_sum", value / 100.0
        elif scale == "us_to_ms":
            value /= 1000.0
        elif scale == "per_s":
            value /= self.period_s
        if not math.isfinite(value):
            return None
        return TelemetrySample(ts=ts.isoformat(), source=q.source, instance=q.instance, metric=metric,
                               value=value, gpu=None, model_id=q.model_id)

    def _once(self, key: tuple[Any, ...], level: int, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message)
