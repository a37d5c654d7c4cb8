"""The gateway's eval process: a real child interpreter masks, checks and judges (the simulator over
HTTP) exactly as the in-process parts do; a child that dies fails its calls, is restarted and
counted, and the eval sink's retries and dead letters work through it unchanged."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infersight.bus.memory import MemoryBus
from infersight.evaluation.checks import run_checks
from infersight.evaluation.dead_letters import JsonlDeadLetters
from infersight.evaluation.masking import presidio_mask
from infersight.evaluation.offload import EvalProcess, EvalProcessError, RemoteEvaluate, RemoteJudge, RemoteMask
from infersight.evaluation.offload_child import EVALUATE, EVALUATE_MANY, JUDGE, JUDGE_MANY, MASK
from infersight.evaluation.reference import run_reference
from infersight.evaluation.settings import EvaluationSettings, JudgeSettings
from infersight.evaluation.worker import EvalSink
from infersight.model import EvalTask
from infersight.sim.judge import sim_judge_profile
from infersight.sim.profiles import DEFAULT_PROFILES
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore

TEXTS = [
    "Mail jane.doe@example.com or call +1 415 555 0100 about card 4111 1111 1111 1111.",
    "CPF 529.982.247-25 and IBAN DE89 3704 0044 0532 0130 00, SSN 078-05-1120.",
    "Nothing personal here, just the capital of France.",
    "x" * 3000,
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    profiles = {**DEFAULT_PROFILES, "judge-ok": sim_judge_profile(10.0)}
    with SimServer(seed=9, profiles=profiles) as server:
        yield server


@pytest.fixture(scope="module")
def process(sim: SimServer) -> Iterator[EvalProcess]:
    settings = EvaluationSettings(judge=JudgeSettings(url=sim.url, model="judge-ok", input_price_per_1m=1.0))
    proc = EvalProcess(settings, {MASK, EVALUATE, JUDGE}, restart_interval_s=0.0)
    proc.start()
    yield proc
    proc.stop()


def kill_child(proc: EvalProcess) -> int:
    """SIGKILL the eval process's child and wait until its owner sees it gone; its pid."""
    pid = proc.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def task(i: int, *, answer: object = "Paris") -> EvalTask:
    return EvalTask(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large", use_case="chat",
        started_at="2096-01-01T00:00:00+00:00", status_code=200, finish_reason="stop",
        prompt_text="What is the capital of France?", completion_text=answer,  # type: ignore[arg-type]
        reference="Paris",
        sample_reason="random",
    )


def test_masking_in_the_child_equals_masking_in_process(process: EvalProcess) -> None:
    local, remote = presidio_mask(), RemoteMask(process)
    for text in TEXTS:
        assert remote(text, 2000) == local(text, 2000)
    assert remote.many(TEXTS, 2000) == [local(text, 2000) for text in TEXTS]  # one round trip per task
    masked, entities, truncated = remote(TEXTS[0], 2000)
    assert "jane.doe" not in masked and entities.get("EMAIL") == 1 and not truncated
    assert remote(TEXTS[3], 2000)[2] is True  # truncated


def test_checks_in_the_child_equal_checks_in_process(process: EvalProcess) -> None:
    for t in (task(1), task(2, answer="I'm sorry, I cannot help with that."), task(3, answer="")):
        remote = RemoteEvaluate(process)(t)
        local = [*run_checks(t), *run_reference(t)]
        strip = lambda rows: [(r.evaluator, r.evaluator_version, r.dimension, r.score, r.label) for r in rows]  # noqa: E731
        assert strip(remote) == strip(local) and remote


def test_the_judge_runs_in_the_child_and_rows_land_in_the_store(process: EvalProcess, tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    judge = RemoteJudge(process)
    sink = EvalSink(store, evaluators=[RemoteEvaluate(process)], judge=judge)
    try:
        sink.export([task(10), task(11, answer="Lyon")])
        rows = store.eval_results_for(f"{10:032x}")
        judged = {r["dimension"]: r for r in rows if r["evaluator"] == "llm_judge"}
        assert judged["factual_fidelity"]["score"] >= 4
        assert judged["factual_fidelity"]["evaluator_version"] == judge.evaluator_version
        assert judged["factual_fidelity"]["judge_cost"] > 0
        assert {r["evaluator"] for r in rows} == {"checks", "reference", "llm_judge"}
        wrong = {r["dimension"]: r["score"] for r in store.eval_results_for(f"{11:032x}")
                 if r["evaluator"] == "llm_judge"}
        assert wrong["factual_fidelity"] < judged["factual_fidelity"]["score"]
    finally:
        sink.shutdown()
        store.close()


def test_a_judge_that_cannot_be_reached_is_an_error_row_named_by_its_reason(tmp_path: Path) -> None:
    closed_port = "http://127.0.0.1:9/v1"
    settings = EvaluationSettings(judge=JudgeSettings(url=closed_port, max_retries=0, timeout_s=2.0))
    proc = EvalProcess(settings, {JUDGE})
    proc.start()
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = EvalSink(store, evaluators=[], judge=RemoteJudge(proc))
    try:
        sink.export([task(20)])
        (row,) = store.eval_results_for(f"{20:032x}")
        assert (row["evaluator"], row["dimension"], row["label"]) == ("llm_judge", "_error", "connection")
        assert sink.judge_failures == 1
    finally:
        sink.shutdown()
        proc.stop()
        store.close()


def test_a_task_the_checks_fail_on_goes_to_dead_letter_through_the_child(process: EvalProcess,
                                                                          tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    dead = JsonlDeadLetters(tmp_path / "dead")
    sink = EvalSink(store, evaluators=[RemoteEvaluate(process)], dead_letter=dead)
    bus = MemoryBus([sink], journal_dir=str(tmp_path / "spool-evals"), flush_interval_s=0.01, max_backoff_s=0.05,
                    max_deliveries=2, record_type=EvalTask)
    poison, good = task(30, answer=12345), task(31)  # an answer that is not text breaks the checks
    bus.start()
    try:
        with pytest.raises(Exception, match="AttributeError"):
            sink.export([poison, good])  # the child's error, raised to the bus (which would retry)
        for t in (poison, good):
            bus.publish(t)  # type: ignore[arg-type]
        assert bus.flush(timeout_s=10)  # the bus proves the poison task bad and hands it to the sink
        assert store.eval_results_for(f"{31:032x}")
        assert not store.eval_results_for(f"{30:032x}")
        lines = (tmp_path / "dead" / "eval-tasks.jsonl").read_text().splitlines()
        assert len(lines) == 1 and f"{30:032x}" in lines[0]
        assert "evaluators failed: AttributeError" in lines[0]  # the child's type, not RemoteError
    finally:
        bus.stop()
        sink.shutdown()
        store.close()


def test_a_child_that_dies_fails_its_calls_and_is_restarted_and_counted() -> None:
    restarts: list[int] = []
    proc = EvalProcess(EvaluationSettings(), {MASK}, restart_interval_s=1.0,
                       on_restart=lambda: restarts.append(1))
    proc.start()
    try:
        mask = RemoteMask(proc)
        assert mask("a@b.com", 100)[0] == "[EMAIL]"
        first = kill_child(proc)
        assert not proc.alive()
        with pytest.raises(EvalProcessError, match="paced"):
            proc.submit(MASK, ("a@b.com", 100))  # within restart_interval_s of the last start: not yet
        assert mask("a@b.com", 100)[0] == "[EMAIL]"  # a blocking call waits out the interval instead
        assert proc.pid != first and restarts == [1] and proc.starts == 2
    finally:
        proc.stop()
    assert not proc.alive()


def test_a_child_that_cannot_build_its_parts_fails_the_start_clearly(tmp_path: Path) -> None:
    settings = EvaluationSettings(judge=JudgeSettings(url="http://127.0.0.1:9/v1", api_key_env="INFERSIGHT_NO_SUCH_KEY"))
    os.environ.pop("INFERSIGHT_NO_SUCH_KEY", None)
    proc = EvalProcess(settings, {JUDGE})
    with pytest.raises(EvalProcessError, match="INFERSIGHT_NO_SUCH_KEY"):
        proc.start()
    assert not proc.alive()


def test_a_masking_error_does_not_carry_the_text_back(process: EvalProcess) -> None:
    with pytest.raises(Exception) as failure:
        RemoteMask(process)(None, 2000)  # type: ignore[arg-type]  # not text: the masker raises
    assert "not kept" in str(failure.value)


def _nice(pid: int) -> int:
    """The nice value of a process (field 19 of /proc/<pid>/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_eval_process_runs_at_a_lower_priority_than_the_gateway() -> None:
    ours = os.nice(0)
    for increment in (7, 0):
        proc = EvalProcess(EvaluationSettings(child_nice=increment), {EVALUATE})
        proc.start()
        try:
            assert proc.pid is not None and _nice(proc.pid) == min(ours + increment, 19)
        finally:
            proc.stop()


def test_a_batch_is_checked_and_judged_in_one_round_trip_each(process: EvalProcess, tmp_path: Path) -> None:
    """Each round trip wakes the gateway's threads; a batch of tasks costs two, not two per task,
    and the rows are those of the per-task calls."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    ops: list[str] = []
    submit = process.submit

    def counting(op: str, payload: object, send_timeout_s: float | None = None, **kwargs: object) -> object:
        ops.append(op)
        return submit(op, payload, send_timeout_s, **kwargs)  # type: ignore[arg-type]

    process.submit = counting  # type: ignore[method-assign]
    sink = EvalSink(store, evaluators=[RemoteEvaluate(process)], judge=RemoteJudge(process))
    try:
        batch = [task(40 + i, answer=answer) for i, answer in enumerate(["Paris", "Lyon", "Paris, France"])]
        sink.export(batch)
        assert ops == [EVALUATE_MANY, JUDGE_MANY]
        for t in batch:
            rows = store.eval_results_for(t.trace_id)
            local = [*run_checks(t), *run_reference(t)]
            assert {(r["evaluator"], r["dimension"]) for r in rows if r["evaluator"] != "llm_judge"} == \
                {(r.evaluator, r.dimension) for r in local}
            assert len([r for r in rows if r["evaluator"] == "llm_judge" and r["dimension"] != "_error"]) >= 5
    finally:
        del process.submit
        sink.shutdown()
        store.close()


def test_a_restarted_child_judges_with_the_rubric_the_gateway_started_with(sim: SimServer, tmp_path: Path) -> None:
    """An edited rubric file must not start a new series silently when the child restarts: the rows
    would carry another version than the gateway's error rows, mid-run. (It used to re-read the file.)"""
    from importlib import resources

    rubric_file = tmp_path / "support.yaml"
    packaged = resources.files("infersight.evaluation") / "rubrics" / "default.yaml"
    rubric_file.write_text(packaged.read_text(encoding="utf-8"), encoding="utf-8")
    settings = EvaluationSettings(judge=JudgeSettings(url=sim.url, model="judge-ok", rubric=str(rubric_file)))
    proc = EvalProcess(settings, {JUDGE}, restart_interval_s=0.0)
    proc.start()
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = None
    try:
        judge = RemoteJudge(proc)
        rubric_file.write_text("# edited while running\n" + rubric_file.read_text(encoding="utf-8"), encoding="utf-8")
        first = kill_child(proc)
        rubric_file.unlink()  # even a rubric file gone by now does not stop a restart
        sink = EvalSink(store, evaluators=[], judge=judge)
        sink.export([task(77)])
        rows = [r for r in store.eval_results_for(f"{77:032x}") if r["evaluator"] == "llm_judge"]
        assert proc.pid != first
        assert rows and {r["dimension"] for r in rows} >= {"factual_fidelity"}
        assert {r["evaluator_version"] for r in rows} == {judge.evaluator_version}
    finally:
        if sink is not None:
            sink.shutdown()
        proc.stop()
        store.close()


def test_a_judge_adapter_needs_a_process_that_judges() -> None:
    proc = EvalProcess(EvaluationSettings(), {MASK})
    with pytest.raises(ValueError, match="serves the judge"):
        RemoteJudge(proc)
