"""The query API as a raw ASGI app, mounted by the gateway under /api/.

Store calls are synchronous (DuckDB, chdb): they run in a worker thread so the gateway's event loop
keeps relaying tokens. Scope is enforced here, before any store call: a tenant key is pinned to its
own tenant, an admin key may name any tenant, anything else is 401.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson

from infersight.api.openapi import openapi_spec
from infersight.api.params import EARLIEST, MAX_LIST_LIMIT, STATUS_RANGE, Params, bad_param, check_order
from infersight.api.telemetry_api import ROUTES as TELEMETRY_ROUTES
from infersight.api.telemetry_api import TelemetryRoutes
from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.evaluation.drift import compare_windows
from infersight.evaluation.settings import DriftSettings
from infersight.gateway import errors
from infersight.gateway.asgi import JSON_CT, Receive, Scope, Send, header, send_bytes, send_error
from infersight.gateway.errors import GatewayError
from infersight.gateway.tenancy import TenantDirectory, bearer_token
from infersight.model.evaluation import JUDGE_EVALUATOR
from infersight.store.base import InvalidQuery, RequestFilter, StatsQuery, Store, StoreError, StoreUnavailable
from infersight.store.cursor import decode_cursor
from infersight.store.evaluations_sql import EvaluationFilter, decode_evaluation_cursor
from infersight.store.quality_sql import QUALITY_GROUPABLE, QualityQuery
from infersight.telemetry.diagnosis import DiagnosisSettings

PREFIX = "/api/v1"
TELEMETRY_WINDOW = timedelta(minutes=5)
log = logging.getLogger("infersight.api")


def _forbidden(message: str) -> GatewayError:
    return GatewayError(403, message, type="permission_error", code="forbidden")


class _Caller:
    __slots__ = ("tenant_id", "admin")

    def __init__(self, tenant_id: str | None, admin: bool) -> None:
        self.tenant_id = tenant_id
        self.admin = admin

    def scope(self, requested: str | None) -> str | None:
        """The tenant a query is limited to; None only for an admin asking for all tenants."""
        if self.admin:
            return requested
        if requested is not None and requested != self.tenant_id:
            raise _forbidden("A tenant key can only read its own tenant's data.")
        return self.tenant_id


QUERY_THREADS = 4
"""The query API's store reads run on threads of their own: a store that does not answer (a frozen
store process, waited for up to its call timeout) holds these, never the default executor that
``/metrics`` and the admin API use (six dashboard polls took it whole: the incident tools went dark)."""


class QueryApi:
    def __init__(self, store: Store, tenants: TenantDirectory, diagnosis: DiagnosisSettings | None = None,
                 drift: DriftSettings | None = None, calibrations: CalibrationIndex | None = None) -> None:
        self.store = store
        self.drift = drift or DriftSettings()
        self.calibrations = calibrations  # stored `eval calibrate` reports: /calibrations, /quality's `calibrated`
        self.telemetry = TelemetryRoutes(store, diagnosis)  # /telemetry, /correlation, /diagnosis
        self.tenants = tenants
        self._pool = ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="infersight-query")
        spec = openapi_spec()
        self._spec = orjson.dumps(spec)
        # The parameters each GET route reads, from its OpenAPI entry: anything else is a 400, so the
        # document and what the endpoints accept cannot drift apart.
        self._accepts = {path: frozenset(p["name"] for p in op["get"].get("parameters", []) if p["in"] == "query")
                         for path, op in spec["paths"].items() if "get" in op}

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/")
        headers = [(b"cache-control", b"no-store")]
        try:
            if path == f"{PREFIX}/openapi.json" and scope["method"] == "GET":
                await send_bytes(send, 200, self._spec, [JSON_CT])  # no secrets, no data: needs no key
                return
            caller = self._caller(scope)  # before the method: without a valid key every answer is 401
            if scope["method"] != "GET":
                raise errors.method_not_allowed(scope["method"], path)
            params = Params(scope.get("query_string", b""))
            one = path.startswith(f"{PREFIX}/requests/") and path.count("/") == 4
            accepted = self._accepts.get(f"{PREFIX}/requests/{{trace_id}}" if one else path)
            if accepted is not None:  # an unknown path is a 404 below, whatever its parameters
                params.check(accepted)
            if path == f"{PREFIX}/requests":
                body = await self._off_loop(self._list, caller, params)
            elif path == f"{PREFIX}/stats":
                body = await self._off_loop(self._stats, caller, params)
            elif path == f"{PREFIX}/evaluations":
                body = await self._off_loop(self._evaluations, caller, params)
            elif path == f"{PREFIX}/calibrations":
                body = await self._off_loop(self._calibrations, caller, params)
            elif path == f"{PREFIX}/quality":
                body = await self._off_loop(self._quality, caller, params)
            elif path == f"{PREFIX}/quality/drift":
                body = await self._off_loop(self._drift, caller, params)
            elif path.removeprefix(f"{PREFIX}/") in TELEMETRY_ROUTES:
                tenant = caller.scope(params.text("tenant"))
                body = await self._off_loop(self.telemetry.handle, path.removeprefix(f"{PREFIX}/"), tenant, params)
            elif one:
                body = await self._off_loop(self._one, caller, path.rsplit("/", 1)[1])
            else:
                raise errors.not_found(path)
            await send_bytes(send, 200, orjson.dumps(body, option=orjson.OPT_UTC_Z), [JSON_CT, *headers])
        except GatewayError as exc:
            await send_error(send, exc, headers)
        except StoreUnavailable:
            await send_error(send, GatewayError(503, "The store is unavailable; retry shortly.", type="api_error",
                                                code="store_unavailable"), headers)
        except InvalidQuery as exc:  # written for the caller: names the parameter, nothing internal
            await send_error(send, GatewayError(400, str(exc), code="invalid_query"), headers)
        except StoreError as exc:
            # The engine's own words name the store's file path and internals: they go to the log (query
            # parameters and SQL errors only, never request text), the caller gets a fixed message.
            log.warning("query refused by the store", extra={"route": path[:200], "error": str(exc)[:500]})
            await send_error(send, GatewayError(400, "The store could not run this query; check its parameters.",
                                                code="invalid_query"), headers)
        except Exception as exc:  # noqa: BLE001 - any other failure still answers in the error shape
            log.error("query failed", extra={"route": path[:200], "error_type": type(exc).__name__}, exc_info=True)
            await send_error(send, GatewayError(500, "The query failed unexpectedly.", type="api_error",
                                                code="internal_error"), headers)

    def _caller(self, scope: Scope) -> _Caller:
        authorization = header(scope, b"authorization")
        key = bearer_token(authorization)
        if key is None:
            raise errors.missing_key()
        if self.tenants.is_admin(key):
            return _Caller(None, True)
        tenant = self.tenants.tenant_for_key(key)
        if tenant is None:
            raise errors.unknown_key()
        return _Caller(tenant.id, False)

    def _one(self, caller: _Caller, trace_id: str) -> dict[str, Any]:
        tenant = caller.scope(None)
        rows = self.store.get_requests(trace_id.lower(), tenant_id=tenant)
        if not rows:
            raise GatewayError(404, f"No request with trace id '{trace_id[:64]}'.", code="not_found")
        record = rows[-1]
        started = record.get("started_at")
        telemetry = (self.store.telemetry_around(record["model_id"], started, TELEMETRY_WINDOW)
                     if isinstance(started, datetime) else [])
        return {
            "record": record,
            "evaluations": self.store.eval_results_for(trace_id.lower(), tenant_id=tenant),
            "content": self.store.content_for(trace_id.lower(), tenant_id=tenant),  # masked, per policy
            "telemetry": telemetry,
            "related": rows[:-1],
        }

    def _list(self, caller: _Caller, params: Params) -> dict[str, Any]:
        flt = RequestFilter(
            tenant_id=caller.scope(params.text("tenant")),
            model_id=params.text("model"),
            use_case=params.text("use_case"),
            status_code=params.integer("status", None, *STATUS_RANGE),
            since=params.time("since"),
            until=params.time("until"),
        )
        check_order(flt.since, flt.until, before_1970=True)  # as /stats: an empty page hid swapped bounds
        limit = params.integer("limit", 100, 1, MAX_LIST_LIMIT) or 100
        cursor = _checked_cursor(params, decode_cursor)
        page = self.store.list_requests(flt, limit=limit, cursor=cursor)
        return {"data": page.data, "next_cursor": page.next_cursor}

    def _evaluations(self, caller: _Caller, params: Params) -> dict[str, Any]:
        """Single eval results, newest judged request first: which requests a quality row counts."""
        flt = EvaluationFilter(
            **_series_filters(caller, params),
            label=params.text("label"),
            failed=params.boolean("failed"),
            min_score=params.number("min_score"),
            max_score=params.number("max_score"),
            since=params.time("since"),
            until=params.time("until"),
        )
        check_order(flt.since, flt.until, before_1970=True)
        if flt.min_score is not None and flt.max_score is not None and flt.min_score > flt.max_score:
            raise bad_param("min_score", "must not be above max_score")
        limit = params.integer("limit", 100, 1, MAX_LIST_LIMIT) or 100
        cursor = _checked_cursor(params, decode_evaluation_cursor)
        page = self.store.list_evaluations(flt, limit=limit, cursor=cursor)
        return {"data": page.data, "next_cursor": page.next_cursor}

    def _stats(self, caller: _Caller, params: Params) -> dict[str, Any]:
        since, until = params.window(timedelta(hours=1))
        query = StatsQuery(
            since=since,
            until=until,
            group_by=params.group_by(),
            resolution=params.duration("resolution"),
            tenant_id=caller.scope(params.text("tenant")),
            model_id=params.text("model"),
            use_case=params.text("use_case"),
        )
        return {"data": self.store.stats(query), "since": since, "until": until}

    def _quality(self, caller: _Caller, params: Params) -> dict[str, Any]:
        """Scores per (evaluator, evaluator_version, dimension) series, optionally per tenant, model and
        use case. Versions are never mixed: each is its own row."""
        since, until = params.window(timedelta(hours=24))
        query = self._quality_query(caller, params, since, until)
        rows = self.store.quality(query)
        standing = self.calibrations.standing() if self.calibrations is not None else {}
        for row in rows:  # a judge series is only worth its version's agreement with people
            row["calibrated"] = standing.get(row["evaluator_version"]) if row["evaluator"] == JUDGE_EVALUATOR else None
        return {"data": rows, "since": since, "until": until}

    def _calibrations(self, caller: _Caller, params: Params) -> dict[str, Any]:
        """Stored calibration reports, newest first (admin keys: they name the operator's golden files)."""
        if not caller.admin:
            raise _forbidden("Calibration reports are for admin keys.")
        version = params.text("evaluator_version")
        return {"data": self.calibrations.summaries(version) if self.calibrations is not None else []}

    def _drift(self, caller: _Caller, params: Params) -> dict[str, Any]:
        """Each series of the window against the ``baseline`` period just before it (default 7d)."""
        since, until = params.window(timedelta(hours=24))
        baseline = params.duration("baseline") or timedelta(days=7)
        try:
            baseline_since = max(since - baseline, EARLIEST)
        except OverflowError:
            baseline_since = EARLIEST
        query = replace(self._quality_query(caller, params, since, until), representative_only=True)
        current = self.store.quality(query)
        before = self.store.quality(replace(query, since=baseline_since, until=since)) if baseline_since < since else []
        rows = compare_windows(current, before, query.group_by, self.drift)
        return {"data": rows, "since": since, "until": until, "baseline_since": baseline_since,
                "baseline_until": since, "settings": self.drift.model_dump()}

    def _quality_query(self, caller: _Caller, params: Params, since: datetime, until: datetime) -> QualityQuery:
        return QualityQuery(
            since=since,
            until=until,
            group_by=params.group_by(allowed=QUALITY_GROUPABLE, always=("dimension",)),
            **_series_filters(caller, params),
        )


def _series_filters(caller: _Caller, params: Params) -> dict[str, str | None]:
    """The filters /quality, /quality/drift and /evaluations share, the tenant scoped to the caller."""
    return {
        "tenant_id": caller.scope(params.text("tenant")),
        "model_id": params.text("model"),
        "use_case": params.text("use_case"),
        "evaluator": params.text("evaluator"),
        "evaluator_version": params.text("evaluator_version"),
        "dimension": params.text("dimension"),
    }


def _checked_cursor(params: Params, decode: Callable[[str], object]) -> str | None:
    """The ``cursor`` parameter, checked here so that a bad one is a 400 naming the parameter."""
    cursor = params.text("cursor")
    if cursor is not None:
        try:
            decode(cursor)
        except InvalidQuery:
            raise GatewayError(400, "Invalid value for 'cursor': pass next_cursor from the previous page.",
                               code="invalid_query", param="cursor") from None
    return cursor
