"""The inference hot path: authenticate, validate, route, forward, relay, measure, record.

Bodies are forwarded byte for byte, with one exception: a streaming request that did not ask for
usage gets ``stream_options.include_usage`` added, and the usage-only chunk that this produces is
removed from what the client sees. Everything after the last byte to the client (record assembly,
metrics, the access log, publishing to the bus) is cheap and never does I/O.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import orjson

from infersight.bus.base import Bus
from infersight.config import Settings
from infersight.gateway import errors
from infersight.gateway.asgi import ClientGone, Headers, Receive, Scope, Send, header_map, read_body
from infersight.gateway.asgi import forward_headers, hop_by_hop, response_hop_names, send_bytes, send_error
from infersight.gateway.asgi import single_header
from infersight.gateway.engine_timings import observe_headers, observe_timings
from infersight.gateway.hash_key import prompt_hash_key
from infersight.gateway.hooks import RequestTap, ResponseCapture
from infersight.gateway.meter import StreamMeter, many_choices, usage_tokens
from infersight.gateway.metrics import UNKNOWN, GatewayMetrics
from infersight.gateway.routing import Route, Router
from infersight.gateway.sse import DONE, SseSplitter, inspect_chunk, inspect_object, parses, plain_output_chunk
from infersight.gateway.sse import plain_output_events
from infersight.gateway.tenancy import UNAUTHENTICATED, TenantDirectory, bearer_token
from infersight.gateway.tokens import count_prompt, prompt_hash, prompt_text
from infersight.gateway.tracecontext import TraceContext, from_headers
from infersight.gateway.upstreams.base import Transport, UpstreamError, UpstreamRequest, UpstreamResponse
from infersight.gateway.upstreams.base import UpstreamTimeout
from infersight.model import RequestRecord

log = logging.getLogger("infersight.access")
errlog = logging.getLogger("infersight.gateway")

# Client headers never forwarded: hop-by-hop, credentials and controls meant for the gateway (a key in
# ``api-key`` (Azure OpenAI's clients) or ``x-api-key`` is the caller's, never the engine's), and
# compression (the relay must read the engine's stream in clear).
_DROP_REQUEST_HEADERS = frozenset(
    {
        b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
        b"authorization", b"api-key", b"x-api-key", b"cookie", b"proxy-authorization", b"proxy-connection",
        b"accept-encoding",
        b"traceparent", b"x-trace-id", b"x-infersight-use-case", b"x-infersight-request-type", b"expect",
    }
)
_DROP_RESPONSE_HEADERS = frozenset(
    {"content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding", "server", "date",
     "x-trace-id", "set-cookie"}
)
_HEADER_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what uvicorn refuses in a header value
REQUIRED_FIELD = {"chat": "messages", "completions": "prompt"}
MAX_RESPONSE_BYTES = 64 << 20
"""Largest non-streamed engine response the gateway holds to relay (it reads it whole, to measure it).
Far above a real answer; an engine or a proxy gone wrong must not fill the gateway's memory."""
CLIENT_CLOSED_STATUS = 499  # nginx's convention for "client closed request"


class _Flight:
    """One request in flight: what the exchange writes to, shared with the disconnect watcher."""

    __slots__ = ("record", "meter", "send", "trace_headers", "strip_usage", "done", "client_gone", "finish", "tapped",
                 "capture", "delivered")

    def __init__(self, record: RequestRecord, meter: StreamMeter, send: Send, trace_headers: Headers) -> None:
        self.record = record
        self.meter = meter
        self.send = send
        self.trace_headers = trace_headers
        self.strip_usage = False
        self.done = False
        self.client_gone = False
        # the stream's [DONE] went to the client: it holds the whole answer, and the openai client
        # closes right then, before the engine ends its body; that close is not a disconnect (was 499)
        self.delivered = False
        self.tapped = False  # the evaluation tap saw the request start (it is routed and authenticated)
        self.capture: ResponseCapture | None = None  # the response's bytes, when the tap asked for them
        # Completes and publishes the record. Called just before the last byte goes to the client, so
        # that a client holding a complete response implies a record already in the bus's journal.
        self.finish: Callable[[], None] = lambda: None


def _client_left(record: RequestRecord, meter: StreamMeter) -> None:
    """The client hung up before the end. If the engine had already reported a failure in the
    stream, that is the request's error (the ``openai`` client raises on such an event and closes):
    recording only the disconnect hid an engine failure from stats and error sampling."""
    record.client_disconnected = True
    if meter.error is not None:
        record.error_type = "upstream_stream_error"
    else:
        record.status_code, record.error_type = CLIENT_CLOSED_STATUS, "client_disconnected"


class InferenceProxy:
    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        bus: Bus,
        metrics: GatewayMetrics,
        router: Router,
        tenants: TenantDirectory,
        clock: Callable[[], float] = time.perf_counter,
        tap: RequestTap | None = None,
    ) -> None:
        self.settings = settings
        self.tap = tap  # sampling and content for evaluation; None: the gateway only measures
        self.transport = transport
        self.bus = bus
        self.metrics = metrics
        self.router = router
        self.tenants = tenants
        self.clock = clock
        self.max_body = settings.server.max_body_bytes
        self.access_log = settings.logging.access_log
        self.hash_key = prompt_hash_key(settings.storage.path)

    async def handle(self, scope: Scope, receive: Receive, send: Send, api: str) -> None:
        t0 = self.clock()
        wall = time.time()
        headers = header_map(scope)
        trace = from_headers(_text(headers.get(b"traceparent")), _text(headers.get(b"x-trace-id")))
        trace_headers: Headers = [(b"x-trace-id", trace.trace_id.encode())]
        record = RequestRecord(
            trace_id=trace.trace_id, span_id=trace.span_id, tenant_id=UNAUTHENTICATED, model_id="", backend="", api=api,
            parent_span_id=trace.parent_span_id, trace_flags=trace.flags,
        )
        meter = StreamMeter(self.clock, t0)
        flight = _Flight(record, meter, send, trace_headers)
        tenant_label, model_label = UNAUTHENTICATED, UNKNOWN
        estimate: int | None = None
        body: dict[str, Any] | None = None
        self.metrics.inflight.inc()

        def finish() -> None:
            if flight.finish is _noop:
                return
            flight.finish = _noop
            meter.end()
            self.metrics.inflight.dec()
            self._finish(record, meter, wall, body, estimate, tenant_label, model_label, flight)

        flight.finish = finish
        try:
            key = bearer_token(single_header(scope, b"authorization"))
            if key is None:
                raise errors.missing_key()
            tenant = self.tenants.tenant_for_key(key)
            if tenant is None:
                raise errors.unknown_key()
            record.tenant_id = tenant_label = tenant.id
            record.use_case = tenant.use_case(_text(headers.get(b"x-infersight-use-case")))
            record.request_type = tenant.request_type(_text(headers.get(b"x-infersight-request-type")))
            raw = await read_body(receive, headers, self.max_body)
            body = _parse_body(raw, api)
            model = body["model"]
            record.model_id = model[:256]
            route = self.router.route(model)
            if route is None:
                raise errors.unknown_model(model)
            model_label = model
            record.backend, record.endpoint_type, record.instance = route.backend, route.endpoint_type, route.instance
            record.stream = stream = body.get("stream") is True
            if stream and many_choices(body, api):
                meter.lead_times = []  # ITL per choice (meter.py)
            estimate, exact = count_prompt(route.counter, body, api)
            record.prompt_tokens_estimated = estimate
            record.prompt_tokens_estimate_kind = "tokenizer" if exact else "heuristic"
            forward = body if self.tap is None else self._tap_upstream_body(flight.record, body)
            if stream and not _client_wants_usage(body):
                options = body.get("stream_options")
                forward = {**forward, "stream_options": {**options, "include_usage": True} if isinstance(
                    options, dict) else {"include_usage": True}}
                flight.strip_usage = True
            if forward is not body:
                raw = orjson.dumps(forward)
            if self.tap is not None:
                self._tap_begin(flight, body)
            upstream = UpstreamRequest("POST", route.urls[api], _upstream_headers(scope["headers"], trace, route), raw)
            await self._guarded(upstream, route, flight, receive)
        except errors.GatewayError as exc:
            record.status_code, record.error_type = exc.status, exc.error_type
            finish()
            await send_error(send, exc, trace_headers)
        except ClientGone:
            _client_left(record, meter)
        finally:
            finish()

    async def _guarded(self, upstream: UpstreamRequest, route: Route, flight: _Flight, receive: Receive) -> None:
        """Run the upstream exchange; a client disconnect cancels it (and with it the engine's work)."""
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, flight))
        try:
            await self._exchange(upstream, route, flight)
        except asyncio.CancelledError:
            if not flight.client_gone:
                raise
            task.uncancel()
            _client_left(flight.record, flight.meter)
        finally:
            flight.done = True
            watcher.cancel()

    async def _exchange(self, upstream: UpstreamRequest, route: Route, flight: _Flight) -> None:
        record = flight.record
        try:
            response = await self.transport.send(upstream)
        except UpstreamTimeout:
            raise errors.upstream_timeout(route.backend) from None
        except UpstreamError:
            raise errors.upstream_unreachable(route.backend) from None
        try:
            observe_headers(response.headers, record, route.instance_header)
            if response.status in (401, 407):  # the engine refused *our* key: never relayed (errors.py)
                raise errors.upstream_auth_failed(route.backend, response.status)
            out_headers = [*_response_headers(response.headers), *flight.trace_headers]
            content_type = response.headers.get("content-type", "")
            if response.status < 400 and record.stream and content_type.startswith("text/event-stream"):
                record.status_code = response.status
                await self._relay(response, flight, out_headers)
                return
            try:
                payload = await _read_capped(response, MAX_RESPONSE_BYTES)
            except _TooLarge:
                raise errors.upstream_response_too_large(route.backend, MAX_RESPONSE_BYTES) from None
            except UpstreamTimeout:
                raise errors.upstream_timeout(route.backend) from None
            except UpstreamError:
                raise errors.upstream_unreachable(route.backend) from None
            flight.meter.end()
            record.status_code = response.status
            if flight.capture is not None:
                flight.capture.sse = False
                flight.capture.add(payload)
            _observe_json_body(payload, record, flight.meter)
            flight.done = True
            flight.finish()
            await send_bytes(flight.send, response.status, payload, out_headers)
        finally:
            await response.aclose()

    async def _relay(self, response: UpstreamResponse, flight: _Flight, out_headers: Headers) -> None:
        record, meter, send, strip_usage = flight.record, flight.meter, flight.send, flight.strip_usage
        capture = flight.capture
        if capture is not None:
            capture.sse = True
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        splitter = SseSplitter()
        clock = self.clock
        output_times = meter.output_times
        tail = b""
        saw_done = malformed = False
        fast = meter.lead_times is None  # several choices: every event is inspected for its choice index
        try:
            async for chunk in response.aiter_bytes():
                now = clock()
                if capture is not None:
                    capture.add(chunk)
                if fast and not splitter.pending:
                    plain = plain_output_events(chunk)
                    if plain:
                        output_times.extend([now] * plain)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        continue
                out: list[bytes] = []
                for event, data in splitter.feed(chunk):
                    if data is not None:
                        if fast and plain_output_chunk(data):
                            output_times.append(now)
                            out.append(event)
                            continue
                        info = inspect_chunk(data)
                        if info is not None:
                            meter.observe(info, now)
                            if strip_usage and info.usage_only:
                                continue
                        elif data == DONE:
                            saw_done = True
                        else:  # not an object (rare): the openai client raises on one that is not JSON
                            malformed = malformed or not parses(data)
                    out.append(event)
                if out:
                    await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                    flight.delivered = saw_done
            tail = splitter.remainder()
            saw_done = saw_done or DONE in tail  # a last event the engine did not terminate
        except UpstreamError as exc:
            # Headers are gone already: tell the client in-band, the way OpenAI reports stream errors.
            record.error_type = exc.error_type
            # The engine's unfinished event is dropped: glued to ours, it made one broken JSON line that
            # the openai client failed on (a JSONDecodeError) instead of raising this error.
            splitter.remainder()
            message = {"error": {"message": str(exc), "type": "api_error", "param": None, "code": exc.error_type}}
            tail = b"data: " + orjson.dumps(message) + b"\n\n"
        meter.end()
        if meter.error is not None and record.error_type is None:
            record.error_type = "upstream_stream_error"
        elif malformed and record.error_type is None:
            record.error_type = "upstream_malformed_event"
        elif record.error_type is None and not saw_done and meter.finish_reason is None:
            # The engine closed the stream cleanly but mid-answer: no finish_reason, no [DONE]. The
            # client saw a 200 and a cut answer; the record says so, and stats count it as an error.
            record.error_type = "upstream_incomplete_stream"
        flight.done = True
        flight.finish()
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    def _finish(
        self,
        record: RequestRecord,
        meter: StreamMeter,
        wall: float,
        body: dict[str, Any] | None,
        estimate: int | None,
        tenant_label: str,
        model_label: str,
        flight: _Flight,
    ) -> None:
        """Complete the record from the meter, then metrics, access log and bus. No I/O here."""
        record.started_at = datetime.fromtimestamp(wall, timezone.utc).isoformat()
        record.total_ms = meter.total_ms
        record.finish_reason = meter.finish_reason
        if meter.timings is not None:
            observe_timings(meter.timings, record)
        prompt, completion, cached, reasoning = usage_tokens(meter.usage)
        if prompt is not None or completion is not None:
            record.token_source = "backend"
            record.prompt_tokens, record.completion_tokens = prompt, completion
            record.cached_prompt_tokens, record.reasoning_tokens = cached, reasoning
        else:
            record.token_source = "estimate"
            # An error answer with no output (the engine's 429 or 500, a timeout, an unreachable
            # engine) consumed no tokens to bill: counting the estimate put them in token totals and
            # cost. It stays in prompt_tokens_estimated. A client that left mid-answer (499) did.
            refused = record.status_code >= 400 and record.status_code != CLIENT_CLOSED_STATUS \
                and not meter.output_times
            record.prompt_tokens = None if refused else estimate
            record.completion_tokens = len(meter.output_times) if record.stream and meter.output_times else None
        tpot_s: float | None = None
        if record.stream:
            record.ttft_ms = meter.ttft_ms
            record.itl_ms_mean, record.itl_ms_p50, record.itl_ms_p99 = meter.itl_ms()
            decode = meter.decode_seconds()
            if decode and record.completion_tokens and record.completion_tokens > 1:
                record.output_tokens_per_s = (record.completion_tokens - 1) / decode
                if record.error_type is None:
                    tpot_s = meter.time_per_token_s(record.completion_tokens)
        elif record.completion_tokens and record.total_ms:
            record.output_tokens_per_s = record.completion_tokens / (record.total_ms / 1000.0)
        text: str | None = None
        if body is not None:
            api = record.api
            text = prompt_text(body, api)
            try:  # a body no hash can take (nested past what repr recurses) costs the hash, not the record
                record.prompt_hash = prompt_hash(body, api, text, self.hash_key)
            except Exception as exc:  # noqa: BLE001 - the type only: its message may quote the body
                errlog.error("prompt hash failed; record kept without it",
                             extra={"fields": {"trace_id": record.trace_id, "error": type(exc).__name__}})
        if flight.tapped and self.tap is not None:
            self._tap_finish(record, body, text, flight.capture)
        self.metrics.observe(record, model_label, tenant_label, tpot_s)
        self.bus.publish(record)
        self.metrics.sync_bus(self.bus.stats())
        if self.access_log:
            log.info("request", extra={"fields": _access_fields(record)})

    def _tap_begin(self, flight: _Flight, body: dict[str, Any]) -> None:
        """The evaluation tap's start. Evaluation must never fail inference: a tap that raises (on a
        body or an answer it did not expect) costs this request its evaluation, not its response."""
        assert self.tap is not None
        try:
            flight.capture = self.tap.begin(flight.record, body)
            flight.tapped = True
        except Exception as exc:  # noqa: BLE001 - see the docstring
            flight.record.sampled_for_eval, flight.record.sample_reason = False, None  # no eval task will follow
            self.metrics.tap_failures.labels("begin").inc()
            _tap_failed("begin", flight.record, exc)

    def _tap_upstream_body(self, record: RequestRecord, body: dict[str, Any]) -> dict[str, Any]:
        """The tap's cut of the body for the engine; a tap that raises forwards the body as sent."""
        assert self.tap is not None
        try:
            return self.tap.upstream_body(body)
        except Exception as exc:  # noqa: BLE001 - see _tap_begin
            self.metrics.tap_failures.labels("upstream").inc()
            _tap_failed("upstream", record, exc)
            return body

    def _tap_finish(
        self, record: RequestRecord, body: dict[str, Any] | None, text: str | None, capture: ResponseCapture | None
    ) -> None:
        """The tap's end; when it raises, the record still goes out, marked not sampled (no eval task
        will follow it). Before, the exception escaped: a 500 or a cut stream, and the record was lost."""
        assert self.tap is not None
        try:
            self.tap.finish(record, body, text, capture)
        except Exception as exc:  # noqa: BLE001 - see _tap_begin
            record.sampled_for_eval, record.sample_reason = False, None
            self.metrics.tap_failures.labels("finish").inc()
            _tap_failed("finish", record, exc)


def _tap_failed(stage: str, record: RequestRecord, exc: Exception) -> None:
    # The type only: an exception's message may quote the request or the answer.
    errlog.error("evaluation tap failed; request served without evaluation",
                 extra={"fields": {"stage": stage, "trace_id": record.trace_id, "error": type(exc).__name__}})


class _TooLarge(Exception):
    pass


async def _read_capped(response: UpstreamResponse, limit: int) -> bytes:
    """The whole body, or ``_TooLarge`` as soon as it passes ``limit`` (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)
    return b"".join(parts)


def _noop() -> None:
    return None


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], flight: _Flight) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not flight.done and not flight.delivered:
                flight.client_gone = True
                task.cancel()
            return


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _parse_body(raw: bytes, api: str) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.invalid_json(str(exc).split(":")[0]) from None
    if not isinstance(body, dict):
        raise errors.invalid_json("the top level must be a JSON object")
    model = body.get("model")
    if model is None or model == "":
        raise errors.missing_field("model")
    if not isinstance(model, str):
        raise errors.invalid_field("model", "must be a string")
    required = REQUIRED_FIELD[api]
    value = body.get(required)
    if value is None:
        raise errors.missing_field(required)
    if api == "chat" and (not isinstance(value, list) or not value):
        raise errors.invalid_field("messages", "must be a non-empty array of messages")
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise errors.invalid_field("stream", "must be a boolean")
    # The gateway rewrites stream_options (it asks for usage): a malformed one was silently replaced.
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise errors.invalid_field("stream_options", "must be an object, e.g. {\"include_usage\": true}")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise errors.invalid_field("stream_options", "'include_usage' must be a boolean")
    return body


def _client_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _upstream_headers(headers: list[tuple[bytes, bytes]], trace: TraceContext, route: Route) -> dict[str, str]:
    out = forward_headers(headers, _DROP_REQUEST_HEADERS)
    out["content-type"] = "application/json"
    if trace.parent_span_id is None:  # no valid traceparent came in: its tracestate is void (W3C 3.3)
        out.pop("tracestate", None)
    out["traceparent"] = trace.traceparent()
    out["x-trace-id"] = trace.trace_id
    if route.auth_header:
        out["authorization"] = route.auth_header
    return out


def _response_headers(headers: Mapping[str, str]) -> Headers:
    out: Headers = []
    named = response_hop_names(headers)
    for key, value in headers.items():
        name = key.lower()
        if name in _DROP_RESPONSE_HEADERS or hop_by_hop(name, named):
            continue
        if not value.isprintable() and _HEADER_CTL.search(value):
            # aiohttp hands such a value over; uvicorn refuses to send it, which failed the whole
            # response with a bare 500. The header is invalid (RFC 9110), so it is the part left out.
            continue
        out.append((_header_bytes(name), _header_bytes(value)))
    return out


def _header_bytes(text: str) -> bytes:
    """The engine's header bytes back. http1 decodes latin-1; aiohttp decodes UTF-8 with surrogateescape,
    so a non-ASCII value it hands over may not encode as latin-1 (that was a bare 500)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no decoder produced: keep the rest
        return text.encode("utf-8", "replace")


def _observe_json_body(payload: bytes, record: RequestRecord, meter: StreamMeter) -> None:
    """Usage and finish_reason from a non-streaming body; error type from an engine error body."""
    try:
        obj = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        info = inspect_object(obj)
        if info.error is not None and record.status_code < 400:  # a 200 that reports a failure
            record.error_type = "upstream_error_body"
        meter.usage = info.usage
        meter.timings = info.timings
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            meter.finish_reason = reason if isinstance(reason, str) else None  # the store's column is text
    if record.status_code >= 400:
        record.error_type = f"upstream_{record.status_code}"


def _access_fields(record: RequestRecord) -> dict[str, Any]:
    """The access-log line: identity, outcome and timings. Never any prompt or completion text."""
    return {
        "trace_id": record.trace_id,
        "tenant_id": record.tenant_id,
        "model_id": record.model_id,
        "backend": record.backend,
        "instance": record.instance,
        "api": record.api,
        "stream": record.stream,
        "status_code": record.status_code,
        "error_type": record.error_type,
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms, 3),
        "total_ms": None if record.total_ms is None else round(record.total_ms, 3),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "client_disconnected": record.client_disconnected,
    }
