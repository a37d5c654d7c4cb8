"""Running one load-generator process against one target and measuring the servers meanwhile."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

from procs import RssSampler, Server, cpu_delta, cpu_seconds, raise_fd_limit

LOADGEN = Path(__file__).with_name("loadgen.py")


@dataclass
class Target:
    name: str
    url: str  # chat completions URL
    key: str
    server: Server | None  # whose CPU and RSS we measure (None for direct: the sim itself)


@dataclass
class LoadSpec:
    concurrency: int
    duration_s: float
    warmup_s: float = 1.0
    min_requests: int = 0
    max_window_s: float = 30.0
    drain_s: float = 15.0
    model: str = "sim-bench"
    max_tokens: int = 100


def _host_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def _wait_for(proc: subprocess.Popen[str], marker: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == marker:
            return
    raise RuntimeError(f"load generator exited before {marker} (rc={proc.wait()})")


def run_segment(target: Target, spec: LoadSpec, sim: Server, tmp: Path) -> dict[str, Any]:
    """One closed-loop run; client stats plus CPU and RSS of the servers inside the window."""
    out = Path(tempfile.mkstemp(suffix=".json", dir=tmp)[1])
    cmd = [
        sys.executable, str(LOADGEN), "--url", target.url, "--key", target.key, "--model", spec.model,
        "--concurrency", str(spec.concurrency), "--warmup", str(spec.warmup_s),
        "--duration", str(spec.duration_s), "--min-requests", str(spec.min_requests),
        "--max-window", str(spec.max_window_s), "--drain", str(spec.drain_s),
        "--max-tokens", str(spec.max_tokens), "--out", str(out),
    ]
    return measure_window(cmd, out, target.server or sim, sim, spec.drain_s)


def measure_window(cmd: list[str], out: Path, measured: Server, sim: Server, drain_s: float,
                   extra: list[Server] | None = None) -> dict[str, Any]:
    """Start a load generator (``cmd`` writes its JSON to ``out``), and between its MEASURE_START and
    MEASURE_END lines take the CPU of the measured server's tree, the simulator, the generator, the
    host and ``extra`` servers (``other_cpu_s``), and the measured server's RSS; the generator's
    figures plus those."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit)
    server_tree, sim_tree = measured.tree(), sim.tree()
    other_tree = [p for s in (extra or []) for p in s.tree()]
    client = [psutil.Process(proc.pid)]
    try:
        _wait_for(proc, "MEASURE_START")
        c0 = (cpu_seconds(server_tree), cpu_seconds(sim_tree), cpu_seconds(client), _host_busy(),
              cpu_seconds(other_tree))
        with RssSampler(measured, interval_s=0.25) as rss:
            _wait_for(proc, "MEASURE_END")
            c1 = (cpu_seconds(server_tree), cpu_seconds(sim_tree), cpu_seconds(client), _host_busy(),
                  cpu_seconds(other_tree))
        if proc.wait(timeout=drain_s + 30) != 0:
            raise RuntimeError(f"load generator failed with {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data: dict[str, Any] = orjson.loads(out.read_bytes())
    out.unlink()
    root = measured.pid
    data.update(
        server_cpu_s=cpu_delta(c0[0], c1[0]),
        worker_cpu_s={("main" if pid == root else f"worker-{pid}"): c1[0][pid] - t
                      for pid, t in c0[0].items() if pid in c1[0]},
        sim_cpu_s=cpu_delta(c0[1], c1[1]),
        loadgen_cpu_s=cpu_delta(c0[2], c1[2]),
        host_busy_s=c1[3] - c0[3],
        other_cpu_s=cpu_delta(c0[4], c1[4]),
        host_cores=psutil.cpu_count() or 1,
        rss_max_mb=rss.max_mb,
    )
    return data
