"""The ``infersight`` command: serve, sim, demo, check-config."""

from __future__ import annotations

import argparse
import sys

from infersight import __version__
from infersight.config import ConfigError


def _serve(args: argparse.Namespace) -> int:
    from infersight.runtime import serve

    serve(args.config, port=args.port, workers=args.workers)
    return 0


def _sim(args: argparse.Namespace) -> int:
    from infersight.sim.server import run_sim

    run_sim(host=args.host, port=args.port, seed=args.seed, fault_rate=args.fault_rate)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from infersight.demo import run_demo

    return run_demo(duration_s=args.duration, data_dir=args.data_dir, port=args.port, seed=args.seed, rps=args.rps)


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
    sim.set_defaults(func=_sim)

    demo = sub.add_parser("demo", help="simulator + gateway + synthetic traffic, with a live table")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--data-dir", default="./infersight-data")
    demo.add_argument("--port", type=int, default=8700)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rps", type=float, default=20.0, help="requests per second across all tenants")
    demo.set_defaults(func=_demo)

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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
