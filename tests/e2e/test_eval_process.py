"""`infersight serve` runs the sampled path in its eval process (masking, the eval journal, checks,
the judge, and the writes to the store process through its socket): spaCy (imported by Presidio) and
aiohttp (the judge client) are loaded there and not in the gateway, as DuckDB is in its store
process; requests are still judged end to end; a child that is killed is replaced, counted on
/metrics, and the samples after it are judged too; the child's eval metrics show on /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from infersight.sim.server import SimServer
from tests.e2e.test_evaluation import wait_for
from tests.redis_server import free_port

ADMIN = {"authorization": "Bearer sk-admin"}


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (field 4 of /proc/<pid>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def child_running(pid: int, module: str) -> int:
    for child in children(pid):
        if module.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    raise AssertionError(f"process {pid} has no child running {module}")


def eval_child(pid: int) -> int:
    return child_running(pid, "infersight.evaluation.owner_child")


def maps(pid: int, package: str) -> bool:
    """Whether the process has mapped a file of ``package`` (its compiled extensions, in the
    package's folder or, like DuckDB's ``_duckdb`` module, beside it)."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return f"/{package}/" in text or f"/_{package}." in text


def test_the_gateway_judges_through_its_eval_process_and_replaces_it(tmp_path: Path) -> None:
    with SimServer(seed=4) as sim:
        port = free_port()
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp_path / 'data'}}}\n"
            f"backends: [{{name: sim, url: '{sim.url}', models: [sim-small, sim-judge]}}]\n"
            "tenants: [{id: acme, api_keys: [sk-a], sample_rate: 1.0}]\nadmin_api_keys: [sk-admin]\n"
            "logging: {level: warning}\nbus: {flush_interval_s: 0.05}\n"
            f"evaluation: {{judge: {{url: '{sim.url}', model: sim-judge}}}}\n"
        )
        url = f"http://127.0.0.1:{port}"
        gateway = subprocess.Popen([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config)],
                                   env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
        try:
            wait_for(lambda: _healthy(url, gateway))
            client = httpx.Client(base_url=url, timeout=30)

            def ask() -> str:
                got = client.post("/v1/chat/completions", headers={"authorization": "Bearer sk-a"},
                                  json={"model": "sim-small", "messages": [{"role": "user",
                                                                            "content": "Capital of France?"}]})
                assert got.status_code == 200
                return got.headers["x-trace-id"]

            def judged(trace: str) -> bool:
                story = client.get(f"/api/v1/requests/{trace}", headers=ADMIN)
                return story.status_code == 200 and any(
                    e["evaluator"] == "llm_judge" and e["dimension"] != "_error" for e in story.json()["evaluations"])

            first = ask()
            wait_for(lambda: judged(first))
            child = eval_child(gateway.pid)
            assert maps(child, "spacy") and not maps(gateway.pid, "spacy")
            # The judge's HTTP client (aiohttp) is in the child too; with no telemetry target and the
            # default upstream client, nothing in the gateway loads aiohttp (~13 MB of RSS).
            assert maps(child, "aiohttp") and not maps(gateway.pid, "aiohttp")
            # The DuckDB store lives in the store process (store.child_process): its writes take the
            # GIL in part, so the gateway does not even load DuckDB or pyarrow.
            store = child_running(gateway.pid, "infersight.store.store_child")
            assert maps(store, "duckdb") and not maps(gateway.pid, "duckdb") and not maps(gateway.pid, "pyarrow")

            health = client.get("/healthz").json()
            assert health["status"] == "ok" and health["eval_process"] == {"up": True, "pid": child, "starts": 1}
            assert health["store_process"] == {"up": True, "pid": store, "starts": 1}
            os.kill(child, signal.SIGKILL)
            later = [ask() for _ in range(3)]
            for trace in later:
                wait_for(lambda trace=trace: judged(trace))
            assert eval_child(gateway.pid) != child
            health = client.get("/healthz").json()
            assert health["eval_process"]["up"] and health["eval_process"]["starts"] == 2
            metrics = client.get("/metrics").text
            assert "infersight_eval_process_restarts_total 1.0" in metrics
            # The eval process owns the sampled path: its scores and judge use reach the gateway's
            # /metrics at scrape time (the new child counts what it wrote since its start).
            assert 'infersight_eval_results_total{evaluator="llm_judge"}' in metrics
            assert 'infersight_eval_tasks_total{outcome="published"} 4.0' in metrics
        finally:
            gateway.send_signal(signal.SIGINT)
            assert gateway.wait(timeout=30) == 0
        assert children(gateway.pid) == []


def _healthy(url: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"gateway exited with {proc.returncode}"
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
