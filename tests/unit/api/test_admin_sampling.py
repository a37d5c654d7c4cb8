"""The sampling admin API: admin keys only, run-time rates, forced windows, clear 4xx errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from infersight.config import settings_from_dict
from infersight.gateway.upstreams.mock import MockTransport, ScriptedResponse
from infersight.runtime import build_gateway
from tests.conftest import DirectBus, config_dict

ADMIN = {"authorization": "Bearer sk-admin-test"}
URL = "/api/v1/admin/sampling"


@pytest.fixture
async def client(tmp_path: Path):
    settings = settings_from_dict(config_dict(tmp_path / "data"))
    app = build_gateway(settings, transport=MockTransport(lambda r: ScriptedResponse()), bus=DirectBus(),
                        eval_bus=DirectBus())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


async def test_only_admin_keys(client: httpx.AsyncClient) -> None:
    assert (await client.get(URL)).status_code == 401
    tenant = await client.get(URL, headers={"authorization": "Bearer sk-acme-test"})
    assert tenant.status_code == 403 and tenant.json()["error"]["type"] == "permission_error"
    assert (await client.get(URL, headers={"authorization": "Bearer nope"})).status_code == 401


async def test_rate_override_takes_effect_at_once(client: httpx.AsyncClient) -> None:
    before = (await client.get(URL, headers=ADMIN)).json()
    acme = next(t for t in before["tenants"] if t["tenant"] == "acme")
    assert (acme["rate"], acme["source"]) == (0.05, "default")
    got = await client.put(f"{URL}/acme", json={"rate": 0.5}, headers=ADMIN)
    assert got.status_code == 200
    acme = next(t for t in got.json()["tenants"] if t["tenant"] == "acme")
    assert (acme["rate"], acme["source"]) == (0.5, "override")
    sampler = client.app.admin.sampler  # type: ignore[attr-defined]
    assert sampler.rate("acme") == 0.5
    await client.put(f"{URL}/acme", json={"rate": None}, headers=ADMIN)
    assert sampler.rate("acme") == 0.05


async def test_forced_window_and_its_end(client: httpx.AsyncClient) -> None:
    got = await client.post(f"{URL}/force", json={"tenant": "globex", "duration_s": 300}, headers=ADMIN)
    assert got.status_code == 200
    globex = next(t for t in got.json()["tenants"] if t["tenant"] == "globex")
    assert globex["forced_until"] == got.json()["forced"]["until"]
    sampler = client.app.admin.sampler  # type: ignore[attr-defined]
    assert sampler.initial("globex", "0" * 32) == "forced"
    assert (await client.delete(f"{URL}/force/globex", headers=ADMIN)).status_code == 200
    assert sampler.initial("globex", "0" * 32) != "forced"
    assert (await client.delete(f"{URL}/force/globex", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("put", f"{URL}/acme", {"rate": 2}, 400, "rate"),
        ("put", f"{URL}/acme", {"rate": "high"}, 400, "rate"),
        ("put", f"{URL}/acme", {}, 400, "rate"),
        ("put", f"{URL}/nobody", {"rate": 0.1}, 404, None),
        ("post", f"{URL}/force", {"tenant": "acme"}, 400, "duration_s"),
        ("post", f"{URL}/force", {"tenant": "acme", "duration_s": 10**9}, 400, "duration_s"),
        ("post", f"{URL}/force", {"tenant": "nobody", "duration_s": 60}, 404, None),
    ],
)
async def test_bad_input_is_a_clear_4xx(client: httpx.AsyncClient, method: str, path: str, body: dict,
                                        status: int, param: str | None) -> None:
    got = await getattr(client, method)(path, json=body, headers=ADMIN) if method != "get" else None
    assert got is not None and got.status_code == status
    error = got.json()["error"]
    assert error["message"]
    if param == "duration_s" and "duration_s" not in body:
        assert error["code"] == "missing_field" or error["param"] == param
    elif param:
        assert error["param"] == param or param in error["message"]


async def test_invalid_json_body(client: httpx.AsyncClient) -> None:
    got = await client.put(f"{URL}/acme", content=b"{nope", headers={**ADMIN, "content-type": "application/json"})
    assert got.status_code == 400


async def test_embedded_breaker_reads_pending_tasks_and_shows_in_the_admin_api(tmp_path: Path) -> None:
    """The memory-bus shape with the store in the gateway: the breaker's lag is the gateway's own
    pending eval tasks (with the store process, the eval process owns them: test_eval_owner.py)."""
    from datetime import datetime, timedelta, timezone

    from infersight.model import EvalTask

    settings = settings_from_dict(config_dict(tmp_path / "data", store={"child_process": False}, evaluation={
        "breaker": {"max_lag_s": 30, "recover_lag_s": 10, "reduced_factor": 0.5}}))
    app = build_gateway(settings, transport=MockTransport(lambda r: ScriptedResponse()))
    breaker = app.admin.breaker  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            snap = (await client.get(URL, headers=ADMIN)).json()
            assert snap["breaker"]["open"] is False and snap["breaker"]["lag_s"] is None
            old = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
            breaker.lag.add(EvalTask(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="sim-large",
                                     started_at=old))  # stuck behind a slow judge, say
            assert breaker.check().open
            snap = (await client.get(URL, headers=ADMIN)).json()
            assert snap["breaker"]["open"] is True and snap["breaker"]["reasons"] == ["lag"]
            assert snap["breaker"]["lag_s"] >= 299
            acme = next(t for t in snap["tenants"] if t["tenant"] == "acme")
            assert (acme["rate"], acme["effective_rate"]) == (0.05, 0.025)
            metrics = (await client.get("/metrics")).text
            assert 'infersight_eval_breaker_open{reason="lag"} 1.0' in metrics
    finally:
        for hook in app.on_shutdown:
            await hook()
