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


def test_a_lower_sampling_rate_alone_is_not_drift(duck: DuckDBStore, tmp_path: Path) -> None:
    """Errors, guardrail hits and low-confidence answers are always sampled, the rest at the rate, so
    the pooled mix moves with the rate: the breaker lowering random sampling under lag (5% -> 0.5%)
    read as the model getting worse (mean 3.8 -> 2.8). Drift compares only the rows sampled whatever
    their outcome (``representative``); /quality still counts every row."""
    import random

    rng = random.Random(7)

    def judged(n: int, start: datetime, representative: bool) -> list[dict[str, Any]]:
        made = rows([rng.choice((3, 4, 5)) if representative else rng.choice((1, 2)) for _ in range(n)], start)
        return [{**r, "representative": representative} for r in made]

    # the same traffic both times: the rate-sampled ones score 3-5, the always-sampled failures 1-2;
    # the rate went down 10x, so the failures' share of what was judged went up
    duck.write_rows("eval_results", [*judged(400, BASE_START, True), *judged(60, BASE_START, False),
                                     *judged(40, CUR_START, True), *judged(60, CUR_START, False)])
    [row] = drift(duck, api_settings(tmp_path, min_n=20), DAY)["data"]
    assert row["current"]["evaluations"] == 40 and row["baseline"]["evaluations"] == 400
    assert row["status"] == "stable", row
    settings = api_settings(tmp_path)
    api = QueryApi(duck, TenantDirectory(settings), settings.telemetry.diagnosis, settings.evaluation.drift,
                   calibrations=CalibrationIndex(settings.storage.path))
    app = IngestApp(CollectorRegistry(), api, lambda: {"status": "ok"}, TenantDirectory(settings))
    with ThreadedServer(app) as server:
        quality = httpx.get(f"{server.base_url}/api/v1/quality", params=DAY, headers=ADMIN, timeout=30).json()
    assert [r["evaluations"] for r in quality["data"]] == [100]  # every judged row of the window
