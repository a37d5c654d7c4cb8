"""Audit of the eval process that owns the sampled path (the default embedded shape) and the
gateway's lifecycle around it: restarts, the store process away, journal replay, the breaker.

Real parts only: the eval process (``owner_child``) and the store process are real child
processes, the store is DuckDB, and the judge is a real OpenAI-compatible HTTP server on 127.0.0.1
(``FakeJudge``) that counts the calls it is paid for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from infersight.config import Settings, settings_from_dict
from infersight.evaluation.breaker import EvalBreaker, period_start
from infersight.evaluation.masking import MaskingQueue
from infersight.evaluation.metrics import EvalGatewayMetrics
from infersight.evaluation.owner import EvalOwnerProcess, ProcessLag, ProcessSpend
from infersight.evaluation.rubric import load_rubric
from infersight.model import EvalResult, EvalTask
from infersight.store.remote import RemoteStore
from infersight.sim.server import SimServer
from tests.conftest import config_dict
from tests.integration.bus.test_audit_eval_scale import FakeJudge, Reply, verdict
from tests.redis_server import free_port

PRICE_IN = 1000.0  # per 1M input tokens: a verdict of 1,000 prompt tokens costs 1.0
DIMENSIONS = load_rubric("default").dimension_names


def wait_for(predicate: Callable[[], object], timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def owned_settings(tmp_path: Path, judge_url: str | None, **breaker: Any) -> Settings:
    judge = {"url": judge_url, "model": "judge", "max_retries": 0, "timeout_s": 5.0,
             "input_price_per_1m": PRICE_IN} if judge_url else {}
    return settings_from_dict(config_dict(
        tmp_path / "data", logging={"level": "warning"},
        bus={"backend": "memory", "flush_interval_s": 0.05},
        evaluation={"mask_linger_s": 0.05, "judge": judge, "breaker": breaker}))


def task(i: int, prompt: str = "What is the capital of France?") -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", started_at=datetime.now(timezone.utc).isoformat(), status_code=200,
                    finish_reason="stop", prompt_text=prompt, completion_text="Paris", sample_reason="random")


class Gateway:
    """The gateway's side of the owned path, wired as ``runtime_eval.wire_owned_path`` does."""

    def __init__(self, settings: Settings, store: RemoteStore) -> None:
        assert store.address is not None
        self.settings = settings
        self.store = store
        self.registry = CollectorRegistry()
        self.metrics = EvalGatewayMetrics(self.registry)
        self.process = EvalOwnerProcess(settings, store.address, on_restart=self.metrics.process_restarts.inc,
                                        restart_interval_s=0.2)
        self.masking = MaskingQueue(None, self.metrics, linger_s=0.05, handoff=self.process.handoff)
        self.process.start()
        self.masking.start()

    def stop(self) -> None:
        """What ``EvalWiring.stop`` does at a SIGTERM: the last hand-offs, then the child's stop."""
        self.masking.stop()
        self.process.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RemoteStore]:
    settings = owned_settings(tmp_path, None)
    remote = RemoteStore(settings, listen=True)
    try:
        yield remote
    finally:
        remote.close()


@pytest.fixture
def judges() -> Iterator[Callable[[Callable[[dict[str, Any], int], Reply]], FakeJudge]]:
    servers: list[FakeJudge] = []

    def start(answer: Callable[[dict[str, Any], int], Reply]) -> FakeJudge:
        servers.append(FakeJudge(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def judged_row(i: int, cost: float) -> dict[str, Any]:
    """A judge row written earlier today (what an earlier gateway run paid for)."""
    t = task(i)
    row = EvalResult.for_task(t, evaluator="llm_judge", evaluator_version="v-earlier", dimension="relevance",
                              evaluated_at=datetime.now(timezone.utc).isoformat(), score=4.0)
    row.judge_cost = cost
    return row.to_dict()


def test_the_breakers_spend_survives_an_eval_process_restart_while_the_store_is_away(
        tmp_path: Path, store: RemoteStore) -> None:
    """Spec (docs/evaluation.md, "Circuit breaker"): in-process the spend is "seeded at start ...
    from eval_results, so a restart does not forget the day's spend"; and "a signal that cannot be
    read keeps the last reading: a hiccup neither opens nor closes the breaker".

    The eval process seeds its ``LocalSpend`` lazily, at the breaker's first ``spend`` question. When
    that first read fails (the store process is being restarted, as when it and the eval process
    are OOM-killed together), ``LocalSpend._reseed`` has already recorded the period and never
    reads the store again: from the next check on the day's spend is 0 and the budget breaker
    closes, so the judge is paid past the budget for the rest of the day."""
    settings = owned_settings(tmp_path, None, budget=5.0, check_interval_s=60)
    store.write_rows("eval_results", [judged_row(i, 1.0) for i in range(8)])  # 8.0 paid today already
    gateway = Gateway(settings, store)
    try:
        spend = ProcessSpend(gateway.process)
        breaker = EvalBreaker(settings.evaluation.breaker, gateway_sampler(), ProcessLag(gateway.process), spend)
        today = period_start(time.time(), "day")
        assert spend.spend(today) == pytest.approx(8.0)
        assert breaker.check().open  # over budget

        store_pid, child_pid = store.process.pid, gateway.process.pid
        assert store_pid is not None and child_pid is not None
        os.kill(store_pid, signal.SIGKILL)
        os.kill(child_pid, signal.SIGKILL)
        wait_for(lambda: not gateway.process.alive(), 10, "the eval process to be seen gone")
        state = breaker.check()  # restarts the eval process; its spend cannot be read yet
        assert state.open, "an unreadable spend keeps the last reading"
        store.eval_results_for(task(0).trace_id)  # the gateway's next store call restarts the store process
        assert gateway.process.pid != child_pid and store.process.pid != store_pid
        readings = [spend.spend(today) for _ in range(2)]
        state = breaker.check()
        assert readings == [pytest.approx(8.0)] * 2 and state.open, (
            f"after the restart the eval process reads the day's spend as {readings} (8.0 was paid), "
            f"and the budget breaker is {'open' if state.open else 'closed'}")
    finally:
        gateway.stop()


class _Sampler:
    def __init__(self) -> None:
        self.factors: list[float] = []

    def set_throttle(self, factor: float) -> None:
        self.factors.append(factor)


def gateway_sampler() -> _Sampler:
    return _Sampler()


def calls_about(judge: FakeJudge, ticket: str) -> int:
    return sum(1 for body in judge.bodies if ticket in body)


def judge_rows(store: RemoteStore, t: EvalTask) -> list[dict[str, Any]]:
    return [r for r in store.eval_results_for(t.trace_id) if r["evaluator"] == "llm_judge"]


def test_a_restart_does_not_pay_the_judge_again_for_a_task_it_judged_and_wrote(
        tmp_path: Path, store: RemoteStore, judges: Callable[..., FakeJudge]) -> None:
    """Spec (docs/evaluation.md, "Lag, retries and dead letters"): scores already computed are
    kept "so the judge is not paid twice", and "recently written tasks are not judged again";
    the judge is paid per call (``judge_cost``).

    The judge is partly away (rate limits, an overloaded replica): in one batch it answers task A
    and not task B. The eval process writes A's verdict and holds the batch for B, so the journal
    still holds A. A gateway restart (SIGTERM, then start) replays the journal into a new eval
    process, which remembers nothing of what the old one wrote and does not ask the store
    (``ask_store_before_judging`` is off in the embedded shape): A is judged and paid again."""
    holding = {"on": True}
    bodies: list[str] = []

    def answer(body: dict[str, Any], n: int) -> Reply:
        text = json.dumps(body)
        bodies.append(text)
        if holding["on"] and "ticket-bravo" in text:
            return 503, "overloaded"
        return verdict(1000)

    judge = judges(answer)
    judge.bodies = bodies  # type: ignore[attr-defined]
    settings = owned_settings(tmp_path, judge.url)
    held, judged = task(1, "What is the capital of France? ticket-bravo"), task(2, "Capital of Peru? ticket-alpha")
    first = Gateway(settings, store)
    try:
        first.masking.submit(held)  # first in the journal: the batch cannot be acknowledged past it
        first.masking.submit(judged)
        wait_for(lambda: judge_rows(store, judged), 30, "task A's verdict written")
        wait_for(lambda: calls_about(judge, "ticket-bravo") >= 2, 30, "task B retried")
    finally:
        first.stop()  # a SIGTERM: the child gives up on B after its stop timeout; B stays journaled
    assert not judge_rows(store, held)
    paid_for_a = calls_about(judge, "ticket-alpha")
    assert paid_for_a == 1
    holding["on"] = False  # the judge is back
    second = Gateway(settings, store)  # the gateway started again: its eval process replays spool-evals
    try:
        wait_for(lambda: judge_rows(store, held), 30, "task B judged after the restart")
        time.sleep(0.5)
        rows = judge_rows(store, judged)
        assert len(rows) == len({(r["dimension"], r["evaluator_version"]) for r in rows})  # rows one each
        assert calls_about(judge, "ticket-alpha") == paid_for_a, (
            f"the judge was paid {calls_about(judge, 'ticket-alpha')} times for task A, "
            "whose verdict was in the store before the restart")
    finally:
        second.stop()


def test_a_sigterm_lets_a_judge_call_in_flight_finish_within_the_documented_30_s(
        tmp_path: Path, store: RemoteStore, judges: Callable[..., FakeJudge]) -> None:
    """Spec (docs/evaluation.md, "The eval process", Failure): "at a normal stop it first delivers
    what its bus holds (up to 30 s; the rest stays journaled for the next start)"; and the judge
    is not paid twice for a verdict it gave.

    A judge call that takes 13 s (well inside ``judge.timeout_s``, 60 s, and a loaded judge's p99)
    is in flight when the gateway is stopped. The eval process stops its bus with the bus's own
    default of 10 s (``SampledPath.stop``), not the 30 s the gateway waits for it: the verdict the
    judge returns at 13 s is thrown away, and the next start pays the judge for it again."""
    slow = {"on": True}
    bodies: list[str] = []

    def answer(body: dict[str, Any], n: int) -> Reply:
        text = json.dumps(body)
        bodies.append(text)
        if slow["on"]:
            time.sleep(13)
        return verdict(1000)

    judge = judges(answer)
    judge.bodies = bodies  # type: ignore[attr-defined]
    settings = owned_settings(tmp_path, judge.url)
    settings = settings.model_copy(update={"evaluation": settings.evaluation.model_copy(update={
        "judge": settings.evaluation.judge.model_copy(update={"timeout_s": 60.0})})})
    t = task(3, "Capital of Chile? ticket-charlie")
    first = Gateway(settings, store)
    try:
        first.masking.submit(t)
        wait_for(lambda: calls_about(judge, "ticket-charlie") == 1, 30, "the judge call in flight")
    finally:
        t0 = time.monotonic()
        first.stop()  # SIGTERM: the gateway waits up to 30 s for its eval process
        stopped_in = time.monotonic() - t0
    written_at_stop = bool(judge_rows(store, t))
    slow["on"] = False
    second = Gateway(settings, store)
    try:
        wait_for(lambda: judge_rows(store, t), 30, "the task judged")
        time.sleep(0.5)
        assert written_at_stop and calls_about(judge, "ticket-charlie") == 1, (
            f"stop took {stopped_in:.1f} s and left the verdict unwritten ({written_at_stop=}); "
            f"the judge was paid {calls_about(judge, 'ticket-charlie')} times for the task")
    finally:
        second.stop()


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "infersight.cli", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"gateway exited with {proc.returncode}"
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_tasks_of_a_sigkilled_gateway_are_evaluated_after_an_immediate_restart(
        tmp_path: Path, judges: Callable[..., FakeJudge]) -> None:
    """Spec (docs/evaluation.md, "The eval process", Failure): "Nothing journaled is lost: the new
    child replays spool-evals"; "a killed gateway leaves nothing behind".

    The gateway is SIGKILLed (the OOM killer) while its eval process holds journaled tasks (here
    the judge is away). The eval process saw its pipe close and spent up to 10 s trying to
    deliver, holding ``spool-evals/slot-000``. A supervisor restarts the gateway at once: its new
    eval process found slot-000 locked, took slot-001, and adopts orphaned slots only at its start
    (``Journal._adopt_orphans``): the old process's tasks stayed in slot-000, replayed by nobody
    and invisible to the lag, until some later restart. Now a child whose gateway is gone leaves
    its bus within a second (``owner_child.GONE_STOP_S``). Tasks still in the gateway's own memory
    (its masking queue) are lost with it by design: raw text is never spooled."""
    away = {"on": True}

    def answer(body: dict[str, Any], n: int) -> Reply:
        return (503, "overloaded") if away["on"] else verdict(1000)

    judge = judges(answer)
    with SimServer(seed=6) as sim:
        port = free_port()
        config = tmp_path / "gw.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: {port}}}\nstorage: {{path: {tmp_path / 'data'}}}\n"
            f"backends: [{{name: sim, url: '{sim.url}', models: [sim-small]}}]\n"
            "tenants: [{id: acme, api_keys: [sk-a], sample_rate: 1.0}]\nadmin_api_keys: [sk-admin]\n"
            "logging: {level: warning}\nbus: {flush_interval_s: 0.05}\n"
            f"evaluation: {{mask_linger_s: 0.05, judge: {{url: '{judge.url}', model: judge, max_retries: 0, "
            "timeout_s: 5}}\n")
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        first = _serve(config, log)
        second: subprocess.Popen[bytes] | None = None
        try:
            wait_for(lambda: _healthy(url, first), 60, "the first gateway")
            traces = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(3):
                    got = client.post("/v1/chat/completions", headers={"authorization": "Bearer sk-a"},
                                      json={"model": "sim-small", "messages": [{"role": "user", "content": "Capital of France?"}]})
                    assert got.status_code == 200
                    traces.append(got.headers["x-trace-id"])
            def journaled() -> bool:  # taken by the eval process (masked and journaled): what must survive
                text = httpx.get(f"{url}/metrics", timeout=10).text
                return 'infersight_eval_tasks_total{outcome="published"} 3.0' in text

            wait_for(journaled, 30, "the three tasks journaled by the eval process")
            wait_for(lambda: judge.calls >= 1, 30, "the judge asked (and away)")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = _serve(config, log)  # the supervisor restarts it at once
            wait_for(lambda: _healthy(url, second), 60, "the second gateway")
            away["on"] = False  # the judge is back

            def judged(trace: str) -> bool:
                story = httpx.get(f"{url}/api/v1/requests/{trace}", headers={"authorization": "Bearer sk-admin"},
                                  timeout=10)
                return story.status_code == 200 and any(
                    e["evaluator"] == "llm_judge" and e["dimension"] != "_error" for e in story.json()["evaluations"])

            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and not all(judged(t) for t in traces):
                time.sleep(0.5)
            left = [t for t in traces if not judged(t)]
            slots = {p.name: len(list(p.glob("journal-*.jsonl")))
                     for p in sorted((tmp_path / "data" / "spool-evals").glob("slot-*"))}
            assert not left, (f"{len(left)} of {len(traces)} sampled requests never evaluated after the "
                              f"restart; segments per journal slot: {slots}")
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(40)
                    except subprocess.TimeoutExpired:
                        proc.kill()
