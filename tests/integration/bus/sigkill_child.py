"""A serving process in miniature, for the SIGKILL test: MemoryBus + journal + a slow durable sink.

``publish JOURNAL TARGET N``: publish records 0..N-1, writing each index to stdout (unbuffered) as
soon as publish returned, so the parent knows exactly what was published before it killed us.
``drain JOURNAL TARGET``: start on the same journal (replay), deliver everything, print the bus stats.
TARGET is a sqlite file (MemoryBus into the sink below) or a redis:// URL (RedisStreamBus).

The sink is a sqlite table keyed by (trace_id, span_id), like the store: writing a record twice
keeps one row. Each batch sleeps inside its transaction, so a kill often lands mid-write.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from dataclasses import asdict
from typing import Any

import orjson

from infersight.bus.memory import MemoryBus
from infersight.bus.redis_streams import RedisStreamBus
from infersight.model import RequestRecord
from tests.unit.bus.helpers import make_record


class SqliteSink:
    def __init__(self, path: str, delay_s: float) -> None:
        self.path = path
        self.delay_s = delay_s
        self.db: sqlite3.Connection | None = None

    def export(self, batch: list[RequestRecord]) -> None:
        if self.db is None:  # opened on the writer thread, which is the only one using it
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS records (trace_id TEXT, span_id TEXT, idx INTEGER, PRIMARY KEY (trace_id, span_id))"
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS attempts (n INTEGER)")
            self.db.commit()
        with self.db:
            self.db.executemany(
                "INSERT INTO records VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(r.trace_id, r.span_id, int(r.trace_id, 16)) for r in batch],
            )
            self.db.execute("INSERT INTO attempts VALUES (?)", (len(batch),))
            time.sleep(self.delay_s)

    def shutdown(self) -> None:
        if self.db is not None:
            self.db.close()


def bus(journal: str, target: str) -> MemoryBus:
    options: dict[str, Any] = {
        "journal_dir": journal,
        "max_queue": 200,
        "batch_size": 50,
        "flush_interval_s": 0.01,
        "segment_bytes": 64 * 1024,
    }
    if target.startswith("redis://"):
        return RedisStreamBus(target, exporters=[SlowExporter(0.01)], max_backoff_s=0.2, **options)
    return MemoryBus([SqliteSink(target, delay_s=0.01)], **options)


class SlowExporter:
    """Keeps the Redis shipper behind the publisher, so the kill finds records only in the journal."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def export(self, batch: list[RequestRecord]) -> None:
        time.sleep(self.delay_s)

    def shutdown(self) -> None:
        return None


def main() -> None:
    mode, journal, db = sys.argv[1:4]
    b = bus(journal, db)
    b.start()
    if mode == "publish":
        for i in range(int(sys.argv[4])):
            b.publish(make_record(i))
            os.write(1, b"%d\n" % i)
            if i % 100 == 99:
                time.sleep(0.002)  # a gateway's pace, roughly: the writer gets the GIL now and then
    assert b.flush(60), "not drained"
    b.stop()
    os.write(1, orjson.dumps(asdict(b.stats())) + b"\n")


if __name__ == "__main__":
    main()
