"""Audit of ``infersight eval calibrate`` the way a platform team meets it: files saved by other tools,
labels of its own data sets, the wrong scores file, tiny or constant samples, and a gate whose verdict
must say what failed and why. Each test that proves a bug says in its docstring what happened before
the fix; the others fill gaps the unit suites leave open. Expected figures come from scipy and
scikit-learn, computed here from the raw files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from infersight.evaluation import calibration as cal
from infersight.evaluation.calibrate_cli import main
from infersight.evaluation.golden import load_golden
from infersight.evaluation.settings import CalibrationGate

SUMMEVAL = "golden/summeval_1600.jsonl"


def golden_row(i: int | str, dataset: str = "acme-support", **labels: Any) -> dict[str, Any]:
    return {"id": f"g{i}", "dataset": dataset, "task": "qa", "prompt": "Q?", "response": f"A{i}.",
            "reference": None, "labels": labels, "label_scale": "1-5"}


def lines(rows: list[dict[str, Any]], newline: str = "\n") -> str:
    return "".join(json.dumps(r) + newline for r in rows)


def calibrate(tmp_path: Path, golden: str | bytes, scores: str | bytes | None, *extra: str) -> int:
    """Run the command on files written under ``tmp_path`` (reports in ``tmp_path/data``)."""
    gpath = tmp_path / "golden.jsonl"
    gpath.write_bytes(golden if isinstance(golden, bytes) else golden.encode())
    argv = ["--golden", str(gpath), "--no-progress", "--data-dir", str(tmp_path / "data"), *extra]
    if scores is not None:
        spath = tmp_path / "scores.jsonl"
        spath.write_bytes(scores if isinstance(scores, bytes) else scores.encode())
        argv += ["--scores", str(spath)]
    return main(argv)


def run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], golden: str | bytes, scores: str | bytes | None,
             *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    code = calibrate(tmp_path, golden, scores, "--json", *extra)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else None), captured.err


def varied(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n golden rows labelled relevance/coherence 1-5 and a noisy judge's scores for them."""
    rng = np.random.default_rng(seed)
    rows, scored = [], []
    for i in range(n):
        rel, coh = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        rows.append(golden_row(i, relevance=rel, coherence=coh))
        scored.append({"id": f"g{i}", "scores": {"relevance": int(np.clip(rel + rng.integers(-1, 2), 1, 5)),
                                                 "coherence": int(np.clip(coh + rng.integers(-1, 2), 1, 5))}})
    return rows, scored


# --- files saved by other tools ------------------------------------------------------------------------


def test_a_byte_order_mark_and_crlf_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: exit 2, ``golden.jsonl:1: invalid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig)``:
    a golden or scores file re-saved by a Windows editor (BOM, CRLF) could not be used."""
    rows, scored = varied(30)
    code, plain, err = run_json(tmp_path, capsys, lines(rows), lines(scored), "--evaluator-version", "v")
    assert code == 0, err
    bom = b"\xef\xbb\xbf"
    code, windows, err = run_json(tmp_path, capsys, bom + lines(rows, "\r\n").encode(),
                                  bom + lines(scored, "\r\n").encode(), "--evaluator-version", "v")
    assert code == 0, err
    assert windows is not None and plain is not None
    assert windows["n_scored"] == 30 and windows["dimensions"] == plain["dimensions"]


def test_summeval_saved_with_bom_and_crlf_gives_the_same_report(extdata: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The real SummEval set through Notepad: same items, same statistics as the original."""
    original = (extdata / SUMMEVAL).read_bytes()
    rows = [json.loads(line) for line in original.splitlines()[:120]]
    scored = [{"id": r["id"], "scores": {"relevance": round(r["labels"]["relevance"]),
                                         "coherence": 3, "factual_fidelity": round(r["labels"]["consistency"])}}
              for r in rows]
    plain_golden = b"".join(line + b"\n" for line in original.splitlines()[:120])
    code, plain, err = run_json(tmp_path, capsys, plain_golden, lines(scored), "--evaluator-version", "v")
    assert code == 0, err
    windows_golden = b"\xef\xbb\xbf" + plain_golden.replace(b"\n", b"\r\n")
    code, windows, err = run_json(tmp_path, capsys, windows_golden, lines(scored), "--evaluator-version", "v")
    assert code == 0, err
    assert plain is not None and windows is not None and windows["n_items"] == 120
    assert windows["dimensions"] == plain["dimensions"]
    coherence = windows["dimensions"]["coherence"]  # the judge said 3 to everything
    assert coherence["spearman"] is None and coherence["undefined"]["spearman"] == "the judge gave every item 3"


# --- labels of a team's own data set -----------------------------------------------------------------------


def test_own_data_set_may_label_no_hallucination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: a file labelled only ``no_hallucination`` (1-5) was refused with "no judge-dimension mapping
    ... or name labels after judge dimensions: ..., no_hallucination, ..." (the message offered the very
    name it refused), and next to other labels it was dropped without a word."""
    rng = np.random.default_rng(4)
    human = rng.integers(1, 6, 40)
    judge = np.clip(human + rng.integers(-1, 2, 40), 1, 5)
    rows = [golden_row(i, no_hallucination=int(h), relevance=3) for i, h in enumerate(human)]
    scored = [{"id": f"g{i}", "scores": {"no_hallucination": int(j), "relevance": 3}} for i, j in enumerate(judge)]
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored))
    assert code == 0, err
    assert report is not None and set(report["dimensions"]) == {"relevance", "no_hallucination"}
    got = report["dimensions"]["no_hallucination"]
    assert got["kind"] == "likert" and got["n"] == 40 and "threshold" not in got
    assert got["spearman"] == pytest.approx(stats.spearmanr(judge, human).statistic, abs=1e-12)
    assert got["kappa"] == pytest.approx(cohen_kappa_score(judge, human, weights="quadratic",
                                                           labels=[1, 2, 3, 4, 5]), abs=1e-12)


@pytest.mark.parametrize("lacking_first", [True, False], ids=["first-line-lacks", "last-line-lacks"])
def test_own_labels_do_not_depend_on_line_order(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                lacking_first: bool) -> None:
    """Was: the labels calibrated were those of the first line. A file whose first line lacked
    ``coherence`` calibrated relevance alone (coherence on every other line silently ignored, exit 0);
    the same lines in another order failed on the line lacking it."""
    rows = [golden_row(i, relevance=1 + i % 5, coherence=1 + (i * 2) % 5) for i in range(1, 6)]
    lacking = golden_row(0, relevance=2)
    rows = [lacking, *rows] if lacking_first else [*rows, lacking]
    scored = [{"id": r["id"], "scores": {"relevance": 3, "coherence": 3}} for r in rows]
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored))
    assert code == 2 and report is None
    line = 1 if lacking_first else 6
    assert f"golden.jsonl:{line}: missing label 'coherence'" in err and "relevance, coherence" in err


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        pytest.param({"hallucination": True}, "must be 'no' or 'yes', got True", id="bool"),
        pytest.param({"hallucination": 0}, "must be 'no' or 'yes', got 0", id="zero-one"),
        pytest.param({"hallucination": "No"}, "must be 'no' or 'yes', got 'No'", id="capitalised"),
    ],
)
def test_binary_labels_in_another_form_name_the_accepted_values(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                labels: dict[str, Any], problem: str) -> None:
    rows = [golden_row(1, "HaluEval-general", hallucination="no"), golden_row(2, "HaluEval-general", **labels)]
    assert calibrate(tmp_path, lines(rows), lines([{"id": "g1", "scores": {"no_hallucination": 4}}])) == 2
    err = capsys.readouterr().err
    assert "golden.jsonl:2: label 'hallucination'" in err and problem in err


def test_labels_on_another_scale_are_refused_with_what_to_do(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A 0-1 labelled set is not silently read as 1-5: the first 0 is refused and the message says to
    rescale (``label_scale`` is free text and is not read)."""
    rows = [golden_row(1, relevance=1), golden_row(2, relevance=0.0)]
    rows[1]["label_scale"] = "0-1"
    assert calibrate(tmp_path, lines(rows), lines([{"id": "g1", "scores": {"relevance": 4}}])) == 2
    err = capsys.readouterr().err
    assert "golden.jsonl:2: label 'relevance' must be within 1-5, got 0.0" in err and "rescale" in err


def test_int_and_float_labels_and_scores_give_the_same_report(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rows, scored = varied(25, seed=3)
    as_float = [{**r, "labels": {k: float(v) for k, v in r["labels"].items()}} for r in rows]
    scored_float = [{"id": s["id"], "scores": {k: float(v) for k, v in s["scores"].items()}} for s in scored]
    _, ints, _ = run_json(tmp_path, capsys, lines(rows), lines(scored), "--evaluator-version", "v")
    _, floats, _ = run_json(tmp_path, capsys, lines(as_float), lines(scored_float), "--evaluator-version", "v")
    assert ints is not None and floats is not None and ints["dimensions"] == floats["dimensions"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "true", '"4"', "0", "5.5", "[4]"])
def test_scores_that_are_not_1_to_5_numbers_are_exit_2_naming_the_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       value: str) -> None:
    rows, scored = varied(3)
    text = lines(scored[:2]) + '{"id": "g2", "scores": {"relevance": ' + value + "}}\n"
    assert calibrate(tmp_path, lines(rows), text) == 2
    err = capsys.readouterr().err
    assert "scores.jsonl:3: score 'relevance' must be" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "calibration").exists()


# --- the wrong scores file, missing ids --------------------------------------------------------------------


def test_scores_of_another_golden_file_are_exit_2_and_keep_the_stored_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: exit 0 with every dimension at n=0, and the empty report replaced the stored calibration of
    the same ``--evaluator-version`` (scores for another golden file share no id with this one)."""
    rows, scored = varied(20)
    assert calibrate(tmp_path, lines(rows), lines(scored), "--evaluator-version", "prod") == 0
    stored = cal.report_path(tmp_path / "data", "prod", tmp_path / "golden.jsonl")
    before = stored.read_text()
    capsys.readouterr()
    other = [{"id": f"other::{i}", "scores": {"relevance": 4}} for i in range(20)]
    assert calibrate(tmp_path, lines(rows), lines(other), "--evaluator-version", "prod", "--json") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and stored.read_text() == before
    assert "no score id matches" in captured.err and "'other::0'" in captured.err and "'g0'" in captured.err


@pytest.mark.parametrize("live", [False, True], ids=["scores", "live"])
def test_a_golden_file_of_duplicated_ids_only_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       live: bool) -> None:
    """Was: exit 0 and an empty report stored (every item excluded as ambiguous, nothing calibrated);
    live, the judge was 'run' over no items and that counted as a calibration."""
    rows = [golden_row(1, relevance=3), golden_row(1, relevance=4)]
    if live:
        code = main(["--golden", str(_write(tmp_path / "golden.jsonl", lines(rows))), "--no-progress",
                     "--data-dir", str(tmp_path / "data")], judge=ConstantJudge())
    else:
        code = calibrate(tmp_path, lines(rows), lines([{"id": "g1", "scores": {"relevance": 3}}]))
    assert code == 2
    assert "no item to calibrate" in capsys.readouterr().err
    assert not (tmp_path / "data" / "calibration").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@dataclass
class Verdict:
    scores: dict[str, float]


class ConstantJudge:
    """Stands in for the LLM judge (no model here): every answer gets a 4."""

    evaluator_version = "constant-v1"

    async def score(self, prompt: str, response: str, reference: str | None) -> Verdict:
        return Verdict({"relevance": 4.0, "coherence": 4.0})


def test_missing_and_unmatched_ids_are_warned_about_with_json(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Was: with ``--json`` (how CI runs it) 18 of 20 golden items without a score were only a count
    inside the report; stderr said nothing, and a passing ``--gate`` exited 0 on 2 items."""
    rows, scored = varied(20)
    kept = [s for s in scored if s["id"] in {"g3", "g7"}] + [{"id": "stranger", "scores": {"relevance": 2}}]
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(kept))
    assert code == 0 and report is not None
    assert report["missing_scores"] == 18 and report["unmatched_scores"] == 1
    assert "18 of 20 golden items have no score" in err and "'g0'" in err
    assert "1 score ids are not in the golden file (e.g. 'stranger')" in err


def test_a_dimension_only_one_side_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Scores for a dimension the golden set does not label are ignored; a labelled dimension without
    scores is n=0, warned about, and fails the gate with the reason."""
    rows, scored = varied(12)
    scored = [{"id": s["id"], "scores": {"relevance": s["scores"]["relevance"], "tone_compliance": 5}}
              for s in scored]
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored), "--gate")
    assert code == 3 and report is not None
    assert set(report["dimensions"]) == {"relevance", "coherence"}
    assert report["dimensions"]["coherence"]["n"] == 0 and report["dimensions"]["coherence"]["missing"] == 12
    assert "no judge scores for dimension 'coherence'" in err
    assert "gate failed: coherence: spearman is undefined (n=0: 0 scored items; at least 2 are needed)" in err
    assert [f for f in report["gate"]["failures"] if f.startswith("relevance")] == [
        "relevance: n 12 < min_n 30 (too few scored golden items to vouch for the judge)"]  # its stats pass


def test_a_passing_judge_on_too_few_items_fails_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: 12 items of a good judge passed ``--gate``; the n column now shows why it does not."""
    rows, scored = varied(12)
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored), "--gate")
    assert code == 3 and report is not None
    assert "gate failed: relevance: n 12 < min_n 30" in err and "gate failed: coherence: n 12 < min_n 30" in err
    config = _write(tmp_path / "c.yaml", "evaluation: {gate: {min_n: 12}}\n")
    code, report, _ = run_json(tmp_path, capsys, lines(rows), lines(scored), "--gate", "--config", str(config))
    assert code == 0 and report is not None and report["gate"]["passed"], report["gate"]["failures"]


# --- the gate ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("human", "judge", "why"),
    [
        pytest.param([1, 2, 3, 4, 5, 2], [4] * 6, "the judge gave every item 4", id="constant-judge"),
        pytest.param([3] * 6, [1, 2, 3, 4, 5, 2], "every human label is 3; use golden items whose labels differ",
                     id="constant-human"),
        pytest.param([2], [2], "1 scored item; at least 2 are needed", id="one-item"),
    ],
)
def test_an_undefined_statistic_fails_the_gate_saying_why(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          human: list[int], judge: list[int], why: str) -> None:
    """Was: ``spearman is undefined (n=6; too few or constant scores)``, the same words whether the
    judge was broken (one score for everything) or the golden sample was (labels all alike)."""
    rows = [golden_row(i, relevance=h) for i, h in enumerate(human)]
    scored = [{"id": f"g{i}", "scores": {"relevance": j}} for i, j in enumerate(judge)]
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored), "--gate")
    assert code == 3 and report is not None
    rel = report["dimensions"]["relevance"]
    assert rel["spearman"] is None and rel["kendall"] is None
    assert rel["undefined"]["spearman"] == why
    assert f"gate failed: relevance: spearman is undefined (n={len(human)}: {why}), min_spearman is 0.300" in err
    assert "NaN" not in json.dumps(report)


def test_constant_on_both_sides_leaves_kappa_undefined_and_the_gate_failing(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = [golden_row(i, relevance=4.33 if i % 2 else 4.0) for i in range(8)]  # both round to 4
    scored = [{"id": f"g{i}", "scores": {"relevance": 4}} for i in range(8)]
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored), "--gate")
    assert code == 3 and report is not None
    rel = report["dimensions"]["relevance"]
    assert rel["kappa"] is None and rel["kappa_ci"] is None
    assert rel["undefined"]["kappa"] == "judge and human put every item in category 4"
    assert "relevance: kappa is undefined (n=8: judge and human put every item in category 4)" in err


def _numbers(failure: str) -> tuple[float, float]:
    value, limit = re.findall(r"\d+\.\d+", failure)[-2:]
    return float(value), float(limit)


@pytest.mark.parametrize(
    ("stats_", "gate"),
    [
        pytest.param({"spearman": 0.29996, "kappa": 0.9, "bias": 0.0}, CalibrationGate(min_spearman=0.3),
                     id="spearman-just-short"),
        pytest.param({"spearman": 0.9, "kappa": 0.1999999, "bias": 0.0}, CalibrationGate(min_kappa=0.2),
                     id="kappa-just-short"),
        pytest.param({"spearman": 0.9, "kappa": 0.9, "bias": -0.25001}, CalibrationGate(max_abs_bias=0.25),
                     id="bias-just-over"),
    ],
)
def test_a_gate_failure_never_shows_the_value_equal_to_its_threshold(stats_: dict[str, float],
                                                                     gate: CalibrationGate) -> None:
    """Was: ``relevance: spearman 0.300 < min_spearman 0.300``: both rounded to 3 decimals, so a
    judge just short of the bar was told it failed while apparently meeting it."""
    result = cal.check_gate({"relevance": {"n": 50, **stats_}}, gate)
    assert not result["passed"] and len(result["failures"]) == 1
    failure = result["failures"][0]
    value, limit = _numbers(failure)
    assert value != limit
    assert (value > limit) if "|bias|" in failure else (value < limit)


def test_gate_failures_name_dimension_value_and_threshold_through_the_cli(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The stderr lines of a failed gate give the statistic's value and the threshold it missed.
    Was: a threshold 0.00001 above the judge's Spearman printed both as the same number."""
    rows, scored = varied(60, seed=9)
    code, report, _ = run_json(tmp_path, capsys, lines(rows), lines(scored), "--evaluator-version", "v")
    assert code == 0 and report is not None
    rho = report["dimensions"]["coherence"]["spearman"]
    config = _write(tmp_path / "c.yaml", f"evaluation: {{gate: {{min_spearman: {rho + 1e-5!r}, min_kappa: 0}}}}\n")
    code, report, err = run_json(tmp_path, capsys, lines(rows), lines(scored), "--gate", "--config", str(config))
    assert code == 3 and report is not None
    failing = [line for line in err.splitlines() if line.startswith("infersight: gate failed: ")]
    assert any(line.startswith("infersight: gate failed: coherence: spearman ") for line in failing)
    for line in failing:
        value, limit = _numbers(line)
        assert value < limit


# --- the statistics on tiny and tied samples ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore:An input array is constant",
                            "ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_tiny_and_tied_samples_match_scipy_and_sklearn() -> None:
    """n from 0 to 8 with heavy ties (Likert vs Likert, SummEval thirds vs 1-2, binary vs 1-5):
    every statistic equals scipy's / sklearn's, and is None exactly where theirs is NaN."""
    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(540):
        n = trial % 9
        kind = (trial // 9) % 3
        if kind == 0:
            x, y = rng.integers(1, 6, n).astype(float), rng.integers(1, 6, n).astype(float)
        elif kind == 1:
            x, y = np.round(rng.uniform(1, 5, n) * 3) / 3, rng.integers(1, 3, n).astype(float)
        else:
            x, y = rng.integers(0, 2, n).astype(float), rng.uniform(1, 5, n)
        want_rho = stats.spearmanr(x, y).statistic if n >= 2 else np.nan
        want_tau = stats.kendalltau(x, y).statistic if n >= 2 else np.nan
        for got, want in ((cal.spearman(x, y), want_rho), (cal.kendall_tau_b(x, y), want_tau)):
            assert (got is None) == bool(np.isnan(want)), (x, y)
            if got is not None:
                assert got == pytest.approx(want, abs=1e-12)
                compared += 1
        if n:
            a, b = cal.to_categories(x), cal.to_categories(y)
            want_kappa = cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5])
            got_kappa = cal.weighted_kappa(a, b)
            assert (got_kappa is None) == bool(np.isnan(want_kappa)), (a, b)
            if got_kappa is not None:
                assert got_kappa == pytest.approx(want_kappa, abs=1e-12)
    assert compared > 500  # most samples had defined correlations: the comparison is not vacuous


def test_kappa_ci_is_reproducible_and_contains_the_point_estimate() -> None:
    """Skewed, small and lopsided tables too: the same seed gives the same interval, and the
    interval holds the kappa it is reported next to (or both are undefined)."""
    rng = np.random.default_rng(1)
    checked = 0
    for trial in range(400):
        n = int(rng.integers(2, 80))
        p = rng.dirichlet(np.full(5, 0.3))
        a = rng.choice(5, n, p=p) + 1
        b = np.clip(a + rng.integers(-3, 4, n) * (rng.random(n) < rng.random()), 1, 5)
        kappa = cal.weighted_kappa(a, b)
        ci = cal.kappa_bootstrap_ci(a, b, n_resamples=200, seed=trial)
        assert ci == cal.kappa_bootstrap_ci(a, b, n_resamples=200, seed=trial)
        if kappa is None:
            assert ci is None
            continue
        assert ci is not None and ci[0] <= kappa <= ci[1]
        checked += 1
    assert checked > 300


def test_two_items_are_computed_not_refused(tmp_path: Path) -> None:
    """n=2 is the smallest defined sample: rho and tau are +-1, kappa as sklearn's; the report
    says n so a reader sees how little it rests on."""
    golden = load_golden(_write(tmp_path / "g.jsonl", lines([golden_row(0, relevance=2), golden_row(1, relevance=5)])))
    report = cal.build_report(golden, golden.items, {"g0": {"relevance": 4.0}, "g1": {"relevance": 3.0}},
                              evaluator_version="v", gate=CalibrationGate(), mode="scores", n_resamples=50)
    rel = report["dimensions"]["relevance"]
    assert rel["n"] == 2 and rel["spearman"] == pytest.approx(-1.0) and rel["kendall"] == pytest.approx(-1.0)
    assert rel["kappa"] == pytest.approx(cohen_kappa_score([4, 3], [2, 5], weights="quadratic",
                                                           labels=[1, 2, 3, 4, 5]))
    assert rel["undefined"] == {} and not report["gate"]["passed"]


# --- argument checks -----------------------------------------------------------------------------------------


def test_a_negative_seed_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ``ValueError: expected non-negative integer`` traceback from numpy after the files had
    been read, instead of argparse's usage error."""
    rows, scored = varied(5)
    with pytest.raises(SystemExit) as exit_:
        calibrate(tmp_path, lines(rows), lines(scored), "--seed", "-1")
    assert exit_.value.code == 2
    assert "argument --seed: must be 0 or more" in capsys.readouterr().err


def test_a_huge_bootstrap_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: ``--bootstrap 100000000`` allocated a table per resample and died with a MemoryError."""
    rows, scored = varied(5)
    with pytest.raises(SystemExit) as exit_:
        calibrate(tmp_path, lines(rows), lines(scored), "--bootstrap", "100000001")
    assert exit_.value.code == 2
    assert "argument --bootstrap: must be at most 100,000" in capsys.readouterr().err
