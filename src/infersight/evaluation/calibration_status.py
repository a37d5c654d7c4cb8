"""What the query API says about calibration: stored reports, summed up, and each version's standing.

``infersight eval calibrate`` stores one report per (evaluator version, golden file) under
``<storage.path>/calibration/`` (``calibration.write_report``). The API reads them here:
``GET /api/v1/calibrations`` lists them (without the per-item id lists, which can run to thousands),
and ``GET /api/v1/quality`` marks each judge series ``calibrated``: true when every golden set
the version was measured on passed its gate, false when one failed, null when it never was. A
judge's scores are only worth what its agreement with people is; this puts the two side by side.

Reports are re-read at most every ``CACHE_S`` seconds, not on every request.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

from infersight.evaluation.calibration import load_calibrations

CACHE_S = 5.0
_SUMMARY_FIELDS = ("evaluator_version", "golden", "golden_sha256", "dataset", "mode", "created_at", "n_items",
                   "n_scored", "missing_scores", "unmatched_scores", "judge_errors", "judge_tokens", "judge_cost")
_DIMENSION_FIELDS = ("kind", "n", "spearman", "kendall", "kappa", "kappa_ci", "bias", "accuracy", "f1")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A report as the API lists it: its figures and gate, not the ids of missing or unmatched items.
    Values JSON cannot carry (integers past 64 bits, in a hand-edited file) become null."""
    out = {k: report.get(k) for k in _SUMMARY_FIELDS}
    dims = report.get("dimensions")
    out["dimensions"] = {name: {k: stats.get(k) for k in _DIMENSION_FIELDS if k in stats}
                         for name, stats in (dims.items() if isinstance(dims, dict) else ()) if isinstance(stats, dict)}
    gate = report.get("gate")
    out["gate"] = gate if isinstance(gate, dict) else None
    return _json_safe(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 64) else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value if isinstance(value, str) else str(value)


def standing(reports: list[dict[str, Any]]) -> dict[str, bool]:
    """Per evaluator version: True when every stored report of it passed its gate (one per golden file)."""
    out: dict[str, bool] = {}
    for report in reports:
        version = str(report.get("evaluator_version"))
        gate = report.get("gate")
        passed = isinstance(gate, dict) and gate.get("passed") is True
        out[version] = out.get(version, True) and passed
    return out


class CalibrationIndex:
    """The stored reports of one storage path, cached for ``CACHE_S`` seconds; thread-safe."""

    def __init__(self, storage_path: str | os.PathLike[str], cache_s: float = CACHE_S) -> None:
        self.storage_path = storage_path
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._reports: list[dict[str, Any]] = []

    def reports(self) -> list[dict[str, Any]]:
        """Every report, newest first."""
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.cache_s:
                self._reports = load_calibrations(self.storage_path)
                self._read_at = now
            return self._reports

    def summaries(self, evaluator_version: str | None = None) -> list[dict[str, Any]]:
        return [summary(r) for r in self.reports()
                if evaluator_version is None or r.get("evaluator_version") == evaluator_version]

    def standing(self) -> dict[str, bool]:
        return standing(self.reports())
