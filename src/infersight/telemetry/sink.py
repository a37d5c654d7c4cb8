"""TelemetrySink: writes TelemetrySample batches to the store's ``telemetry`` table.

The bus exporter of the embedded telemetry bus and the sink of the ``<bus.stream>:telemetry``
consumer in ``infersight ingest``, like ``StoreSink`` for requests. Writes are idempotent by
``(ts, source, instance, gpu, model_id, metric)``, so a redelivered batch adds nothing. A store
failure propagates: the bus keeps the batch (memory and journal) and retries, the Redis consumer
leaves it unacknowledged. Observers (the demo's live table) see each batch after it is written;
an observer that fails is logged and never fails the write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from infersight.model.telemetry import TelemetrySample
from infersight.store.base import Store

log = logging.getLogger("infersight.telemetry")

Observer = Callable[[list[TelemetrySample]], None]


class TelemetrySink:
    """Exporter protocol (``export``/``shutdown``) and a plain callable for the Redis consumer."""

    idempotent = True  # the store's writes are keyed: a record taken twice is stored once

    def __init__(self, store: Store, observers: Sequence[Observer] = (), close_store: bool = False) -> None:
        self.store = store
        self.observers = list(observers)
        self.close_store = close_store
        self.inserted = 0

    def __call__(self, batch: list[TelemetrySample]) -> None:
        self.export(batch)

    def export(self, batch: list[TelemetrySample]) -> None:
        if not batch:
            return
        self.inserted += self.store.write_rows("telemetry", [s.to_dict() for s in batch])
        for observe in self.observers:
            try:
                observe(batch)
            except Exception:  # a display must not make the bus retry a written batch
                log.exception("telemetry observer failed")

    def shutdown(self) -> None:
        if self.close_store:
            self.store.close()
