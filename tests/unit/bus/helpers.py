"""Records and exporters shared by the bus tests (unit and integration)."""

from __future__ import annotations

import threading

from infersight.model import RequestRecord

SECRET = "zebra-prompt-marker"  # must never show up in a log line


def make_record(i: int, *, tenant: str = "acme") -> RequestRecord:
    return RequestRecord(
        trace_id=f"{i:032x}",
        span_id=f"{i:016x}",
        tenant_id=tenant,
        model_id="sim-large",
        backend="sim",
        started_at="2026-11-22T10:00:00+00:00",
        total_ms=12.5,
        prompt_tokens=i,
        prompt_text=f"{SECRET} {i}",
    )


def index_of(record: RequestRecord) -> int:
    return int(record.trace_id, 16)


class GateExporter:
    """Blocks while the gate is closed and raises while ``failing``; records every delivered batch."""

    def __init__(self, *, failing: int = 0) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.failing = failing  # raise on this many calls, then succeed
        self.calls = 0
        self.batches: list[list[RequestRecord]] = []
        self.lock = threading.Lock()

    def export(self, batch: list[RequestRecord]) -> None:
        self.gate.wait()
        with self.lock:
            self.calls += 1
            if self.failing:
                self.failing -= 1
                raise ConnectionError("sink down")
            self.batches.append(list(batch))

    def shutdown(self) -> None:
        return None

    @property
    def records(self) -> list[RequestRecord]:
        with self.lock:
            return [r for batch in self.batches for r in batch]
