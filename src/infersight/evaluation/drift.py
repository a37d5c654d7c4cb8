"""Quality drift: did a series' scores or failure rate move between a baseline window and now?

A series is one (evaluator, evaluator_version, dimension), optionally per tenant, model and use
case, exactly as ``GET /api/v1/quality`` reports it. Its current window is compared with the window
just before it (the baseline), never with another version: a new judge model or rubric starts a new
series with no baseline, so a judge change can never pass for a model change.

Two tests per series, both two-sided, decided at ``alpha`` after the Benjamini-Hochberg correction
over every test of the answer (``correction``), so that many series do not mean many false alarms:

- the mean score, by Welch's t-test on the windows' count, mean and sample standard deviation (the
  store aggregates them, so no score leaves it); the p-value comes from Student's t distribution;
- the failure rate (checks labelled ``fail``), by the two-proportion z-test.

A significant change counts as drift only when it is also large enough to matter (``min_score_delta``,
``min_failure_rate_delta``): with 100,000 evaluations a shift of 0.01 is significant and harmless.
Series with fewer than ``min_n`` evaluations in either window are reported as ``too_few``, not tested.
Higher scores are better for every evaluator here (judge 1-5, checks 1 = pass, reference metrics),
so a falling mean or a rising failure rate is ``worse``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from infersight.evaluation.settings import DriftSettings
from infersight.model.evaluation import JUDGE_EVALUATOR
from infersight.store.quality_sql import QUALITY_SERIES

ERROR_DIMENSION = "_error"  # judge failures: their rate is always 1, their volume is not quality
_WINDOW_FIELDS = ("evaluations", "scored", "score_mean", "score_stddev", "failures", "failure_rate")


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), for the t distribution's tail (``math`` has no incomplete beta)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def welch_p_value(mean1: float, sd1: float, n1: int, mean2: float, sd2: float, n2: int) -> float | None:
    """Two-sided p-value of Welch's t-test from summary statistics; None when it is undefined."""
    if n1 < 2 or n2 < 2:
        return None
    v1, v2 = sd1 * sd1 / n1, sd2 * sd2 / n2
    if v1 + v2 == 0.0:  # both windows constant: equal means are no change, different ones a certain one
        # equal within rounding: a store's avg() of 50 x 0.7 is 0.6999999999999998, of 33 x 0.7 ...96
        return 1.0 if math.isclose(mean1, mean2, rel_tol=1e-9, abs_tol=1e-12) else 0.0
    t = (mean1 - mean2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    return student_t_two_sided(t, df)


def two_proportion_p_value(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; None when it is undefined.

    Undefined includes no failure (or only failures) in both windows: nothing can move there (a
    judge series never "fails"), and a p of 1.0 for it joined the Benjamini-Hochberg family,
    doubling its size and hiding a real score drift (p 0.0015 on one of six dimensions)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return None
    z = (k1 / n1 - k2 / n2) / math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    return math.erfc(abs(z) / math.sqrt(2.0))


def _window(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in _WINDOW_FIELDS}


def _score_change(now: dict[str, Any], base: dict[str, Any]) -> tuple[float | None, float | None]:
    if now["score_mean"] is None or base["score_mean"] is None:
        return None, None
    delta = now["score_mean"] - base["score_mean"]
    p = welch_p_value(now["score_mean"], now["score_stddev"] or 0.0, now["scored"],
                      base["score_mean"], base["score_stddev"] or 0.0, base["scored"])
    return delta, p


def _failure_change(now: dict[str, Any], base: dict[str, Any]) -> tuple[float | None, float | None]:
    if now["failure_rate"] is None or base["failure_rate"] is None:
        return None, None
    delta = now["failure_rate"] - base["failure_rate"]
    return delta, two_proportion_p_value(now["failures"], now["evaluations"], base["failures"], base["evaluations"])


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input's order.

    Rejecting every test whose q-value is below ``alpha`` keeps the expected share of false alarms
    among the alarms at ``alpha``, however many series are tested at once."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # from the largest p-value down, keeping the minimum so far
        i = order[rank - 1]
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = running
    return adjusted


def compare_windows(current: Iterable[dict[str, Any]], baseline: Iterable[dict[str, Any]],
                    group_by: Sequence[str], settings: DriftSettings) -> list[dict[str, Any]]:
    """One drift row per series of ``current`` (quality rows), matched to ``baseline`` by series key.

    Every test of the answer is one family: with ``correction: benjamini_hochberg`` the decisions use
    the q-values across all of them, so asking about 500 series does not bring 5 false alarms."""
    keys = (*group_by, *QUALITY_SERIES)
    before = {tuple(row.get(k) for k in keys): row for row in baseline}
    out: list[dict[str, Any]] = []
    for row in current:
        if row.get("dimension") == ERROR_DIMENSION:
            continue
        key = tuple(row.get(k) for k in keys)
        now, base_row = _window(row), before.get(key)
        result: dict[str, Any] = {**dict(zip(keys, key)), "current": now,
                                  "baseline": _window(base_row) if base_row is not None else None,
                                  "score_delta": None, "score_p_value": None, "score_q_value": None,
                                  "failure_rate_delta": None, "failure_rate_p_value": None,
                                  "failure_rate_q_value": None, "drifted": [], "direction": None,
                                  "status": "stable"}
        if base_row is None:
            result["status"] = "no_baseline"
        elif min(now["evaluations"], base_row["evaluations"]) < settings.min_n:
            result["status"] = "too_few"
        else:
            base = result["baseline"]
            result["score_delta"], result["score_p_value"] = _score_change(now, base)
            result["failure_rate_delta"], result["failure_rate_p_value"] = _failure_change(now, base)
        out.append(result)
    _adjust(out, settings)
    for result in out:
        if result["status"] in ("no_baseline", "too_few"):
            continue
        worse: list[bool] = []
        if _moved(result["score_delta"], result["score_q_value"], score_threshold(result.get("evaluator"), settings),
                  settings.alpha):
            result["drifted"].append("score")
            worse.append(result["score_delta"] < 0)
        if _moved(result["failure_rate_delta"], result["failure_rate_q_value"], settings.min_failure_rate_delta,
                  settings.alpha):
            result["drifted"].append("failure_rate")
            worse.append(result["failure_rate_delta"] > 0)
        result["status"] = "drifted" if worse else "stable"
        if worse:
            result["direction"] = "worse" if all(worse) else "better" if not any(worse) else "mixed"
    return out


_TESTS = ("score", "failure_rate")


def _adjust(rows: list[dict[str, Any]], settings: DriftSettings) -> None:
    """Fill each test's q-value: its p-value adjusted over the family, or the p-value itself."""
    slots = [(row, test) for row in rows for test in _TESTS if row[f"{test}_p_value"] is not None]
    p_values = [row[f"{test}_p_value"] for row, test in slots]
    adjusted = benjamini_hochberg(p_values) if settings.correction == "benjamini_hochberg" else p_values
    for (row, test), q in zip(slots, adjusted):
        row[f"{test}_q_value"] = q


JUDGE_SCALE = 4.0
"""The width of a judge score's scale (1-5), in which ``min_score_delta`` is given; checks and
reference metrics score 0-1, a scale a quarter as wide."""


def score_threshold(evaluator: str | None, settings: DriftSettings) -> float:
    """``min_score_delta`` on this evaluator's scale: the judge's as given, a 0-1 score's the same
    share of its scale (0.25 judge points is 0.0625 of token F1). One absolute threshold called a
    token F1 falling from 0.80 to 0.60 stable."""
    return settings.min_score_delta if evaluator == JUDGE_EVALUATOR else settings.min_score_delta / JUDGE_SCALE


def _moved(delta: float | None, q_value: float | None, min_delta: float, alpha: float) -> bool:
    return delta is not None and q_value is not None and q_value < alpha and abs(delta) >= min_delta
