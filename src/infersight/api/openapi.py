"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json (tested against the routes)."""

from __future__ import annotations

from typing import Any

from infersight.api.telemetry_openapi import telemetry_paths as _telemetry_paths
from infersight.api.params import MAX_LIST_LIMIT, STATUS_RANGE
from infersight.store.base import STAT_FIELDS, STAT_SOURCES
from infersight.store.quality_sql import QUALITY_FIELDS, QUALITY_GROUPABLE, QUALITY_SERIES
from infersight.store.schema import EVAL_RESULTS, REQUEST_CONTENT, REQUESTS, Table

_KIND = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "ts": "string"}


def _param(name: str, description: str, schema: dict[str, Any] | None = None, where: str = "query",
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema or {"type": "string"}}


def _integer(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


_RANGE = [
    _param("since", "Inclusive start, ISO 8601 (UTC if no offset).", {"type": "string", "format": "date-time"}),
    _param("until", "Exclusive end, ISO 8601.", {"type": "string", "format": "date-time"}),
]
_SCOPE = [
    _param("tenant", "Tenant id. Tenant keys may only name their own tenant (else 403)."),
    _param("model", "Model id."),
    _param("use_case", "Use case."),
]
_PAGING = [
    _param("limit", f"Page size, 1 to {MAX_LIST_LIMIT} (default 100).", _integer(1, MAX_LIST_LIMIT)),
    _param("cursor", "next_cursor from the previous page."),
]


def _page(schema: str) -> dict[str, Any]:
    """A listing's 200: a page of ``schema`` rows and the cursor of the next one."""
    return {"description": "A page", "content": {"application/json": {"schema": {
        "type": "object", "properties": {
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}},
            "next_cursor": {"type": ["string", "null"]}}}}}}


_ERROR = {"description": "OpenAI-style error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _record_schema(table: Table = REQUESTS) -> dict[str, Any]:
    props = {}
    for name, kind in table.columns:
        prop: dict[str, Any] = {"type": [_KIND[kind], "null"]}
        if kind == "ts":
            prop["format"] = "date-time"
        props[name] = prop
    return {"type": "object", "properties": props}


_SERIES = [
    _param("evaluator", "checks, reference or llm_judge."),
    _param("evaluator_version", "One version (a new judge model or rubric is a new one)."),
    _param("dimension", "e.g. factual_fidelity, refusal, token_f1."),
]
_QUALITY_PARAMS = [
    *_SCOPE, *_RANGE,
    _param("group_by", "Comma list of tenant, model, use_case (dimension always)."),
    *_SERIES,
    _param("window", "Instead of since: the last 1h, 1d... (default 24h)."),
]


def _drift_props() -> dict[str, Any]:
    window = {"type": ["object", "null"], "properties": {
        k: {"type": ["number", "null"]} for k in ("evaluations", "scored", "score_mean", "score_stddev", "failures",
                                                  "failure_rate")}}
    props: dict[str, Any] = {k: {"type": ["string", "null"]} for k in (*QUALITY_GROUPABLE, *QUALITY_SERIES)}
    props.update({"current": window, "baseline": window,
                  "status": {"type": "string", "enum": ["drifted", "stable", "too_few", "no_baseline"]},
                  "drifted": {"type": "array", "items": {"type": "string", "enum": ["score", "failure_rate"]}},
                  "direction": {"type": ["string", "null"], "enum": ["worse", "better", "mixed", None]}})
    props.update({k: {"type": ["number", "null"]} for k in ("score_delta", "score_p_value", "score_q_value",
                                                             "failure_rate_delta", "failure_rate_p_value",
                                                             "failure_rate_q_value")})
    return props


def openapi_spec() -> dict[str, Any]:
    stat_props: dict[str, Any] = {name: {"type": ["number", "null"]} for name in STAT_FIELDS}
    stat_props.update({"tenant_id": {"type": "string"}, "model_id": {"type": "string"},  # required in requests
                       "use_case": {"type": ["string", "null"]}, "backend": {"type": ["string", "null"]},
                       "bucket_start": {"type": "string", "format": "date-time"},
                       "source": {"type": "string", "enum": list(STAT_SOURCES)}})
    quality_props: dict[str, Any] = {k: {"type": ["string", "null"]} for k in QUALITY_GROUPABLE}
    quality_props.update({k: {"type": "string"} for k in ("tenant_id", *QUALITY_SERIES)})
    quality_props.update({k: {"type": ["number", "null"]} for k in QUALITY_FIELDS})
    quality_props.update({k: {"type": "string", "format": "date-time"} for k in QUALITY_FIELDS if k.endswith("_at")})
    quality_props["calibrated"] = {"type": ["boolean", "null"], "description": (
        "Judge series: true when every stored calibration of its evaluator_version passed the gate, false "
        "when one failed, null when it was never calibrated (and for checks and reference metrics).")}
    errors = {"400": _ERROR, "401": _ERROR, "403": _ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "infersight query API", "version": "1",
                 "description": "Requests, their evaluations and telemetry, and aggregate stats. "
                                "Authenticate with `Authorization: Bearer <key>`: a tenant key sees only its "
                                "own tenant, an admin key sees all."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
                "RequestRecord": _record_schema(),
                "RequestContent": _record_schema(REQUEST_CONTENT),
                "EvalResult": _record_schema(EVAL_RESULTS),
                "StatsRow": {"type": "object", "properties": stat_props},
                "QualityRow": {"type": "object", "properties": quality_props},
                "DriftRow": {"type": "object", "properties": _drift_props()},
                "Sampling": {"type": "object", "properties": {
                    "default_rate": {"type": "number"}, "forced_all_until": {"type": ["string", "null"]},
                    "tenants": {"type": "array", "items": {"type": "object", "properties": {
                        "tenant": {"type": "string"}, "rate": {"type": "number"},
                        "source": {"type": "string", "enum": ["override", "config", "default"]},
                        "forced_until": {"type": ["string", "null"]}}}}}},
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/requests/{trace_id}": {"get": {
                "summary": "The whole story of one request: record, evaluations, masked content (per the "
                           "tenant's content policy, until text_days), telemetry around it.",
                "parameters": [_param("trace_id", "32 hex digits (the x-trace-id response header).", where="path")],
                "responses": {"200": {"description": "Found", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "record": {"$ref": "#/components/schemas/RequestRecord"},
                        "evaluations": {"type": "array", "items": {"$ref": "#/components/schemas/EvalResult"}},
                        "content": {"type": "array", "items": {"$ref": "#/components/schemas/RequestContent"}},
                        "telemetry": {"type": "array", "items": {"type": "object"}},
                        "related": {"type": "array", "items": {"$ref": "#/components/schemas/RequestRecord"}},
                    }}}}}, "404": _ERROR, **errors},
            }},
            "/api/v1/requests": {"get": {
                "summary": "Request records, newest first, with cursor pagination.",
                "parameters": [*_SCOPE, _param("status", "HTTP status code.", _integer(*STATUS_RANGE)), *_RANGE,
                               *_PAGING],
                "responses": {"200": _page("RequestRecord"), **errors},
            }},
            "/api/v1/stats": {"get": {
                "summary": "Counts, errors, latency quantiles and token sums, grouped and bucketed.",
                "parameters": [*_SCOPE, *_RANGE,
                               _param("group_by", "Comma list of tenant, model, use_case, backend."),
                               _param("resolution", "Bucket size: 30s, 5m, 1h, 1d. Default: one bucket."),
                               _param("window", "Instead of since: the last 15m, 1h, 1d... (default 1h).")],
                "responses": {"200": {"description": "Stats rows", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/StatsRow"}},
                        "since": {"type": "string"}, "until": {"type": "string"}}}}}}, **errors},
            }},
            "/api/v1/evaluations": {"get": {
                "summary": "Single eval results, newest judged request first, with cursor pagination: the "
                           "requests behind a quality row (failed=true lists exactly its failures).",
                "parameters": [*_SCOPE, *_SERIES,
                               _param("label", "e.g. fail, pass, or a judge error's reason (timeout...)."),
                               _param("failed", "true: checks labelled fail and judge errors (what quality "
                                                "counts as failures); false: the rest.", {"type": "boolean"}),
                               _param("min_score", "Lowest score, inclusive (rows without a score never match).",
                                      {"type": "number"}),
                               _param("max_score", "Highest score, inclusive.", {"type": "number"}),
                               *_RANGE, *_PAGING],
                "responses": {"200": _page("EvalResult"), **errors},
            }},
            "/api/v1/calibrations": {"get": {
                "summary": "Stored `infersight eval calibrate` reports, newest first (admin keys only): per "
                           "dimension n, spearman, kendall, kappa with its CI, bias, accuracy and f1, and the gate.",
                "parameters": [_SERIES[1]],
                "responses": {"200": {"description": "Reports", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"data": {"type": "array", "items": {"type": "object"}}}}}}},
                    **errors},
            }},
            "/api/v1/quality": {"get": {
                "summary": "Eval results per (evaluator, evaluator_version, dimension) series; versions never mix.",
                "parameters": _QUALITY_PARAMS,
                "responses": {"200": {"description": "Quality rows", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/QualityRow"}},
                        "since": {"type": "string"}, "until": {"type": "string"}}}}}}, **errors},
            }},
            "/api/v1/quality/drift": {"get": {
                "summary": "Each quality series of the window against the baseline period just before it: "
                           "Welch's t-test on the mean score, a two-proportion test on the failure rate.",
                "parameters": [*_QUALITY_PARAMS,
                               _param("baseline", "Length of the baseline period ending at the window's start "
                                                  "(default 7d).")],
                "responses": {"200": {"description": "Drift rows", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/DriftRow"}},
                        "since": {"type": "string"}, "until": {"type": "string"},
                        "baseline_since": {"type": "string"}, "baseline_until": {"type": "string"},
                        "settings": {"type": "object"}}}}}}, **errors},
            }},
            **_admin_paths(errors),
            **_telemetry_paths(_param, _RANGE, errors),
            "/api/v1/openapi.json": {"get": {"summary": "This document.", "security": [],
                                             "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }


def _admin_paths(errors: dict[str, Any]) -> dict[str, Any]:
    """The sampling admin API (admin keys only; served by every gateway)."""
    ok = {"200": {"description": "The sampling state after the change", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Sampling"}}}}, **errors}
    tenant = _param("tenant", "Tenant id.", where="path")
    return {
        "/api/v1/admin/sampling": {"get": {"summary": "Effective sampling rate per tenant and forced windows.",
                                           "responses": ok}},
        "/api/v1/admin/sampling/{tenant}": {"put": {
            "summary": "Override a tenant's sampling rate at run time ({\"rate\": null} goes back to config).",
            "parameters": [tenant],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["rate"], "additionalProperties": False, "properties": {
                    "rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1}}}}}},
            "responses": {**ok, "404": _ERROR}}},
        "/api/v1/admin/sampling/force": {"post": {
            "summary": "Sample 100% of a tenant (null: all) until the window expires by itself.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["tenant", "duration_s"], "additionalProperties": False, "properties": {
                    "tenant": {"type": ["string", "null"]}, "duration_s": {"type": "number"}}}}}},
            "responses": {**ok, "404": _ERROR}}},
        "/api/v1/admin/sampling/force/{tenant}": {"delete": {
            "summary": "End a forced window early (* for the all-tenants window).", "parameters": [tenant],
            "responses": {**ok, "404": _ERROR}}},
    }
