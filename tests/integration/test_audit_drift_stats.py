"""Audit of ``GET /api/v1/quality/drift``: the statistics against SciPy and the edge cases a platform
team meets, on eval_results written to a real DuckDB store (and ClickHouse through its HTTP
interface), asked through the query API over real HTTP on 127.0.0.1. (Checked and held up: the
p-values and q-values against SciPy, windows, versions, tenants, ClickHouse parity.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from infersight.api.app import QueryApi
from infersight.config import Settings, settings_from_dict
from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.gateway.tenancy import TenantDirectory
from infersight.ingest.worker import IngestApp
from infersight.serving import ThreadedServer
from infersight.store.base import Store
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}
_seq = iter(range(1, 1 << 40))


def rows(scores: Any, start: datetime, *, tenant: str = "acme", model: str = "sim-large",
         evaluator: str = "llm_judge", version: str = "v1", dimension: str = "factual_fidelity",
         labels: Any = None, step: timedelta = timedelta(minutes=1)) -> list[dict[str, Any]]:
    out = []
    for i, s in enumerate(scores):
        n = next(_seq)
        out.append({"trace_id": f"{n:032x}", "span_id": f"{n:016x}", "tenant_id": tenant, "model_id": model,
                    "use_case": "chat", "evaluator": evaluator, "evaluator_version": version,
                    "dimension": dimension, "score": None if s is None else float(s),
                    "label": None if labels is None else labels[i],
                    "evaluated_at": start + i * step, "request_started_at": start + i * step})
    return out


def api_settings(tmp_path: Path, **drift: Any) -> Settings:
    return settings_from_dict(config_dict(tmp_path / "data", evaluation={"drift": drift} if drift else {}))


def drift(store: Store, settings: Settings, params: dict[str, str], headers: dict[str, str] = ADMIN,
          status: int = 200) -> dict[str, Any]:
    api = QueryApi(store, TenantDirectory(settings), settings.telemetry.diagnosis, settings.evaluation.drift,
                   calibrations=CalibrationIndex(settings.storage.path))
    app = IngestApp(CollectorRegistry(), api, lambda: {"status": "ok"}, TenantDirectory(settings))
    with ThreadedServer(app) as server:
        resp = httpx.get(f"{server.base_url}/api/v1/quality/drift", params=params, headers=headers, timeout=30)
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.fixture
def duck(tmp_path: Path) -> Iterator[DuckDBStore]:
    store = DuckDBStore(str(tmp_path / "drift.duckdb"))
    store.migrate()
    try:
        yield store
    finally:
        store.close()


DAY = {"window": "1d", "until": NOW.isoformat()}
BASE_START = NOW - timedelta(days=6)
CUR_START = NOW - timedelta(hours=20)


def test_identical_constant_windows_are_no_change(duck: DuckDBStore, tmp_path: Path) -> None:
    """docs/evaluation.md "Drift"; drift.welch_p_value: "both windows constant: equal means are no
    change". Eight (or eighty) requests answered alike against the same reference have one token F1
    and one ROUGE-L each, in both windows. DuckDB's grouped avg() of 50 x 0.7 and of 33 x 0.7 differ
    in the last bit (0.6999999999999998 vs 0.6999999999999996) while stddev_samp is exactly 0, so the
    exact ``mean1 == mean2`` test calls the identical windows a certain change: p = 0, q = 0. With
    ``min_score_delta: 0`` (allowed: pure significance) the series is reported ``drifted``."""
    data = []
    for dimension, value in (("rouge_l", 0.7), ("token_f1", 0.1), ("semantic", 0.3)):
        data += rows([value] * 50, BASE_START, evaluator="reference", dimension=dimension)
        data += rows([value] * 33, CUR_START, evaluator="reference", dimension=dimension)
    duck.write_rows("eval_results", data)
    default = {r["dimension"]: r for r in drift(duck, api_settings(tmp_path), DAY)["data"]}
    strict = {r["dimension"]: r for r in drift(duck, api_settings(tmp_path, min_score_delta=0.0), DAY)["data"]}
    assert set(default) == set(strict) == {"rouge_l", "token_f1", "semantic"}
    for dimension in default:
        assert default[dimension]["current"]["score_stddev"] == 0.0 == default[dimension]["baseline"]["score_stddev"]
        assert default[dimension]["score_p_value"] == 1.0, (
            f"{dimension}: identical constant windows got p = {default[dimension]['score_p_value']!r}, "
            f"q = {default[dimension]['score_q_value']!r}")
        assert strict[dimension]["status"] == "stable", (
            f"{dimension}: identical windows reported {strict[dimension]['status']} "
            f"({strict[dimension]['direction']}), delta {strict[dimension]['score_delta']!r}")
