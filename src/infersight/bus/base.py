"""The Bus and Exporter interfaces (after OpenTelemetry's processor -> exporter split).

``Bus.publish`` is called on the gateway's hot path: it never blocks and never raises. Delivery to
exporters happens on another thread in batches. What cannot be kept is counted in ``BusStats.dropped``
and exposed on /metrics, never lost silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from infersight.model import RequestRecord


class SinkUnavailable(Exception):
    """Raised by an exporter that is down as a whole, whatever the records (the eval sink while its
    judge is unreachable): the embedded bus holds the batch and retries it with backoff, without
    bisecting it or counting the failure against any record, so an outage never dead-letters."""


@dataclass(slots=True)
class BusStats:
    """Counters since the bus started (see docs/bus.md for exactly what each one counts)."""

    published: int = 0
    delivered: int = 0
    dropped: int = 0
    export_failures: int = 0
    queued: int = 0
    #: records kept only in the disk journal because memory was full (or a replay was catching up)
    spooled: int = 0
    #: journal lines that could not be read back (torn or corrupt), moved to the dead-letter folder
    dead_lettered: int = 0
    #: records read back from journal segments left by an earlier process
    replayed: int = 0


class Exporter(Protocol):
    """Receives batches on the bus's writer thread. Raising means "retry this batch later".

    An exporter may say ``idempotent = True`` (taking a record twice changes nothing, as with the
    store): the bus may then send a record it took again as a probe, to tell a record it refuses
    from an outage (``memory.MemoryBus._round``). An exporter with its own dead letters may define
    ``dead_lettered(record, reason) -> bool``: the memory bus calls it for a record the exporter
    refused ``max_deliveries`` times, and keeps the record in its own ``refused.jsonl`` only when
    that returns False (the eval sink files it with the eval dead letters and clears its lag)."""

    def export(self, batch: list[RequestRecord]) -> None: ...

    def shutdown(self) -> None: ...


class Bus(Protocol):
    def publish(self, record: RequestRecord) -> None:
        """Queue one record; O(1), no I/O, no exceptions."""
        ...

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (within the timeout), then shut the exporters down."""
        ...

    def stats(self) -> BusStats: ...
