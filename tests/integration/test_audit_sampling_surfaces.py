"""Audit of sampling and the quality surfaces in the shapes the other suites touch least: real
`infersight serve --workers 2` processes sharing one Redis, and the scale-out eval consumer (the
one `infersight ingest` runs for DuckDB and `infersight eval-worker` runs for ClickHouse).

Real components only: redis-server on 127.0.0.1 (``tests/redis_server.py``), the simulator, DuckDB,
real HTTP. Tests that fail on the current code say in their docstring what the spec expects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from infersight.bus.redis_streams import RedisStreamBus
from infersight.config import settings_from_dict
from infersight.evaluation.sampler import trace_fraction
from infersight.model import EvalTask
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.integration.bus.conftest import redis_server  # noqa: F401  (the fixture)
from tests.redis_server import RedisServer, free_port

ADMIN = {"authorization": "Bearer sk-admin"}
SAMPLING = "/api/v1/admin/sampling"


def _eventually(check: Callable[[], bool], within_s: float = 10.0, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return check()


# --- the scale-out eval consumer and the content policy --------------------------------------------------


def test_the_eval_consumer_keeps_no_content_of_a_tenant_that_opted_out(tmp_path: Path, redis_server: RedisServer) -> None:
    """Spec: a tenant with ``content: none`` has opted out: "no content is kept, masked or sent to a
    judge" (docs/evaluation.md, "Content policy"); ``request_content`` follows the policy: "nothing
    for none".

    The scale-out eval consumer (``eval_consumer``: `infersight ingest` with DuckDB, `eval-worker` with
    ClickHouse) never looks at the policy: it keeps the text of every task it reads. A task that
    carries an opted-out tenant's text reaches the stream whenever the policy changed while tasks
    were on their way: the gateways' eval journals (``spool-evals``) replay at restart what Redis had
    not taken yet, and the stream holds a backlog of up to ``breaker.max_lag_s`` (300 s) by design,
    or a gateway on another host still runs the old config during a rolling restart. The worker,
    configured with ``content: none`` for the tenant, then writes the tenant's (masked) prompt and
    completion to ``request_content`` (and shows them in ``GET /api/v1/requests/{trace_id}``), after
    the tenant opted out.

    Now the sink drops such a task whole (no content row, no check or judge row), as the gateway's
    tap would not have sent it, and counts it."""
    from infersight.evaluation.eval_worker import eval_consumer

    data = config_dict(tmp_path / "data", tenants=[
        {"id": "acme", "api_keys": ["sk-a"], "content": "sampled"},
        {"id": "optout", "api_keys": ["sk-o"], "content": "none"},
    ], bus={"backend": "redis", "url": redis_server.url, "flush_interval_s": 0.05},
        evaluation={"child_process": False})
    settings = settings_from_dict(data)
    now = datetime.now(timezone.utc).isoformat()
    tasks = [EvalTask(trace_id=f"{n + 1:032x}", span_id="1" * 16, tenant_id=tenant, model_id="sim-small",
                      started_at=now, status_code=200, finish_reason="stop", sample_reason="random",
                      prompt_text=f"[EMAIL] asks {tenant}'s secret question", completion_text=f"{tenant}'s answer")
             for n, tenant in enumerate(("acme", "optout"))]
    # published as a gateway does (its eval bus is a RedisStreamBus of EvalTasks on evaluation.stream)
    bus = RedisStreamBus(redis_server.url, stream=settings.evaluation.stream, record_type=EvalTask, flush_interval_s=0.05)
    bus.start()
    for task in tasks:
        bus.publish(task)  # type: ignore[arg-type]
    assert bus.flush(5.0)
    bus.stop()

    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    store = DuckDBStore(str(tmp_path / "data" / "infersight.duckdb"))
    store.migrate()
    consumer, sink = eval_consumer(settings, store, CollectorRegistry())
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert _eventually(lambda: bool(store.eval_results_for(tasks[0].trace_id)) and sink.opted_out == 1,
                           within_s=20), "the consumer did not take both tasks"
        assert store.content_for(tasks[0].trace_id), "acme keeps content of its sampled requests"
        kept = store.content_for(tasks[1].trace_id)
        assert kept == [], f"content of the opted-out tenant was kept: {kept}"
        # dropped whole, as the gateway's tap would not have sent it: no row, no judge call
        assert store.eval_results_for(tasks[1].trace_id) == []
    finally:
        stop.set()
        thread.join(15)
        sink.shutdown()
        store.close()


# --- serve --workers 2: the admin API reaches every worker -----------------------------------------------


def _worker_config(tmp: Path, sim_url: str, port: int, redis_url: str) -> Path:
    path = tmp / "gw.yaml"
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp / 'data'}}}\n"
        f"backends: [{{name: sim, url: '{sim_url}', models: [sim-small]}}]\n"
        "tenants: [{id: acme, api_keys: [sk-a]}, {id: globex, api_keys: [sk-g], sample_rate: 0.0}]\n"
        "admin_api_keys: [sk-admin]\nlogging: {level: info}\n"
        "evaluation: {sample_rate: 0.0, child_process: false, max_forced_window_s: 60}\n"
        f"bus: {{backend: redis, url: '{redis_url}', flush_interval_s: 0.05}}\n"
    )
    return path


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisServer) -> Iterator[str]:
    """`infersight serve --workers 2` on the Redis bus (overrides in the Redis key), the simulator."""
    with SimServer(seed=5) as sim:
        port = free_port()
        config = _worker_config(tmp_path, sim.url, port, redis_server.url)
        log = tmp_path / "gw.log"
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config),
                                     "--workers", "2"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        try:
            assert _eventually(lambda: log.read_text(errors="replace").count("Application startup complete") >= 2,
                               within_s=60, every_s=0.2), log.read_text(errors="replace")[-3000:]
            yield f"http://127.0.0.1:{port}"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(40)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _served_by(base: str, key: str, trace_ids: list[str]) -> dict[str, int]:
    """One request per trace id, each on a new connection (SO_REUSEPORT spreads them over both
    workers): trace id -> pid of the worker that served it."""
    pids: dict[str, int] = {}
    for trace_id in trace_ids:
        with httpx.Client(base_url=base, timeout=30) as client:
            got = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}", "x-trace-id": trace_id},
                              json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 4})
            assert got.status_code == 200, got.text
            pids[trace_id] = client.get("/healthz").json()["pid"]  # same connection: the same worker
    return pids


def _stream_records(redis_url: str) -> dict[str, Any]:
    from infersight.bus.redis_conn import connect, decode

    client = connect(redis_url)
    try:
        return {r.trace_id: r for r in (decode(fields) for _, fields in client.xrange("infersight:requests"))}
    finally:
        client.close()


def test_rate_and_forced_window_set_through_one_worker_apply_on_every_worker_and_expire(
        workers: str, redis_server: RedisServer) -> None:
    """Spec: an admin change applies "at once, with no restart, to every gateway" (each re-reads the
    shared Redis key every second), sampling is deterministic on trace_id on every process
    (``blake2b(trace_id, key) / 2^64 < rate``, keyed with the gateways' shared secret), and a forced window expires by itself on every process.

    Two real worker processes: a rate set through one worker and a forced window opened through
    one are followed by both workers within the poll (1 s, given 2.5 s here), each record's
    decision matches the rate exactly, and once the window's deadline passes no worker samples
    ``forced`` any more."""
    with httpx.Client(base_url=workers, timeout=10) as admin:
        assert admin.put(f"{SAMPLING}/acme", json={"rate": 0.5}, headers=ADMIN).status_code == 200
        forced = admin.post(f"{SAMPLING}/force", json={"tenant": "globex", "duration_s": 15}, headers=ADMIN)
        assert forced.status_code == 200
    until = datetime.fromisoformat(forced.json()["forced"]["until"]).timestamp()
    time.sleep(2.5)
    acme = [f"{i:032x}" for i in range(1, 25)]
    globex = [f"{0xabc0 + i:032x}" for i in range(1, 9)]
    served = {**_served_by(workers, "sk-a", acme), **_served_by(workers, "sk-g", globex)}
    assert time.time() < until - 1.0, "the host was too slow to finish inside the forced window"
    assert len(set(served.values())) == 2, "the requests did not reach both workers"
    time.sleep(max(0.0, until - time.time()) + 1.5)  # the window is over, on every worker's clock
    after = [f"{0xdef0 + i:032x}" for i in range(1, 9)]
    _served_by(workers, "sk-g", after)
    assert _eventually(lambda: len(_stream_records(redis_server.url)) >= len(acme) + len(globex) + len(after), within_s=15)
    records = _stream_records(redis_server.url)
    from infersight.bus.redis_conn import connect
    from infersight.evaluation.sampling_key import RedisSamplingKey

    key = RedisSamplingKey(connect(redis_server.url), "infersight:requests:sampling-key").get()
    for trace_id in acme:
        expected = trace_fraction(trace_id, key) < 0.5
        assert (records[trace_id].sampled_for_eval, records[trace_id].sample_reason) == \
            (expected, "random" if expected else None), trace_id
    assert all(records[t].sample_reason == "forced" for t in globex), {t: records[t].sample_reason for t in globex}
    assert all(not records[t].sampled_for_eval for t in after), {t: records[t].sample_reason for t in after}
