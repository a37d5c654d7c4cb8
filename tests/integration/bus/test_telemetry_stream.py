"""Telemetry samples through a real Redis: the gateway-side producer (``<bus.stream>:telemetry``) and
the ingest worker's consumer writing them to a real DuckDB store."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from infersight.config import settings_from_dict
from infersight.model.telemetry import TelemetrySample
from infersight.runtime_telemetry import build_telemetry_bus, telemetry_consumer, telemetry_stream
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.redis_server import RedisServer


def test_samples_flow_through_redis_to_the_telemetry_table(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = settings_from_dict(config_dict(
        tmp_path / "data", bus={"backend": "redis", "url": redis_server.url, "flush_interval_s": 0.05}))
    assert telemetry_stream(settings) == "infersight:requests:telemetry"
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    producer = build_telemetry_bus(settings, [])
    producer.start()
    at = datetime.now(timezone.utc).isoformat()
    samples = [TelemetrySample(ts=at, source="vllm", instance="gpu-0", metric="kv_cache_usage", value=v, model_id=m)
               for m, v in (("sim-large", 0.5), ("sim-small", 0.25))]
    samples.append(TelemetrySample(ts=at, source="dcgm", instance="gpu-0", metric="gpu_utilization", value=0.9, gpu="0"))
    for s in samples:
        producer.publish(s)  # type: ignore[arg-type]
    consumer, sink = telemetry_consumer(settings, store)
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while sink.inserted < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        rows = store.telemetry_around("sim-large", datetime.now(timezone.utc), timedelta(minutes=1))
        assert {(r["metric"], r["model_id"]) for r in rows} == {("kv_cache_usage", "sim-large"),
                                                                 ("gpu_utilization", None)}
        assert sink.inserted == 3 and consumer.stats().delivered == 3 and consumer.stats().dead_lettered == 0
    finally:
        stop.set()
        runner.join(10)
        producer.stop()
        store.close()
