"""Inspecting and replaying in-process eval dead letters (the embedded shape's memory eval bus).

The Redis eval stream has ``infersight deadletter list|replay --stream evals`` over
``<evaluation.stream>:dead``. The embedded shape dead-letters to a file instead
(``<storage.path>/spool-evals/dead-letter/eval-tasks.jsonl``, see ``dead_letters.py``), which the
running gateway, or its eval process, appends to. The same commands work on it, without stopping
the gateway:

- ``read_dead_letters`` lists the file's entries (never their text).
- ``hand_back`` moves chosen entries out of it, under the file's lock, into the **redrive inbox**
  ``<storage.path>/spool-evals/redrive/`` as one new file (written, synced, then renamed into place).
- ``RedriveInbox.poll``, run every ``POLL_S`` by whichever process owns the eval bus, claims each
  inbox file by renaming it, publishes its tasks to the eval bus (its journal keeps them from then
  on), and deletes it. A stopped gateway picks the inbox up when it starts.

Crash windows only repeat work: a file claimed but not yet deleted is published again at the next
start, and a task handed back twice is evaluated twice. Store writes are idempotent by key, so the
rows stay one each; only the judge is paid twice for such a task.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from infersight.evaluation.dead_letters import DEAD_LETTERS, FILE_NAME, locked
from infersight.model import EvalTask

log = logging.getLogger("infersight.evaluation.redrive")

POLL_S = 2.0
"""How often the eval bus's owner looks into the redrive inbox."""
INBOX = "redrive"
_CLAIMED = ".claimed"


@dataclass(frozen=True)
class LocalDeadLetter:
    """One line of the dead-letter file; ``poison`` when it no longer decodes as an eval task."""

    line: int  # 1-based, in the file as read
    raw: bytes
    dead_at: str | None
    reason: str
    kind: str  # max_deliveries (the evaluators kept failing on it) or undecodable
    poison: bool
    trace_id: str | None
    tenant_id: str | None

    def age_s(self, now: datetime | None = None) -> float:
        try:
            at = datetime.fromisoformat(self.dead_at or "")
        except ValueError:
            return 0.0
        return max(0.0, ((now or datetime.now(timezone.utc)) - at).total_seconds())


@dataclass(frozen=True)
class HandBack:
    handed: int
    skipped_poison: int
    inbox_file: Path | None


def read_dead_letters(dead_dir: Path, reason: str | None = None) -> list[LocalDeadLetter]:
    """The file's entries, oldest first; ``reason`` keeps a kind or reasons containing it (any case)."""
    path = dead_dir / FILE_NAME
    if not path.exists():
        return []
    letters = [_parse(i, raw) for i, raw in enumerate(path.read_bytes().splitlines(), 1) if raw.strip()]
    return [x for x in letters if _matches(x, reason)]


def hand_back(spool: Path, *, reason: str | None = None, limit: int | None = None, include_poison: bool = False,
              dry_run: bool = False) -> HandBack:
    """Move the chosen dead letters (oldest first) into the redrive inbox; see the module doc."""
    dead_dir, inbox = spool / DEAD_LETTERS, spool / INBOX
    with locked(dead_dir):
        path = dead_dir / FILE_NAME
        raw_lines = path.read_bytes().splitlines() if path.exists() else []
        chosen: set[int] = set()
        skipped = 0
        for i, raw in enumerate(raw_lines, 1):
            if not raw.strip():
                continue
            letter = _parse(i, raw)
            if not _matches(letter, reason):
                continue
            if letter.poison and not include_poison:
                skipped += 1
                continue
            if limit is not None and len(chosen) >= limit:
                continue  # keep counting the poison ones skipped
            chosen.add(i)
        if dry_run or not chosen:
            return HandBack(len(chosen), skipped, None)
        inbox.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        target = inbox / name
        _write_atomically(target, [_task_line(raw_lines[i - 1]) for i in sorted(chosen)])
        kept = [raw for i, raw in enumerate(raw_lines, 1) if i not in chosen and raw.strip()]
        _write_atomically(path, kept)  # after the inbox file exists: a crash between repeats, never loses
        return HandBack(len(chosen), skipped, target)


class RedriveInbox:
    """Publishes what ``hand_back`` put in the inbox to the eval bus; ``poll`` runs periodically."""

    def __init__(self, spool: Path, publish: Callable[[EvalTask], None],
                 before_publish: Callable[[EvalTask], None] | None = None) -> None:
        self.inbox = spool / INBOX
        self.publish = publish
        self.before_publish = before_publish  # e.g. the lag tracker's add, as for a new task
        self.redriven = 0
        self._started = False

    def poll(self) -> int:
        """Tasks published this round. Files a crashed owner had claimed are published again first."""
        if not self.inbox.is_dir():
            return 0
        count = 0
        if not self._started:
            self._started = True
            for stale in sorted(self.inbox.glob(f"*.jsonl{_CLAIMED}")):
                count += self._publish_file(stale)
        for path in sorted(self.inbox.glob("*.jsonl")):
            claimed = path.with_name(path.name + _CLAIMED)
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue
            count += self._publish_file(claimed)
        return count

    def _publish_file(self, path: Path) -> int:
        count = bad = 0
        try:
            for raw in path.read_bytes().splitlines():
                if not raw.strip():
                    continue
                try:
                    task = EvalTask.from_dict(orjson.loads(raw))
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    bad += 1  # handed back with --include-poison: it cannot be published, only counted
                    continue
                if self.before_publish is not None:
                    self.before_publish(task)
                self.publish(task)
                count += 1
        except Exception:
            # back in the inbox for the next round (what was published is published again: harmless)
            path.rename(path.with_name(path.name.removesuffix(_CLAIMED)))
            raise
        path.unlink()
        self.redriven += count
        log.info("dead-lettered eval tasks handed back", extra={"fields": {"tasks": count, "undecodable": bad}})
        return count


def _parse(line: int, raw: bytes) -> LocalDeadLetter:
    try:
        entry = orjson.loads(raw)
        if not isinstance(entry, dict):
            raise ValueError("not an object")
    except (orjson.JSONDecodeError, ValueError) as exc:
        return LocalDeadLetter(line, raw, None, f"undecodable: {type(exc).__name__}", "undecodable", True, None, None)
    task_data = entry.get("task")
    try:
        task = EvalTask.from_dict(task_data) if isinstance(task_data, dict) else None
    except (TypeError, ValueError):
        task = None
    reason = str(entry.get("reason") or "")
    dead_at = entry.get("dead_at") if isinstance(entry.get("dead_at"), str) else None
    if task is None:
        return LocalDeadLetter(line, raw, dead_at, reason or "undecodable: no task", "undecodable", True, None, None)
    return LocalDeadLetter(line, raw, dead_at, reason, "max_deliveries", False, task.trace_id, task.tenant_id)


def _matches(letter: LocalDeadLetter, reason: str | None) -> bool:
    return reason is None or letter.kind == reason or reason.lower() in letter.reason.lower()


def _task_line(raw: bytes) -> bytes:
    """The inbox holds tasks; a poison line (handed back with --include-poison) goes as it was."""
    try:
        entry: Any = orjson.loads(raw)
        return orjson.dumps(entry["task"]) if isinstance(entry, dict) and isinstance(entry.get("task"), dict) else raw
    except orjson.JSONDecodeError:
        return raw


def _write_atomically(path: Path, lines: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(b"".join(line + b"\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
