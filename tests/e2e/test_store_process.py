"""`infersight serve` under a service manager's stop: SIGTERM to the whole process group (as systemd
and Docker send it) reaches the gateway and both its children at once. The children ignore it and
are stopped by the gateway after its last flush, so the records still queued in the bus (a long
flush interval holds them) all reach DuckDB, and nothing logs a child as crashed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx

from infersight.sim.server import SimServer
from tests.e2e.test_eval_process import _healthy, child_running
from tests.e2e.test_evaluation import wait_for
from tests.redis_server import free_port

REQUESTS = 12


def test_a_group_sigterm_flushes_every_record_through_the_store_process(tmp_path: Path) -> None:
    with SimServer(seed=5) as sim:
        port = free_port()
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp_path / 'data'}}}\n"
            f"backends: [{{name: sim, url: '{sim.url}', models: [sim-small]}}]\n"
            "tenants: [{id: acme, api_keys: [sk-a], content: none}]\n"
            "logging: {level: info}\nbus: {flush_interval_s: 30}\n"  # nothing is written before the stop
        )
        log = tmp_path / "gateway.log"
        with log.open("wb") as out:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "infersight.cli", "serve", "--config", str(config)], stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,  # its own group, as under a service manager
                env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
            try:
                url = f"http://127.0.0.1:{port}"
                wait_for(lambda: _healthy(url, gateway))
                store = child_running(gateway.pid, "infersight.store.store_child")
                with httpx.Client(base_url=url, timeout=30) as client:
                    for i in range(REQUESTS):
                        got = client.post("/v1/chat/completions", headers={"authorization": "Bearer sk-a"},
                                          json={"model": "sim-small", "messages": [{"role": "user", "content": f"q{i}"}]})
                        assert got.status_code == 200
                os.killpg(gateway.pid, signal.SIGTERM)
                # uvicorn shuts down gracefully, then re-raises the signal so the exit status says why
                assert gateway.wait(timeout=60) in (0, -signal.SIGTERM)
            finally:
                if gateway.poll() is None:
                    os.killpg(gateway.pid, signal.SIGKILL)
        text = log.read_text()
        assert "store process exited" not in text and "eval process exited" not in text, text[-2000:]
        assert not Path(f"/proc/{store}").exists()  # stopped by the gateway, not left behind
        con = duckdb.connect(str(tmp_path / "data" / "infersight.duckdb"), read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM requests WHERE tenant_id = 'acme'").fetchone() == (REQUESTS,)
        finally:
            con.close()
