"""Safe stream trimming against a real redis-server: only entries every group read and acknowledged,
older than keep_acked_s, are removed; pending and unread entries always stay; no group, no trim."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from prometheus_client import CollectorRegistry

from infersight.bus.redis_streams import DEFAULT_STREAM, RedisStreamExporter
from infersight.bus.redis_trim import StreamTrimmer, safe_minid, trim_stream
from tests.integration.bus.conftest import DictSink, Running, wait_until
from tests.redis_server import RedisServer, free_port
from tests.unit.bus.helpers import make_record

S = DEFAULT_STREAM


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, protocol=2)


def add(server: RedisServer, n: int, start: int = 0) -> list[bytes]:
    r = client(server)
    return [r.xadd(S, {"r": b"{}", "i": str(i)}) for i in range(start, start + n)]  # type: ignore[misc]


def read(r: redis.Redis, group: str, n: int, consumer: str = "c") -> list[bytes]:
    reply = r.xreadgroup(group, consumer, {S: ">"}, count=n)
    return [mid for _, entries in reply for mid, _ in entries]  # type: ignore[union-attr]


def ids(r: redis.Redis) -> list[bytes]:
    return [mid for mid, _ in r.xrange(S)]


def test_pending_and_unread_entries_survive_a_lagging_group(redis_server: RedisServer) -> None:
    r = client(redis_server)
    added = add(redis_server, 50)
    r.xgroup_create(S, "fast", id="0")
    r.xgroup_create(S, "slow", id="0")
    r.xack(S, "fast", *read(r, "fast", 50))  # everything read and acked
    slow = read(r, "slow", 20)
    r.xack(S, "slow", *slow[:10])  # 10 acked, 10 pending (ids 10..19), 30 never read

    result = trim_stream(r, S, keep_acked_s=0, approximate=False)
    assert result.minid == added[10].decode() and "oldest pending of group slow" in result.why
    assert result.trimmed == 10 and ids(r) == added[10:]
    pending = r.xreadgroup("slow", "c", {S: "0"}, count=100)  # the pending ones still have their payload
    assert [(mid, fields[b"i"]) for mid, fields in pending[0][1]] == [(m, str(i).encode()) for i, m in
                                                                      enumerate(added[10:20], 10)]
    assert trim_stream(r, S, keep_acked_s=0, approximate=False).trimmed == 0  # idempotent

    r.xack(S, "slow", *slow[10:])  # nothing pending: the bound is the slow group's last-delivered-id + 1
    result = trim_stream(r, S, keep_acked_s=0, approximate=False)
    assert "last delivered of group slow" in result.why and result.trimmed == 10 and ids(r) == added[20:]
    assert len(read(r, "slow", 100)) == 30  # the unread ones were never touched


def test_acked_entries_are_kept_for_keep_acked_s(redis_server: RedisServer) -> None:
    r = client(redis_server)
    now_ms = int(time.time() * 1000)
    for i in range(5):
        r.xadd(S, {"r": b"{}"}, id=f"{now_ms - 7_200_000 + i}-0")  # two hours old
    recent = add(redis_server, 5)
    r.xgroup_create(S, "g", id="0")
    r.xack(S, "g", *read(r, "g", 10))
    result = trim_stream(r, S, keep_acked_s=3600, approximate=False)
    assert result.why.startswith("keep_acked_s") and result.trimmed == 5 and ids(r) == recent
    assert trim_stream(r, S, keep_acked_s=3600, approximate=False).trimmed == 0  # recent ones are kept
    assert trim_stream(r, S, keep_acked_s=0, approximate=False).trimmed == 5 and r.xlen(S) == 0


def test_no_group_means_no_trim(redis_server: RedisServer) -> None:
    r = client(redis_server)
    assert safe_minid(r, S, 0) == (None, "no stream")
    add(redis_server, 20)
    result = trim_stream(r, S, keep_acked_s=0, approximate=False)
    assert (result.minid, result.trimmed, result.why) == (None, 0, "no consumer group") and r.xlen(S) == 20
    r.xgroup_create(S, "g", id="0")  # a group that read nothing protects everything
    assert trim_stream(r, S, keep_acked_s=0, approximate=False).trimmed == 0 and r.xlen(S) == 20


def test_approximate_trim_never_passes_the_bound(redis_server: RedisServer) -> None:
    r = client(redis_server)
    added = add(redis_server, 1000)
    r.xgroup_create(S, "g", id="0")
    got = read(r, "g", 650)
    r.xack(S, "g", *got[:500])  # 150 pending from added[500]
    result = trim_stream(r, S, keep_acked_s=0)  # MINID ~: whole radix nodes only (100 entries each)
    left = ids(r)
    assert 0 < result.trimmed <= 500 and left == added[result.trimmed :] and added[500] in left


def test_trimmer_thread_under_a_live_consumer_loses_nothing(
    redis_server: RedisServer, run_consumer: Callable[..., Running]
) -> None:
    exporter = RedisStreamExporter(redis_server.url)
    sink = DictSink()
    run_consumer(redis_server.url, sink, batch_size=50)
    registry = CollectorRegistry()
    trimmer = StreamTrimmer(redis_server.url, [S, "infersight:evals"], keep_acked_s=0, interval_s=0.05,
                            registry=registry, approximate=False).start()
    try:
        for start in range(0, 2000, 200):
            exporter.export([make_record(i) for i in range(start, start + 200)])
        wait_until(lambda: len(sink) == 2000, what="every record in the sink")
        wait_until(lambda: client(redis_server).xlen(S) == 0, what="acked entries trimmed")
    finally:
        trimmer.stop()
        exporter.shutdown()
    assert trimmer.trimmed[S] == 2000 and trimmer.trimmed["infersight:evals"] == 0 and trimmer.failures == 0
    assert registry.get_sample_value("infersight_bus_trimmed_entries_total", {"stream": S}) == 2000


def test_ingest_worker_trims_and_exports_the_metric(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"storage: {{path: {tmp_path / 'data'}}}\nbackends: [{{name: sim, url: 'http://127.0.0.1:9/v1', "
        "models: [sim-large]}]\ntenants: [{id: acme, api_keys: [sk-a]}]\nlogging: {level: warning}\n"
        f"bus: {{backend: redis, url: '{redis_server.url}', keep_acked_s: 0, trim_interval_s: 0.2}}\n"
        "evaluation: {enabled: false}\n"
    )
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(30)])
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "infersight.cli", "ingest", "--config", str(config),
                             "--port", str(port)], env=env)
    try:
        wait_until(lambda: proc.poll() is None and client(redis_server).xlen(S) == 0, timeout_s=60,
                   what="the ingest worker to write and trim")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert f'infersight_bus_trimmed_entries_total{{stream="{S}"}} 30.0' in metrics
        assert int(client(redis_server).xinfo_groups(S)[0]["pending"]) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_idle_members_holding_nothing_are_forgotten(redis_server: RedisServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Workers killed or scaled away leave members whose entries peers claimed: the trimmer removes
    those idle past IDLE_CONSUMER_MS with nothing pending, never one that still holds entries."""
    from infersight.bus import redis_trim

    r = client(redis_server)
    add(redis_server, 4)
    r.xgroup_create(S, "g", id="0")
    r.xack(S, "g", *read(r, "g", 2, consumer="gone"))  # read and acknowledged: holds nothing
    read(r, "g", 2, consumer="holder")  # read, not acknowledged
    trimmer = StreamTrimmer(redis_server.url, [S], interval_s=0)
    try:
        trimmer.run_once()  # a day has not passed: both stay
        assert {m["name"] for m in r.xinfo_consumers(S, "g")} == {b"gone", b"holder"}
        monkeypatch.setattr(redis_trim, "IDLE_CONSUMER_MS", 0)
        trimmer.run_once()
    finally:
        trimmer.stop()
    assert {m["name"]: m["pending"] for m in r.xinfo_consumers(S, "g")} == {b"holder": 2}
