"""``telemetry.diagnosis.*`` in the config: read at start-up, handed by the gateway to /api/v1/diagnosis,
and a bad value fails the start naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.config import ConfigError, load_settings, settings_from_dict
from infersight.runtime import build_gateway
from infersight.store.duckdb_store import DuckDBStore
from infersight.telemetry.diagnosis import DiagnosisSettings
from tests.conftest import config_dict
from tests.unit.api.test_telemetry_api import ADMIN, WINDOW, record, sample

BASE = "backends: [{name: a, url: http://x/v1, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n"


def test_defaults_and_a_configured_section(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE)
    assert load_settings(path).telemetry.diagnosis == DiagnosisSettings()
    path.write_text(BASE + "telemetry:\n  diagnosis: {contention_ttft_ratio: 8, min_requests: 50}\n")
    got = load_settings(path).telemetry.diagnosis
    assert (got.contention_ttft_ratio, got.min_requests, got.low_cache_hit_rate) == (8.0, 50, 0.4)


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ("{contention_ttft_ratio: 1}", "telemetry.diagnosis.contention_ttft_ratio", "greater than 1"),
        ("{memory_pressure_gpu_memory: 85}", "telemetry.diagnosis.memory_pressure_gpu_memory",
         "less than or equal to 1"),
        ("{repeated_prompt_share: 1}", "telemetry.diagnosis.repeated_prompt_share", "less than 1"),
        ("{min_requests: many}", "telemetry.diagnosis.min_requests", "valid integer"),
        ("{contention_ratio: 5}", "telemetry.diagnosis.contention_ratio", "Extra inputs"),
    ],
)
def test_a_bad_value_names_the_key(tmp_path: Path, section: str, key: str, says: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + f"telemetry:\n  diagnosis: {section}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.key == key and "gw.yaml" in str(info.value) and says in str(info.value)


def seed(store: DuckDBStore) -> None:
    """m1: TTFT p99 / p50 = 20, GPU memory 92% full while 30% busy."""
    store.write_rows("telemetry", [s for sec in range(0, 300, 10) for s in (
        sample(sec, "kv_cache_usage", 0.5), sample(sec, "gpu_memory_utilization", 0.92, model=None, gpu="0"),
        sample(sec, "gpu_utilization", 0.3, model=None, gpu="0"))])
    store.write_requests([record(i, 3 + 7 * i, "acme", "m1", 100.0 if i < 30 else 2000.0, f"p{i}")
                          for i in range(40)])


async def diagnosis(tmp_path: Path, thresholds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Ask the gateway's own /api/v1/diagnosis, built from config as `infersight serve` builds it."""
    settings = settings_from_dict(config_dict(tmp_path / "data", telemetry={"diagnosis": thresholds}))
    store = DuckDBStore(str(tmp_path / f"api-{len(thresholds)}.duckdb"))
    store.migrate()
    seed(store)
    try:
        app = build_gateway(settings, store=store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            resp = await client.get("/api/v1/diagnosis", params={**WINDOW, "model": "m1"}, headers=ADMIN)
    finally:
        store.close()
    assert resp.status_code == 200, resp.text
    return {s["signal"]: s for s in resp.json()["data"]}


async def test_configured_thresholds_change_what_the_gateway_reports(tmp_path: Path) -> None:
    default = await diagnosis(tmp_path, {})
    assert default["contention"]["firing"] and default["memory_pressure"]["firing"]
    tuned = await diagnosis(tmp_path, {"contention_ttft_ratio": 25, "memory_pressure_gpu_memory": 0.95})
    assert not tuned["contention"]["firing"] and tuned["contention"]["enough_data"]
    assert tuned["contention"]["values"]["ttft_p99_over_p50"] == pytest.approx(20.0)
    assert tuned["contention"]["thresholds"]["ttft_p99_over_p50_above"] == 25
    assert not tuned["memory_pressure"]["firing"]
    assert tuned["memory_pressure"]["thresholds"]["gpu_memory_utilization_above"] == 0.95
