"""The journal's cap (``max_bytes``, config ``bus.max_journal_mb``) bounds the undelivered backlog.

Before, it counted every byte still on disk, records already delivered included: the active
segment is only sealed and deleted at ``segment_bytes`` (8 MB) or ``segment_age_s`` (60 s), so with a
cap below that the journal stayed "full" of delivered records and refused new ones (kept in memory
only, not durable, then dropped) although nothing waited.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from infersight.bus.journal import Journal, JournalFull, Position
from infersight.bus.memory import MemoryBus
from tests.unit.bus.helpers import GateExporter, index_of, make_record

CAP = 32 * 1024
RECORD = len(orjson.dumps(make_record(0), option=orjson.OPT_APPEND_NEWLINE))  # about 900 bytes


def wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("journal-*.jsonl") if p.is_file())


def deliver(journal: Journal, end: Position) -> None:
    """What the bus's writer does after a batch: checkpoint, then delete the segments it passed."""
    journal.checkpoint(end)
    for seq in journal.pending():
        if seq < end.seq:
            journal.ack(seq)


def test_delivered_records_do_not_count_against_the_cap(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=CAP)  # segment_bytes stays at its 8 MB default
    written = 0
    for i in range(CAP * 10 // RECORD):  # ten times the cap, delivered as it goes
        seq, _, end, line = journal.append(make_record(i))  # never JournalFull: nothing waits
        written += RECORD
        if i % 10 == 9:
            deliver(journal, Position(seq, end, line + 1))
            # the files hold at most about one segment (an eighth of the cap) of delivered records
            assert disk_bytes(tmp_path) <= CAP // 8 + 2 * RECORD
    deliver(journal, Position(seq, end, line + 1))
    assert written > 9 * CAP and journal.backlog_bytes == 0


def test_a_backlog_past_the_cap_is_still_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=CAP)
    for i in range(3 * CAP // RECORD):  # three caps delivered first
        seq, _, end, line = journal.append(make_record(i))
        deliver(journal, Position(seq, end, line + 1))
    undelivered = 0
    with pytest.raises(JournalFull):
        while True:
            seq, start, end, _ = journal.append(make_record(undelivered))
            undelivered += end - start
    assert CAP - RECORD < undelivered <= CAP  # a whole cap of backlog fits, not a byte more
    assert disk_bytes(tmp_path) <= CAP + CAP // 8 + RECORD
    assert journal.backlog_bytes == undelivered


def test_the_checkpoint_on_disk_frees_the_cap_after_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=CAP)
    ends = [journal.append(make_record(i)) for i in range(30)]  # about 27 KB: most of the cap
    seq, _, end, line = ends[24]
    journal.checkpoint(Position(seq, end, line + 1))  # records 0..24 were delivered
    journal.close()
    again = Journal(tmp_path, max_bytes=CAP)
    backlog = sum(e - s for _, s, e, _ in ends[25:])
    for i in range(25):  # room for what was delivered before the restart
        seq, start, end, _ = again.append(make_record(100 + i))
        backlog += end - start
    assert again.backlog_bytes == backlog <= CAP


def test_a_bus_whose_exporter_keeps_up_never_drops_however_much_goes_through(tmp_path: Path) -> None:
    """The audit's case: rounds of records, each delivered before the next, many caps in all."""
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=5, batch_size=8, flush_interval_s=0.01,
                    max_journal_bytes=CAP)
    assert bus.journal is not None
    bus.start()
    total = 0
    try:
        for _ in range(60):  # 60 rounds of ~18 KB (about half the cap each): ~1 MB, 33 caps
            for _ in range(20):
                bus.publish(make_record(total))
                total += 1
            assert bus.flush(5)
            wait_for(lambda: disk_bytes(tmp_path) <= CAP // 8 + 2 * RECORD)  # delivered segments go
        stats = bus.stats()
        assert stats.dropped == 0 and stats.delivered == total
        assert bus._journal_errors == 0  # every record was journaled (durable), none held in memory only
        assert stats.spooled > 0  # the small queue overflowed to the journal, as it should
    finally:
        bus.stop()
    assert [index_of(r) for r in sink.records] == list(range(total))


def test_a_bus_drops_and_counts_only_a_backlog_past_the_cap(tmp_path: Path) -> None:
    told: list[int] = []
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path, max_queue=20, batch_size=8, flush_interval_s=0.01,
                    max_journal_bytes=CAP, on_drop=lambda record: told.append(index_of(record)))
    journal = bus.journal
    assert journal is not None
    bus.start()
    try:
        for i in range(300):  # ~8 caps delivered first
            bus.publish(make_record(i))
            if i % 20 == 19:
                assert bus.flush(5)
        assert bus.flush(5)
        assert bus.stats().dropped == 0
        wait_for(lambda: journal.checkpointed() == journal.active_end())  # the checkpoint caught up
        sink.gate.clear()  # the sink hangs: from here on everything is backlog
        for i in range(300, 500):
            bus.publish(make_record(i))
        stats = bus.stats()
        memory_only = sum(1 for item in bus._queue if item[0] < 0)
        journaled = 200 - stats.dropped - memory_only
        assert stats.dropped > 0 and len(told) == stats.dropped  # past the cap: dropped, counted, told
        assert memory_only <= 20
        assert journaled * RECORD > CAP - 2 * RECORD  # a whole cap of backlog was taken first
        assert journal.backlog_bytes <= CAP
        assert disk_bytes(tmp_path) <= CAP + CAP // 8 + 2 * RECORD
        sink.gate.set()
        assert bus.flush(10)
    finally:
        sink.gate.set()
        bus.stop()
    assert sorted(told + [index_of(r) for r in sink.records]) == list(range(500))  # each record one way
