"""The scale-out shape with real processes: `infersight serve --workers 2` on one Redis, and
`infersight ingest` writing to the store; every request lands exactly once. Also: the embedded
shape refuses --workers with a clear message (DuckDB belongs to one process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infersight.sim.server import SimServer
from infersight.store.base import RequestFilter
from infersight.store.duckdb_store import DuckDBStore
from tests.redis_server import RedisServer, free_port


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.1)


def write_config(tmp_path: Path, sim_url: str, port: int, redis_url: str | None) -> Path:
    bus = f"bus: {{backend: redis, url: '{redis_url}', flush_interval_s: 0.05}}\n" if redis_url else ""
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp_path / 'data'}}}\n"
        f"backends: [{{name: sim, url: '{sim_url}', models: [sim-small]}}]\n"
        "tenants: [{id: acme, api_keys: [sk-a]}]\nadmin_api_keys: [sk-admin]\nlogging: {level: warning}\n" + bus
    )
    return config


def start(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.Popen([sys.executable, "-m", "infersight.cli", *args], env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def _nice(pid: int) -> int:
    """The nice value of a process (field 19 of /proc/<pid>/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_two_gateway_workers_one_redis_one_ingest_worker(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    with SimServer(seed=2) as sim:
        port, ingest_port = free_port(), free_port()
        config = write_config(tmp_path, sim.url, port, redis.url)
        gateway = start("serve", "--config", str(config), "--workers", "2")
        ingest = start("ingest", "--config", str(config), "--port", str(ingest_port))
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base + "/healthz", gateway)
            wait_healthy(f"http://127.0.0.1:{ingest_port}/healthz", ingest)
            # bus.consumer_nice (10): the ingest worker yields the CPU to the gateways; they keep theirs
            assert _nice(ingest.pid) == min(os.nice(0) + 10, 19) and _nice(gateway.pid) == os.nice(0)
            body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            trace_ids = set()
            for _ in range(30):
                with httpx.Client() as client:  # a new connection each time: SO_REUSEPORT spreads them
                    resp = client.post(base + "/v1/chat/completions", json=body,
                                       headers={"authorization": "Bearer sk-a"})
                assert resp.status_code == 200
                trace_ids.add(resp.headers["x-trace-id"])
            total = sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(base + "/metrics").text.splitlines()
                        if line.startswith("infersight_requests_total{"))
            assert total == 30.0, "metrics aggregate over both workers"
            deadline = time.monotonic() + 15
            while True:  # the ingest worker serves the query API over the store it owns
                page = httpx.get(f"http://127.0.0.1:{ingest_port}/api/v1/requests", params={"limit": "100"},
                                 headers={"authorization": "Bearer sk-admin"}).json()
                if len(page["data"]) >= 30 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert {r["trace_id"] for r in page["data"]} == trace_ids
        finally:
            stop(gateway)
            stop(ingest)
            redis.stop()
    store = DuckDBStore(str(tmp_path / "data" / "infersight.duckdb"))
    try:
        assert store.count_requests(RequestFilter()) == 30, "exactly one row per request"
    finally:
        store.close()


def test_embedded_shape_refuses_workers_clearly(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", free_port(), None)
    result = subprocess.run([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config),
                             "--workers", "2"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "server.workers" in result.stderr and "bus.backend: redis" in result.stderr
