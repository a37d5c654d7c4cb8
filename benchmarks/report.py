"""Aggregation, derived figures, targets and the markdown tables of the gateway benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DIRECT, GATEWAY, GATEWAY_W2, LITELLM = "direct", "infersight", "infersight-w2", "litellm"
TARGET_ORDER = (DIRECT, GATEWAY, GATEWAY_W2, LITELLM)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), like numpy's default; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Cell:
    """One (target, concurrency) cell, pooled over its segments."""

    target: str
    concurrency: int
    ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    segments: int = 0
    server_cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    host_busy_s: float = 0.0  # summed over all cores
    host_cores: int = 1
    rss_max_mb: float = 0.0
    worker_cpu_s: dict[str, float] = field(default_factory=dict)  # per process of the server tree

    def add(self, seg: dict[str, Any]) -> None:
        self.ttft_s += seg["ttft_s"]
        self.total_s += seg["total_s"]
        for k, v in seg["errors"].items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.window_s += seg["window_s"]
        self.segments += 1
        self.server_cpu_s += seg["server_cpu_s"]
        self.sim_cpu_s += seg["sim_cpu_s"]
        self.loadgen_cpu_s += seg["loadgen_cpu_s"]
        self.host_busy_s += seg["host_busy_s"]
        self.host_cores = seg["host_cores"]
        self.rss_max_mb = max(self.rss_max_mb, seg["rss_max_mb"])
        for k, v in seg.get("worker_cpu_s", {}).items():
            self.worker_cpu_s[k] = self.worker_cpu_s.get(k, 0.0) + v

    @property
    def requests(self) -> int:
        return len(self.total_s)

    def summary(self) -> dict[str, Any]:
        n = max(1, self.requests)
        w = max(1e-9, self.window_s)
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "segments": self.segments,
            "window_s": round(self.window_s, 3),
            "requests": self.requests,
            "rps": self.requests / w,
            "ttft_p50_ms": percentile(self.ttft_s, 50) * 1e3,
            "ttft_p99_ms": percentile(self.ttft_s, 99) * 1e3,
            "total_p50_ms": percentile(self.total_s, 50) * 1e3,
            "total_p99_ms": percentile(self.total_s, 99) * 1e3,
            "errors": sum(self.errors.values()),
            "errors_by_kind": self.errors,
            "server_cpu_ms_per_req": self.server_cpu_s / n * 1e3,
            "server_cores": self.server_cpu_s / w,
            "server_cpu_by_process": {k: v / w for k, v in self.worker_cpu_s.items()},
            "server_rss_max_mb": self.rss_max_mb,
            "sim_cpu_ms_per_req": self.sim_cpu_s / n * 1e3,
            "sim_cores": self.sim_cpu_s / w,
            "loadgen_cpu_ms_per_req": self.loadgen_cpu_s / n * 1e3,
            "loadgen_cores": self.loadgen_cpu_s / w,
            "host_cpu_busy_pct": 100.0 * self.host_busy_s / (w * self.host_cores),
        }


def derive(cells: dict[tuple[str, int], dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per concurrency: added latency vs direct and the throughput ratios."""
    out: dict[int, dict[str, float]] = {}
    for c in sorted({c for _, c in cells}):
        d, g, lt = cells.get((DIRECT, c)), cells.get((GATEWAY, c)), cells.get((LITELLM, c))
        row: dict[str, float] = {}
        if d and g:
            row["added_ttft_p50_ms"] = g["ttft_p50_ms"] - d["ttft_p50_ms"]
            row["added_ttft_p99_ms"] = g["ttft_p99_ms"] - d["ttft_p99_ms"]
            row["added_total_p50_ms"] = g["total_p50_ms"] - d["total_p50_ms"]
            row["throughput_vs_direct"] = g["rps"] / d["rps"] if d["rps"] else math.nan
        if d and lt:
            row["litellm_added_ttft_p50_ms"] = lt["ttft_p50_ms"] - d["ttft_p50_ms"]
        if g and lt:
            row["throughput_vs_litellm"] = g["rps"] / lt["rps"] if lt["rps"] else math.inf
        out[c] = row
    return out


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def cells_table(cells: dict[tuple[str, int], dict[str, Any]]) -> str:
    head = ("| target | conc | req/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms | errors "
            "| server CPU ms/req | server cores | server RSS max MB | host CPU busy % |")
    rows = [head, "|" + "---|" * 12]
    order = sorted(cells, key=lambda k: (k[1], TARGET_ORDER.index(k[0])))
    for key in order:
        s = cells[key]
        rows.append("| " + " | ".join([
            s["target"], str(s["concurrency"]), _fmt(s["rps"]), _fmt(s["ttft_p50_ms"], 2),
            _fmt(s["ttft_p99_ms"], 2), _fmt(s["total_p50_ms"]), _fmt(s["total_p99_ms"]),
            str(s["errors"]), _fmt(s["server_cpu_ms_per_req"], 2), _fmt(s["server_cores"], 2),
            _fmt(s["server_rss_max_mb"]), _fmt(s["host_cpu_busy_pct"], 0),
        ]) + " |")
    return "\n".join(rows)


def cpu_table(cells: dict[tuple[str, int], dict[str, Any]]) -> str:
    """Where the machine's cores went in each cell (the server of "direct" is the sim itself)."""
    rows = ["| target | conc | server cores | sim cores | load generator cores | host busy % |",
            "|" + "---|" * 6]
    for key in sorted(cells, key=lambda k: (k[1], TARGET_ORDER.index(k[0]))):
        s = cells[key]
        server = "(sim)" if s["target"] == DIRECT else _fmt(s["server_cores"], 2)
        rows.append(f"| {s['target']} | {s['concurrency']} | {server} | {_fmt(s['sim_cores'], 2)} "
                    f"| {_fmt(s['loadgen_cores'], 2)} | {_fmt(s['host_cpu_busy_pct'], 0)} |")
    return "\n".join(rows)


def derived_table(derived: dict[int, dict[str, float]]) -> str:
    rows = ["| conc | added TTFT p50 ms | added TTFT p99 ms | added total p50 ms | infersight/direct "
            "| infersight/litellm | litellm added TTFT p50 ms |", "|" + "---|" * 7]
    for c, d in derived.items():
        rows.append("| " + " | ".join([
            str(c), _fmt(d.get("added_ttft_p50_ms"), 2), _fmt(d.get("added_ttft_p99_ms"), 2),
            _fmt(d.get("added_total_p50_ms"), 2), _fmt(d.get("throughput_vs_direct"), 2),
            _fmt(d.get("throughput_vs_litellm"), 1), _fmt(d.get("litellm_added_ttft_p50_ms"), 1),
        ]) + " |")
    return "\n".join(rows)


def scaling_summary(cells: dict[tuple[str, int], dict[str, Any]], c: int = 64) -> dict[str, Any] | None:
    w1, w2 = cells.get((GATEWAY, c)), cells.get((GATEWAY_W2, c))
    if not (w1 and w2):
        return None
    workers = {k: v for k, v in w2["server_cpu_by_process"].items() if k.startswith("worker")}
    busy = sorted(workers.values(), reverse=True)
    # the two busiest children are the uvicorn workers (a resource tracker may also be there)
    share = (busy[1] / (busy[0] + busy[1])) if len(busy) > 1 and busy[0] + busy[1] else 0.0
    return {
        "concurrency": c,
        "rps_1_worker": w1["rps"], "rps_2_workers": w2["rps"],
        "throughput_gain": w2["rps"] / w1["rps"] if w1["rps"] else math.nan,
        "cores_1_worker": w1["server_cores"], "cores_2_workers": w2["server_cores"],
        "cores_by_worker": workers,
        "least_busy_worker_share": share,
        "cpu_ms_per_req_1_worker": w1["server_cpu_ms_per_req"],
        "cpu_ms_per_req_2_workers": w2["server_cpu_ms_per_req"],
    }


def targets(cells: dict[tuple[str, int], dict[str, Any]], derived: dict[int, dict[str, float]],
            memory: dict[str, Any] | None, scaling: dict[str, Any] | None,
            short_derived: dict[int, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Each target from the issue with the measured figure and pass/fail (None: not measured).

    ``short_derived``: the 1-token-answer cells, where the proxy rather than the engine bounds
    throughput; their LiteLLM ratios are reported as rows of their own, beside the 100-token ones.
    """
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: str, ok: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": value, "pass": ok})

    d64 = derived.get(64, {})
    v = d64.get("added_ttft_p50_ms")
    add("added TTFT p50 @64", "<= 0.5 ms", _fmt(v, 2) + " ms", None if v is None else v <= 0.5)
    v = d64.get("added_ttft_p99_ms")
    add("added TTFT p99 @64", "<= 2 ms", _fmt(v, 2) + " ms", None if v is None else v <= 2.0)
    v = d64.get("throughput_vs_direct")
    add("throughput vs direct @64", ">= 70%", _fmt(None if v is None else 100 * v, 0) + " %",
        None if v is None else v >= 0.7)
    ratios = {c: d["throughput_vs_litellm"] for c, d in derived.items() if "throughput_vs_litellm" in d}
    for c, r in ratios.items():
        add(f"throughput vs LiteLLM @{c}", ">= 5x", _fmt(r, 1) + "x", r >= 5.0)
    if not ratios:
        add("throughput vs LiteLLM", ">= 5x", "not measured", None)
    for c, d in sorted((short_derived or {}).items()):
        if "throughput_vs_litellm" in d:
            r = d["throughput_vs_litellm"]
            add(f"throughput vs LiteLLM @{c}, instant engine, 1-token answers (proxy-bound)", ">= 5x",
                _fmt(r, 1) + "x", r >= 5.0)
    if memory:
        add(f"RSS through {memory['streams']} streams, gateway process", "peak < 300 MB",
            f"start {memory['start_mb']:.0f}, peak {memory['peak_mb']:.0f}, end {memory['end_mb']:.0f} MB",
            memory["peak_mb"] < 300)
        if memory.get("tree_processes", 1) > 1:
            add(f"RSS through {memory['streams']} streams, gateway + eval process (informative)", "peak < 300 MB",
                f"start {memory['tree_start_mb']:.0f}, peak {memory['tree_peak_mb']:.0f}, "
                f"end {memory['tree_end_mb']:.0f} MB", memory["tree_peak_mb"] < 300)
        add("RSS flat (no growth round 1 -> round 2)", "<= 10% or 20 MB",
            f"after round 1 {memory['after_round_mb'][0]:.0f}, after last {memory['after_round_mb'][-1]:.0f} MB",
            memory["flat"])
    else:
        add("RSS through 1,000 streams", "peak < 300 MB, flat", "not measured", None)
    if scaling:
        add("--workers 2 uses more cores @64", "2 busy workers, more cores than 1",
            f"{scaling['cores_1_worker']:.2f} -> {scaling['cores_2_workers']:.2f} cores; "
            f"least busy worker {100 * scaling['least_busy_worker_share']:.0f}% of the work; "
            f"throughput x{scaling['throughput_gain']:.2f}",
            scaling["least_busy_worker_share"] >= 0.25 and scaling["cores_2_workers"] > scaling["cores_1_worker"])
        add("--workers 2 throughput @64 (informative)", "> 1.0x of 1 worker",
            f"x{scaling['throughput_gain']:.2f}", scaling["throughput_gain"] > 1.0)
    else:
        add("--workers 2 uses more cores", "", "not measured", None)
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for r in rows:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r["pass"]]
        lines.append(f"| {r['target']} | {r['goal']} | {r['measured']} | {verdict} |")
    return "\n".join(lines)


def memory_table(memory: dict[str, Any]) -> str:
    lines = ["| streams | rounds | tokens/stream | ms/token | ok | errors | all open | start MB | peak MB "
             "| end MB | after each round MB | with its eval process: start / peak / end MB |", "|" + "---|" * 12]
    lines.append("| " + " | ".join([
        str(memory["streams"]), str(memory["rounds"]), str(memory["max_tokens"]), _fmt(memory["token_ms"], 0),
        str(memory["ok"]), str(memory["errors"]), "yes" if memory["all_open"] else "no",
        _fmt(memory["start_mb"]), _fmt(memory["peak_mb"]), _fmt(memory["end_mb"]),
        ", ".join(_fmt(x) for x in memory["after_round_mb"]),
        " / ".join(_fmt(memory.get(k)) for k in ("tree_start_mb", "tree_peak_mb", "tree_end_mb")),
    ]) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    cells = {(c["target"], c["concurrency"]): c for c in result["cells"]}
    parts = ["### Cells", "", cells_table(cells), "", "### Derived (infersight vs direct and LiteLLM)", "",
             derived_table({int(k): v for k, v in result["derived"].items()})]
    parts += ["", "### CPU budget (cores; the host has %d)" % result["machine"]["cpus"], "", cpu_table(cells)]
    if result.get("scaling"):
        s = result["scaling"]
        parts += ["", "### Scaling (concurrency 64)", "",
                  f"1 worker: {s['rps_1_worker']:.1f} req/s on {s['cores_1_worker']:.2f} cores; "
                  f"2 workers: {s['rps_2_workers']:.1f} req/s on {s['cores_2_workers']:.2f} cores "
                  f"(x{s['throughput_gain']:.2f}); per worker: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in s["cores_by_worker"].items())]
    if result.get("short_cells"):
        short = {(c["target"], c["concurrency"]): c for c in result["short_cells"]}
        parts += ["", f"### Short answers ({result.get('short_model')}, max_tokens {result.get('short_tokens', 1)}: "
                  "the proxy bounds throughput)",
                  "", cells_table(short), "",
                  derived_table({int(k): v for k, v in result.get("short_derived", {}).items()})]
    if result.get("memory"):
        parts += ["", "### Memory", "", memory_table(result["memory"])]
    parts += ["", "### Targets", "", targets_table(result["targets"])]
    for note in result.get("notes", []):
        parts.append(f"\nNote: {note}")
    return "\n".join(parts)
