"""The ``infersight`` command: serve, sim, demo, ingest, eval-worker, eval calibrate, eval compare, deadletter,
export parquet, store compact, check-config."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from infersight import __version__

if TYPE_CHECKING:
    from infersight.config import Settings

# Only light imports above: a Ctrl-C while the heavy ones load (pydantic, duckdb, rich) is caught in
# main() instead of printing a traceback of the import machinery.

_SERVICES = ("serve", "sim", "demo", "ingest", "eval-worker")  # run until stopped: Ctrl-C is their normal end
EXIT_INTERRUPTED = 130  # a one-shot command (export, compact, replay) stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # stdout closed by the reader (`| head`), as a shell reports SIGPIPE


class UsageError(SystemExit):
    """A bad argument that only shows after parsing (e.g. --since after --until): exit status 2,
    as for argparse's own usage errors; ``str()`` is the message, which ``main`` prints."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 2


def _require_port(host: str, port: int, port_hint: str, host_hint: str = "") -> None:
    """Refuse an address this process cannot listen on before anything starts.

    Was: ``serve`` started its store and eval processes first and then exited 3 with a uvicorn log
    line; ``serve --workers N``, ``ingest`` and ``eval-worker`` printed an OSError traceback."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SystemExit(f"infersight: cannot listen on {host}:{port}: {exc.strerror}; {host_hint}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            hint = f"stop the process that holds it, or {port_hint}" if exc.errno == errno.EADDRINUSE else \
                host_hint or port_hint
            raise SystemExit(f"infersight: cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None


def _require_storage(settings: Settings, config: str) -> None:
    """storage.path (and store.path's folder) must be a folder this user can create or write.

    Was: ``check-config`` said ok, and ``serve`` died with ``the store process failed to start:
    FileExistsError`` that named neither the key nor the file."""
    from infersight.config import ConfigError

    folders = [("storage.path", Path(settings.storage.path))]
    if settings.store.backend == "duckdb" and settings.store.path:
        if Path(settings.store.path).is_dir():
            raise ConfigError(f"{settings.store.path} is a folder; store.path names the DuckDB file itself",
                              path=config, key="store.path")
        folders.append(("store.path", Path(settings.store.path).parent))
    for key, folder in folders:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "is" if existing == folder else f"needs the folder {existing}, which is"
            raise ConfigError(f"{folder} {what} a file, not a folder; point {key} at a folder", path=config, key=key)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{existing} is not writable by this user; point {key} at a folder you can write to",
                              path=config, key=key)


def _refuse_unservable(settings: Settings, config: str, workers: int) -> None:
    """What ``serve`` would refuse only after starting its store process, refused up front (and by
    ``check-config``): the worker count, the storage folders, the judge's rubric, the prompt hash's
    key, the OTLP endpoint."""
    from infersight.gateway.hash_key import check_prompt_hash_key
    from infersight.runtime import check_workers
    from infersight.runtime_eval import check_judge_rubric

    check_workers(settings, config, workers)
    _require_storage(settings, config)
    check_judge_rubric(settings, config)
    check_prompt_hash_key(settings.storage.path, config)
    _require_cpus(settings, config)
    if settings.tracing.otlp_endpoint:
        from infersight.tracing.otlp import OtlpHttpSpanExporter

        OtlpHttpSpanExporter(settings.tracing)  # checks the URL; sends nothing


def _require_cpus(settings: Settings, config: str) -> None:
    """CPUs the child processes are pinned to must be this host's (they were refused only once the
    store process had started, in a log line that named no file)."""
    from infersight.config import ConfigError
    from infersight.scheduling import offered_cpus, unavailable_cpus

    for key, cpus in (("evaluation.child_cpus", settings.evaluation.child_cpus),
                      ("store.child_cpus", settings.store.child_cpus)):
        missing = unavailable_cpus(cpus)
        if missing:
            raise ConfigError(f"CPUs {missing} are not available on this host (it offers "
                              f"{sorted(offered_cpus())}); list CPUs it has, or null", path=config, key=key)


def _serve(args: argparse.Namespace) -> int:
    from infersight.config import load_settings
    from infersight.runtime import serve

    settings = load_settings(args.config)
    _refuse_unservable(settings, args.config, args.workers or settings.server.workers)
    port = settings.server.port if args.port is None else args.port
    _require_port(settings.server.host, port, f"pass --port N (or change server.port in {args.config})",
                  f"check server.host in {args.config}")
    return serve(args.config, port=args.port, workers=args.workers)


def _sim(args: argparse.Namespace) -> int:
    from infersight.sim.server import run_sim

    _require_port(args.host, args.port, "pass --port N", "check --host")
    run_sim(host=args.host, port=args.port, seed=args.seed, fault_rate=args.fault_rate, scenario=args.scenario)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from infersight.demo import run_demo

    folder = Path(args.data_dir)
    if folder.exists() and not folder.is_dir():  # was: "the store process failed to start: FileExistsError"
        raise UsageError(f"--data-dir {args.data_dir} is a file; pass a folder")
    return run_demo(duration_s=args.duration, data_dir=args.data_dir, port=args.port, seed=args.seed, rps=args.rps)


def _ingest(args: argparse.Namespace) -> int:
    from infersight.ingest.worker import run_ingest

    _require_port("127.0.0.1", args.port, "pass --port N")
    return run_ingest(args.config, port=args.port)


def _eval_worker(args: argparse.Namespace) -> int:
    from infersight.evaluation.eval_worker import run_eval_worker

    _require_port("127.0.0.1", args.port, "pass --port N")
    return run_eval_worker(args.config, port=args.port)


def _eval_calibrate(args: argparse.Namespace) -> int:
    from infersight.evaluation.calibrate_cli import run

    return run(args)


def _eval_compare(args: argparse.Namespace) -> int:
    from infersight.evaluation.compare_cli import run

    return run(args)


def _deadletter(args: argparse.Namespace) -> int:
    from infersight.bus.deadletter_cli import run

    return run(args)


def _export_parquet(args: argparse.Namespace) -> int:
    from infersight.config import ConfigError, load_settings
    from infersight.export.parquet import export_parquet
    from infersight.store.factory import open_store

    settings = load_settings(args.config)
    since, until = args.since, args.until
    if since is not None and until is not None and since >= until:
        raise UsageError("--since must be before --until (--until is exclusive)")
    if args.tenant == "":  # an unset variable in a job: "" matches nothing and would replace the full export
        raise UsageError("--tenant is empty; pass a tenant id, or leave --tenant out for every tenant")
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
        summary = export_parquet(store, since, until, args.out, tenant_id=args.tenant, table=args.table)
    except OSError as exc:  # --out is a file, or a folder this user cannot write
        raise SystemExit(f"infersight: cannot write the export under --out {args.out}: "
                         f"{exc.strerror or exc}; pass a folder you can write to") from None
    finally:
        store.close()
    replaced = f"; replaced {summary.replaced} files of an earlier export of this window" if summary.replaced else ""
    what = "requests" if args.table == "requests" else "eval results"
    print(f"exported {summary.rows} {what} into {summary.files} files under {summary.out_dir}{replaced}")
    return 0


def _iso(value: str) -> datetime:
    """An argparse type: an ISO 8601 time, UTC when it has no offset. Was: a bad value exited 1, not 2."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-22T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _check_config(args: argparse.Namespace) -> int:
    """What ``serve`` would refuse at start-up, refused here too, and a summary of what it would run.

    Was: "ok" for server.workers > 1 on the memory bus, a tracing.otlp_endpoint that is not http(s)
    and a storage.path that is a file, all of which ``serve`` then refused."""
    from infersight.config import load_settings
    from infersight.gateway.routing import Router

    settings = load_settings(args.config)
    Router(settings)  # loads every tokenizer, so a bad path fails here too
    _refuse_unservable(settings, args.config, settings.server.workers)
    print(f"{args.config}: ok")
    for line in _summary(settings):
        print(f"  {line}")
    return 0


def _summary(settings: Settings) -> list[str]:
    """What the config would run, one fact per line (never a key or a URL's credentials)."""
    from infersight.gateway.hash_key import prompt_hash_key_source

    server, bus, store = settings.server, settings.bus, settings.store
    models = sum(len(b.models) for b in settings.backends)
    workers = f"{server.workers} worker{'s' * (server.workers != 1)}"
    if store.backend == "duckdb":
        where = store.path or str(Path(settings.storage.path) / "infersight.duckdb")
    else:
        where = _host_of(store.url)
    return [
        f"gateway: {server.host}:{server.port}, {workers}",
        f"backends: {_n(len(settings.backends), 'backend')} serving {_n(models, 'model')}",
        f"tenants: {_n(len(settings.tenants), 'tenant')}",
        f"storage.path: {settings.storage.path}",
        f"bus: {bus.backend}" + (f" at {_host_of(bus.url)}, stream {bus.stream}" if bus.backend == "redis" else ""),
        f"store: {store.backend} at {where}",
        f"evaluation: {'on' if settings.evaluation.enabled else 'off'}",
        f"prompt hash key: {prompt_hash_key_source(settings.storage.path, bus.backend == 'redis')}",
        f"tracing: {'OTLP to ' + _host_of(tracing) if (tracing := settings.tracing.otlp_endpoint) else 'off'}",
    ]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _host_of(url: str | None) -> str:
    """host:port of a URL, without the user and password it may carry."""
    from urllib.parse import urlsplit

    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:  # not a number: the host alone
        port = None
    return f"{parts.hostname}:{port}" if port else str(parts.hostname)


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
    serve.set_defaults(func=_serve, interrupted_status=0)

    sim = sub.add_parser("sim", help="run the simulated OpenAI-compatible engine")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sim.add_argument("--port", type=_PORT, default=8001, help="port to listen on (default: 8001)")
    sim.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same answers (default: 0)")
    sim.add_argument("--fault-rate", type=_SHARE, default=0.0, help="share of requests that fail (0..1)")
    sim.add_argument("--scenario", choices=["normal", "memory_pressure"], default="normal",
                     help="memory_pressure: weights fill the GPU, small batches, queueing (docs/simulator.md)")
    sim.set_defaults(func=_sim, interrupted_status=0)

    demo = sub.add_parser("demo", help="simulator + gateway + synthetic traffic, with a live table")
    demo.add_argument("--duration", type=_POSITIVE, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--data-dir", default="./infersight-data",
                      help="folder for the store and journals (default: ./infersight-data)")
    demo.add_argument("--port", type=_PORT, default=8700, help="gateway port on 127.0.0.1 (default: 8700)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the traffic and the simulator (default: 7)")
    demo.add_argument("--rps", type=_POSITIVE, default=20.0, help="requests per second across all tenants")
    demo.set_defaults(func=_demo, interrupted_status=0)

    ingest = sub.add_parser("ingest", help="scale-out ingest worker: Redis Streams -> store")
    ingest.add_argument("--config", required=True, help="YAML config file (bus.backend: redis)")
    ingest.add_argument("--port", type=_PORT, default=8710,
                        help="port on 127.0.0.1 for /metrics, /healthz and /api/v1 (default: 8710)")
    ingest.set_defaults(func=_ingest, interrupted_status=0)

    eval_worker = sub.add_parser("eval-worker", help="scale-out eval worker: Redis eval stream -> eval_results")
    eval_worker.add_argument("--config", required=True,
                             help="YAML config file (bus.backend: redis, store.backend: clickhouse)")
    eval_worker.add_argument("--port", type=_PORT, default=8720,
                             help="port on 127.0.0.1 for /metrics and /healthz (default: 8720)")
    eval_worker.set_defaults(func=_eval_worker, interrupted_status=0)

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
    compare = eval_sub.add_parser("compare", help="which of two systems answers better: the judge, pairwise, "
                                                  "positions swapped")
    from infersight.evaluation.compare_cli import add_arguments as compare_arguments

    compare_arguments(compare)
    compare.set_defaults(func=_eval_compare)

    export = sub.add_parser("export", help="export stored data")
    export_sub = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    parquet = export_sub.add_parser("parquet", help="requests (or eval results) as Parquet, partitioned "
                                                    "date=/tenant=/model=")
    parquet.add_argument("--config", required=True, help="YAML config file naming the store")
    parquet.add_argument("--since", type=_iso, help="inclusive start, ISO 8601, UTC without an offset "
                                                    "(default: everything)")
    parquet.add_argument("--until", type=_iso, help="exclusive end, ISO 8601, UTC without an offset")
    parquet.add_argument("--tenant", help="only this tenant")
    parquet.add_argument("--table", choices=("requests", "eval_results"), default="requests",
                         help="requests (default), or eval_results: scores, by the judged request's day; "
                              "export each table into a folder of its own")
    parquet.add_argument("--out", required=True, help="output folder, created if missing; files of an earlier "
                                                      "export of the same window are replaced")
    parquet.set_defaults(func=_export_parquet)

    store_cmd = sub.add_parser("store", help="embedded store maintenance")
    store_sub = store_cmd.add_subparsers(dest="store_command", required=True, metavar="STORE_COMMAND")
    compact = store_sub.add_parser("compact", help="rewrite the DuckDB file without its free space (offline)")
    from infersight.store.compact_cli import add_arguments as compact_arguments

    compact_arguments(compact)  # sets func=compact_cli.run

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", required=True, help="YAML config file (see docs/config.md)")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. Ctrl-C stops a long-running command (serve, sim, demo, ingest,
    eval-worker) with 0, as its own signal handling does once it runs, and a one-shot command with 130;
    it never prints a traceback, whenever it comes (it did while the parser or a server was loading)."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # while the parser's modules load: the command is the first word
        words = sys.argv[1:] if argv is None else argv
        command = next((word for word in words if not word.startswith("-")), None)
        return 0 if command in _SERVICES else EXIT_INTERRUPTED
    try:
        return _run(args)
    except KeyboardInterrupt:
        return int(getattr(args, "interrupted_status", EXIT_INTERRUPTED))
    except BrokenPipeError:  # `infersight deadletter list | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not raise again
        return EXIT_BROKEN_PIPE


def _run(args: argparse.Namespace) -> int:
    from infersight.config import ConfigError
    from infersight.store.base import StoreError, StoreUnavailable

    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"infersight: {exc}", file=sys.stderr)
        raise
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


if __name__ == "__main__":
    raise SystemExit(main())
