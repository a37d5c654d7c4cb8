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
from dataclasses import dataclass, field
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
    raw: bytes = field(repr=False)  # the whole line, tenants' (masked) text included: never print it
    dead_at: str | None = None
    reason: str = ""
    kind: str = "undecodable"  # or max_deliveries (the evaluators kept failing on it)
    poison: bool = True
    trace_id: str | None = None
    tenant_id: str | None = None

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
    """Move the chosen dead letters (oldest first) into the redrive inbox; see the module doc. A dry
    run only reads: it takes no lock and creates nothing."""
    dead_dir, inbox = spool / DEAD_LETTERS, spool / INBOX
    path = dead_dir / FILE_NAME
    if dry_run:
        chosen, skipped = _choose(_lines(path), reason, limit, include_poison)
        return HandBack(len(chosen), skipped, None)
    if not dead_dir.is_dir():
        return HandBack(0, 0, None)
    with locked(dead_dir):
        raw_lines = _lines(path)
        chosen, skipped = _choose(raw_lines, reason, limit, include_poison)
        if not chosen:
            return HandBack(0, skipped, None)
        inbox.mkdir(exist_ok=True)
        target = inbox / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        owner = dead_dir.stat()
        _write_atomically(target, [_task_line(raw_lines[i - 1]) for i in sorted(chosen)], owner)
        _sync_dir(inbox)  # the inbox file is durable before the entries leave the dead-letter file
        kept = [raw for i, raw in enumerate(raw_lines, 1) if i not in chosen and raw.strip()]
        _write_atomically(path, kept, owner)  # a crash before this repeats the hand-back, never loses
        return HandBack(len(chosen), skipped, target)


def prune_expired(spool: Path, text_days: Callable[[str], int], now: float | None = None) -> int:
    """Drop the dead letters whose task is past its tenant's text retention (the text the store
    deletes at ``text_days`` must not outlive it here); a retention pass calls this. Undecodable
    lines are aged by nothing and kept. Returns how many were dropped."""
    dead_dir = spool / DEAD_LETTERS
    path = dead_dir / FILE_NAME
    if not path.exists():
        return 0
    now = time.time() if now is None else now
    with locked(dead_dir):
        raw_lines = [raw for raw in _lines(path) if raw.strip()]
        kept = [raw for raw in raw_lines if not _expired(_json(raw, "task"), text_days, now)]
        if len(kept) < len(raw_lines):
            _write_atomically(path, kept, dead_dir.stat())
    return len(raw_lines) - len(kept)


def prune_expired_stream(client: Any, stream: str, text_days: Callable[[str], int], now: float | None = None,
                         page: int = 500) -> int:
    """``prune_expired`` for the scale-out shape: entries of the Redis eval dead-letter stream
    (``<evaluation.stream>:dead``, the original fields under ``field:``) whose task is past its
    tenant's text retention are deleted. Returns how many."""
    now = time.time() if now is None else now
    dropped, start = 0, "-"
    while True:
        entries = client.xrange(stream, min=start, max="+", count=page)
        expired = [entry_id for entry_id, fields in entries
                   if _expired(_json(fields.get(b"field:r") or b"null"), text_days, now)]
        if expired:
            dropped += int(client.xdel(stream, *expired))
        if len(entries) < page:
            return dropped
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _json(raw: bytes, key: str | None = None) -> Any:
    """The JSON value of ``raw`` (its ``key`` when given), or None when it does not decode."""
    try:
        value = orjson.loads(raw)
        return value.get(key) if key is not None and isinstance(value, dict) else value
    except orjson.JSONDecodeError:
        return None


def _expired(task: Any, text_days: Callable[[str], int], now: float) -> bool:
    """A dead letter's task (a dict) is past its tenant's text retention; one that is not a task is
    aged by nothing: kept."""
    from infersight.evaluation.eval_health import epoch_of

    if not isinstance(task, dict):
        return False
    started = epoch_of(str(task.get("started_at") or ""))
    return started is not None and started < now - text_days(str(task.get("tenant_id") or "")) * 86_400


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def _choose(raw_lines: list[bytes], reason: str | None, limit: int | None,
            include_poison: bool) -> tuple[set[int], int]:
    """The 1-based line numbers to hand back, and how many poison lines were skipped."""
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
    return chosen, skipped


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
        """Tasks published this round. Files a crashed owner had claimed are published again first.

        A claimed file is named with its claimant's pid (``<name>.jsonl.claimed-<pid>``): with
        ``--workers N`` every worker polls one inbox, and a worker that starts while a live peer
        publishes a file must not publish it again (the judge would be paid twice)."""
        if not self.inbox.is_dir():
            return 0
        count = 0
        mine = f"{_CLAIMED}-{os.getpid()}"
        if not self._started:
            self._started = True
            for stale in sorted(self.inbox.glob(f"*.jsonl{_CLAIMED}*")):
                if not _claimant_alive(stale):  # claimed again first: a peer starting now may see it too
                    count += self._claim_and_publish(stale, stale.name[:stale.name.rindex(_CLAIMED)] + mine)
        for path in sorted(self.inbox.glob("*.jsonl")):
            count += self._claim_and_publish(path, path.name + mine)
        return count

    def _claim_and_publish(self, path: Path, claimed_name: str) -> int:
        """Rename ``path`` to this process's claim, then publish it; a peer that renamed it first has it."""
        claimed = path.with_name(claimed_name)
        try:
            path.rename(claimed)
        except FileNotFoundError:
            return 0
        return self._publish_file(claimed)

    def _publish_file(self, path: Path) -> int:
        count = 0
        bad: list[bytes] = []
        try:
            for raw in path.read_bytes().splitlines():
                if not raw.strip():
                    continue
                task = _task(raw)
                if task is None:
                    bad.append(raw)  # handed back with --include-poison: it cannot be published
                    continue
                if self.before_publish is not None:
                    self.before_publish(task)
                self.publish(task)
                count += 1
        except Exception:
            # back in the inbox for the next round (what was published is published again: harmless)
            path.rename(path.with_name(path.name[:path.name.rindex(_CLAIMED)]))
            raise
        if bad:  # dead-lettered again, as Redis does with poison it replays
            dead_dir = self.inbox.parent / DEAD_LETTERS
            with locked(dead_dir), (dead_dir / FILE_NAME).open("ab") as out:
                out.write(b"".join(line + b"\n" for line in bad))
        path.unlink()
        self.redriven += count
        log.info("dead-lettered eval tasks handed back", extra={"fields": {"tasks": count, "undecodable": len(bad)}})
        return count


def _claimant_alive(path: Path) -> bool:
    """Whether the process that claimed ``path`` still runs (not this one: it has claimed nothing
    yet when it looks, and a container restarted gives its process the same pid again)."""
    _, _, pid_text = path.name.rpartition(f"{_CLAIMED}-")
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False  # no pid (a file claimed before pids were recorded), or a former life of ours
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _task(raw: bytes) -> EvalTask | None:
    """The eval task of an inbox line, or None when it is not one (any JSON, any shape)."""
    try:
        data = orjson.loads(raw)
        return EvalTask.from_dict(data) if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - a line that is not a task is poison, whatever fails on it
        return None


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
    except Exception:  # noqa: BLE001 - not a task, whatever fails on it: poison
        task = None
    reason = str(entry.get("reason") or "")
    dead_at = entry.get("dead_at") if isinstance(entry.get("dead_at"), str) else None
    if task is None:
        return LocalDeadLetter(line, raw, dead_at, reason or "undecodable: no task", "undecodable", True, None, None)
    return LocalDeadLetter(line, raw, dead_at, reason, "max_deliveries", False, task.trace_id, task.tenant_id)


def _matches(letter: LocalDeadLetter, reason: str | None) -> bool:
    """As over Redis: the kind, or text in the reason, in any case."""
    return reason is None or letter.kind == reason.lower() or reason.lower() in letter.reason.lower()


def _task_line(raw: bytes) -> bytes:
    """The inbox holds tasks; a poison line (handed back with --include-poison) goes as it was."""
    try:
        entry: Any = orjson.loads(raw)
        return orjson.dumps(entry["task"]) if isinstance(entry, dict) and isinstance(entry.get("task"), dict) else raw
    except orjson.JSONDecodeError:
        return raw


def _write_atomically(path: Path, lines: list[bytes], owner: os.stat_result) -> None:
    """Write, sync and rename into place; mode 0600 and, when run as root, the dead-letter folder's
    owner, so that the gateway's user can still append to or read what an operator's command wrote."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
                os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
            out.write(b"".join(line + b"\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
