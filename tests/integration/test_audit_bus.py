"""Audit of the transport's promise: nothing is lost silently; what had to be dropped is counted
and exposed. Each test here failed before its fix (see the report of the bus audit)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from infersight.bus.memory import MemoryBus
from infersight.bus.redis_streams import DEFAULT_STREAM, RedisStreamExporter
from infersight.model import RequestRecord
from tests.integration.bus.conftest import redis_server, wait_until  # noqa: F401 - a fixture
from tests.redis_server import RedisServer, free_port
from tests.unit.bus.helpers import GateExporter, index_of, make_record


def _fail_journal_after(bus: MemoryBus, monkeypatch: pytest.MonkeyPatch, good: int) -> None:
    """The disk fills up after ``good`` appends: later records are held in memory only."""
    journal = bus.journal
    assert journal is not None
    real = journal.append
    calls = {"n": 0}

    def append(record: RequestRecord) -> tuple[int, int, int, int]:
        calls["n"] += 1
        if calls["n"] > good:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(record)

    monkeypatch.setattr(journal, "append", append)


# -- embedded bus: records held only in memory ---------------------------------------------------


def test_stop_with_the_sink_down_counts_records_the_journal_could_not_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full, then the sink is down at shutdown: the journaled records wait for the next start,
    the memory-only ones are gone and must be counted in ``dropped``."""
    down = GateExporter(failing=10**6)
    bus = MemoryBus([down], journal_dir=tmp_path, flush_interval_s=0.01, batch_size=4)
    _fail_journal_after(bus, monkeypatch, good=10)
    bus.start()
    for i in range(30):
        bus.publish(make_record(i))
    bus.stop(timeout_s=0.3)
    assert bus.stats().published == 30
    assert bus.stats().dropped == 20  # the 20 records that never reached the journal

    sink = GateExporter()
    again = MemoryBus([sink], journal_dir=tmp_path, flush_interval_s=0.01)
    again.start()
    assert again.flush(5)
    again.stop()
    assert sorted(index_of(r) for r in sink.records) == list(range(10))  # 10 kept + 20 counted = 30


def test_publish_after_stop_is_counted_not_lost_silently(tmp_path: Path) -> None:
    """A request that finishes after the bus stopped (a slow stream at shutdown): nothing will
    deliver its record any more, so it is counted as dropped."""
    sink = GateExporter()
    bus = MemoryBus([sink], journal_dir=tmp_path / "spool", flush_interval_s=0.01)
    bus.start()
    bus.publish(make_record(0))
    bus.stop()
    bus.publish(make_record(1))
    stats = bus.stats()
    assert [index_of(r) for r in sink.records] == [0]
    assert stats.published == 2 and stats.delivered == 1 and stats.dropped == 1

    plain = MemoryBus([GateExporter()])  # no journal: the same
    plain.start()
    plain.stop()
    plain.publish(make_record(2))
    assert plain.stats().dropped == 1


# -- scale-out ingest worker: what its consumers dead-letter or lose is on /metrics ---------------


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, protocol=2)


def test_ingest_metrics_count_every_consumers_dead_letters_and_lost_messages(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The ingest worker runs three consumers (records, telemetry samples, and eval tasks with
    DuckDB); /metrics showed only the records consumer's dead letters, and never the pending
    messages that were deleted from the stream before delivery (``ConsumerStats.dropped``)."""
    r = _client(redis_server)
    telemetry = f"{DEFAULT_STREAM}:telemetry"
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(3)])
    r.xadd(DEFAULT_STREAM, {"r": b"not json"})  # poison in the records stream
    r.xadd(telemetry, {"r": b"{\"ts\": 1}"})  # poison in the telemetry stream
    # a record taken by a consumer that died, then deleted from the stream before anyone wrote it
    r.xgroup_create(DEFAULT_STREAM, "infersight-ingest", id="0")
    lost = r.xadd(DEFAULT_STREAM, {"r": b"{}"})
    r.xreadgroup("infersight-ingest", "dead-worker", {DEFAULT_STREAM: ">"}, count=100)
    r.xdel(DEFAULT_STREAM, lost)

    port = free_port()
    config = tmp_path / "ingest.yaml"
    config.write_text(
        f"storage: {{path: {tmp_path / 'data'}}}\nbackends: [{{name: sim, url: 'http://127.0.0.1:9/v1', "
        "models: [sim-large]}]\ntenants: [{id: acme, api_keys: [sk-a]}]\nlogging: {level: warning}\n"
        f"bus: {{backend: redis, url: '{redis_server.url}', claim_idle_ms: 100, trim_interval_s: 0}}\n"
        "evaluation: {enabled: false}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "infersight.cli", "ingest", "--config", str(config),
                             "--port", str(port)], env=env)
    try:
        wait_until(lambda: proc.poll() is None and r.xlen(f"{DEFAULT_STREAM}:dead") == 1
                   and r.xlen(f"{telemetry}:dead") == 1, timeout_s=60, what="both poison messages dead-lettered")

        def metric(name: str) -> float | None:
            for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return None

        wait_until(lambda: metric("infersight_ingest_dropped_messages") == 1.0, timeout_s=20,
                   what="the deleted pending message counted on /metrics")
        assert metric("infersight_ingest_dead_lettered_messages") == 2.0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
