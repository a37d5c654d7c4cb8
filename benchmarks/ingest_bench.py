"""Ingest pipeline benchmark: records/s end to end, bytes per record, and the gateway's TTFT while
ingest runs at full rate, all in one run.

    .venv/bin/python benchmarks/ingest_bench.py            # full run (~6 minutes)
    .venv/bin/python benchmarks/ingest_bench.py --quick    # smoke run (~2 minutes)
    .venv/bin/python benchmarks/ingest_bench.py --profile  # plus py-spy runs (not in the figures)

1. embedded: a producer thread publishes N records into the MemoryBus (journal on, as
   production runs it) -> StoreSink -> the store process (DuckDB in a child, as `infersight serve`
   runs it); until the store holds all N.
2. Redis: a producer process (RedisStreamBus, journal on) -> redis-server -> `infersight ingest`
   (DuckDB) or a RedisStreamConsumer + StoreSink process (ClickHouse on chdb); until all N rows
   are in the store.
3. storage: bytes on disk per record after (1) and (2), CHECKPOINT / OPTIMIZE FINAL.
4. gateway under ingest: added TTFT (gateway minus direct) in the scale-out shape, with the
   ingest pipeline idle and at full rate (benchmarks/ingest_gateway.py).

Prints markdown tables and writes benchmarks/results/ingest-latest.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psutil  # noqa: E402

import ingest_report as report  # noqa: E402
from ingest_gateway import run_gateway_phase  # noqa: E402
from ingest_phases import RedisServer, run_embedded, run_redis, run_store_only  # noqa: E402
from procs import find_executable, raise_fd_limit  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="infersight ingest benchmark (see benchmarks/README.md)")
    p.add_argument("--n", type=int, default=300_000, help="records per throughput run")
    p.add_argument("--repeats", type=int, default=2, help="runs of each pipeline (second pass in reverse order)")
    p.add_argument("--pipelines", default="store-duckdb,store-chdb,embedded,redis-duckdb,redis-chdb",
                   help="comma-separated subset of store-duckdb, store-chdb (the store alone, run once), "
                        "embedded, redis-duckdb, redis-chdb (run --repeats times)")
    p.add_argument("--gw-concurrency", type=int, default=16)
    p.add_argument("--gw-segment", type=float, default=5.0, help="measured seconds per gateway segment")
    p.add_argument("--gw-rounds", type=int, default=2, help="rounds of the 8-segment gateway plan")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--max-lag", type=int, default=20_000, help="flood: backlog kept in front of the ingest worker")
    p.add_argument("--flood-rate", type=float, default=0.0,
                   help="flood: records/s at most (0: the worker's full rate); 10000 is the issue's Redis target")
    p.add_argument("--pin-ingest-cpu", type=int, default=None,
                   help="gateway phase: Redis, ingest and the flood on this CPU, everything else on the others")
    p.add_argument("--ingest-sched", choices=["normal", "idle", "idle-redis"], default="normal",
                   help="gateway phase: put the ingest worker and the flood (idle-redis: and Redis) under "
                        "SCHED_IDLE, so that any waking gateway, simulator or load generator thread preempts them")
    p.add_argument("--control-load", type=float, default=0.0,
                   help="gateway phase, a control: instead of the flood, synthetic CPU load of this many cores "
                        "(cpu_load.py: no Redis, store or disk); --ingest-sched idle puts it under SCHED_IDLE")
    p.add_argument("--no-gateway", action="store_true", help="skip the gateway-under-ingest phase")
    p.add_argument("--quick", action="store_true", help="smoke run: 50,000 records, 1 repeat, 1 gateway round of 3 s")
    p.add_argument("--profile", action="store_true", help="extra py-spy runs of embedded and redis-duckdb")
    p.add_argument("--py-spy-bin", default=None)
    p.add_argument("--redis-server", default=None, help="redis-server binary (default: PATH)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "ingest-latest.json"))
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 50_000)
        args.repeats = 1
        args.gw_rounds = 1
        args.gw_segment = min(args.gw_segment, 3.0)
    args.pipeline_list = [x.strip() for x in args.pipelines.split(",") if x.strip()]
    return args


def src_digest() -> str:
    """sha256 over the package's sources: which code these figures are for."""
    h = hashlib.sha256()
    for path in sorted((REPO / "src" / "infersight").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def plan(pipelines: list[str], repeats: int) -> list[tuple[int, str]]:
    """The store-alone runs once, then the pipelines: in order on odd repeats, reversed on even
    ones (ABBA across repeats)."""
    steps = [(1, p) for p in pipelines if p.startswith("store-")]
    rest = [p for p in pipelines if not p.startswith("store-")]
    for r in range(repeats):
        steps += [(r + 1, p) for p in (rest if r % 2 == 0 else list(reversed(rest)))]
    return steps


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - a linear script
    args = parse_args(argv)
    raise_fd_limit()
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="infersight-ingest-bench-"))
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    redis_bin = find_executable(args.redis_server, "redis-server", "/usr/bin/redis-server")
    needs_redis = any(p.startswith("redis") for p in args.pipeline_list) or not args.no_gateway
    if needs_redis and redis_bin is None:
        notes.append("redis-server not found: the Redis runs and the gateway phase are skipped.")
        print("note: " + notes[-1], flush=True)
        args.pipeline_list = [p for p in args.pipeline_list if not p.startswith("redis")]
        args.no_gateway = True
    redis = RedisServer(redis_bin, tmp).start() if redis_bin and needs_redis else None
    result: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    gateway = None
    try:
        if redis is not None:
            redis.wait_ready()
        steps = plan(args.pipeline_list, args.repeats)
        digests: set[str] = set()
        for i, (rep, pipeline) in enumerate(steps, 1):
            tag = f"r{rep}"
            before = src_digest()
            if pipeline == "embedded":
                res = run_embedded(args.n, tmp, tag, args.seed + rep)
            elif pipeline.startswith("store-"):
                res = run_store_only(args.n, pipeline.split("-", 1)[1], tmp, tag, args.seed + rep)
            else:
                assert redis is not None
                res = run_redis(args.n, pipeline.split("-", 1)[1], redis, tmp, tag, args.seed + rep)
            res.update(run=f"{pipeline} #{rep}", pipeline=pipeline, repeat=rep, src_digest=before)
            digests.add(before)
            if src_digest() != before:
                res["src_changed_during_run"] = True
                notes.append(f"the source changed during run {res['run']}: its processes may mix two versions")
            runs.append(res)
            publish = f"; publish {res['publish_us']['mean']:.1f} µs/record" if "publish_us" in res else ""
            print(f"[{i}/{len(steps)}] {pipeline:13s} {res['records_per_s']:9,.0f} records/s ({args.n:,} in "
                  f"{res['e2e_s']:.1f}s{publish}) t={time.monotonic() - t_start:.0f}s", flush=True)
        if not args.no_gateway:
            assert redis is not None
            print(f"gateway under ingest: concurrency {args.gw_concurrency}, {args.gw_rounds} round(s)", flush=True)
            before = src_digest()
            gateway = run_gateway_phase(redis, tmp, concurrency=args.gw_concurrency, seg_s=args.gw_segment,
                                        warmup_s=args.warmup, rounds=args.gw_rounds, max_lag=args.max_lag,
                                        flood_rate=args.flood_rate, pin_ingest_cpu=args.pin_ingest_cpu,
                                        ingest_sched=args.ingest_sched, control_load=args.control_load)
            gateway["src_digest"] = before
            digests.add(before)
            if src_digest() != before:
                notes.append("the source changed during the gateway phase")
        if len(digests) > 1:
            notes.append(f"runs measured {len(digests)} different versions of the source (see src_digest per run)")
        if args.profile:
            spy = find_executable(args.py_spy_bin, "py-spy", "/work/litellm-venv/bin/py-spy")
            if spy is None:
                notes.append("py-spy not found: no profile.")
            else:
                print("profiling (extra runs, not in the figures)", flush=True)
                profiles["embedded"] = run_embedded(args.n, tmp, "prof", args.seed, py_spy=spy)["profile"]
                if redis is not None:
                    prof = run_redis(args.n, "duckdb", redis, tmp, "prof", args.seed, py_spy=spy)["profile"]
                    profiles["redis producer"] = prof["producer"]
                    profiles["infersight ingest (DuckDB)"] = prof["consumer"]
                    prof = run_redis(args.n, "chdb", redis, tmp, "prof", args.seed, py_spy=spy)["profile"]
                    profiles["consumer (ClickHouse, chdb)"] = prof["consumer"]
        summary = report.summarize(runs)
        storage = report.storage_rows(runs)
        result = {
            "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "note": "all processes on one host"},
            "src_digest": src_digest(),  # at the end; each run records its own at its start
            "args": {k: v for k, v in vars(args).items() if k != "pipeline_list"},
            "runs": runs, "summary": summary, "storage": storage, "gateway": gateway, "profiles": profiles,
            "notes": notes, "elapsed_s": round(time.monotonic() - t_start, 1),
        }
        result["targets"] = report.targets(summary, storage, gateway)
    finally:
        if redis is not None:
            redis.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"configs and logs kept in {tmp}")
    out_path.write_text(json.dumps(_clean(result), indent=1) + "\n")
    print()
    print(report.markdown(result))
    print(f"\nwrote {out_path} in {result['elapsed_s']:.0f}s")
    return 0


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
