"""`infersight serve --workers N` as a platform team runs it: real processes, one Redis, the simulator.

- a worker that crashes at start makes the supervisor give up with a clear error, not loop for ever;
- a config error only a worker would meet (a tokenizer file) is reported once, exit status 2;
- the bus gauges on /metrics count every worker, not only the one that served the scrape;
- SIGKILLing a worker loses no record and duplicates none; SIGTERM flushes every worker;
- SIGKILLing the supervisor takes its workers down too (no orphans holding the port).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.bus.redis_conn import connect, decode
from infersight.sim.server import SimServer
from tests.e2e.test_evaluation import wait_for
from tests.redis_server import RedisServer, free_port

STREAM = "infersight:requests"
BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _config(tmp: Path, sim_url: str, port: int, redis_url: str, bus_extra: str = "", extra: str = "") -> Path:
    path = tmp / "gw.yaml"
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp / 'data'}}}\n"
        f"backends: [{{name: sim, url: '{sim_url}', models: [sim-small]}}]\n"
        "tenants: [{id: acme, api_keys: [sk-a]}]\nadmin_api_keys: [sk-admin]\nlogging: {level: info}\n"
        f"evaluation: {{enabled: false}}\nbus: {{backend: redis, url: '{redis_url}'{bus_extra}}}\n" + extra
    )
    return path


def _serve(config: Path, workers: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config),
                                 "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _workers(supervisor: int) -> list[int]:
    """The supervisor's gateway workers (not multiprocessing's resource tracker)."""
    out = []
    for child in _children(supervisor):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _started(log: Path) -> int:
    """Workers that finished their lifespan startup, from the shared log."""
    return log.read_text(errors="replace").count("Application startup complete")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the group (the supervisor, workers, orphans)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _spread_requests(base: str, count: int) -> set[str]:
    """``count`` requests, each on a new connection, so SO_REUSEPORT spreads them over the workers."""
    traces = set()
    for _ in range(count):
        with httpx.Client(timeout=30) as client:
            got = client.post(base + "/v1/chat/completions", json=BODY, headers={"authorization": "Bearer sk-a"})
        assert got.status_code == 200, got.text
        traces.add(got.headers["x-trace-id"])
    return traces


def _stream_traces(redis_url: str) -> list[str]:
    client = connect(redis_url)
    try:
        return [decode(fields).trace_id for _, fields in client.xrange(STREAM)]
    finally:
        client.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_crash_looping_worker_makes_the_supervisor_give_up_clearly(tmp_path: Path, redis: RedisServer) -> None:
    """Was: every worker died at start (here the journal folder is a file) and the supervisor restarted
    them every 0.7 s for ever, exit status never reached, the log a stream of tracebacks."""
    config = _config(tmp_path, "http://127.0.0.1:9/v1", free_port(), redis.url)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "spool").write_text("not a folder")
    log = tmp_path / "serve.log"
    proc = _serve(config, 2, log)
    try:
        code = proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        pytest.fail("the supervisor kept restarting crashing workers:\n" + log.read_text()[-1500:])
    text = log.read_text()
    assert code != 0
    assert "crash" in text and "giving up" in text, text[-1500:]
    assert not _workers(proc.pid)


def test_a_worker_only_config_error_is_reported_once_with_status_2(tmp_path: Path, redis: RedisServer) -> None:
    """A tokenizer file that is not there fails ``build_gateway``: with one worker that is a config error
    (status 2, the key named); with --workers 2 it was a crash loop in every worker."""
    config = _config(tmp_path, "http://127.0.0.1:9/v1", free_port(), redis.url)
    config.write_text(config.read_text().replace(
        "models: [sim-small]", f"models: [{{name: sim-small, tokenizer: {{tokenizer_json: {tmp_path / 'nope.json'}}}}}]"))
    result = subprocess.run([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config),
                             "--workers", "2"], capture_output=True, text=True, timeout=45)
    assert result.returncode == 2, result.stderr[-1500:]
    assert "nope.json" in result.stderr and "Traceback" not in result.stderr, result.stderr[-1500:]


def _gauge(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_bus_gauges_follow_every_worker_not_only_the_scraped_one(tmp_path: Path, redis: RedisServer) -> None:
    """Was: a worker copied its bus stats into the shared gauges only when it served a request or a
    scrape. With Redis down the records waited in each worker's bus; once Redis was back and every
    record delivered, an idle worker still reported the records it had queued (Prometheus keeps one
    connection, so one worker, for its scrapes): a backlog alert that never cleared."""
    with SimServer(seed=3) as sim:
        port = free_port()
        config = _config(tmp_path, sim.url, port, redis.url, bus_extra=", flush_interval_s: 0.05")
        log = tmp_path / "serve.log"
        proc = _serve(config, 2, log)
        try:
            wait_for(lambda: _started(log) >= 2, 40, "two workers")
            base = f"http://127.0.0.1:{port}"
            redis.stop()
            traces = _spread_requests(base, 16)  # served: the records wait in the workers' buses
            redis.start()
            wait_for(lambda: len(_stream_traces(redis.url)) >= len(traces), 30, "the backlog to reach Redis")
            time.sleep(2.5)  # a worker's gauges may lag its bus by a moment, no more
            with httpx.Client(timeout=10) as scraper:  # one connection, as Prometheus keeps
                text = scraper.get(base + "/metrics").text
            queued = [line for line in text.splitlines() if line.startswith("infersight_bus_queued")]
            assert _gauge(text, "infersight_bus_queued_records") == 0, queued
            assert _gauge(text, "infersight_bus_spooled_records") == 0
        finally:
            _kill_group(proc)


def test_a_sigkilled_worker_is_replaced_and_every_record_lands_once(tmp_path: Path, redis: RedisServer) -> None:
    """A worker SIGKILLed with records still in its bus: the supervisor restarts it, the new worker takes
    its journal slot and replays it, and SIGTERM to the supervisor flushes every worker: each request
    is in the stream exactly once."""
    with SimServer(seed=4) as sim:
        port = free_port()
        config = _config(tmp_path, sim.url, port, redis.url, bus_extra=", flush_interval_s: 60")
        log = tmp_path / "serve.log"
        proc = _serve(config, 2, log)
        try:
            wait_for(lambda: _started(log) >= 2 and len(_workers(proc.pid)) == 2, 40, "two workers")
            base = f"http://127.0.0.1:{port}"
            traces = _spread_requests(base, 12)
            victim = _workers(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: _started(log) >= 3 and len(_workers(proc.pid)) == 2 and victim not in _workers(proc.pid),
                  40, "the replacement worker")
            traces |= _spread_requests(base, 4)
            answered = set()
            for _ in range(8):  # /healthz is per worker and says which one answered
                with httpx.Client(timeout=10) as client:
                    answered.add(client.get(base + "/healthz").json()["pid"])
            assert answered <= set(_workers(proc.pid)) and victim not in answered
            os.kill(proc.pid, signal.SIGTERM)  # the supervisor only, as `kill PID` does
            assert proc.wait(timeout=45) == 0
        finally:
            _kill_group(proc)
        got = _stream_traces(redis.url)
    assert sorted(got) == sorted(traces), "every record once: none lost with the killed worker, none twice"


def test_workers_do_not_outlive_a_sigkilled_supervisor(tmp_path: Path, redis: RedisServer) -> None:
    """Was: the OOM killer (or ``kill -9``) on the supervisor left its workers serving as orphans; they
    held the port (SO_REUSEPORT let a new supervisor start beside them) and their journal slots."""
    with SimServer(seed=5) as sim:
        port = free_port()
        config = _config(tmp_path, sim.url, port, redis.url)
        log = tmp_path / "serve.log"
        proc = _serve(config, 2, log)
        try:
            wait_for(lambda: _started(log) >= 2 and len(_workers(proc.pid)) == 2, 40, "two workers")
            workers = _workers(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            gone = wait_for(lambda: not any(_alive(w) for w in workers) or None, 20, "the orphaned workers to exit")
            assert gone
        finally:
            _kill_group(proc)


class _CountingStore:
    """Stands in for a shared ClickHouse: counts the retention runs it is asked for."""

    def __init__(self, runs: list[int]) -> None:
        self.runs = runs

    def apply_retention(self, now: Any, policy: Any) -> dict[str, int]:
        self.runs.append(os.getpid())
        return {}

    def close(self) -> None:
        pass


def test_retention_runs_once_per_host_not_once_per_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers N`` with the memory bus on a ClickHouse server: every worker owns a store client and
    a retention loop. Was: each ran the same deletes at its start and every hour (N mutations); the
    lock file under storage.path lets one do it, and another take over when it stops."""
    import asyncio

    from infersight import runtime
    from infersight.config import settings_from_dict

    runs: list[int] = []
    monkeypatch.setattr(runtime, "open_gateway_store", lambda settings, **_: _CountingStore(runs))
    settings = settings_from_dict({
        "storage": {"path": str(tmp_path / "data")},
        "backends": [{"name": "sim", "url": "http://127.0.0.1:9/v1", "models": ["sim-small"]}],
        "tenants": [{"id": "acme", "api_keys": ["sk-a"]}],
        "evaluation": {"enabled": False},
        "store": {"backend": "clickhouse", "url": "http://127.0.0.1:9"},
    })
    apps = [runtime.build_gateway(settings) for _ in range(2)]  # what two workers build

    async def run(hooks: list[Callable[[], Any]]) -> None:
        for hook in hooks:
            await hook()

    for app in apps:
        asyncio.run(run(app.on_startup))
    wait_for(lambda: runs, 5, "a retention run")
    time.sleep(0.5)
    assert len(runs) == 1, "one retention run at start, not one per worker"
    asyncio.run(run(apps[0].on_shutdown))  # the leader stops: the other may now take over
    for app in apps[1:]:
        asyncio.run(run(app.on_shutdown))
