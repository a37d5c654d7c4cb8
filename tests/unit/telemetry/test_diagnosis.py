"""The diagnosis rules on constructed inputs: each fires past its threshold, not below, not without data."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from infersight.store.telemetry_sql import DiagnosisInputs
from infersight.telemetry.diagnosis import SIGNALS, DiagnosisSettings, diagnose


def inputs(**kw: Any) -> DiagnosisInputs:
    base: dict[str, Any] = dict(requests=100, ttft_ms_p50=100.0, ttft_ms_p99=300.0, hashed_requests=100,
                                repeated_requests=10,
                                metric_means={"gpu_memory_utilization": 0.6, "gpu_utilization": 0.7,
                                              "prefix_cache_hit_rate": 0.8})
    base.update(kw)
    return DiagnosisInputs(**base)


def firing(got: list[dict[str, Any]]) -> dict[str, bool]:
    return {s["signal"]: s["firing"] for s in got}


def test_healthy_inputs_fire_nothing() -> None:
    got = diagnose(inputs())
    assert [s["signal"] for s in got] == list(SIGNALS)
    assert firing(got) == dict.fromkeys(SIGNALS, False) and all(s["enough_data"] for s in got)
    assert all(s["hint"] for s in got)


def test_contention_fires_above_the_ratio() -> None:
    assert firing(diagnose(inputs(ttft_ms_p99=501.0)))["contention"]
    assert not firing(diagnose(inputs(ttft_ms_p99=500.0)))["contention"]  # "above": 5x exactly does not fire
    few = diagnose(inputs(requests=5, ttft_ms_p99=5000.0))[0]
    assert not few["firing"] and not few["enough_data"]
    assert diagnose(inputs(ttft_ms_p99=5000.0))[0]["values"]["ttft_p99_over_p50"] == pytest.approx(50.0)


def test_memory_pressure_needs_full_memory_and_idle_compute() -> None:
    means = {"gpu_memory_utilization": 0.9, "gpu_utilization": 0.3, "prefix_cache_hit_rate": 0.8}
    got = diagnose(inputs(metric_means=means))[1]
    assert got["firing"] and got["hint"] == "memory-bound: tune batch size or quantization before adding instances"
    assert not diagnose(inputs(metric_means={**means, "gpu_utilization": 0.6}))[1]["firing"]  # busy: compute-bound
    assert not diagnose(inputs(metric_means={**means, "gpu_memory_utilization": 0.8}))[1]["firing"]
    unknown = diagnose(inputs(metric_means={"gpu_memory_utilization": 0.9}))[1]
    assert not unknown["firing"] and not unknown["enough_data"]


def test_low_cache_reuse_needs_repeats_and_a_low_hit_rate() -> None:
    means = {"prefix_cache_hit_rate": 0.2}
    got = diagnose(inputs(metric_means=means, repeated_requests=50))[2]
    assert got["firing"] and got["values"]["repeated_prompt_share"] == 0.5
    assert not diagnose(inputs(metric_means=means, repeated_requests=10))[2]["firing"]  # prompts do not repeat
    assert not diagnose(inputs(metric_means={"prefix_cache_hit_rate": 0.6}, repeated_requests=50))[2]["firing"]
    assert not diagnose(inputs(metric_means={}, repeated_requests=50))[2]["enough_data"]  # no prefix cache figure


def test_thresholds_come_from_settings() -> None:
    settings = DiagnosisSettings(contention_ttft_ratio=2.0, memory_pressure_gpu_memory=0.5)
    got = diagnose(inputs(), settings)
    assert firing(got)["contention"] and got[0]["thresholds"]["ttft_p99_over_p50_above"] == 2.0
    with pytest.raises(ValidationError):
        DiagnosisSettings(contention_ttft_ratio=0.5)
    with pytest.raises(ValidationError):
        DiagnosisSettings.model_validate({"unknown": 1})
