"""``infersight deadletter list|replay --config FILE``: inspect and redrive ``<stream>:dead``.

``--stream`` picks the stream: request records (``bus.stream``), eval tasks (``evaluation.stream``) or
telemetry samples (``<bus.stream>:telemetry``, read by ``infersight ingest``); each decodes its entries as
its own record type, so "poison" means "not a record of this stream".

With the memory bus, ``--stream evals`` works on the embedded eval dead-letter file instead
(``evaluation/redrive_cli.py``), while the gateway runs.

``list`` counts the dead letters by kind and shows ids, reasons, delivery counts and ages, never the
payload. ``replay`` puts them back on the main stream for the consumer group (poison skipped unless
``--include-poison``; ``--dry-run`` changes nothing). See docs/bus.md, "Dead letters".

Exit codes: 0 ok, 1 Redis failed (unreachable, or a replay stopped part way), 2 bad config.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson
import redis

from infersight.bus.redis_conn import DEAD_LETTER_SUFFIX, connect
from infersight.bus.redis_deadletter import DeadLetter, count_by_kind, iter_dead_letters, replay
from infersight.config import ConfigError, Settings, load_settings
from infersight.model import EvalTask, RequestRecord
from infersight.model.telemetry import TelemetrySample

EXIT_OK, EXIT_REDIS, EXIT_CONFIG = 0, 1, 2


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # was: "invalid _positive value", naming a function instead of the problem
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``list`` and ``replay`` subcommands, for ``infersight deadletter``."""
    sub = parser.add_subparsers(dest="deadletter_command", required=True, metavar="ACTION")
    for name, help_text in (("list", "count and show dead letters (never their content)"),
                            ("replay", "put dead letters back on the main stream for the consumer group")):
        action = sub.add_parser(name, help=help_text)
        action.add_argument("--config", required=True,
                            help="YAML config file (bus.backend: redis; memory for --stream evals)")
        action.add_argument("--stream", choices=("requests", "evals", "telemetry"), default="requests",
                            help="requests: bus.stream (default); evals: evaluation.stream; "
                                 "telemetry: <bus.stream>:telemetry (GPU and engine samples)")
        action.add_argument("--reason", help="only this kind (undecodable, max_deliveries, sink_failed) "
                                             "or reasons containing this text")
        action.add_argument("--limit", type=_positive, help="at most this many (list default: 20 shown)")
        if name == "list":
            action.add_argument("--json", action="store_true", help="print one JSON object")
        else:
            action.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")
            action.add_argument("--include-poison", action="store_true",
                                help="also replay undecodable entries (they will most likely be dead-lettered again)")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        if settings.bus.backend == "memory" and args.stream == "evals":
            from infersight.evaluation.redrive_cli import run_local

            return run_local(settings, args)  # the embedded eval bus's dead-letter file
        if settings.bus.backend != "redis" or settings.bus.url is None:
            raise ConfigError("`infersight deadletter` reads Redis Streams, or with the memory bus the eval "
                              "dead letters (--stream evals); set bus.backend: redis and bus.url (the memory bus "
                              "keeps unreadable journal lines under <storage.path>/spool/slot-*/dead-letter/)",
                              path=args.config, key="bus.backend")
    except ConfigError as exc:
        print(f"infersight: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    stream, record_type = _stream(settings, args.stream)
    dead_stream = stream + DEAD_LETTER_SUFFIX
    client = connect(settings.bus.url)
    try:
        if args.deadletter_command == "list":
            return _list(client, dead_stream, args, record_type)
        return _replay(client, stream, dead_stream, args, record_type)
    except redis.RedisError as exc:
        hint = (f"; check that Redis is running and that bus.url in {args.config} points at it"
                if isinstance(exc, redis.ConnectionError) else "")
        print(f"infersight: Redis (bus.url) failed: {type(exc).__name__}: {str(exc).rstrip('.')}{hint}",
              file=sys.stderr)
        return EXIT_REDIS
    finally:
        client.close()


def _stream(settings: Settings, which: str) -> tuple[str, type[Any]]:
    """The main stream and the record type its entries decode as (one entry is one record or sample)."""
    if which == "evals":
        return settings.evaluation.stream, EvalTask
    if which == "telemetry":
        # imported here: runtime_telemetry pulls in the collector (aiohttp), which list/replay never need
        from infersight.runtime_telemetry import telemetry_stream

        return telemetry_stream(settings), TelemetrySample
    return settings.bus.stream, RequestRecord


def _list(client: redis.Redis, dead_stream: str, args: argparse.Namespace, record_type: type[Any]) -> int:
    shown_max = args.limit or 20
    letters = list(iter_dead_letters(client, dead_stream, reason=args.reason, record_type=record_type))
    shown = letters[:shown_max]
    poison = sum(1 for letter in letters if letter.poison)
    if args.json:
        print(orjson.dumps({"dead_stream": dead_stream, "total": len(letters), "by_kind": count_by_kind(letters),
                            "poison": poison, "entries": [_row(letter) for letter in shown]}).decode())
        return EXIT_OK
    what = f" matching {args.reason!r}" if args.reason else ""
    if not letters:
        print(f"{dead_stream}: no dead letters{what}")
        return EXIT_OK
    kinds = ", ".join(f"{kind} {n}" for kind, n in count_by_kind(letters).items())
    print(f"{dead_stream}: {count_text(len(letters))}{what} ({kinds}); {poison} poison "
          "(not replayed without --include-poison)")
    print(f"{'DEAD ID':<17} {'SOURCE ID':<17} {'KIND':<14} {'DELIV':>5} {'DEAD FOR':>9}  REASON")
    for letter in shown:
        print(f"{letter.dead_id:<17} {letter.source_id:<17} {letter.kind + ('*' if letter.poison else ''):<14} "
              f"{letter.deliveries:>5} {age_text(letter.age_s()):>9}  {letter.reason}")
    if len(shown) < len(letters):
        print(f"(showing the oldest {len(shown)} of {len(letters)}; --limit N shows more)")
    if poison:
        print("* poison: does not decode as a record")
    return EXIT_OK


def _replay(
    client: redis.Redis, stream: str, dead_stream: str, args: argparse.Namespace, record_type: type[Any]
) -> int:
    result = replay(client, stream, dead_stream, limit=args.limit, reason=args.reason,
                    include_poison=args.include_poison, dry_run=args.dry_run, record_type=record_type)
    skipped = (f"; skipped {result.skipped_poison} poison (undecodable; --include-poison replays them)"
               if result.skipped_poison else "")
    if args.dry_run:
        print(f"dry run: would replay {count_text(result.replayed)} from {dead_stream} to {stream}{skipped}; "
              "nothing changed")
        return EXIT_OK
    print(f"replayed {count_text(result.replayed)} from {dead_stream} to {stream}{skipped}")
    if result.replayed:
        print("the consumer group reads them as new messages; store writes are idempotent, so records "
              "already written stay one row")
    if result.error:
        print(f"infersight: replay stopped: {result.error}; run it again to continue", file=sys.stderr)
        return EXIT_REDIS
    return EXIT_OK


def _row(letter: DeadLetter) -> dict[str, Any]:
    return {"dead_id": letter.dead_id, "source_id": letter.source_id, "kind": letter.kind, "reason": letter.reason,
            "deliveries": letter.deliveries, "dead_at": letter.dead_at, "age_s": round(letter.age_s(), 3),
            "consumer": letter.consumer, "poison": letter.poison}


def count_text(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
