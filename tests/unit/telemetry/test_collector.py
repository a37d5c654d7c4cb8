"""The telemetry loop against a real simulator over 127.0.0.1, writing to a real DuckDB store.

Covers the whole embedded road: SimServer /metrics and /dcgm/metrics -> TelemetryCollector (its own
thread) -> MemoryBus (journal) -> TelemetrySink -> DuckDB ``telemetry``; failed targets counted and
logged once per outage; one scraping process per host (FileLeader).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from infersight.config import settings_from_dict
from infersight.model.telemetry import TelemetrySample
from infersight.runtime_telemetry import FileLeader, wire_telemetry
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore
from infersight.telemetry.collector import TelemetryCollector, TelemetryMetrics
from infersight.telemetry.settings import TelemetrySettings
from tests.conftest import config_dict

MODELS = ["sim-large", "sim-small"]


def targets(sim: SimServer) -> list[dict[str, Any]]:
    return [
        {"instance": "sim-gpu-0", "kind": "vllm", "url": f"{sim.base_url}/metrics", "models": MODELS},
        {"instance": "sim-gpu-0", "kind": "dcgm", "url": f"{sim.base_url}/dcgm/metrics", "models": MODELS},
    ]


def wait_until(check: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sim_samples_land_in_duckdb_through_the_bus(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "infersight.duckdb"))
    store.migrate()
    registry = CollectorRegistry()
    seen: list[TelemetrySample] = []
    with SimServer(seed=3) as sim:
        settings = settings_from_dict(config_dict(
            tmp_path / "data", url=sim.url, telemetry={"interval_s": 0.5, "timeout_s": 0.5, "targets": targets(sim)}))
        wiring = wire_telemetry(settings, store, registry, observers=[seen.extend])
        assert wiring is not None
        asyncio.run(wiring.start())
        try:
            wait_until(lambda: wiring.collector.rounds >= 2, what="two scrape rounds")
        finally:
            asyncio.run(wiring.stop())  # flushes the bus into the store
    assert wiring.collector._thread is None  # the loop thread ended
    assert (tmp_path / "data" / "spool-telemetry").is_dir()  # journalled like request records
    now = datetime.now(timezone.utc)
    rows = store.telemetry_around("sim-large", now, timedelta(minutes=1))
    store.close()
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_metric.setdefault(row["metric"], []).append(row)
    for name in ("kv_cache_usage", "requests_running", "gpu_utilization", "gpu_memory_utilization"):
        assert by_metric.get(name), f"no {name} rows"
    assert {r["source"] for r in by_metric["kv_cache_usage"]} == {"vllm"}
    assert {r["model_id"] for r in by_metric["kv_cache_usage"]} == {"sim-large"}
    gpu = by_metric["gpu_memory_utilization"]
    assert {(r["source"], r["gpu"], r["model_id"]) for r in gpu} == {("dcgm", "0", None)}
    assert all(0 < r["value"] < 1 for r in gpu)
    assert len(by_metric["kv_cache_usage"]) >= 2  # one per round
    assert len(seen) >= len(rows)  # the observer saw every written batch
    assert metric(registry, "infersight_telemetry_samples_total", source="dcgm") > 0
    assert metric(registry, "infersight_telemetry_scrape_seconds_count", kind="vllm") >= 2


def test_a_dead_target_is_counted_and_logged_once_per_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="infersight.telemetry")
    port = free_port()
    hung = socket.socket()  # accepts connections (backlog) and never answers: a timeout
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    registry = CollectorRegistry()
    published: list[TelemetrySample] = []
    with SimServer(seed=4) as sim:
        for path in ("/metrics", "/dcgm/metrics"):  # warm: a first page is slow, and the healthy targets
            httpx.get(f"{sim.base_url}{path}", timeout=30).raise_for_status()  # must never time out here
        # 1 s: each round waits that long on the hung target; less failed the healthy ones on a busy host
        settings = TelemetrySettings(interval_s=1, timeout_s=1.0, targets=[
            *targets(sim),
            {"instance": "dead", "kind": "vllm", "url": f"http://127.0.0.1:{port}/metrics"},
            {"instance": "hung", "kind": "sglang", "url": f"http://127.0.0.1:{hung.getsockname()[1]}/metrics"},
            {"instance": "missing", "kind": "tgi", "url": f"{sim.base_url}/no-such-page"},
        ])
        collector = TelemetryCollector(settings, published.append, TelemetryMetrics(registry))

        async def rounds(n: int) -> None:
            async with collector.session() as session:
                for _ in range(n):
                    await collector.run_round(session)

        asyncio.run(rounds(3))
        assert {k[0]: v for k, v in collector.down.items()} == {
            "dead": collector.down[("dead", "vllm")], "hung": "timeout", "missing": "HTTP 404"}
        assert "ClientConnectorError" in collector.down[("dead", "vllm")]
        with SimServer(seed=5, port=port) as back:  # the dead target comes back
            httpx.get(f"{back.base_url}/metrics", timeout=30).raise_for_status()  # warm: its first page is slow
            asyncio.run(rounds(1))
    hung.close()
    for instance, kind, n in (("dead", "vllm", 3), ("hung", "sglang", 4), ("missing", "tgi", 4)):
        assert metric(registry, "infersight_telemetry_scrape_failures_total", instance=instance, kind=kind) == n
    assert metric(registry, "infersight_telemetry_scrape_failures_total", instance="sim-gpu-0", kind="vllm") == 0
    down = [r for r in caplog.records if r.getMessage().startswith("telemetry target down")]
    assert sorted(r.fields["instance"] for r in down) == ["dead", "hung", "missing"]  # once each, not per round
    back = [r for r in caplog.records if r.getMessage() == "telemetry target answers again"]
    assert [r.fields["instance"] for r in back] == ["dead"]
    assert ("dead", "vllm") not in collector.down
    # the healthy targets kept reporting every round, whatever the others did
    assert sum(1 for s in published if s.metric == "gpu_utilization") == 4
    assert {s.instance for s in published} == {"sim-gpu-0", "dead"}


def test_one_process_per_host_scrapes(tmp_path: Path) -> None:
    first, second = FileLeader(tmp_path / "data" / "telemetry.lock"), FileLeader(tmp_path / "data" / "telemetry.lock")
    assert first() and first()
    assert not second()
    first.release()  # the leader stopped (or died: the kernel frees its lock)
    assert second()
    second.release()


def test_the_loop_skips_rounds_while_another_process_leads(tmp_path: Path) -> None:
    with SimServer(seed=6) as sim:
        settings = TelemetrySettings(interval_s=0.5, timeout_s=0.5, targets=targets(sim))
        leading = [False]
        collector = TelemetryCollector(settings, lambda s: None, leader=lambda: leading[0]).start()
        try:
            time.sleep(0.8)
            assert collector.rounds == 0
            leading[0] = True
            wait_until(lambda: collector.rounds >= 1, what="a round once leading")
        finally:
            started = time.monotonic()
            collector.stop()
        assert time.monotonic() - started < 2.0  # stop interrupts the wait, not after the interval


def test_an_nvml_target_is_read_each_round_beside_the_scrapes() -> None:
    from infersight.telemetry.nvml import NvmlCollector
    from tests.unit.telemetry.test_nvml import FakeNvml, h100

    with SimServer(seed=7) as sim:
        settings = TelemetrySettings(interval_s=1, timeout_s=1, targets=[
            *targets(sim), {"instance": "this-host", "kind": "nvml", "process_models": {"vllm": "sim-large"}}])
        collector = TelemetryCollector(settings, lambda s: None)
        assert collector.nvml is not None and collector.nvml.process_models == {"vllm": "sim-large"}
        collector.nvml = NvmlCollector("this-host", nvml=FakeNvml([h100(0), h100(1)]))
        got = asyncio.run(collector.collect_once())
        collector.stop()
    nvml = [s for s in got if s.source == "nvml"]
    assert {s.instance for s in nvml} == {"this-host"}
    assert sorted(s.gpu for s in nvml if s.metric == "gpu_utilization") == ["0", "1"]
    assert {s.source for s in got} == {"vllm", "dcgm", "nvml"}
