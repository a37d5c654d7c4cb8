"""Access control and tenant isolation of /api/v1, through the gateway's ASGI app over a real DuckDB store.

Covers what tests/unit/api does not: a trace id shared by two tenants (a client may send another
tenant's id in ``traceparent``), cursors reused across tenants or forged, hostile numbers and times
(each a 400 in the OpenAI error shape, never a 500 or the store's own error text), tenant keys on
every admin write, and 401 before anything else without a valid key.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.config import settings_from_dict
from infersight.gateway.upstreams.mock import MockTransport, ScriptedResponse
from infersight.model import RequestRecord
from infersight.runtime import build_gateway
from infersight.store.base import StatsQuery
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import DirectBus, config_dict

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ACME = {"authorization": "Bearer sk-acme-test"}
GLOBEX = {"authorization": "Bearer sk-globex-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}
SHARED = "ab" * 16  # a trace id both tenants' requests carry
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}


def _record(i: int, tenant: str, trace_id: str | None = None) -> RequestRecord:
    return RequestRecord(trace_id=trace_id or f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant,
                         model_id="sim-large" if tenant == "acme" else "sim-small", backend="sim", use_case="chat",
                         started_at=(T0 + timedelta(seconds=i)).isoformat(), ttft_ms=10.0, total_ms=100.0,
                         status_code=200, prompt_tokens=10, completion_tokens=20, stream=True)


def _eval(trace_id: str, span: int, tenant: str) -> dict[str, Any]:
    return {"trace_id": trace_id, "span_id": f"{span:016x}", "tenant_id": tenant, "model_id": "sim-large",
            "evaluator": "checks", "evaluator_version": "v1", "dimension": f"dim_{tenant}", "score": 1.0,
            "evaluated_at": T0 + timedelta(minutes=1), "request_started_at": T0 + timedelta(seconds=span)}


def _content(trace_id: str, span: int, tenant: str) -> dict[str, Any]:
    return {"trace_id": trace_id, "span_id": f"{span:016x}", "tenant_id": tenant, "model_id": "sim-large",
            "started_at": T0 + timedelta(seconds=span), "prompt_text": f"secret of {tenant}",
            "completion_text": f"answer for {tenant}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = DuckDBStore(str(tmp_path / "audit.duckdb"))
    store.migrate()
    store.write_requests([_record(i, "acme") for i in range(20)] + [_record(100 + i, "globex") for i in range(5)]
                         + [_record(200, "acme", SHARED), _record(201, "globex", SHARED)])
    store.write_rows("eval_results", [_eval(SHARED, 200, "acme"), _eval(SHARED, 201, "globex"),
                                      _eval(f"{100:032x}", 100, "globex")])
    store.write_rows("request_content", [_content(SHARED, 200, "acme"), _content(SHARED, 201, "globex")])
    settings = settings_from_dict(config_dict(tmp_path / "data"))
    app = build_gateway(settings, transport=MockTransport(lambda r: ScriptedResponse()), bus=DirectBus(),
                        eval_bus=DirectBus(), store=store)
    # raise_app_exceptions=False: an unhandled error must show up as the 500 a real server sends
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        c.store_path = str(tmp_path)  # type: ignore[attr-defined]
        yield c
    store.close()


def _error(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object, checked for shape."""
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


async def test_shared_trace_id_shows_each_tenant_only_its_own_parts(client: httpx.AsyncClient) -> None:
    mine = (await client.get(f"/api/v1/requests/{SHARED}", headers=ACME)).json()
    theirs = (await client.get(f"/api/v1/requests/{SHARED.upper()}", headers=GLOBEX)).json()
    admin = (await client.get(f"/api/v1/requests/{SHARED}", headers=ADMIN)).json()
    for body, tenant in ((mine, "acme"), (theirs, "globex")):
        rows = [body["record"], *body["related"], *body["evaluations"], *body["content"]]
        assert {r["tenant_id"] for r in rows} == {tenant}
        assert body["related"] == [] and len(body["evaluations"]) == 1 and len(body["content"]) == 1
        other = "globex" if tenant == "acme" else "acme"
        assert other not in str(body)
    assert {r["tenant_id"] for r in [admin["record"], *admin["related"]]} == {"acme", "globex"}
    assert {e["tenant_id"] for e in admin["evaluations"]} == {"acme", "globex"}


async def test_another_tenants_trace_looks_exactly_like_a_missing_one(client: httpx.AsyncClient) -> None:
    theirs = await client.get(f"/api/v1/requests/{100:032x}", headers=ACME)
    missing = await client.get(f"/api/v1/requests/{999:032x}", headers=ACME)
    assert theirs.status_code == missing.status_code == 404
    a, b = _error(theirs), _error(missing)
    assert (a["type"], a["code"], a["param"]) == (b["type"], b["code"], b["param"])
    assert a["message"].replace(f"{100:032x}", "X") == b["message"].replace(f"{999:032x}", "X")
    assert "globex" not in theirs.text and "dim_globex" not in theirs.text


async def test_cursors_reused_or_forged_never_cross_tenants(client: httpx.AsyncClient) -> None:
    first = (await client.get("/api/v1/requests", params={"limit": "1"}, headers=ACME)).json()
    minted = first["next_cursor"]
    assert minted is not None
    reused = (await client.get("/api/v1/requests", params={"cursor": minted}, headers=GLOBEX)).json()
    assert len(reused["data"]) == 5 and {r["tenant_id"] for r in reused["data"]} == {"globex"}
    forged_raw = f"v1|{int((T0 + timedelta(days=1)).timestamp() * 1e6)}|{'f' * 16}|{SHARED}".encode()
    forged = base64.urlsafe_b64encode(forged_raw).decode().rstrip("=")
    page = (await client.get("/api/v1/requests", params={"cursor": forged, "limit": "1000"}, headers=ACME)).json()
    assert len(page["data"]) == 21 and {r["tenant_id"] for r in page["data"]} == {"acme"}
    naming = await client.get("/api/v1/requests", params={"cursor": minted, "tenant": "acme"}, headers=GLOBEX)
    assert naming.status_code == 403 and _error(naming)["code"] == "forbidden"


@pytest.mark.parametrize("path", ["/api/v1/stats", "/api/v1/quality"])
async def test_aggregates_are_pinned_to_the_tenant(client: httpx.AsyncClient, path: str) -> None:
    grouped = await client.get(path, params={**WINDOW, "group_by": "tenant"}, headers=GLOBEX)
    assert grouped.status_code == 200 and {r["tenant_id"] for r in grouped.json()["data"]} == {"globex"}
    for tenant in ("acme", "*", "ACME"):
        other = await client.get(path, params={**WINDOW, "tenant": tenant}, headers=GLOBEX)
        assert other.status_code == 403 and _error(other)["type"] == "permission_error"
    admin = (await client.get(path, params={**WINDOW, "group_by": "tenant"}, headers=ADMIN)).json()["data"]
    assert {r["tenant_id"] for r in admin} == {"acme", "globex"}


BAD_QUERIES = [
    ("/api/v1/requests", {"limit": "--5"}, "limit"),
    ("/api/v1/requests", {"limit": "\u00b2"}, "limit"),  # '²'.isdigit() is True, int('²') raises
    ("/api/v1/requests", {"limit": "1" * 5000}, "limit"),  # int() refuses 4300+ digits
    ("/api/v1/requests", {"limit": "-1"}, "limit"),
    ("/api/v1/requests", {"limit": "1001"}, "limit"),
    ("/api/v1/requests", {"status": "2" * 30}, "status"),
    ("/api/v1/requests", {"cursor": "garbage!"}, "cursor"),
    ("/api/v1/stats", {"window": "99999999d"}, "window"),
    ("/api/v1/stats", {"window": "9999999999d"}, "window"),
    ("/api/v1/stats", {"window": "9" * 5000 + "d"}, "window"),
    ("/api/v1/stats", {**WINDOW, "resolution": "999999999d"}, "resolution"),  # DuckDB's error, file path and all
    ("/api/v1/stats", {"resolution": "99999999999d"}, "resolution"),
    ("/api/v1/stats", {"since": "2026-11-20T13:00:00Z", "until": "2026-11-20T12:00:00Z"}, "since"),
    ("/api/v1/telemetry", {"limit": "--1"}, "limit"),
    ("/api/v1/correlation", {"by": "kv_cache_usage", "max_staleness": "99999999999d"}, "max_staleness"),
]


async def test_hostile_values_are_a_400_naming_the_parameter(client: httpx.AsyncClient) -> None:
    """One client for all cases (a fixture each would cost seconds); every failing case is reported."""
    wrong = []
    for path, params, param in BAD_QUERIES:
        resp = await client.get(path, params=params, headers=ACME)
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        error = body.get("error") or {}
        leaked = client.store_path in resp.text or "duckdb" in resp.text.lower()  # type: ignore[attr-defined]
        if (resp.status_code != 400 or set(body) != {"error"} or error.get("param") != param
                or error.get("type") != "invalid_request_error" or leaked):
            wrong.append((path, {k: v[:40] for k, v in params.items()}, resp.status_code, resp.text[:160]))
    assert not wrong, "\n".join(map(str, wrong))


async def test_extreme_times_are_clamped_not_a_500(client: httpx.AsyncClient) -> None:
    """Times before 1970 (or past datetime's range in UTC) mean "from the start" / "to the end"; they
    used to overflow when a window or staleness was subtracted from them."""
    whole = {"since": "0001-01-01T00:00:00+05:00", "until": "9999-12-31T23:00:00-05:00"}
    cases = [("/api/v1/requests", {**whole, "limit": "1000"}), ("/api/v1/stats", whole),
             ("/api/v1/stats", {"until": "0001-01-01T00:00:00Z"}), ("/api/v1/quality", whole),
             ("/api/v1/quality", {"until": "0001-01-01T00:00:00Z"}),
             ("/api/v1/telemetry", {"until": "0001-01-01T00:00:00Z"}),
             ("/api/v1/correlation", {"by": "kv_cache_usage", "until": "0001-01-01T00:00:01Z", "window": "1s"}),
             ("/api/v1/diagnosis", {"until": "0001-01-01T00:00:00Z"})]
    got = {}
    for path, params in cases:
        resp = await client.get(path, params=params, headers=ACME)
        assert resp.status_code == 200, (path, params, resp.status_code, resp.text[:200])
        got[(path, params.get("until"))] = resp.json()["data"]
    assert len(got[("/api/v1/requests", whole["until"])]) == 21
    assert sum(r["requests"] for r in got[("/api/v1/stats", whole["until"])]) == 21
    assert got[("/api/v1/stats", "0001-01-01T00:00:00Z")][0]["requests"] == 0
    assert {r["dimension"] for r in got[("/api/v1/quality", whole["until"])]} == {"dim_acme"}
    wide = await client.get("/api/v1/stats", params={"since": "1970-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z",
                                                     "resolution": "36600d"}, headers=ACME)
    assert wide.status_code == 200 and sum(r["requests"] for r in wide.json()["data"]) == 21


async def test_no_key_is_401_whatever_the_method(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/api/v1/requests", "/api/v1/stats", f"/api/v1/requests/{SHARED}"):
            for headers in ({}, {"authorization": "Bearer nope"}):
                resp = await client.request(method, path, headers=headers)
                assert resp.status_code == 401, (method, path, resp.status_code)
                assert _error(resp)["code"] in ("missing_api_key", "invalid_api_key")
            known = await client.request(method, path, headers=ACME)
            assert known.status_code == 405 and _error(known)["code"] == "method_not_allowed"
    spec = await client.get("/api/v1/openapi.json")
    assert spec.status_code == 200 and "sk-" not in spec.text and "acme" not in spec.text


ADMIN_WRITES = [
    ("PUT", "/api/v1/admin/sampling/globex", {"rate": 1.0}),
    ("PUT", "/api/v1/admin/sampling/acme", {"rate": 1.0}),
    ("POST", "/api/v1/admin/sampling/force", {"tenant": "globex", "duration_s": 60}),
    ("POST", "/api/v1/admin/sampling/force", {"tenant": None, "duration_s": 60}),
    ("DELETE", "/api/v1/admin/sampling/force/globex", None),
]


async def test_tenant_keys_cannot_change_sampling(client: httpx.AsyncClient) -> None:
    before = (await client.get("/api/v1/admin/sampling", headers=ADMIN)).json()
    for method, path, body in ADMIN_WRITES:
        for headers, status in ((ACME, 403), ({}, 401), ({"authorization": "Bearer nope"}, 401)):
            resp = await client.request(method, path, json=body, headers=headers)
            assert resp.status_code == status, (method, path, headers, resp.text)
            _error(resp)
    assert (await client.get("/api/v1/admin/sampling", headers=ADMIN)).json() == before


async def test_empty_tenant_does_not_force_every_tenant(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/v1/admin/sampling/force", json={"tenant": "", "duration_s": 60}, headers=ADMIN)
    assert resp.status_code == 400 and _error(resp)["param"] == "tenant"
    snap = (await client.get("/api/v1/admin/sampling", headers=ADMIN)).json()
    assert snap["forced_all_until"] is None



class _ZeroResolutionStore(DuckDBStore):
    """Hands the store a query the API would never build, so the store's own check answers."""

    def stats(self, query: StatsQuery) -> list[dict[str, Any]]:
        return super().stats(dataclasses.replace(query, resolution=timedelta(0)))


async def test_the_stores_own_validation_messages_reach_the_caller(tmp_path: Path) -> None:
    """A store's ``InvalidQuery`` is written for the caller and passes through as a 400; any other
    store error gets a fixed message (the hostile-values test above)."""
    store = _ZeroResolutionStore(str(tmp_path / "zero.duckdb"))
    store.migrate()
    settings = settings_from_dict(config_dict(tmp_path / "data"))
    app = build_gateway(settings, transport=MockTransport(lambda r: ScriptedResponse()), bus=DirectBus(),
                        eval_bus=DirectBus(), store=store)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            resp = await c.get("/api/v1/stats", params=WINDOW, headers=ACME)
    finally:
        store.close()
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_query" and error["message"] == "resolution must be positive"
