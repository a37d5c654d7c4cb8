"""`infersight eval calibrate` on the real SummEval and HaluEval golden sets (INFERSIGHT_EXTDATA).

Expected figures are computed here, independently, with scipy and scikit-learn from the raw golden
JSONL; the command's JSON must agree with every one of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from infersight.evaluation.calibrate_cli import main
from infersight.evaluation.calibration import load_calibrations, report_path

SUMMEVAL = "golden/summeval_1600.jsonl"
HALUEVAL = "golden/halueval_general_4507.jsonl"
SUMMEVAL_MAP = {"relevance": "relevance", "coherence": "coherence", "factual_fidelity": "consistency"}
DUP_ID = "halueval_general::ID"  # occurs twice in the HaluEval file


def golden_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def categories(values: np.ndarray, lo: int = 1, hi: int = 5) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), lo, hi).astype(int)


def bootstrap_ci(judge: np.ndarray, human: np.ndarray, labels: list[int], seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(200):
        idx = rng.integers(0, judge.size, judge.size)
        values.append(cohen_kappa_score(judge[idx], human[idx], weights="quadratic", labels=labels))
    return np.percentile(values, [2.5, 97.5]).tolist()


def write_scores(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def summeval_scores(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """A decent judge: humans plus noise; coherence deliberately half a point too generous."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        labels = row["labels"]
        out.append({"id": row["id"], "scores": {
            "relevance": float(np.clip(round(labels["relevance"] + rng.normal(0, 0.5)), 1, 5)),
            "coherence": float(np.clip(labels["coherence"] + 0.5 + rng.normal(0, 0.4), 1, 5)),
            "factual_fidelity": float(np.clip(round(labels["consistency"] + rng.normal(0, 0.5)), 1, 5)),
            "fluency": 5.0,  # not a judge dimension: ignored
        }})
    return out


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any], str]:
    code = main([*argv, "--json", "--no-progress"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_summeval_matches_scipy_and_sklearn(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = golden_rows(extdata / SUMMEVAL)
    scored = summeval_scores(rows)
    dropped = {r["id"] for r in scored[::64]}  # 25 golden items left without a score
    extra = [{"id": f"not-in-golden-{i}", "scores": {"relevance": 3}} for i in range(7)]
    kept = [r for r in scored if r["id"] not in dropped]
    scores_file = write_scores(tmp_path / "scores.jsonl", kept + extra)

    code, report, err = run_json(capsys, ["--golden", str(extdata / SUMMEVAL), "--scores", str(scores_file),
                                          "--data-dir", str(tmp_path / "data")])
    assert code == 0, err
    version = hashlib.sha256(scores_file.read_bytes()).hexdigest()[:16]
    assert report["evaluator_version"] == version and report["dataset"] == "SummEval"
    assert report["golden"] == str(extdata / SUMMEVAL)
    assert report["n_items"] == 1600 and report["missing_scores"] == len(dropped) == 25
    assert set(report["missing_ids"]) <= dropped and len(report["missing_ids"]) == 20
    assert report["unmatched_scores"] == 7 and set(report["unmatched_ids"]) == {e["id"] for e in extra}
    assert set(report["dimensions"]) == set(SUMMEVAL_MAP)  # fluency has no judge dimension

    by_id = {r["id"]: r["scores"] for r in kept}
    for dim, label in SUMMEVAL_MAP.items():
        human = np.array([r["labels"][label] for r in rows if r["id"] in by_id])
        judge = np.array([by_id[r["id"]][dim] for r in rows if r["id"] in by_id])
        got = report["dimensions"][dim]
        kappa = cohen_kappa_score(categories(judge), categories(human), weights="quadratic", labels=[1, 2, 3, 4, 5])
        assert got["n"] == 1575 and got["missing"] == 25 and got["label"] == label
        assert got["spearman"] == pytest.approx(stats.spearmanr(judge, human).statistic, abs=1e-12)
        assert got["kendall"] == pytest.approx(stats.kendalltau(judge, human).statistic, abs=1e-12)
        assert got["kappa"] == pytest.approx(kappa, abs=1e-12)
        assert got["bias"] == pytest.approx(np.mean(judge - human), abs=1e-12)
        assert got["human_mean"] == pytest.approx(human.mean()) and got["judge_mean"] == pytest.approx(judge.mean())
        low, high = got["kappa_ci"]
        assert low < kappa < high
        assert [low, high] == pytest.approx(bootstrap_ci(categories(judge), categories(human), [1, 2, 3, 4, 5]),
                                            abs=0.02)
        assert "accuracy" not in got
    biases = {d: report["dimensions"][d]["bias"] for d in SUMMEVAL_MAP}
    assert biases["coherence"] > 0.35 and max(biases, key=lambda d: abs(biases[d])) == "coherence"
    assert report["gate"]["passed"] and report["gate"]["failures"] == []

    stored = report_path(tmp_path / "data", version, extdata / SUMMEVAL)
    assert json.loads(stored.read_text())["dimensions"] == report["dimensions"]
    assert str(stored) in err


def test_halueval_binary_dimension(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = golden_rows(extdata / HALUEVAL)
    rng = np.random.default_rng(3)
    scored = []
    for row in rows:  # written naively from every line, so the duplicated golden id appears twice
        good = row["labels"]["hallucination"] == "no"
        flip = rng.random() < 0.15
        high = good != flip
        value = int(rng.integers(3, 6) if high else rng.integers(1, 3))
        scored.append({"id": row["id"], "scores": {"no_hallucination": value}})
    scores_file = write_scores(tmp_path / "halu.jsonl", scored)
    code, report, err = run_json(capsys, ["--golden", str(extdata / HALUEVAL), "--scores", str(scores_file),
                                          "--data-dir", str(tmp_path / "data"), "--evaluator-version", "judge-x",
                                          "--gate"])
    assert code == 0, err
    assert report["duplicate_ids"] == [DUP_ID] and report["duplicate_score_ids"] == [DUP_ID]
    assert DUP_ID in err and "2059" in err
    assert report["n_items"] == 4505 and report["missing_scores"] == 0 and report["unmatched_scores"] == 0

    keep = [(r, s) for r, s in zip(rows, scored) if r["id"] != DUP_ID]
    human = np.array([1 if r["labels"]["hallucination"] == "no" else 0 for r, _ in keep])
    judge = np.array([s["scores"]["no_hallucination"] for _, s in keep], dtype=float)
    binary = (judge >= 3).astype(int)
    got = report["dimensions"]["no_hallucination"]
    assert got["kind"] == "binary" and got["threshold"] == 3.0 and got["n"] == 4505
    assert got["accuracy"] == pytest.approx(accuracy_score(human, binary), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(human, binary), abs=1e-12)
    quadratic = cohen_kappa_score(binary, human, weights="quadratic", labels=[0, 1])
    assert got["kappa"] == pytest.approx(quadratic, abs=1e-12)
    assert got["kappa"] == pytest.approx(cohen_kappa_score(binary, human), abs=1e-12)
    assert got["spearman"] == pytest.approx(stats.spearmanr(judge, human).statistic, abs=1e-12)
    assert got["kendall"] == pytest.approx(stats.kendalltau(judge, human).statistic, abs=1e-12)
    assert got["bias"] == pytest.approx(np.mean(binary - human), abs=1e-12)
    assert got["kappa_ci"] == pytest.approx(bootstrap_ci(binary, human, [0, 1]), abs=0.02)
    assert report_path(tmp_path / "data", "judge-x", extdata / HALUEVAL).is_file()


def test_gate_blocks_a_random_judge(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = golden_rows(extdata / SUMMEVAL)
    rng = np.random.default_rng(8)
    noise = [{"id": r["id"], "scores": {d: int(rng.integers(1, 6)) for d in SUMMEVAL_MAP}} for r in rows]
    scores_file = write_scores(tmp_path / "random.jsonl", noise)
    argv = ["--golden", str(extdata / SUMMEVAL), "--scores", str(scores_file), "--data-dir", str(tmp_path / "d")]
    code, report, err = run_json(capsys, [*argv, "--gate"])
    assert code == 3 and not report["gate"]["passed"]
    assert "gate failed: relevance: spearman" in err and "< min_spearman 0.300" in err
    assert "< min_kappa 0.200" in err
    code, _, _ = run_json(capsys, argv)  # without --gate the verdict is reported, not enforced
    assert code == 0


def test_gate_bias_limit_from_config(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores_file = write_scores(tmp_path / "s.jsonl", summeval_scores(golden_rows(extdata / SUMMEVAL)))
    config = tmp_path / "infersight.yaml"
    config.write_text(
        "backends: [{name: sim, url: 'http://127.0.0.1:9/v1', models: [m]}]\n"
        "tenants: [{id: t, api_keys: [k]}]\n"
        f"storage: {{path: '{tmp_path / 'store'}'}}\n"
        "evaluation: {gate: {min_spearman: 0.3, min_kappa: 0.2, max_abs_bias: 0.25}}\n"
    )
    code, report, err = run_json(capsys, ["--golden", str(extdata / SUMMEVAL), "--scores", str(scores_file),
                                          "--config", str(config), "--evaluator-version", "gen-2", "--gate"])
    assert code == 3
    assert report["gate"]["max_abs_bias"] == 0.25
    assert [f for f in report["gate"]["failures"]] == [
        f"coherence: |bias| {abs(report['dimensions']['coherence']['bias']):.3f} > max_abs_bias 0.250"]
    assert "gate failed: coherence: |bias|" in err
    stored = load_calibrations(tmp_path / "store")
    assert [r["evaluator_version"] for r in stored] == ["gen-2"]


def test_table_output_and_bad_input(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = golden_rows(extdata / SUMMEVAL)[:200]
    scores_file = write_scores(tmp_path / "s.jsonl", summeval_scores(rows))
    code = main(["--golden", str(extdata / SUMMEVAL), "--scores", str(scores_file), "--limit", "200",
                 "--data-dir", str(tmp_path / "d")])
    out = capsys.readouterr().out
    assert code == 0
    assert "factual_fidelity" in out and "gate passed" in out and "items 200" in out and "unmatched score ids 0" in out
    code = main(["--golden", str(extdata / "golden/truthfulqa_817.jsonl"), "--scores", str(scores_file)])
    assert code == 2 and "truthfulqa_817.jsonl:1: no judge-dimension mapping" in capsys.readouterr().err
    code = main(["--golden", str(extdata / SUMMEVAL), "--data-dir", str(tmp_path / "d")])  # live, no judge url
    assert code == 2 and "evaluation.judge.url" in capsys.readouterr().err


@dataclass
class Verdict:
    scores: dict[str, float]


class FakeJudge:
    """Scores from the human labels plus noise (by response text); fails on one response; records concurrency."""

    evaluator_version = "fake-judge-v1"

    def __init__(self, rows: list[dict[str, Any]], fail_on: str) -> None:
        rng = np.random.default_rng(4)
        self.by_response = {
            r["response"]: {d: float(np.clip(round(r["labels"][lab] + rng.normal(0, 0.5)), 1, 5))
                            for d, lab in SUMMEVAL_MAP.items()}
            for r in rows
        }
        self.fail_on, self.calls, self.in_flight, self.max_in_flight = fail_on, 0, 0, 0

    async def score(self, prompt: str, response: str, reference: str | None) -> Verdict:
        assert prompt.startswith("Summarize") and reference
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            if response == self.fail_on:
                raise TimeoutError("judge timed out")
            return Verdict(dict(self.by_response[response]))
        finally:
            self.in_flight -= 1


def test_live_mode_with_an_in_process_judge(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = golden_rows(extdata / SUMMEVAL)[:60]
    assert [r["response"] for r in rows].count(rows[7]["response"]) == 1  # identical summaries score alike
    judge = FakeJudge(rows, fail_on=rows[7]["response"])
    code = main(["--golden", str(extdata / SUMMEVAL), "--limit", "60", "--concurrency", "4", "--json",
                 "--data-dir", str(tmp_path / "d")], judge=judge)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert judge.calls == 60 and 1 < judge.max_in_flight <= 4
    assert report["mode"] == "live" and report["evaluator_version"] == "fake-judge-v1"
    assert report["n_items"] == 60 and report["judge_errors"] == 1
    assert report["missing_scores"] == 1 and report["missing_ids"] == [rows[7]["id"]]
    # the warning names the failure by its type (a message may quote the item), and the progress bar
    assert "judge failed on" in captured.err and "TimeoutError" in captured.err and "60/60" in captured.err
    assert "judge timed out" not in captured.err
    ok = [r for i, r in enumerate(rows) if i != 7]
    for dim, label in SUMMEVAL_MAP.items():
        human = np.array([r["labels"][label] for r in ok])
        judged = np.array([judge.by_response[r["response"]][dim] for r in ok])
        got = report["dimensions"][dim]
        assert got["n"] == 59
        assert got["spearman"] == pytest.approx(stats.spearmanr(judged, human).statistic, abs=1e-12)
        assert got["kappa"] == pytest.approx(cohen_kappa_score(
            categories(judged), categories(human), weights="quadratic", labels=[1, 2, 3, 4, 5]), abs=1e-12)
    assert report_path(tmp_path / "d", "fake-judge-v1", extdata / SUMMEVAL).is_file()


def test_live_mode_judge_down_stores_nothing(extdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = golden_rows(extdata / SUMMEVAL)[:5]
    judge = FakeJudge(rows, fail_on="")
    judge.by_response = {}  # every call raises KeyError
    code = main(["--golden", str(extdata / SUMMEVAL), "--limit", "5", "--no-progress",
                 "--data-dir", str(tmp_path / "d")], judge=judge)
    assert code == 1 and "failed on all 5 items" in capsys.readouterr().err
    assert not (tmp_path / "d" / "calibration").exists()


def _tiny_golden(tmp_path: Path) -> tuple[Path, Path]:
    """Five items labelled directly in judge dimensions, and scores for them."""
    golden = tmp_path / "tiny.jsonl"
    golden.write_text("".join(json.dumps({
        "id": f"tiny::{i}", "dataset": "tiny", "task": "qa", "prompt": "q", "response": "a", "reference": None,
        "labels": {"relevance": 1 + i}, "label_scale": "1-5"}) + "\n" for i in range(5)))
    scores = write_scores(tmp_path / "s.jsonl", [{"id": f"tiny::{i}", "scores": {"relevance": 1 + i}} for i in range(5)])
    return golden, scores


def test_a_config_for_the_judge_alone_needs_no_backends_or_tenants(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A calibration job's config names the judge and the store, not the gateway's backends and
    tenants (those used to be required, so such a file was refused)."""
    golden, scores = _tiny_golden(tmp_path)
    config = tmp_path / "judge.yaml"
    config.write_text(f"storage: {{path: '{tmp_path / 'store'}'}}\nevaluation: {{gate: {{min_n: 5, min_spearman: 0.99}}}}\n")
    code, report, _ = run_json(capsys, ["--golden", str(golden), "--scores", str(scores), "--config", str(config),
                                        "--evaluator-version", "v1", "--gate", "--bootstrap", "0"])
    assert code == 0 and report["gate"]["min_spearman"] == 0.99 and report["gate"]["min_n"] == 5
    assert [r["evaluator_version"] for r in load_calibrations(tmp_path / "store")] == ["v1"]

    config.write_text("evaluaton: {gate: {min_spearman: 0.99}}\n")  # a typo is still named
    code = main(["--golden", str(golden), "--scores", str(scores), "--config", str(config)])
    assert code == 2 and "evaluaton" in capsys.readouterr().err

    config.write_text("backends: [{name: sim, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n")
    code = main(["--golden", str(golden), "--scores", str(scores), "--config", str(config)])
    assert code == 2 and "backends.0.url" in capsys.readouterr().err  # a gateway config is checked whole


def test_a_live_run_reports_what_the_judge_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Live calibration over real HTTP against sim-judge: the report says what the run cost (tokens and
    cost at the configured prices); a --scores run calls no judge and says null."""
    from infersight.sim.judge import sim_judge_profile
    from infersight.sim.questions import QUESTION_BANK
    from infersight.sim.server import SimServer

    golden = tmp_path / "bank.jsonl"
    golden.write_text("".join(json.dumps({
        "id": f"bank::{i}", "dataset": "bank", "task": "qa", "prompt": q.question,
        "response": f"{q.correct.capitalize()}." if i % 2 else f"It is {q.wrong[0]}.", "reference": None,
        "labels": {"factual_fidelity": 5 if i % 2 else 1}, "label_scale": "1-5"}) + "\n"
        for i, q in enumerate(QUESTION_BANK[:6])))
    with SimServer(seed=3, profiles={"sim-judge": sim_judge_profile(2.0)}) as sim:
        config = tmp_path / "judge.yaml"
        config.write_text(json.dumps({"evaluation": {"judge": {
            "url": sim.url, "model": "sim-judge", "input_price_per_1m": 0.15, "output_price_per_1m": 0.6}}}))
        code, report, err = run_json(capsys, ["--golden", str(golden), "--config", str(config), "--no-progress",
                                              "--data-dir", str(tmp_path / "d"), "--bootstrap", "0"])
    assert code == 0, err
    assert report["judge_errors"] == 0 and report["dimensions"]["factual_fidelity"]["n"] == 6
    assert report["judge_tokens"] > 6 * 500  # the rubric and few-shot turns of six calls
    assert 0.15e-6 * report["judge_tokens"] < report["judge_cost"] < 0.6e-6 * report["judge_tokens"]
    scores = write_scores(tmp_path / "s.jsonl", [{"id": f"bank::{i}", "scores": {"factual_fidelity": 3}}
                                                 for i in range(6)])
    code, report, _ = run_json(capsys, ["--golden", str(golden), "--scores", str(scores), "--data-dir",
                                        str(tmp_path / "d"), "--bootstrap", "0"])
    assert code == 0 and report["judge_tokens"] is None and report["judge_cost"] is None
