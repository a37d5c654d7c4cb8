"""``infersight deadletter list|replay --stream evals`` on the embedded shape (memory eval bus).

Same commands, flags and exit codes as over Redis (``bus/deadletter_cli.py``), on the dead-letter
file ``<storage.path>/spool-evals/dead-letter/eval-tasks.jsonl`` (``evaluation/redrive.py``). It
works while the gateway runs: ``replay`` hands the entries to the gateway's redrive inbox, and the
gateway, or its eval process, publishes them to its eval bus within ``redrive.POLL_S``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from infersight.config import ConfigError, Settings
from infersight.evaluation.dead_letters import FILE_NAME, dead_letter_dir, spool_dir
from infersight.evaluation.redrive import POLL_S, LocalDeadLetter, hand_back, read_dead_letters

EXIT_OK, EXIT_FILES = 0, 1  # 1, as a Redis failure over Redis


def run_local(settings: Settings, args: argparse.Namespace) -> int:
    storage = Path(settings.storage.path)
    if not storage.is_dir():  # "no dead letters" would tell the operator all is well: they lie elsewhere
        what = "is a file, not a folder" if storage.exists() else "does not exist"
        raise ConfigError(f"{storage} {what}: no gateway keeps its data there; point storage.path at the "
                          "gateway's folder (use the gateway's config)", key="storage.path")
    where = dead_letter_dir(settings.storage.path) / FILE_NAME
    try:
        return _run(settings, args, where)
    except OSError as exc:  # e.g. the file is the gateway user's (0600) and this is another user
        print(f"infersight: cannot use the eval dead letters at {where}: {exc.strerror or exc}; run this as the "
              "gateway's user, with its config", file=sys.stderr)
        return EXIT_FILES


def _run(settings: Settings, args: argparse.Namespace, where: Path) -> int:
    from infersight.bus.deadletter_cli import age_text, count_text

    if args.deadletter_command == "replay":
        result = hand_back(spool_dir(settings.storage.path), reason=args.reason, limit=args.limit,
                           include_poison=args.include_poison, dry_run=args.dry_run)
        skipped = (f"; skipped {result.skipped_poison} poison (undecodable; --include-poison replays them)"
                   if result.skipped_poison else "")
        if args.dry_run:
            print(f"dry run: would hand back {count_text(result.handed)} from {where}{skipped}; nothing changed")
            return EXIT_OK
        print(f"handed back {count_text(result.handed)} from {where}{skipped}")
        if result.handed:
            print(f"a running gateway publishes them to its eval bus within {POLL_S:g} s (a stopped one when it "
                  "starts); store writes are idempotent, so results already written stay one row each")
        return EXIT_OK
    letters = read_dead_letters(dead_letter_dir(settings.storage.path), reason=args.reason)
    shown = letters[: args.limit or 20]
    poison = sum(1 for x in letters if x.poison)
    kinds: dict[str, int] = {}
    for letter in letters:
        kinds[letter.kind] = kinds.get(letter.kind, 0) + 1
    if args.json:
        print(orjson.dumps({"dead_letters": str(where), "total": len(letters), "by_kind": kinds, "poison": poison,
                            "entries": [_row(x) for x in shown]}).decode())
        return EXIT_OK
    what = f" matching {args.reason!r}" if args.reason else ""
    if not letters:
        print(f"{where}: no dead letters{what}")
        return EXIT_OK
    print(f"{where}: {count_text(len(letters))}{what} ({', '.join(f'{k} {n}' for k, n in kinds.items())}); "
          f"{poison} poison (not replayed without --include-poison)")
    print(f"{'LINE':>5} {'TRACE ID':<32} {'TENANT':<16} {'KIND':<15} {'DEAD FOR':>9}  REASON")
    for x in shown:
        print(f"{x.line:>5} {x.trace_id or '-':<32} {(x.tenant_id or '-')[:16]:<16} "
              f"{x.kind + ('*' if x.poison else ''):<15} {age_text(x.age_s()):>9}  {x.reason}")
    if len(shown) < len(letters):
        print(f"(showing the oldest {len(shown)} of {len(letters)}; --limit N shows more)")
    if poison:
        print("* poison: does not decode as an eval task")
    return EXIT_OK


def _row(letter: LocalDeadLetter) -> dict[str, Any]:
    """What ``--json`` shows of an entry: never the task's text."""
    return {"line": letter.line, "trace_id": letter.trace_id, "tenant_id": letter.tenant_id, "kind": letter.kind,
            "reason": letter.reason, "dead_at": letter.dead_at, "age_s": round(letter.age_s(), 3),
            "poison": letter.poison}
