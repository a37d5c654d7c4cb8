"""MemoryBus: delivery, backoff without loss, bounded memory with a disk spool, replay after restart."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from infersight.bus.journal import Journal, Position
from infersight.bus.memory import MemoryBus
from tests.unit.bus.helpers import GateExporter, index_of, make_record


def wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("journal-*.jsonl") if p.parent.name.startswith("slot-"))


@pytest.mark.parametrize("journal", [False, True])
def test_delivers_every_record_in_order(tmp_path: Path, journal: bool) -> None:
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path / "j" if journal else None, batch_size=64, flush_interval_s=0.01)
    bus.start()
    for i in range(500):
        bus.publish(make_record(i))
    assert bus.flush(5)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(500))
    stats = bus.stats()
    assert (stats.published, stats.delivered, stats.dropped, stats.queued) == (500, 500, 0, 0)
    assert max(len(b) for b in sink.batches) <= 64
    if journal:
        assert segments(tmp_path / "j") == []  # all delivered: nothing left to replay


def test_a_failing_exporter_is_retried_with_backoff_and_nothing_is_dropped(tmp_path: Path) -> None:
    flaky, steady = GateExporter(failing=4), GateExporter()
    bus = MemoryBus([flaky, steady], journal_dir=tmp_path, batch_size=10, flush_interval_s=0.01)
    bus.start()
    for i in range(30):
        bus.publish(make_record(i))
    assert bus.flush(10)
    bus.stop()
    assert [index_of(r) for r in flaky.records] == list(range(30))
    assert [index_of(r) for r in steady.records] == list(range(30))  # each exporter gets each batch once
    stats = bus.stats()
    assert stats.export_failures == 4 and stats.dropped == 0 and stats.delivered == 30


def test_memory_stays_bounded_and_the_overflow_spools_to_disk(tmp_path: Path) -> None:
    sink = GateExporter()
    sink.gate.clear()  # the sink hangs
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=50, batch_size=20, flush_interval_s=0.01)
    bus.start()
    for i in range(2000):
        bus.publish(make_record(i))
        assert len(bus._queue) <= 50
    stats = bus.stats()
    assert stats.spooled >= 2000 - 50 - 20 and stats.dropped == 0 and stats.queued >= 1950
    sink.gate.set()
    assert bus.flush(10)
    for i in range(2000, 2030):  # back to memory once the spool is read
        bus.publish(make_record(i))
    assert bus.flush(10)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(2030))
    assert bus.stats().spooled == stats.spooled and bus.stats().queued == 0


def test_spool_spanning_many_segments_is_read_back_and_deleted(tmp_path: Path) -> None:
    sink = GateExporter()
    sink.gate.clear()
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=10, batch_size=25, segment_bytes=4096)
    bus.start()
    for i in range(400):
        bus.publish(make_record(i))
    assert len(segments(tmp_path)) > 10
    sink.gate.set()
    assert bus.flush(10)
    assert len(segments(tmp_path)) <= 1  # only the active segment may remain
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(400))
    assert segments(tmp_path) == []


def test_records_left_by_a_dead_process_replay_on_start(tmp_path: Path) -> None:
    crashed = MemoryBus([GateExporter()], journal_dir=tmp_path, segment_bytes=4096)
    for i in range(300):  # never started: nothing delivered, everything journaled
        crashed.publish(make_record(i))
    assert crashed.journal is not None
    crashed.journal.close()  # what the kernel does when the process dies

    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, batch_size=64, flush_interval_s=0.01)
    bus.publish(make_record(300))  # published before start: must come after the replay
    bus.start()
    bus.publish(make_record(301))
    assert bus.flush(10)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(302))
    assert bus.stats().replayed == 300 and bus.stats().dropped == 0


def test_replay_resumes_at_the_checkpoint(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    ends = [journal.append(make_record(i)) for i in range(100)]
    seq, _, end, line = ends[59]
    journal.checkpoint(Position(seq, end, line + 1))  # records 0..59 were delivered
    journal.close()
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, flush_interval_s=0.01)
    bus.start()
    assert bus.flush(5)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(60, 100))


def test_a_corrupt_spool_file_is_dead_lettered_and_the_rest_flows(tmp_path: Path) -> None:
    lines = [orjson.dumps(make_record(i).to_dict()) for i in range(5)]
    lines[2] = b"\x00\xff not json"
    (tmp_path / "slot-000").mkdir()
    (tmp_path / "slot-000" / "journal-000000000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "slot-000" / "journal-000000000002.jsonl").write_bytes(b"garbage without newline")
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, flush_interval_s=0.01)
    bus.start()
    bus.publish(make_record(5))
    assert bus.flush(5)
    bus.stop()
    assert [index_of(r) for r in sink.records] == [0, 1, 3, 4, 5]
    stats = bus.stats()
    assert stats.dead_lettered == 2 and stats.replayed == 4
    assert sorted(p.name for p in (tmp_path / "slot-000" / "dead-letter").iterdir()) == [
        "journal-000000000001.jsonl",
        "journal-000000000002.jsonl",
    ]


def test_stop_while_the_sink_is_down_keeps_the_records_for_the_next_start(tmp_path: Path) -> None:
    down = GateExporter(failing=10**6)
    bus = MemoryBus([down], journal_dir=tmp_path, flush_interval_s=0.01)
    bus.start()
    for i in range(50):
        bus.publish(make_record(i))
    bus.stop(timeout_s=0.3)
    assert bus.stats().dropped == 0 and segments(tmp_path)
    sink = GateExporter()
    again = MemoryBus([sink], journal_dir=tmp_path, flush_interval_s=0.01)
    again.start()
    assert again.flush(5)
    again.stop()
    assert [index_of(r) for r in sink.records] == list(range(50))


def test_without_a_journal_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    bus = MemoryBus([GateExporter()], max_queue=10)
    for i in range(15):
        bus.publish(make_record(i))
    assert bus.stats().dropped == 5 and bus.stats().spooled == 0


def test_a_failing_disk_never_reaches_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, flush_interval_s=0.01)
    assert bus.journal is not None

    def broken(record: object) -> tuple[int, int, int, int]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bus.journal, "append", broken)
    bus.start()
    for i in range(10):
        bus.publish(make_record(i))  # held in memory instead
    assert bus.flush(5)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(10))


def test_publish_with_the_journal_is_cheap(tmp_path: Path) -> None:
    bus = MemoryBus([GateExporter()], journal_dir=tmp_path)
    records = [make_record(i) for i in range(20_000)]
    started = time.perf_counter()
    for record in records:
        bus.publish(record)
    per_publish_us = (time.perf_counter() - started) / len(records) * 1e6
    bus.stop(timeout_s=5)
    assert per_publish_us < 100, f"{per_publish_us:.1f} us per publish"  # about 6 us on a laptop core


def test_a_full_journal_falls_back_to_memory_then_drops_and_counts(tmp_path: Path) -> None:
    sink = GateExporter()
    sink.gate.clear()
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=20, batch_size=5, max_journal_bytes=20_000)
    for i in range(200):
        bus.publish(make_record(i))  # never raises
    stats = bus.stats()
    assert stats.published == 200 and stats.dropped > 0
    assert stats.dropped + stats.spooled + len(bus._queue) == 200  # every record is accounted for
    sink.gate.set()
    bus.start()
    assert bus.flush(5)
    bus.stop()
    assert len(sink.records) == 200 - stats.dropped


def test_the_owner_is_told_of_each_record_the_bus_drops(tmp_path: Path) -> None:
    """The eval bus's owner takes a dropped task out of its lag (or the breaker stays open)."""
    told: list[int] = []
    sink = GateExporter()
    sink.gate.clear()
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=20, batch_size=5, max_journal_bytes=20_000,
                    on_drop=lambda record: told.append(index_of(record)))
    for i in range(200):
        bus.publish(make_record(i))
    assert len(told) == bus.stats().dropped > 0
    sink.gate.set()
    bus.start()
    assert bus.flush(5)
    bus.stop()
    assert sorted(told + [index_of(r) for r in sink.records]) == list(range(200))  # each record one way


def test_an_unexpected_writer_error_resumes_from_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, batch_size=10, flush_interval_s=0.01)
    assert bus.journal is not None
    real = bus.journal.checkpoint
    calls = {"n": 0}

    def flaky(position: Position) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug")
        real(position)

    monkeypatch.setattr(bus.journal, "checkpoint", flaky)
    for i in range(100):
        bus.publish(make_record(i))
    bus.start()
    assert bus.flush(10)
    bus.stop()
    got = [index_of(r) for r in sink.records]
    assert sorted(set(got)) == list(range(100))  # nothing lost; the failed batch came again
    assert len(got) - len(set(got)) == 10  # records 20..29, whose checkpoint failed


def test_workers_sharing_one_spool_directory_each_get_a_slot(tmp_path: Path) -> None:
    sinks = [GateExporter(), GateExporter()]
    buses = [MemoryBus([sink], journal_dir=tmp_path, flush_interval_s=0.01) for sink in sinks]
    for bus in buses:
        bus.start()
    for i in range(100):
        buses[i % 2].publish(make_record(i))
    for bus in buses:
        assert bus.flush(5)
        bus.stop()
    assert sorted(index_of(r) for sink in sinks for r in sink.records) == list(range(100))
    assert segments(tmp_path) == []


def test_a_backlog_goes_out_in_batches_up_to_max_batch_size_from_memory_and_the_spool(tmp_path: Path) -> None:
    sink = GateExporter()
    sink.gate.clear()  # the sink hangs while a backlog builds, in memory and on disk
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=300, batch_size=20, max_batch_size=250,
                    flush_interval_s=0.01)
    bus.start()
    for i in range(3000):
        bus.publish(make_record(i))
    assert bus.stats().spooled > 2000
    sink.gate.set()
    assert bus.flush(10)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(3000))
    sizes = [len(b) for b in sink.batches]
    assert max(sizes) == 250  # the backlog is written in large batches, never larger than the cap
    assert sum(1 for s in sizes if s == 250) >= 3000 // 250 - 3


def test_max_batch_size_below_batch_size_is_raised_to_it(tmp_path: Path) -> None:
    sink = GateExporter()
    bus = MemoryBus([sink], batch_size=64, max_batch_size=8, flush_interval_s=0.01)
    bus.start()
    for i in range(200):
        bus.publish(make_record(i))
    assert bus.flush(5)
    bus.stop()
    assert len(sink.records) == 200 and max(len(b) for b in sink.batches) <= 64


def test_a_steady_trickle_is_written_once_per_flush_interval_not_once_per_write(tmp_path: Path) -> None:
    class SlowSink(GateExporter):
        def export(self, batch):  # type: ignore[no-untyped-def]
            time.sleep(0.02)  # a store write's fixed cost
            super().export(batch)

    sink = SlowSink()
    bus = MemoryBus([sink], journal_dir=tmp_path, batch_size=1000, flush_interval_s=0.2)
    bus.start()
    t0 = time.monotonic()
    for i in range(240):  # 200 records/s for 1.2 s: ~4 arrive during each 20 ms write
        bus.publish(make_record(i))
        time.sleep(max(0.0, t0 + (i + 1) * 0.005 - time.monotonic()))
    assert bus.flush(5)
    bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(240))
    # one write per flush interval (~6) plus the final flush; chasing the trickle would be ~50
    assert len(sink.batches) <= 10, [len(b) for b in sink.batches]
