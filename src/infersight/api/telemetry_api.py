"""The telemetry routes of the query API: samples, latency by load (correlation) and diagnosis.

Telemetry is infrastructure, not tenant data, but it reveals what a tenant's requests ran on. So a
tenant key is not refused: its reads are limited to the models its own requests used in the window
(and, for GPU samples that carry no model, the instances that served them), and correlation and
diagnosis read only its own requests. An admin key sees everything, or a tenant's view with
``tenant=``. ``QueryApi`` resolves the scope (403 for another tenant) before calling ``handle``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from infersight.api.params import Params, bad_param
from infersight.store.base import Store
from infersight.store.telemetry_sql import (
    CORRELATION_METRICS,
    MAX_METRICS,
    CorrelationQuery,
    DiagnosisQuery,
    TelemetryQuery,
)
from infersight.telemetry.diagnosis import DiagnosisSettings, diagnose

ROUTES = ("telemetry", "correlation", "diagnosis")  # under /api/v1/
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
DEFAULT_STALENESS = timedelta(seconds=20)  # 2 x the default 10 s scrape interval
MAX_STALENESS = timedelta(hours=1)


class TelemetryRoutes:
    def __init__(self, store: Store, diagnosis: DiagnosisSettings | None = None) -> None:
        self.store = store
        self.diagnosis = diagnosis or DiagnosisSettings()

    def handle(self, route: str, tenant: str | None, params: Params) -> dict[str, Any]:
        """``route``: one of ROUTES; ``tenant``: the scope QueryApi resolved (None: all tenants)."""
        since, until = window(params)
        if route == "telemetry":
            return self._samples(since, until, tenant, params)
        if route == "correlation":
            return self._correlation(since, until, tenant, params)
        return self._diagnosis(since, until, tenant, params)

    def _samples(self, since: datetime, until: datetime, tenant: str | None, params: Params) -> dict[str, Any]:
        metrics = tuple(dict.fromkeys(m.strip() for m in (params.text("metric") or "").split(",") if m.strip()))
        if len(metrics) > MAX_METRICS:
            raise bad_param("metric", f"at most {MAX_METRICS} metrics at once")
        limit = params.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
        rows, truncated = self.store.telemetry(TelemetryQuery(
            since=since, until=until, metrics=metrics, instance=params.text("instance"),
            model_id=params.text("model"), tenant_id=tenant, limit=limit))
        return {"data": rows, "truncated": truncated, "since": since, "until": until}

    def _correlation(self, since: datetime, until: datetime, tenant: str | None, params: Params) -> dict[str, Any]:
        by = params.text("by")
        if by not in CORRELATION_METRICS:
            raise bad_param("by", f"must be one of {', '.join(CORRELATION_METRICS)}")
        staleness = params.duration("max_staleness") or DEFAULT_STALENESS
        if staleness > MAX_STALENESS:
            raise bad_param("max_staleness", "must be at most 1h")
        rows = self.store.correlation(CorrelationQuery(
            since=since, until=until, by=by, model_id=params.text("model"), instance=params.text("instance"),
            tenant_id=tenant, max_staleness=staleness))
        return {"data": rows, "by": by, "max_staleness_s": staleness.total_seconds(), "since": since, "until": until}

    def _diagnosis(self, since: datetime, until: datetime, tenant: str | None, params: Params) -> dict[str, Any]:
        inputs = self.store.diagnosis_inputs(DiagnosisQuery(
            since=since, until=until, model_id=params.text("model"), instance=params.text("instance"),
            tenant_id=tenant))
        return {"data": diagnose(inputs, self.diagnosis), "since": since, "until": until}


def window(params: Params, default: timedelta = timedelta(hours=1)) -> tuple[datetime, datetime]:
    """``since``/``until``, or ``window`` back from ``until`` (default now): the stats defaults."""
    return params.window(default)
