"""Append records as JSON lines under ``<storage.path>/records/``.

One file per UTC day and process (``records-2026-11-22-<pid>.jsonl``), so several gateway workers
never interleave partial lines. Kept as the file exporter once the store exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

import orjson

from infersight.model import RequestRecord


class JsonlExporter:
    def __init__(self, storage_path: str | os.PathLike[str]) -> None:
        self.directory = Path(storage_path) / "records"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._day = ""
        self._file: IO[bytes] | None = None

    def _handle(self) -> IO[bytes]:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        if day != self._day or self._file is None:
            if self._file is not None:
                self._file.close()
            self._day = day
            # 0600 like the journal the records come from: every tenant's requests are in it
            fd = os.open(self.directory / f"records-{day}-{os.getpid()}.jsonl",
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._file = os.fdopen(fd, "ab")
        return self._file

    def export(self, batch: list[RequestRecord]) -> None:
        handle = self._handle()
        handle.write(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in batch))
        handle.flush()

    def shutdown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(storage_path: str | os.PathLike[str]) -> list[RequestRecord]:
    """Every record written so far, oldest file first (for tests, the demo and ad-hoc reads)."""
    out: list[RequestRecord] = []
    for file in sorted((Path(storage_path) / "records").glob("records-*.jsonl")):
        with open(file, "rb") as handle:
            out.extend(RequestRecord.from_dict(orjson.loads(line)) for line in handle if line.strip())
    return out
