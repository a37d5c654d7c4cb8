"""TelemetrySink writes idempotently and feeds observers; the bus journal keeps samples (no trace ids)."""

from __future__ import annotations

from pathlib import Path

from infersight.bus.journal import Journal
from infersight.model.telemetry import TelemetrySample
from infersight.store.duckdb_store import DuckDBStore
from infersight.telemetry.sink import TelemetrySink

AT = "2096-01-01T00:00:00+00:00"


def samples() -> list[TelemetrySample]:
    return [TelemetrySample(ts=AT, source="vllm", instance="gpu-0", metric="kv_cache_usage", value=v, model_id=m)
            for m, v in (("a", 0.5), ("b", 0.25))]


def test_sink_writes_once_and_observers_cannot_fail_the_write(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    seen: list[int] = []

    def broken(batch: list[TelemetrySample]) -> None:
        raise RuntimeError("display bug")

    sink = TelemetrySink(store, [broken, lambda batch: seen.append(len(batch))], close_store=True)
    sink.export(samples())
    sink(samples())  # a redelivery: the Redis consumer calls the sink
    assert sink.inserted == 2 and seen == [2, 2]
    sink.shutdown()


def test_the_journal_reads_samples_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path, record_type=TelemetrySample)
    for s in samples():
        journal.append(s)  # type: ignore[arg-type]
    journal.rotate()
    assert list(journal.read(1)) == samples()
    assert journal.dead_lettered == 0
    journal.close()
