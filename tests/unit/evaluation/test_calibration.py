"""Calibration statistics against scipy and scikit-learn; golden and scores files; report storage."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from infersight.evaluation import calibration as cal
from infersight.evaluation.golden import (
    DATASET_MAPPINGS,
    GoldenError,
    LabelMapping,
    load_golden,
    load_scores,
)
from infersight.evaluation.settings import CalibrationGate

RNG_SEEDS = [0, 1, 2]


def samples(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired data: continuous, integer-tied, SummEval-like thirds vs 1-5, or binary vs 1-5."""
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        x = rng.normal(size=n)
        return x, x + rng.normal(size=n)
    if kind == "ties":
        x = rng.integers(1, 6, n).astype(float)
        return x, np.clip(x + rng.integers(-2, 3, n), 1, 5)
    if kind == "thirds":
        x = np.round(rng.uniform(1, 5, n) * 3) / 3
        return x, np.clip(np.round(x + rng.normal(0, 0.8, n)), 1, 5)
    x = rng.integers(0, 2, n).astype(float)
    return x, np.clip(np.where(x == 1, 4, 2) + rng.integers(-2, 3, n), 1, 5).astype(float)


@pytest.mark.filterwarnings("ignore:An input array is constant")
@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("kind", ["continuous", "ties", "thirds", "binary"])
@pytest.mark.parametrize("n", [3, 17, 400, 3000])
def test_rank_correlations_match_scipy(kind: str, n: int, seed: int) -> None:
    x, y = samples(kind, n, seed)
    want_rho, want_tau = stats.spearmanr(x, y).statistic, stats.kendalltau(x, y).statistic
    got_rho, got_tau = cal.spearman(x, y), cal.kendall_tau_b(x, y)
    if np.isnan(want_rho):
        assert got_rho is None and got_tau is None
        return
    assert got_rho == pytest.approx(want_rho, abs=1e-12)
    assert got_tau == pytest.approx(want_tau, abs=1e-12)
    assert cal.spearman(x, -y) == pytest.approx(-want_rho, abs=1e-12)
    assert np.allclose(cal.rankdata(y), stats.rankdata(y))


def test_undefined_correlations_are_none() -> None:
    assert cal.spearman([3, 3, 3], [1, 2, 3]) is None
    assert cal.kendall_tau_b([1, 2, 3], [4, 4, 4]) is None
    assert cal.spearman([1], [2]) is None and cal.kendall_tau_b([], []) is None
    with pytest.raises(ValueError):
        cal.spearman([1, 2], [1, 2, 3])


def test_count_inversions_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    for _ in range(150):
        y = rng.integers(0, int(rng.integers(1, 8)), int(rng.integers(0, 40)))
        brute = sum(1 for i, j in itertools.combinations(range(y.size), 2) if y[i] > y[j])
        assert cal.count_inversions(y) == brute


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_weighted_kappa_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (5, 50, 2000):
        a = rng.integers(1, 6, n)
        b = np.clip(a + rng.integers(-1, 2, n) * rng.integers(0, 3, n), 1, 5)
        want = cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5])
        assert cal.weighted_kappa(a, b) == pytest.approx(want, abs=1e-12)
    # categories absent from the data still weigh by distance on the fixed 1..5 scale
    a, b = np.array([1, 1, 5, 5, 3, 1]), np.array([1, 5, 5, 1, 5, 1])
    want = cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3, 4, 5])
    assert cal.weighted_kappa(a, b) == pytest.approx(want, abs=1e-12)
    # two categories: quadratic weighting is plain Cohen's kappa
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    assert cal.weighted_kappa(a, b, (0, 1)) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_edge_cases() -> None:
    assert cal.weighted_kappa([1, 2, 5], [1, 2, 5]) == pytest.approx(1.0)
    assert cal.weighted_kappa([3, 3, 3], [3, 3, 3]) is None  # no expected disagreement: undefined
    assert cal.weighted_kappa([], []) is None
    with pytest.raises(ValueError):
        cal.weighted_kappa([0, 1], [1, 1])
    assert cal.to_categories([4.33, 4.5, 4.67, 2.5, 0.2, 7.0]).tolist() == [4, 5, 5, 3, 1, 5]


def naive_bootstrap(a: np.ndarray, b: np.ndarray, labels: list[int], resamples: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, a.size, a.size)
        values.append(cohen_kappa_score(a[idx], b[idx], weights="quadratic", labels=labels))
    arr = np.array(values)
    return np.percentile(arr[np.isfinite(arr)], [2.5, 97.5]).tolist()


def test_kappa_ci_agrees_with_item_bootstrap() -> None:
    rng = np.random.default_rng(11)
    a = rng.integers(1, 6, 500)
    b = np.clip(a + rng.integers(-2, 3, 500), 1, 5)
    got = cal.kappa_bootstrap_ci(a, b, seed=3)
    assert got is not None and got == cal.kappa_bootstrap_ci(a, b, seed=3)
    assert got != cal.kappa_bootstrap_ci(a, b, seed=4)
    point = cal.weighted_kappa(a, b)
    assert got[0] < point < got[1]
    want = naive_bootstrap(a, b, [1, 2, 3, 4, 5], 400, seed=9)
    assert got == pytest.approx(want, abs=0.02)
    assert cal.kappa_bootstrap_ci(a, b, n_resamples=0) is None
    assert cal.kappa_bootstrap_ci([4, 4, 4], [4, 4, 4]) is None


def test_accuracy_and_f1_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    t, p = rng.integers(0, 2, 700), rng.integers(0, 2, 700)
    assert cal.accuracy(t, p) == pytest.approx(accuracy_score(t, p))
    assert cal.f1(t, p) == pytest.approx(f1_score(t, p))
    assert cal.f1([0, 0], [0, 0]) is None  # no positives anywhere: undefined, not 0
    assert cal.f1([1, 0], [0, 1]) == 0.0


def test_dimension_stats_binary_thresholds_the_judge() -> None:
    mapping = DATASET_MAPPINGS["HaluEval-general"][0]
    human = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=float)
    judge = np.array([5, 3, 2, 1, 3, 2, 4, 1], dtype=float)
    out = cal.dimension_stats(human, judge, mapping, n_resamples=50)
    binary = (judge >= 3).astype(int)
    assert out["threshold"] == 3.0
    assert out["accuracy"] == pytest.approx(accuracy_score(human, binary))
    assert out["f1"] == pytest.approx(f1_score(human, binary))
    assert out["kappa"] == pytest.approx(cohen_kappa_score(human, binary))
    assert out["bias"] == pytest.approx(np.mean(binary - human))
    assert out["spearman"] == pytest.approx(stats.spearmanr(judge, human).statistic)
    assert out["confusion"] == {"tp": 3, "fp": 1, "fn": 1, "tn": 3}


def test_gate_names_dimension_and_threshold() -> None:
    dims: dict[str, dict[str, Any]] = {
        "relevance": {"n": 10, "spearman": 0.8, "kappa": 0.7, "bias": 0.1},
        "coherence": {"n": 10, "spearman": 0.1, "kappa": 0.7, "bias": -0.6},
        "factual_fidelity": {"n": 0, "spearman": None, "kappa": None, "bias": None},
    }
    gate = cal.check_gate(dims, CalibrationGate(min_n=10, min_spearman=0.3, min_kappa=0.2, max_abs_bias=0.5))
    assert not gate["passed"]
    assert "coherence: spearman 0.100 < min_spearman 0.300" in gate["failures"]
    assert "coherence: |bias| 0.600 > max_abs_bias 0.500" in gate["failures"]
    assert any(f.startswith("factual_fidelity: kappa is undefined") for f in gate["failures"])
    assert not any(f.startswith("relevance") for f in gate["failures"])
    assert cal.check_gate({"relevance": {**dims["relevance"], "n": 30}}, CalibrationGate())["passed"]


def test_gate_fails_a_dimension_measured_on_too_few_items() -> None:
    """A perfect Spearman on 10 items says little; below ``min_n`` the gate fails whatever the numbers."""
    perfect = {"spearman": 1.0, "kappa": 1.0, "bias": 0.0}
    few = cal.check_gate({"relevance": {"n": 10, **perfect}}, CalibrationGate())
    assert not few["passed"] and few["min_n"] == 30
    assert few["failures"] == ["relevance: n 10 < min_n 30 (too few scored golden items to vouch for the judge)"]
    assert cal.check_gate({"relevance": {"n": 10, **perfect}}, CalibrationGate(min_n=10))["passed"]
    assert cal.check_gate({"relevance": {"n": 29, **perfect}}, CalibrationGate(min_n=30))["failures"]
    with pytest.raises(ValueError, match="min_n"):
        CalibrationGate(min_n=1)


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def summeval_row(i: int, **labels: Any) -> dict[str, Any]:
    base = {"relevance": 4.0, "coherence": 3.0, "consistency": 5.0, "fluency": 4.0}
    return {"id": f"s{i}", "dataset": "SummEval", "task": "summarization", "prompt": "p", "response": "r",
            "reference": "ref", "labels": {**base, **labels}, "label_scale": "1-5"}


def test_golden_errors_name_file_and_line(tmp_path: Path) -> None:
    cases: list[tuple[list[Any], str]] = [
        ([summeval_row(1), "{not json"], ":2: invalid JSON"),
        ([summeval_row(1), summeval_row(2, relevance=6)], ":2: label 'relevance' must be within 1-5"),
        ([summeval_row(1), {**summeval_row(2), "labels": {"relevance": 3}}], ":2: missing label 'coherence'"),
        ([summeval_row(1), {**summeval_row(2), "dataset": "Other"}], ":2: mixed datasets"),
        ([{**summeval_row(1), "id": ""}], ":1: field 'id' must be a non-empty string"),
        ([{**summeval_row(1), "response": None}], ":1: field 'response' must be a string"),
        ([{**summeval_row(1), "dataset": "TruthfulQA", "labels": {"correct_answers": []}}], ":1: no judge-dimension"),
        ([{"id": "h", "dataset": "HaluEval-general", "prompt": "p", "response": "r",
           "labels": {"hallucination": "maybe"}}], ":1: label 'hallucination' must be 'no' or 'yes'"),
        ([], "no items"),
    ]
    for rows, message in cases:
        path = write_lines(tmp_path / "g.jsonl", rows)
        with pytest.raises(GoldenError) as err:
            load_golden(path)
        assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)
    with pytest.raises(GoldenError, match="file not found"):
        load_golden(tmp_path / "absent.jsonl")


def test_golden_mapping_and_duplicates(tmp_path: Path) -> None:
    rows = [summeval_row(1, consistency=4.33), summeval_row(2), {**summeval_row(3), "id": "s1"}, summeval_row(4)]
    golden = load_golden(write_lines(tmp_path / "g.jsonl", rows))
    assert golden.dataset == "SummEval" and golden.dimensions == ["relevance", "coherence", "factual_fidelity"]
    assert [i.id for i in golden.items] == ["s2", "s4"] and golden.duplicates == {"s1": [1, 3]}
    assert golden.items[0].human == {"relevance": 4.0, "coherence": 3.0, "factual_fidelity": 5.0}
    own = {"id": "c1", "dataset": "acme-support", "prompt": "p", "response": "r",
           "labels": {"tone_compliance": 4, "relevance": 2, "other": "x"}}
    custom = load_golden(write_lines(tmp_path / "c.jsonl", [own]))
    assert custom.mappings == (LabelMapping("relevance", "relevance"),
                               LabelMapping("tone_compliance", "tone_compliance"))


def test_scores_file_validation(tmp_path: Path) -> None:
    good = [{"id": "a", "scores": {"relevance": 4, "coherence": None}}, {"id": "b", "scores": {"relevance": 2.5}},
            {"id": "a", "scores": {"relevance": 1}}]
    loaded = load_scores(write_lines(tmp_path / "s.jsonl", good))
    assert loaded.scores == {"b": {"relevance": 2.5}} and loaded.duplicates == {"a": [1, 3]}
    for row, message in [({"id": "a", "scores": {"relevance": 9}}, ":1: score 'relevance' must be within 1-5"),
                         ({"id": "a", "scores": {"relevance": "4"}}, ":1: score 'relevance' must be a number"),
                         ({"id": 3, "scores": {}}, ":1: field 'id'"), ({"id": "a"}, ":1: field 'scores'")]:
        with pytest.raises(GoldenError, match=message):
            load_scores(write_lines(tmp_path / "bad.jsonl", [row]))


def test_report_is_strict_json_and_counts_missing(tmp_path: Path) -> None:
    golden = load_golden(write_lines(tmp_path / "g.jsonl", [summeval_row(i, relevance=1 + i % 5) for i in range(8)]))
    scores = {f"s{i}": {"relevance": 3.0, "coherence": 3.0} for i in range(6)}  # constant judge; s6, s7 missing
    report = cal.build_report(golden, golden.items, scores, evaluator_version="v/1", gate=CalibrationGate(),
                              mode="scores", unmatched_ids=["zz", "yy"], n_resamples=100)
    json.loads(cal.report_json(report))  # no NaN anywhere
    assert report["missing_scores"] == 2 and report["missing_ids"] == ["s6", "s7"]
    assert report["unmatched_scores"] == 2 and report["unmatched_ids"] == ["yy", "zz"]
    rel = report["dimensions"]["relevance"]
    assert rel["n"] == 6 and rel["missing"] == 2 and rel["spearman"] is None and rel["kappa"] == pytest.approx(0.0)
    assert report["dimensions"]["factual_fidelity"]["n"] == 0
    assert report["dimensions"]["factual_fidelity"]["kappa_ci"] is None
    assert not report["gate"]["passed"]


def test_reports_stored_per_evaluator_version(tmp_path: Path) -> None:
    golden = load_golden(write_lines(tmp_path / "gold.jsonl", [summeval_row(i, relevance=1 + i % 5) for i in range(8)]))
    scores = {f"s{i}": {"relevance": float(1 + i % 5)} for i in range(8)}
    paths = []
    for version in ("judge-a", "../evil/b"):
        report = cal.build_report(golden, golden.items, scores, evaluator_version=version, gate=CalibrationGate(),
                                  mode="scores", n_resamples=10)
        paths.append(cal.write_report(report, tmp_path / "data"))
    key = cal.golden_key(tmp_path / "gold.jsonl")
    assert re.fullmatch(r"gold-[0-9a-f]{8}", key)
    assert paths[0] == tmp_path / "data" / "calibration" / "judge-a" / f"{key}.json"
    unsafe = hashlib.sha256(b"../evil/b").hexdigest()[:8]  # a mapped name carries its version's hash
    assert paths[1] == tmp_path / "data" / "calibration" / f".._evil_b-{unsafe}" / f"{key}.json"
    assert json.loads(paths[0].read_text())["golden_sha256"] == hashlib.sha256((tmp_path / "gold.jsonl").read_bytes()).hexdigest()
    (tmp_path / "data" / "calibration" / "judge-a" / "broken.json").write_text("{")
    loaded = cal.load_calibrations(tmp_path / "data")
    assert sorted(r["evaluator_version"] for r in loaded) == ["../evil/b", "judge-a"]
    assert loaded[0]["dimensions"]["relevance"]["spearman"] == pytest.approx(1.0)
    assert cal.load_calibrations(tmp_path / "nothing") == []


def test_golden_files_of_the_same_name_keep_reports_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: reports were keyed by the golden file's stem, so ``finance/golden.jsonl`` and
    ``support/golden.jsonl`` overwrote each other's report under the same judge version."""
    rows = [summeval_row(i, relevance=1 + i % 5) for i in range(8)]
    scores = {f"s{i}": {"relevance": float(1 + i % 5)} for i in range(8)}
    paths = []
    for team in ("finance", "support"):
        (tmp_path / team).mkdir()
        golden = load_golden(write_lines(tmp_path / team / "golden.jsonl", rows))
        report = cal.build_report(golden, golden.items, scores, evaluator_version="v1", gate=CalibrationGate(),
                                  mode="scores", n_resamples=10)
        paths.append(cal.write_report(report, tmp_path / "data"))
    assert paths[0] != paths[1] and all(p.is_file() for p in paths)
    assert sorted(r["golden"] for r in cal.load_calibrations(tmp_path / "data")) == [
        str(tmp_path / "finance" / "golden.jsonl"), str(tmp_path / "support" / "golden.jsonl")]
    monkeypatch.chdir(tmp_path / "finance")  # the same file named relatively lands on the same report
    assert cal.report_path(tmp_path / "data", "v1", "golden.jsonl") == paths[0]
