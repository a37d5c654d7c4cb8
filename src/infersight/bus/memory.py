"""The embedded bus: a bounded in-memory queue drained by one writer thread.

Batches go out when ``batch_size`` records are waiting or every ``flush_interval_s``. A failing
exporter keeps its batch and is retried with backoff (other exporters are not held back twice: each
exporter gets every batch once it succeeds). When the queue is full, new records are dropped and
counted; the disk spool that removes that limit is the pipeline issue's job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from infersight.bus.base import BusStats, Exporter
from infersight.model import RequestRecord

log = logging.getLogger("infersight.bus")


class MemoryBus:
    def __init__(
        self,
        exporters: list[Exporter],
        *,
        max_queue: int = 100_000,
        batch_size: int = 512,
        flush_interval_s: float = 0.5,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._exporters = list(exporters)
        self._queue: deque[RequestRecord] = deque()
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = BusStats()
        self._lock = threading.Lock()

    def add_exporter(self, exporter: Exporter) -> None:
        """Attach another consumer (e.g. the demo's live table) before ``start``."""
        self._exporters.append(exporter)

    def publish(self, record: RequestRecord) -> None:
        if len(self._queue) >= self._max_queue:
            self._stats.dropped += 1
            return
        self._queue.append(record)
        self._stats.published += 1
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="infersight-bus", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        else:
            self._drain(deadline=time.monotonic() + timeout_s)
        for exporter in self._exporters:
            try:
                exporter.shutdown()
            except Exception:  # noqa: BLE001 - shutdown must reach every exporter
                log.exception("exporter shutdown failed", extra={"exporter": type(exporter).__name__})

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Block until the queue is empty (for tests and orderly shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)
        with self._lock:  # wait for an in-flight batch
            return not self._queue

    def stats(self) -> BusStats:
        s = self._stats
        return BusStats(s.published, s.delivered, s.dropped, s.export_failures, len(self._queue))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            self._drain(deadline=None)
        self._drain(deadline=time.monotonic() + 10.0)

    def _drain(self, deadline: float | None) -> None:
        while self._queue:
            with self._lock:
                batch: list[RequestRecord] = []
                while self._queue and len(batch) < self._batch_size:
                    batch.append(self._queue.popleft())
                if not self._deliver(batch, deadline):
                    self._stats.dropped += len(batch)
                    log.error("bus dropped records at shutdown", extra={"count": len(batch)})
                    return

    def _deliver(self, batch: list[RequestRecord], deadline: float | None) -> bool:
        pending = list(self._exporters)
        backoff = 0.05
        while pending:
            if deadline is None and self._stopping.is_set():
                deadline = time.monotonic() + 10.0
            failed: list[Exporter] = []
            for exporter in pending:
                try:
                    exporter.export(batch)
                except Exception:  # noqa: BLE001 - an exporter's failure must not kill the bus
                    self._stats.export_failures += 1
                    log.exception("exporter failed; will retry", extra={"exporter": type(exporter).__name__})
                    failed.append(exporter)
            pending = failed
            if not pending:
                break
            if deadline is not None and time.monotonic() + backoff > deadline:
                return False
            time.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
        self._stats.delivered += len(batch)
        return True
