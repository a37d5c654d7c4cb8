"""Dead letters of in-process evaluation: eval tasks the evaluators kept failing on.

The Redis eval stream has its own dead-letter stream (``<evaluation.stream>:dead``, see docs/bus.md).
The memory bus retries a failing batch forever, which is right for an outage (the store comes back)
but would stall every later task behind one poison task. So the ``EvalSink`` gives up on a task
after ``bus.max_deliveries`` failed attempts and hands it here: one JSON line per task, with the
reason and time, under ``<storage.path>/spool-evals/dead-letter/``. The text in it is already
masked (masking happens before the eval bus); the log line carries only the trace id and reason.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import orjson

from infersight.model import EvalTask

FILE_NAME = "eval-tasks.jsonl"
SPOOL = "spool-evals"  # under storage.path: the eval bus's journal, its dead letters and the redrive inbox


def spool_dir(storage_path: str | Path) -> Path:
    return Path(storage_path) / SPOOL


DEAD_LETTERS = "dead-letter"  # in the spool


def dead_letter_dir(storage_path: str | Path) -> Path:
    return spool_dir(storage_path) / DEAD_LETTERS

LOCK_NAME = ".lock"
"""flock'd by every append and by ``infersight deadletter replay``, which rewrites the file while the
gateway runs (``redrive.py``): an append in the middle of that rewrite would otherwise be lost."""


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """The dead-letter file's lock (``LOCK_NAME`` in ``directory``, created with it)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class JsonlDeadLetters:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self, task: EvalTask, reason: str) -> None:
        line = orjson.dumps({"dead_at": datetime.now(timezone.utc).isoformat(), "reason": reason,
                             "task": task.to_dict()}) + b"\n"
        with self._lock, locked(self.directory):
            # 0600 like the journal: the tasks' text is masked, but it is still tenants' content
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.count += 1

    def read(self) -> list[dict[str, object]]:
        """Every dead letter so far (for tests and inspection)."""
        if not self.path.exists():
            return []
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line.strip()]
