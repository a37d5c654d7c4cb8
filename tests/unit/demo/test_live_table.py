"""The demo's table: latest telemetry while traffic runs, the run's peak in the final table."""

from __future__ import annotations

import io

from rich.console import Console

from infersight.demo.live import LiveAggregator
from infersight.model import RequestRecord, TelemetrySample


def _render(aggregator: LiveAggregator, final: bool) -> str:
    console = Console(file=io.StringIO(), width=250, color_system=None)
    console.print(aggregator.table("t", final=final))
    return console.file.getvalue()  # type: ignore[attr-defined]


def _row(text: str, model: str) -> list[str]:
    line = next(line for line in text.splitlines() if f" {model} " in line)
    return [cell.strip() for cell in line.strip("│ ").split("│")]


def _readings(ts: str, util: float, mem: float, kv: float) -> list[TelemetrySample]:
    return [
        TelemetrySample(ts, "dcgm", "gpu-0", "gpu_utilization", util, gpu="0"),
        TelemetrySample(ts, "dcgm", "gpu-0", "gpu_memory_utilization", mem, gpu="0"),
        TelemetrySample(ts, "vllm", "gpu-0", "kv_cache_usage", kv, model_id="m"),
    ]


def test_final_table_shows_the_peak_and_live_table_the_latest() -> None:
    aggregator = LiveAggregator()
    aggregator.export([RequestRecord(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="m",
                                     backend="sim", started_at="2026-11-22T00:00:00+00:00")])
    aggregator.telemetry(_readings("2026-11-22T00:00:02Z", 0.9, 0.7, 0.4))
    aggregator.telemetry(_readings("2026-11-22T00:00:04Z", 0.0, 0.6, 0.0))  # traffic stopped: idle readings

    live, final = _row(_render(aggregator, final=False), "m"), _row(_render(aggregator, final=True), "m")
    assert live[-3:] == ["0%", "60%", "0%"]
    assert final[-3:] == ["90%", "70%", "40%"]
    assert "the highest reading of the run" in _render(aggregator, final=True)
