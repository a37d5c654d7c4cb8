"""The ``infersight`` command: serve, sim, demo, ingest, eval-worker, eval calibrate, deadletter,
export parquet, store compact, check-config."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from infersight import __version__
from infersight.config import ConfigError
from infersight.store.base import StoreUnavailable


def _serve(args: argparse.Namespace) -> int:
    from infersight.runtime import serve

    serve(args.config, port=args.port, workers=args.workers)
    return 0


def _sim(args: argparse.Namespace) -> int:
    from infersight.sim.server import run_sim

    run_sim(host=args.host, port=args.port, seed=args.seed, fault_rate=args.fault_rate, scenario=args.scenario)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from infersight.demo import run_demo

    return run_demo(duration_s=args.duration, data_dir=args.data_dir, port=args.port, seed=args.seed, rps=args.rps)


def _ingest(args: argparse.Namespace) -> int:
    from infersight.ingest.worker import run_ingest

    return run_ingest(args.config, port=args.port)


def _eval_worker(args: argparse.Namespace) -> int:
    from infersight.evaluation.eval_worker import run_eval_worker

    return run_eval_worker(args.config, port=args.port)


def _eval_calibrate(args: argparse.Namespace) -> int:
    from infersight.evaluation.calibrate_cli import run

    return run(args)


def _deadletter(args: argparse.Namespace) -> int:
    from infersight.bus.deadletter_cli import run

    return run(args)


def _export_parquet(args: argparse.Namespace) -> int:
    from infersight.config import load_settings
    from infersight.export.parquet import export_parquet
    from infersight.store.factory import open_store

    settings = load_settings(args.config)
    since, until = _iso(args.since, "--since"), _iso(args.until, "--until")
    store = open_store(settings)
    try:
        summary = export_parquet(store, since, until, args.out, tenant_id=args.tenant)
    finally:
        store.close()
    print(f"exported {summary.rows} requests into {summary.files} files under {summary.out_dir}")
    return 0


def _iso(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SystemExit(f"infersight: {flag} must be an ISO 8601 time, e.g. 2026-11-22T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _check_config(args: argparse.Namespace) -> int:
    from infersight.config import load_settings
    from infersight.gateway.routing import Router

    settings = load_settings(args.config)
    Router(settings)  # loads every tokenizer, so a bad path fails here too
    print(f"{args.config}: ok ({len(settings.backends)} backends, {len(settings.tenants)} tenants)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infersight", description="Observability for LLM inference.")
    parser.add_argument("--version", action="version", version=f"infersight {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", required=True, help="YAML config file (see docs/config.md)")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, help="gateway processes sharing the port (override server.workers)")
    serve.set_defaults(func=_serve)

    sim = sub.add_parser("sim", help="run the simulated OpenAI-compatible engine")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8001)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that fail (0..1)")
    sim.add_argument("--scenario", choices=["normal", "memory_pressure"], default="normal",
                     help="memory_pressure: weights fill the GPU, small batches, queueing (docs/simulator.md)")
    sim.set_defaults(func=_sim)

    demo = sub.add_parser("demo", help="simulator + gateway + synthetic traffic, with a live table")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--data-dir", default="./infersight-data")
    demo.add_argument("--port", type=int, default=8700)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rps", type=float, default=20.0, help="requests per second across all tenants")
    demo.set_defaults(func=_demo)

    ingest = sub.add_parser("ingest", help="scale-out ingest worker: Redis Streams -> store")
    ingest.add_argument("--config", required=True)
    ingest.add_argument("--port", type=int, default=8710, help="port for /metrics, /healthz and /api/v1")
    ingest.set_defaults(func=_ingest)

    eval_worker = sub.add_parser("eval-worker", help="scale-out eval worker: Redis eval stream -> eval_results")
    eval_worker.add_argument("--config", required=True)
    eval_worker.add_argument("--port", type=int, default=8720, help="port for /metrics and /healthz")
    eval_worker.set_defaults(func=_eval_worker)

    deadletter = sub.add_parser("deadletter", help="inspect and replay Redis dead letters (<stream>:dead)")
    from infersight.bus.deadletter_cli import add_arguments as deadletter_arguments

    deadletter_arguments(deadletter)
    deadletter.set_defaults(func=_deadletter)

    evaluation = sub.add_parser("eval", help="quality evaluation tools")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    calibrate = eval_sub.add_parser("calibrate", help="check a judge against human labels (a golden JSONL set)")
    from infersight.evaluation.calibrate_cli import add_arguments as calibrate_arguments

    calibrate_arguments(calibrate)
    calibrate.set_defaults(func=_eval_calibrate)

    export = sub.add_parser("export", help="export stored data")
    export_sub = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    parquet = export_sub.add_parser("parquet", help="requests as Parquet, partitioned date=/tenant=/model=")
    parquet.add_argument("--config", required=True)
    parquet.add_argument("--since", help="inclusive start, ISO 8601 (default: everything)")
    parquet.add_argument("--until", help="exclusive end, ISO 8601")
    parquet.add_argument("--tenant", help="only this tenant")
    parquet.add_argument("--out", required=True, help="output folder")
    parquet.set_defaults(func=_export_parquet)

    store_cmd = sub.add_parser("store", help="embedded store maintenance")
    store_sub = store_cmd.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    compact = store_sub.add_parser("compact", help="rewrite the DuckDB file without its free space (offline)")
    from infersight.store.compact_cli import add_arguments as compact_arguments

    compact_arguments(compact)  # sets func=compact_cli.run

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", required=True)
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"infersight: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"infersight: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
