"""TelemetrySample: one reading of one metric of one instance (GPU or engine), at one time.

Field names are the telemetry table's columns (docs/store.md). ``gpu`` is the GPU index or UUID
when the metric is per GPU; ``model_id`` is set when the metric is attributable to one model
(an engine labels it, or config says which model a process serves); both None otherwise.
``metric`` is one of the documented common names (docs/telemetry.md), e.g. ``gpu_utilization``
(0-1), ``gpu_memory_utilization`` (0-1), ``kv_cache_usage`` (0-1), ``prefix_cache_hit_rate`` (0-1),
``requests_running``, ``requests_waiting``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(slots=True)
class TelemetrySample:
    ts: str  # ISO 8601 UTC
    source: str  # nvml, dcgm, vllm, tgi, sglang, sagemaker, bedrock
    instance: str
    metric: str
    value: float
    gpu: str | None = None
    model_id: str | None = None
    #: string fields a bus payload must carry to be a sample (journal and Redis decoding check them)
    IDENTITY: ClassVar[tuple[str, ...]] = ("ts", "source", "instance", "metric")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TELEMETRY_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TelemetrySample:
        return cls(**{k: v for k, v in data.items() if k in _KNOWN})


TELEMETRY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TelemetrySample))
_KNOWN = frozenset(TELEMETRY_FIELDS)
