"""Live-loop scrape benchmark: CPU of the real ``TelemetryCollector`` thread scraping 64 targets over HTTP.

``scrape_bench.py`` times parse + map alone. This one runs what the gateway runs: a
``TelemetryCollector`` on its own thread and asyncio loop, fetching every page concurrently over its
pooled aiohttp session, mapping, publishing into a ``MemoryBus`` (whose exporter only counts), with
its own Prometheus metrics. The pages are scrape_bench's (imported, not copied): per target a vLLM
page and an 8-GPU dcgm-exporter page, counters growing on every fetch, so rates and quantiles are
computed as in production.

Why the figures can be trusted on a noisy 2-core host:

- **Only the collector thread is counted**: ``time.thread_time()`` read inside that thread at the start
  and end of every round (``run_round``), so the bus writer thread, the main thread and the pages'
  server do not count; the CPU between rounds (timers, idle wake-ups) is reported apart.
- **The server is another process** (forked after the pages are built), so serving 7 MiB a round is
  not the collector's cost; its CPU is reported for context.
- **Same-run baseline**: parse + map alone (``scrape_bench.run_once``) on the same pages, before and
  after the loop phases; the ratio is what fetching, the event loop and publishing add.

Two phases: ``memory`` (bus without a journal) and ``journal`` (the production default
``bus.journal: true``: every publish appends a line to the write-ahead journal, in a temporary folder).
Rounds run every ``--interval`` s (1 s by default, to keep the run short); a round's CPU does not
depend on the interval, so the share of one core is scaled to ``--scale-to`` (10 s): (round CPU + the
CPU between two rounds) / 10 s. Round 0 only primes the rate trackers and is not counted.

    .venv/bin/python benchmarks/scrape_loop_bench.py                # 64 targets, ~1 minute
    .venv/bin/python benchmarks/scrape_loop_bench.py --targets 8 --rounds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry

from scrape_bench import BUDGET_SHARE, ROOT, dcgm_template, run_once, vllm_template  # isort: skip

from infersight.bus.memory import MemoryBus
from infersight.model.telemetry import TelemetrySample
from infersight.telemetry.collector import TelemetryCollector, TelemetryMetrics
from infersight.telemetry.settings import TelemetrySettings, TelemetryTarget

Pages = dict[str, list[list[str]]]  # kind -> round -> target -> page text


# -- the pages' server (a separate process) ----------------------------------------------------------


def serve(pages: Pages, sock: socket.socket, ready: Connection) -> None:
    """Serve ``/<phase>/<kind>/<i>``; the n-th fetch of a path returns round n (the last one after that),
    so counters advance on every scrape and each phase starts again at round 0."""
    bodies = {kind: [[p.encode() for p in rnd] for rnd in rounds] for kind, rounds in pages.items()}
    fetches: dict[str, int] = {}

    async def page(request: web.Request) -> web.Response:
        kind, i = request.match_info["kind"], int(request.match_info["i"])
        n = fetches.get(request.path, 0)
        fetches[request.path] = n + 1
        body = bodies[kind][min(n, len(bodies[kind]) - 1)][i]
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{phase}/{kind}/{i}", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        ready.send("ready")
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


# -- the collector, timed from inside its thread -----------------------------------------------------


class TimedCollector(TelemetryCollector):
    """The production collector; ``run_round`` also records this thread's CPU and wall clock around it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.marks: list[tuple[float, float, float, int]] = []  # (thread CPU at start, at end, wall s, samples)

    async def run_round(self, session: aiohttp.ClientSession) -> list[TelemetrySample]:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        samples = await super().run_round(session)
        self.marks.append((cpu0, time.thread_time(), time.perf_counter() - wall0, len(samples)))
        return samples


class CountingExporter:
    """The bus's exporter: counts, so that no store write runs in this process."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, batch: list[Any]) -> None:
        self.exported += len(batch)

    def shutdown(self) -> None:
        pass


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def run_phase(name: str, port: int, args: argparse.Namespace, server: psutil.Process,
              journal_dir: str | None) -> dict[str, Any]:
    """One collector run of ``args.rounds`` rounds (plus round 0) against the server; CPU per round."""
    targets = []
    for i in range(args.targets):
        model = [f"model-{i:02d}"]
        targets.append(TelemetryTarget(instance=f"vllm-{i}:8000", kind="vllm", models=model,
                                       url=f"http://127.0.0.1:{port}/{name}/vllm/{i}"))
        targets.append(TelemetryTarget(instance=f"node-{i}:9400", kind="dcgm", models=model,
                                       url=f"http://127.0.0.1:{port}/{name}/dcgm/{i}"))
    settings = TelemetrySettings(interval_s=args.interval, timeout_s=args.timeout or args.interval, targets=targets)
    exporter = CountingExporter()
    bus = MemoryBus([exporter], journal_dir=journal_dir, record_type=TelemetrySample)
    collector = TimedCollector(settings, bus.publish, TelemetryMetrics(CollectorRegistry()))
    bus.start()
    server0, proc0 = _cpu_s(server), time.process_time()
    collector.start()
    deadline = time.monotonic() + (args.rounds + 1) * args.interval + 60
    while len(collector.marks) < args.rounds + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    server_cpu, proc_cpu = _cpu_s(server) - server0, time.process_time() - proc0
    collector.stop()
    bus.stop()
    marks = collector.marks[: args.rounds + 1]
    if len(marks) < args.rounds + 1:
        raise SystemExit(f"{name}: only {len(marks)} rounds in time")
    measured = marks[1:]  # round 0 primes the trackers (gauges only)
    cpu = [1000 * (end - start) for start, end, _, _ in measured]
    gaps = [1000 * (marks[k + 1][0] - marks[k][1]) for k in range(len(marks) - 1)]  # CPU between two rounds
    rounds_n = len(marks)
    stats = bus.stats()
    return {
        "journal": journal_dir is not None,
        "rounds_measured": len(measured),
        "cpu_ms_per_round": {"median": round(statistics.median(cpu), 2), "mean": round(statistics.fmean(cpu), 2),
                             "min": round(min(cpu), 2), "max": round(max(cpu), 2), "all": [round(c, 2) for c in cpu]},
        "cpu_ms_between_rounds_median": round(statistics.median(gaps), 3),
        "cpu_ms_round0_and_setup": round(1000 * marks[0][1], 2),  # thread start to the end of round 0
        "wall_ms_per_round_median": round(1000 * statistics.median(m[2] for m in measured), 1),
        "samples_per_round": statistics.median(m[3] for m in measured),
        "samples_round0": marks[0][3],
        "scrape_failures": collector.failures,
        "published": stats.published,
        "exported": exporter.exported,
        "server_cpu_ms_per_round": round(1000 * server_cpu / rounds_n, 2),
        "process_cpu_ms_per_round": round(1000 * proc_cpu / rounds_n, 2),  # + bus writer + main thread
    }


def baseline(pages: Pages, args: argparse.Namespace) -> float:
    """Median CPU ms per round of parse + map alone (scrape_bench's ``run_once``, ``only=`` as collectors)."""
    steps = run_once(pages["vllm"], pages["dcgm"], args.scale_to, filtered=True)
    per_round = [sum(steps[k][r] for k in ("parse_vllm", "map_vllm", "parse_dcgm", "map_dcgm"))
                 for r in range(len(steps["parse_vllm"]))]
    return 1000 * statistics.median(per_round)


def build_pages(args: argparse.Namespace) -> Pages:
    """scrape_bench's pages, one per target and round: its own model name, host and GPU UUIDs."""
    extdata = Path(args.extdata)
    n = args.rounds + 1
    vtemplates = [vllm_template(extdata, k + 1) for k in range(n)]
    dtemplates = [dcgm_template(extdata, k + 1, args.gpus) for k in range(n)]
    return {
        "vllm": [[t.replace('model_name="MODEL"', f'model_name="model-{i:02d}"') for i in range(args.targets)]
                 for t in vtemplates],
        "dcgm": [[t.replace("HOST", f"node-{i:02d}").replace("UUIDPFX", f"GPU-{i:08x}-5c1e-1e63-0068")
                  for i in range(args.targets)] for t in dtemplates],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--targets", type=int, default=64, help="hosts, each a vLLM page and a dcgm page")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs per DCGM page")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between rounds in this run")
    ap.add_argument("--timeout", type=float, default=None, help="per-target timeout (default: the interval)")
    ap.add_argument("--rounds", type=int, default=10, help="measured rounds per phase (round 0 is extra)")
    ap.add_argument("--scale-to", type=float, default=10.0, help="production interval the share is scaled to")
    ap.add_argument("--extdata", default=os.environ.get("INFERSIGHT_EXTDATA", str(ROOT.parent / "shared" / "extdata")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scrape-loop-latest.json"))
    args = ap.parse_args()
    t_start = time.monotonic()
    pages = build_pages(args)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = int(sock.getsockname()[1])
    ctx = multiprocessing.get_context("fork")  # before any thread starts; the child inherits the pages
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=serve, args=(pages, sock, child_end), daemon=True)
    child.start()
    sock.close()
    if not parent_end.poll(30):
        raise SystemExit("the pages' server did not start")
    parent_end.recv()
    server = psutil.Process(child.pid)
    try:
        base_before = baseline(pages, args)
        phases = {"memory": run_phase("memory", port, args, server, None)}
        with tempfile.TemporaryDirectory(prefix="scrape-loop-") as tmp:
            phases["journal"] = run_phase("journal", port, args, server, tmp)
        base_after = baseline(pages, args)
    finally:
        child.terminate()
        child.join(10)

    base = (base_before + base_after) / 2
    for phase in phases.values():
        per_round = phase["cpu_ms_per_round"]["median"] + phase["cpu_ms_between_rounds_median"]
        phase["core_share_at_scale"] = round(per_round / (args.scale_to * 1000), 4)
        phase["ratio_to_parse_map"] = round(phase["cpu_ms_per_round"]["median"] / base, 2)
        phase["fetch_loop_publish_ms_per_round"] = round(phase["cpu_ms_per_round"]["median"] - base, 2)
    sizes = {k: len(v[-1][0].encode()) for k, v in pages.items()}
    result = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/scrape_loop_bench.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "aiohttp": aiohttp.__version__, "load_avg_1m": round(os.getloadavg()[0], 2),
                    "note": "shared host; CPU time of the collector thread (time.thread_time)"},
        "args": vars(args),
        "page_bytes": sizes,
        "baseline_parse_map_cpu_ms_per_round": {"before": round(base_before, 2), "after": round(base_after, 2),
                                                "mean": round(base, 2)},
        "phases": phases,
        "targets": {"core_share_max": BUDGET_SHARE,
                    "ok": all(p["core_share_at_scale"] <= BUDGET_SHARE and not p["scrape_failures"]
                              for p in phases.values())},
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.targets} targets (vLLM {sizes['vllm'] / 1024:.0f} KiB + DCGM {sizes['dcgm'] / 1024:.0f} KiB pages), "
          f"{args.rounds} rounds every {args.interval:g} s per phase")
    print(f"parse + map alone (same run): {base:.1f} ms CPU per round "
          f"(before {base_before:.1f}, after {base_after:.1f})")
    print(f"{'phase':<9}{'CPU ms/round':>14}{'between':>9}{'x parse+map':>13}{'% core @':>9}{args.scale_to:g}s"
          f"{'samples':>9}{'wall ms':>9}{'server ms':>11}{'fail':>6}")
    for name, p in phases.items():
        c = p["cpu_ms_per_round"]
        print(f"{name:<9}{c['median']:>8.1f} ({c['min']:.0f}){p['cpu_ms_between_rounds_median']:>9.2f}"
              f"{p['ratio_to_parse_map']:>13.2f}{100 * p['core_share_at_scale']:>11.2f}%{p['samples_per_round']:>9.0f}"
              f"{p['wall_ms_per_round_median']:>9.0f}{p['server_cpu_ms_per_round']:>11.1f}{p['scrape_failures']:>6}")
    print(f"budget {100 * BUDGET_SHARE:.0f}% of one core: {'ok' if result['targets']['ok'] else 'MISSED'}; "
          f"wrote {args.out} ({result['elapsed_s']} s)")


if __name__ == "__main__":
    main()
