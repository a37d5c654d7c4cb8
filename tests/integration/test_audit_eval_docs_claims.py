"""Audit of docs/evaluation.md and docs/judge.md, claim by claim, against the code.

Each test quotes the claim it checks and fails on the code as it is. Real parts only: a real DuckDB
store, a scripted OpenAI-compatible judge endpoint over HTTP on 127.0.0.1 (``Endpoint`` of
``test_audit_judge_client``), the gateway's real eval process (``offload.EvalProcess``), and the
sink the runtime builds (``runtime_eval.build_eval_sink``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from infersight.config import settings_from_dict
from infersight.evaluation.eval_health import PendingTasks
from infersight.evaluation.llm_judge import JudgeError, LLMJudge
from infersight.evaluation.rubric import RubricError, load_rubric, parse_rubric
from infersight.evaluation.settings import JudgeSettings
from infersight.evaluation.offload import EvalProcess
from infersight.evaluation.offload_child import EVALUATE, JUDGE
from infersight.evaluation.worker import JudgeUnavailable
from infersight.runtime_eval import build_eval_sink
from infersight.serving import ThreadedServer
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.integration.test_audit_judge_client import GOOD, Endpoint, Reply
from tests.unit.evaluation.test_worker import task


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    app = Endpoint()
    with ThreadedServer(app) as server:
        yield app, server.url


def gateway_settings(tmp_path: Path, url: str, model: str, **evaluation: Any) -> Any:
    judge = {"url": url, "model": model, "max_retries": 1, "input_price_per_1m": 1.0, "output_price_per_1m": 4.0}
    return settings_from_dict(config_dict(tmp_path / "data", evaluation={"judge": judge, **evaluation}))


# --- docs/evaluation.md, "The eval process", Failure: a replayed task is not judged again -------------


def test_a_task_replayed_from_the_journal_is_not_judged_again_with_the_eval_process(
    endpoint, tmp_path: Path,
) -> None:
    """docs/evaluation.md ("The eval process", Failure): "Tasks replayed from the journal are asked of
    the store before they are judged: a batch held for one task while its mates were written leaves
    those in the journal, and the judge is not paid for them again."

    The shapes where the gateway's own eval bus feeds a sink whose judge runs in the eval process
    (``store.child_process: false``, or ``serve --workers N``, where the owned path is off) build the
    sink with ``RemoteJudge``, which has no ``rubric``: ``EvalSink._not_judged_yet`` then asks the
    store only for ``_error`` rows, never finds the judge's dimension rows, and pays the judge again
    for every replayed task it had judged and written already."""
    app, url = endpoint
    model = app.script("replay-judge", GOOD)
    settings = gateway_settings(tmp_path, url, model)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    the_task = task(41, sampled=True)
    try:
        for _ in range(2):  # the gateway before the restart, then the one that replays its journal
            process = EvalProcess(settings.evaluation, {EVALUATE, JUDGE})
            process.start()
            sink = build_eval_sink(settings, store, None, pending=PendingTasks(), process=process,
                                   hold_on_judge_outage=True)
            try:
                sink.export([the_task])
            finally:
                sink.shutdown()
                process.stop()
        rows = store.eval_results_for(the_task.trace_id)
    finally:
        store.close()
    assert {r["dimension"] for r in rows if r["evaluator"] == "llm_judge"} >= {"relevance"}
    assert len(app.requests[model]) == 1, "the replayed task, judged and written already, was judged again"


# --- docs/metrics.md / evaluation.md: infersight_eval_worker_tasks_total counts tasks, once ------------


def test_a_batch_held_for_a_judge_outage_counts_its_dropped_and_expired_tasks_once(
    endpoint, tmp_path: Path,
) -> None:
    """docs/metrics.md: ``infersight_eval_worker_tasks_total{outcome}`` counts "tasks the eval sink
    handled": ``dropped_opted_out`` (its tenant's content policy is ``none`` here) and ``text_expired``
    (older than its tenant's text retention). docs/evaluation.md: a judge that is away holds the
    batch and the eval bus "retries it with backoff".

    Every retry of the held batch counts its opted-out task again (``EvalSink._within_policy`` runs
    on each delivery), and its expired task once when written beside the held one and again with the
    batch (``_write``), while ``evaluated`` is kept to once per task. A judge outage of minutes,
    retried every few seconds, turns one opted-out task into dozens on the dashboard."""
    app, url = endpoint
    down = (503, {}, b'{"error": {"message": "overloaded"}}')
    model = app.script("outage-judge", down, down, down, down, GOOD)  # max_retries 1: two calls a round
    settings = gateway_settings(tmp_path, url, model)
    registry = CollectorRegistry()
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sampled = task(51, sampled=True)
    opted_out = dataclasses.replace(task(52, sampled=True), tenant_id="globex")  # made content: none below
    old = (datetime.now(timezone.utc) - timedelta(days=45)).isoformat()  # past text_days (30)
    expired = dataclasses.replace(task(53, sampled=False), started_at=old)
    settings = settings.model_copy(update={"tenants": [
        t if t.id != "globex" else t.model_copy(update={"content": "none"}) for t in settings.tenants]})
    sink = build_eval_sink(settings, store, registry, pending=PendingTasks(), hold_on_judge_outage=True)
    rounds = 0
    try:
        while True:  # what the eval bus does with a held batch: deliver it again
            rounds += 1
            try:
                sink.export([sampled, opted_out, expired])
                break
            except JudgeUnavailable:
                assert rounds < 5
    finally:
        sink.shutdown()
        store.close()
    assert rounds == 3  # held twice, then judged
    count = lambda outcome: registry.get_sample_value(  # noqa: E731
        "infersight_eval_worker_tasks_total", {"outcome": outcome})
    assert count("evaluated") == 2  # the sampled and the expired task, each once
    assert (count("dropped_opted_out"), count("text_expired")) == (1, 1), \
        "one opted-out and one expired task, counted once per delivery of the held batch"


# --- docs/evaluation.md, Evaluators: "a judge outage of minutes ends with every sampled task judged" ---


def test_an_outage_that_starts_mid_round_and_outlasts_the_poison_hold_costs_no_verdict(
    endpoint, tmp_path: Path,
) -> None:
    """docs/evaluation.md: "So a judge outage of minutes ends with every sampled task judged" and
    "'Away' is the judge's state, not one task's: a task that gets such a reason in a round where the
    judge answered other tasks ... is a suspect ... the 60 s keep a real outage that starts in the
    middle of a round from costing the tasks then in flight their verdicts."

    A judge that dies half-way through a round (some calls answered, one not) and stays down longer
    than ``poison_hold_s``: in every later round it answers nothing (the fresh tasks the bus tops the
    held batch up with fail too), yet ``EvalSink._settle_judged`` counts those rounds against the
    suspect, and once ``max_failures`` rounds and ``poison_hold_s`` have passed it writes the
    suspect's ``_error`` row while the judge is still away. An outage that outlasts the hold (60 s:
    a vLLM restart takes longer) costs every task in flight when it began its verdict. The hold is
    1 s here (as in tests/integration/bus/test_audit_eval_scale.py) for an outage of a few seconds."""
    app, url = endpoint
    state = {"judge": "half"}  # half: answers task 61 only; down: answers nothing; up: everything

    def judge_step(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        last = str(request["messages"][-1]["content"])
        if state["judge"] == "up" or (state["judge"] == "half" and "answer-61" in last):
            return GOOD
        return 503, {}, b'{"error": {"message": "upstream connect error"}}'

    model = app.script("mid-round-outage", judge_step)
    settings = gateway_settings(tmp_path, url, model)
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = build_eval_sink(settings, store, None, pending=PendingTasks(), hold_on_judge_outage=True)
    sink.poison_hold_s = 1.0
    answered, in_flight = task(61, sampled=True, answer="answer-61 Paris"), task(62, sampled=True, answer="Paris!")
    fresh = [task(63 + i, sampled=True) for i in range(8)]
    try:
        with pytest.raises(JudgeUnavailable):  # the outage begins: 61 answered, 62 not
            sink.export([answered, in_flight])
        state["judge"] = "down"
        started = time.monotonic()
        batch = [answered, in_flight]
        for new in fresh:  # the outage goes on; the bus tops the held batch up with new tasks
            batch.append(new)
            with pytest.raises(JudgeUnavailable):  # every task fails: the judge is away
                sink.export(batch)
            if len(batch) > sink.max_failures + 1 and time.monotonic() - started > sink.poison_hold_s:
                break
            time.sleep(0.3)
        state["judge"] = "up"
        sink.export(batch)  # the judge is back
        rows = {t.trace_id: {r["dimension"] for r in store.eval_results_for(t.trace_id)
                             if r["evaluator"] == "llm_judge"} for t in batch}
    finally:
        sink.shutdown()
        store.close()
    assert all("relevance" in dims for dims in rows.values()), rows
    assert not any("_error" in dims for dims in rows.values()), \
        "a task in flight when the outage began got an _error row while the judge answered nothing"


# --- docs/judge.md, "Rubric files": a slot the code does not fill is refused, never sent literally ------


def test_a_spaced_slot_in_the_system_prompt_is_refused_not_sent_to_the_judge_literally(tmp_path: Path) -> None:
    """docs/judge.md: "Slots are ``{{name}}`` ... a slot a template does not know (``{{shema}}``) is an
    error naming the file and the key, where it was sent to the judge literally."

    ``{{ schema }}`` / ``{{ dimensions }}`` (the Jinja habit of every prompt author) match neither the
    slot pattern nor the unknown-slot check (``rubric._SLOT_RE`` wants no spaces), so the rubric loads
    and the judge is sent the literal text instead of the anchors and the JSON shape: every score of
    that evaluator_version is made without the scale it was meant to follow."""
    text = load_rubric("default").text
    edited = text.replace("{{dimensions}}", "{{ dimensions }}").replace("{{schema}}", "{{ schema }}")
    assert edited != text
    path = tmp_path / "support.yaml"
    path.write_text(edited, encoding="utf-8")
    try:
        rubric = parse_rubric(edited, source=str(path))
    except RubricError as exc:
        assert "system_prompt" in str(exc) and str(path) in str(exc)
        return
    system = rubric.system_message()
    assert "{{ schema }}" not in system and "{{ dimensions }}" not in system, \
        "the rubric loaded, and the judge is sent '{{ schema }}' and '{{ dimensions }}' literally"


# --- docs/judge.md: a 401 says what to check, in fixed text ---------------------------------------------


async def test_a_401_names_the_config_key_that_exists(endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/judge.md: "Other 4xx are not retried, and the ``_error`` row's ``explanation`` (and the log
    line) says what to check ... 401/403 the key". The hint (``judge_client.config_hint``) sends the
    operator to ``evaluation.judge.api_key``, a key the config does not have (docs/config.md:
    ``evaluation.judge.api_key_env``, the variable that holds the key; ``api_key`` is refused as an
    unknown key), so the one line meant to say what to fix names something that cannot be set."""
    app, url = endpoint
    model = app.script("bad-key", (401, {}, b'{"error": {"message": "Incorrect API key provided"}}'))
    monkeypatch.setenv("AUDIT_JUDGE_KEY", "sk-wrong")
    judge = LLMJudge.from_settings(JudgeSettings(url=url, model=model, api_key_env="AUDIT_JUDGE_KEY"))
    try:
        with pytest.raises(JudgeError) as err:
            await judge.score("What is the capital of France?", "Paris")
    finally:
        await judge.aclose()
    assert err.value.hint is not None and "HTTP 401" in err.value.hint
    with pytest.raises(ValidationError):  # the key the hint names is not a config key
        JudgeSettings(api_key="x")  # type: ignore[call-arg]
    assert "evaluation.judge.api_key_env" in err.value.hint, err.value.hint
