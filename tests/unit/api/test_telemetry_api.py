"""The telemetry routes over a real DuckDB store: samples, correlation, diagnosis, scope and bad params."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from infersight.api.app import QueryApi
from infersight.gateway.tenancy import TenantDirectory
from infersight.model import RequestRecord
from infersight.store.duckdb_store import DuckDBStore
from infersight.telemetry.diagnosis import DiagnosisSettings

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ACME = {"authorization": "Bearer sk-acme-test"}
GLOBEX = {"authorization": "Bearer sk-globex-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}
WINDOW = {"since": (T0 - timedelta(minutes=1)).isoformat(), "until": (T0 + timedelta(minutes=10)).isoformat()}
H1, H2 = "gpu-host-1:8000", "gpu-host-2:8000"


def sample(sec: int, metric: str, value: float, instance: str = H1, model: str | None = "m1",
           gpu: str | None = None) -> dict[str, Any]:
    return {"ts": T0 + timedelta(seconds=sec), "source": "nvml" if gpu else "vllm", "instance": instance,
            "gpu": gpu, "model_id": model, "metric": metric, "value": value}


def record(i: int, sec: int, tenant: str, model: str, ttft: float, prompt_hash: str) -> RequestRecord:
    return RequestRecord(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id=model, backend="sim",
                         started_at=(T0 + timedelta(seconds=sec)).isoformat(), ttft_ms=ttft, itl_ms_mean=5.0,
                         status_code=200, prompt_hash=prompt_hash, instance=H1 if model == "m1" else H2)


@pytest.fixture
def client(settings, tmp_path):
    """m1 (acme) is in trouble: a TTFT tail, a full but idle GPU, repeated prompts missing the cache.
    m2 (globex) is healthy."""
    store = DuckDBStore(str(tmp_path / "api.duckdb"))
    store.migrate()
    samples = []
    for sec in range(0, 300, 10):
        samples += [sample(sec, "kv_cache_usage", 0.3 if sec < 150 else 0.9),
                    sample(sec, "prefix_cache_hit_rate", 0.1),
                    sample(sec, "gpu_memory_utilization", 0.92, model=None, gpu="0"),
                    sample(sec, "gpu_utilization", 0.3, model=None, gpu="0"),
                    sample(sec, "kv_cache_usage", 0.2, instance=H2, model="m2"),
                    sample(sec, "prefix_cache_hit_rate", 0.8, instance=H2, model="m2"),
                    sample(sec, "gpu_memory_utilization", 0.6, instance=H2, model=None, gpu="0"),
                    sample(sec, "gpu_utilization", 0.8, instance=H2, model=None, gpu="0")]
    store.write_rows("telemetry", samples)
    # m1: 40 requests, TTFT 100 ms before 150 s and 2000 ms after (p99/p50 well above 5); half repeat one prompt
    records = [record(i, 3 + 7 * i, "acme", "m1", 100.0 if 3 + 7 * i < 150 else 2000.0,
                      "shared" if i % 2 else f"p{i}") for i in range(40)]
    records += [record(100 + i, 5 + 7 * i, "globex", "m2", 100.0 + i, f"g{i}") for i in range(40)]
    store.write_requests(records)
    api = QueryApi(store, TenantDirectory(settings), DiagnosisSettings())
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
    store.close()


async def test_telemetry_samples_and_tenant_scope(client) -> None:
    async with client:
        admin = (await client.get("/api/v1/telemetry", params={**WINDOW, "metric": "kv_cache_usage,gpu_utilization"},
                                  headers=ADMIN)).json()
        capped = (await client.get("/api/v1/telemetry", params={**WINDOW, "limit": "5"}, headers=ADMIN)).json()
        globex = (await client.get("/api/v1/telemetry", params=WINDOW, headers=GLOBEX)).json()
        acme = (await client.get("/api/v1/telemetry", params={**WINDOW, "metric": "gpu_utilization"},
                                 headers=ACME)).json()
        as_acme = (await client.get("/api/v1/telemetry", params={**WINDOW, "tenant": "acme",
                                                                  "metric": "gpu_utilization"}, headers=ADMIN)).json()
        other = await client.get("/api/v1/telemetry", params={**WINDOW, "tenant": "acme"}, headers=GLOBEX)
        no_key = await client.get("/api/v1/telemetry", params=WINDOW)
    assert len(admin["data"]) == 4 * 30 and not admin["truncated"]
    assert [r["ts"] for r in admin["data"]] == sorted(r["ts"] for r in admin["data"])
    assert set(admin["data"][0]) == {"ts", "source", "instance", "gpu", "model_id", "metric", "value"}
    assert len(capped["data"]) == 5 and capped["truncated"]
    assert {r["instance"] for r in globex["data"]} == {H2} and len(globex["data"]) == 4 * 30
    assert {(r["instance"], r["gpu"]) for r in acme["data"]} == {(H1, "0")}  # unlabelled, via m1's instance
    assert as_acme["data"] == acme["data"]
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert no_key.status_code == 401


async def test_correlation_route(client) -> None:
    async with client:
        resp = await client.get("/api/v1/correlation", params={**WINDOW, "by": "kv_cache_usage", "model": "m1"},
                                headers=ADMIN)
        scoped = await client.get("/api/v1/correlation", params={**WINDOW, "by": "kv_cache_usage", "model": "m1"},
                                  headers=GLOBEX)
    body = resp.json()
    assert resp.status_code == 200 and body["by"] == "kv_cache_usage" and body["max_staleness_s"] == 20.0
    got = {r["bucket"]: r for r in body["data"]}
    assert got["0-0.5"]["requests"] == 21 and got["0-0.5"]["ttft_ms_p50"] == 100.0
    assert got["0.85-0.95"]["requests"] == 19 and got["0.85-0.95"]["ttft_ms_p50"] == 2000.0
    assert got["no_sample"]["requests"] == 0
    assert sum(r["requests"] for r in scoped.json()["data"]) == 0, "globex never sent m1 requests"


async def test_diagnosis_fires_for_the_troubled_model_only(client) -> None:
    async with client:
        m1 = (await client.get("/api/v1/diagnosis", params={**WINDOW, "model": "m1"}, headers=ADMIN)).json()["data"]
        m2 = (await client.get("/api/v1/diagnosis", params={**WINDOW, "instance": H2}, headers=ADMIN)).json()["data"]
        acme = (await client.get("/api/v1/diagnosis", params=WINDOW, headers=ACME)).json()["data"]
    assert [(s["signal"], s["firing"]) for s in m1] == [
        ("contention", True), ("memory_pressure", True), ("low_cache_reuse", True)]
    assert [(s["signal"], s["firing"], s["enough_data"]) for s in m2] == [
        ("contention", False, True), ("memory_pressure", False, True), ("low_cache_reuse", False, True)]
    assert m1[1]["hint"] == "memory-bound: tune batch size or quantization before adding instances"
    assert m1[2]["values"]["repeated_prompt_share"] == pytest.approx(0.5)
    assert m1[0]["thresholds"]["ttft_p99_over_p50_above"] == 5.0
    assert [s["firing"] for s in acme] == [True, True, True]  # acme's requests are all m1's


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/api/v1/telemetry", {"limit": "100001"}, "limit"),
        ("/api/v1/telemetry", {"limit": "zero"}, "limit"),
        ("/api/v1/telemetry", {"metric": ",".join(f"m{i}" for i in range(51))}, "metric"),
        ("/api/v1/telemetry", {"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, "since"),
        ("/api/v1/telemetry", {"window": "a week"}, "window"),
        ("/api/v1/correlation", {}, "by"),
        ("/api/v1/correlation", {"by": "gpu_temperature_c"}, "by"),
        ("/api/v1/correlation", {"by": "kv_cache_usage", "max_staleness": "2h"}, "max_staleness"),
        ("/api/v1/correlation", {"by": "kv_cache_usage", "max_staleness": "soon"}, "max_staleness"),
        ("/api/v1/diagnosis", {"until": "tomorrow"}, "until"),
    ],
)
async def test_bad_params_name_the_parameter(client, path, params, param) -> None:
    async with client:
        resp = await client.get(path, params=params, headers=ADMIN)
    error = resp.json()["error"]
    assert resp.status_code == 400 and error["code"] == "invalid_value" and error["param"] == param
