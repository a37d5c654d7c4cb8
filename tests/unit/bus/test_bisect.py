"""``bisect.isolate_failures``: which failures prove a record bad, and which only show the sink went
down in the middle of the walk (those must never count against a record)."""

from __future__ import annotations

from collections.abc import Callable

from infersight.bus.bisect import isolate_failures


def sink(bad: set[int], *, down_after: int | None = None) -> tuple[Callable[[list[int]], bool], list[list[int]]]:
    """Refuses any part holding a ``bad`` item; after ``down_after`` calls, refuses everything."""
    calls: list[list[int]] = []

    def deliver(part: list[int]) -> bool:
        calls.append(part)
        if down_after is not None and len(calls) > down_after:
            return False
        return not bad.intersection(part)

    return deliver, calls


def test_one_bad_record_is_proven_and_everything_else_delivered_in_order() -> None:
    deliver, calls = sink({5})
    got = isolate_failures(deliver, list(range(16)))
    assert got is not None and (got.failing, got.suspect, got.untried) == ([5], [], [])
    delivered = [x for part in calls if 5 not in part for x in part]
    assert delivered == [x for x in range(16) if x != 5]


def test_neighbouring_bad_records_are_both_proven() -> None:
    deliver, _ = sink({3, 4})
    got = isolate_failures(deliver, list(range(8)))
    assert got is not None and got.failing == [3, 4] and not got.suspect and not got.untried


def test_a_bad_record_with_nothing_after_it_is_only_a_suspect() -> None:
    """Nothing went through after it: the sink may have gone down just then."""
    deliver, _ = sink({7})
    got = isolate_failures(deliver, list(range(8)))
    assert got is not None and got.failing == [] and got.suspect == [7]


def test_an_outage_that_starts_mid_walk_proves_nothing_and_stops_early() -> None:
    """Was: once one part had gone through, every later part was bisected down to single records,
    and each failure was charged to its record, so good records reached dead-letter in an outage."""
    deliver, calls = sink({600}, down_after=1)  # the first half goes through, then the sink is down
    got = isolate_failures(deliver, list(range(1024)))
    assert got is not None and got.failing == []
    assert sorted(got.suspect + got.untried) == list(range(512, 1024))
    assert len(calls) <= 16  # one walk down the left edge and a few probes, not a call per record


def test_a_sink_down_from_the_start_is_reported_as_such() -> None:
    deliver, calls = sink(set(), down_after=0)
    assert isolate_failures(deliver, list(range(64))) is None
    assert len(calls) == 2


def test_full_bisects_a_batch_dense_with_bad_records_to_the_end() -> None:
    bad = set(range(0, 16, 2)) | {1, 3, 5}
    deliver, _ = sink(bad)
    assert isolate_failures(deliver, list(range(16))) is None  # looks down at first
    deliver, _ = sink(bad)
    got = isolate_failures(deliver, list(range(16)), full=True)
    assert got is not None and sorted(got.failing + got.suspect) == sorted(bad)
    assert got.untried == []
