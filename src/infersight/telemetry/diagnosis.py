"""Diagnosis signals: plain-language reasons why latency is what it is, from requests and telemetry.

Each rule reads ``DiagnosisInputs`` (one window, gathered by ``Store.diagnosis_inputs``) and returns
``{signal, firing, enough_data, values, thresholds, hint}``. The rules are pure, so thresholds are
tested without a store; they come from config ``telemetry.diagnosis.*`` (``DiagnosisSettings``, defined
in ``telemetry/settings.py`` so that ``config`` need not import the store's SQL; re-exported here).
A rule without enough data (too few requests, no samples of a metric) does not fire and says so in
``enough_data``: "not firing" then means "cannot tell", not "healthy".
"""

from __future__ import annotations

from typing import Any

from infersight.store.telemetry_sql import DiagnosisInputs
from infersight.telemetry.settings import DiagnosisSettings

__all__ = ["HINTS", "SIGNALS", "DiagnosisSettings", "contention", "diagnose", "low_cache_reuse", "memory_pressure"]

SIGNALS = ("contention", "memory_pressure", "low_cache_reuse")
HINTS = {
    "contention": "TTFT's tail is far above its median: requests wait behind each other (queueing or batch "
                  "contention). Check requests_waiting and kv_cache_usage; add capacity or cap concurrency.",
    "memory_pressure": "memory-bound: tune batch size or quantization before adding instances",
    "low_cache_reuse": "The same prompts repeat but the prefix cache rarely hits: enable prefix caching, keep "
                       "shared text at the start of prompts, and route repeats to the same replica.",
}


def _signal(name: str, firing: bool, enough: bool, values: dict[str, Any],
            thresholds: dict[str, Any]) -> dict[str, Any]:
    return {"signal": name, "firing": firing and enough, "enough_data": enough, "values": values,
            "thresholds": thresholds, "hint": HINTS[name]}


def contention(inputs: DiagnosisInputs, settings: DiagnosisSettings) -> dict[str, Any]:
    """TTFT p99 / p50 above the ratio: a long tail at the first token is waiting, not computing."""
    p50, p99 = inputs.ttft_ms_p50, inputs.ttft_ms_p99
    ratio = p99 / p50 if p50 and p99 is not None else None
    enough = inputs.requests >= settings.min_requests and ratio is not None
    return _signal("contention", ratio is not None and ratio > settings.contention_ttft_ratio, enough,
                   {"ttft_ms_p50": p50, "ttft_ms_p99": p99, "ttft_p99_over_p50": ratio, "requests": inputs.requests},
                   {"ttft_p99_over_p50_above": settings.contention_ttft_ratio, "min_requests": settings.min_requests})


def memory_pressure(inputs: DiagnosisInputs, settings: DiagnosisSettings) -> dict[str, Any]:
    """GPU memory nearly full while the GPU is mostly idle: memory, not compute, limits the batch."""
    mem = inputs.metric_means.get("gpu_memory_utilization")
    util = inputs.metric_means.get("gpu_utilization")
    enough = mem is not None and util is not None
    firing = (mem is not None and util is not None and mem > settings.memory_pressure_gpu_memory
              and util < settings.memory_pressure_gpu_utilization)
    return _signal("memory_pressure", firing, enough,
                   {"gpu_memory_utilization": mem, "gpu_utilization": util,
                    "kv_cache_usage": inputs.metric_means.get("kv_cache_usage")},
                   {"gpu_memory_utilization_above": settings.memory_pressure_gpu_memory,
                    "gpu_utilization_below": settings.memory_pressure_gpu_utilization})


def low_cache_reuse(inputs: DiagnosisInputs, settings: DiagnosisSettings) -> dict[str, Any]:
    """Prompts repeat (same ``prompt_hash``) yet the engine's prefix cache seldom hits.

    ``prompt_hash`` hashes the whole prompt, so the repeat share is a lower bound for shared
    prefixes: prompts that share a long system prompt but differ at the end do not count.
    """
    hit = inputs.metric_means.get("prefix_cache_hit_rate")
    hashed = inputs.hashed_requests
    share = inputs.repeated_requests / hashed if hashed else None
    enough = hit is not None and share is not None and hashed >= settings.min_hashed_requests
    firing = (hit is not None and share is not None and hit < settings.low_cache_hit_rate
              and share > settings.repeated_prompt_share)
    return _signal("low_cache_reuse", firing, enough,
                   {"prefix_cache_hit_rate": hit, "repeated_prompt_share": share, "requests_with_prompt_hash": hashed},
                   {"prefix_cache_hit_rate_below": settings.low_cache_hit_rate,
                    "repeated_prompt_share_above": settings.repeated_prompt_share,
                    "min_hashed_requests": settings.min_hashed_requests})


def diagnose(inputs: DiagnosisInputs, settings: DiagnosisSettings | None = None) -> list[dict[str, Any]]:
    """Every signal, in ``SIGNALS`` order, firing or not."""
    settings = settings or DiagnosisSettings()
    return [contention(inputs, settings), memory_pressure(inputs, settings), low_cache_reuse(inputs, settings)]
