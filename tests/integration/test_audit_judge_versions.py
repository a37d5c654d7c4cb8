"""Audit of the LLM judge's versioning, rubric files, score reading and pairwise mode.

The spec: ``evaluator_version`` is a hash of the judge model id, the rubric text and the parameters,
stored with every score; a new version is a new series, never mixed into an old baseline. Rubrics
are versioned files whose errors name the file. Replies are strict JSON, repaired only when that is
unambiguous, else re-asked. Pairwise mode asks twice with the answers swapped.

Judge endpoints here are real HTTP on 127.0.0.1: the scripted OpenAI-compatible endpoint of
test_audit_evaluation.py (uvicorn via ``ThreadedServer``; the model name picks the script).
tests/integration/test_audit_evaluation.py and
test_audit_judge_client.py cover the HTTP side, the basic repairs and most rubric errors: not
repeated here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from infersight.config import ConfigError, settings_from_dict
from infersight.evaluation.compare_cli import main as compare
from infersight.evaluation.judge_version import compute_evaluator_version
from infersight.evaluation.llm_judge import LLMJudge
from infersight.evaluation.rubric import RubricError, load_rubric
from infersight.evaluation.settings import JudgeSettings
from infersight.runtime_eval import build_judge, check_judge_rubric
from infersight.serving import ThreadedServer
from tests.conftest import config_dict
from tests.integration.test_audit_evaluation import GOOD, ScriptedJudge, chat, endpoint, scores  # noqa: F401
from tests.unit.evaluation.test_rubric import MINIMAL

NO_JSON_MODE = (400, {}, b'{"error": {"message": "response_format is not supported", "param": "response_format"}}')


def scores_json(**override: Any) -> str:
    return orjson.dumps(scores(**override)).decode()


def make_judge(url: str, model: str, rubric: str = "default", **kw: Any) -> LLMJudge:
    return LLMJudge.from_settings(JudgeSettings(url=url, model=model, **kw), rubric=rubric, backoff_s=0.01)


# --- evaluator_version ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda text: text.replace("\n", "\r\n").encode(), id="crlf"),
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="utf8-bom"),
    ],
)
def test_line_endings_or_a_bom_do_not_start_a_new_series(tmp_path: Path, encode: Callable[[str], bytes]) -> None:
    """Spec: the version changes when what the judge is asked changes (model, rubric text,
    parameters), and the same judge always gets the same version. The packaged rubric saved with
    CRLF line endings (a Windows checkout with ``core.autocrlf``) or with a UTF-8 BOM (Notepad)
    parses to byte-identical prompts, yet ``load_rubric(path)`` hashes the raw text: the same judge
    is a new series there, so a calibration run on a Windows laptop is filed under a version that
    production never reports (``calibrated`` stays null). Packaged rubrics are read with universal
    newlines (``read_text``), paths are not: the two code paths disagree."""
    text = load_rubric("default").text
    (tmp_path / "lf.yaml").write_bytes(text.encode())
    (tmp_path / "other.yaml").write_bytes(encode(text))
    packaged, lf, other = load_rubric("default"), load_rubric(tmp_path / "lf.yaml"), load_rubric(tmp_path / "other.yaml")

    def version(rubric: Any) -> str:
        return compute_evaluator_version("gpt-4o-mini", rubric, 0.0, 400)

    assert version(lf) == version(packaged)  # the text, not the path, makes the version
    assert other.messages("Q?", "A.", "R") == lf.messages("Q?", "A.", "R")  # the judge is asked the same
    assert version(other) == version(lf)


async def test_a_judge_without_json_mode_is_not_the_json_mode_series() -> None:
    """Spec: every parameter that moves scores is in ``evaluator_version`` (docs/judge.md lists
    ``response_format: "json_object"`` in the hash). When the endpoint refuses ``response_format``
    the judge silently drops it for every later call, but the rows still carry the version whose
    material says JSON mode: the same model behind an endpoint with JSON mode and one without
    (the two are asked differently, and parse/repair differently) write one mixed series."""
    plain_app, strict_app = ScriptedJudge(), ScriptedJudge()
    plain_app.script("json-mode-judge", lambda request: NO_JSON_MODE if "response_format" in request else GOOD)
    strict_app.script("json-mode-judge", GOOD)
    with ThreadedServer(plain_app) as plain_server, ThreadedServer(strict_app) as strict_server:
        async with make_judge(plain_server.url, "json-mode-judge") as plain, \
                make_judge(strict_server.url, "json-mode-judge") as strict:
            v_plain = await plain.score("What is 2+2?", "4")
            v_strict = await strict.score("What is 2+2?", "4")
            assert plain.evaluator_version == v_plain.evaluator_version  # what its error rows are filed under
    assert "response_format" not in plain_app.requests["json-mode-judge"][-1]
    assert "response_format" in strict_app.requests["json-mode-judge"][-1]
    assert v_plain.evaluator_version != v_strict.evaluator_version


# --- reading scores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "meant"),
    [
        pytest.param("Score: 2/10", 1.0, id="prefixed-fraction-of-10"),
        pytest.param("20%", 1.0, id="percentage"),
        pytest.param("on a scale of 1 to 5, 3", 3.0, id="scale-named-first"),
    ],
)
async def test_an_ambiguous_score_string_is_reasked_or_read_right(endpoint, raw: str, meant: float) -> None:
    """Spec: replies are repaired only when that is unambiguous, else re-asked; docs/judge.md says
    ``"8 out of 10"`` is scaled to 5 and ``"Score: 4"`` read as 4. ``coerce_score`` takes the first
    number anywhere in the string when the fraction is not at its very start, so ``"Score: 2/10"``
    became 2 (not 1), ``"20%"`` became 5 (the best score, for a low mark), and ``"on a scale of 1
    to 5, 3"`` became 1: a wrong score written as a valid one, with no re-ask."""
    app, base = endpoint
    model = app.script(f"score-{raw}", chat(scores_json(relevance={"explanation": "x", "score": raw})), GOOD)
    async with make_judge(base, model) as judge:
        verdict = await judge.score("What is 2+2?", "4")
    if verdict.attempts == 1:  # read, not re-asked: it must then be read as the judge meant it
        assert verdict.scores["relevance"] == pytest.approx(meant), f"{raw!r} read as {verdict.scores['relevance']}"
    else:
        assert verdict.attempts == 2 and verdict.scores["relevance"] == 4.0


# --- rubric files ---------------------------------------------------------------------------------------


def test_a_deeply_nested_rubric_file_is_an_error_naming_it_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spec: a rubric file that cannot be used is a ``RubricError`` naming the file (and, from
    ``eval compare``, exit 2). A file with deeply nested YAML raised a bare ``RecursionError`` from
    PyYAML's composer (not a ``yaml.YAMLError``): a traceback from the CLI, and a gateway or eval
    worker that fails its start with no word of which file. (Golden files already say "nested too
    deeply".)"""
    deep = tmp_path / "deep.yaml"
    deep.write_text(MINIMAL.replace("description: On topic?", "description: " + "[" * 3000 + "]" * 3000))
    with pytest.raises(RubricError) as err:
        load_rubric(deep)
    assert str(deep) in str(err.value)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "1", "prompt": "Q?", "response_a": "a", "response_b": "b"}\n')
    config = tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump({"evaluation": {"judge": {"url": "http://127.0.0.1:9/v1"}}}))
    code = compare(["--pairs", str(pairs), "--config", str(config), "--rubric", str(deep), "--no-progress"])
    assert code == 2 and str(deep) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "key", "slot"),
    [
        pytest.param(lambda t: t.replace("{{schema}}", "{{shema}}"), "system_prompt", "shema", id="system-typo"),
        pytest.param(lambda t: t.replace("<answer>{{answer}}</answer>",
                                          "{{refrence_section}}<answer>{{answer}}</answer>"),
                     "user_template", "refrence_section", id="user-typo"),
    ],
)
def test_an_unknown_slot_in_a_rubric_template_is_refused(tmp_path: Path, edit: Callable[[str], str], key: str,
                                                        slot: str) -> None:
    """Spec (rubric.py, docs/judge.md): loading validates strictly and every error names the file
    and the key, "because a typo in a rubric would otherwise surface as odd scores weeks later".
    A misspelt slot (``{{shema}}``, ``{{refrence_section}}``) loads without a word: ``_fill``
    leaves it in the prompt literally, so the judge is never shown the JSON shape (or the
    reference), and every score of that version is off."""
    path = tmp_path / "typo.yaml"
    path.write_text(edit(MINIMAL))
    with pytest.raises(RubricError) as err:
        rubric = load_rubric(path)
        pytest.fail(f"loaded; the judge is sent: {rubric.messages('Q?', 'A.', 'R')}")
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and slot in message


# --- a pairwise rubric where a pointwise one is needed ---------------------------------------------------


def test_a_pairwise_rubric_as_the_pipelines_judge_is_refused_at_start(tmp_path: Path) -> None:
    """Spec: rubric errors are clear messages naming the rubric, like ``eval compare`` refusing a
    pointwise rubric (exit 2). ``evaluation.judge.rubric: pairwise`` (or a pairwise file) was
    accepted by the config and the eval sink: the gateway started, and every sampled answer became
    an ``_error`` row labelled ``ValueError`` (the judge's ``score`` refuses a pairwise rubric),
    a silent total loss of judge scores that only showed up as a 100% judge failure rate."""
    cfg = config_dict(tmp_path / "data", evaluation={"child_process": False,
                                                     "judge": {"url": "http://127.0.0.1:9/v1", "rubric": "pairwise"}})
    settings = settings_from_dict(cfg)
    with pytest.raises(RubricError, match="is pairwise; this judge needs a pointwise rubric"):
        build_judge(settings)
    with pytest.raises(ConfigError, match="evaluation.judge.rubric"):
        check_judge_rubric(settings, "gateway.yaml")


# --- pairwise -----------------------------------------------------------------------------------------------


async def test_pairwise_swap_is_undone_per_order_and_a_half_preference_is_not_a_win(endpoint) -> None:
    """Spec: pairwise mode asks with a position swap; only a preference that survives the swap is
    a win. Per order, the literal labels are mapped back to the answers (``B`` in the swapped order
    is answer ``a``), and an order that says ``tie`` while the other prefers one answer does not
    make that answer the winner. Checked on the requests actually sent: the second one really shows
    ``b`` first."""
    app, base = endpoint

    def by_order(request: dict[str, Any]) -> Any:
        task = request["messages"][-1]["content"]
        first_is_alpha = task.index("ALPHA") < task.index("BETA")
        if request["messages"][-1]["content"].startswith("<question>\nsame?"):
            return chat('{"explanation": "x", "winner": "A"}' if first_is_alpha else '{"explanation": "y", "winner": "B"}')
        return chat('{"explanation": "x", "winner": "A"}' if first_is_alpha else '{"explanation": "y", "winner": "tie"}')

    app.script("pair-orders", by_order)
    async with make_judge(base, "pair-orders", rubric="pairwise") as judge:
        agree = await judge.compare("same?", "ALPHA", "BETA")
        half = await judge.compare("half?", "ALPHA", "BETA")
    assert (agree.raw, agree.first_order, agree.second_order) == (("A", "B"), "a", "a")
    assert agree.winner == "a" and agree.consistent
    assert (half.raw, half.first_order, half.second_order) == (("A", "tie"), "a", "tie")
    assert half.winner == "tie" and not half.consistent
    shown_first = [r["messages"][-1]["content"].index("ALPHA") < r["messages"][-1]["content"].index("BETA")
                   for r in app.requests["pair-orders"]]
    assert sorted(shown_first) == [False, False, True, True]


@pytest.mark.parametrize("rubric", ["pairwise", "/nonexistent/rubric.yaml"])
def test_serve_and_check_config_refuse_a_judge_rubric_they_cannot_use(tmp_path: Path, rubric: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A missing rubric file was a traceback at ``serve``'s start; a pairwise one started a gateway
    that wrote an ``_error`` row for every sampled task. Both are config errors (exit 2) that name
    the key and the config file, from ``check-config`` and ``serve`` alike, before anything starts."""
    from infersight.cli import main as cli

    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(config_dict(tmp_path / "data", evaluation={
        "judge": {"url": "http://127.0.0.1:9/v1", "rubric": rubric}})))
    for argv in (["check-config", "--config", str(config)], ["serve", "--config", str(config), "--port", "0"]):
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"config error in {config}: evaluation.judge.rubric:" in err and "Traceback" not in err, err
        assert ("is pairwise; this judge needs a pointwise rubric" if rubric == "pairwise" else "cannot be read") in err
