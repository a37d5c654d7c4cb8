"""Judge cost paid and not yet written, kept on disk so that a killed eval process does not forget it.

``LocalSpend`` reads the period's spend from the store (written rows) and adds, from memory, what the
judge was paid for tasks whose rows are not written yet. An eval process killed while the store was
away lost that memory: its replacement started from the store alone, replayed its journal and paid
the judge again, and the budget breaker read half of what was paid.

The ledger is one append-only JSON-lines file in the eval journal's slot (the slot a restarted process
takes over): ``{"k": [trace_id, span_id], "p": period start, "c": cost}`` as each judge call is paid,
``{"w": [[trace_id, span_id], ...]}`` as a batch's rows are written. Reading it back replays both, which
leaves the costs still unwritten. It holds ids and amounts only, never text. It is rewritten whole
(atomically) once the lines far outnumber the live entries. A crash between a store write and its
``w`` line counts that batch's cost twice: the budget errs on the side of spend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import orjson

log = logging.getLogger("infersight.evaluation.spend")

LEDGER_NAME = "spend-unwritten.jsonl"
TaskKey = tuple[str, str]  # (trace_id, span_id), as eval_health's
_COMPACT_SLACK = 1024  # lines beyond twice the live entries before the file is rewritten


class SpendLedger:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lines = 0
        self._failing = False
        self._dirty = False  # a write failed part way: the file may end in half a line

    def load(self) -> dict[TaskKey, tuple[datetime, float]]:
        """The costs the file says were paid and not written (an unreadable line is skipped)."""
        unwritten: dict[TaskKey, tuple[datetime, float]] = {}
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return unwritten
        for line in raw.splitlines():
            self._lines += 1
            try:
                entry = orjson.loads(line)
                if "w" in entry:
                    for trace_id, span_id in entry["w"]:
                        unwritten.pop((trace_id, span_id), None)
                    continue
                key: TaskKey = (entry["k"][0], entry["k"][1])
                period, cost = datetime.fromisoformat(entry["p"]), float(entry["c"])
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # a line cut by the kill, or not ours
            before = unwritten.get(key)
            unwritten[key] = (period, (before[1] if before is not None and before[0] == period else 0.0) + cost)
        return unwritten

    def paid(self, paid_in: datetime, costs: dict[TaskKey, float],
             live: dict[TaskKey, tuple[datetime, float]]) -> None:
        """The judge was paid ``costs``; ``live`` is every cost unwritten now, these included."""
        self._append(b"".join(orjson.dumps({"k": key, "p": paid_in.isoformat(), "c": cost}) + b"\n"
                              for key, cost in costs.items() if cost), live)

    def written(self, keys: Iterable[TaskKey], live: dict[TaskKey, tuple[datetime, float]]) -> None:
        """Rows of ``keys`` are in the store; ``live`` is what stays unwritten (for a rewrite)."""
        keys = list(keys)
        if not keys:
            return
        if self._lines > 2 * len(live) + _COMPACT_SLACK:
            self._rewrite(live)
            return
        self._append(orjson.dumps({"w": keys}) + b"\n", live)

    def _append(self, data: bytes, live: dict[TaskKey, tuple[datetime, float]]) -> None:
        if not data:
            return
        if self._dirty:  # after a failed write, the whole state again: a line glued to half of one
            self._rewrite(live)  # would be lost, and a lost "w" line would count its costs twice
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]  # a short write (disk full) raises on the next
            finally:
                os.close(fd)
            self._lines += data.count(b"\n")
            self._failing = False
        except OSError as exc:
            self._dirty = True
            self._failed(exc)

    def _rewrite(self, live: dict[TaskKey, tuple[datetime, float]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        data = b"".join(orjson.dumps({"k": key, "p": period.isoformat(), "c": cost}) + b"\n"
                        for key, (period, cost) in live.items())
        try:
            try:
                tmp.write_bytes(data)
                tmp.chmod(0o600)
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)
            self._lines, self._dirty, self._failing = len(live), False, False
        except OSError as exc:
            self._dirty = True
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        if not self._failing:  # the budget still counts from memory; a crash now would forget
            log.warning("judge spend ledger not written", extra={"fields": {"error": type(exc).__name__,
                                                                             "errno": exc.errno}})
        self._failing = True
