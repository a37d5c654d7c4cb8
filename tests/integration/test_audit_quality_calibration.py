"""Audit of judge calibration (``infersight eval calibrate``), its API surfaces and the simulated judge.

Real components only: the real CLI entry point in-process, real files, the simulator over real HTTP
on 127.0.0.1. Each failing test pins a defect found in review; its docstring says what the spec
(docs/calibration.md, docs/judge.md) expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.evaluation.calibrate_cli import main
from infersight.sim.judge import sim_judge_profile
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer


def _golden(path: Path, dataset: str = "ops", n: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({
        "id": f"item-{i}", "dataset": dataset, "task": "qa", "prompt": f"question {i}", "response": f"answer {i}",
        "reference": None, "labels": {"relevance": 1 + i % 5}, "label_scale": "1-5"}) + "\n" for i in range(n)))
    return path


def _scores(path: Path, n: int = 40) -> Path:
    path.write_text("".join(json.dumps({"id": f"item-{i}", "scores": {"relevance": 1 + i % 5}}) + "\n"
                            for i in range(n)))
    return path


# -- the table output -------------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "dataset", "version", "shown"), [
    pytest.param("plain", "ops [/bold] set", "judge-1", "ops [/bold] set", id="dataset-name-with-a-closing-tag"),
    pytest.param("team[/]", "ops", "judge-1", "team[/]", id="golden-folder-with-a-closing-tag"),
    pytest.param("golden[v2]", "ops", "judge-1", "golden[v2]", id="golden-folder-with-an-opening-tag"),
    pytest.param("plain", "ops", "judge[/]1", "judge[/]1", id="evaluator-version-with-a-closing-tag"),
])
def test_the_table_prints_names_verbatim_and_never_crashes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, folder: str,
                                                           dataset: str, version: str, shown: str) -> None:
    """Without ``--json`` the report is printed as a table naming the data set, the judge version and
    the golden file's path (docs/calibration.md), and the exit code is 0 when the run is done (1 only
    when the judge failed on every item). The table is drawn with rich, which reads every string as
    markup: a data set name, a golden folder or an ``--evaluator-version`` holding ``[/]`` or
    ``[/bold]`` raises ``MarkupError`` after the report was stored (a traceback, exit 1, which means
    "the judge failed"), and ``golden[v2]/`` is printed as ``golden/``: the wrong file named."""
    monkeypatch.setenv("COLUMNS", "500")  # one line per row: the names are not wrapped
    golden = _golden(tmp_path / folder / "golden.jsonl", dataset=dataset)
    scores = _scores(tmp_path / "scores.jsonl")
    code = main(["--golden", str(golden), "--scores", str(scores), "--evaluator-version", version,
                 "--data-dir", str(tmp_path / "data"), "--bootstrap", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert shown in out
    assert str(golden) in out  # the golden file the figures are about, as it is spelled


# -- the simulated judge ----------------------------------------------------------------------------


def test_a_sim_judge_with_no_malformed_kinds_never_answers_500() -> None:
    """``sim_judge_profile(..., malformed_rate=, malformed_kinds=)`` refuses kinds it does not know
    (ValueError at build time, docs/judge.md). An empty choice with a positive ``malformed_rate`` is
    accepted, and then every reply drawn as broken is an HTTP 500 (``randrange`` of an empty range
    in ``judge_reply``): a judge client's retry tests see server errors nobody configured. Either the
    profile is refused when built, or the judge answers."""
    try:
        profile = sim_judge_profile(1.0, malformed_rate=0.5, malformed_kinds=())
    except ValueError:
        return
    q = QUESTION_BANK[0]
    body = {"model": "sim-judge", "max_tokens": 400, "messages": [{"role": "user", "content": (
        f"Score relevance.\n<question>\n{q.question}\n</question>\n<answer>\n{q.correct}\n</answer>\n")}]}
    with SimServer(seed=4, profiles={"sim-judge": profile}) as sim:
        statuses = [httpx.post(sim.url + "/chat/completions", json={**body, "user": f"u{i}"}, timeout=10).status_code
                    for i in range(12)]
    assert statuses == [200] * 12


def _bank_golden(path: Path) -> Path:
    """Bank questions answered right (labels 5) and wrong (labels 1), half each."""
    rows = []
    for i, q in enumerate(QUESTION_BANK[:8]):
        for k, (response, label) in enumerate([(f"{q.correct}.", 5), (f"It is {q.wrong[0]}.", 1)]):
            rows.append({"id": f"bank::{i}:{k}", "dataset": "bank", "task": "qa", "prompt": q.question,
                         "response": response, "reference": None,
                         "labels": {"factual_fidelity": label, "no_hallucination": label}, "label_scale": "1-5"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _live(tmp_path: Path, capsys: pytest.CaptureFixture[str], golden: Path, seed: int,
          **knobs: Any) -> dict[str, Any]:
    with SimServer(seed=seed, profiles={"sim-judge": sim_judge_profile(1.0, **knobs)}) as sim:
        config = tmp_path / "judge.yaml"
        config.write_text(json.dumps({"evaluation": {"judge": {"url": sim.url, "model": "sim-judge"}}}))
        code = main(["--golden", str(golden), "--config", str(config), "--json", "--no-progress",
                     "--data-dir", str(tmp_path / "data"), "--bootstrap", "200", "--concurrency", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_live_calibration_over_http_sees_the_sim_judges_bias_and_seeded_noise(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/judge.md: the sim judge's ``bias`` is added before rounding (0.5: a wrong answer's 1
    becomes 2) and its ``noise`` is seeded like every sim draw. Calibrating it live over real HTTP
    (docs/calibration.md) must show exactly that: an exact judge agrees perfectly (kappa 1, bias 0),
    the lenient one is +0.5 on the half-wrong set with scores still within 1-5, and a noisy judge
    gives the same report for the same seed."""
    golden = _bank_golden(tmp_path / "bank.jsonl")
    exact = _live(tmp_path, capsys, golden, seed=1, noise=0.0)["dimensions"]["factual_fidelity"]
    assert (exact["n"], exact["spearman"], exact["kappa"], exact["bias"]) == (16, 1.0, 1.0, 0.0)
    lenient = _live(tmp_path, capsys, golden, seed=1, noise=0.0, bias=0.5)["dimensions"]
    assert lenient["factual_fidelity"]["bias"] == pytest.approx(0.5)
    assert lenient["factual_fidelity"]["judge_mean"] == pytest.approx(3.5)  # (5 + 2) / 2
    assert lenient["no_hallucination"]["bias"] == pytest.approx(0.5)
    noisy = [_live(tmp_path, capsys, golden, seed=9, noise=1.5)["dimensions"] for _ in range(2)]
    assert noisy[0] == noisy[1]
    for stats in noisy[0].values():
        assert 1.0 <= stats["judge_mean"] <= 5.0 and stats["n"] == 16
