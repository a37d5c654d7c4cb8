"""NvmlCollector at the library boundary: a fake ``pynvml`` module raising the real pynvml exceptions.

The fake answers like nvidia-ml-py does (structs with ``.gpu``, ``.used``/``.total``, milliwatts,
process objects with ``pid``/``usedGpuMemory``), so the collector's unit conversions, skips and
stand-down are exercised exactly as on a GPU host.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from infersight.telemetry.nvml import METRICS, NvmlCollector

try:
    import pynvml as real_pynvml
except ImportError:  # the tests still run, with stand-in classes named like pynvml's
    real_pynvml = None

LOGGER = "infersight.telemetry.nvml"
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def _errors() -> SimpleNamespace:
    if real_pynvml is not None:
        return SimpleNamespace(
            NVMLError=real_pynvml.NVMLError,
            NotSupported=real_pynvml.NVMLError_NotSupported,
            LibraryNotFound=real_pynvml.NVMLError_LibraryNotFound,
            DriverNotLoaded=real_pynvml.NVMLError_DriverNotLoaded,
            GpuIsLost=real_pynvml.NVMLError_GpuIsLost,
            NoPermission=real_pynvml.NVMLError_NoPermission,
            Mismatch=real_pynvml.NVMLLibraryMismatchError,
        )
    base = type("NVMLError", (Exception,), {})
    named = {n: type(f"NVMLError_{n}", (base,), {})
             for n in ("NotSupported", "LibraryNotFound", "DriverNotLoaded", "GpuIsLost", "NoPermission")}
    return SimpleNamespace(NVMLError=base, Mismatch=type("NVMLLibraryMismatchError", (Exception,), {}), **named)


E = _errors()


class FakeNvml:
    """The subset of pynvml the collector calls, with per-GPU values and scripted failures."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    nvmlMemory_v2 = 0x02000028
    NVMLError = E.NVMLError
    NVMLError_NotSupported = E.NotSupported
    NVMLError_LibraryNotFound = E.LibraryNotFound
    NVMLError_DriverNotLoaded = E.DriverNotLoaded
    NVMLError_NoPermission = E.NoPermission
    NVMLError_GpuIsLost = E.GpuIsLost
    NVMLLibraryMismatchError = E.Mismatch

    def __init__(self, gpus: list[dict[str, Any]], init_error: BaseException | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.calls: list[tuple[str, Any]] = []
        self.names: dict[int, str] = {}

    def _gpu(self, name: str, handle: int) -> dict[str, Any]:
        self.calls.append((name, handle))
        gpu = self.gpus[handle]
        failure = gpu.get("fail", {}).get(name)
        if failure is not None:
            raise failure
        return gpu

    def nvmlInit(self) -> None:
        self.calls.append(("nvmlInit", None))
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls.append(("nvmlShutdown", None))

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._gpu("uuid", h)["uuid"]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu("util", h)["util"], memory=3)

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> SimpleNamespace:
        """v1 counts the driver's reserve (``reserved``, default 0) as used; v2 reports it apart."""
        if version is None:
            g = self._gpu("mem", h)
            used = g["used"] + g.get("reserved", 0)
            return SimpleNamespace(total=g["total"], used=used, free=g["total"] - used)
        assert version == self.nvmlMemory_v2
        g = self._gpu("mem_v2", h)
        reserved = g.get("reserved", 0)
        return SimpleNamespace(version=version, total=g["total"], reserved=reserved, used=g["used"],
                               free=g["total"] - reserved - g["used"])

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._gpu("temp", h)["temp"]

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return self._gpu("power", h)["power_mw"]

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return self._gpu("clock", h)["sm_mhz"]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for p, m in self._gpu("procs", h).get("procs", [])]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: int) -> list[SimpleNamespace]:
        self.calls.append(("procs_v2", h))
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.gpus[h].get("procs", [])]

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        if pid not in self.names:
            raise E.NVMLError(6) if real_pynvml is not None else E.NVMLError()
        return self.names[pid].encode()


def h100(i: int, **extra: Any) -> dict[str, Any]:
    gpu = {"uuid": f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd", "util": 87 - 40 * i,
           "total": 85_520_809_984, "used": 70_000_000_000 - i * 10_000_000_000,
           "temp": 61 + i, "power_mw": 512_345 - i * 100_000, "sm_mhz": 1980 - i * 200}
    gpu.update(extra)
    return gpu


def by_key(samples: list[Any]) -> dict[tuple[str | None, str, str | None], float]:
    out: dict[tuple[str | None, str, str | None], float] = {}
    for s in samples:
        key = (s.gpu, s.metric, s.model_id)
        assert key not in out, f"duplicate sample {key}"
        out[key] = s.value
    return out


def test_two_gpus_are_read_with_units_converted() -> None:
    nv = FakeNvml([h100(0), h100(1)])
    c = NvmlCollector("node-a", clock=lambda: T0, nvml=nv)
    samples = c.collect()
    assert c.available and c.gpu_count == 2
    assert {s.ts for s in samples} == {"2024-05-01T12:00:00+00:00"}
    assert {(s.source, s.instance) for s in samples} == {("nvml", "node-a")}
    got = by_key(samples)
    assert got[("0", "gpu_utilization", None)] == pytest.approx(0.87)
    assert got[("1", "gpu_utilization", None)] == pytest.approx(0.47)
    assert got[("0", "gpu_memory_used_bytes", None)] == 70_000_000_000
    assert got[("0", "gpu_memory_total_bytes", None)] == 85_520_809_984
    assert got[("0", "gpu_memory_utilization", None)] == pytest.approx(70_000_000_000 / 85_520_809_984)
    assert got[("1", "gpu_memory_utilization", None)] == pytest.approx(60_000_000_000 / 85_520_809_984)
    assert got[("0", "gpu_temperature_c", None)] == 61
    assert got[("0", "gpu_power_w", None)] == pytest.approx(512.345)  # NVML reports milliwatts
    assert got[("1", "gpu_sm_clock_mhz", None)] == 1780
    # the UUID travels on one gpu_index sample per GPU: gpu = UUID, value = index
    assert got[("GPU-00000001-aaaa-bbbb-cccc-dddddddddddd", "gpu_index", None)] == 1
    assert len(samples) == 2 * 8  # 7 readings + gpu_index per GPU; no process query without a mapping
    assert {s.metric for s in samples} | {"process_gpu_memory_bytes"} == set(METRICS)
    assert not [name for name, _ in nv.calls if name == "procs"]


def test_not_supported_field_is_skipped_and_not_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml([h100(0), h100(1, fail={"power": E.NotSupported(), "clock": E.NotSupported()})])
    c = NvmlCollector("node-a", clock=lambda: T0, nvml=nv)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = by_key(c.collect())
        second = by_key(c.collect())
    assert ("0", "gpu_power_w", None) in first and ("1", "gpu_power_w", None) not in first
    assert ("1", "gpu_sm_clock_mhz", None) not in first
    assert first[("1", "gpu_utilization", None)] == pytest.approx(0.47)  # the rest of GPU 1 is read
    assert first.keys() == second.keys()
    assert nv.calls.count(("power", 1)) == 1  # NotSupported is permanent: asked once
    assert nv.calls.count(("power", 0)) == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_transient_error_skips_that_gpu_logs_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    lost = {k: E.GpuIsLost() for k in ("util", "mem", "mem_v2", "temp", "power", "clock")}
    nv = FakeNvml([h100(0, fail=lost), h100(1)])
    c = NvmlCollector("node-a", clock=lambda: T0, nvml=nv)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runs = [by_key(c.collect()) for _ in range(3)]
    for got in runs:
        assert [k for k in got if k[0] == "0"] == []
        assert got[("1", "gpu_utilization", None)] == pytest.approx(0.47)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPU 0" in warnings[0].getMessage()
    assert nv.calls.count(("util", 0)) == 3  # not permanent: asked again every interval


def test_memory_used_leaves_out_the_driver_reserve_as_nvidia_smi_does() -> None:
    # Read on an H100 (driver 580.159.04): v1 "used" 14,206,959,616 B, nvidia-smi 13,069 MiB; the
    # difference is the driver's reserve, which v2 reports apart and DCGM's FB_USED leaves out too.
    reserved = 14_206_959_616 - 13_069 * 2**20
    nv = FakeNvml([h100(0, used=13_069 * 2**20, total=85_520_809_984, reserved=reserved)])
    got = by_key(NvmlCollector("node-a", clock=lambda: T0, nvml=nv).collect())
    assert got[("0", "gpu_memory_used_bytes", None)] == 13_069 * 2**20
    assert got[("0", "gpu_memory_total_bytes", None)] == 85_520_809_984
    assert got[("0", "gpu_memory_utilization", None)] == pytest.approx(13_069 * 2**20 / 85_520_809_984)
    assert ("mem", 0) not in nv.calls  # v1 is not asked when v2 answers


def _refusal(name: str) -> BaseException:
    cls = getattr(real_pynvml, name, None) if real_pynvml is not None else None
    return cls() if cls is not None else E.NotSupported()


@pytest.mark.parametrize("refusal", ["NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch"])
def test_a_driver_without_memory_info_v2_is_read_with_v1_and_not_asked_v2_again(
        refusal: str, caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml([h100(0, reserved=500 * 2**20, fail={"mem_v2": _refusal(refusal)}), h100(1, reserved=500 * 2**20)])
    c = NvmlCollector("node-a", clock=lambda: T0, nvml=nv)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runs = [by_key(c.collect()) for _ in range(3)]
    for got in runs:
        assert got[("0", "gpu_memory_used_bytes", None)] == 70_000_000_000 + 500 * 2**20  # v1: reserve counted
        assert got[("1", "gpu_memory_used_bytes", None)] == 60_000_000_000  # v2 on the GPU that has it
    assert nv.calls.count(("mem_v2", 0)) == 1 and nv.calls.count(("mem", 0)) == 3
    assert nv.calls.count(("mem_v2", 1)) == 3 and ("mem", 1) not in nv.calls
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_binding_without_memory_info_v2_is_read_with_v1() -> None:
    class OldBinding(FakeNvml):
        nvmlMemory_v2 = None  # nvidia-ml-py before the v2 struct: no constant, no version argument

    nv = OldBinding([h100(0, reserved=500 * 2**20)])
    got = by_key(NvmlCollector("node-a", clock=lambda: T0, nvml=nv).collect())
    assert got[("0", "gpu_memory_used_bytes", None)] == 70_000_000_000 + 500 * 2**20
    assert ("mem_v2", 0) not in nv.calls


def test_a_lost_gpu_is_not_read_with_v1_for_good_after_v2_failed() -> None:
    nv = FakeNvml([h100(0, fail={"mem_v2": E.GpuIsLost(), "mem": E.GpuIsLost()})])
    c = NvmlCollector("node-a", clock=lambda: T0, nvml=nv)
    assert ("0", "gpu_memory_used_bytes", None) not in by_key(c.collect())
    nv.gpus[0]["fail"] = {}  # the GPU is back: v2 again (a transient error does not demote it)
    assert by_key(c.collect())[("0", "gpu_memory_used_bytes", None)] == 70_000_000_000
    assert nv.calls.count(("mem_v2", 0)) == 2


def test_process_memory_is_attributed_by_pid_and_command_line() -> None:
    procs0 = [(101, 30_000_000_000), (102, 2_000_000_000), (103, 1_000_000_000), (104, None)]
    procs1 = [(201, 40_000_000_000), (202, 5_000_000_000)]
    nv = FakeNvml([h100(0, procs=procs0), h100(1, procs=procs1)])
    nv.names[202] = "/usr/bin/python3"  # /proc unreadable for 202: NVML's process name is tried
    cmdlines = {
        101: "python -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.1-8B-Instruct",
        102: "python -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.1-8B-Instruct",
        103: "python train.py",
        201: "text-generation-launcher --model-id mistralai/Mistral-7B-Instruct-v0.3",
    }
    reads: list[int] = []

    def cmdline(pid: int) -> str | None:
        reads.append(pid)
        return cmdlines.get(pid)

    mapping: dict[int | str, str] = {
        201: "mistral-7b",  # by pid, checked before any substring
        "Llama-3.1-8B": "llama-3.1-8b",
        "python3": "other-python",
    }
    c = NvmlCollector("node-a", process_models=mapping, clock=lambda: T0, nvml=nv, cmdline=cmdline)
    got = by_key(c.collect())
    assert got[("0", "process_gpu_memory_bytes", "llama-3.1-8b")] == 32_000_000_000  # 101 + 102 summed
    assert got[("0", "process_gpu_memory_bytes", None)] == 1_000_000_000  # 103 is no model's
    assert got[("1", "process_gpu_memory_bytes", "mistral-7b")] == 40_000_000_000
    assert got[("1", "process_gpu_memory_bytes", "other-python")] == 5_000_000_000
    assert ("1", "process_gpu_memory_bytes", None) not in got
    assert 104 not in reads and 201 not in reads  # no memory figure: ignored; pid match: no read
    assert sorted(reads) == [101, 102, 103, 202]
    c.collect()
    assert sorted(reads) == [101, 102, 103, 202]  # a pid's model is cached while it lives
    nv.gpus[0]["procs"] = [(105, 7)]
    cmdlines[105] = "vllm serve meta-llama/Llama-3.1-8B-Instruct"
    got = by_key(c.collect())
    assert got[("0", "process_gpu_memory_bytes", "llama-3.1-8b")] == 7
    assert 101 not in c._pid_models  # departed pids are forgotten (pid reuse)


def test_old_driver_falls_back_to_v2_process_query() -> None:
    nv = FakeNvml([h100(0, procs=[(7, 1024)], fail={"procs": E.Mismatch("unversioned")})])
    c = NvmlCollector("n", process_models={7: "m"}, clock=lambda: T0, nvml=nv)
    assert by_key(c.collect())[("0", "process_gpu_memory_bytes", "m")] == 1024
    assert ("procs_v2", 0) in nv.calls


@pytest.mark.parametrize(("error", "level"), [
    (E.LibraryNotFound(), logging.INFO),
    (E.DriverNotLoaded(), logging.WARNING),
    (E.NoPermission(), logging.WARNING),
])
def test_init_failure_logs_one_line_and_stands_down(error: BaseException, level: int,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml([h100(0)], init_error=error)
    c = NvmlCollector("laptop", clock=lambda: T0, nvml=nv)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert [c.collect() for _ in range(5)] == [[]] * 5
        assert c.available is False
        c.shutdown()
    assert [r.levelno for r in caplog.records] == [level]
    assert "GPU telemetry (NVML) is off" in caplog.records[0].getMessage()
    assert nv.calls == [("nvmlInit", None)]  # tried once; never shut down what never started


def test_no_devices_stands_down_and_releases_nvml(caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml([])
    c = NvmlCollector("cpu-box", nvml=nv)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert c.collect() == [] and c.collect() == []
    assert c.available is False
    assert [r.getMessage() for r in caplog.records] == ["NVML found no GPU on this host; GPU telemetry (NVML) is off"]
    assert nv.calls == [("nvmlInit", None), ("nvmlShutdown", None)]


def test_missing_package_stands_down_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` raise ImportError
    c = NvmlCollector("laptop")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert c.collect() == [] and c.collect() == []
    assert len(caplog.records) == 1 and "nvidia-ml-py is not installed" in caplog.records[0].getMessage()


def test_shutdown_releases_nvml_once_and_collect_returns_nothing_after() -> None:
    nv = FakeNvml([h100(0)])
    c = NvmlCollector("node-a", clock=lambda: T0, nvml=nv)
    assert c.collect()
    c.shutdown()
    c.shutdown()
    assert nv.calls.count(("nvmlShutdown", None)) == 1
    assert c.available is False and c.collect() == []
    assert nv.calls.count(("nvmlInit", None)) == 1


def test_real_pynvml_on_a_host_without_driver_stands_down(caplog: pytest.LogCaptureFixture) -> None:
    if real_pynvml is None:
        pytest.skip("nvidia-ml-py is not installed")
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        pytest.skip("this host has the NVIDIA driver; the GPU path is covered by benchmarks/nvml_probe.py")
    except OSError:
        pass
    c = NvmlCollector("ci")  # imports the real pynvml; nvmlInit raises NVMLError_LibraryNotFound
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert c.collect() == [] and c.collect() == []
        c.shutdown()
    assert c.available is False
    assert len(caplog.records) == 1
    assert caplog.records[0].reason == "NVMLError_LibraryNotFound"
