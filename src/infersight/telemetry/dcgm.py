"""NVIDIA dcgm-exporter metrics -> common GPU telemetry names, and DCGM's counters CSV.

DCGM quirks handled here (docs/telemetry.md, "DCGM"):

- Blank values. A field DCGM could not read is not absent: it holds a sentinel, which exporters
  have printed as a number (``9223372036854775792`` for int64 fields, ``140737488355328`` = 2**47
  for doubles, ``2147483632`` and up for int32, ``<<<NULL>>>`` for strings). Read as numbers they
  are absurd (a GPU at 1.4e14 % utilisation). They become None, never a number.
- ``DCGM_FI_DEV_GPU_UTIL`` occasionally reports values far above 100 (NVIDIA/DCGM#199): dropped.
- Units: framebuffer fields are MiB, utilisation fields percent, ``DCGM_FI_PROF_*`` ratios 0-1.
- 1.x exporter names (``dcgm_gpu_utilization``, ``dcgm_fb_used``, ...) are read as fallbacks.
- The counters CSV (``default-counters.csv``) has irregular whitespace (``DCGM_FI_DEV_DEC_UTIL ,``),
  comment lines and blank lines.

``gpu`` on samples is dcgm-exporter's ``gpu`` label (the index, as NVML and nvidia-smi number
GPUs), with ``/<GPU_I_ID>`` appended for a MIG instance; a ``gpu_index`` sample per GPU carries
the UUID (``gpu`` = UUID, value = index), as the NVML collector does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from infersight.model.telemetry import TelemetrySample
from infersight.telemetry.engines import scrape_time
from infersight.telemetry.prom_text import MetricFamily

__all__ = [
    "FAMILIES", "FIELD_TYPES", "METRICS", "DcgmCounter", "GpuReading", "dcgm_readings", "dcgm_value", "is_blank",
    "load_counters_csv", "map_dcgm", "parse_counters_csv",
]

SOURCE = "dcgm"
INT32_BLANK = 0x7FFFFFF0  # 2147483632; values up to 0x7FFFFFFF are blank codes (NOT_FOUND, ...)
INT64_BLANK = 0x7FFFFFFFFFFFFFF0  # 9223372036854775792
FP64_BLANK = 140737488355328.0  # 2**47
STR_BLANK = "<<<NULL>>>"

#: DCGM field value types (dcgm_fields.h): "i" int64, "d" double, "s" string.
FIELD_TYPES: dict[str, str] = {
    **dict.fromkeys((
        "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED", "DCGM_FI_DEV_FB_TOTAL",
        "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES",
        "DCGM_FI_PROF_NVLINK_TX_BYTES", "DCGM_FI_PROF_NVLINK_RX_BYTES",
    ), "i"),
    **dict.fromkeys((
        "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_SM_ACTIVE",
        "DCGM_FI_PROF_SM_OCCUPANCY", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
        "DCGM_FI_PROF_PIPE_FP64_ACTIVE", "DCGM_FI_PROF_PIPE_FP32_ACTIVE", "DCGM_FI_PROF_PIPE_FP16_ACTIVE",
    ), "d"),
    **dict.fromkeys(("DCGM_FI_DRIVER_VERSION", "DCGM_FI_NVML_VERSION", "DCGM_FI_DEV_BRAND",
                     "DCGM_FI_DEV_SERIAL", "DCGM_FI_DEV_VBIOS_VERSION"), "s"),
}


def is_blank(value: float | int | str | None, field_type: str | None = None) -> bool:
    """True for "DCGM had no value": None, NaN, an empty or ``<<<NULL>>>`` string, or a sentinel.

    With the field's type ("i" int64, "i32", "d" double) DCGM's own rule applies (``>= BLANK``);
    without it only the sentinel codes themselves count, so a large real counter is kept.
    """
    if value is None:
        return True
    if isinstance(value, str):
        text = value.strip()
        if text in ("", STR_BLANK, "N/A"):
            return True
        try:
            value = float(text)
        except ValueError:
            return field_type != "s"
    if math.isnan(value):
        return True
    if field_type == "i":  # compared as int: a parsed float 2**63 is >= it, an exact int too
        return value >= INT64_BLANK
    if field_type == "i32":
        return value >= INT32_BLANK
    if field_type == "d":
        return value >= FP64_BLANK
    return (INT32_BLANK <= value <= 0x7FFFFFFF or value >= INT64_BLANK
            or FP64_BLANK <= value < FP64_BLANK + 16)


def dcgm_value(raw: float | int | str | None, field_type: str | None = None) -> float | None:
    """A DCGM value as a float, or None when it is blank (see ``is_blank``) or not a number."""
    if is_blank(raw, field_type):
        return None
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# --- the counters CSV -------------------------------------------------------------------------

_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CSV_TYPES = frozenset({"gauge", "counter", "label", "histogram", "summary"})


@dataclass(frozen=True, slots=True)
class DcgmCounter:
    field: str
    type: str  # gauge, counter, label (a field exported as a label on the other metrics)
    help: str | None  # None when the CSV leaves it blank


def parse_counters_csv(text: str, *, strict: bool = True) -> list[DcgmCounter]:
    """The fields of a dcgm-exporter counters CSV (``field, type, help``), in file order.

    Lines that start with ``#`` (after whitespace) and blank lines are skipped; whitespace around
    every cell is dropped; the help may contain commas. A line that is not ``field, type[, help]``
    with a known type raises ValueError naming the line (``strict=False``: it is skipped).
    """
    out: list[DcgmCounter] = []
    for lineno, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        cells = [c.strip() for c in stripped.split(",", 2)]
        name = cells[0]
        kind = cells[1].lower() if len(cells) > 1 else ""
        if not _FIELD_RE.fullmatch(name) or kind not in CSV_TYPES:
            if strict:
                raise ValueError(f"counters CSV line {lineno}: expected 'FIELD, type, help': {line!r}")
            continue
        help_text = cells[2] if len(cells) > 2 and cells[2] else None
        out.append(DcgmCounter(name, kind, help_text))
    return out


def load_counters_csv(path: str | Path, *, strict: bool = True) -> list[DcgmCounter]:
    """``parse_counters_csv`` of a file."""
    return parse_counters_csv(Path(path).read_text(encoding="utf-8"), strict=strict)


# --- exporter metrics -> common names ---------------------------------------------------------

#: Metric names this module emits (docs/telemetry.md, "DCGM"): name -> unit.
METRICS: dict[str, str] = {
    "gpu_utilization": "fraction 0-1",
    "gpu_memory_utilization": "fraction 0-1 (used / (used + free + reserved))",
    "gpu_memory_used_bytes": "bytes",
    "gpu_memory_total_bytes": "bytes",
    "gpu_temperature_c": "degrees C",
    "gpu_power_w": "W",
    "gpu_sm_clock_mhz": "MHz",
    "gpu_sm_active": "fraction 0-1",
    "gpu_index": "index (gpu = UUID)",
}
MIB = 1024 * 1024

# Raw readings: key -> (current exporter name, 1.x exporter name or None).
_RAW: dict[str, tuple[str, str | None]] = {
    "util": ("DCGM_FI_DEV_GPU_UTIL", "dcgm_gpu_utilization"),
    "fb_used": ("DCGM_FI_DEV_FB_USED", "dcgm_fb_used"),
    "fb_free": ("DCGM_FI_DEV_FB_FREE", "dcgm_fb_free"),
    "fb_reserved": ("DCGM_FI_DEV_FB_RESERVED", None),
    "temp": ("DCGM_FI_DEV_GPU_TEMP", "dcgm_gpu_temp"),
    "power": ("DCGM_FI_DEV_POWER_USAGE", "dcgm_power_usage"),
    "sm_clock": ("DCGM_FI_DEV_SM_CLOCK", "dcgm_sm_clock"),
    "sm_active": ("DCGM_FI_PROF_SM_ACTIVE", None),
}
#: Every family ``map_dcgm`` reads: pass as ``parse_text(..., only=FAMILIES)``.
FAMILIES: frozenset[str] = frozenset(n for pair in _RAW.values() for n in pair if n)
_POD_LABELS = (("pod", "pod_name"), ("namespace", "pod_namespace"), ("container", "container_name"))


@dataclass(slots=True)
class GpuReading:
    """One GPU (or MIG instance) of one exporter page, with the labels that identify it."""

    gpu: str  # index, or "index/GPU_I_ID" for a MIG instance
    uuid: str | None = None
    gpu_model: str | None = None  # modelName: the GPU's product name
    hostname: str | None = None
    pod: str | None = None
    namespace: str | None = None
    container: str | None = None
    raw: dict[str, float] = field(default_factory=dict)  # _RAW keys, blanks left out

    def metrics(self) -> dict[str, float]:
        """Common metric name -> value, for the readings this GPU had."""
        r, out = self.raw, dict[str, float]()
        util = r.get("util")
        if util is not None and 0 <= util <= 100:
            out["gpu_utilization"] = util / 100.0
        used, free = r.get("fb_used"), r.get("fb_free")
        if used is not None:
            out["gpu_memory_used_bytes"] = used * MIB
            if free is not None:
                total = used + free + r.get("fb_reserved", 0.0)
                out["gpu_memory_total_bytes"] = total * MIB
                if total > 0:
                    out["gpu_memory_utilization"] = used / total
        for key, metric in (("temp", "gpu_temperature_c"), ("power", "gpu_power_w"),
                            ("sm_clock", "gpu_sm_clock_mhz"), ("sm_active", "gpu_sm_active")):
            if key in r:
                out[metric] = r[key]
        return out


def _blank_for_gauge(value: float) -> bool:
    # Every field read here is physically far below 2**31 (percent, C, W, MHz, MiB, ratios), so
    # any value from the smallest sentinel (int32) up is blank, whatever the field's DCGM type.
    return math.isnan(value) or value >= INT32_BLANK or value < 0


def dcgm_readings(families: Mapping[str, MetricFamily]) -> list[GpuReading]:
    """Group the exporter's series by GPU (and pod/container when the exporter maps them)."""
    readings: dict[tuple[str | None, ...], GpuReading] = {}
    for key, (name, legacy) in _RAW.items():
        fam = families.get(name) or (families.get(legacy) if legacy else None)
        if fam is None:
            continue
        for s in fam.samples:
            if _blank_for_gauge(s.value):
                continue
            lab = s.labels
            gpu = lab.get("gpu") or lab.get("UUID") or lab.get("device") or "?"
            if lab.get("GPU_I_ID"):
                gpu = f"{gpu}/{lab['GPU_I_ID']}"
            pods = tuple(lab.get(a) or lab.get(b) for a, b in _POD_LABELS)
            reading = readings.get((gpu, *pods))
            if reading is None:
                reading = readings[(gpu, *pods)] = GpuReading(
                    gpu, lab.get("UUID") or lab.get("uuid"), lab.get("modelName"), lab.get("Hostname"), *pods)
            reading.raw[key] = s.value
    return list(readings.values())


def map_dcgm(
    families: Mapping[str, MetricFamily],
    instance: str,
    ts: datetime | float | str,
    models: Sequence[str] = (),
    model_of: Callable[[GpuReading], str | None] | None = None,
) -> list[TelemetrySample]:
    """Common GPU metrics of one dcgm-exporter page: one sample per (GPU, metric).

    ``model_of`` attributes a GPU to a model (e.g. from its ``pod`` or ``container``); without it,
    or when it returns None, the one model config lists for this target is used, else None.
    """
    _, iso = scrape_time(ts)
    single = models[0] if len(models) == 1 else None
    out: list[TelemetrySample] = []
    seen_uuid: set[str] = set()
    for r in dcgm_readings(families):
        model = (model_of(r) if model_of is not None else None) or single
        for metric, value in r.metrics().items():
            out.append(TelemetrySample(ts=iso, source=SOURCE, instance=instance, metric=metric,
                                       value=float(value), gpu=r.gpu, model_id=model))
        if r.uuid and r.uuid not in seen_uuid and r.gpu.isdigit():
            seen_uuid.add(r.uuid)
            out.append(TelemetrySample(ts=iso, source=SOURCE, instance=instance, metric="gpu_index",
                                       value=float(r.gpu), gpu=r.uuid, model_id=None))
    return out
