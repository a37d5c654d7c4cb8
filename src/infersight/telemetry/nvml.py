"""NVML collector: per-GPU readings and per-model GPU memory, read through nvidia-ml-py (``pynvml``).

Why it is shaped this way:

- A host without a GPU is normal (laptops, CI, CPU-only gateways). ``pynvml`` is imported lazily
  (or injected, for tests), and when it is missing, or ``nvmlInit`` fails (no library, no driver), or
  there are no devices, the collector logs ONE line and stands down: ``available`` is False and
  ``collect()`` returns ``[]`` from then on. It never raises into its caller and never logs per
  interval. That holds for whatever the binding raises, not only ``NVMLError``: nvidia-ml-py decodes
  strings it gets from the driver (``UnicodeDecodeError``), and a raise out of ``collect()`` would cost
  the telemetry round its other samples.
- Some GPUs do not report some fields (power on many consumer and MIG-enabled parts). A field that
  raises ``NVMLError_NotSupported`` (or ``NoPermission``, ``FunctionNotFound``) is skipped, and is not
  asked for again. Any other NVML error (e.g. ``GpuIsLost``) skips that reading for this interval,
  logged once per GPU and error kind.
- One ``ts`` per ``collect()``, so all samples of one reading join exactly.

Labels: ``gpu`` is the NVML index as a string (``"0"``), the same index ``nvidia-smi`` and
dcgm-exporter's ``gpu`` label use. The UUID, which survives reboots and re-ordering, is carried by
one ``gpu_index`` sample per GPU: ``gpu`` = the UUID, ``value`` = the index.

Process -> model: ``process_models`` maps an ``int`` key (a pid) or a ``str`` key (a substring of
the process's command line, read from ``/proc/<pid>/cmdline``, falling back to the process name
NVML reports) to a ``model_id``. The first key that matches wins, in mapping order. Memory of
processes mapped to the same model on one GPU is summed; memory of unmapped processes is summed
under ``model_id=None``. With no mapping configured, processes are not queried at all.
NVML reports host pids: run the collector in the host pid namespace (``--pid=host``,
``hostPID: true``) or map by command line from a process that can see ``/proc`` of the engines.

Not thread-safe: one daemon thread owns a collector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from infersight.model.telemetry import TelemetrySample

log = logging.getLogger("infersight.telemetry.nvml")

SOURCE = "nvml"
#: Metric names this collector emits (docs/telemetry.md, "NVML"): name -> unit.
METRICS: dict[str, str] = {
    "gpu_utilization": "fraction 0-1",
    "gpu_memory_used_bytes": "bytes",
    "gpu_memory_total_bytes": "bytes",
    "gpu_memory_utilization": "fraction 0-1 (used / total)",
    "gpu_temperature_c": "degrees C",
    "gpu_power_w": "W",
    "gpu_sm_clock_mhz": "MHz",
    "process_gpu_memory_bytes": "bytes, per model",
    "gpu_index": "index (gpu = UUID)",
}

# Errors that mean "this device cannot report this field": skip it for good.
_UNAVAILABLE = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")


def _read_cmdline(pid: int) -> str | None:
    """The process's command line, arguments space-separated; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlCollector:
    """Reads every GPU of this host through NVML; see the module docstring for the rules."""

    source = SOURCE

    def __init__(
        self,
        instance: str,
        process_models: Mapping[int | str, str] | None = None,
        clock: Callable[[], float] = time.time,
        nvml: Any | None = None,
        cmdline: Callable[[int], str | None] = _read_cmdline,
    ) -> None:
        self.instance = instance
        self.process_models: dict[int | str, str] = dict(process_models or {})
        self._clock = clock
        self._nvml = nvml
        self._cmdline = cmdline
        self._state = "new"  # new -> ready | down; ready -> stopped
        self._handles: list[Any] = []
        self._uuids: list[str | None] = []
        self._skip: set[tuple[int, str]] = set()  # (gpu index, field) the device cannot report
        self._said: set[tuple[Any, ...]] = set()  # log lines already written once
        self._pid_models: dict[int, str | None] = {}
        self._unavailable: tuple[type[BaseException], ...] = ()
        self._nvml_error: tuple[type[BaseException], ...] = ()
        self._mismatch: tuple[type[BaseException], ...] = ()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True once NVML is initialised with at least one GPU (``collect`` starts it if needed)."""
        if self._state == "new":
            self.start()
        return self._state == "ready"

    @property
    def gpu_count(self) -> int:
        return len(self._handles) if self._state == "ready" else 0

    def start(self) -> bool:
        """Initialise NVML once; on any failure log one line and stand down. Returns ``available``."""
        if self._state != "new":
            return self._state == "ready"
        nv = self._nvml
        if nv is None:
            try:
                import pynvml as nv  # type: ignore[import-not-found, no-redef]
            except ImportError:
                return self._stand_down("nvidia-ml-py is not installed; GPU telemetry (NVML) is off "
                                        "(pip install nvidia-ml-py)", logging.INFO)
            self._nvml = nv
        base = getattr(nv, "NVMLError", Exception)
        self._nvml_error = (base,)
        self._unavailable = tuple(c for name in _UNAVAILABLE if isinstance(c := getattr(nv, name, None), type))
        mismatch = getattr(nv, "NVMLLibraryMismatchError", None)
        self._mismatch = (mismatch,) if isinstance(mismatch, type) else ()
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError above all; anything else the binding raises stands down too
            kind = type(exc).__name__
            if kind == "NVMLError_LibraryNotFound":
                return self._stand_down("NVML library not found (no NVIDIA driver on this host); "
                                        "GPU telemetry (NVML) is off", logging.INFO, kind)
            if kind == "NVMLError_DriverNotLoaded":
                return self._stand_down("NVIDIA driver not loaded; GPU telemetry (NVML) is off",
                                        logging.WARNING, kind)
            return self._stand_down(f"NVML init failed ({exc}); GPU telemetry (NVML) is off",
                                    logging.WARNING, kind)
        try:
            count = int(nv.nvmlDeviceGetCount())
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self._quiet_shutdown()
            return self._stand_down(f"NVML could not list GPUs ({exc}); GPU telemetry (NVML) is off",
                                    logging.WARNING, type(exc).__name__)
        if not handles:
            self._quiet_shutdown()
            return self._stand_down("NVML found no GPU on this host; GPU telemetry (NVML) is off",
                                    logging.INFO, "no_devices")
        self._handles = handles
        self._uuids = [self._uuid(nv, h) for h in handles]
        self._state = "ready"
        log.info("NVML collector started", extra={"gpus": len(handles), "instance": self.instance})
        return True

    def shutdown(self) -> None:
        """Release NVML (``nvmlShutdown``) once; ``collect`` returns ``[]`` afterwards."""
        if self._state == "ready":
            self._quiet_shutdown()
        if self._state in ("new", "ready"):
            self._state = "stopped"
        self._handles = []

    def _stand_down(self, message: str, level: int, reason: str = "import") -> bool:
        self._state = "down"
        log.log(level, message, extra={"instance": self.instance, "reason": reason})
        return False

    def _quiet_shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:  # nothing to do about it; say so once
            self._once(("shutdown",), logging.WARNING, f"nvmlShutdown failed: {exc}")

    # -- reading --------------------------------------------------------------------------------

    def collect(self) -> list[TelemetrySample]:
        """One reading of every GPU; ``[]`` when NVML is unavailable or shut down. Never raises."""
        if not self.available:
            return []
        ts = datetime.fromtimestamp(self._clock(), timezone.utc).isoformat()
        out: list[TelemetrySample] = []
        seen_pids: set[int] = set()
        for index, handle in enumerate(self._handles):
            try:
                self._read_gpu(index, handle, ts, out, seen_pids)
            except Exception as exc:  # a collector must not take its caller down
                self._once(("gpu", index, type(exc).__name__), logging.WARNING,
                           f"reading GPU {index} failed: {type(exc).__name__}: {exc}")
        for pid in list(self._pid_models):
            if pid not in seen_pids:
                del self._pid_models[pid]
        return out

    def _read_gpu(self, index: int, handle: Any, ts: str, out: list[TelemetrySample],
                  seen_pids: set[int]) -> None:
        nv = self._nvml
        gpu = str(index)

        def add(metric: str, value: float, model_id: str | None = None, label: str = gpu) -> None:
            out.append(TelemetrySample(ts=ts, source=SOURCE, instance=self.instance, metric=metric,
                                       value=float(value), gpu=label, model_id=model_id))

        uuid = self._uuids[index]
        if uuid is not None:
            add("gpu_index", index, label=uuid)
        util = self._field(index, "gpu_utilization", nv.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            add("gpu_utilization", util.gpu / 100.0)
        mem = self._memory(index, handle)
        if mem is not None:
            add("gpu_memory_used_bytes", mem.used)
            add("gpu_memory_total_bytes", mem.total)
            if mem.total:
                add("gpu_memory_utilization", mem.used / mem.total)
        temp = self._field(index, "gpu_temperature_c", nv.nvmlDeviceGetTemperature, handle,
                           nv.NVML_TEMPERATURE_GPU)
        if temp is not None:
            add("gpu_temperature_c", temp)
        power_mw = self._field(index, "gpu_power_w", nv.nvmlDeviceGetPowerUsage, handle)
        if power_mw is not None:
            add("gpu_power_w", power_mw / 1000.0)
        clock = self._field(index, "gpu_sm_clock_mhz", nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM)
        if clock is not None:
            add("gpu_sm_clock_mhz", clock)
        if self.process_models:
            for model_id, used in self._process_memory(index, handle, seen_pids).items():
                add("process_gpu_memory_bytes", used, model_id=model_id)

    def _memory(self, index: int, handle: Any) -> Any:
        """Framebuffer memory, ``used`` as nvidia-smi and DCGM (``FB_USED``) count it: NVML's v2 call,
        whose ``used`` leaves out the driver's reserve. The v1 call counts that reserve as used (on an
        H100 with driver 580: 13,549 MiB where nvidia-smi showed 13,069), so an idle GPU read ~0.6%
        full and NVML and DCGM hosts disagreed. v1 where the driver or binding lacks v2."""
        nv = self._nvml
        version = getattr(nv, "nvmlMemory_v2", None)
        refused = None
        if version is not None and (index, "gpu_memory_v2") not in self._skip:
            try:
                return nv.nvmlDeviceGetMemoryInfo(handle, version=version)
            except self._nvml_error as exc:  # FunctionNotFound, NotSupported, a version the driver refuses
                refused = exc
        mem = self._field(index, "gpu_memory", nv.nvmlDeviceGetMemoryInfo, handle)
        if refused is not None and mem is not None:  # v1 answers where v2 does not: the driver lacks v2
            self._skip.add((index, "gpu_memory_v2"))
            log.debug("NVML memory info v2 refused; v1 used", extra={"gpu": index, "error": type(refused).__name__})
        return mem

    def _process_memory(self, index: int, handle: Any, seen_pids: set[int]) -> dict[str | None, int]:
        """Bytes of GPU memory per model on this GPU (None: processes no mapping claims)."""
        nv = self._nvml
        procs = self._field(index, "process_gpu_memory_bytes", self._running_processes, nv, handle)
        totals: dict[str | None, int] = {}
        for proc in procs or ():
            used = getattr(proc, "usedGpuMemory", None)
            if used is None:  # not reported (WDDM, or no permission for this process)
                continue
            pid = int(proc.pid)
            seen_pids.add(pid)
            model_id = self._model_for(pid)
            totals[model_id] = totals.get(model_id, 0) + int(used)
        return totals

    def _running_processes(self, nv: Any, handle: Any) -> list[Any]:
        """Compute processes; older drivers lack the v3 call the unversioned name maps to, so fall back."""
        try:
            return list(nv.nvmlDeviceGetComputeRunningProcesses(handle))
        except self._mismatch:
            return list(nv.nvmlDeviceGetComputeRunningProcesses_v2(handle))

    def _model_for(self, pid: int) -> str | None:
        if pid in self._pid_models:
            return self._pid_models[pid]
        model_id = self.process_models.get(pid)
        if model_id is None and any(isinstance(k, str) for k in self.process_models):
            line = self._cmdline(pid) or self._process_name(pid)
            if line:
                model_id = next((m for k, m in self.process_models.items()
                                 if isinstance(k, str) and k in line), None)
        self._pid_models[pid] = model_id
        return model_id

    def _process_name(self, pid: int) -> str | None:
        try:
            return _text(self._nvml.nvmlSystemGetProcessName(pid))
        except self._nvml_error:
            return None

    def _field(self, index: int, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None when the device cannot report it (skipped for good) or failed now."""
        if (index, name) in self._skip:
            return None
        try:
            return fn(*args)
        except self._unavailable as exc:
            self._skip.add((index, name))
            log.debug("GPU field not available; skipped", extra={"gpu": index, "field": name,
                                                                 "error": type(exc).__name__})
        except self._nvml_error as exc:
            self._once(("field", index, type(exc).__name__), logging.WARNING,
                       f"NVML error on GPU {index} ({exc}); its readings are skipped while it lasts")
        return None

    def _uuid(self, nv: Any, handle: Any) -> str | None:
        """The GPU's UUID, or None (no ``gpu_index`` sample; its readings go on)."""
        try:
            return _text(nv.nvmlDeviceGetUUID(handle))
        except Exception as exc:  # NVMLError, or the binding's decode of a bad string
            self._once(("uuid", type(exc).__name__), logging.WARNING, f"NVML could not read a GPU's UUID ({exc!r})")
            return None

    def _once(self, key: tuple[Any, ...], level: int, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, extra={"instance": self.instance})
