"""The admin API for evaluation sampling, mounted by the gateway under /api/v1/admin/.

Admin keys only (``admin_api_keys``): a tenant key gets 403, no key 401. Changes take effect at
once with no restart, on every gateway process that shares ``storage.path`` (see ``Sampler``).

- ``GET  /api/v1/admin/sampling``: the set and effective rate per tenant, its source, forced windows,
  and the eval breaker's state (``breaker``).
- ``PUT  /api/v1/admin/sampling/{tenant}`` ``{"rate": 0.2}``; ``{"rate": null}`` goes back to config.
- ``POST /api/v1/admin/sampling/force`` ``{"tenant": "acme" | null, "duration_s": 900}``: sample 100%
  until the returned ``forced_until``; the window ends by itself.
- ``DELETE /api/v1/admin/sampling/force/{tenant}`` (``*`` for the all-tenants window): end it early.

Bodies take only the fields named above (anything else is a 400: a typo must not be a 200 that did
something else), and a shared store that cannot be written is a 503 that changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timezone
from typing import Any

import orjson

from infersight.api.params import bad_param
from infersight.gateway import errors
from infersight.gateway.asgi import JSON_CT, Receive, Scope, Send, header, header_map, read_body, send_bytes, send_error
from infersight.gateway.errors import GatewayError
from infersight.gateway.tenancy import TenantDirectory, bearer_token
from infersight.evaluation.breaker import EvalBreaker
from infersight.evaluation.overrides import OverridesUnavailable
from infersight.evaluation.sampler import ALL_TENANTS, Sampler

log = logging.getLogger("infersight.api.admin")

PREFIX = "/api/v1/admin/sampling"
MAX_BODY = 16 * 1024
RATE_FIELDS = frozenset({"rate"})
FORCE_FIELDS = frozenset({"tenant", "duration_s"})


class AdminApi:
    def __init__(self, sampler: Sampler, tenants: TenantDirectory, tenant_ids: list[str],
                 breaker: EvalBreaker | None = None) -> None:
        self.sampler = sampler
        self.breaker = breaker
        self.tenants = tenants
        self.tenant_ids = tenant_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        headers = [(b"cache-control", b"no-store")]
        try:
            self._require_admin(scope)
            # The sampler's calls read and write the shared overrides (a file under an flock, or a
            # Redis key): off the event loop, so a slow disk, a held lock or a Redis that does not
            # answer stalls this call, never the streams the gateway relays meanwhile.
            if path == PREFIX and method == "GET":
                body = await asyncio.to_thread(self._snapshot)
            elif path == f"{PREFIX}/force" and method == "POST":
                body = await asyncio.to_thread(self._force, await self._json(scope, receive, FORCE_FIELDS))
            elif path.startswith(f"{PREFIX}/force/") and method == "DELETE":
                tenant = path.rsplit("/", 1)[1]
                target = None if tenant == ALL_TENANTS else self._tenant(tenant)
                if not await asyncio.to_thread(self.sampler.end_forced, target):
                    raise GatewayError(404, f"No forced window for '{tenant[:64]}'.", code="not_found")
                body = await asyncio.to_thread(self._snapshot)
            elif path.startswith(f"{PREFIX}/") and path.count("/") == 5 and method == "PUT":
                tenant = self._tenant(path.rsplit("/", 1)[1])
                fields = await self._json(scope, receive, RATE_FIELDS)
                body = await asyncio.to_thread(self._set_rate, tenant, fields)
            elif path.startswith(PREFIX):
                raise errors.method_not_allowed(method, path)
            else:
                raise errors.not_found(path)
            await send_bytes(send, 200, orjson.dumps(body), [JSON_CT, *headers])
        except OverridesUnavailable as exc:
            # a full disk, a read-only volume, Redis down: used to escape as uvicorn's bare text 500
            log.warning("sampling overrides store unavailable; admin change refused",
                        extra={"fields": {"error": str(exc)}})
            await send_error(send, GatewayError(
                503, "The shared sampling overrides could not be written; nothing was changed. Try again.",
                type="api_error", code="overrides_unavailable"), headers)
        except GatewayError as exc:
            await send_error(send, exc, headers)

    def _require_admin(self, scope: Scope) -> None:
        authorization = header(scope, b"authorization")
        key = bearer_token(authorization)
        if key is None:
            raise errors.missing_key()
        if self.tenants.is_admin(key):
            return
        if self.tenants.tenant_for_key(key) is not None:
            raise GatewayError(403, "Sampling is changed with an admin key.", type="permission_error",
                               code="forbidden")
        raise errors.unknown_key()

    async def _json(self, scope: Scope, receive: Receive, fields: frozenset[str]) -> dict[str, Any]:
        raw = await read_body(receive, header_map(scope), MAX_BODY)
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise errors.invalid_json(str(exc).split(":")[0]) from None
        if not isinstance(body, dict):
            raise errors.invalid_json("the top level must be a JSON object")
        for name in body:
            if name not in fields:
                raise bad_param(str(name)[:64], f"unknown field; expected {', '.join(sorted(fields))}")
        return body

    def _tenant(self, tenant: str) -> str:
        if tenant not in self.tenant_ids:
            raise GatewayError(404, f"Unknown tenant '{tenant[:64]}'.", code="not_found")
        return tenant

    def _snapshot(self) -> dict[str, Any]:
        snap = self.sampler.snapshot(self.tenant_ids)
        for row in snap["tenants"]:
            row["forced_until"] = _iso(row["forced_until"])
        snap["forced_all_until"] = _iso(snap["forced_all_until"])
        if self.breaker is not None:
            snap["breaker"] = self.breaker.snapshot()
        return snap

    def _set_rate(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        if "rate" not in body:
            raise errors.missing_field("rate")
        rate = body["rate"]
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate) or not 0 <= rate <= 1):
            raise bad_param("rate", "must be a number between 0 and 1, or null")
        self.sampler.set_rate(tenant, None if rate is None else float(rate))
        return self._snapshot()

    def _force(self, body: dict[str, Any]) -> dict[str, Any]:
        if "tenant" not in body:
            # left out was read as null: every tenant forced (and judged) by a body that named none
            raise errors.missing_field("tenant")
        tenant = body["tenant"]
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            # "" was read as null: a typo forced 100% sampling (and judge spend) on every tenant
            raise bad_param("tenant", "must be a tenant id or null (all tenants)")
        duration = body.get("duration_s")
        if duration is None:
            raise errors.missing_field("duration_s")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise bad_param("duration_s", "must be a number of seconds")
        try:
            deadline = self.sampler.force(None if tenant is None else self._tenant(tenant), float(duration))
        except ValueError as exc:
            raise bad_param("duration_s", str(exc)) from None
        return {**self._snapshot(), "forced": {"tenant": tenant, "until": _iso(deadline)}}


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()
