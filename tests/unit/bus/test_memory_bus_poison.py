"""MemoryBus around a record its sink refuses: the rest flows on, the record goes to dead-letter.

The sink is the real one (StoreSink over DuckDB), and the poison a record the store really refuses
(a ``started_at`` that is not a time): before, the embedded bus retried the whole batch forever and
nothing behind that record reached the store. An outage, by contrast, must dead-letter nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest

from infersight.bus.memory import MemoryBus
from infersight.ingest.sink import StoreSink
from infersight.model import RequestRecord
from infersight.store.base import StoreUnavailable
from infersight.store.duckdb_store import DuckDBStore
from tests.unit.bus.helpers import SECRET, make_record


def poison(i: int) -> RequestRecord:
    record = make_record(i)
    record.started_at = "not-a-time"
    return record


def stored_ids(store: DuckDBStore) -> list[int]:
    rows = store.list_requests(_all(), limit=1000).data
    return sorted(int(r["trace_id"], 16) for r in rows)


def _all():  # type: ignore[no-untyped-def]
    from infersight.store.base import RequestFilter

    return RequestFilter()


def refused_entries(journal_dir: Path) -> list[dict]:  # type: ignore[type-arg]
    files = list(journal_dir.rglob("dead-letter/refused.jsonl"))
    return [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = DuckDBStore(str(tmp_path / "t.duckdb"))
    s.migrate()
    yield s
    s.close()


def wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_record_the_store_refuses_is_dead_lettered_and_the_batch_flows_on(
    tmp_path: Path, store: DuckDBStore, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus([StoreSink(store)], journal_dir=tmp_path / "spool", batch_size=40, flush_interval_s=0.01,
                    max_deliveries=3)
    caplog.set_level(logging.DEBUG, logger="infersight.bus")
    bus.start()
    for i in range(40):
        bus.publish(poison(i) if i == 17 else make_record(i))
    for i in range(40, 60):
        bus.publish(make_record(i))
    assert bus.flush(10)
    bus.stop()
    assert stored_ids(store) == [i for i in range(60) if i != 17]
    stats = bus.stats()
    assert stats.dead_lettered == 1 and stats.delivered == 59 and stats.dropped == 0
    (entry,) = refused_entries(tmp_path / "spool")
    assert entry["record"]["trace_id"] == f"{17:032x}"
    assert "StoreSink refused it 3 times (max_deliveries 3)" == entry["reason"]
    refused = [r for r in caplog.records if r.getMessage() == "exporter refused a record; moved to dead-letter"]
    assert len(refused) == 1 and refused[0].trace_id == f"{17:032x}"  # type: ignore[attr-defined]
    assert SECRET not in caplog.text  # the record's text stays out of the log


def test_a_lone_refused_record_is_topped_up_and_does_not_block_what_follows(
    tmp_path: Path, store: DuckDBStore
) -> None:
    """A batch of one cannot be bisected: the bus adds the next records to it, and bisection then
    shows the store works and the record does not."""
    bus = MemoryBus([StoreSink(store)], journal_dir=tmp_path / "spool", batch_size=1, flush_interval_s=0.01,
                    max_deliveries=2)
    bus.start()
    bus.publish(poison(0))
    wait_for(lambda: bus.stats().export_failures >= 2)  # held alone, retried
    for i in range(1, 11):
        bus.publish(make_record(i))
    assert bus.flush(10)
    bus.stop()
    assert stored_ids(store) == list(range(1, 11))
    assert bus.stats().dead_lettered == 1
    assert [e["record"]["trace_id"] for e in refused_entries(tmp_path / "spool")] == [f"{0:032x}"]


class DownFor:
    """The real sink behind a switch: raises StoreUnavailable while ``down`` (a store outage)."""

    def __init__(self, sink: StoreSink) -> None:
        self.sink = sink
        self.down = True
        self.calls = 0

    def export(self, batch: list[RequestRecord]) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("store down")
        self.sink.export(batch)

    def shutdown(self) -> None:
        return None


@pytest.mark.parametrize("batch_size", [1, 25])
def test_an_outage_dead_letters_nothing(tmp_path: Path, store: DuckDBStore, batch_size: int) -> None:
    down = DownFor(StoreSink(store))
    bus = MemoryBus([down], journal_dir=tmp_path / "spool", batch_size=batch_size, flush_interval_s=0.01,
                    max_deliveries=1, max_backoff_s=0.05)
    bus.start()
    for i in range(50):
        bus.publish(make_record(i))
    wait_for(lambda: down.calls >= 20)  # many rounds, bisected and topped up, all failing
    down.down = False
    assert bus.flush(10)
    bus.stop()
    assert stored_ids(store) == list(range(50))
    stats = bus.stats()
    assert stats.dead_lettered == 0 and stats.delivered == 50 and refused_entries(tmp_path / "spool") == []


class DownAfterFirstWrite:
    """The real sink, which goes down right after its first successful write (mid-bisection) until
    ``recover`` is called. ``idempotent`` like the store it wraps, so the bus may probe with it."""

    idempotent = True

    def __init__(self, sink: StoreSink) -> None:
        self.sink = sink
        self.down = False
        self.wrote = False
        self.calls_down = 0

    def export(self, batch: list[RequestRecord]) -> None:
        if self.down:
            self.calls_down += 1
            raise StoreUnavailable("store down")
        self.sink.export(batch)
        if not self.wrote:
            self.wrote = self.down = True

    def recover(self) -> None:
        self.down = False

    def shutdown(self) -> None:
        return None


def test_an_outage_that_starts_during_a_bisection_dead_letters_only_the_poison(
    tmp_path: Path, store: DuckDBStore
) -> None:
    """Was: after one part of the failed batch went through, every later part was bisected to
    single records, each failure was charged to its record, and retries alone went on charging
    them while the store was down: good records reached dead-letter in under a second."""
    sink = DownAfterFirstWrite(StoreSink(store))
    bus = MemoryBus([sink], journal_dir=tmp_path / "spool", batch_size=40, flush_interval_s=0.01,
                    max_deliveries=2, max_backoff_s=0.05)
    bus.start()
    for i in range(40):
        bus.publish(poison(i) if i == 30 else make_record(i))
    # many rounds in the outage (the first walk alone is ~40 calls), or good records dead-lettered
    wait_for(lambda: sink.calls_down >= 120 or bus.stats().dead_lettered > 0)
    assert bus.stats().dead_lettered == 0
    sink.recover()
    for i in range(40, 45):
        bus.publish(make_record(i))
    assert bus.flush(10)
    bus.stop()
    assert stored_ids(store) == [i for i in range(45) if i != 30]
    assert [e["record"]["trace_id"] for e in refused_entries(tmp_path / "spool")] == [f"{30:032x}"]
    stats = bus.stats()
    assert stats.dead_lettered == 1 and stats.delivered == 44 and stats.dropped == 0


def test_a_poison_record_last_in_a_quiet_bus_is_dead_lettered_by_probing_with_a_stored_one(
    tmp_path: Path, store: DuckDBStore
) -> None:
    """No record comes after it, so only a probe can show the store works: the last record it took
    is sent again (the store's keyed writes make that a no-op), and the poison is not left to
    block the bus until more traffic arrives."""
    bus = MemoryBus([StoreSink(store)], journal_dir=tmp_path / "spool", batch_size=10, flush_interval_s=0.01,
                    max_deliveries=3)
    bus.start()
    for i in range(10):
        bus.publish(poison(i) if i == 9 else make_record(i))
    assert bus.flush(10)
    bus.stop()
    assert stored_ids(store) == list(range(9))
    assert bus.stats().dead_lettered == 1 and bus.stats().delivered == 9
