"""The ``telemetry:`` section of the config: what the collector reads, how often, and the diagnosis thresholds.

Kept apart from ``config.py`` so that the telemetry package owns its knobs; ``config.Settings``
embeds ``TelemetrySettings``. Every key is documented in docs/config.md (a test checks it). The
rules are checked here, at start-up, so that a typo fails the gateway's start with the key named
rather than becoming a target that silently never reports. This module imports nothing of
infersight's, so ``config`` and ``telemetry.diagnosis`` (which needs the store's SQL) both can.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TargetKind = Literal["vllm", "tgi", "sglang", "dcgm", "nvml", "sagemaker", "bedrock"]
SCRAPE_KINDS: frozenset[str] = frozenset({"vllm", "tgi", "sglang", "dcgm"})
#: Kinds read from CloudWatch (``telemetry/cloudwatch.py``), on their own, slower, interval.
CLOUDWATCH_KINDS: frozenset[str] = frozenset({"sagemaker", "bedrock"})
#: Target keys that only the CloudWatch kinds read.
CLOUDWATCH_FIELDS = ("region", "endpoint", "variant", "inference_component", "bedrock_model_id", "gpus_per_instance")
DEFAULT_VARIANT = "AllTraffic"
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TelemetryTarget(_Strict):
    """One source: an engine's or dcgm-exporter's ``/metrics`` page, this host's GPUs (``nvml``), or a
    SageMaker endpoint / Bedrock model read from CloudWatch (``sagemaker``, ``bedrock``)."""

    instance: str = Field(min_length=1, max_length=200, description="the `instance` label of its samples")
    kind: TargetKind
    url: str | None = Field(None, description="the full metrics URL; required for vllm, tgi, sglang and dcgm")
    models: list[str] = Field(default_factory=list, description="model ids served here (see docs/telemetry.md)")
    process_models: dict[int | str, str] = Field(
        default_factory=dict, description="nvml: pid (a number) or command-line substring -> model id")
    region: str | None = Field(None, description="sagemaker, bedrock: the AWS region of the CloudWatch metrics")
    endpoint: str | None = Field(None, min_length=1, description="sagemaker: endpoint name (a production variant)")
    variant: str | None = Field(None, min_length=1, description="sagemaker with endpoint: variant, default AllTraffic")
    inference_component: str | None = Field(None, min_length=1, description="sagemaker: inference component name")
    bedrock_model_id: str | None = Field(None, min_length=1, description="bedrock: CloudWatch's ModelId dimension")
    gpus_per_instance: int | None = Field(
        None, ge=1, le=64, description="sagemaker variant: GPUs per instance, to turn 0-100 x N into 0-1")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("region")
    @classmethod
    def _aws_region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not an AWS region name (e.g. us-east-1)")
        return value

    @model_validator(mode="after")
    def _fits_kind(self) -> TelemetryTarget:
        if self.kind in SCRAPE_KINDS and not self.url:
            raise ValueError(f"url is required for kind {self.kind} (the metrics page, e.g. http://host:8000/metrics)")
        if self.kind == "nvml" and self.url:
            raise ValueError("kind nvml reads this host's GPUs through NVML: remove url")
        if self.kind == "nvml" and self.models:
            raise ValueError("kind nvml attributes GPU memory by process: use process_models, not models")
        if self.kind != "nvml" and self.process_models:
            raise ValueError(f"process_models is only read by kind nvml, not {self.kind}")
        if self.kind in CLOUDWATCH_KINDS:
            self._fits_cloudwatch()
        else:
            given = [name for name in CLOUDWATCH_FIELDS if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only read by kinds sagemaker and bedrock, not {self.kind}")
        return self

    def _fits_cloudwatch(self) -> None:
        kind = self.kind
        if self.url:
            raise ValueError(f"kind {kind} reads CloudWatch, not a metrics page: remove url")
        if not self.region:
            raise ValueError(f"region is required for kind {kind} (the AWS region of its CloudWatch metrics, "
                             "e.g. us-east-1)")
        if len(self.models) > 1:
            raise ValueError(f"kind {kind} reports one model per target: list at most one model id (for an endpoint "
                             "hosting several models, list each inference_component as its own target)")
        if kind == "bedrock":
            extra = [n for n in ("endpoint", "variant", "inference_component", "gpus_per_instance")
                     if getattr(self, n) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only read by kind sagemaker, not bedrock")
            if not self.bedrock_model_id:
                raise ValueError("bedrock_model_id is required for kind bedrock (CloudWatch's ModelId, e.g. "
                                 "anthropic.claude-3-haiku-20240307-v1:0)")
            return
        if self.bedrock_model_id is not None:
            raise ValueError("bedrock_model_id is only read by kind bedrock, not sagemaker")
        if self.endpoint and self.inference_component:
            raise ValueError("set endpoint (a production variant) or inference_component, not both: a component's "
                             "metrics are found by its name alone")
        if not self.endpoint and not self.inference_component:
            raise ValueError("kind sagemaker needs endpoint (with variant, default AllTraffic) or inference_component")
        if self.inference_component and self.variant is not None:
            raise ValueError("variant is only read with endpoint, not with inference_component")
        if self.inference_component and self.gpus_per_instance is not None:
            raise ValueError("gpus_per_instance is only read with endpoint: inference component GPU figures are "
                             "already normalised to 0-1")

    def cloudwatch_model(self) -> str | None:
        """The ``model_id`` label of a CloudWatch target's samples: ``models[0]``, else the importer's default."""
        if self.models:
            return self.models[0]
        if self.endpoint:
            return self.variant or DEFAULT_VARIANT
        return self.inference_component or self.bedrock_model_id

    def cloudwatch_identity(self) -> tuple[str | None, ...]:
        """What a CloudWatch target reads (region and dimensions): two targets must not read the same."""
        variant = (self.variant or DEFAULT_VARIANT) if self.endpoint else None
        return (self.kind, self.region, self.endpoint, variant, self.inference_component, self.bedrock_model_id)


class CloudWatchSettings(_Strict):
    """How the ``sagemaker`` and ``bedrock`` targets are polled. CloudWatch publishes per minute and bills
    per metric requested, so it is read far less often than the engines' pages."""

    interval_s: float = Field(60.0, ge=10, le=3600, description="seconds between two CloudWatch polls")
    period_s: int = Field(60, ge=60, le=3600, description="CloudWatch period asked for; a multiple of 60")
    settle_s: int = Field(120, ge=0, le=3600, description="a period is read once it ended this long ago")
    lookback_s: int = Field(3600, ge=60, le=15 * 86400, description="how far back the first poll reads")
    timeout_s: float = Field(30.0, gt=0, le=300, description="connect and read timeout of one GetMetricData call")

    @field_validator("period_s")
    @classmethod
    def _whole_minutes(cls, value: int) -> int:
        if value % 60:
            raise ValueError("must be a multiple of 60 (SageMaker and Bedrock publish per minute)")
        return value

    @model_validator(mode="after")
    def _window(self) -> CloudWatchSettings:
        if self.lookback_s < self.settle_s + self.period_s:
            raise ValueError(f"lookback_s ({self.lookback_s}) must be at least settle_s + period_s "
                             f"({self.settle_s + self.period_s}), or no period is ever read")
        return self


class DiagnosisSettings(_Strict):
    """Thresholds of the diagnosis signals (config ``telemetry.diagnosis``; rules in ``telemetry/diagnosis.py``)."""

    contention_ttft_ratio: float = Field(5.0, gt=1, description="contention fires when TTFT p99 / p50 is above this")
    min_requests: int = Field(20, ge=1, description="fewer requests in the window: contention cannot tell")
    memory_pressure_gpu_memory: float = Field(
        0.85, gt=0, le=1, description="memory pressure: mean gpu_memory_utilization above this ...")
    memory_pressure_gpu_utilization: float = Field(
        0.5, gt=0, le=1, description="... while mean gpu_utilization is below this")
    low_cache_hit_rate: float = Field(
        0.4, gt=0, le=1, description="low cache reuse: mean prefix_cache_hit_rate below this ...")
    repeated_prompt_share: float = Field(
        0.3, ge=0, lt=1, description="... while more than this share of requests repeat a prompt_hash")
    min_hashed_requests: int = Field(20, ge=1, description="fewer requests with a prompt_hash: cannot tell")


class TelemetrySettings(_Strict):
    interval_s: float = Field(10.0, ge=0.5, le=3600, description="seconds between two scrape rounds")
    timeout_s: float = Field(5.0, gt=0, description="per-target scrape timeout; at most interval_s")
    targets: list[TelemetryTarget] = Field(default_factory=list, description="empty: no collector runs")
    cloudwatch: CloudWatchSettings = Field(default_factory=CloudWatchSettings,
                                           description="polling of the sagemaker and bedrock targets")
    diagnosis: DiagnosisSettings = Field(default_factory=DiagnosisSettings,
                                         description="thresholds of GET /api/v1/diagnosis")

    @model_validator(mode="after")
    def _consistent(self) -> TelemetrySettings:
        if self.timeout_s > self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must not exceed interval_s ({self.interval_s})")
        seen: set[tuple[str, str]] = set()
        read: set[tuple[str | None, ...]] = set()
        labelled: set[tuple[str, str, str | None]] = set()
        for target in self.targets:
            if target.kind in CLOUDWATCH_KINDS:  # several per instance (one per component), apart by model
                if target.cloudwatch_identity() in read:
                    raise ValueError(f"two {target.kind} targets read the same CloudWatch metrics "
                                     f"({_identity_text(target)}): list it once")
                read.add(target.cloudwatch_identity())
                label = (target.instance, target.kind, target.cloudwatch_model())
                if label in labelled:
                    raise ValueError(f"two {target.kind} targets with instance {target.instance!r} report model "
                                     f"{label[2]!r}: their samples would collide; set models or instance apart")
                labelled.add(label)
                continue
            if (target.instance, target.kind) in seen:
                raise ValueError(f"two targets with instance {target.instance!r} and kind {target.kind}: "
                                 "their rates and samples would collide")
            seen.add((target.instance, target.kind))
        if sum(t.kind == "nvml" for t in self.targets) > 1:
            raise ValueError("at most one target of kind nvml (it reads every GPU of this host)")
        return self


def _identity_text(target: TelemetryTarget) -> str:
    names = ("kind", "region", "endpoint", "variant", "inference_component", "bedrock_model_id")
    return ", ".join(f"{n} {v}" for n, v in zip(names, target.cloudwatch_identity()) if v is not None)
