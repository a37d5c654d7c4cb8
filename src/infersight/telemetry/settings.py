"""The ``telemetry:`` section of the config: what the collector scrapes, and how often.

Kept apart from ``config.py`` so that the telemetry package owns its knobs; ``config.Settings``
embeds ``TelemetrySettings``. Every key is documented in docs/config.md (a test checks it). The
rules are checked here, at start-up, so that a typo fails the gateway's start with the key named
rather than becoming a target that silently never reports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TargetKind = Literal["vllm", "tgi", "sglang", "dcgm", "nvml"]
SCRAPE_KINDS: frozenset[str] = frozenset({"vllm", "tgi", "sglang", "dcgm"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TelemetryTarget(_Strict):
    """One source: an engine's or dcgm-exporter's ``/metrics`` page, or this host's GPUs (``nvml``)."""

    instance: str = Field(min_length=1, max_length=200, description="the `instance` label of its samples")
    kind: TargetKind
    url: str | None = Field(None, description="the full metrics URL; required for vllm, tgi, sglang and dcgm")
    models: list[str] = Field(default_factory=list, description="model ids served here (see docs/telemetry.md)")
    process_models: dict[int | str, str] = Field(
        default_factory=dict, description="nvml: pid (a number) or command-line substring -> model id")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
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
        return self


class TelemetrySettings(_Strict):
    interval_s: float = Field(10.0, ge=0.5, le=3600, description="seconds between two scrape rounds")
    timeout_s: float = Field(5.0, gt=0, description="per-target scrape timeout; at most interval_s")
    targets: list[TelemetryTarget] = Field(default_factory=list, description="empty: no collector runs")

    @model_validator(mode="after")
    def _consistent(self) -> TelemetrySettings:
        if self.timeout_s > self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must not exceed interval_s ({self.interval_s})")
        seen: set[tuple[str, str]] = set()
        for target in self.targets:
            if (target.instance, target.kind) in seen:
                raise ValueError(f"two targets with instance {target.instance!r} and kind {target.kind}: "
                                 "their rates and samples would collide")
            seen.add((target.instance, target.kind))
        if sum(t.kind == "nvml" for t in self.targets) > 1:
            raise ValueError("at most one target of kind nvml (it reads every GPU of this host)")
        return self
