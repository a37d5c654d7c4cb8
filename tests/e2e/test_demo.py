"""`infersight demo --duration S` runs the whole stack, drives several tenants, and exits cleanly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections import Counter

from infersight.model import RequestRecord
from infersight.store.base import RequestFilter
from infersight.store.duckdb_store import DuckDBStore


def read_records(data) -> list[RequestRecord]:
    store = DuckDBStore(str(data / "infersight.duckdb"))
    try:
        rows = store.list_requests(RequestFilter(), limit=1000).data
    finally:
        store.close()
    return [RequestRecord.from_dict({**r, "started_at": r["started_at"].isoformat()}) for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_runs_and_ends_cleanly(tmp_path) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "infersight.cli", "demo", "--duration", "4", "--data-dir", str(data),
         "--port", str(free_port()), "--rps", "30"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "infersight demo: final" in result.stdout and "TTFT p50" in result.stdout
    records = read_records(data)
    assert len(records) >= 30
    assert len({r.tenant_id for r in records}) >= 3
    assert len({r.model_id for r in records}) >= 2
    assert len({r.use_case for r in records}) >= 3
    assert Counter(r.stream for r in records)[True] > 0 and all(r.trace_id for r in records)
    streamed_ok = [r for r in records if r.stream and r.status_code == 200 and r.error_type is None]
    assert streamed_ok and all(r.ttft_ms and r.ttft_ms > 0 for r in streamed_ok)
    assert "quality" in result.stdout and "checks failed" in result.stdout
    # the closing line's error count is the table's: HTTP errors and streams cut mid-answer alike
    said = re.search(r"sent (\d+) requests \((\d+) answered with an error", result.stdout)
    assert said is not None, result.stdout[-500:]
    stored_errors = sum(1 for r in records if r.status_code >= 400 or r.error_type is not None)
    assert (int(said.group(1)), int(said.group(2))) == (len(records), stored_errors)
    import duckdb

    con = duckdb.connect(str(data / "infersight.duckdb"), read_only=True)
    try:
        per_tenant = dict(con.execute("SELECT tenant_id, count(*) FROM eval_results GROUP BY 1").fetchall())
        telemetry = con.execute("SELECT source, instance, metric, model_id FROM telemetry").fetchall()
    finally:
        con.close()
    assert per_tenant.get("acme", 0) > 0 and per_tenant.get("globex", 0) > 0
    assert "initech" not in per_tenant  # opted out: no content ever leaves the gateway
    # GPU and engine telemetry scraped from the simulator's /metrics and /dcgm/metrics every 2 s
    assert {instance for _, instance, _, _ in telemetry} == {"sim-gpu-0"}
    metrics = {(source, metric) for source, _, metric, _ in telemetry}
    assert {("vllm", "kv_cache_usage"), ("vllm", "requests_running"), ("dcgm", "gpu_utilization"),
            ("dcgm", "gpu_memory_utilization")} <= metrics
    assert {m for _, _, metric, m in telemetry if metric == "kv_cache_usage"} >= {"sim-large", "sim-small"}
    assert "GPU util" in result.stdout and "KV cache" in result.stdout
