"""Who may read /metrics: anyone by default (as Prometheus expects), only scrape and admin keys once
``server.metrics_keys`` lists keys. The exposition counts requests, tokens and scores per tenant, and
tenants reach the same port, so an operator must be able to close it to them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from infersight.config import ConfigError, settings_from_dict
from infersight.gateway.tenancy import TenantDirectory
from infersight.ingest.worker import IngestApp
from tests.conftest import config_dict
from tests.unit.gateway.helpers import ACME, chat_body, gateway, ok_stream

SCRAPE = "scrape-secret-1"
STORED = ["sha256:" + hashlib.sha256(SCRAPE.encode()).hexdigest()]  # kept hashed in the config
ADMIN = {"authorization": "Bearer sk-admin-test"}
STREAM = ok_stream((1.0, b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'), (2.0, b"data: [DONE]\n\n"))


def _settings(tmp_path: Path, metrics_keys: list[str] | None = None):  # type: ignore[no-untyped-def]
    data = config_dict(tmp_path / "data")
    if metrics_keys is not None:
        data["server"] = {**data["server"], "metrics_keys": metrics_keys}
    return settings_from_dict(data)


async def test_without_metrics_keys_metrics_needs_no_key(tmp_path: Path) -> None:
    _, _, _, client = gateway(_settings(tmp_path), STREAM)
    async with client:
        resp = await client.get("/metrics")
    assert resp.status_code == 200 and "infersight_requests_total" in resp.text


async def test_with_metrics_keys_only_scrape_and_admin_keys_read_metrics(tmp_path: Path) -> None:
    _, _, _, client = gateway(_settings(tmp_path, STORED), STREAM)
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
        cases = {
            "none": await client.get("/metrics"),
            "tenant": await client.get("/metrics", headers=ACME),
            "unknown": await client.get("/metrics", headers={"authorization": "Bearer nope"}),
            "scrape": await client.get("/metrics", headers={"authorization": f"Bearer {SCRAPE}"}),
            "admin": await client.get("/metrics", headers=ADMIN),
        }
    got = {name: (r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None)
           for name, r in cases.items()}
    assert got == {"none": (401, "missing_api_key"), "tenant": (403, "forbidden"),
                   "unknown": (401, "invalid_api_key"), "scrape": (200, None), "admin": (200, None)}
    assert 'tenant="acme"' in cases["scrape"].text
    assert "acme" not in cases["tenant"].text  # the refusal says nothing of the tenants' figures


async def test_the_ingest_worker_guards_its_metrics_the_same_way(tmp_path: Path) -> None:
    settings = _settings(tmp_path, STORED)
    registry = CollectorRegistry()
    Counter("infersight_ingest_rows", "rows", registry=registry).inc(3)
    app = IngestApp(registry, api=None, health=lambda: {"status": "ok"}, tenants=TenantDirectory(settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        denied = await client.get("/metrics", headers=ACME)
        allowed = await client.get("/metrics", headers={"authorization": f"Bearer {SCRAPE}"})
        health = await client.get("/healthz")
    assert denied.status_code == 403
    assert allowed.status_code == 200 and "infersight_ingest_rows_total 3.0" in allowed.text
    assert health.status_code == 200  # liveness stays open: it carries no tenant data


def test_a_malformed_hashed_metrics_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server.metrics_keys"):
        _settings(tmp_path, ["sha256:not-hex"])
