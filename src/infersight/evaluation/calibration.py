"""Judge-vs-human agreement statistics, the calibration report, the promotion gate and its storage.

The statistics are written here in numpy (scipy and scikit-learn are test-only dependencies that
verify them). Every statistic returns ``None`` where it is undefined (too few items, a constant
input, an empty category table), so reports are NaN-free JSON. Choices (docs/calibration.md):

- Spearman and Kendall tau-b use the raw values (SummEval averages like 4.33; the judge's 1-5), with
  ties handled by average ranks and tau-b's tie correction.
- Kappa is Cohen's kappa with *quadratic* weights on fixed categories (1..5 for Likert, 0/1 for binary):
  judge and human are ordinal, and being off by one should cost less than being off by four. Raw
  values are rounded half up to the nearest category and clipped to 1..5. With two categories the
  quadratic weighting equals plain Cohen's kappa.
- The kappa CI is a seeded 95% percentile bootstrap over items. Resampling n items with replacement
  is the same as drawing the k x k agreement table from Multinomial(n, observed cell shares), which
  is how it is drawn here: 1000 resamples cost O(1000 k^2), not O(1000 n).
- Bias is mean(judge - human) on the human scale (binary: on the binarised judge), so +0.5 means the
  judge rates half a point more generously than people do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from infersight.evaluation.golden import JUDGE_MAX, JUDGE_MIN, GoldenItem, GoldenSet, LabelMapping
from infersight.evaluation.settings import CalibrationGate

log = logging.getLogger(__name__)

LIKERT_CATEGORIES: tuple[int, ...] = (1, 2, 3, 4, 5)
DEFAULT_RESAMPLES = 1000
EXAMPLE_IDS = 20  # how many missing or unmatched ids a report lists by name


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired inputs differ in length: {a.size} and {b.size}")
    return a, b


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def rankdata(a: ArrayLike) -> NDArray[np.float64]:
    """Average ranks (1-based); tied values share the mean of their positions."""
    arr = np.asarray(a, dtype=np.float64).ravel()
    sorter = np.argsort(arr, kind="mergesort")
    inverse = np.empty(arr.size, dtype=np.intp)
    inverse[sorter] = np.arange(arr.size)
    ordered = arr[sorter]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = np.cumsum(starts)[inverse]
    bounds = np.r_[np.nonzero(starts)[0], arr.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def pearson(x: ArrayLike, y: ArrayLike) -> float | None:
    a, b = _pair(x, y)
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da @ da) * (db @ db))
    if denom == 0:
        return None
    return float(np.clip((da @ db) / denom, -1.0, 1.0))


def spearman(x: ArrayLike, y: ArrayLike) -> float | None:
    """Spearman's rho: Pearson's r of average ranks."""
    a, b = _pair(x, y)
    return pearson(rankdata(a), rankdata(b))


def _dense(a: NDArray[np.float64]) -> NDArray[np.int64]:
    return np.unique(a, return_inverse=True)[1].astype(np.int64).ravel()


def _tied_pairs(runs: NDArray[np.bool_]) -> int:
    """Pairs within runs of equal values in a sorted sequence; ``runs`` marks where each run starts."""
    counts = np.diff(np.nonzero(np.r_[runs, True])[0]).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def count_inversions(y: ArrayLike) -> int:
    """Pairs i < j with y[i] > y[j] (strict), by bottom-up merge levels: O(n log^2 n), vectorised."""
    s = _dense(np.asarray(y, dtype=np.float64).ravel())
    n = s.size
    if n < 2:
        return 0
    m = int(s.max()) + 1
    idx = np.arange(n, dtype=np.int64)
    total, width = 0, 1
    while width < n:
        block = idx // (2 * width)
        left = (idx % (2 * width)) < width
        keys = block * m + s  # s is sorted within runs of `width`, so left keys are globally sorted
        lk, rk, rb = keys[left], keys[~left], block[~left]
        start = np.searchsorted(lk, rb * m, side="left")
        end = np.searchsorted(lk, (rb + 1) * m, side="left")
        not_greater = np.searchsorted(lk, rk, side="right") - start
        total += int((end - start - not_greater).sum())
        s = np.sort(keys) - block * m  # each block keeps its positions, now sorted within 2*width
        width *= 2
    return total


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> float | None:
    """Kendall's tau-b: (concordant - discordant) / sqrt((pairs - x ties)(pairs - y ties))."""
    a, b = _pair(x, y)
    n = a.size
    if n < 2:
        return None
    xr, yr = _dense(a), _dense(b)
    order = np.lexsort((yr, xr))
    xs, ys = xr[order], yr[order]
    discordant = count_inversions(ys)  # x ascending, ties by y: an inversion is x< and y>
    pairs = n * (n - 1) // 2
    x_new, y_sorted = np.r_[True, xs[1:] != xs[:-1]], np.sort(yr)
    x_ties = _tied_pairs(x_new)
    y_ties = _tied_pairs(np.r_[True, y_sorted[1:] != y_sorted[:-1]])
    both_ties = _tied_pairs(x_new | np.r_[True, ys[1:] != ys[:-1]])
    denom = float(pairs - x_ties) * float(pairs - y_ties)
    if denom <= 0:
        return None
    diff = pairs - x_ties - y_ties + both_ties - 2 * discordant
    return float(np.clip(diff / np.sqrt(denom), -1.0, 1.0))


def to_categories(values: ArrayLike, categories: Sequence[int] = LIKERT_CATEGORIES) -> NDArray[np.int64]:
    """Round half up (4.5 -> 5, 4.33 -> 4) and clip into ``categories`` (consecutive integers)."""
    lo, hi = categories[0], categories[-1]
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) + 0.5), lo, hi).astype(np.int64)


def agreement_table(a: ArrayLike, b: ArrayLike, categories: Sequence[int]) -> NDArray[np.int64]:
    """k x k counts: rows are ``a``'s category, columns ``b``'s."""
    lo, k = categories[0], len(categories)
    ia = np.asarray(a, dtype=np.int64).ravel() - lo
    ib = np.asarray(b, dtype=np.int64).ravel() - lo
    if ia.shape != ib.shape:
        raise ValueError("paired inputs differ in length")
    if ia.size and (ia.min() < 0 or ib.min() < 0 or ia.max() >= k or ib.max() >= k):
        raise ValueError(f"values outside categories {list(categories)}")
    return np.bincount(ia * k + ib, minlength=k * k).reshape(k, k)


def _kappa_from_tables(tables: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Quadratic-weighted kappa of each (..., k, k) table; NaN where undefined."""
    k = tables.shape[-1]
    i = np.arange(k)
    weights = (i[:, None] - i[None, :]) ** 2 / float(max(k - 1, 1) ** 2)
    t = tables.astype(np.float64)
    n = t.sum(axis=(-2, -1))
    expected = t.sum(axis=-1)[..., :, None] * t.sum(axis=-2)[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = expected / n[..., None, None]
        observed_w = (weights * t).sum(axis=(-2, -1))
        expected_w = (weights * expected).sum(axis=(-2, -1))
        kappa = 1.0 - observed_w / expected_w
    return np.where(expected_w > 0, kappa, np.nan)


def weighted_kappa(a: ArrayLike, b: ArrayLike, categories: Sequence[int] = LIKERT_CATEGORIES) -> float | None:
    """Cohen's kappa with quadratic weights over fixed consecutive integer ``categories``."""
    table = agreement_table(a, b, categories)
    return _finite(float(_kappa_from_tables(table)))


def kappa_bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    categories: Sequence[int] = LIKERT_CATEGORIES,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap CI of the weighted kappa, resampling items (as a multinomial table)."""
    table = agreement_table(a, b, categories)
    n = int(table.sum())
    if n < 2 or n_resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, table.ravel() / n, size=n_resamples).reshape(n_resamples, *table.shape)
    kappas = _kappa_from_tables(draws)
    kappas = kappas[np.isfinite(kappas)]
    if kappas.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(kappas, [tail, 100.0 - tail])
    return [float(low), float(high)]


def accuracy(truth: ArrayLike, predicted: ArrayLike) -> float | None:
    t, p = _pair(truth, predicted)
    return float((t == p).mean()) if t.size else None


def f1(truth: ArrayLike, predicted: ArrayLike, positive: int = 1) -> float | None:
    """F1 of the positive class; None when there are neither positives nor positive predictions."""
    t, p = _pair(truth, predicted)
    tp = float(np.sum((t == positive) & (p == positive)))
    wrong = float(np.sum(t != p))
    denom = 2 * tp + wrong
    return 2 * tp / denom if denom else None


def dimension_stats(
    human: ArrayLike,
    judge: ArrayLike,
    mapping: LabelMapping,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """All agreement statistics for one dimension from paired raw human and judge values."""
    h, j = _pair(human, judge)
    out: dict[str, Any] = {"kind": mapping.kind, "label": mapping.label, "n": int(h.size)}
    out["spearman"] = spearman(j, h)
    out["kendall"] = kendall_tau_b(j, h)
    if mapping.kind == "binary":
        categories: Sequence[int] = (0, 1)
        threshold = mapping.threshold if mapping.threshold is not None else (JUDGE_MIN + JUDGE_MAX) / 2
        hc, jc = h.astype(np.int64), (j >= threshold).astype(np.int64)
        out["threshold"] = threshold
    else:
        categories = LIKERT_CATEGORIES
        hc, jc = to_categories(h), to_categories(j)
    out["kappa"] = weighted_kappa(jc, hc, categories) if h.size else None
    out["kappa_ci"] = kappa_bootstrap_ci(jc, hc, categories, n_resamples=n_resamples, seed=seed) if h.size else None
    judged = jc if mapping.kind == "binary" else j
    out["bias"] = float(np.mean(judged - h)) if h.size else None
    out["human_mean"] = float(h.mean()) if h.size else None
    out["judge_mean"] = float(j.mean()) if h.size else None
    if mapping.kind == "binary":
        out["accuracy"] = accuracy(hc, jc)
        out["f1"] = f1(hc, jc)
        out["confusion"] = {
            "tp": int(np.sum((hc == 1) & (jc == 1))), "fp": int(np.sum((hc == 0) & (jc == 1))),
            "fn": int(np.sum((hc == 1) & (jc == 0))), "tn": int(np.sum((hc == 0) & (jc == 0))),
        }
    out["undefined"] = _why_undefined(out, h, j, hc)
    return out


def _why_undefined(stats: Mapping[str, Any], human: NDArray[np.float64], judge: NDArray[np.float64],
                   human_categories: NDArray[np.int64]) -> dict[str, str]:
    """Why each undefined statistic is undefined, so a failed gate says what to fix: the golden
    sample (labels all alike), the judge (one score for everything) or the amount of data."""
    if human.size < 2:
        few = f"{human.size} scored item{'' if human.size == 1 else 's'}; at least 2 are needed"
        ranks = kappa = few
    else:
        same_human, same_judge = bool(np.all(human == human[0])), bool(np.all(judge == judge[0]))
        if same_human and same_judge:
            ranks = f"every human label is {human[0]:g} and every judge score {judge[0]:g}"
        elif same_human:
            ranks = f"every human label is {human[0]:g}; use golden items whose labels differ"
        else:
            ranks = f"the judge gave every item {judge[0]:g}"
        kappa = f"judge and human put every item in category {human_categories[0]}"
    reasons = {"spearman": ranks, "kendall": ranks, "kappa": kappa}
    return {stat: why for stat, why in reasons.items() if stats.get(stat) is None}


def _apart(value: float, limit: float) -> tuple[str, str]:
    """Both numbers to 3 decimals, or to as many more as it takes to tell them apart: a value just
    short of its limit was printed as ``0.300 < min_spearman 0.300``."""
    for digits in range(3, 16):
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if a != b:
            return a, b
    return repr(value), repr(limit)


def check_gate(dimensions: Mapping[str, Mapping[str, Any]], gate: CalibrationGate) -> dict[str, Any]:
    """Compare each dimension with the promotion minimums; an undefined statistic fails, and so does
    one measured on fewer than ``min_n`` items (3 lucky items give a Spearman of 1.0)."""
    failures: list[str] = []
    if not dimensions:  # nothing measured vouches for nothing
        failures.append("no dimension was calibrated (the judge scores none of the golden file's labels)")
    for dim, stats in dimensions.items():
        n = int(stats.get("n", 0))
        if n < gate.min_n:
            failures.append(f"{dim}: n {n} < min_n {gate.min_n} (too few scored golden items to vouch for the judge)")
        checks: list[tuple[str, float | None, str, float | None]] = [
            ("spearman", stats.get("spearman"), "min_spearman", gate.min_spearman),
            ("kappa", stats.get("kappa"), "min_kappa", gate.min_kappa),
        ]
        for stat, value, knob, limit in checks:
            if value is None:
                why = stats.get("undefined", {}).get(stat, "too few or constant scores")
                failures.append(f"{dim}: {stat} is undefined (n={stats.get('n', 0)}: {why}), {knob} is {limit:.3f}")
            elif limit is not None and value < limit:
                shown, threshold = _apart(value, limit)
                failures.append(f"{dim}: {stat} {shown} < {knob} {threshold}")
        bias = stats.get("bias")
        if gate.max_abs_bias is not None:
            if bias is None:
                failures.append(f"{dim}: bias is undefined (n=0), max_abs_bias is {gate.max_abs_bias:.3f}")
            elif abs(bias) > gate.max_abs_bias:
                shown, threshold = _apart(abs(bias), gate.max_abs_bias)
                failures.append(f"{dim}: |bias| {shown} > max_abs_bias {threshold}")
    return {
        "min_n": gate.min_n, "min_spearman": gate.min_spearman, "min_kappa": gate.min_kappa,
        "max_abs_bias": gate.max_abs_bias, "passed": not failures, "failures": failures,
    }


def build_report(
    golden: GoldenSet,
    items: Sequence[GoldenItem],
    scores: Mapping[str, Mapping[str, float | None]],
    *,
    evaluator_version: str,
    gate: CalibrationGate,
    mode: str,
    unmatched_ids: Iterable[str] = (),
    duplicate_score_ids: Iterable[str] = (),
    judge_errors: int = 0,
    judge_spend: tuple[int, float] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    scores_path: str | None = None,
    judged_dimensions: Collection[str] | None = None,
) -> dict[str, Any]:
    """The calibration report of ``items`` (golden items in scope) against judge ``scores`` by id.

    Nothing is dropped silently: golden items without a score (``missing_scores``), scores whose id
    is not in the golden file (``unmatched_scores``) and ambiguous ids are all counted and listed.
    ``judged_dimensions``: the ones the judge's rubric asks for (live mode); the golden file's other
    labels are listed in ``skipped_dimensions`` and left out of the statistics and the gate, so a
    rubric that scores a subset is not failed for dimensions it is never asked.
    """
    missing = [item.id for item in items if item.id not in scores]
    unmatched = sorted(unmatched_ids)
    dimensions: dict[str, dict[str, Any]] = {}
    skipped = [m.dimension for m in golden.mappings
               if judged_dimensions is not None and m.dimension not in judged_dimensions]
    for mapping in golden.mappings:
        dim = mapping.dimension
        if dim in skipped:
            continue
        pairs = [(item.human[dim], scores[item.id].get(dim)) for item in items if item.id in scores]
        kept = [(h, j) for h, j in pairs if j is not None]
        human = np.array([h for h, _ in kept], dtype=np.float64)
        judge = np.array([j for _, j in kept], dtype=np.float64)
        stats = dimension_stats(human, judge, mapping, n_resamples=n_resamples, seed=seed)
        stats["missing"] = len(items) - len(kept)
        dimensions[dim] = stats
    return {
        "evaluator_version": evaluator_version,
        "golden": os.path.abspath(golden.path),
        "golden_sha256": golden.sha256,
        "dataset": golden.dataset,
        "mode": mode,
        "scores": scores_path,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_items": len(items),
        "n_scored": len(items) - len(missing),
        "missing_scores": len(missing),
        "missing_ids": missing[:EXAMPLE_IDS],
        "unmatched_scores": len(unmatched),
        "unmatched_ids": unmatched[:EXAMPLE_IDS],
        "duplicate_ids": sorted(golden.duplicates),
        "duplicate_score_ids": sorted(duplicate_score_ids),
        "judge_errors": judge_errors,
        "judge_tokens": judge_spend[0] if judge_spend is not None else None,  # live mode: what it cost
        "judge_cost": judge_spend[1] if judge_spend is not None else None,
        "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95},
        "dimensions": dimensions,
        "skipped_dimensions": skipped,
        "gate": check_gate(dimensions, gate),
    }


def report_json(report: Mapping[str, Any]) -> str:
    """Strict JSON (NaN or infinity would raise: every undefined statistic must already be null)."""
    return json.dumps(report, indent=2, allow_nan=False)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _segment(name: str) -> str:
    """A path-safe folder name from an evaluator version (no separators, never '.' or '..')."""
    safe = _UNSAFE.sub("_", name)
    return safe if safe.strip(".") else "_"


def golden_key(golden_path: str | Path) -> str:
    """``<stem>-<8 hex>`` of a golden file: the hex digits hash its absolute path, so two golden files
    of the same name in different folders (``finance/golden.jsonl``, ``support/golden.jsonl``) keep
    reports of their own, while a new run on the same file replaces its report."""
    absolute = os.path.abspath(os.fspath(golden_path))
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{_segment(Path(absolute).stem)}-{digest}"


def version_folder(evaluator_version: str) -> str:
    """The version's folder name: the version itself when it is path-safe, else its safe spelling
    and 8 hex digits of its SHA-256, so ``judge/1`` and ``judge:1`` never share (and overwrite) one."""
    safe = _segment(evaluator_version)
    if safe == evaluator_version:
        return safe
    return f"{safe}-{hashlib.sha256(evaluator_version.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def report_path(storage_path: str | os.PathLike[str], evaluator_version: str, golden_path: str | Path) -> Path:
    """``<storage>/calibration/<version folder>/<golden stem>-<path hash>.json``."""
    return Path(storage_path) / "calibration" / version_folder(evaluator_version) / f"{golden_key(golden_path)}.json"


def write_report(report: Mapping[str, Any], storage_path: str | os.PathLike[str]) -> Path:
    """Store a report under its evaluator version, atomically (a reader never sees half a file)."""
    target = report_path(storage_path, str(report["evaluator_version"]), str(report["golden"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(report_json(report) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    _drop_older_names(target, str(report["golden"]))
    return target


def _drop_older_names(target: Path, golden: str) -> None:
    """Other reports of this version on the same golden file (stored under another name, as
    ``<stem>.json`` before the path hash): a new run replaces them, or a stale failed one would keep
    the version uncalibrated."""
    absolute = os.path.abspath(golden)
    for other in target.parent.glob("*.json"):
        if other == target:
            continue
        try:
            data = json.loads(other.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and isinstance(data.get("golden"), str) and os.path.abspath(data["golden"]) == absolute:
            other.unlink(missing_ok=True)


def load_calibrations(storage_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every stored calibration report, newest first; unreadable files are logged and skipped."""
    root = Path(storage_path) / "calibration"
    reports: list[dict[str, Any]] = []
    for file in sorted(root.glob("*/*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to parse
            log.warning("skipping unreadable calibration report %s: %s", file, exc)
            continue
        if isinstance(data, dict) and "evaluator_version" in data and "dimensions" in data:
            reports.append(data)
        else:
            log.warning("skipping %s: not a calibration report", file)
    reports.sort(key=lambda r: str(r.get("created_at", "")), reverse=True)
    return reports
