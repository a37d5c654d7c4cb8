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

import os
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
    "RedisStreamBus",
    "RedisStreamConsumer",
    "RedisStreamExporter",
]


class RedisStreamExporter:
    """XADDs a batch in one non-transactional pipeline; raising tells the bus to retry the batch."""

    def __init__(
        self,
        url: str,
        stream: str = DEFAULT_STREAM,
        *,
        maxlen: int | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.stream = stream
        self._maxlen = maxlen
        self._client = client if client is not None else connect(url)

    def export(self, batch: list[RequestRecord]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for record in batch:
            # MAXLEN ~ trims whole macro-nodes only (cheap); it is off unless configured because
            # trimming entries no group has read yet loses them.
            pipe.xadd(self.stream, {"r": encode(record)}, maxlen=self._maxlen, approximate=True)
        pipe.execute()

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
    ) -> None:
        self.exporter = RedisStreamExporter(url, stream, maxlen=maxlen)
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
