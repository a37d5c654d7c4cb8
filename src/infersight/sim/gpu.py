"""A simulated GPU under the sim's models, exposed the way NVIDIA's dcgm-exporter does (``/dcgm/metrics``).

Why: telemetry collectors, the correlation of latency with GPU state and the "memory pressure"
diagnosis need a GPU whose numbers follow the load, on machines without one. The model is simple
and monotone, computed at scrape time from the live scheduler:

- utilization = ``1 - exp(-running / busy_at)``: a few sequences already keep the GPU busy, more
  saturate it;
- framebuffer used = model weights + the KV-cache pool: half reserved up front, the other half taken
  as each model's ``kv_usage()`` grows; free = total - used - reserved;
- power, temperature and SM clock rise with utilization.

The ``memory_pressure`` scenario (``SimServer(scenario=...)``, ``infersight sim --scenario``) is the
case the diagnosis must catch: weights fill most of the memory, so the KV pool is small, batches are
small (``max_num_seqs`` is cut) and requests queue: memory above 85%, utilization under 50%, and TTFT
tails that grow with load.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from infersight.sim.profiles import ModelProfile

SCENARIOS = ("normal", "memory_pressure")
MIB = 1 << 20


@dataclass(frozen=True)
class GpuSpec:
    model_name: str = "NVIDIA H100 80GB HBM3"
    memory_mib: int = 81_559
    reserved_mib: int = 507
    idle_power_w: float = 70.0
    max_power_w: float = 700.0
    idle_temp_c: float = 31.0
    max_temp_c: float = 76.0
    max_sm_clock_mhz: float = 1980.0
    idle_sm_clock_mhz: float = 345.0
    mem_clock_mhz: float = 2619.0
    busy_at: float = 8.0  # running sequences that make utilization 1 - 1/e
    weights_fraction: float = 0.45  # of usable memory, all models' weights
    kv_fraction: float = 0.45  # of usable memory, the KV-cache pool (vLLM preallocates; we fill it as used)


PRESSURE_SPEC = dataclasses.replace(GpuSpec(), weights_fraction=0.80, kv_fraction=0.15)


def pressure_profiles(profiles: dict[str, ModelProfile]) -> dict[str, ModelProfile]:
    """Profiles under memory pressure: a small KV pool allows only small batches."""
    return {
        name: p if p.judge is not None else dataclasses.replace(
            p, max_num_seqs=max(2, p.max_num_seqs // 8), kv_cache_blocks=max(64, p.kv_cache_blocks // 8))
        for name, p in profiles.items()
    }


@dataclass(frozen=True)
class GpuState:
    utilization: float  # 0-1
    fb_used_mib: float
    fb_free_mib: float
    fb_reserved_mib: float
    power_w: float
    temp_c: float
    sm_clock_mhz: float
    sm_active: float  # 0-1


# (model, running sequences, KV-cache usage 0-1) per model
Rows = Callable[[], Iterable[tuple[str, int, float]]]


class SimGpu:
    def __init__(self, rows: Rows, spec: GpuSpec | None = None, index: int = 0) -> None:
        self.rows = rows
        self.spec = spec or GpuSpec()
        self.index = index
        self.uuid = f"GPU-5137e5a1-0000-4000-8000-{index:012d}"

    def state(self) -> GpuState:
        s = self.spec
        rows = list(self.rows())
        running = sum(r for _, r, _ in rows)
        util = 1.0 - math.exp(-running / s.busy_at)
        usable = s.memory_mib - s.reserved_mib
        kv_share = s.kv_fraction * usable / max(1, len(rows))
        # Engines reserve part of their KV pool up front (CUDA graphs, the first blocks); the rest is
        # taken as the cache fills.
        used = s.weights_fraction * usable + sum((0.5 + 0.5 * min(1.0, kv)) * kv_share for _, _, kv in rows)
        return GpuState(
            utilization=util,
            fb_used_mib=round(used),
            fb_free_mib=round(usable - used),
            fb_reserved_mib=s.reserved_mib,
            power_w=s.idle_power_w + (s.max_power_w - s.idle_power_w) * util,
            temp_c=s.idle_temp_c + (s.max_temp_c - s.idle_temp_c) * util,
            sm_clock_mhz=s.idle_sm_clock_mhz + (s.max_sm_clock_mhz - s.idle_sm_clock_mhz) * min(1.0, util * 2),
            sm_active=util * 0.9,
        )

    def exposition(self) -> bytes:
        """dcgm-exporter's text format: DCGM_FI_* gauges with its label set (MiB, %, W, C, MHz)."""
        st, s = self.state(), self.spec
        labels = (f'gpu="{self.index}",UUID="{self.uuid}",pci_bus_id="00000000:{self.index + 0x18:02X}:00.0",'
                  f'device="nvidia{self.index}",modelName="{s.model_name}",Hostname="sim",'
                  f'DCGM_FI_DRIVER_VERSION="550.90.07"')
        series = [
            ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", round(st.sm_clock_mhz)),
            ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", round(s.mem_clock_mhz)),
            ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", round(st.temp_c)),
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", round(st.power_w, 3)),
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", round(st.utilization * 100)),
            ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", round(st.utilization * 40)),
            ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", round(st.fb_free_mib)),
            ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", round(st.fb_used_mib)),
            ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", round(st.fb_reserved_mib)),
            ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
             round(st.utilization, 6)),
            ("DCGM_FI_PROF_SM_ACTIVE", "gauge", "The ratio of cycles an SM has at least 1 warp assigned.",
             round(st.sm_active, 6)),
        ]
        out = []
        for name, kind, help_text, value in series:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n")
        return "".join(out).encode()
