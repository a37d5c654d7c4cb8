"""Nothing is lost, counted exactly: the store goes down under load; the server is SIGKILLed and
restarted. Afterwards every request that got a complete response has exactly one row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer
from infersight.store.base import RequestFilter, StoreUnavailable
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.redis_server import free_port

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8, "stream": True}


class FlakyStore:
    """A real DuckDB store whose writes fail while ``down`` is set (reads keep working)."""

    def __init__(self, inner: DuckDBStore) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.refused = 0

    def write_requests(self, records: list[Any]) -> int:
        if self.down.is_set():
            self.refused += 1
            raise StoreUnavailable("store is down (test)")
        return self.inner.write_requests(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def drive(url: str, seconds: float, workers: int = 4) -> list[str]:
    """Send streaming requests until time is up; the trace ids of complete responses."""
    done: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    with client.stream("POST", url + "/chat/completions", json=BODY,
                                       headers={"authorization": "Bearer sk-acme-test"}) as resp:
                        text = b"".join(resp.iter_raw())
                        if resp.status_code == 200 and text.endswith(b"data: [DONE]\n\n"):
                            with lock:
                                done.append(resp.headers["x-trace-id"])
                except httpx.TransportError:
                    time.sleep(0.05)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def rows_per_trace(db: Path) -> dict[str, int]:
    store = DuckDBStore(str(db))
    try:
        counts: dict[str, int] = {}
        cursor = None
        while True:
            page = store.list_requests(RequestFilter(), limit=1000, cursor=cursor)
            for row in page.data:
                counts[row["trace_id"]] = counts.get(row["trace_id"], 0) + 1
            if page.next_cursor is None:
                return counts
            cursor = page.next_cursor
    finally:
        store.close()


def test_store_down_under_load_loses_nothing(tmp_path: Path) -> None:
    with SimServer(seed=4) as sim:
        settings = settings_from_dict(config_dict(tmp_path / "data", sim.url,
                                                  bus={"flush_interval_s": 0.05, "batch_size": 50}))
        (tmp_path / "data").mkdir()
        flaky = FlakyStore(DuckDBStore(str(tmp_path / "data" / "infersight.duckdb")))
        flaky.migrate()
        app = build_gateway(settings, store=flaky)  # type: ignore[arg-type]
        with ThreadedServer(app) as gateway:
            flaky.down.set()
            first = drive(gateway.url, 1.5)
            assert flaky.refused > 0, "the store must have been down while records arrived"
            flaky.down.clear()
            second = drive(gateway.url, 0.5)
        # leaving the block stops the gateway, which flushes the bus into the (back up) store
        flaky.inner.close()
    done = first + second
    counts = rows_per_trace(tmp_path / "data" / "infersight.duckdb")
    assert len(done) > 20
    assert {t: counts.get(t, 0) for t in done} == {t: 1 for t in done}


def test_sigkill_mid_load_then_restart_replays_without_duplicates(tmp_path: Path) -> None:
    with SimServer(seed=5) as sim:
        port = free_port()
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp_path / 'data'}}}\n"
            f"backends: [{{name: sim, url: '{sim.url}', models: [sim-small]}}]\n"
            "tenants: [{id: acme, api_keys: [sk-acme-test]}]\nlogging: {level: warning}\n"
            # no flush before the kill: every record is only in the journal when the process dies
            "bus: {flush_interval_s: 30.0, batch_size: 100000}\n"
        )
        url = f"http://127.0.0.1:{port}"

        def serve() -> subprocess.Popen:
            proc = subprocess.Popen([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config)],
                                    env=dict(os.environ))
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        return proc
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)

        proc = serve()
        done: list[str] = []
        loader = threading.Thread(target=lambda: done.extend(drive(url + "/v1", 3.0)))
        loader.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        loader.join()
        killed_with = len(done)
        assert rows_per_trace(tmp_path / "data" / "infersight.duckdb") == {}, "nothing reached the store yet"
        proc = serve()  # replays the journal left by the killed process
        done += drive(url + "/v1", 0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    counts = rows_per_trace(tmp_path / "data" / "infersight.duckdb")
    assert killed_with > 5, "some requests must have completed before the kill"
    assert {t: counts.get(t, 0) for t in done} == {t: 1 for t in done}
    assert all(n == 1 for n in counts.values()), "no duplicates"
