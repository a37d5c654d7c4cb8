"""The journal: append/read, segment rotation and ack, checkpoints, corruption to dead-letter."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from infersight.bus.journal import Journal, JournalFull, Position
from tests.unit.bus.helpers import SECRET, index_of, make_record


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("journal-*.jsonl") if p.parent.name.startswith("slot-"))


def slot(root: Path, index: int = 0) -> Path:
    """Where the first process's files live (written by hand here to stage a crash)."""
    path = root / f"slot-{index:03d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_append_then_read_round_trips_every_field(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    records = [make_record(i) for i in range(5)]
    positions = [journal.append(r) for r in records]
    assert [p[0] for p in positions] == [1] * 5
    assert [p[3] for p in positions] == [0, 1, 2, 3, 4]
    assert positions[1][1] == positions[0][2]  # each line starts where the last ended
    assert [r.to_dict() for r in journal.read(1)] == [r.to_dict() for r in records]
    line = (slot(tmp_path) / "journal-000000000001.jsonl").read_bytes().splitlines()[0]
    assert orjson.loads(line) == records[0].to_dict()  # the on-disk format is to_dict's


def test_segments_rotate_by_size_and_ack_deletes_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=2000)
    for i in range(20):
        journal.append(make_record(i))
    pending = journal.pending()
    assert len(pending) > 3 and pending == sorted(pending)
    assert [index_of(r) for seq in pending for r in journal.read(seq)] == list(range(20))
    with pytest.raises(ValueError):
        journal.ack(journal.active_seq)  # still being written
    for seq in pending[:-1]:
        journal.ack(seq)
    assert journal.pending() == pending[-1:]
    assert segments(tmp_path) == [f"journal-{pending[-1]:012d}.jsonl"]


def test_segments_rotate_by_age(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_age_s=0.0)
    for i in range(3):
        journal.append(make_record(i))
    assert journal.pending() == [1, 2, 3]


def test_corrupt_and_torn_lines_go_to_dead_letter_and_the_rest_flows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [orjson.dumps(make_record(i).to_dict()) for i in range(3)]
    (slot(tmp_path) / "journal-000000000004.jsonl").write_bytes(
        good[0] + b"\n" + b'{"trace_id": "x", "prompt_text": "' + SECRET.encode() + b'" garbage\n'
        + good[1] + b"\n" + b"[1, 2]\n" + good[2] + b"\n" + good[0][:40]  # torn: no newline
    )  # fmt: skip
    journal = Journal(tmp_path)
    assert journal.first_seq == 5 and journal.pending() == [4]
    with caplog.at_level(logging.ERROR, logger="infersight.bus.journal"):
        records = list(journal.read(4))
    assert [index_of(r) for r in records] == [0, 1, 2]
    assert journal.dead_lettered == 3
    dead = [
        orjson.loads(line)
        for line in (slot(tmp_path) / "dead-letter" / "journal-000000000004.jsonl").read_bytes().splitlines()
    ]
    assert [d["line"] for d in dead] == [2, 4, 6]
    assert "truncated" in dead[2]["reason"] and SECRET in dead[0]["raw"]  # kept for inspection, on disk
    logged = [r for r in caplog.records if r.getMessage().startswith("journal line unreadable")]
    assert [(r.file, r.line) for r in logged] == [("journal-000000000004.jsonl", n) for n in (2, 4, 6)]  # type: ignore[attr-defined]
    assert SECRET not in caplog.text and all(SECRET not in str(vars(r)) for r in logged)


def test_read_batch_stops_at_the_committed_end_of_the_active_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(4):
        journal.append(make_record(i))
    end = journal.readable_end(1)
    assert end is not None
    batch, after, done = journal.read_batch(Position(1, 0, 0), 3, end)
    assert [index_of(r) for r, _ in batch] == [0, 1, 2] and not done
    assert batch[-1][1] == after == Position(1, after.offset, 3)
    batch, after, done = journal.read_batch(after, 10, end)
    assert [index_of(r) for r, _ in batch] == [3] and done and after[:2] == journal.active_end()[:2]


def test_processes_sharing_a_root_get_their_own_slots(tmp_path: Path) -> None:
    first, second = Journal(tmp_path), Journal(tmp_path)  # two owners, as with serve --workers 2
    assert (first.directory.name, second.directory.name) == ("slot-000", "slot-001")
    first.append(make_record(0))
    second.append(make_record(1))
    first.close()
    third = Journal(tmp_path)  # a restarted worker takes the slot its predecessor left
    assert third.directory.name == "slot-000" and [index_of(r) for r in third.read(1)] == [0]
    assert third.first_seq == 2  # what it found there is replay


def test_a_slot_nobody_holds_any_more_is_adopted(tmp_path: Path) -> None:
    first, second = Journal(tmp_path, segment_bytes=1500), Journal(tmp_path, segment_bytes=1500)
    for i in range(10):
        second.append(make_record(i))
    second.rotate()
    mid = second.read_batch(Position(2, 0, 0), 2)[1]  # the first 2 records of segment 2 were delivered
    second.checkpoint(mid)
    delivered = 0
    for seq in second.pending():
        if seq < 2:
            delivered += sum(1 for _ in second.read(seq))
            second.ack(seq)
    first.append(make_record(100))
    first.close()
    second.close()  # the worker count shrank: slot-001 is nobody's now
    survivor = Journal(tmp_path)
    assert survivor.directory.name == "slot-000"
    got = [index_of(r) for seq in survivor.pending() for r in survivor.read(seq)]
    assert got == [100, *range(delivered + 2, 10)]  # own leftovers first, then the adopted tail
    assert segments(tmp_path / "slot-001") == [] and not (tmp_path / "slot-001" / "checkpoint.json").exists()


def test_segment_numbers_never_repeat_once_checkpointed(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(make_record(0))
    journal.rotate()
    journal.checkpoint(Position(1, 10, 1))
    journal.ack(1)
    journal.close()
    again = Journal(tmp_path)
    assert again.checkpointed() == Position(1, 10, 1)
    assert again.first_seq == 2 and again.append(make_record(1))[0] == 2


def test_an_unreadable_checkpoint_means_replay_everything(tmp_path: Path) -> None:
    (slot(tmp_path) / "checkpoint.json").write_bytes(b"{torn")
    assert Journal(tmp_path).checkpointed() is None


def test_reads_across_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import infersight.bus.journal as module

    monkeypatch.setattr(module, "_READ_CHUNK", 97)  # far smaller than a line
    journal = Journal(tmp_path)
    for i in range(50):
        journal.append(make_record(i))
    journal.rotate()
    batch, after, done = journal.read_batch(Position(1, 0, 0), 20)
    assert [index_of(r) for r, _ in batch] == list(range(20)) and not done
    rest = [index_of(r) for r, _ in journal.read_batch(after, 100)[0]]
    assert rest == list(range(20, 50)) and journal.dead_lettered == 0


def test_max_bytes_bounds_the_spool_and_acks_free_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=3000, segment_bytes=1000)
    appended = 0
    with pytest.raises(JournalFull):
        while True:
            journal.append(make_record(appended))
            appended += 1
    assert 0 < journal.size_bytes <= 3000 and appended >= 3
    journal.rotate()
    for seq in journal.pending():
        journal.ack(seq)
    assert journal.size_bytes == 0
    journal.append(make_record(0))


def test_a_closed_journal_refuses_appends(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.close()
    with pytest.raises(OSError, match="closed"):
        journal.append(make_record(0))
