"""Read the record stream as one member of a consumer group and hand batches to a sink.

Delivery is at-least-once and the sink must be idempotent (the store writes by (trace_id, span_id)):

- a message is XACKed only after ``sink(batch)`` returned, so a consumer that dies mid-batch leaves
  its messages pending; another member takes them over with XAUTOCLAIM once they have been idle
  ``claim_idle_ms``, and a restarted consumer with the same name re-reads its own pending entries;
- a message that cannot be decoded is poison: it goes to the dead-letter stream at once (XADD there
  and XACK here in one MULTI), with the reason; the rest of the batch flows on;
- a message whose delivery count (XPENDING) passed ``max_deliveries`` is dead-lettered instead of
  being handed to the sink again (it keeps killing or failing whoever takes it).

When the sink raises, the consumer tells "the sink is down" from "this record breaks the sink" by
bisecting the batch: if no part succeeds the sink is down, and the batch is held and retried with
backoff (its delivery counts untouched, its idle time reset so no one else steals it) for as long
as the outage lasts: an outage never dead-letters anything. If parts succeed, the records that
fail alone are retried alone. A failure counts against a record (an XCLAIM, which counts a
delivery) only when the sink took something after it (``bisect.py``): had the sink gone down in
the meantime, every record would fail alone. With no other records at hand, an idempotent sink is
probed with the last record it took. A record is dead-lettered once its count reaches
``max_deliveries``.

A sink can also say it is down as a whole by raising ``SinkUnavailable`` (the eval sink while its
judge is away): the batch is held and retried with backoff at once, never bisected, and counted
against no record (an over-delivered one's last chance included).

Redis being down or restarting is retried with backoff; a group lost with a non-persistent Redis is
created again. Logs carry message ids, counts and reasons, never record content.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from infersight.bus.base import SinkUnavailable
from infersight.bus.bisect import isolate_failures
from infersight.bus.redis_lease import LeaseKeeper
from infersight.bus.redis_conn import (
    DEAD_LETTER_SUFFIX,
    DEFAULT_STREAM,
    FIELD,
    PoisonMessage,
    connect,
    decode,
    encode,
)
from infersight.model import RequestRecord

if TYPE_CHECKING:
    from infersight.config import BusSettings

log = logging.getLogger("infersight.bus.redis")

Sink = Callable[[list[RequestRecord]], None]
_Entry = tuple[bytes, RequestRecord, int]  # message id, record, deliveries so far


@dataclass(slots=True)
class ConsumerStats:
    read: int = 0  # messages received: new, claimed and re-read
    delivered: int = 0  # records the sink accepted, then XACKed
    claimed: int = 0  # messages taken over from idle consumers (XAUTOCLAIM)
    dead_lettered: int = 0  # poison or over max_deliveries: moved to the dead-letter stream
    sink_failures: int = 0  # sink calls that raised
    redis_errors: int = 0  # Redis unreachable or failing; retried
    dropped: int = 0  # pending entries whose message was trimmed from the stream before delivery


class RedisStreamConsumer:
    def __init__(
        self,
        url: str,
        *,
        sink: Sink,
        stream: str = DEFAULT_STREAM,
        group: str = "infersight-ingest",
        consumer: str | None = None,
        batch_size: int = 256,
        min_batch: int = 1,
        linger_s: float = 0.0,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dead_letter_stream: str | None = None,
        max_backoff_s: float = 5.0,
        start_id: str = "0",
        record_type: type[Any] = RequestRecord,
        hung_after_s: float | None = None,
    ) -> None:
        self._record_type = record_type  # RequestRecord, or EvalTask for the eval workers' group
        self.stream, self.group = stream, group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        #: ``<stream>:dead`` unless named: infersight:requests -> infersight:requests:dead
        self.dead_letter_stream = dead_letter_stream or f"{stream}{DEAD_LETTER_SUFFIX}"
        self._sink = sink
        self._batch_size = batch_size
        # A read of fewer than ``min_batch`` new messages waits ``linger_s`` once and tops up, so a
        # trickle is written a few times a second, not once per message: each DuckDB write has a
        # fixed ~10 ms cost, which at 140 records/s in ~10 writes/s took 0.15 of a core.
        self._min_batch = min_batch
        self._linger_s = linger_s
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._claim_every_s = min(max(claim_idle_ms / 2000.0, 0.05), 10.0)
        self._max_deliveries = max_deliveries
        self._max_backoff_s = max_backoff_s
        self._start_id = start_id
        self._client = connect(url, socket_timeout=block_ms / 1000.0 + 5.0)
        self._stats = ConsumerStats()
        self._group_ready = False
        self._check_own = True  # a restarted consumer first re-reads what it held when it died
        self._next_claim = 0.0
        self._claim_cursor: bytes | str = "0-0"
        self._held: list[_Entry] = []  # the sink is down: retried in memory
        self._alone: list[_Entry] = []  # failed alone: retried one at a time
        self._last_ok: RequestRecord | None = None  # the last record the sink took: a probe
        self._sink_down = False  # the last delivery raised SinkUnavailable: the sink said it is down
        self._held_rounds = 0
        self._sink_backoff = 0.05
        self._unacked: list[bytes] = []  # the sink took them but XACK failed: acked first thing
        self._stop = threading.Event()
        self._lease = LeaseKeeper(self._client, stream, group, self.consumer, claim_idle_ms,  # slow sink calls
                                  hung_after_s)

    @classmethod
    def for_settings(
        cls, bus: BusSettings, *, sink: Sink, stream: str, consumer: str, record_type: type[Any] = RequestRecord
    ) -> RedisStreamConsumer:
        """A member of ``bus.group`` writing to a store: large reads under a backlog
        (``max_batch_size``), a linger of ``flush_interval_s`` for a trickle (``batch_size``)."""
        assert bus.url is not None  # validated by config for bus.backend: redis
        return cls(
            bus.url, sink=sink, stream=stream, group=bus.group, consumer=consumer, batch_size=bus.write_batch,
            min_batch=bus.batch_size, linger_s=bus.flush_interval_s, claim_idle_ms=bus.claim_idle_ms,
            max_deliveries=bus.max_deliveries, dead_letter_stream=f"{stream}{DEAD_LETTER_SUFFIX}",
            record_type=record_type,
        )

    def stats(self) -> ConsumerStats:
        s = self._stats
        return ConsumerStats(
            s.read, s.delivered, s.claimed, s.dead_lettered, s.sink_failures, s.redis_errors, s.dropped
        )

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Consume until ``stop_event`` is set; never raises for Redis or sink failures."""
        self._stop = stop_event or threading.Event()
        self._lease.start()
        try:
            self._loop()
        finally:
            self._lease.stop()
            self._leave_group()

    def _leave_group(self) -> None:
        """A clean stop leaves the group when this consumer holds nothing: every start joins under a
        new name (host and pid), and members never removed piled up in Redis and XINFO CONSUMERS.
        One that still holds entries stays, so that a peer can claim them."""
        if self._held or self._unacked:
            return
        try:
            if not self._client.xpending_range(self.stream, self.group, "-", "+", 1, consumername=self.consumer):
                self._client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except redis.RedisError:  # best effort: the trimmer forgets long-idle empty members too
            pass

    def _loop(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self.step()
                backoff = 0.05
            except redis.ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    log.warning("consumer group missing (Redis lost its data?); creating it again")
                    self._group_ready = False
                    continue
                self._redis_failed(exc, backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            except redis.RedisError as exc:
                self._redis_failed(exc, backoff)
                self._group_ready = False
                self._check_own = True  # what we held may have been redelivered meanwhile
                backoff = min(backoff * 2, self._max_backoff_s)
            except Exception:  # noqa: BLE001 - a bug here must not stop ingestion for good
                log.exception("consumer step failed; retrying")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    def _redis_failed(self, exc: Exception, backoff: float) -> None:
        self._stats.redis_errors += 1
        log.warning("redis unavailable; retrying", extra={"error": type(exc).__name__, "retry_in_s": backoff})
        self._stop.wait(backoff)

    # -- one turn of the loop --------------------------------------------------------------------

    def step(self) -> None:
        """Ack leftovers, retry a held batch, or read (own pending, claimed, then new) and deliver."""
        if not self._group_ready:
            self._ensure_group()
        if self._unacked:
            self._ack(self._unacked)
            self._unacked = []
        if self._held or self._alone:
            self._retry_held()
            return
        messages: list[tuple[bytes, Any, int]] = []
        if self._check_own:
            messages = self._read_own_pending()
            self._check_own = bool(messages)
        elif time.monotonic() >= self._next_claim:
            messages = self._autoclaim()
        if not messages:
            messages = self._read_new(self._block_ms)
            if messages and len(messages) < min(self._min_batch, self._batch_size) and self._linger_s > 0:
                if not self._stop.wait(self._linger_s):  # stopping: deliver what was read, at once
                    messages += self._read_new(None, self._batch_size - len(messages))
        if messages:
            entries = self._screen(messages)
            if entries:
                self._attempt([], entries)

    def _ensure_group(self) -> None:
        try:
            self._client.xgroup_create(self.stream, self.group, id=self._start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read_new(self, block_ms: int | None, count: int | None = None) -> list[tuple[bytes, Any, int]]:
        reply: Any = self._client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count or self._batch_size, block=block_ms
        )
        messages = [(mid, fields, 1) for _, entries in reply or [] for mid, fields in entries]
        self._stats.read += len(messages)
        return messages

    def _read_own_pending(self) -> list[tuple[bytes, Any, int]]:
        """Our own pending entries (from id 0); reading them again counts as a delivery."""
        reply: Any = self._client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=self._batch_size)
        entries = [(mid, fields) for _, items in reply or [] for mid, fields in items]
        self._stats.read += len(entries)
        return self._with_counts(entries)

    def _autoclaim(self) -> list[tuple[bytes, Any, int]]:
        """Take over messages idle longer than ``claim_idle_ms`` (their consumer died or hung)."""
        reply: Any = self._client.xautoclaim(
            self.stream, self.group, self.consumer, self._claim_idle_ms, self._claim_cursor, count=self._batch_size
        )
        cursor, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []  # Redis 7 also names entries trimmed away
        self._claim_cursor = cursor
        more = cursor not in (b"0-0", "0-0")
        self._next_claim = time.monotonic() + (0.0 if more else self._claim_every_s)
        if deleted:
            self._stats.dropped += len(deleted)
            log.error("pending messages were trimmed from the stream before delivery", extra={"count": len(deleted)})
        if entries:
            self._stats.claimed += len(entries)
            self._stats.read += len(entries)
            log.warning("claimed idle messages from another consumer", extra={"count": len(entries)})
        return self._with_counts(entries)

    def _with_counts(self, entries: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any, int]]:
        if not entries:
            return []
        pending = self._client.xpending_range(
            self.stream, self.group, entries[0][0], entries[-1][0], len(entries) + 16, self.consumer
        )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        for mid, _ in entries:
            if mid not in counts:  # other pending entries of ours crowded the range: ask one by one
                one = self._client.xpending_range(self.stream, self.group, mid, mid, 1, self.consumer)
                counts[mid] = int(one[0]["times_delivered"]) if one else 1
        return [(mid, fields, counts.get(mid, 1)) for mid, fields in entries]

    # -- deciding what to do with each message ---------------------------------------------------

    def _screen(self, messages: list[tuple[bytes, Any, int]]) -> list[_Entry]:
        """Decode; poison messages go to the dead-letter stream, over-delivered ones get a last chance."""
        entries: list[_Entry] = []
        dead: list[tuple[bytes, Any, int, str]] = []
        gone: list[bytes] = []
        over: list[tuple[bytes, Any, int]] = []
        for mid, fields, count in messages:
            if not fields:
                gone.append(mid)  # deleted from the stream while pending: nothing left to deliver
                continue
            if count > self._max_deliveries:
                over.append((mid, fields, count))
                continue
            try:
                entries.append((mid, decode(fields, self._record_type), count))
            except PoisonMessage as exc:
                dead.append((mid, fields, count, f"undecodable: {exc}"))
        if gone:
            self._client.xack(self.stream, self.group, *gone)
            self._stats.dropped += len(gone)
            log.error("pending messages were deleted from the stream before delivery", extra={"count": len(gone)})
        if dead:
            self._dead_letter(dead)
        if over:
            entries.extend(self._last_chance(over))
        return entries

    def _last_chance(self, over: list[tuple[bytes, Any, int]]) -> list[_Entry]:
        """Messages delivered more than ``max_deliveries`` times, each delivered once more, alone.

        The count rises for every consumer that took a message and died or hung, so it rises for a
        whole batch with the one message that kills its consumers. Each over-delivered message is
        therefore tried alone, its id in the set ``<stream>:<group>:last-chance`` meanwhile: one that
        kills this consumer too stays in the set, and whoever takes it next dead-letters it alone,
        while its batch-mates go through. One that fails alone is dead-lettered when the sink is
        shown to work (``_probe``); while the sink looks down it joins the batch, counted nothing."""
        marker = f"{self.stream}:{self.group}:last-chance"
        dead: list[tuple[bytes, Any, int, str]] = []
        keep: list[_Entry] = []
        for mid, fields, count in over:
            reason = f"delivered {count} times (max_deliveries {self._max_deliveries})"
            if self._client.srem(marker, mid):
                dead.append((mid, fields, count, f"{reason}; a consumer died while it was delivered alone"))
                continue
            try:
                entry = (mid, decode(fields, self._record_type), count)
            except PoisonMessage as exc:
                dead.append((mid, fields, count, f"undecodable: {exc}"))
                continue
            self._client.sadd(marker, mid)
            try:
                delivered = self._deliver([entry], quiet=True)
            finally:
                self._client.srem(marker, mid)
            if delivered:
                continue
            if self._sink_down or (getattr(self._sink, "idempotent", False) and not self._probe()):
                keep.append(entry)  # the sink looks down: an outage is nobody's fault
            else:
                dead.append((mid, fields, count, f"{reason}; it failed again alone"))
        if dead:
            self._dead_letter(dead)
        return keep

    def _attempt(self, alone: list[_Entry], entries: list[_Entry], *, full: bool = False,
                 retrying: bool = False) -> None:
        """Try ``alone`` one at a time, then ``entries`` as a batch, bisected if it fails
        (``bisect.isolate_failures``): a failure proven by a later success counts against its record
        (``_strike``); the rest is kept, alone or held, uncounted."""
        proven: list[_Entry] = []
        unproven: list[_Entry] = []
        proved = False

        def attempt(part: list[_Entry], quiet: bool = True) -> bool:
            nonlocal proved
            if not self._deliver(part, quiet=quiet):
                return False
            proved = True
            self._last_ok = part[-1][1]
            proven.extend(unproven)  # the sink took this after they failed: they are the problem
            unproven.clear()
            return True

        down: list[_Entry] = []  # failed with SinkUnavailable: held, never counted against them
        for entry in alone:
            if not attempt([entry]):
                (down if self._sink_down else unproven).append(entry)
        held: list[_Entry] = []
        if entries and not attempt(entries, quiet=retrying):
            if self._sink_down:  # the sink says it is down as a whole (a judge away): hold, no bisect
                held = entries
            elif len(entries) == 1:
                unproven.append(entries[0])
            else:
                isolated = isolate_failures(attempt, entries, full=full)
                if isolated is None:  # nothing went through: the sink looks down
                    held = entries
                else:
                    proven.extend(isolated.failing)
                    unproven.extend(isolated.suspect)
                    held = isolated.untried
        if unproven and self._probe():  # failures after the last success: does the sink still work?
            proven, unproven, proved = proven + unproven, [], True
        if proved:
            self._held_rounds, self._sink_backoff = 0, 0.05
        elif held and not retrying:
            log.warning("sink unavailable; holding the batch and retrying", extra={"records": len(held)})
        self._alone = self._strike(proven) + unproven
        self._held = held + down

    def _probe(self) -> bool:
        """Whether the sink works: the last record it took, sent again. Only for an idempotent sink
        (the store's keyed writes), and not acknowledged again or counted as delivered."""
        if self._last_ok is None or not getattr(self._sink, "idempotent", False):
            return False
        try:
            self._sink([self._last_ok])
        except Exception:  # noqa: BLE001 - the sink is down: nothing is proven
            self._stats.sink_failures += 1
            return False
        return True

    def _strike(self, entries: list[_Entry]) -> list[_Entry]:
        """Count a proven failure against each record: one at ``max_deliveries`` is dead-lettered,
        the others are claimed again, which counts a delivery (XCLAIM), and are kept to retry alone."""
        spent = [e for e in entries if e[2] >= self._max_deliveries]
        if spent:
            self._dead_letter([(mid, {FIELD: encode(record)}, count,
                                f"sink failed on it {count} times (max_deliveries {self._max_deliveries})")
                               for mid, record, count in spent])
        rest = [e for e in entries if e[2] < self._max_deliveries]
        if not rest:
            return []
        # XCLAIM without JUSTID counts a delivery; an id missing from the reply is no longer
        # pending here (acked elsewhere or deleted)
        reply: Any = self._client.xclaim(self.stream, self.group, self.consumer, 0, [e[0] for e in rest])
        still_ours = {mid for mid, _ in reply}
        return [(mid, record, count + 1) for mid, record, count in rest if mid in still_ours]

    def _retry_held(self) -> None:
        """The sink was down, or records failed alone: wait, keep our claim fresh, top the batch up
        (fresh records beside the failing ones show whether the sink works), try again."""
        self._stop.wait(min(self._sink_backoff, self._claim_idle_ms / 3000.0))
        self._sink_backoff = min(self._sink_backoff * 2, self._max_backoff_s)
        ids = [mid for mid, _, _ in self._held + self._alone]
        # JUSTID resets the idle time without counting a delivery: an outage is nobody's fault
        self._client.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)  # type: ignore[arg-type]
        held, alone = self._held, self._alone
        if len(held) < self._batch_size:
            fresh = self._read_new(None, self._batch_size - len(held))
            held.extend(self._screen(fresh))
        self._held_rounds += 1
        # now and then bisect all the way, in case the batch is dense with poison, not the sink down
        self._attempt(alone, held, full=self._held_rounds % max(self._max_deliveries, 1) == 0, retrying=True)

    def _deliver(self, entries: list[_Entry], *, quiet: bool = False) -> bool:
        self._sink_down = False
        try:
            with self._lease.hold([mid for mid, _, _ in entries]):
                self._sink([record for _, record, _ in entries])
        except Exception as exc:  # noqa: BLE001 - a sink failure is retried, never fatal
            self._sink_down = isinstance(exc, SinkUnavailable)
            self._stats.sink_failures += 1
            # the type only: a sink's message may quote record content
            (log.debug if quiet else log.warning)(
                "sink failed", extra={"error": type(exc).__name__, "records": len(entries)}
            )
            return False
        ids = [mid for mid, _, _ in entries]
        try:
            self._ack(ids)
        except redis.RedisError:
            self._unacked.extend(ids)  # written already: ack as soon as Redis is back
            raise
        return True

    def _ack(self, ids: list[bytes]) -> None:
        for start in range(0, len(ids), 1000):
            self._client.xack(self.stream, self.group, *ids[start : start + 1000])
        self._stats.delivered += len(ids)

    def _dead_letter(self, dead: list[tuple[bytes, Any, int, str]]) -> None:
        """XADD to the dead-letter stream and XACK here, atomically (MULTI/EXEC)."""
        pipe = self._client.pipeline(transaction=True)
        for mid, fields, count, reason in dead:
            entry: dict[Any, Any] = {
                "source_id": mid,
                "source_stream": self.stream,
                "group": self.group,
                "consumer": self.consumer,
                "deliveries": count,
                "reason": reason,
                "dead_at": f"{time.time():.3f}",
            }
            for key, value in (fields or {}).items():
                entry[b"field:" + (key if isinstance(key, bytes) else str(key).encode())] = value
            pipe.xadd(self.dead_letter_stream, entry)
            pipe.xack(self.stream, self.group, mid)
        pipe.execute()
        self._stats.dead_lettered += len(dead)
        for mid, _, count, reason in dead:
            log.error(
                "message moved to the dead-letter stream",
                extra={
                    "id": mid.decode(),
                    "deliveries": count,
                    "reason": reason,
                    "dead_letter_stream": self.dead_letter_stream,
                },
            )
