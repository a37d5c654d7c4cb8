"""Run the NVML collector on this host and print what it reads, as JSON (one object on stdout).

Why: the unit tests fake pynvml; this is the check on a real GPU host that the collector reads
every GPU, converts units, attributes process memory, and times one ``collect()``.

    python benchmarks/nvml_probe.py                          # one reading
    python benchmarks/nvml_probe.py --repeat 50              # plus collect() timing over 50 reads
    python benchmarks/nvml_probe.py --map vllm=my-model --map 12345=other-model
    python benchmarks/nvml_probe.py --smi                    # plus nvidia-smi's reading, side by side

Needs only nvidia-ml-py and this checkout (``src/`` is put on the path when infersight is not
installed). The collector's own log lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    from infersight.telemetry.nvml import NvmlCollector
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from infersight.telemetry.nvml import NvmlCollector


def _mapping(items: list[str]) -> dict[int | str, str]:
    out: dict[int | str, str] = {}
    for item in items:
        key, sep, model = item.partition("=")
        if not sep or not key or not model:
            raise SystemExit(f"--map wants KEY=MODEL (pid or command-line substring), got {item!r}")
        out[int(key) if key.isdigit() else key] = model
    return out


# nvidia-smi field -> (collector metric, factor from nvidia-smi's unit to the collector's)
SMI_FIELDS: dict[str, tuple[str, float]] = {
    "utilization.gpu": ("gpu_utilization", 0.01),
    "memory.used": ("gpu_memory_used_bytes", 2**20),
    "memory.total": ("gpu_memory_total_bytes", 2**20),
    "temperature.gpu": ("gpu_temperature_c", 1.0),
    "power.draw": ("gpu_power_w", 1.0),
    "clocks.sm": ("gpu_sm_clock_mhz", 1.0),
}


def smi_reading() -> dict[str, dict[str, float | None]]:
    """Per GPU index: nvidia-smi's reading of the collector's fields, in the collector's units."""
    names = list(SMI_FIELDS)
    out = subprocess.run(["nvidia-smi", f"--query-gpu=index,{','.join(names)}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    gpus: dict[str, dict[str, float | None]] = {}
    for line in out.strip().splitlines():
        index, *values = [v.strip() for v in line.split(",")]
        gpus[index] = {}
        for name, value in zip(names, values):
            metric, factor = SMI_FIELDS[name]
            try:
                gpus[index][metric] = float(value) * factor
            except ValueError:  # "[N/A]", "[Not Supported]"
                gpus[index][metric] = None
    return gpus


def side_by_side(samples: list[dict[str, object]], smi: dict[str, dict[str, float | None]]) -> list[dict[str, object]]:
    """One row per GPU and field: the collector's value, nvidia-smi's, and collector / nvidia-smi."""
    ours = {(s["gpu"], s["metric"]): s["value"] for s in samples if s["model_id"] is None}
    rows = []
    for index, fields in smi.items():
        for metric, theirs in fields.items():
            mine = ours.get((index, metric))
            ratio = round(mine / theirs, 4) if isinstance(mine, float) and theirs else None
            rows.append({"gpu": index, "metric": metric, "collector": mine, "nvidia_smi": theirs, "ratio": ratio})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instance", default=socket.gethostname())
    p.add_argument("--map", action="append", default=[], metavar="KEY=MODEL",
                   help="process -> model: a pid, or a substring of the command line (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="collect() this many times and report timings")
    p.add_argument("--smi", action="store_true", help="also read nvidia-smi right after, and compare field by field")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    collector = NvmlCollector(args.instance, process_models=_mapping(args.map))
    timings_ms: list[float] = []
    samples = []
    try:
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            samples = collector.collect()
            timings_ms.append((time.perf_counter() - t0) * 1000.0)
        report = {
            "available": collector.available,
            "gpus": collector.gpu_count,
            "collect_ms": {
                "first": round(timings_ms[0], 3),
                "median_after_first": round(statistics.median(timings_ms[1:]), 3) if len(timings_ms) > 1 else None,
                "max_after_first": round(max(timings_ms[1:]), 3) if len(timings_ms) > 1 else None,
                "runs": len(timings_ms),
            },
            "samples": [s.to_dict() for s in samples],
        }
        if args.smi:  # read right after the last collect(): utilization, power and clocks move between the two
            try:
                report["nvidia_smi"] = side_by_side(report["samples"], smi_reading())
            except (OSError, subprocess.SubprocessError) as exc:
                report["nvidia_smi"] = f"not read: {exc}"
    finally:
        collector.shutdown()
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
