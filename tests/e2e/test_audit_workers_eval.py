"""Audit of ``infersight serve --workers 2`` with evaluation on, as a platform team runs it: real
processes sharing one port (SO_REUSEPORT), a real redis-server, the simulator as engine.

Each test fails on the current code; its docstring says what an operator expects and what happens.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from infersight.sim.server import SimServer
from tests.e2e.test_audit_workers import _kill_group, _serve, _started, redis  # noqa: F401 (the fixture)
from tests.e2e.test_evaluation import wait_for
from tests.redis_server import RedisServer, free_port

ADMIN = {"authorization": "Bearer sk-admin"}


def _post(base: str, text: str) -> httpx.Response:
    """One request on a new connection, so SO_REUSEPORT spreads them over the workers."""
    with httpx.Client(timeout=30) as client:
        got = client.post(base + "/v1/chat/completions", headers={"authorization": "Bearer sk-a"},
                          json={"model": "sim-small", "messages": [{"role": "user", "content": text}],
                                "max_tokens": 4})
    assert got.status_code == 200, got.text
    return got


def _healthz_by_worker(base: str, workers: int = 2, tries: int = 200) -> dict[int, dict]:
    """``/healthz`` of every worker (it answers for itself), on new connections until each has answered."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        with httpx.Client(timeout=10) as client:
            body = client.get(base + "/healthz").json()
        seen[body["pid"]] = body
        if len(seen) >= workers:
            break
    assert len(seen) == workers, f"only {sorted(seen)} answered"
    return seen


def _sample(text: str, name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _redis_config(tmp: Path, sim_url: str, port: int, redis_url: str, *, bus_extra: str = "",
                  evaluation: str = "") -> Path:
    path = tmp / "gw.yaml"
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp / 'data'}}}\n"
        f"backends: [{{name: sim, url: '{sim_url}', models: [sim-small]}}]\n"
        "tenants: [{id: acme, api_keys: [sk-a], sample_rate: 1.0}]\nadmin_api_keys: [sk-admin]\n"
        "logging: {level: info}\n"
        f"bus: {{backend: redis, url: '{redis_url}', flush_interval_s: 0.05{bus_extra}}}\n"
        f"evaluation: {{{evaluation}}}\n"
    )
    return path


def test_eval_tasks_a_worker_dropped_show_on_metrics_whichever_worker_is_scraped(
        tmp_path: Path, redis: RedisServer) -> None:
    """An operator alerts on ``infersight_eval_tasks_total{outcome="dropped_bus"}`` (docs/evaluation.md:
    tasks the eval bus could not keep are counted, never dropped silently) and Prometheus scrapes the
    host over one kept-alive connection, so always through the same worker. docs/gateway.md: /metrics on
    any worker aggregates all. Was: each worker copies its eval bus's drop count into the shared counter
    only when it serves a scrape (``EvalWiring.sync_metrics`` is an ``on_scrape`` hook; the records' bus
    has a periodic sync, the eval bus none), so the drops of every other worker never reach /metrics,
    though that worker's own /healthz shows them."""
    with SimServer(seed=7) as sim:
        port = free_port()
        config = _redis_config(tmp_path, sim.url, port, redis.url, bus_extra=", journal: false",
                               evaluation="max_queue: 10")
        log = tmp_path / "serve.log"
        proc = _serve(config, 2, log)
        try:
            wait_for(lambda: _started(log) >= 2, 60, "two workers")
            base = f"http://127.0.0.1:{port}"
            redis.stop()  # the eval tasks wait in each worker's eval bus: 10 in memory, the rest dropped
            sent = 0
            while True:
                for _ in range(20):
                    _post(base, f"question {sent}")
                    sent += 1
                health = _healthz_by_worker(base)
                dropped = {pid: body["eval_bus"]["dropped"] for pid, body in health.items()}
                if all(dropped.values()) or sent >= 200:
                    break
            assert all(dropped.values()), f"each worker dropped eval tasks: {dropped} after {sent} requests"
            for _ in range(20):  # the last tasks leave the masking queue: wait for the counts to settle
                time.sleep(1.0)  # (also time enough for any periodic sync of the shared counter)
                settled = {pid: body["eval_bus"]["dropped"] for pid, body in _healthz_by_worker(base).items()}
                if settled == dropped:
                    break
                dropped = settled
            with httpx.Client(timeout=10) as scraper:  # one connection, as Prometheus keeps
                scraped = [scraper.get(base + "/metrics").text for _ in range(3)]
            counted = _sample(scraped[-1], "infersight_eval_tasks_total", outcome="dropped_bus")
            assert counted == sum(dropped.values()), (
                f"/metrics counts {counted} eval tasks dropped by the bus; the workers' /healthz say {dropped}")
        finally:
            _kill_group(proc)

