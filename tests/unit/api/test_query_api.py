"""The query API over a real DuckDB store: scope, filters, pagination, stats, errors, OpenAPI."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from infersight.api.app import QueryApi
from infersight.api.openapi import openapi_spec
from infersight.gateway.tenancy import TenantDirectory
from infersight.model import RequestRecord
from infersight.store.duckdb_store import DuckDBStore

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ACME = {"authorization": "Bearer sk-acme-test"}
GLOBEX = {"authorization": "Bearer sk-globex-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}


def record(i: int, tenant: str, **kw) -> RequestRecord:
    base = dict(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id="sim-large", backend="sim",
                use_case="chat", started_at=(T0 + timedelta(seconds=i)).isoformat(), ttft_ms=float(10 + i % 7),
                total_ms=100.0 + i, itl_ms_mean=5.0, status_code=200, prompt_tokens=10, completion_tokens=20,
                stream=True)
    base.update(kw)
    return RequestRecord(**base)


@pytest.fixture
def client(settings, tmp_path):
    store = DuckDBStore(str(tmp_path / "api.duckdb"))
    store.migrate()
    records = [record(i, "acme") for i in range(30)] + [record(100 + i, "globex", model_id="sim-small")
                                                        for i in range(10)]
    records.append(record(500, "acme", status_code=429, error_type="upstream_429"))
    store.write_requests(records)
    store.write_rows("eval_results", [{
        "trace_id": f"{3:032x}", "span_id": f"{3:016x}", "tenant_id": "acme", "model_id": "sim-large",
        "evaluator": "exact", "evaluator_version": "v1", "dimension": "correct", "score": 1.0,
        "evaluated_at": T0 + timedelta(minutes=1)}])
    store.write_rows("request_content", [{
        "trace_id": f"{i:032x}", "span_id": f"{i:016x}", "tenant_id": tenant, "model_id": "sim-large",
        "started_at": T0 + timedelta(seconds=i), "prompt_text": f"Mail [EMAIL] ({tenant})", "completion_text": "ok",
        "guardrail_hits": "pii:EMAIL"} for i, tenant in ((3, "acme"), (103, "globex"))])
    store.write_rows("telemetry", [{"ts": T0 + timedelta(seconds=30), "source": "vllm", "instance": "gpu-0",
                                    "model_id": "sim-large", "metric": "kv_cache_usage", "value": 0.42}])
    api = QueryApi(store, TenantDirectory(settings))
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
    store.close()


async def test_one_request_story(client) -> None:
    async with client:
        resp = await client.get(f"/api/v1/requests/{3:032x}", headers=ACME)
        other = await client.get(f"/api/v1/requests/{103:032x}", headers=ACME)
        as_admin = await client.get(f"/api/v1/requests/{103:032x}", headers=ADMIN)
    assert resp.status_code == 200
    body = resp.json()
    assert body["record"]["tenant_id"] == "acme" and body["record"]["trace_id"] == f"{3:032x}"
    assert [e["dimension"] for e in body["evaluations"]] == ["correct"]
    assert [t["metric"] for t in body["telemetry"]] == ["kv_cache_usage"]
    assert [(c["prompt_text"], c["guardrail_hits"]) for c in body["content"]] == [("Mail [EMAIL] (acme)", "pii:EMAIL")]
    assert other.status_code == 404, "another tenant's request must look absent"
    assert as_admin.status_code == 200 and as_admin.json()["record"]["tenant_id"] == "globex"
    assert [c["prompt_text"] for c in as_admin.json()["content"]] == ["Mail [EMAIL] (globex)"]


async def test_list_scope_filters_and_cursor(client) -> None:
    async with client:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/requests", params=params, headers=ACME)).json()
            seen += [r["trace_id"] for r in page["data"]]
            assert all(r["tenant_id"] == "acme" for r in page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        errors = (await client.get("/api/v1/requests", params={"status": "429"}, headers=ACME)).json()
        window = (await client.get("/api/v1/requests", headers=ACME, params={
            "since": (T0 + timedelta(seconds=10)).isoformat(), "until": (T0 + timedelta(seconds=20)).isoformat()})).json()
        forbidden = await client.get("/api/v1/requests", params={"tenant": "globex"}, headers=ACME)
        admin_globex = (await client.get("/api/v1/requests", params={"tenant": "globex"}, headers=ADMIN)).json()
    assert len(seen) == 31 and len(set(seen)) == 31
    assert [r["status_code"] for r in errors["data"]] == [429]
    assert len(window["data"]) == 10
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    assert {r["tenant_id"] for r in admin_globex["data"]} == {"globex"} and len(admin_globex["data"]) == 10


async def test_stats_grouped_and_scoped(client) -> None:
    params = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat(), "group_by": "tenant,model"}
    async with client:
        admin = (await client.get("/api/v1/stats", params=params, headers=ADMIN)).json()["data"]
        tenant = (await client.get("/api/v1/stats", params=params, headers=GLOBEX)).json()["data"]
        bucketed = (await client.get("/api/v1/stats", params={**params, "resolution": "10s", "group_by": ""},
                                     headers=ACME)).json()["data"]
    by_tenant = {row["tenant_id"]: row for row in admin}
    assert by_tenant["acme"]["requests"] == 31 and by_tenant["acme"]["errors"] == 1
    assert by_tenant["globex"]["requests"] == 10 and by_tenant["globex"]["model_id"] == "sim-small"
    assert [row["tenant_id"] for row in tenant] == ["globex"]
    assert sum(row["requests"] for row in bucketed) == 31 and len(bucketed) >= 4
    assert all("bucket_start" in row for row in bucketed)


@pytest.mark.parametrize(
    ("path", "params", "headers", "status", "code"),
    [
        ("/api/v1/requests", {}, {}, 401, "missing_api_key"),
        ("/api/v1/requests", {}, {"authorization": "Bearer nope"}, 401, "invalid_api_key"),
        ("/api/v1/requests", {"limit": "0"}, ACME, 400, "invalid_value"),
        ("/api/v1/requests", {"since": "yesterday"}, ACME, 400, "invalid_value"),
        ("/api/v1/requests", {"cursor": "garbage!"}, ACME, 400, "invalid_query"),
        ("/api/v1/stats", {"group_by": "prompt_text"}, ACME, 400, "invalid_value"),
        ("/api/v1/stats", {"resolution": "2w"}, ACME, 400, "invalid_value"),
        ("/api/v1/nothing", {}, ACME, 404, "unknown_url"),
    ],
)
async def test_errors(client, path, params, headers, status, code) -> None:
    async with client:
        resp = await client.get(path, params=params, headers=headers)
    assert resp.status_code == status and resp.json()["error"]["code"] == code


async def test_openapi_documents_every_route(client) -> None:
    async with client:
        spec = (await client.get("/api/v1/openapi.json")).json()
    assert spec["openapi"] == "3.1.0" and spec["components"] == openapi_spec()["components"]
    assert set(spec["paths"]) == {"/api/v1/requests/{trace_id}", "/api/v1/requests", "/api/v1/stats",
                                  "/api/v1/evaluations", "/api/v1/calibrations", "/api/v1/quality", "/api/v1/quality/drift", "/api/v1/openapi.json", "/api/v1/admin/sampling",
                                  "/api/v1/admin/sampling/{tenant}", "/api/v1/admin/sampling/force",
                                  "/api/v1/admin/sampling/force/{tenant}", "/api/v1/telemetry",
                                  "/api/v1/correlation", "/api/v1/diagnosis"}
    for route, expected in (("telemetry", {"metric", "limit"}), ("correlation", {"by", "max_staleness"}),
                            ("diagnosis", set())):
        documented = {p["name"] for p in spec["paths"][f"/api/v1/{route}"]["get"]["parameters"]}
        assert {"tenant", "model", "instance", "since", "until", "window", *expected} <= documented
    story = spec["paths"]["/api/v1/requests/{trace_id}"]["get"]["responses"]["200"]["content"]
    assert set(story["application/json"]["schema"]["properties"]) == {"record", "evaluations", "content",
                                                                       "telemetry", "related"}
    assert set(spec["components"]["schemas"]["RequestContent"]["properties"]) >= {"prompt_text", "guardrail_hits"}
    quality = {p["name"] for p in spec["paths"]["/api/v1/quality"]["get"]["parameters"]}
    assert {"tenant", "model", "use_case", "group_by", "evaluator", "evaluator_version", "dimension", "since",
            "until", "window"} <= quality
    names = {p["name"] for p in spec["paths"]["/api/v1/requests"]["get"]["parameters"]}
    assert {"tenant", "model", "use_case", "status", "since", "until", "limit", "cursor"} <= names
