"""The ``infersight`` command: serve, sim, demo, ingest, eval-worker, eval calibrate, deadletter,
export parquet, store compact, check-config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from infersight import __version__
from infersight.config import ConfigError
from infersight.store.base import StoreError, StoreUnavailable


def _serve(args: argparse.Namespace) -> int:
    from infersight.runtime import serve

    return serve(args.config, port=args.port, workers=args.workers)


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
    if since is not None and until is not None and since >= until:
        raise SystemExit("infersight: --since must be before --until (--until is exclusive)")
    if args.tenant == "":  # an unset variable in a job: "" matches nothing and would replace the full export
        raise SystemExit("infersight: --tenant is empty; pass a tenant id, or leave --tenant out for every tenant")
    if settings.store.backend == "duckdb":
        # Opening a DuckDB file that is not there creates an empty one: a mistyped storage.path left a
        # stray file behind and failed with a catalog error's traceback.
        key = "store.path" if settings.store.path else "storage.path"
        db = Path(settings.store.path or Path(settings.storage.path) / "infersight.duckdb")
        if not db.is_file():
            raise ConfigError(f"no store at {db}: nothing was recorded there yet, or {key} points elsewhere",
                              path=args.config, key=key)
    store = open_store(settings)
    try:
        summary = export_parquet(store, since, until, args.out, tenant_id=args.tenant)
    except OSError as exc:  # --out is a file, or a folder this user cannot write
        raise SystemExit(f"infersight: cannot write the export under --out {args.out}: "
                         f"{exc.strerror or exc}; pass a folder you can write to") from None
    finally:
        store.close()
    replaced = f"; replaced {summary.replaced} files of an earlier export of this window" if summary.replaced else ""
    print(f"exported {summary.rows} requests into {summary.files} files under {summary.out_dir}{replaced}")
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


def _ranged(kind: Callable[[str], float], low: float, high: float | None = None,
            low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number within bounds, else a usage error that says the bounds.

    Out-of-range values used to go through: ``--workers -3`` ran a supervisor of no workers forever,
    ``--workers 0`` silently meant server.workers, ``--port 70000`` reported a port it did not bind."""
    if high is None:
        bounds = f"above {low:g}" if low_open else f"at least {low:g}"
    else:
        bounds = f"from {low:g} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a value {bounds}")
        return value

    return parse


_PORT = _ranged(int, 0, 65535)
_WORKERS = _ranged(int, 1, 64)  # server.workers' bounds
_SHARE = _ranged(float, 0.0, 1.0)
_POSITIVE = _ranged(float, 0.0, low_open=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infersight", description="Observability for LLM inference.")
    parser.add_argument("--version", action="version", version=f"infersight {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", required=True, help="YAML config file (see docs/config.md)")
    serve.add_argument("--port", type=_PORT, help="override server.port")
    serve.add_argument("--workers", type=_WORKERS,
                       help="gateway processes sharing the port, 1-64 (override server.workers)")
    serve.set_defaults(func=_serve)

    sim = sub.add_parser("sim", help="run the simulated OpenAI-compatible engine")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=_PORT, default=8001)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fault-rate", type=_SHARE, default=0.0, help="share of requests that fail (0..1)")
    sim.add_argument("--scenario", choices=["normal", "memory_pressure"], default="normal",
                     help="memory_pressure: weights fill the GPU, small batches, queueing (docs/simulator.md)")
    sim.set_defaults(func=_sim)

    demo = sub.add_parser("demo", help="simulator + gateway + synthetic traffic, with a live table")
    demo.add_argument("--duration", type=_POSITIVE, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--data-dir", default="./infersight-data")
    demo.add_argument("--port", type=_PORT, default=8700)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rps", type=_POSITIVE, default=20.0, help="requests per second across all tenants")
    demo.set_defaults(func=_demo)

    ingest = sub.add_parser("ingest", help="scale-out ingest worker: Redis Streams -> store")
    ingest.add_argument("--config", required=True)
    ingest.add_argument("--port", type=_PORT, default=8710, help="port for /metrics, /healthz and /api/v1")
    ingest.set_defaults(func=_ingest)

    eval_worker = sub.add_parser("eval-worker", help="scale-out eval worker: Redis eval stream -> eval_results")
    eval_worker.add_argument("--config", required=True)
    eval_worker.add_argument("--port", type=_PORT, default=8720, help="port for /metrics and /healthz")
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
        config = getattr(args, "config", None)
        if exc.path is None and config:  # raised past the loader (a tokenizer, a mode): name the file
            exc = ConfigError(exc.detail, path=str(config), key=exc.key)
        print(f"infersight: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"infersight: {exc}", file=sys.stderr)
        return 3
    except StoreError as exc:  # e.g. a file that is not an infersight store: a message, not a traceback
        print(f"infersight: store error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
