"""Evaluation benchmark: the quality pipeline under load, its judge cost and its sampling accuracy.

    .venv/bin/python benchmarks/eval_bench.py            # full run (~7 minutes)
    .venv/bin/python benchmarks/eval_bench.py --quick    # smoke run (~1 minute)

Starts the simulator (the engine), a second simulator serving the LLM judge (``sim-judge``, ~1 s
per call, at nice 19: it stands in for a judge on another machine; ``--judge-sim shared`` serves
it from the engine's simulator instead), a gateway with
``evaluation.enabled: false`` and one with evaluation on (5% sampled, priced at a named public
judge price) as subprocesses, all on this host; drives open-loop streaming load
(``eval_loadgen.py``) in ABBA segments against each gateway and directly against the simulator;
reads the eval pipeline's figures from the on-gateway's /metrics, its query API and, after it
stopped, its DuckDB file; checks the sampler alone against binomial intervals. Prints markdown
and writes benchmarks/results/eval-latest.json. See benchmarks/README.md for the definitions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psutil  # noqa: E402

import eval_report  # noqa: E402
from eval_phases import DIRECT, OFF, ON, pipeline_counts, read_store, run_block, run_probe, wait_settled  # noqa: E402
from eval_sampling import check, sampler_accuracy  # noqa: E402
from eval_segment import scrape  # noqa: E402
from gateway_bench import _clean  # noqa: E402
from procs import Server, free_port, raise_fd_limit  # noqa: E402
from segment import Target, _host_busy  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parent
GW_KEY, ADMIN_KEY = "sk-bench", "sk-bench-admin"
SEED_REQUESTS_PER_DAY = 2_000_000  # DESIGN.md: the embedded shape carries 2M requests/day
PRICE_MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o")


def load_prices(path: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per model: USD per 1M input and output tokens from litellm's public price table."""
    table = json.loads(path.read_text())
    out = {}
    for name in names:
        e = table.get(name)
        if not e or e.get("input_cost_per_token") is None:
            continue
        out[name] = {"input_per_1m": e["input_cost_per_token"] * 1e6, "output_per_1m": e["output_cost_per_token"] * 1e6,
                     "source": f"{path.name} entry '{name}': input_cost_per_token {e['input_cost_per_token']}, "
                               f"output_cost_per_token {e['output_cost_per_token']}"}
    return out


def gateway_config(path: Path, port: int, sim_port: int, storage: Path, *, evaluation: bool, sample_rate: float,
                   price: dict[str, Any] | None, judge_concurrency: int,
                   switch_interval_ms: float | None = None, judge_port: int | None = None,
                   judge_max_calls_per_s: float | None = None, child_cpus: list[int] | None = None,
                   mask_linger_s: float | None = None, eval_flush_s: float | None = None) -> Path:
    """``child_cpus``: the gateway's store and eval processes go there (``--pin``)."""
    switch = f", switch_interval_ms: {switch_interval_ms}" if switch_interval_ms is not None else ""
    text = (
        f"server: {{host: 127.0.0.1, port: {port}{switch}}}\n"
        f"storage: {{path: {storage}}}\n"
        "logging: {level: warning, access_log: false}\n"
        f"backends: [{{name: sim, type: openai, url: 'http://127.0.0.1:{sim_port}/v1', models: [sim-bench]}}]\n"
        f"tenants: [{{id: bench, api_keys: [{GW_KEY}]}}]\n"
        f"admin_api_keys: [{ADMIN_KEY}]\n"
    )
    if child_cpus:
        text += f"store: {{child_cpus: {child_cpus}}}\n"
    if not evaluation:
        text += "evaluation: {enabled: false}\n"
    else:
        p = price or {"input_per_1m": 0.0, "output_per_1m": 0.0}
        pace = f", max_calls_per_s: {judge_max_calls_per_s}" if judge_max_calls_per_s else ""
        text += (
            "evaluation:\n"
            "  enabled: true\n"
            f"  sample_rate: {sample_rate}\n"
            f"  judge: {{url: 'http://127.0.0.1:{judge_port or sim_port}/v1', model: sim-judge, concurrency: {judge_concurrency}, "
            f"input_price_per_1m: {p['input_per_1m']}, output_price_per_1m: {p['output_per_1m']}{pace}}}\n"
        )
        if child_cpus:
            text += f"  child_cpus: {child_cpus}\n"
        if mask_linger_s is not None:
            text += f"  mask_linger_s: {mask_linger_s}\n"
        if eval_flush_s is not None:
            text += f"  flush_interval_s: {eval_flush_s}\n"
    path.write_text(text)
    return path


def wait_for_store_bench(max_wait_s: float, log: Any = print) -> tuple[float, bool]:
    """Wait (polling every 60 s) while another benchmark's store_bench.py runs; (waited s, still running)."""
    def running() -> bool:
        me = os.getpid()
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info.get("cmdline") or []
            if p.info["pid"] != me and any("store_bench" in c for c in cmd):
                return True
        return False

    t0 = time.monotonic()
    while running():
        if time.monotonic() - t0 >= max_wait_s:
            return time.monotonic() - t0, True
        log("store_bench.py is running; waiting 60 s", flush=True)
        time.sleep(60)
    return time.monotonic() - t0, False


def host_busy_cores(seconds: float) -> float:
    """Cores the whole host kept busy over ``seconds`` (psutil system CPU times)."""
    a = _host_busy()
    time.sleep(seconds)
    return (_host_busy() - a) / seconds


def quality_api(port: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/quality?window=1h&group_by=tenant,model",
                                 headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    judge = [row for row in body["data"] if row["evaluator"] == "llm_judge"]
    return {"rows": len(body["data"]),
            "llm_judge": [{k: row.get(k) for k in ("dimension", "evaluations", "score_mean", "judge_tokens",
                                                    "judge_cost", "failures")} for row in judge],
            "llm_judge_tokens": sum(r["judge_tokens"] or 0 for r in judge),
            "llm_judge_cost": sum(r["judge_cost"] or 0.0 for r in judge)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="infersight evaluation benchmark (see benchmarks/README.md)")
    p.add_argument("--rates", default="231,115", help="offered req/s of the ABBA blocks (231 = 10x seed volume)")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds per block")
    p.add_argument("--segment", type=float, default=8.0, help="measured seconds per segment")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each segment's window")
    p.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform")
    p.add_argument("--probe-rates", default="60,170", help="extra rates of the keeps-up probe ('' skips it)")
    p.add_argument("--probe-segment", type=float, default=5.0)
    p.add_argument("--sample-rate", type=float, default=0.05)
    p.add_argument("--judge-concurrency", type=int, default=16, help="evaluation.judge.concurrency (default 16)")
    p.add_argument("--judge-sim", choices=("separate", "shared"), default="separate",
                   help="serve the judge from its own simulator process (a judge is its own endpoint; default) "
                        "or from the engine's simulator (its judge work then slows the engine under test)")
    p.add_argument("--judge-nice", type=int, default=19,
                   help="nice value of the separate judge simulator: it stands in for a judge on another machine, "
                        "so it takes this host's spare CPU (default 19; 0 makes it a full peer of the gateway)")
    p.add_argument("--judge-idle", action="store_true",
                   help="run the separate judge simulator under SCHED_IDLE (chrt --idle) instead of a nice value: "
                        "it then runs only on CPU nothing else wants, nearer a judge on other hardware")
    p.add_argument("--judge-max-calls-per-s", type=float, default=None,
                   help="evaluation.judge.max_calls_per_s of the eval-on gateway (default: none, no pacing)")
    p.add_argument("--judge-price", default="gpt-4o-mini", help="price table entry configured as the judge's price")
    p.add_argument("--pricing-file", default=None, help="litellm price table (default: extdata/pricing/...)")
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="server.switch_interval_ms of both gateways (default: the config's default)")
    p.add_argument("--mask-linger-s", type=float, default=None,
                   help="the eval-on gateway's evaluation.mask_linger_s (default: the config default)")
    p.add_argument("--eval-flush-s", type=float, default=None,
                   help="the eval-on gateway's evaluation.flush_interval_s (default: the config default)")
    p.add_argument("--pin", default=None, metavar="FRONT:BACK",
                   help="CPU placement experiment, e.g. 0:1: the simulator, the gateways and the load on CPUs "
                        "FRONT; the gateways' store and eval processes (store/evaluation.child_cpus) and the "
                        "judge simulator on CPUs BACK (comma lists allowed)")
    p.add_argument("--pin-gateway", default=None, metavar="GATEWAY:REST",
                   help="CPU placement experiment, e.g. 0:1: each gateway's main process alone on CPUs GATEWAY; "
                        "the simulator, the load, the judge simulator and the gateways' store and eval processes "
                        "on CPUs REST (a host where the relay has a core of its own)")
    p.add_argument("--sampler-n", type=int, default=200_000, help="trace ids per Sampler-alone check")
    p.add_argument("--sampler-rates", default="0.01,0.05,0.2")
    p.add_argument("--settle-timeout", type=float, default=300.0, help="longest wait for the eval pipeline to finish")
    p.add_argument("--wait-max", type=float, default=900.0, help="longest wait for a running store_bench.py")
    p.add_argument("--no-wait", action="store_true", help="do not wait for store_bench.py")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 4 s segments, no probe, 50k ids")
    p.add_argument("--out", default=str(HERE / "results" / "eval-latest.json"))
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.segment, args.probe_rates = 1, min(args.segment, 4.0), ""
        args.sampler_n = min(args.sampler_n, 50_000)
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    args.probe_list = [float(r) for r in args.probe_rates.split(",") if r.strip()]
    args.sampler_rate_list = [float(r) for r in args.sampler_rates.split(",") if r.strip()]
    args.front_cpus = args.back_cpus = args.gateway_cpus = None
    if args.pin and args.pin_gateway:
        p.error("--pin and --pin-gateway are two placements: give one")
    if args.pin_gateway:
        gateway, _, rest = args.pin_gateway.partition(":")
        args.gateway_cpus = [int(c) for c in gateway.split(",") if c.strip()]
        args.front_cpus = args.back_cpus = [int(c) for c in rest.split(",") if c.strip()]
        if not args.gateway_cpus or not args.back_cpus:
            p.error("--pin-gateway wants GATEWAY:REST, e.g. 0:1")
    if args.pin:
        front, _, back = args.pin.partition(":")
        args.front_cpus = [int(c) for c in front.split(",") if c.strip()]
        args.back_cpus = [int(c) for c in back.split(",") if c.strip()]
        if not args.front_cpus or not args.back_cpus:
            p.error("--pin wants FRONT:BACK, e.g. 0:1")
    return args


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0915 - a linear script
    args = parse_args(argv)
    raise_fd_limit()
    notes: list[str] = []
    waited, concurrent = (0.0, False) if args.no_wait else wait_for_store_bench(args.wait_max)
    if waited >= 1 or concurrent:
        notes.append(f"waited {waited:.0f} s for another session's store_bench.py to finish"
                     + ("; it was still running, so this run shared the host with it" if concurrent else ""))
    host_before = host_busy_cores(3.0)
    notes.append(f"before the run, with none of its processes started, the host was busy on {host_before:.2f} of "
                 f"{psutil.cpu_count()} cores (other people's work)")
    print("note: " + notes[-1], flush=True)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="infersight-evalbench-"))
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    extdata = Path(os.environ.get("INFERSIGHT_EXTDATA", REPO.parent / "shared" / "extdata"))
    pricing_file = Path(args.pricing_file) if args.pricing_file else \
        extdata / "pricing" / "litellm_model_prices_and_context_window.json"
    prices = load_prices(pricing_file, tuple(dict.fromkeys((args.judge_price, *PRICE_MODELS)))) \
        if pricing_file.exists() else {}
    if args.judge_price not in prices:
        notes.append(f"no price for {args.judge_price} in {pricing_file}: judge_cost is 0 and no cost is reported")

    print(f"sampler alone: {args.sampler_n:,} ids x {args.sampler_rate_list} x (random, sequential)", flush=True)
    sampler = sampler_accuracy(args.sampler_n, args.sampler_rate_list)

    servers: list[Server] = []
    result: dict[str, Any] = {}
    previous_affinity = os.sched_getaffinity(0)
    if args.front_cpus:  # inherited by every process started below; the back ones are moved or configured
        os.sched_setaffinity(0, set(args.front_cpus))
        notes.append(f"--pin-gateway {args.pin_gateway}: each gateway's main process alone on CPUs "
                     f"{args.gateway_cpus}; the simulator, the load, the judge simulator and the gateways' store "
                     f"and eval processes on CPUs {args.back_cpus}" if args.gateway_cpus else
                     f"--pin {args.pin}: simulator, gateways and load on CPUs {args.front_cpus}; the gateways' "
                     f"store and eval processes and the judge simulator on CPUs {args.back_cpus}")
    try:
        sim_port, off_port, on_port = free_port(), free_port(), free_port()
        py = sys.executable
        sim = Server("sim", [py, "-m", "infersight.cli", "sim", "--port", str(sim_port), "--seed", "1"],
                     f"http://127.0.0.1:{sim_port}/health", tmp, cwd=str(REPO)).start()
        servers.append(sim)
        judge_port = None
        if args.judge_sim == "separate":
            judge_port = free_port()
            nice = ["nice", "-n", str(args.judge_nice)] if args.judge_nice else []
            if args.judge_idle:
                nice = ["chrt", "--idle", "0"]
            if args.back_cpus:  # every thread it will start inherits the placement
                nice = ["taskset", "-c", ",".join(map(str, args.back_cpus)), *nice]
            servers.append(Server("judge-sim", [*nice, py, "-m", "infersight.cli", "sim", "--port", str(judge_port),
                                                "--seed", "2"],
                                  f"http://127.0.0.1:{judge_port}/health", tmp, cwd=str(REPO)).start())

        gws = {}
        for name, port, on in ((OFF, off_port, False), (ON, on_port, True)):
            cfg = gateway_config(tmp / f"{name}.yaml", port, sim_port, tmp / f"{name}-data", evaluation=on,
                                 sample_rate=args.sample_rate, price=prices.get(args.judge_price),
                                 judge_concurrency=args.judge_concurrency,
                                 switch_interval_ms=args.switch_interval_ms, judge_port=judge_port,
                                 judge_max_calls_per_s=args.judge_max_calls_per_s, child_cpus=args.back_cpus,
                                 mask_linger_s=args.mask_linger_s, eval_flush_s=args.eval_flush_s)
            placed = ["taskset", "-c", ",".join(map(str, args.gateway_cpus))] if args.gateway_cpus else []
            gws[name] = Server(name, [*placed, py, "-m", "infersight.cli", "serve", "--config", str(cfg), "--workers", "1"],
                               f"http://127.0.0.1:{port}/healthz", tmp, cwd=str(REPO)).start()
            servers.append(gws[name])
        for s in servers:
            print(f"{s.name} ready in {s.wait_ready(120):.1f}s", flush=True)
        targets = {DIRECT: Target(DIRECT, f"http://127.0.0.1:{sim_port}/v1/chat/completions", "", None),
                   OFF: Target(OFF, f"http://127.0.0.1:{off_port}/v1/chat/completions", GW_KEY, gws[OFF]),
                   ON: Target(ON, f"http://127.0.0.1:{on_port}/v1/chat/completions", GW_KEY, gws[ON])}
        others = {DIRECT: [gws[OFF], gws[ON]], OFF: [gws[ON]], ON: [gws[OFF]]}
        m_start = scrape(on_port)

        probe = []
        if args.probe_list:
            print(f"probe: {args.probe_list} req/s x (direct, eval-off, eval-on), {args.probe_segment:.0f} s each",
                  flush=True)
            probe = run_probe(targets, sim, others, tmp, args.probe_list, args.probe_segment, args.warmup)
            wait_settled(on_port, args.settle_timeout)
        blocks = []
        for rate in args.rate_list:
            print(f"block {rate:.0f} req/s: {args.rounds} round(s) of {', '.join(('direct', 'off', 'on', 'direct', 'direct', 'on', 'off', 'direct'))}"
                  f" (t={time.monotonic() - t_start:.0f}s)", flush=True)
            blocks.append(run_block(rate, targets, sim, others, on_port, tmp, rounds=args.rounds, seg_s=args.segment,
                                    warmup_s=args.warmup, arrivals=args.arrivals, settle_timeout_s=args.settle_timeout,
                                    sample_rate=args.sample_rate))
        m_end = scrape(on_port)
        life = pipeline_counts({k: v - m_start.get(k, 0.0) for k, v in m_end.items()})
        life_abs = pipeline_counts(m_end)  # since the gateway started (the probe included)
        api = quality_api(on_port)
        for s in reversed(servers):
            s.stop(30)  # the on-gateway flushes its eval bus before it exits
        store = read_store(tmp / f"{ON}-data" / "infersight.duckdb", blocks)
        evals_per_day = SEED_REQUESTS_PER_DAY * 10 * args.sample_rate
        result = {
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "note": "all processes on one host"},
            "args": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
            "judge": {"model": "sim-judge", "latency_s": 1.0, "concurrency": args.judge_concurrency,
                      "simulator": args.judge_sim, "nice": args.judge_nice if args.judge_sim == "separate" else 0,
                      "sched_idle": args.judge_idle and args.judge_sim == "separate",
                      "max_calls_per_s": args.judge_max_calls_per_s,
                      "price": {args.judge_price: prices.get(args.judge_price)}, "pricing_file": str(pricing_file)},
            "seed_requests_per_day": SEED_REQUESTS_PER_DAY,
            "evals_per_day_10x": evals_per_day,
            "probe": probe,
            "blocks": blocks,
            "pipeline_since_first_load": life,
            "pipeline_total": life_abs,
            "sampling_total": check(int(life_abs["sampled_random"]), int(life_abs["requests"]), args.sample_rate),
            "quality_api": api,
            "store": store,
            "sampler": sampler,
            "host_busy_cores_before": host_before,
            "notes": notes,
        }
        result["cost"] = eval_report.cost_rows(store, prices, args.judge_price) if args.judge_price in prices else []
        result["targets"] = eval_report.targets(result)
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
    finally:
        for s in reversed(servers):
            s.stop()
        os.sched_setaffinity(0, previous_affinity)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"configs, logs and data kept in {tmp}")
    out_path.write_text(json.dumps(_clean(result), indent=1) + "\n")
    print()
    print(eval_report.markdown(result))
    print(f"\nwrote {out_path} in {result['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
