"""What writing NaN and infinities as NULL costs each store write (``store/arrow._finite_or_null``).

Builds one Arrow batch of 1,000 request records 200 times, with the check and without it (patched
out), alternating three times in one run; prints the medians and their ratio. The batch is built in
the store process or the ingest worker, never on the gateway's event loop.

    .venv/bin/python benchmarks/arrow_write_bench.py
"""

from __future__ import annotations

import statistics
import time

from infersight.model import RequestRecord
from infersight.store import arrow


def _records(n: int = 1000) -> list[RequestRecord]:
    return [RequestRecord(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m", backend="sim",
                          started_at="2026-11-20T00:00:00+00:00", ttft_ms=12.5, total_ms=100.0 + i, status_code=200,
                          prompt_tokens=i, completion_tokens=2 * i, stream=True) for i in range(n)]


def _median_ms(records: list[RequestRecord], rounds: int = 200) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        arrow.records_to_arrow(records)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    records = _records()
    check = arrow._finite_or_null
    with_check, without = [], []
    for _ in range(3):
        arrow._finite_or_null = check
        with_check.append(_median_ms(records))
        arrow._finite_or_null = lambda array: array  # type: ignore[assignment]
        without.append(_median_ms(records))
    arrow._finite_or_null = check
    a, b = statistics.median(with_check), statistics.median(without)
    print(f"1,000-record batch: {a:.3f} ms with the check, {b:.3f} ms without; ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
