"""OpenAPI entries of the telemetry routes (``telemetry_api``), spliced into ``openapi.openapi_spec``.

The shared helpers are passed in rather than imported, so this module does not import ``openapi``
(which imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from infersight.api.telemetry_api import DEFAULT_LIMIT, MAX_LIMIT
from infersight.store.telemetry_sql import CORRELATION_FIELDS, CORRELATION_METRICS, NO_SAMPLE, SAMPLE_COLUMNS
from infersight.telemetry.diagnosis import SIGNALS

_NULLABLE = {"type": ["number", "null"]}


def telemetry_paths(param: Callable[..., dict[str, Any]], time_range: list[dict[str, Any]],
                    errors: dict[str, Any]) -> dict[str, Any]:
    scope = [
        param("tenant", "Admin keys: a tenant's view. Tenant keys see only the models their own requests used in "
                        "the window (and the instances that served them); naming another tenant is 403."),
        param("model", "Model id: its samples, plus unlabelled GPU samples of instances that served it."),
        param("instance", "Instance (scrape target), e.g. gpu-host-1:8000."),
        *time_range,
        param("window", "Instead of since: the last 15m, 1h, 1d... (default 1h)."),
    ]

    def ok(description: str, data: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        props = {"data": {"type": "array", "items": data}, "since": {"type": "string"}, "until": {"type": "string"},
                 **(extra or {})}
        return {"200": {"description": description, "content": {"application/json": {"schema": {
            "type": "object", "properties": props}}}}, **errors}

    sample = {"type": "object", "properties": {
        name: ({"type": "string", "format": "date-time"} if name == "ts" else _NULLABLE if name == "value"
               else {"type": ["string", "null"]}) for name in SAMPLE_COLUMNS}}
    row = {"type": "object", "properties": {
        name: {"type": "string"} if name in ("bucket", "source") else {"type": "integer"} if name in ("requests", "errors")
        else _NULLABLE for name in CORRELATION_FIELDS}}
    signal = {"type": "object", "properties": {
        "signal": {"type": "string", "enum": list(SIGNALS)}, "firing": {"type": "boolean"},
        "enough_data": {"type": "boolean"}, "values": {"type": "object"}, "thresholds": {"type": "object"},
        "hint": {"type": "string"}}}
    return {
        "/api/v1/telemetry": {"get": {
            "summary": "GPU and engine telemetry samples, oldest first, capped at limit.",
            "parameters": [*scope, param("metric", "Comma list of metric names (docs/telemetry.md); default all."),
                           param("limit", f"Most samples returned, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).",
                                 {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})],
            "responses": ok("Samples", sample, {"truncated": {"type": "boolean"}}),
        }},
        "/api/v1/correlation": {"get": {
            "summary": "Request count, TTFT and ITL p50/p99 per bucket of a telemetry metric, each request joined "
                       f"to the latest earlier sample of its model (as-of); stale or missing: '{NO_SAMPLE}'.",
            "parameters": [*scope,
                           param("by", "The metric to bucket by.", {"type": "string",
                                                                     "enum": list(CORRELATION_METRICS)},
                                 required=True),
                           param("max_staleness", "Oldest usable sample, e.g. 20s (default), at most 1h.")],
            "responses": ok("One row per bucket, then no_sample", row,
                            {"by": {"type": "string"}, "max_staleness_s": {"type": "number"}}),
        }},
        "/api/v1/diagnosis": {"get": {
            "summary": "Diagnosis signals (contention, memory pressure, low cache reuse) with plain-language hints.",
            "parameters": scope,
            "responses": ok("Every signal, firing or not", signal),
        }},
    }
