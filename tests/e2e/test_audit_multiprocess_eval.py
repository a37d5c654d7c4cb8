"""Audit: several processes agreeing on evaluation (`infersight serve --workers 2` on one Redis, and
the `infersight ingest` worker that evaluates beside it with DuckDB, the scale-out shape).

Real processes on 127.0.0.1: a real redis-server (tests/redis_server.py), the simulator as engine
and as LLM judge, `serve --workers 2` (SO_REUSEPORT) and `ingest`. The test's docstring says what an
operator expects (issue 4, docs/evaluation.md) and what happens instead.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.evaluation.sampler import trace_fraction
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.server import SimServer
from tests.integration.test_audit_sampling_surfaces import _stream_records
from tests.redis_server import RedisServer, free_port

ADMIN = {"authorization": "Bearer sk-admin"}
SAMPLING = "/api/v1/admin/sampling"


def _eventually(check: Callable[[], Any], within_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def _sampling_key(redis_url: str) -> bytes:
    """The gateways' shared sampling key (made now if Redis has none: they follow within a second)."""
    from infersight.bus.redis_conn import connect
    from infersight.evaluation.sampling_key import RedisSamplingKey

    return RedisSamplingKey(connect(redis_url), "infersight:requests:sampling-key").get()


def _ids_outside(rate: float, count: int, start: int, key: bytes) -> list[str]:
    """``count`` trace ids that the deterministic draw does not sample at ``rate``."""
    out, n = [], start
    while len(out) < count:
        trace = f"{n:032x}"
        if trace_fraction(trace, key) >= rate:
            out.append(trace)
        n += 1
    return out


class Host:
    """redis-server, the simulator (engine and a fast sim-judge), `serve --workers 2` and `ingest`."""

    def __init__(self, tmp: Path, *, tenants: str, evaluation: str, workers: int = 2) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis")
        self.redis.start()
        fast_judge = dataclasses.replace(DEFAULT_PROFILES["sim-judge"], ttft_base_ms=20.0)
        self.sim = SimServer(seed=11, profiles={**DEFAULT_PROFILES, "sim-judge": fast_judge}).start()
        self.port, self.ingest_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ingest_base = f"http://127.0.0.1:{self.ingest_port}"
        self.config = tmp / "gw.yaml"
        self.config.write_text(
            f"server: {{host: 127.0.0.1, port: {self.port}}}\nstorage: {{path: {tmp / 'data'}}}\n"
            f"backends: [{{name: sim, url: '{self.sim.url}', models: [sim-small, sim-judge]}}]\n"
            f"tenants: {tenants}\n"
            "admin_api_keys: [sk-admin]\nlogging: {level: info}\n"
            f"bus: {{backend: redis, url: '{self.redis.url}', flush_interval_s: 0.05}}\n"
            f"evaluation: {{judge: {{url: '{self.sim.url}', model: sim-judge, max_retries: 1, timeout_s: 20,"
            f" input_price_per_1m: 1000.0, output_price_per_1m: 1000.0}}, {evaluation}}}\n"
        )
        self.env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.procs: list[subprocess.Popen[bytes]] = []
        log = tmp / "serve.log"
        self._start(log, "serve", "--config", str(self.config), "--workers", str(workers))
        self._start(tmp / "ingest.log", "ingest", "--config", str(self.config), "--port", str(self.ingest_port))

        def ingest_up() -> bool:
            try:
                return httpx.get(self.ingest_base + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        assert _eventually(ingest_up, 120, 0.2), (tmp / "ingest.log").read_text(errors="replace")[-3000:]
        assert _eventually(lambda: log.read_text(errors="replace").count("Application startup complete")
                           >= workers, 120, 0.2), log.read_text(errors="replace")[-3000:]

    def _start(self, log: Path, *args: str) -> None:
        with log.open("ab") as out:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "infersight.cli", *args], stdout=out,
                                               stderr=subprocess.STDOUT, env=self.env, start_new_session=True))

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        self.sim.stop()
        self.redis.stop()

    def ask(self, text: str, trace_id: str | None = None) -> tuple[str, int, dict[str, Any]]:
        """One request on a new connection (SO_REUSEPORT spreads them): (trace id, pid that served
        it, that worker's breaker as the admin API shows it)."""
        headers = {"authorization": "Bearer sk-a", **({"x-trace-id": trace_id} if trace_id else {})}
        with httpx.Client(base_url=self.base, timeout=60) as client:
            got = client.post("/v1/chat/completions", headers=headers,
                              json={"model": "sim-small", "messages": [{"role": "user", "content": text}],
                                    "max_tokens": 16})
            assert got.status_code == 200, got.text
            breaker = client.get(SAMPLING, headers=ADMIN).json()["breaker"]
            return got.headers["x-trace-id"], client.get("/healthz").json()["pid"], breaker

    def breakers(self, workers: int = 2, tries: int = 200) -> dict[int, dict[str, Any]]:
        """Every worker's breaker (admin API), pid from /healthz on the same connection."""
        seen: dict[int, dict[str, Any]] = {}
        for _ in range(tries):
            with httpx.Client(base_url=self.base, timeout=30) as client:
                got = client.get(SAMPLING, headers=ADMIN)
                assert got.status_code == 200, got.text
                seen[client.get("/healthz").json()["pid"]] = got.json()["breaker"]
            if len(seen) >= workers:
                return seen
        raise AssertionError(f"only {sorted(seen)} answered")

    def judged_traces(self) -> set[str]:
        got = httpx.get(self.ingest_base + "/api/v1/evaluations", params={"evaluator": "llm_judge", "limit": "1000"},
                        headers=ADMIN, timeout=30)
        assert got.status_code == 200, got.text
        return {r["trace_id"] for r in got.json()["data"]}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Callable[..., Host]]:
    made: list[Host] = []

    def make(**kwargs: Any) -> Host:
        made.append(Host(tmp_path, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_redis_that_lost_its_data_does_not_close_the_budget_breaker_on_the_workers(
        host: Callable[..., Host]) -> None:
    """docs/evaluation.md, "Circuit breaker": a spend counter Redis lost (a restart without
    persistence, a flush) "is rebuilt from eval_results by the next worker write, not restarted at
    0", and "a signal that cannot be read (Redis down) keeps the last reading: a hiccup neither opens
    nor closes the breaker". So a budget breaker open on every worker stays open through a Redis that
    comes back empty: the day's spend is still over the budget (it is in eval_results).

    Was: every gateway worker reads the missing counter as 0 (``RedisSpend.spend`` takes a missing
    key for "nothing spent"), so the breaker closes on every worker ("eval breaker closed: sampling
    restored") and random sampling runs at the full rate again, over budget, until an eval worker
    pays the judge again (for a task sampled at the full rate) and so rebuilds the counter; with no
    judge call due, it stays closed."""
    stack = host(tenants="[{id: acme, api_keys: [sk-a], sample_rate: 1.0}]",
                 evaluation="breaker: {check_interval_s: 0.5, budget: 0.05, reduced_factor: 0.1}")
    first = [stack.ask(f"What is the capital of France? ({i})")[0] for i in range(4)]
    assert _eventually(lambda: set(first) <= stack.judged_traces(), 90), "the sampled requests were not judged"
    # the ingest worker evaluates here (DuckDB): it shows the eval group's lag, as eval-worker does
    assert _eventually(lambda: httpx.get(stack.ingest_base + "/healthz", timeout=5).json().get(
        "oldest_unevaluated_s") == 0.0, 15), httpx.get(stack.ingest_base + "/healthz", timeout=5).json()
    assert "infersight_eval_oldest_unevaluated_seconds 0.0" in httpx.get(stack.ingest_base + "/metrics", timeout=5).text
    assert _eventually(lambda: all(b["open"] and b["reasons"] == ["budget"] for b in stack.breakers().values()), 15), \
        f"the budget breaker did not open on both workers: {stack.breakers()}"

    stack.redis.stop()  # back empty: a Redis without persistence restarted, or a replica promoted after a failover
    shutil.rmtree(stack.redis.directory)
    stack.redis.directory.mkdir()
    stack.redis.start()

    key = _sampling_key(stack.redis.url)  # Redis lost the key too: made again, and every gateway follows
    time.sleep(2.0)  # each gateway re-reads it every second
    traces = _ids_outside(0.1, 12, 0x5000, key)  # not sampled at the lowered rate (1.0 x 0.1)
    closed: dict[int, dict[str, Any]] = {}
    for trace in traces:
        _, pid, breaker = stack.ask("Who wrote Hamlet?", trace_id=trace)
        if not breaker["open"]:
            closed.setdefault(pid, breaker)
        time.sleep(0.2)
    records = _eventually(lambda: (r := _stream_records(stack.redis.url)) and all(t in r for t in traces) and r, 30)
    assert records, "the requests' records did not reach the stream"
    sampled = {t: records[t].sample_reason for t in traces if records[t].sampled_for_eval}
    assert not closed and not sampled, (
        "after Redis came back empty the budget breaker closed, though the day's spend is over the budget: "
        f"closed workers (pid: breaker) {closed}; requests sampled at the full rate: {sampled}")
