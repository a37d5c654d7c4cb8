"""Gateway benchmark: direct-to-sim vs through infersight vs through LiteLLM, in one run.

    .venv/bin/python benchmarks/gateway_bench.py            # full run (~8 minutes)
    .venv/bin/python benchmarks/gateway_bench.py --quick    # smoke run (~1.5 minutes)

Starts the simulator, the gateway (1 and 2 workers) and, when installed, the LiteLLM proxy as
subprocesses; drives streaming chat requests from a separate load-generator process per segment
(benchmarks/loadgen.py); prints markdown tables and writes benchmarks/results/gateway-latest.json.
See benchmarks/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psutil  # noqa: E402

import report  # noqa: E402
from phases import run_memory, run_profile  # noqa: E402
from ingest_phases import RedisServer  # noqa: E402
from procs import Server, find_executable, free_port, raise_fd_limit  # noqa: E402
from report import DIRECT, GATEWAY, GATEWAY_W2, LITELLM, Cell  # noqa: E402
from segment import LoadSpec, Target, run_segment  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parent
GW_KEY, LITELLM_KEY = "sk-bench", "sk-litellm-bench"
BENCH_MODEL = "sim-bench"  # 5 ms TTFT, 1 ms a token
SHORT_MODEL, SHORT_TOKENS = "sim-instant", 1  # the short-answer cells: an engine that answers at once
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map from GitHub
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "DISABLE_ADMIN_UI": "True",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def gateway_config(path: Path, port: int, sim_port: int, storage: Path, models: list[str],
                   redis_url: str | None = None) -> Path:
    """The embedded default shape; with ``redis_url`` the scale-out bus (``--workers N`` needs it:
    DuckDB has one owner, ``infersight ingest``)."""
    bus = f"bus: {{backend: redis, url: '{redis_url}'}}\n" if redis_url else ""
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"storage: {{path: {storage}}}\n"
        "logging: {level: warning, access_log: false}\n" + bus +
        "backends:\n"
        f"  - {{name: sim, type: openai, url: 'http://127.0.0.1:{sim_port}/v1', models: [{', '.join(models)}]}}\n"
        "tenants:\n"
        f"  - {{id: bench, api_keys: [{GW_KEY}]}}\n"
    )
    return path


def litellm_config(path: Path, sim_port: int) -> Path:
    models = "".join(
        f"  - model_name: {m}\n"
        "    litellm_params:\n"
        f"      model: openai/{m}\n"
        f"      api_base: http://127.0.0.1:{sim_port}/v1\n"
        "      api_key: x\n" for m in (BENCH_MODEL, SHORT_MODEL))
    path.write_text(
        "model_list:\n" + models +
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  request_timeout: 600\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    return path


def start_gateway(name: str, tmp: Path, sim_port: int, models: list[str], workers: int,
                  python: str | None = None, redis_url: str | None = None) -> Server:
    """``python``: the interpreter of a production install (``pip install .``, no test extras);
    the test extras bring pandas, which pyarrow imports on its first conversion (+53 MB RSS)."""
    port = free_port()
    cfg = gateway_config(tmp / f"{name}.yaml", port, sim_port, tmp / f"{name}-data", models, redis_url)
    cmd = [python or sys.executable, "-m", "infersight.cli", "serve", "--config", str(cfg), "--port", str(port),
           "--workers", str(workers)]
    server = Server(name, cmd, f"http://127.0.0.1:{port}/healthz", tmp, cwd=str(REPO)).start()
    server.port = port  # type: ignore[attr-defined]
    return server


def plan(concurrencies: list[int], have_litellm: bool, scaling_at: int | None) -> list[tuple[str, int]]:
    """Per concurrency: direct, infersight(, w2), litellm, (w2,) infersight, direct (ABBA order)."""
    steps: list[tuple[str, int]] = []
    for c in concurrencies:
        first = [DIRECT, GATEWAY] + ([GATEWAY_W2] if c == scaling_at else [])
        steps += [(t, c) for t in first]
        if have_litellm:
            steps.append((LITELLM, c))
        steps += [(t, c) for t in reversed(first)]
    return steps


def run_plan(steps: list[tuple[str, int]], targets: dict[str, Target], sim: Server, tmp: Path,
             args: argparse.Namespace, *, model: str, max_tokens: int, t_start: float) -> dict[tuple[str, int], Cell]:
    """Run the plan's segments in order; cells keyed by (target, concurrency)."""
    cells: dict[tuple[str, int], Cell] = {}
    for i, (name, c) in enumerate(steps, 1):
        split = name != LITELLM  # direct and infersight cells run as two half segments (ABBA)
        spec = LoadSpec(concurrency=c, duration_s=args.duration / 2 if split else args.duration,
                        warmup_s=args.warmup, model=model, max_tokens=max_tokens)
        if name == LITELLM:
            spec.min_requests, spec.max_window_s, spec.drain_s = max(50, c), args.litellm_max_window, 60.0
        seg = run_segment(targets[name], spec, sim, tmp)
        cells.setdefault((name, c), Cell(name, c)).add(seg)
        n = len(seg["total_s"])
        print(f"[{i}/{len(steps)}] {name:14s} c={c:<4d} {n / seg['window_s']:8.1f} req/s "
              f"({n} in {seg['window_s']:.1f}s, errors {sum(seg['errors'].values())}, {model} x {max_tokens}) "
              f"t={time.monotonic() - t_start:.0f}s", flush=True)
    return cells


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="infersight gateway benchmark (see benchmarks/README.md)")
    p.add_argument("--duration", type=float, default=8.0,
                   help="measured seconds per cell (direct/infersight: split over 2 ABBA segments)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per segment (minimum)")
    p.add_argument("--concurrency", default="1,16,64,256", help="comma-separated concurrencies")
    p.add_argument("--short-concurrency", default="1",
                   help="concurrencies of extra cells with 1-token answers from sim-instant, where the proxy's "
                        "own latency bounds throughput ('' skips them)")
    p.add_argument("--quick", action="store_true", help="short smoke run: 2 s cells, conc 1,64, 200 streams")
    p.add_argument("--litellm-bin", default=None, help="litellm executable (default: PATH, then /work/litellm-venv)")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--litellm-max-window", type=float, default=30.0,
                   help="LiteLLM cells run >= --duration and until `conc` requests finished, at most this long")
    p.add_argument("--scaling-at", type=int, default=64, help="concurrency of the --workers 2 cell (0: skip)")
    p.add_argument("--memory-streams", type=int, default=1000, help="concurrent streams of the memory phase (0: skip)")
    p.add_argument("--memory-rounds", type=int, default=2)
    p.add_argument("--memory-tokens", type=int, default=40, help="tokens per memory-phase stream")
    p.add_argument("--memory-token-ms", type=float, default=200.0, help="ms per token of sim-slow")
    p.add_argument("--redis-server", default=None, help="redis-server binary for the --workers 2 cell")
    p.add_argument("--gateway-python", default=None,
                   help="python of a production install to run the gateways with (default: this one; see README)")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway in an extra unreported cell")
    p.add_argument("--py-spy-bin", default=None)
    p.add_argument("--out", default=str(HERE / "results" / "gateway-latest.json"))
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and server logs")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 2.0)
        if args.concurrency == "1,16,64,256":
            args.concurrency = "1,64"
        args.memory_streams = min(args.memory_streams, 200)
        args.memory_rounds = 1
        args.litellm_max_window = min(args.litellm_max_window, 8.0)
    args.concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.short_concurrencies = [int(c) for c in args.short_concurrency.split(",") if c.strip()]
    return args


def litellm_version(bin_path: str) -> str | None:
    py = Path(bin_path).resolve().parent / "python"
    try:
        return subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0915 - a linear script
    args = parse_args(argv)
    raise_fd_limit()
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="infersight-bench-"))
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    servers: list[Server] = []
    litellm_bin = None if args.no_litellm else find_executable(
        args.litellm_bin, "litellm", "/work/litellm-venv/bin/litellm")
    if not args.no_litellm and litellm_bin is None:
        notes.append("LiteLLM not found (--litellm-bin, PATH, /work/litellm-venv/bin/litellm): its cells are skipped.")
        print("note: " + notes[-1], flush=True)
    scaling_at = args.scaling_at if args.scaling_at in args.concurrencies else None
    result: dict[str, Any] = {}
    try:
        sim_port = free_port()
        sim = Server("sim", [sys.executable, "-m", "infersight.cli", "sim", "--port", str(sim_port), "--seed", "1"],
                     f"http://127.0.0.1:{sim_port}/health", tmp, cwd=str(REPO)).start()
        servers.append(sim)
        gw = start_gateway("gateway", tmp, sim_port, [BENCH_MODEL, SHORT_MODEL], 1, args.gateway_python)
        servers.append(gw)
        targets = {
            DIRECT: Target(DIRECT, f"http://127.0.0.1:{sim_port}/v1/chat/completions", "", None),
            GATEWAY: Target(GATEWAY, f"http://127.0.0.1:{gw.port}/v1/chat/completions", GW_KEY, gw),  # type: ignore[attr-defined]
        }
        if scaling_at:  # --workers 2 is the scale-out shape: a Redis bus and `infersight ingest` own the store
            redis_bin = find_executable(args.redis_server, "redis-server", "/usr/bin/redis-server")
            if redis_bin is None:
                raise SystemExit("--scaling-at needs redis-server (apt-get install redis-server) or --scaling-at 0")
            rds = RedisServer(redis_bin, tmp).start()
            servers.append(rds)
            rds.wait_ready(30)
            gw2 = start_gateway("gateway-w2", tmp, sim_port, [BENCH_MODEL], 2, args.gateway_python, rds.url)
            servers.append(gw2)
            iport = free_port()
            ingest = Server("ingest-w2", [args.gateway_python or sys.executable, "-m", "infersight.cli", "ingest",
                                          "--config", str(tmp / "gateway-w2.yaml"), "--port", str(iport)],
                            f"http://127.0.0.1:{iport}/healthz", tmp, cwd=str(REPO)).start()
            servers.append(ingest)
            targets[GATEWAY_W2] = Target(GATEWAY_W2, f"http://127.0.0.1:{gw2.port}/v1/chat/completions",  # type: ignore[attr-defined]
                                         GW_KEY, gw2)
        if litellm_bin:
            lport = free_port()
            cfg = litellm_config(tmp / "litellm.yaml", sim_port)
            lit = Server("litellm", [litellm_bin, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(lport),
                                     "--num_workers", "1"],
                         f"http://127.0.0.1:{lport}/health/liveliness", tmp, env=LITELLM_ENV, cwd=str(tmp)).start()
            servers.append(lit)
            targets[LITELLM] = Target(LITELLM, f"http://127.0.0.1:{lport}/v1/chat/completions", LITELLM_KEY, lit)
        for s in servers:
            try:
                took = s.wait_ready(120.0)
                print(f"{s.name} ready in {took:.1f}s", flush=True)
            except RuntimeError as exc:
                if s.name != "litellm":
                    raise
                notes.append(f"LiteLLM did not start, its cells are skipped: {str(exc)[:300]}")
                print("note: " + notes[-1], flush=True)
                targets.pop(LITELLM, None)
                s.stop()

        steps = plan(args.concurrencies, LITELLM in targets, scaling_at)
        cells = run_plan(steps, targets, sim, tmp, args, model=BENCH_MODEL, max_tokens=100, t_start=t_start)
        summaries = {k: v.summary() for k, v in cells.items()}
        derived = report.derive(summaries)
        short_summaries: dict[tuple[str, int], dict[str, Any]] = {}
        if args.short_concurrencies:  # an engine that answers at once: the proxy's own latency bounds throughput
            print(f"short answers ({SHORT_MODEL}, max_tokens {SHORT_TOKENS}) at concurrency "
                  f"{args.short_concurrencies}", flush=True)
            short = run_plan(plan(args.short_concurrencies, LITELLM in targets, None), targets, sim, tmp, args,
                             model=SHORT_MODEL, max_tokens=SHORT_TOKENS, t_start=t_start)
            short_summaries = {k: v.summary() for k, v in short.items()}
        short_derived = report.derive(short_summaries)
        scaling = report.scaling_summary(summaries, scaling_at) if scaling_at else None

        profile = None
        if args.profile:
            spy = find_executable(args.py_spy_bin, "py-spy", "/work/litellm-venv/bin/py-spy")
            if spy is None:
                notes.append("py-spy not found: no profile.")
            else:
                print("profiling the gateway at concurrency 64 (extra cell, not reported above)", flush=True)
                profile = run_profile(spy, gw, targets[GATEWAY], LoadSpec(64, args.duration, args.warmup),
                                      sim, tmp, tmp)

        memory = None
        if args.memory_streams > 0:
            for s in servers:  # give the memory phase the machine
                s.stop()
            sport = free_port()
            slow = Server("slow-sim", [sys.executable, str(HERE / "slow_sim.py"), "--port", str(sport),
                                       "--token-ms", str(args.memory_token_ms)],
                          f"http://127.0.0.1:{sport}/health", tmp, cwd=str(REPO)).start()
            servers.append(slow)
            slow.wait_ready(60)
            mgw = start_gateway("gateway-memory", tmp, sport, ["sim-slow"], 1, args.gateway_python)
            servers.append(mgw)
            mgw.wait_ready(60)
            print(f"memory phase: {args.memory_rounds} x {args.memory_streams} concurrent streams", flush=True)
            memory = run_memory(mgw, f"http://127.0.0.1:{mgw.port}/v1/chat/completions", GW_KEY,  # type: ignore[attr-defined]
                                args.memory_streams, args.memory_rounds, args.memory_tokens,
                                args.memory_token_ms, tmp)

        result = {
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "note": "all processes on one host"},
            "litellm_version": litellm_version(litellm_bin) if LITELLM in targets and litellm_bin else None,
            "args": {k: v for k, v in vars(args).items() if k not in ("concurrencies", "short_concurrencies")},
            "cells": [summaries[k] for k in sorted(summaries, key=lambda k: (k[1], report.TARGET_ORDER.index(k[0])))],
            "derived": {str(c): d for c, d in derived.items()},
            "short_model": SHORT_MODEL,
            "short_tokens": SHORT_TOKENS,
            "short_cells": [short_summaries[k] for k in sorted(
                short_summaries, key=lambda k: (k[1], report.TARGET_ORDER.index(k[0])))],
            "short_derived": {str(c): d for c, d in short_derived.items()},
            "scaling": scaling,
            "memory": memory,
            "profile": profile,
            "notes": notes,
            "elapsed_s": round(time.monotonic() - t_start, 1),
        }
        result["targets"] = report.targets(summaries, derived, memory, scaling, short_derived)
    finally:
        for s in reversed(servers):
            s.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"configs and logs kept in {tmp}")
    out_path.write_text(json.dumps(_clean(result), indent=1) + "\n")
    print()
    print(report.markdown(result))
    if profile and "self_pct" in profile:
        print("\n### Gateway profile (py-spy, self time)\n")
        for name, pct in profile["self_pct"][:15]:
            print(f"- {pct:5.1f}%  {name}")
    print(f"\nwrote {out_path} in {result['elapsed_s']:.0f}s")
    return 0


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
