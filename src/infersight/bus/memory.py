"""The embedded bus: a bounded in-memory queue in front of a disk journal, drained by one writer.

``publish`` appends the record to the journal (one ``os.write``: the record now survives a SIGKILL)
and queues it in memory. One writer thread ships a batch to every exporter once ``batch_size``
records wait (or whatever waited ``flush_interval_s``); a backlog goes out in batches of up to
``max_batch_size``. A failing exporter keeps its batch and is retried with
backoff, forever while running: nothing is dropped because a sink is slow or down.

Memory stays bounded: when the queue is full, records live only in the journal ("spooled") and the
writer reads them back from disk once it has drained memory. Delivery order is journal order, which
is what lets the writer delete a segment as soon as the delivery point moves past it, and write a
checkpoint after each batch. ``start`` replays what an earlier process left in the journal (from the
checkpoint) before anything new. See journal.py for the crash-consistency argument.

``max_journal_bytes`` bounds the undelivered backlog in the journal (from the checkpoint on), not
what was delivered and waits for its segment to be deleted: a bus whose exporters keep up never
reaches it, however much goes through.

Without a journal (``journal_dir=None``, for tests and the demo) a full queue drops and counts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from infersight.bus.base import BusStats, Exporter, SinkUnavailable
from infersight.bus.bisect import isolate_failures
from infersight.bus.journal import Journal, Position
from infersight.model import RequestRecord

log = logging.getLogger("infersight.bus")

# (journal seq or -1 when the record is not in the journal, end offset, end line, record)
_Item = tuple[int, int, int, RequestRecord]


class MemoryBus:
    def __init__(
        self,
        exporters: list[Exporter],
        *,
        journal_dir: str | os.PathLike[str] | None = None,
        max_queue: int = 100_000,
        batch_size: int = 512,
        max_batch_size: int | None = None,
        flush_interval_s: float = 0.5,
        max_backoff_s: float = 5.0,
        segment_bytes: int = 8 << 20,
        segment_age_s: float = 60.0,
        max_journal_bytes: int | None = None,
        record_type: type[Any] = RequestRecord,
        max_deliveries: int = 5,
        on_drop: Callable[[Any], None] | None = None,
        journal_carry: tuple[str, ...] = (),
    ) -> None:
        self._exporters = list(exporters)
        # told of each record published and then dropped while running (memory full with no
        # journal to hold it, or a publish error): the eval bus's owner takes it out of its lag
        self._on_drop = on_drop
        self._max_deliveries = max(1, max_deliveries)  # failures alone, while others pass, before dead-letter
        self._refused = 0  # records an exporter refused max_deliveries times: dead-lettered
        self._queue: deque[_Item] = deque()
        self._max_queue = max_queue
        self._batch_size = batch_size  # this many waiting wakes the writer at once
        # ...and a backlog goes out in batches of up to this many: a store write costs about the
        # same for 1,000 rows as for 5,000 (DuckDB 48k -> 100k rows/s, chdb 14k -> 43k)
        self._max_batch = max(batch_size, max_batch_size or batch_size)
        self._flush_interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._segment_age_s = segment_age_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._stats = BusStats()
        self._lock = threading.Lock()  # guards the queue, the spill cursor and journal order
        self._inflight = 0
        self._abandoned = False  # stop gave up on a batch: the journal, not memory, now has it
        self._closed = False  # stopped: nothing delivers a record published from now on
        self._inflight_unjournaled = 0  # records of the batch in flight that only memory holds
        self._late_logged = 0.0
        self._spill: Position | None = None  # where the writer reads on from, while records are disk-only
        self._spooled_unread = 0
        self._journal_errors = 0
        self._journal_error_logged = 0.0
        self._journal: Journal | None = None
        if journal_dir is not None:
            self._journal = Journal(
                journal_dir, segment_bytes=segment_bytes, segment_age_s=segment_age_s, max_bytes=max_journal_bytes,
                record_type=record_type, carry=journal_carry,
            )
            self._spill = self._replay_start(self._journal)

    @property
    def journal(self) -> Journal | None:
        return self._journal

    def add_exporter(self, exporter: Exporter) -> None:
        """Attach another consumer (e.g. the demo's live table) before ``start``."""
        self._exporters.append(exporter)

    # -- the hot path ----------------------------------------------------------------------------

    def publish(self, record: RequestRecord) -> None:
        """Journal + enqueue: a few microseconds, never raises, never blocks on a sink."""
        try:
            with self._lock:
                self._stats.published += 1
                if self._closed:
                    self._dropped_after_stop()
                    return
                seq = start = end = line = -1
                if self._journal is not None:
                    try:
                        seq, start, end, line = self._journal.append(record)
                    except OSError as exc:
                        self._journal_failed(exc)
                if seq >= 0 and (self._spill is not None or len(self._queue) >= self._max_queue):
                    if self._spill is None:
                        self._spill = Position(seq, start, line)
                        self._wake.set()
                    self._stats.spooled += 1
                    self._spooled_unread += 1
                    return
                if len(self._queue) >= self._max_queue:
                    self._stats.dropped += 1  # memory full and no journal to hold it
                else:
                    self._queue.append((seq, end, line + 1, record))
                    if len(self._queue) >= self._batch_size:
                        self._wake.set()
                    return
        except Exception:  # noqa: BLE001 - the gateway must never see a bus error
            self._stats.dropped += 1
            log.exception("bus publish failed; record dropped")
        self._tell_dropped(record)

    def _tell_dropped(self, record: RequestRecord) -> None:
        if self._on_drop is not None:
            try:
                self._on_drop(record)
            except Exception:  # noqa: BLE001 - the hot path never sees a callback's error
                log.exception("bus on_drop callback failed")

    def _dropped_after_stop(self) -> None:
        """A record published after ``stop`` (a request that outlived the shutdown): no writer and
        no open journal remain to keep it, so it is counted, never queued to vanish."""
        self._stats.dropped += 1
        now = time.monotonic()
        if now - self._late_logged > 60.0:
            self._late_logged = now
            log.error("record published after the bus stopped; dropped", extra={"dropped": self._stats.dropped})

    def _journal_failed(self, exc: OSError) -> None:
        """Disk full, ``max_journal_bytes`` of undelivered records reached (records already
        delivered do not count: the checkpoint after each batch frees them) or disk gone: keep
        serving, hold records in memory only (dropped and counted once that is full too), say so
        once a minute."""
        self._journal_errors += 1
        now = time.monotonic()
        if now - self._journal_error_logged > 60.0:
            self._journal_error_logged = now
            log.error(
                "bus journal write failed; records are held in memory only",
                extra={"errno": exc.errno, "failures": self._journal_errors},
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer; it replays what an earlier process left in the journal first."""
        if self._thread is None:
            self._stopping.clear()
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="infersight-bus", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Deliver what is waiting (within the timeout), then shut the exporters down.

        With a journal, whatever could not be delivered in time stays on disk for the next start;
        without one it is dropped and counted.
        """
        self._stop_deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        alive = False
        if self._thread is not None:
            self._thread.join(timeout_s + 1.0)
            alive = self._thread.is_alive()  # stuck inside an exporter call
            self._thread = None
        else:
            self._finish()
        if alive:
            log.error("bus writer did not finish in time; undelivered records stay in the journal")
        else:
            self._close_queue()
            if self._journal is not None:
                self._journal.close()
        for exporter in self._exporters:
            try:
                exporter.shutdown()
            except Exception:  # noqa: BLE001 - shutdown must reach every exporter
                log.exception("exporter shutdown failed", extra={"exporter": type(exporter).__name__})

    def _close_queue(self) -> None:
        """After the writer's last drain: what is still queued is either in the journal (the next
        start replays it) or nowhere else, and then it is lost: count it. Later publishes are too."""
        with self._lock:
            self._closed = True
            lost = sum(1 for item in self._queue if item[0] < 0)
            self._queue.clear()
            self._stats.dropped += lost
        if lost:
            log.error("bus stopped with records held only in memory; dropped", extra={"count": lost})

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Block until everything published so far was delivered (for tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._queue and self._spill is None and not self._inflight:
                    return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.005)

    def stats(self) -> BusStats:
        s = self._stats
        return BusStats(
            s.published,
            s.delivered,
            s.dropped,
            s.export_failures,
            len(self._queue) + self._spooled_unread,
            s.spooled,
            (self._journal.dead_lettered if self._journal is not None else 0) + self._refused,
            s.replayed,
        )

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            if len(self._queue) < self._batch_size and self._spill is None:
                self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            try:
                if self._drain():
                    self._release_segments(finished=False)
            except Exception:  # noqa: BLE001 - the writer must outlive a bug; the journal keeps the records
                log.exception("bus writer error; resuming from the journal")
                self._recover()
                self._stopping.wait(1.0)
        self._finish()

    def _finish(self) -> bool:
        """The last drain at stop; True when everything was delivered."""
        if not self._drain(to_empty=True):
            return False
        self._release_segments(finished=True)
        return True

    def _drain(self, *, to_empty: bool = False) -> bool:
        """Deliver what waits, then keep going only while a full batch (or the spool) waits.

        Going on with whatever trickled in during the last write would make a steady trickle a
        write per record or two: at 115 requests/s each DuckDB write (~13 ms) let 1-2 records in,
        and the writer took 0.5 of a core. Partial batches wait for the next ``flush_interval_s``.
        """
        first = True
        while not self._abandoned:
            if not (first or to_empty or self._spill is not None or len(self._queue) >= self._batch_size):
                return True
            first = False
            self._inflight_unjournaled = 0
            records, position = self._take_batch()
            if not records:
                return True
            refused_before = self._refused
            delivered, position = self._deliver(records, position)  # may top the batch up
            with self._lock:
                self._inflight = 0
            if not delivered:
                self._abandoned = True  # from here on the journal must be left as it is
                self._give_up(records)
                return False
            self._stats.delivered += len(records) - (self._refused - refused_before)
            if position is not None and self._journal is not None:
                try:
                    self._journal.checkpoint(position)
                except OSError as exc:
                    self._journal_failed(exc)
            self._release_segments(finished=False)
        return False

    def _take_batch(self) -> tuple[list[RequestRecord], Position | None]:
        """The next batch in journal order: memory first (it is older), then the spill cursor."""
        with self._lock:
            if self._queue:
                items = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                self._inflight = len(items)
                self._inflight_unjournaled += sum(1 for i in items if i[0] < 0)
                last = next((i for i in reversed(items) if i[0] >= 0), None)
                return [i[3] for i in items], (Position(last[0], last[1], last[2]) if last else None)
            cursor = self._spill
        journal = self._journal
        while cursor is not None and journal is not None:
            end = journal.readable_end(cursor.seq)  # the active segment: stop at committed bytes
            try:
                batch, after, exhausted = journal.read_batch(cursor, self._max_batch, end)
            except OSError as exc:
                self._journal_failed(exc)
                return [], None
            with self._lock:
                if exhausted and end is None:  # a sealed segment read to its end: on to the next
                    after = Position(journal.next_segment(cursor.seq), 0, 0)
                    self._spill = after
                elif exhausted and after[:2] == journal.active_end()[:2]:
                    self._spill = None  # caught up; publish goes back to memory from here on
                else:
                    self._spill = after
                self._inflight = len(batch)
            if cursor.seq < journal.first_seq:
                self._stats.replayed += len(batch)
            else:
                self._spooled_unread = max(0, self._spooled_unread - len(batch))
            if batch:
                return [record for record, _ in batch], batch[-1][1]
            cursor = self._spill
        return [], None

    def _deliver(self, batch: list[RequestRecord], position: Position | None) -> tuple[bool, Position | None]:
        """Every exporter gets every record once, or the record goes to dead-letter. False only at stop.

        Per exporter, what is not delivered yet is *held* (sent as a batch) or *alone* (records that
        failed by themselves, retried one at a time). A failed batch is bisected (bisect.py): when
        no part goes through, the exporter looks down and the batch is retried with backoff, forever
        while running. A record's failure counts against it (a strike) only when the exporter took
        something after it in the same round, i.e. it works; ``max_deliveries`` strikes send the
        record to dead-letter, so one an exporter cannot take never holds back the ones behind it.
        Rounds without such proof count nothing: an outage, even one that starts in the middle of a
        bisection, never dead-letters a record. When nothing left could prove the exporter works (a
        lone held record, or records alone), the batch is topped up from the queue (``batch`` grows
        and the returned position moves).
        """
        held = {i: list(batch) for i in range(len(self._exporters))}
        alone: dict[int, list[RequestRecord]] = {}
        strikes: dict[int, int] = {}  # id(record) -> failures while the exporter was shown to work
        last_ok: dict[int, RequestRecord] = {}  # per exporter, the last record it took: a probe
        refused = 0
        backoff, rounds = 0.05, 0
        while True:
            if rounds and self._wants_company(held, alone):
                position = self._top_up(batch, held, position)
            proved_any = False
            for i, exporter in enumerate(self._exporters):
                proven, suspect, proved = self._round(exporter, held, alone, i, rounds, last_ok)
                proved_any = proved_any or proved
                keep = list(suspect)
                for record in proven:
                    key = id(record)
                    strikes[key] = strikes.get(key, 0) + 1
                    if strikes[key] >= self._max_deliveries:
                        self._refuse(exporter, record, strikes[key])
                        refused += 1
                    else:
                        keep.append(record)
                if keep:
                    alone[i] = keep
            if not any(held.values()) and not any(alone.values()):
                self._refused += refused
                return True, position
            backoff = 0.05 if proved_any else backoff
            if self._stopping.is_set():
                if time.monotonic() + backoff > self._stop_deadline:
                    self._refused += refused
                    return False, position
                time.sleep(backoff)
            else:
                self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
            rounds += 1

    def _round(self, exporter: Exporter, held: dict[int, list[RequestRecord]],
               alone: dict[int, list[RequestRecord]], i: int, rounds: int, last_ok: dict[int, RequestRecord]
               ) -> tuple[list[RequestRecord], list[RequestRecord], bool]:
        """One try of exporter ``i``: its records alone first, then its held batch (bisected if it
        fails). Returns (failures proven by a later success, failures not proven, whether anything
        went through); ``held[i]`` keeps what was not tried.

        When failures are left unproven and the exporter is ``idempotent`` (taking a record twice
        changes nothing, as with the store), the last record it took is sent again as a probe: that
        tells a poison record from a down exporter when no other records are at hand."""
        proven: list[RequestRecord] = []
        unproven: list[RequestRecord] = []
        proved = down = False

        def attempt(part: list[RequestRecord], quiet: bool = True) -> bool:
            nonlocal proved, down
            if down:
                return False
            outcome = self._export(exporter, part, quiet=quiet)
            if outcome is None:  # SinkUnavailable: the exporter says it is down; nothing is proven
                down = True
                return False
            if not outcome:
                return False
            proved = True
            last_ok[i] = part[-1]
            proven.extend(unproven)  # the exporter took this after they failed: they are the problem
            unproven.clear()
            return True

        for record in alone.pop(i, []):
            if not attempt([record]):
                unproven.append(record)
        records = held.pop(i, None)
        if records and not attempt(records, quiet=rounds > 0):
            if down:  # held as it is, retried with backoff: an outage never bisects nor strikes
                held[i] = records
                return proven, unproven, proved
            if len(records) == 1:
                unproven.append(records[0])
            else:
                full = rounds > 0 and rounds % self._max_deliveries == 0  # dense with poison?
                isolated = isolate_failures(attempt, records, full=full)
                if isolated is None:  # looks down: held as it is
                    held[i] = records
                    return proven, unproven, proved
                proven.extend(isolated.failing)
                unproven.extend(isolated.suspect)
                if isolated.untried:
                    held[i] = isolated.untried
        if unproven and i in last_ok and getattr(exporter, "idempotent", False):
            attempt([last_ok[i]])
        return proven, unproven, proved

    def _wants_company(self, held: dict[int, list[RequestRecord]], alone: dict[int, list[RequestRecord]]) -> bool:
        """Records alone, or a lone held one, can only be told from a down exporter beside records
        that go through; a held batch is never grown past ``batch_size`` (an outage stays bounded)."""
        if any(len(h) >= self._batch_size for h in held.values()):
            return False
        return any(alone.values()) or any(len(h) == 1 for h in held.values())

    def _export(self, exporter: Exporter, records: list[RequestRecord], *, quiet: bool = False) -> bool | None:
        """True when taken; False when it failed; None when the exporter said it is down as a whole."""
        try:
            exporter.export(records)
        except SinkUnavailable as exc:
            self._stats.export_failures += 1
            (log.debug if quiet else log.warning)(
                "exporter unavailable; holding the batch", extra={"exporter": type(exporter).__name__,
                                                                  "reason": str(exc)[:64], "records": len(records)})
            return None
        except Exception as exc:  # noqa: BLE001 - an exporter's failure must not kill the bus
            self._stats.export_failures += 1
            # the type only: an exporter's message may quote record content
            (log.debug if quiet else log.error)(
                "exporter failed; will retry",
                extra={"exporter": type(exporter).__name__, "error": type(exc).__name__, "records": len(records)},
            )
            return False
        return True

    def _top_up(
        self, batch: list[RequestRecord], held: dict[int, list[RequestRecord]], position: Position | None
    ) -> Position | None:
        """Add the next records to the held batches, for every exporter (those done with the first
        records too): with company, a failure can be told from a down exporter (``_wants_company``)."""
        more, more_position = self._take_batch()
        with self._lock:
            self._inflight = len(batch) + len(more)
        if not more:
            return position
        batch.extend(more)
        for i in range(len(self._exporters)):
            held.setdefault(i, []).extend(more)
        return more_position if more_position is not None else position

    def _refuse(self, exporter: Exporter, record: RequestRecord, failures: int) -> None:
        """Dead-letter a record the exporter refused alone ``failures`` times while others passed."""
        reason = f"{type(exporter).__name__} refused it {failures} times (max_deliveries {self._max_deliveries})"
        log.error("exporter refused a record; moved to dead-letter",
                  extra={"exporter": type(exporter).__name__, "trace_id": getattr(record, "trace_id", None),
                         "failures": failures})
        handled = getattr(exporter, "dead_lettered", None)
        if handled is not None:
            try:
                if handled(record, reason):
                    return
            except Exception:  # noqa: BLE001 - kept in refused.jsonl instead: never lost
                log.exception("exporter's dead-letter hook failed", extra={"exporter": type(exporter).__name__})
        if self._journal is not None:
            self._journal.dead_letter_record(record, reason)

    def _give_up(self, batch: list[RequestRecord]) -> None:
        """Stop came before the sink recovered: the journal keeps what it holds for the next start;
        the batch's records it does not hold (no journal, or its writes failed) are lost: counted.
        The rest of the queue is counted by ``_close_queue``."""
        lost = self._inflight_unjournaled
        self._inflight_unjournaled = 0
        if lost < len(batch):
            log.warning("bus stopped with undelivered records; they stay in the journal for the next start")
        if lost:
            self._stats.dropped += lost
            log.error("bus dropped records at shutdown", extra={"count": lost})

    def _release_segments(self, *, finished: bool) -> None:
        """Delete journal segments the delivery point has passed (writer thread, nothing in flight)."""
        journal = self._journal
        if journal is None or self._abandoned:
            return
        with self._lock:
            need = journal.active_seq
            head = next((item[0] for item in self._queue if item[0] >= 0), None)
            if head is not None:
                need = min(need, head)
            if self._spill is not None:
                need = min(need, self._spill.seq)
            caught_up = not self._queue and self._spill is None
            if caught_up and (finished or journal.active_age_s() >= self._segment_age_s):
                journal.rotate()  # everything appended so far was delivered
                need = journal.active_seq
        for seq in journal.pending():
            if seq < need:
                try:
                    journal.ack(seq)
                except (OSError, ValueError):
                    log.exception("could not delete a delivered journal segment", extra={"seq": seq})

    def _recover(self) -> None:
        """After an unexpected writer error, trust only the journal: re-read it from the checkpoint.

        A batch in flight may then be delivered twice, which idempotent sinks absorb; records that
        never made it into the journal (disk errors) stay queued in memory.
        """
        if self._journal is None:
            return
        with self._lock:
            self._queue = deque(item for item in self._queue if item[0] < 0)
            self._inflight = 0
            self._spill = self._replay_start(self._journal, ack=False)

    @staticmethod
    def _replay_start(journal: Journal, *, ack: bool = True) -> Position | None:
        """Where replay begins: the checkpoint, or the oldest segment not yet acked."""
        pending = journal.pending()
        if not pending:
            return None
        checkpoint = journal.checkpointed()
        if checkpoint is not None:
            if ack:
                for seq in pending:
                    if seq < checkpoint.seq:
                        journal.ack(seq)  # wholly before the checkpoint: delivered
            if checkpoint.seq in pending:
                return checkpoint
            pending = [seq for seq in journal.pending() if seq > checkpoint.seq]
            if not pending:
                return None
        return Position(pending[0], 0, 0)
