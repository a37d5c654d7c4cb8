"""Quality drift: the tests' p-values against SciPy, and each series' verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from infersight.evaluation.drift import (
    benjamini_hochberg,
    compare_windows,
    student_t_two_sided,
    two_proportion_p_value,
    welch_p_value,
)
from infersight.evaluation.settings import DriftSettings


@pytest.mark.parametrize("df", [1.0, 2.5, 7.0, 30.0, 412.7, 1e6])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.96, 2.75, 6.0, -4.2])
def test_student_t_tail_matches_scipy(t: float, df: float) -> None:
    assert student_t_two_sided(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("seed", range(5))
def test_welch_matches_scipy_on_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(3.8, 0.7, size=int(rng.integers(5, 400)))
    b = rng.normal(3.6, 1.1, size=int(rng.integers(5, 400)))
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    got = welch_p_value(a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size)
    assert got == pytest.approx(expected, rel=1e-8)


def test_welch_edge_cases() -> None:
    assert welch_p_value(4.0, 0.0, 50, 4.0, 0.0, 50) == 1.0  # both constant, equal
    assert welch_p_value(4.0, 0.0, 50, 3.0, 0.0, 50) == 0.0  # both constant, different
    assert welch_p_value(4.0, 1.0, 1, 3.0, 1.0, 50) is None  # one score has no variance estimate


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(5, 100, 15, 100), (30, 1000, 31, 1000), (0, 40, 6, 60),
                                                   (120, 5000, 80, 5000)])
def test_two_proportions_match_the_chi_square_test(k1: int, n1: int, k2: int, n2: int) -> None:
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    expected = stats.chi2_contingency(table, correction=False).pvalue  # z^2 is the 2x2 chi-square
    assert two_proportion_p_value(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-9)
    # no failure in either window (every judge series) is no test: it must not join the BH family
    assert two_proportion_p_value(0, 10, 0, 10) is None and two_proportion_p_value(1, 0, 1, 10) is None


def row(dimension: str = "factual_fidelity", version: str = "v1", n: int = 200, mean: float | None = 4.0,
        sd: float | None = 0.8, failures: int = 0, **keys: Any) -> dict[str, Any]:
    return {"evaluator": "llm_judge", "evaluator_version": version, "dimension": dimension, "evaluations": n,
            "scored": n if mean is not None else 0, "score_mean": mean, "score_stddev": sd, "failures": failures,
            "failure_rate": failures / n if n else None, **keys}


SETTINGS = DriftSettings()


def test_a_drop_in_the_judge_score_is_worse_drift() -> None:
    [got] = compare_windows([row(mean=3.4)], [row(mean=4.0)], (), SETTINGS)
    assert got["status"] == "drifted" and got["drifted"] == ["score"] and got["direction"] == "worse"
    assert got["score_delta"] == pytest.approx(-0.6) and got["score_p_value"] < 1e-10
    assert got["current"]["score_mean"] == 3.4 and got["baseline"]["score_mean"] == 4.0


def test_significant_but_small_changes_are_stable() -> None:
    """With 100,000 evaluations a 0.05 shift is significant, and below min_score_delta: not drift."""
    [got] = compare_windows([row(n=100_000, mean=3.95)], [row(n=100_000, mean=4.0)], (), SETTINGS)
    assert got["score_p_value"] < SETTINGS.alpha and got["status"] == "stable" and got["direction"] is None


def test_a_large_change_on_noisy_data_is_not_significant() -> None:
    [got] = compare_windows([row(n=30, mean=3.6, sd=1.8)], [row(n=30, mean=4.0, sd=1.8)], (), SETTINGS)
    assert got["score_p_value"] > SETTINGS.alpha and got["status"] == "stable"


def test_a_rising_check_failure_rate_is_worse_drift_and_a_falling_one_better() -> None:
    now = row("refusal", n=1000, mean=0.9, sd=0.3, failures=100, evaluator="checks")
    before = row("refusal", n=1000, mean=0.9, sd=0.3, failures=40, evaluator="checks")
    [worse] = compare_windows([now], [before], (), SETTINGS)
    assert worse["drifted"] == ["failure_rate"] and worse["direction"] == "worse"
    assert worse["failure_rate_delta"] == pytest.approx(0.06)
    [better] = compare_windows([before], [now], (), SETTINGS)
    assert better["direction"] == "better"
    mixed_now = {**now, "score_mean": 0.99, "score_stddev": 0.05}
    [mixed] = compare_windows([mixed_now], [before], (), DriftSettings(min_score_delta=0.05))
    assert mixed["drifted"] == ["score", "failure_rate"] and mixed["direction"] == "mixed"


def test_a_new_judge_version_has_no_baseline_and_small_windows_are_not_tested() -> None:
    got = compare_windows([row(version="v2", mean=2.0), row(n=12, mean=2.0)], [row(), row(n=12)], (), SETTINGS)
    assert [(r["evaluator_version"], r["status"]) for r in got] == [("v2", "no_baseline"), ("v1", "too_few")]
    assert got[0]["baseline"] is None and got[1]["score_p_value"] is None


def test_series_match_on_their_group_and_judge_errors_are_left_out() -> None:
    current = [row(tenant_id="acme", mean=3.0), row(tenant_id="globex", mean=4.0),
               row("_error", mean=None, sd=None, failures=200, tenant_id="acme")]
    baseline = [row(tenant_id="acme", mean=4.0), row(tenant_id="globex", mean=4.0)]
    got = compare_windows(current, baseline, ("tenant_id",), SETTINGS)
    assert [(r["tenant_id"], r["status"]) for r in got] == [("acme", "drifted"), ("globex", "stable")]


@pytest.mark.parametrize("m", [1, 2, 7, 50])
def test_benjamini_hochberg_matches_scipy(m: int) -> None:
    p = np.random.default_rng(m).uniform(0, 0.2, size=m)
    assert benjamini_hochberg(list(p)) == pytest.approx(list(stats.false_discovery_control(p)), rel=1e-12)


def test_one_shift_among_a_hundred_quiet_series_is_not_called_drift_after_the_correction() -> None:
    """At alpha 0.01 a p of 0.004 is an alarm on its own, but among 100 series (200 tests) it is what
    chance gives; Benjamini-Hochberg's q-value says so. A shift that stands out stays drift."""
    quiet = [row(tenant_id=f"t{i:02d}", n=100, sd=1.0) for i in range(99)]
    current = [row(tenant_id="shift", n=100, sd=1.0, mean=4.0 - 0.414), *quiet]
    baseline = [row(tenant_id="shift", n=100, sd=1.0), *quiet]
    plain = {r["tenant_id"]: r for r in compare_windows(current, baseline, ("tenant_id",),
                                                         DriftSettings(correction="none"))}
    corrected = {r["tenant_id"]: r for r in compare_windows(current, baseline, ("tenant_id",), SETTINGS)}
    assert 0.001 < plain["shift"]["score_p_value"] < 0.01 and plain["shift"]["status"] == "drifted"
    assert plain["shift"]["score_q_value"] == plain["shift"]["score_p_value"]
    assert corrected["shift"]["score_q_value"] > 0.01 and corrected["shift"]["status"] == "stable"
    big = [row(tenant_id="shift", n=100, sd=1.0, mean=3.0), *quiet]
    [loud] = [r for r in compare_windows(big, baseline, ("tenant_id",), SETTINGS) if r["tenant_id"] == "shift"]
    assert loud["status"] == "drifted" and loud["score_q_value"] < 1e-6


def test_a_zero_to_one_score_drifts_by_the_same_share_of_its_scale() -> None:
    """min_score_delta is in judge points (1-5); a token F1 (0-1) that falls 0.80 -> 0.60 moved 20%
    of its scale and drifted, where one absolute 0.25 called it stable. 0.05 is still too small."""
    now = row("token_f1", n=1000, mean=0.60, sd=0.2, evaluator="reference")
    before = row("token_f1", n=1000, mean=0.80, sd=0.2, evaluator="reference")
    [got] = compare_windows([now], [before], (), SETTINGS)
    assert got["status"] == "drifted" and got["drifted"] == ["score"] and got["direction"] == "worse"
    small = row("token_f1", n=100_000, mean=0.75, sd=0.2, evaluator="reference")
    [got] = compare_windows([small], [row("token_f1", n=100_000, mean=0.80, sd=0.2, evaluator="reference")], (),
                            SETTINGS)
    assert got["score_p_value"] < SETTINGS.alpha and got["status"] == "stable"
