"""`infersight serve --workers 2`: one port, two processes with their own sockets, metrics aggregated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infersight.exporters.jsonl import read_records
from infersight.sim.server import SimServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_with_two_workers(tmp_path: Path) -> None:
    with SimServer(seed=2) as sim:
        port = free_port()
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp_path / 'data'}}}\n"
            f"backends: [{{name: sim, url: '{sim.url}', models: [sim-small]}}]\n"
            "tenants: [{id: acme, api_keys: [sk-a]}]\nlogging: {level: warning}\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = subprocess.Popen([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config),
                                 "--workers", "2"], env=env, stderr=subprocess.PIPE)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "gateway did not start"
                time.sleep(0.1)
            body = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            for _ in range(20):
                # a new connection each time, so the kernel spreads them over both workers
                with httpx.Client() as client:
                    resp = client.post(base + "/v1/chat/completions", json=body,
                                       headers={"authorization": "Bearer sk-a"})
                assert resp.status_code == 200
            total = 0.0
            for line in httpx.get(base + "/metrics").text.splitlines():
                if line.startswith("infersight_requests_total{"):
                    total += float(line.rsplit(" ", 1)[1])
            assert total == 20.0
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=20)
    records = read_records(tmp_path / "data")
    assert len(records) == 20, "both workers flush their records on shutdown"
    files = list((tmp_path / "data" / "records").glob("records-*.jsonl"))
    assert len(files) == 2, "SO_REUSEPORT spreads new connections over both workers"
