"""The scale-out bus: gateways XADD records to a Redis stream; ingesters read it as a consumer group.

Gateway side, ``RedisStreamBus`` is the embedded ``MemoryBus`` with one more exporter: publish still
costs one journal append and an enqueue, and the writer thread XADDs each batch in one pipeline.
Journal segments are acknowledged only after Redis answered the XADDs, so while Redis is down or
restarting the records wait in the journal, the writer retries with backoff, and a SIGKILLed
gateway replays them on its next start. A pipeline that failed half way is sent again whole: the
stream may hold a record twice, which the consumer's idempotent sink absorbs (at-least-once).

"Written" here means Redis acknowledged the XADD. Whether that survives Redis itself crashing is
Redis's persistence setting: run it with ``appendonly yes`` (``appendfsync everysec`` or ``always``).

Consumer side, see ``redis_consumer.RedisStreamConsumer`` (re-exported here).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from infersight.bus.base import Exporter
from infersight.bus.memory import MemoryBus
from infersight.bus.redis_conn import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM, connect, encode
from infersight.bus.redis_consumer import ConsumerStats, RedisStreamConsumer
from infersight.model import RequestRecord

__all__ = [
    "DEFAULT_DEAD_LETTER_STREAM",
    "DEFAULT_STREAM",
    "ConsumerStats",
    "LateIndex",
    "RedisStreamBus",
    "RedisStreamConsumer",
    "RedisStreamExporter",
]


log = logging.getLogger("infersight.bus")


@dataclass(frozen=True, slots=True)
class LateIndex:
    """Entries that reach the stream long after their record started (journaled while Redis was
    away, shipped late) are noted in a sorted set, ``key``, scored by that start: their entry id is
    fresh, so a reader that ages the stream by its oldest entries would not see them. The eval
    breaker's lag reads it (``eval_health.RedisStreamLag``), and removes what was acknowledged."""

    key: str
    started: Callable[[Any], float | None]  # a record's start, epoch seconds
    after_s: float = 30.0
    ttl_s: int = 7 * 86_400


class RedisStreamExporter:
    """XADDs a batch in one non-transactional pipeline; raising tells the bus to retry the batch."""

    def __init__(
        self,
        url: str,
        stream: str = DEFAULT_STREAM,
        *,
        maxlen: int | None = None,
        client: redis.Redis | None = None,
        late: LateIndex | None = None,
    ) -> None:
        self.stream = stream
        self._maxlen = maxlen
        self._client = client if client is not None else connect(url)
        self._late = late

    def export(self, batch: list[RequestRecord]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for record in batch:
            # MAXLEN ~ trims whole macro-nodes only (cheap); it is off unless configured because
            # trimming entries no group has read yet loses them.
            pipe.xadd(self.stream, {"r": encode(record)}, maxlen=self._maxlen, approximate=True)
        ids = pipe.execute()
        if self._late is not None:
            self._note_late(batch, ids, self._late)

    def _note_late(self, batch: list[RequestRecord], ids: list[Any], late: LateIndex) -> None:
        """After the XADDs (their ids are known only then); a failure here costs the lag reading
        of these entries, never a retry of a batch Redis already took (that would add it twice)."""
        cutoff = time.time() - late.after_s
        found = {}
        for record, entry_id in zip(batch, ids, strict=True):
            started = late.started(record)
            if started is not None and started < cutoff:
                found[entry_id] = started
        if not found:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(late.key, found)
            pipe.zremrangebyscore(late.key, "-inf", time.time() - late.ttl_s)  # bounded with no reader too
            pipe.expire(late.key, late.ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("late stream entries not indexed", extra={"fields": {"error": type(exc).__name__,
                                                                                "entries": len(found)}})

    def shutdown(self) -> None:
        self._client.close()


class RedisStreamBus(MemoryBus):
    """The gateway's Bus in scale-out: journal + memory queue, drained into a Redis stream."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        journal_dir: str | os.PathLike[str] | None = None,
        maxlen: int | None = None,
        exporters: list[Exporter] | None = None,
        max_queue: int = 100_000,
        batch_size: int = 512,
        max_batch_size: int | None = None,
        flush_interval_s: float = 0.1,
        max_backoff_s: float = 5.0,
        segment_bytes: int = 8 << 20,
        segment_age_s: float = 60.0,
        max_journal_bytes: int | None = None,
        record_type: type[Any] = RequestRecord,
        late: LateIndex | None = None,
    ) -> None:
        self.exporter = RedisStreamExporter(url, stream, maxlen=maxlen, late=late)
        super().__init__(
            [self.exporter, *(exporters or [])],
            journal_dir=journal_dir,
            max_queue=max_queue,
            batch_size=batch_size,
            max_batch_size=max_batch_size,
            flush_interval_s=flush_interval_s,
            max_backoff_s=max_backoff_s,
            segment_bytes=segment_bytes,
            segment_age_s=segment_age_s,
            max_journal_bytes=max_journal_bytes,
            record_type=record_type,
        )
