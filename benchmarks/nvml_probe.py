"""Run the NVML collector on this host and print what it reads, as JSON (one object on stdout).

Why: the unit tests fake pynvml; this is the check on a real GPU host that the collector reads
every GPU, converts units, attributes process memory, and times one ``collect()``.

    python benchmarks/nvml_probe.py                          # one reading
    python benchmarks/nvml_probe.py --repeat 50              # plus collect() timing over 50 reads
    python benchmarks/nvml_probe.py --map vllm=my-model --map 12345=other-model

Needs only nvidia-ml-py and this checkout (``src/`` is put on the path when infersight is not
installed). The collector's own log lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--instance", default=socket.gethostname())
    p.add_argument("--map", action="append", default=[], metavar="KEY=MODEL",
                   help="process -> model: a pid, or a substring of the command line (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="collect() this many times and report timings")
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
    finally:
        collector.shutdown()
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
