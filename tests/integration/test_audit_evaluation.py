"""Audit of the evaluation layer on bad input: a judge that answers badly (over real HTTP), broken
rubric, golden and overrides files, hostile text. Each test that proves a bug says in its docstring
what happened before the fix; the others fill gaps the unit suites leave open.

The judge here is a scripted OpenAI-compatible endpoint served by uvicorn on 127.0.0.1
(``ThreadedServer``): each test uses its own model name, and the endpoint answers that model's
requests from a script, so replies no sane model sends (a 20 MB body, ``usage: "n/a"``) can be sent.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from infersight.config import settings_from_dict
from infersight.evaluation.calibrate_cli import main as calibrate
from infersight.evaluation.checks import run_checks
from infersight.evaluation.llm_judge import JudgeError, LLMJudge
from infersight.evaluation.offload import RemoteJudge
from infersight.evaluation.overrides import FileOverrides
from infersight.evaluation.reference import run_reference
from infersight.evaluation.rubric import DIMENSION_NAMES, RubricError, load_rubric
from infersight.evaluation.sampler import Sampler
from infersight.evaluation.screen import screen
from infersight.evaluation.settings import EvaluationSettings, JudgeSettings
from infersight.evaluation.worker import EvalSink
from infersight.gateway.upstreams.mock import MockTransport, ScriptedResponse
from infersight.model import EvalResult, EvalTask
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from tests.conftest import DirectBus, config_dict
from tests.unit.evaluation.test_rubric import MINIMAL  # a valid one-dimension rubric

RECENT = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()  # within any text retention

REASONS = {"invalid_reply", "server_error", "rate_limited", "timeout", "connection", "http_error"}
Reply = tuple[int, dict[str, str], bytes]
Step = Reply | Callable[[dict[str, Any]], Reply]


# --- a scripted judge endpoint -----------------------------------------------------------------------


class ScriptedJudge:
    """ASGI app: ``scripts[model]`` is consumed one step per request (the last step repeats)."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Step]] = {}
        self.requests: dict[str, list[dict[str, Any]]] = {}

    def script(self, model: str, *steps: Step) -> str:
        self.scripts[model], self.requests[model] = list(steps), []
        return model

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = "startup" if message["type"] == "lifespan.startup" else "shutdown"
                await send({"type": f"lifespan.{done}.complete"})
                if done == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        model = request["model"]
        self.requests[model].append(request)
        steps = self.scripts[model]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        status, headers, payload = step(request) if callable(step) else step
        raw_headers = [(b"content-type", b"application/json")]
        raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


def chat(content: str, *, usage: Any = None, **top: Any) -> Reply:
    """A 200 chat completion whose message is ``content``."""
    body: dict[str, Any] = {
        "id": "c1", "object": "chat.completion", "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20} if usage is None else usage,
    }
    body.update(top)
    return 200, {}, orjson.dumps(body)


def scores(**override: Any) -> dict[str, Any]:
    out: dict[str, Any] = {d: {"explanation": "fine", "score": 4} for d in DIMENSION_NAMES}
    out.update(override)
    return out


GOOD = chat(orjson.dumps(scores()).decode())


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[ScriptedJudge, str]]:
    app = ScriptedJudge()
    with ThreadedServer(app) as server:
        yield app, server.url


def judge(url: str, model: str, rubric: str = "default", **kw: Any) -> LLMJudge:
    settings = JudgeSettings(url=url, model=model, input_price_per_1m=1.0, **kw)
    return LLMJudge.from_settings(settings, rubric=rubric, backoff_s=0.01)


# --- the judge answering badly -----------------------------------------------------------------------


async def test_usage_that_is_not_an_object_does_not_escape_as_attribute_error(endpoint) -> None:
    """Was: ``usage: "n/a"`` (or a list) raised AttributeError out of the judge client: not a
    JudgeError, so no closed ``reason`` label, nothing retried, and a good verdict thrown away."""
    app, url = endpoint
    body = orjson.dumps(scores()).decode()
    for model, usage in (("usage-text", "n/a"), ("usage-list", [1, 2])):
        app.script(model, chat(body, usage=usage))
        async with judge(url, model) as j:
            verdict = await j.score("What is 2+2?", "4")
        assert verdict.scores == dict.fromkeys(DIMENSION_NAMES, 4.0) and verdict.attempts == 1
        assert verdict.prompt_tokens == verdict.completion_tokens == 0 and verdict.cost == 0.0


async def test_a_huge_reply_is_neither_read_whole_nor_repaired(endpoint) -> None:
    """Was: a 20 MB reply (an endpoint that ignores max_tokens) was read whole and walked char by
    char by the quote repair: ~2 s of CPU per attempt (the GIL of the gateway when the judge runs in
    its process), 3 attempts, before the same JudgeError. Now the body is cut at 4 MiB."""
    app, url = endpoint
    app.script("huge", chat("{" + "x" * 20_000_000 + "}"))
    t0 = time.perf_counter()
    async with judge(url, "huge", max_retries=2) as j:
        with pytest.raises(JudgeError) as err:
            await j.score("What is 2+2?", "4")
    elapsed = time.perf_counter() - t0
    assert err.value.reason in REASONS and err.value.attempts == 3 and len(app.requests["huge"]) == 3
    assert elapsed < 2.0, f"{elapsed:.1f} s for three oversized replies"


async def test_a_long_unparseable_reply_is_reasked_not_repaired(endpoint) -> None:
    """Under the body limit but far over any judge reply (MAX_REPAIR_CHARS): not walked by the quote
    repair, re-asked at once, and the corrective message says why (before: repaired for nothing)."""
    app, url = endpoint
    app.script("long", chat("{'a': " + "'x', " * 100_000 + "}"), GOOD)
    async with judge(url, "long") as j:
        verdict = await j.score("What is 2+2?", "4")
    assert verdict.attempts == 2 and verdict.prompt_tokens == 200
    corrective = app.requests["long"][1]["messages"][-1]["content"]
    assert "characters long" in corrective and '"relevance"' in corrective


@pytest.mark.parametrize(
    ("first", "attempts", "changed", "repaired"),
    [
        pytest.param(chat("I rate it four out of five."), 2, {}, False, id="not-json"),
        pytest.param(chat('{"relevance": {"score": NaN}}'), 2, {}, False, id="nan"),
        pytest.param(chat('{"relevance": {"score": Infinity}}'), 2, {}, False, id="infinity"),
        pytest.param(chat(orjson.dumps(scores(relevance={"score": "huge"})).decode()), 2, {}, False,
                     id="score-not-a-number"),
        pytest.param(chat(orjson.dumps(scores(relevance=0, coherence=9)).decode()), 1,
                     {"relevance": 1.0, "coherence": 5.0}, True, id="out-of-range-clamped"),
        pytest.param(chat(orjson.dumps(scores(relevance="4", coherence="3/5")).decode()), 1,
                     {"coherence": 3.0}, True, id="strings-coerced"),
        pytest.param(chat(orjson.dumps(scores(helpfulness=5, fluency=1)).decode()), 1, {}, False,
                     id="extra-dimensions-ignored"),
        pytest.param(chat("```json\n" + orjson.dumps(scores()).decode() + "\n```"), 1, {}, True, id="fenced"),
        pytest.param(chat(""), 2, {}, False, id="empty-content"),
        pytest.param((200, {}, orjson.dumps({"choices": []})), 2, {}, False, id="empty-choices"),
        pytest.param((200, {}, orjson.dumps({"error": {"message": "overloaded"}})), 2, {}, False,
                     id="200-with-error-body"),
        pytest.param((200, {}, b"<html>gateway</html>"), 2, {}, False, id="200-html"),
        pytest.param((503, {}, b"busy"), 2, {}, False, id="503"),
    ],
)
async def test_bad_replies_are_repaired_or_reasked(endpoint, first: Reply, attempts: int, changed: dict[str, float],
                                                   repaired: bool) -> None:
    app, url = endpoint
    model = app.script(f"bad-{len(app.scripts)}", first, GOOD)
    async with judge(url, model) as j:
        verdict = await j.score("What is 2+2?", "4")
    assert verdict.attempts == attempts and len(app.requests[model]) == attempts
    assert verdict.scores == {**dict.fromkeys(DIMENSION_NAMES, 4.0), **changed}
    assert verdict.repaired == repaired


async def test_missing_dimension_is_reasked_naming_it_and_tokens_are_summed(endpoint) -> None:
    app, url = endpoint
    partial = scores()
    del partial["coherence"]
    app.script("partial", chat(orjson.dumps(partial).decode()), GOOD)
    async with judge(url, "partial") as j:
        verdict = await j.score("What is 2+2?", "4")
    assert verdict.attempts == 2 and (verdict.prompt_tokens, verdict.completion_tokens) == (200, 40)
    retry = app.requests["partial"][1]["messages"]
    assert retry[-2]["role"] == "assistant" and "missing dimensions: coherence" in retry[-1]["content"]


async def test_429_waits_for_retry_after(endpoint) -> None:
    app, url = endpoint
    app.script("limited", (429, {"retry-after": "0.4"}, b'{"error": "slow down"}'), GOOD)
    t0 = time.perf_counter()
    async with judge(url, "limited") as j:
        verdict = await j.score("What is 2+2?", "4")
    assert verdict.attempts == 2 and time.perf_counter() - t0 >= 0.4  # backoff_s alone is 0.01 s
    app.script("always-limited", (429, {"retry-after": "0"}, b"{}"))
    async with judge(url, "always-limited", max_retries=1) as j:
        with pytest.raises(JudgeError) as err:
            await j.score("What is 2+2?", "4")
    assert err.value.reason == "rate_limited" and err.value.attempts == 2


async def test_pairwise_swap_with_one_order_failing_is_an_error_that_keeps_both_costs(endpoint) -> None:
    app, url = endpoint

    def by_order(request: dict[str, Any]) -> Reply:
        if "<answer_a>\nalpha\n</answer_a>" in request["messages"][-1]["content"]:
            return chat('{"explanation": "A is right", "winner": "A"}')
        return 500, {}, b"engine crashed"

    app.script("pair", by_order)
    async with judge(url, "pair", rubric="pairwise", max_retries=2) as j:
        with pytest.raises(JudgeError) as err:
            await j.compare("Capital of France?", "alpha", "beta")
    e = err.value
    assert e.reason == "server_error" and e.attempts == 1 + 3 and len(app.requests["pair"]) == 4
    assert (e.prompt_tokens, e.completion_tokens) == (100, 20) and e.cost == pytest.approx(100 / 1e6 + 0.0)


async def test_a_reference_that_is_not_text_is_judged_without_it(endpoint) -> None:
    """Was: ``reference=5`` (a task from another producer on the stream) raised TypeError in the
    prompt builder: the task got an ``_error`` row instead of scores."""
    app, url = endpoint
    app.script("ref", GOOD)
    task = EvalTask(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="m",
                    started_at=RECENT, status_code=200, prompt_text="Q?",
                    completion_text="A.", reference=5, sample_reason="random")  # type: ignore[arg-type]
    async with judge(url, "ref") as j:
        rows = await j.evaluate(task)
    assert [r.dimension for r in rows] == list(DIMENSION_NAMES)
    assert "<reference>" not in app.requests["ref"][0]["messages"][-1]["content"]


# --- rubric files --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        pytest.param(MINIMAL + "examples:\n  - {question: Q, answer: , scores: {relevance: [5, ok]}}\n",
                     "examples[0].answer", "must be a string", id="example-with-empty-answer"),
        pytest.param(MINIMAL.replace("kind: pointwise", "kind: [pointwise]"), "kind", "pointwise",
                     id="kind-a-list"),
        pytest.param(MINIMAL.replace("description: On topic?", "description: On topic?\n    1: x\n    z: y"),
                     "dimensions[0].1", "unknown key", id="odd-dimension-keys"),
        pytest.param(MINIMAL + 'system_prompt: "Other. {{dimensions}}"\n', "system_prompt", "given twice",
                     id="duplicate-top-key"),
        pytest.param(MINIMAL.replace("{1: a, 2: b, 3: c, 4: d, 5: e}", "{1: a, 2: b, 3: c, 3: x, 4: d, 5: e}"),
                     "dimensions[0].anchors.3", "given twice", id="duplicate-anchor"),
        pytest.param(MINIMAL.replace("  - name: relevance", "  - name: relevance\n    name: coherence"),
                     "dimensions[0].name", "given twice", id="duplicate-dimension-name-key"),
        pytest.param(MINIMAL + "dimensions: []\n", "dimensions", "given twice", id="duplicate-dimensions"),
    ],
)
def test_bad_rubric_files_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    """Was: TypeError or AttributeError tracebacks (null example text, a list as kind, mixed key
    types), and a repeated key silently replaced the first (PyYAML keeps the last)."""
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    with pytest.raises(RubricError) as err:
        load_rubric(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and problem in message


def test_rubric_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    """Was: a bare UnicodeDecodeError that named no file (the eval process failed its start with it)."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.replace("On topic?", "Pertinência?").encode("latin-1"))
    with pytest.raises(RubricError) as err:
        load_rubric(path)
    assert str(path) in str(err.value) and "UTF-8" in str(err.value)
    path.write_bytes(MINIMAL.replace("On topic?", "Pertinência?").encode("utf-8"))
    assert load_rubric(path).dimensions[0].description == "Pertinência?"


def test_gateway_and_eval_process_name_the_same_version_and_follow_the_rubric_text(tmp_path: Path) -> None:
    """The gateway computes the judge's version itself (``RemoteJudge``, for the ``_error`` rows of
    calls its eval process failed); it must be the version the judge's own rows carry."""
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL)
    evaluation = EvaluationSettings(judge=JudgeSettings(url="http://127.0.0.1:9/v1", model="m", rubric=str(path)))
    def started() -> Any:  # all RemoteJudge reads of its eval process: the rubric it loaded at start
        return SimpleNamespace(evaluation=evaluation, rubric=load_rubric(str(path)))

    v1 = LLMJudge.from_settings(evaluation.judge).evaluator_version
    assert RemoteJudge(started()).evaluator_version == v1
    for edit in (MINIMAL.replace("anchors: {1: a,", "anchors: {1: A,"), MINIMAL + "# a comment\n"):
        path.write_text(edit)
        version = LLMJudge.from_settings(evaluation.judge).evaluator_version
        assert version != v1
        assert RemoteJudge(started()).evaluator_version == version  # a gateway started with the edit


# --- infersight eval calibrate ---------------------------------------------------------------------------


def golden_line(i: int, **labels: Any) -> str:
    row = {"id": f"g{i}", "dataset": "audit", "prompt": "Q?", "response": "A.", "reference": None,
           "labels": labels or {"relevance": 3, "coherence": 4}}
    return json.dumps(row) + "\n"  # json: orjson refuses ints past 64 bits


def run_calibrate(tmp_path: Path, golden: str | bytes, *extra: str, scores: str | None = None) -> int:
    gpath = tmp_path / "golden.jsonl"
    gpath.write_bytes(golden if isinstance(golden, bytes) else golden.encode())
    args = ["--golden", str(gpath), "--no-progress", *extra]
    if "--data-dir" not in extra:
        args += ["--data-dir", str(tmp_path / "data")]
    if scores is not None:
        (tmp_path / "scores.jsonl").write_text(scores)
        args += ["--scores", str(tmp_path / "scores.jsonl")]
    return calibrate(args)


@pytest.mark.parametrize(
    ("golden", "line", "problem"),
    [
        pytest.param(golden_line(1).encode() + golden_line(2).replace("Q?", "Qé?").encode("latin-1"), 2, "UTF-8",
                     id="not-utf8"),
        pytest.param(golden_line(1, relevance=10**400, coherence=3), 1, "within 1-5", id="huge-int-label"),
        pytest.param("[" * 100_000 + "\n", 1, "nested too deeply", id="deep-nesting"),
        pytest.param('{"id": "g1", "labels": {"relevance": ' + "9" * 5000 + "}}\n", 1, "invalid JSON",
                     id="int-past-the-digit-limit"),
    ],
)
def test_bad_golden_files_are_exit_2_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       golden: str | bytes, line: int, problem: str) -> None:
    """Was: UnicodeDecodeError, OverflowError, RecursionError and ValueError tracebacks."""
    scores = '{"id": "g1", "scores": {"relevance": 3}}\n'
    assert run_calibrate(tmp_path, golden, scores=scores) == 2
    err = capsys.readouterr().err
    assert f"golden.jsonl:{line}:" in err and problem in err and "Traceback" not in err


def test_scores_file_with_a_huge_int_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: OverflowError traceback from ``math.isfinite`` on an int too large for a float."""
    scores = '{"id": "g1", "scores": {"relevance": 1' + "0" * 400 + "}}\n"
    assert run_calibrate(tmp_path, golden_line(1), scores=scores) == 2
    err = capsys.readouterr().err
    assert "scores.jsonl:1:" in err and "within 1-5" in err and len(err) < 400


def test_an_unwritable_data_dir_is_exit_2_with_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: NotADirectoryError traceback after the whole calibration had run."""
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    scores = "".join(f'{{"id": "g{i}", "scores": {{"relevance": {1 + i % 5}}}}}\n' for i in range(5))
    golden = "".join(golden_line(i, relevance=1 + i % 5, coherence=3) for i in range(5))
    assert run_calibrate(tmp_path, golden, "--data-dir", str(not_a_dir), scores=scores) == 2
    err = capsys.readouterr().err
    assert str(not_a_dir) in err and "--data-dir" in err and "Traceback" not in err


def test_constant_labels_and_mismatched_ids_are_reported_not_nan(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """All-equal labels: Spearman and kappa undefined (null, '-' in the table), the gate fails on them
    with thresholds from the config; ids in one file and not the other are counted both ways."""
    golden = "".join(golden_line(i, relevance=3, coherence=4) for i in range(6))
    scores = "".join(f'{{"id": "g{i}", "scores": {{"relevance": 3, "coherence": 4}}}}\n' for i in range(1, 6))
    scores += '{"id": "stranger", "scores": {"relevance": 2}}\n'
    config = tmp_path / "c.yaml"
    config.write_text(f"storage: {{path: '{tmp_path / 'data'}'}}\n"
                      "backends: [{name: e, type: openai, url: 'http://127.0.0.1:9/v1', models: [m]}]\n"
                      "tenants: [{id: t, api_keys: [k]}]\n"
                      "evaluation:\n  gate: {min_spearman: 0.1, min_kappa: 0.05, max_abs_bias: 0.5}\n")
    assert run_calibrate(tmp_path, golden, "--config", str(config), "--gate", "--json", scores=scores) == 3
    captured = capsys.readouterr()
    assert "NaN" not in captured.out and "Traceback" not in captured.err
    report = orjson.loads(captured.out)
    assert (report["missing_scores"], report["missing_ids"]) == (1, ["g0"])
    assert (report["unmatched_scores"], report["unmatched_ids"]) == (1, ["stranger"])
    rel = report["dimensions"]["relevance"]
    assert rel["n"] == 5 and rel["spearman"] is None and rel["kappa"] is None and rel["bias"] == 0.0
    assert "gate failed: relevance: spearman is undefined" in captured.err and "min_spearman is 0.100" in captured.err
    assert report["gate"]["min_kappa"] == 0.05 and report["gate"]["max_abs_bias"] == 0.5
    assert run_calibrate(tmp_path, golden, "--config", str(config), scores=scores) == 0  # the table
    assert "NaN" not in capsys.readouterr().out


def test_empty_golden_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_calibrate(tmp_path, "\n\n", scores='{"id": "g1", "scores": {}}\n') == 2
    assert "golden.jsonl: no items" in capsys.readouterr().err


# --- sampling overrides ------------------------------------------------------------------------------------

ADMIN = {"authorization": "Bearer sk-admin-test"}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"rates": {"acme": true}}', id="bool-rate"),
        pytest.param(b'{"rates": {"acme": "1"}}', id="string-rate"),
        pytest.param(b'{"rates": {"acme": 7}}', id="rate-over-1"),
        pytest.param(b'{"rates": {"acme": -0.5}}', id="negative-rate"),
        pytest.param(b'{"rates": {"acme": "nan"}}', id="nan-rate"),
        pytest.param(b'{"forced": {"*": 1e300}}', id="deadline-past-year-9999"),
        pytest.param(b'{"forced": {"globex": "inf"}}', id="infinite-deadline"),
        pytest.param(b"", id="empty-file"),
        pytest.param(b'{"rates": {"acme": 0.', id="half-written"),
        pytest.param(b"[1]", id="not-an-object"),
        pytest.param(b'{"rates": [0.5]}', id="rates-a-list"),
    ],
)
async def test_bad_overrides_file_keeps_the_last_good_overrides(tmp_path: Path, content: bytes) -> None:
    """Was: wrong types were applied (``true`` or ``"1"``: 100% sampling; ``7``, ``-0.5``, ``nan`` kept
    as rates), a deadline of 1e300 or ``"inf"`` forced sampling for ever and made
    ``GET /api/v1/admin/sampling`` a 500, and an empty file dropped every override."""
    settings = settings_from_dict(config_dict(tmp_path / "data"))
    app = build_gateway(settings, transport=MockTransport(lambda r: ScriptedResponse()), bus=DirectBus(),
                        eval_bus=DirectBus())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://gw") as client:
        assert (await client.put("/api/v1/admin/sampling/acme", json={"rate": 0.25}, headers=ADMIN)).status_code == 200
        sampler: Sampler = app.admin.sampler  # type: ignore[attr-defined]
        (tmp_path / "data" / "sampling-overrides.json").write_bytes(content)
        sampler.refresh()  # what the poller does every second
        assert sampler.rate("acme") == 0.25 and sampler.rate("globex") == 0.05
        assert not sampler.forced("acme") and not sampler.forced("globex")
        got = await client.get("/api/v1/admin/sampling", headers=ADMIN)
        assert got.status_code == 200 and got.json()["forced_all_until"] is None
        fixed = await client.put("/api/v1/admin/sampling/globex", json={"rate": 0.5}, headers=ADMIN)
        assert fixed.status_code == 200  # an admin write replaces the bad file with the good state
    again = Sampler(0.0, overrides=FileOverrides(tmp_path / "data" / "sampling-overrides.json"))
    assert (again.rate("acme"), again.rate("globex")) == (0.25, 0.5)


# --- checks, reference metrics and the guardrail screen on odd text -----------------------------------------


class RowStore:
    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def write_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        self.tables.setdefault(table, []).extend(rows)
        return len(rows)


def test_a_reference_that_is_not_text_does_not_poison_the_batch() -> None:
    """Was: ``reference.strip()`` raised AttributeError, so the whole batch was raised back to the
    bus (retried with backoff) until the task was dead-lettered, its checks lost with it."""
    dead: list[tuple[EvalTask, str]] = []
    store = RowStore()
    sink = EvalSink(store, evaluators=[run_checks, run_reference],  # type: ignore[arg-type]
                    dead_letter=lambda t, why: dead.append((t, why)), max_failures=2)
    references: list[Any] = [5, {"answer": "Paris"}, ["Paris"], "Paris"]
    tasks = [EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m",
                      started_at=RECENT, status_code=200, finish_reason="stop",
                      prompt_text="Capital of France?", completion_text="Paris.", reference=ref)
             for i, ref in enumerate(references)]
    sink.export(tasks)
    rows = [EvalResult.from_dict(r) for r in store.tables["eval_results"]]
    assert not dead
    for t in tasks:
        dims = {r.dimension for r in rows if r.trace_id == t.trace_id}
        assert {"empty", "refusal", "repetition"} <= dims
        assert ("token_f1" in dims) == isinstance(t.reference, str)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param("0123456789abcdef" * 4_000, id="hex"),
        pytest.param("1-" * 32_000, id="dashed-digits"),
        pytest.param("a." * 32_000, id="dotted"),
        pytest.param("QUJD" * 16_000, id="base64-like"),
    ],
)
def test_guardrail_screen_is_linear_on_a_long_token(blob: str) -> None:
    """Was quadratic: the e-mail pattern rescanned a long run of local-part characters from each of
    its positions when the text held an "@" anywhere. The screen runs on the gateway's event loop
    before the last byte of every response; this 64 kB prompt took 2-4 s (a 1 MB one, hours)."""
    prompt = f"Please reply to me @ the office. Data: {blob} end"
    t0 = time.perf_counter()
    hits = screen(prompt, prompt)
    assert time.perf_counter() - t0 < 1.0
    assert not any("EMAIL" in h for h in hits)
    found = screen(f"{blob} contact ana.silva@example.com", None)
    assert "pii_prompt:EMAIL" in found
    assert "pii_prompt:EMAIL" in screen(f"{blob[:5000]}x@example.com", None)  # glued to the run: still one


@pytest.mark.parametrize(
    "text",
    ["", " \n\t ", "😀𝔘𝔫𝔦 " * 400, "\u0301" * 2000, "I can't " * 250, "[EMAIL] " * 250, "{" * 2000],
)
def test_checks_and_reference_on_odd_text_give_rows_in_range(text: str) -> None:
    task = EvalTask(trace_id="c" * 32, span_id="d" * 16, tenant_id="acme", model_id="m", status_code=200,
                    finish_reason="stop", prompt_text="Q?", completion_text=text, reference=text or "x",
                    json_requested=True, started_at=RECENT)
    t0 = time.perf_counter()
    rows = run_checks(task) + run_reference(task)
    assert time.perf_counter() - t0 < 1.0
    assert rows and all(r.score is not None and 0.0 <= r.score <= 1.0 for r in rows)
    assert all(text.strip()[:40] not in (r.explanation or "") for r in rows if text.strip())
