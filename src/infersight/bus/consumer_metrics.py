"""Gauges of what a process's Redis consumers lost or moved aside, for its /metrics.

The consumers keep these counts (``ConsumerStats``); a worker exposes them summed over every
consumer it runs, so a poison telemetry sample or eval task is as visible as a poison record. Used
by ``infersight ingest`` (prefix ``infersight_ingest``) and ``infersight eval-worker``
(``infersight_eval_worker``); refreshed when /metrics or /healthz is read. The gateway registers the
ingest ones too (its in-process store sink); under ``--workers N`` they are summed over live
workers (``livesum``), so a dead worker's values do not linger with a ``pid`` label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge


class _Counts(Protocol):
    dead_lettered: int
    claimed: int
    dropped: int


class ConsumerGauges:
    """``<prefix>_dead_lettered_messages``, ``<prefix>_claimed_messages``, ``<prefix>_dropped_messages``."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.dead_lettered = Gauge(f"{prefix}_dead_lettered_messages",
                                   "Stream messages moved to the dead-letter stream (poison or too many deliveries).",
                                   registry=registry, multiprocess_mode="livesum")
        self.claimed = Gauge(f"{prefix}_claimed_messages",
                             "Messages taken over from consumers that stopped (XAUTOCLAIM).", registry=registry,
                             multiprocess_mode="livesum")
        self.dropped = Gauge(f"{prefix}_dropped_messages",
                             "Pending messages trimmed or deleted from the stream before they were delivered (lost).",
                             registry=registry, multiprocess_mode="livesum")

    def sync(self, stats: Sequence[_Counts]) -> None:
        """Set the gauges from every consumer the process runs."""
        self.dead_lettered.set(sum(s.dead_lettered for s in stats))
        self.claimed.set(sum(s.claimed for s in stats))
        self.dropped.set(sum(s.dropped for s in stats))
