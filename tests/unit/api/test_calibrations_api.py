"""Calibration in the query API: GET /api/v1/calibrations and /quality's `calibrated`, over reports
stored by the real `infersight eval calibrate` and scores in a real DuckDB store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.api.app import QueryApi
from infersight.evaluation.calibrate_cli import main as calibrate
from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.gateway.tenancy import TenantDirectory
from infersight.store.duckdb_store import DuckDBStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ACME = {"authorization": "Bearer sk-acme-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}


def calibrated(tmp_path: Path, storage: Path, version: str, golden_name: str, agree: bool) -> int:
    """Store a report for ``version`` on a 6-item golden set; a judge that disagrees fails the gate."""
    folder = tmp_path / golden_name
    folder.mkdir(exist_ok=True)
    golden = folder / "golden.jsonl"
    golden.write_text("".join(json.dumps({
        "id": f"g::{i}", "dataset": golden_name, "task": "qa", "prompt": "q", "response": "a", "reference": None,
        "labels": {"relevance": 1 + i % 5}, "label_scale": "1-5"}) + "\n" for i in range(6)))
    scores = folder / f"scores-{hashlib.sha256(version.encode()).hexdigest()[:8]}.jsonl"  # any version spelling
    scores.write_text("".join(json.dumps({"id": f"g::{i}", "scores": {"relevance": (1 + i % 5) if agree else 5 - i % 5}})
                              + "\n" for i in range(6)))
    config = tmp_path / "judge.yaml"
    config.write_text(f"storage: {{path: '{storage}'}}\nevaluation: {{gate: {{min_n: 5}}}}\n")
    return calibrate(["--golden", str(golden), "--scores", str(scores), "--config", str(config),
                      "--evaluator-version", version, "--bootstrap", "0", "--json"])


def judged(version: str, evaluator: str = "llm_judge", tag: str = "a") -> list[dict[str, Any]]:
    return [{"trace_id": f"{tag}{version[-1]}{i:030x}", "span_id": f"{i:016x}", "tenant_id": "acme",
             "model_id": "sim-large", "evaluator": evaluator, "evaluator_version": version,
             "dimension": "relevance", "score": 4.0, "evaluated_at": NOW - timedelta(minutes=i),
             "request_started_at": NOW - timedelta(minutes=i)} for i in range(3)]


@pytest.fixture
def client(settings: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[httpx.AsyncClient]:
    storage = tmp_path / "data"
    assert calibrated(tmp_path, storage, "judge-1", "finance", agree=True) == 0
    assert calibrated(tmp_path, storage, "judge-1", "support", agree=True) == 0
    assert calibrated(tmp_path, storage, "judge-2", "finance", agree=True) == 0
    assert calibrated(tmp_path, storage, "judge-2", "support", agree=False) == 0  # stored, gate failed
    capsys.readouterr()
    store = DuckDBStore(str(tmp_path / "q.duckdb"))
    store.migrate()
    store.write_rows("eval_results", [*judged("judge-1"), *judged("judge-2"), *judged("judge-3"),
                                      *judged("checks-v1", evaluator="checks", tag="c")])
    api = QueryApi(store, TenantDirectory(settings), calibrations=CalibrationIndex(storage))
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
    store.close()


async def test_quality_says_whether_each_judge_version_passed_its_calibrations(client: httpx.AsyncClient) -> None:
    window = {"since": (NOW - timedelta(hours=1)).isoformat(), "until": (NOW + timedelta(hours=1)).isoformat()}
    async with client:
        rows = (await client.get("/api/v1/quality", params=window, headers=ACME)).json()["data"]
    by_version = {r["evaluator_version"]: r["calibrated"] for r in rows}
    # every golden set passed; one of two failed; never calibrated; checks are not calibrated at all
    assert by_version == {"judge-1": True, "judge-2": False, "judge-3": None, "checks-v1": None}


async def test_reports_are_listed_for_admins_without_the_item_ids(client: httpx.AsyncClient) -> None:
    async with client:
        everything = await client.get("/api/v1/calibrations", headers=ADMIN)
        one = await client.get("/api/v1/calibrations", params={"evaluator_version": "judge-2"}, headers=ADMIN)
        tenant = await client.get("/api/v1/calibrations", headers=ACME)
        unknown = await client.get("/api/v1/calibrations", params={"window": "1h"}, headers=ADMIN)
    assert everything.status_code == 200, everything.text
    reports = everything.json()["data"]
    assert len(reports) == 4 and {r["dataset"] for r in reports} == {"finance", "support"}
    created = [r["created_at"] for r in reports]
    assert created == sorted(created, reverse=True)
    assert all("missing_ids" not in r and "unmatched_ids" not in r for r in reports)
    two = one.json()["data"]
    assert sorted((r["dataset"], r["gate"]["passed"]) for r in two) == [("finance", True), ("support", False)]
    failed = next(r for r in two if not r["gate"]["passed"])
    assert failed["dimensions"]["relevance"]["spearman"] < 0 and failed["dimensions"]["relevance"]["n"] == 6
    assert tenant.status_code == 403 and tenant.json()["error"]["code"] == "forbidden"
    assert unknown.status_code == 400


def test_the_index_rereads_reports_after_its_cache_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "data"
    cached, fresh = CalibrationIndex(storage, cache_s=3600), CalibrationIndex(storage, cache_s=0)
    assert cached.standing() == {} and fresh.standing() == {}
    assert calibrated(tmp_path, storage, "judge-9", "finance", agree=True) == 0
    capsys.readouterr()
    assert fresh.standing() == {"judge-9": True}
    assert cached.standing() == {}  # until its cache time has passed
