"""One open-loop load segment (``eval_loadgen.py``) plus the servers' CPU and RSS in its window,
and the Prometheus scraping the evaluation benchmark reads its pipeline figures from.

``run_open_segment`` returns the same keys as ``segment.run_segment`` (so ``report.Cell`` pools
it) plus the open-loop figures: offered rate, requests sent in the window, how late the sends
were, the most requests in flight.
"""

from __future__ import annotations

import math
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import Server
from report import percentile
from segment import Target, measure_window

LOADGEN = Path(__file__).with_name("eval_loadgen.py")


@dataclass
class OpenSpec:
    rate: float
    duration_s: float
    warmup_s: float = 2.0
    drain_s: float = 20.0
    arrivals: str = "uniform"
    max_tokens: int = 100
    seed: int = 1


def run_open_segment(target: Target, spec: OpenSpec, sim: Server, tmp: Path,
                     extra: list[Server] | None = None) -> dict[str, Any]:
    """One open-loop run; client stats plus CPU and RSS of the servers inside the window.

    ``extra``: other servers whose CPU is summed as ``other_cpu_s`` (e.g. the idle gateway)."""
    out = Path(tempfile.mkstemp(suffix=".json", dir=tmp)[1])
    cmd = [
        sys.executable, str(LOADGEN), "--url", target.url, "--key", target.key, "--rate", str(spec.rate),
        "--arrivals", spec.arrivals, "--seed", str(spec.seed), "--warmup", str(spec.warmup_s),
        "--duration", str(spec.duration_s), "--drain", str(spec.drain_s), "--max-tokens", str(spec.max_tokens),
        "--out", str(out),
    ]
    return measure_window(cmd, out, target.server or sim, sim, spec.drain_s, extra)


def segment_row(seg: dict[str, Any], direct: bool) -> dict[str, Any]:
    """The per-segment figures kept in the JSON (client latencies summarised). ``rest_cores``: what
    the rest of the host (other people's work) used: host busy minus our own processes."""
    n, w = len(seg["total_s"]), seg["window_s"]
    late = seg.get("send_late_s") or []
    ours = (0.0 if direct else seg["server_cpu_s"]) + seg["sim_cpu_s"] + seg["loadgen_cpu_s"] + seg["other_cpu_s"]
    return {
        "offered_rps": seg["rate"], "sent_in_window": seg["sent_in_window"], "requests": n,
        "completed_rps": n / w, "errors": sum(seg["errors"].values()), "errors_by_kind": seg["errors"],
        "ttft_p50_ms": percentile(seg["ttft_s"], 50) * 1e3, "ttft_p99_ms": percentile(seg["ttft_s"], 99) * 1e3,
        "total_p50_ms": percentile(seg["total_s"], 50) * 1e3, "total_p99_ms": percentile(seg["total_s"], 99) * 1e3,
        "send_late_p99_ms": percentile(late, 99) * 1e3, "max_in_flight": seg["max_in_flight"],
        "in_flight_at_end": seg["in_flight_at_end"],
        "server_cores": seg["server_cpu_s"] / w, "sim_cores": seg["sim_cpu_s"] / w,
        "loadgen_cores": seg["loadgen_cpu_s"] / w, "other_cores": seg["other_cpu_s"] / w,
        "server_cpu_ms_per_req": seg["server_cpu_s"] / max(1, n) * 1e3,
        "host_busy_pct": 100 * seg["host_busy_s"] / (w * seg["host_cores"]),
        "rest_cores": (seg["host_busy_s"] - ours) / w,
        "rss_max_mb": seg["rss_max_mb"],
    }


# -- Prometheus ---------------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of a gateway's /metrics: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``match`` (a value ending in ``*``
    matches by prefix)."""
    acc = 0.0
    for (n, labels), v in samples.items():
        if n != name:
            continue
        d = dict(labels)
        if all((d.get(k, "").startswith(m[:-1]) if m.endswith("*") else d.get(k) == m) for k, m in match.items()):
            acc += v
    return acc


def delta(after: Samples, before: Samples) -> Samples:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histogram(samples: Samples, name: str) -> dict[str, Any]:
    """Buckets of a label-less histogram: count, sum, and the bucket bounds of p50, p99 and the max."""
    buckets = sorted(((float(dict(labels)["le"]), v) for (n, labels), v in samples.items()
                      if n == f"{name}_bucket"), key=lambda b: b[0])
    count = samples.get((f"{name}_count", ()), 0.0)
    ssum = samples.get((f"{name}_sum", ()), 0.0)

    def bound(q: float) -> float | None:
        if count <= 0:
            return None
        for le, c in buckets:
            if c >= q * count - 1e-9:
                return le
        return math.inf

    return {"count": count, "sum_s": ssum, "mean_s": ssum / count if count else None,
            "p50_le_s": bound(0.5), "p99_le_s": bound(0.99), "max_le_s": bound(1.0),
            "buckets": [[le, c] for le, c in buckets]}
