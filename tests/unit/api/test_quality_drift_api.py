"""GET /api/v1/quality/drift over a real DuckDB store: windows, tenant scope, parameters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import stats

from infersight.api.app import QueryApi
from infersight.evaluation.settings import DriftSettings
from infersight.gateway.tenancy import TenantDirectory
from infersight.store.duckdb_store import DuckDBStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ACME = {"authorization": "Bearer sk-acme-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}


def judged(tenant: str, version: str, scores: np.ndarray, start: datetime, tag: str) -> list[dict[str, Any]]:
    """One factual_fidelity row per score, an hour apart from ``start`` onwards."""
    return [{"trace_id": f"{tag}{i:031x}", "span_id": f"{i:016x}", "tenant_id": tenant, "model_id": "sim-large",
             "evaluator": "llm_judge", "evaluator_version": version, "dimension": "factual_fidelity",
             "score": float(s), "evaluated_at": start + timedelta(minutes=i),
             "request_started_at": start + timedelta(minutes=i)} for i, s in enumerate(scores)]


RNG = np.random.default_rng(7)
ACME_BEFORE = np.clip(np.round(RNG.normal(4.2, 0.7, 300)), 1, 5)
ACME_NOW = np.clip(np.round(RNG.normal(3.4, 0.9, 120)), 1, 5)
GLOBEX = np.clip(np.round(RNG.normal(4.0, 0.7, 200)), 1, 5)


@pytest.fixture
def client(settings: Any, tmp_path: Any) -> Iterator[httpx.AsyncClient]:
    store = DuckDBStore(str(tmp_path / "drift.duckdb"))
    store.migrate()
    rows = [*judged("acme", "v1", ACME_BEFORE, NOW - timedelta(days=6), "a"),
            *judged("acme", "v1", ACME_NOW, NOW - timedelta(hours=20), "b"),
            *judged("acme", "v2", ACME_NOW, NOW - timedelta(hours=20), "c"),  # a new judge: no baseline
            *judged("acme", "v1", ACME_BEFORE, NOW - timedelta(days=30), "d"),  # before the baseline
            *judged("globex", "v1", GLOBEX, NOW - timedelta(days=5), "e"),
            *judged("globex", "v1", GLOBEX[:100], NOW - timedelta(hours=10), "f")]
    store.write_rows("eval_results", rows)
    api = QueryApi(store, TenantDirectory(settings), drift=DriftSettings(min_n=30))
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
    store.close()


async def test_drift_per_tenant_against_the_week_before(client: httpx.AsyncClient) -> None:
    params = {"window": "1d", "until": NOW.isoformat(), "group_by": "tenant"}
    async with client:
        resp = await client.get("/api/v1/quality/drift", params=params, headers=ADMIN)
        mine = await client.get("/api/v1/quality/drift", params=params, headers=ACME)
        short = await client.get("/api/v1/quality/drift", params={**params, "baseline": "1h"}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["baseline_until"] == body["since"] and body["baseline_since"].startswith("2026-11-12T12:00")
    series = {(r["tenant_id"], r["evaluator_version"]): r for r in body["data"]}
    assert set(series) == {("acme", "v1"), ("acme", "v2"), ("globex", "v1")}
    acme = series[("acme", "v1")]
    assert acme["status"] == "drifted" and acme["direction"] == "worse" and acme["drifted"] == ["score"]
    assert acme["baseline"]["evaluations"] == 300  # the rows of 30 days ago are outside the baseline
    expected = stats.ttest_ind(ACME_NOW, ACME_BEFORE, equal_var=False).pvalue
    assert acme["score_p_value"] == pytest.approx(expected, rel=1e-6)
    assert acme["score_delta"] == pytest.approx(ACME_NOW.mean() - ACME_BEFORE.mean())
    assert series[("acme", "v2")]["status"] == "no_baseline"
    assert series[("globex", "v1")]["status"] == "stable"
    assert body["settings"]["min_n"] == 30
    assert {r["tenant_id"] for r in mine.json()["data"]} == {"acme"}  # a tenant key sees its own series
    assert {r["status"] for r in short.json()["data"]} == {"no_baseline"}  # nothing in the hour before


async def test_drift_parameters_are_checked(client: httpx.AsyncClient) -> None:
    async with client:
        bad = await client.get("/api/v1/quality/drift", params={"baseline": "a week"}, headers=ADMIN)
        unknown = await client.get("/api/v1/quality/drift", params={"limit": "3"}, headers=ADMIN)
        other = await client.get("/api/v1/quality/drift", params={"tenant": "globex"}, headers=ACME)
        anonymous = await client.get("/api/v1/quality/drift")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "baseline"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "limit"
    assert other.status_code == 403 and anonymous.status_code == 401
