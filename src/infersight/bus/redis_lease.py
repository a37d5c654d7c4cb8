"""Keeping a consumer's claim on the messages it is writing, while a sink call is slow.

A message stays pending under its consumer until XACK; another member of the group takes it over
(XAUTOCLAIM, which counts a delivery) once it has been idle ``claim_idle_ms``. A store write that
takes longer than that (a ClickHouse insert during heavy merges, say) would hand a live consumer's
batch to a second consumer: the write is done twice (the store absorbs it) and every message's
delivery count rises, so that a few slow writes could send good messages to dead-letter. While a
sink call runs past a third of ``claim_idle_ms``, this thread refreshes the claim with
``XCLAIM ... JUSTID``, which resets the idle time without counting a delivery, as a held batch's
retries do (``redis_consumer``). Only up to ``HUNG_AFTER`` times ``claim_idle_ms``: a sink call that
has not returned by then is taken to hang, and its batch is left for another consumer to take over,
as it was before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

log = logging.getLogger("infersight.bus.redis")

HUNG_AFTER = 10  # claim_idle_ms periods: a sink call still running then hangs, and its claim lapses


class LeaseKeeper:
    """One daemon thread per consumer, refreshing the claim on the batch in the sink, if slow."""

    def __init__(self, client: Any, stream: str, group: str, consumer: str, claim_idle_ms: int,
                 hung_after_s: float | None = None) -> None:
        self._client, self._stream, self._group, self._consumer = client, stream, group, consumer
        self.every_s = max(claim_idle_ms / 3000.0, 0.01)
        # a sink with a known horizon of its own (the judge's timeouts and retries) may say so
        self.hung_after_s = max(HUNG_AFTER * claim_idle_ms / 1000.0, hung_after_s or 0.0)
        self._lock = threading.Lock()
        self._ids: list[bytes] = []
        self._since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0  # XCLAIM JUSTID calls made for slow sink calls

    @contextmanager
    def hold(self, ids: Sequence[bytes]) -> Iterator[None]:
        """Keep the claim on ``ids`` fresh while the body (a sink call) runs."""
        with self._lock:
            self._ids, self._since = list(ids), time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._ids = []

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="infersight-consumer-lease", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                running = time.monotonic() - self._since
                ids = self._ids if self._ids and self.every_s <= running < self.hung_after_s else []
            if not ids:
                continue
            try:
                self._client.xclaim(self._stream, self._group, self._consumer, 0, ids, justid=True)
                self.refreshes += 1
            except redis.RedisError as exc:  # Redis away: the consumer's own loop deals with it
                log.debug("could not refresh the claim on a batch in the sink", extra={"error": type(exc).__name__})
