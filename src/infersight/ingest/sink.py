"""StoreSink: the bus exporter (embedded) and Redis consumer sink (scale-out) that writes to the store.

Writes are idempotent in the store, so a redelivered batch is harmless: the sink counts inserted
and duplicate rows separately. A store failure propagates: the bus keeps the batch (in memory and
in its journal) and retries, the Redis consumer leaves it unacknowledged.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from infersight.bus.consumer_metrics import ConsumerGauges

from infersight.model import RequestRecord
from infersight.store.base import Store

log = logging.getLogger("infersight.ingest")

LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class IngestMetrics:
    """The ingester's own health: lag, batch size, write latency, failures, spool and dead letters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram("infersight_ingest_lag_seconds",
                             "From a request's end to its row being written.", buckets=LAG_BUCKETS, registry=registry)
        self.batch_size = Histogram("infersight_ingest_batch_size", "Records per store write.",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.write_seconds = Histogram("infersight_ingest_write_seconds", "Store write latency per batch.",
                                       buckets=WRITE_BUCKETS, registry=registry)
        self.rows = Counter("infersight_ingest_rows", "Rows handled, by result (inserted, duplicate).",
                            ("result",), registry=registry)
        self.failures = Counter("infersight_ingest_failures", "Store writes that failed (retried).",
                                registry=registry)
        self.consumers = ConsumerGauges(registry, "infersight_ingest")

    def sync_consumers(self, stats: list[Any]) -> None:
        """Set the consumer gauges from every consumer the worker runs (records, telemetry samples,
        eval tasks): a poison sample is as much a dead letter as a poison record."""
        self.consumers.sync(stats)


class StoreSink:
    """Exporter protocol (``export``/``shutdown``) and a plain callable for the Redis consumer."""

    idempotent = True  # the store's writes are keyed: a record taken twice is stored once

    def __init__(self, store: Store, metrics: IngestMetrics | None = None, close_store: bool = False) -> None:
        self.store = store
        self.metrics = metrics
        self.close_store = close_store
        self.inserted = 0
        self.duplicates = 0

    def __call__(self, batch: list[RequestRecord]) -> None:
        self.export(batch)

    def export(self, batch: list[RequestRecord]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        try:
            inserted = self.store.write_requests(batch)
        except Exception:
            if self.metrics is not None:
                self.metrics.failures.inc()
            raise
        elapsed = time.perf_counter() - started
        self.inserted += inserted
        self.duplicates += len(batch) - inserted
        if self.metrics is not None:
            m = self.metrics
            m.write_seconds.observe(elapsed)
            m.batch_size.observe(len(batch))
            m.rows.labels("inserted").inc(inserted)
            if inserted < len(batch):
                m.rows.labels("duplicate").inc(len(batch) - inserted)
            now = datetime.now(timezone.utc).timestamp()
            for record in batch[:: max(1, len(batch) // 64)]:  # a sample keeps this O(64) per batch
                m.lag.observe(max(0.0, now - _end_timestamp(record)))

    def shutdown(self) -> None:
        if self.close_store:
            self.store.close()


def _end_timestamp(record: RequestRecord) -> float:
    try:
        start = datetime.fromisoformat(record.started_at).timestamp()
    except ValueError:
        return time.time()
    return start + (record.total_ms or 0.0) / 1000.0
