"""The gateway as one raw ASGI callable: /v1/* inference, /v1/models, /healthz and /metrics.

Raw ASGI rather than a framework on the hot path: the dispatch is a dict lookup, and the benchmark
(benchmarks/README.md) holds the gateway to well under a millisecond of added TTFT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable

import orjson

from infersight.bus.base import Bus
from infersight.config import Settings
from infersight.gateway import errors
from infersight.gateway.asgi import JSON_CT, Receive, Scope, Send, header, send_bytes, send_error, single_header
from infersight.gateway.hooks import RequestTap
from infersight.gateway.metrics import GatewayMetrics, multiprocess_enabled
from infersight.gateway.proxy import InferenceProxy
from infersight.gateway.routing import Router
from infersight.gateway.tenancy import TenantDirectory, bearer_token
from infersight.gateway.tracecontext import from_headers
from infersight.gateway.upstreams.base import Transport

PROM_CT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")

Hook = Callable[[], Awaitable[None]]

BUS_SYNC_S = 1.0
"""With ``--workers N``, how often each worker copies its bus stats into the shared metric files."""


class GatewayApp:
    """Holds the wired parts; ``runtime.build_gateway`` constructs it from settings."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        bus: Bus,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_startup: list[Hook] | None = None,
        on_shutdown: list[Hook] | None = None,
        api: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None,
        admin: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None,
        tap: RequestTap | None = None,
        health: dict[str, Callable[[], object]] | None = None,
        on_scrape: list[Callable[[], None]] | None = None,
    ) -> None:
        self.settings = settings
        self.health = health or {}  # extra /healthz sections (e.g. the eval process); never fail liveness
        self.on_scrape = on_scrape or []  # e.g. the eval bus's stats into its metrics, at each scrape
        self.transport = transport
        self.bus = bus
        self.metrics = metrics or GatewayMetrics()
        self.router = Router(settings)
        self.tenants = TenantDirectory(settings)
        self.proxy = InferenceProxy(settings, transport, bus, self.metrics, self.router, self.tenants, clock, tap)
        self.on_startup = on_startup or []
        self.on_shutdown = on_shutdown or []
        self.api = api  # the query API, mounted under /api/ when a store is configured
        self.admin = admin  # the sampling admin API, under /api/v1/admin/ when evaluation is on
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/metrics"): self._metrics,
        }
        self._allowed: dict[str, bytes] = {}  # path -> its methods, for the Allow header of a 405
        for method, path in self._routes:
            known = self._allowed.get(path)
            self._allowed[path] = method.encode() if known is None else known + b", " + method.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                path = path[:-1]
            handler = self._routes.get((scope["method"], path))
            if handler is not None:
                await handler(scope, receive, send)
            elif path.startswith("/v1/models/") and scope["method"] == "GET":
                await self._model(scope, send, path[len("/v1/models/"):])
            elif path.startswith("/api/v1/admin/") and self.admin is not None:
                await self.admin(scope, receive, send)
            elif path.startswith("/api/") and self.api is not None:
                await self.api(scope, receive, send)
            elif path in self._allowed:
                # RFC 9110: a 405 must say which methods the path does take.
                await send_error(send, errors.method_not_allowed(scope["method"], path),
                                 [*_trace(scope), (b"allow", self._allowed[path])])
            else:
                await self._refuse(scope, send, errors.not_found(path))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.handle(scope, receive, send, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy.handle(scope, receive, send, "completions")

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._models_refusal(scope)
        if refusal is not None:
            return await self._refuse(scope, send, refusal)
        data = [_model_object(model, backend) for model, backend in self.router.models]
        await send_bytes(send, 200, orjson.dumps({"object": "list", "data": data}), [JSON_CT, *_trace(scope)])

    async def _model(self, scope: Scope, send: Send, model: str) -> None:
        """``GET /v1/models/{model}``: what ``client.models.retrieve`` calls (it was a 404 ``unknown_url``)."""
        refusal = self._models_refusal(scope)
        if refusal is None:
            route = self.router.route(model)
            if route is not None:
                body = orjson.dumps(_model_object(model, route.backend))
                return await send_bytes(send, 200, body, [JSON_CT, *_trace(scope)])
            refusal = errors.unknown_model(model)
        await self._refuse(scope, send, refusal)

    def _models_refusal(self, scope: Scope) -> errors.GatewayError | None:
        """Models are listed to a tenant or an admin key."""
        try:
            key = bearer_token(single_header(scope, b"authorization"))
        except errors.GatewayError as exc:  # two different keys: which caller is it?
            return exc
        if key is None:
            return errors.missing_key()
        if self.tenants.tenant_for_key(key) is None and not self.tenants.is_admin(key):
            return errors.unknown_key()
        return None

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.bus.stats()
        # pid: with --workers N each worker answers for itself; this says which one did
        body: dict[str, object] = {"status": "ok", "pid": os.getpid(),
                                   "bus": {"queued": stats.queued, "dropped": stats.dropped}}
        for name, read in self.health.items():
            body[name] = read()
        await send_bytes(send, 200, orjson.dumps(body), [JSON_CT])

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            refusal = self.tenants.metrics_refusal(single_header(scope, b"authorization"))
        except errors.GatewayError as exc:
            refusal = exc
        if refusal is not None:
            return await self._refuse(scope, send, refusal)
        self._sync_stats()
        # off the loop: the eval process's metrics are asked for at scrape time (a round trip)
        await send_bytes(send, 200, await asyncio.to_thread(self.metrics.exposition), [PROM_CT])

    async def _refuse(self, scope: Scope, send: Send, error: errors.GatewayError) -> None:
        await send_error(send, error, _trace(scope))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        sync: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.on_startup:
                        await hook()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                sync = asyncio.create_task(self._sync_bus_metrics()) if multiprocess_enabled() else None
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if sync is not None:
                    sync.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sync
                for hook in self.on_shutdown:
                    await hook()
                if sync is not None:  # the last drops count, after the final flush (the eval bus's too)
                    self._sync_stats()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sync_bus_metrics(self) -> None:
        """Keep this worker's bus gauges current while it serves nothing.

        Why: with ``--workers N`` /metrics sums every worker's metric files, but a worker wrote its
        bus stats only when it served a request or a scrape, and Prometheus keeps one connection
        (so one worker) for its scrapes. An idle worker kept reporting the records it had queued
        long after they were delivered, and its drops went uncounted until it served again; the
        eval bus's drops (``on_scrape``) likewise. On the event loop, beside the proxy's own syncs,
        so the two never race."""
        while True:
            await asyncio.sleep(BUS_SYNC_S)
            self._sync_stats()

    def _sync_stats(self) -> None:
        self.metrics.sync_bus(self.bus.stats())
        for sync in self.on_scrape:
            sync()


def _model_object(model: str, backend: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": 0, "owned_by": backend}


def _trace(scope: Scope) -> list[tuple[bytes, bytes]]:
    trace = from_headers(header(scope, b"traceparent"), header(scope, b"x-trace-id"))
    return [(b"x-trace-id", trace.trace_id.encode())]
