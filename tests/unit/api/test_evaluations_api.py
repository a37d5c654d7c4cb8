"""GET /api/v1/evaluations over a real DuckDB store: scope, filters, paging and bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from infersight.api.app import QueryApi
from infersight.gateway.tenancy import TenantDirectory
from infersight.store.duckdb_store import DuckDBStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ACME = {"authorization": "Bearer sk-acme-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}
URL = "/api/v1/evaluations"


def row(i: int, tenant: str, dimension: str, score: float | None, label: str | None = None,
        evaluator: str = "llm_judge") -> dict[str, Any]:
    at = NOW - timedelta(minutes=i)
    return {"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "tenant_id": tenant, "model_id": "sim-large",
            "evaluator": evaluator, "evaluator_version": "v1", "dimension": dimension, "score": score,
            "label": label, "explanation": "short and correct", "evaluated_at": at + timedelta(seconds=30),
            "request_started_at": at, "use_case": "chat"}


ROWS = [
    *(row(i, "acme", "factual_fidelity", float(1 + i % 5)) for i in range(10)),
    *(row(i, "acme", "empty", 0.0 if i % 4 == 0 else 1.0, "fail" if i % 4 == 0 else "pass", "checks")
      for i in range(10, 22)),
    row(22, "acme", "_error", None, "timeout"),
    *(row(i, "globex", "factual_fidelity", 1.0) for i in range(23, 28)),
]


@pytest.fixture
def client(settings: Any, tmp_path: Any) -> Iterator[httpx.AsyncClient]:
    store = DuckDBStore(str(tmp_path / "evals.duckdb"))
    store.migrate()
    store.write_rows("eval_results", ROWS)
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=QueryApi(store, TenantDirectory(settings))),
                            base_url="http://api")
    store.close()


async def _walk(client: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        resp = await client.get(URL, params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        out.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out


async def test_failed_lists_exactly_what_quality_counts_as_failures(client: httpx.AsyncClient) -> None:
    window = {"since": (NOW - timedelta(hours=1)).isoformat(), "until": (NOW + timedelta(hours=1)).isoformat()}
    async with client:
        quality = (await client.get("/api/v1/quality", params=window, headers=ADMIN)).json()["data"]
        failed = await _walk(client, {**window, "failed": "true", "limit": 2}, ADMIN)
        passed = await _walk(client, {**window, "failed": "false", "limit": 7}, ADMIN)
    assert len(failed) == sum(r["failures"] for r in quality) == 4  # 3 failed checks and a judge error
    assert {(r["dimension"], r["label"]) for r in failed} == {("empty", "fail"), ("_error", "timeout")}
    assert len(failed) + len(passed) == len(ROWS)
    starts = [r["request_started_at"] for r in failed]
    assert starts == sorted(starts, reverse=True)  # newest judged request first
    assert failed[0]["explanation"] and failed[0]["evaluated_at"].endswith("Z")


async def test_a_tenant_key_sees_only_its_own_and_filters_combine(client: httpx.AsyncClient) -> None:
    async with client:
        mine = await _walk(client, {"dimension": "factual_fidelity"}, ACME)
        low = (await client.get(URL, params={"max_score": "2", "dimension": "factual_fidelity"}, headers=ACME)).json()
        exact = (await client.get(URL, params={"min_score": "3", "max_score": "3"}, headers=ACME)).json()
        other = await client.get(URL, params={"tenant": "globex"}, headers=ACME)
        admin = await _walk(client, {"tenant": "globex", "evaluator": "llm_judge"}, ADMIN)
        labelled = (await client.get(URL, params={"label": "timeout"}, headers=ADMIN)).json()
    assert {r["tenant_id"] for r in mine} == {"acme"} and len(mine) == 10
    assert sorted(r["score"] for r in low["data"]) == [1.0, 1.0, 2.0, 2.0]
    assert [r["score"] for r in exact["data"]] == [3.0, 3.0]
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert len(admin) == 5 and {r["tenant_id"] for r in admin} == {"globex"}
    assert [r["trace_id"] for r in labelled["data"]] == [f"{22:032x}"]


@pytest.mark.parametrize(("params", "param"), [
    ({"failed": "maybe"}, "failed"),
    ({"min_score": "abc"}, "min_score"),
    ({"max_score": "inf"}, "max_score"),
    ({"min_score": "4", "max_score": "2"}, "min_score"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"limit": "0"}, "limit"),
    ({"window": "1h"}, "window"),
    ({"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, "since"),
])
async def test_bad_input_is_a_400_naming_the_parameter(client: httpx.AsyncClient, params: dict[str, str],
                                                       param: str) -> None:
    async with client:
        resp = await client.get(URL, params=params, headers=ADMIN)
        anonymous = await client.get(URL)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert anonymous.status_code == 401


async def test_a_request_cursor_is_not_an_evaluations_cursor(client: httpx.AsyncClient) -> None:
    """The two listings page by different keys; mixing them up is a 400, not a wrong page."""
    from infersight.store.cursor import encode_cursor

    async with client:
        resp = await client.get(URL, params={"cursor": encode_cursor(NOW, "0" * 16, "0" * 32)}, headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "cursor"
