"""Export one OpenTelemetry span per request over OTLP/HTTP JSON, as an optional bus exporter.

Why JSON over stdlib HTTP: no protobuf or OpenTelemetry SDK dependency, and any collector accepts
``application/json`` on ``/v1/traces``. The exporter runs on the bus's writer thread, so it blocks
(bounded by ``export_timeout_s``) and never touches asyncio.

Attributes follow the OpenTelemetry GenAI semantic conventions (inference client span,
``{gen_ai.operation.name} {gen_ai.request.model}``, kind CLIENT: the gateway's call to the engine).
Prompt and completion text are never exported, whatever the record carries.

Parent-based sampling: a request whose caller sent ``traceparent`` with the sampled flag off
(``trace_flags`` "00") is not exported unless ``tracing.export_unsampled`` is set. Its trace is not
recorded upstream, so the span would be an orphan that the tracing backend stores and bills for
nothing; such spans are counted (``unsampled``), as the OpenTelemetry SDK's default sampler would
not even record them. Records without ``trace_flags`` (written before schema v9) count as sampled.

Failure policy: a retryable failure (network error, timeout, HTTP 429/502/503/504) counts in
``failures`` and raises so the bus retries the batch; the third consecutive failure of the same batch
drops it (counted in ``dropped``, in spans) and returns, so a dead collector cannot hold the bus.
Other HTTP errors (e.g. 400) cannot succeed on retry: the batch is dropped at once. When the
collector answers with ``Retry-After`` (429/503), calls before that time (capped at
``max_retry_after_s``) raise without a POST and without spending the spans' attempts: the bus's
immediate retries and bisection would otherwise use up all three attempts in milliseconds. Spans a
collector rejects in a ``partialSuccess`` reply are counted in ``dropped``, not ``exported``.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CollectorRegistry, Counter

from infersight import __version__
from infersight.config import ConfigError, TracingSettings
from infersight.logs import safe_url
from infersight.model import RequestRecord
from infersight.model.genai import operation_name, provider_name

log = logging.getLogger("infersight.tracing")

SPAN_KIND_CLIENT = 3
STATUS_CODE_UNSET = 0
STATUS_CODE_ERROR = 2
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 3
MAX_RETRY_AFTER_S = 5.0
"""Longest Retry-After honoured: the bus delivers to its exporters in turn, so a wait stalls them all."""

_HEX = frozenset("0123456789abcdef")


class OtlpExportError(Exception):
    """One failed attempt to deliver a batch; the message names the endpoint and the cause only."""


# --------------------------------------------------------------------------------------------------
# record -> OTLP JSON


def _attr(key: str, value: Any) -> dict[str, Any]:
    """One OTLP KeyValue; int64 as a decimal string, as the proto3 JSON mapping requires."""
    return {"key": key, "value": _any_value(value)}


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _hex_id(value: str, length: int) -> str:
    """A valid lowercase hex id, or a fresh random one (an invalid id would make the span unusable)."""
    value = (value or "").lower()
    if len(value) == length and set(value) <= _HEX and value.strip("0"):
        return value
    return os.urandom(length // 2).hex()


def _unix_nanos(started_at: str) -> int | None:
    """ISO-8601 (``2026-11-22T07:20:58.123456+00:00`` or ``...Z``) to exact integer unix nanos."""
    if not started_at:
        return None
    try:
        moment = datetime.fromisoformat(started_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the contract says UTC
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def span_attributes(record: RequestRecord) -> list[dict[str, Any]]:
    """GenAI semconv attributes plus ``infersight.*`` ones; no text content, ever."""
    operation = operation_name(record.api)
    values: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        # unknown (""), e.g. an unauthenticated request: absent, not an empty value to group by
        "gen_ai.provider.name": provider_name(record.endpoint_type) or None,
        "gen_ai.request.model": record.model_id or None,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": record.cached_prompt_tokens,
        "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
        "gen_ai.response.finish_reasons": [record.finish_reason] if record.finish_reason else None,
        "http.response.status_code": record.status_code or None,
        "error.type": _error_type(record),
        "infersight.tenant_id": record.tenant_id,
        "infersight.use_case": record.use_case,
        "infersight.request_type": record.request_type,
        "infersight.backend": record.backend,
        "infersight.ttft_ms": record.ttft_ms,
        "infersight.total_ms": record.total_ms,
        "infersight.itl_ms_mean": record.itl_ms_mean,
        "infersight.queue_ms": record.queue_ms,
        "infersight.prompt_tokens_estimated": record.prompt_tokens_estimated,
        "infersight.token_source": record.token_source,
    }
    if record.stream:
        values["gen_ai.request.stream"] = True  # conditionally required: only when streaming
        if record.ttft_ms is not None:
            values["gen_ai.response.time_to_first_chunk"] = record.ttft_ms / 1000.0  # seconds
    if record.client_disconnected:
        values["infersight.client_disconnected"] = True
    return [_attr(k, v) for k, v in values.items() if v is not None]


def _error_type(record: RequestRecord) -> str | None:
    """``error.type``: the record's own, else the HTTP status as a string (HTTP semconv)."""
    if record.error_type:
        return record.error_type
    if record.status_code >= 400:
        return str(record.status_code)
    return None


def is_sampled(record: RequestRecord) -> bool:
    """The W3C sampled bit of the flags the gateway passed on; unknown (None, unreadable) counts as sampled."""
    flags = record.trace_flags
    if not flags:
        return True
    try:
        return bool(int(flags, 16) & 0x01)
    except ValueError:
        return True


def record_to_span(record: RequestRecord, *, now_ns: int | None = None) -> dict[str, Any]:
    """One OTLP JSON span; start from ``started_at``, end = start + ``total_ms``."""
    duration_ns = round((record.total_ms or 0.0) * 1_000_000)
    start = _unix_nanos(record.started_at)
    if start is None:  # unknown start: assume the request just ended
        start = (now_ns if now_ns is not None else time.time_ns()) - duration_ns
    operation = operation_name(record.api)
    span: dict[str, Any] = {
        "traceId": _hex_id(record.trace_id, 32),
        "spanId": _hex_id(record.span_id, 16),
        "name": f"{operation} {record.model_id}" if record.model_id else operation,
        "kind": SPAN_KIND_CLIENT,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + duration_ns),
        "attributes": span_attributes(record),
        "status": {"code": STATUS_CODE_UNSET},
    }
    parent = (record.parent_span_id or "").lower()
    if len(parent) == 16 and set(parent) <= _HEX and parent.strip("0"):
        # an invalid parent is left out, never replaced: a made-up id would orphan the span
        span["parentSpanId"] = parent
    error = _error_type(record)
    if error is not None:
        span["status"] = {"code": STATUS_CODE_ERROR, "message": error}
    return span


def build_payload(batch: list[RequestRecord], service_name: str) -> dict[str, Any]:
    """An ExportTraceServiceRequest in the OTLP JSON mapping: resourceSpans -> scopeSpans -> spans."""
    now_ns = time.time_ns()
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", service_name)]},
                "scopeSpans": [
                    {
                        "scope": {"name": "infersight", "version": __version__},
                        "spans": [record_to_span(r, now_ns=now_ns) for r in batch],
                    }
                ],
            }
        ]
    }


# --------------------------------------------------------------------------------------------------
# the exporter


class OtlpHttpSpanExporter:
    """A bus Exporter that POSTs each batch as OTLP/HTTP JSON to ``tracing.otlp_endpoint``.

    ``failures`` counts failed attempts, ``dropped`` counts spans given up on, ``exported`` counts
    spans the collector accepted, ``unsampled`` spans left out because the caller did not sample the
    trace. Only the bus's writer thread calls ``export``.
    """

    def __init__(self, settings: TracingSettings, endpoint_override: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        endpoint = endpoint_override or settings.otlp_endpoint
        if not endpoint:
            raise ConfigError("set an endpoint, e.g. http://127.0.0.1:4318/v1/traces", key="tracing.otlp_endpoint")
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"{endpoint!r} is not an http(s) URL", key="tracing.otlp_endpoint")
        self.endpoint = endpoint
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port
        self._path = (url.path or "/v1/traces") + (f"?{url.query}" if url.query else "")
        self._timeout_s = settings.export_timeout_s
        self._service_name = settings.service_name
        self._export_unsampled = settings.export_unsampled
        self._lock = threading.Lock()
        # failed attempts per record (by identity): the bus retries a batch whole or, bisecting it
        # to tell a down collector from a bad record, in parts; either way each span's count grows
        self._attempts: dict[int, int] = {}
        self.exported = 0
        self.failures = 0
        self.dropped = 0
        self.unsampled = 0
        # the same counts on /metrics (a dropped span was visible only in the log)
        self._spans = Counter("infersight_otlp_spans", "OTLP spans by result: exported, dropped (the "
                              "collector refused them for good or kept failing), or unsampled (the caller's "
                              "traceparent did not sample the trace: not sent).", ("result",),
                              registry=registry) if registry is not None else None
        self._failure_count = Counter("infersight_otlp_export_failures", "OTLP POSTs that failed (retried, or "
                                      "the spans dropped).", registry=registry) if registry is not None else None
        self.max_retry_after_s = MAX_RETRY_AFTER_S
        self._retry_at = 0.0  # time.monotonic() before which the collector asked not to be called

    def export(self, batch: list[RequestRecord]) -> None:
        skipped = 0
        if not self._export_unsampled:
            kept = [record for record in batch if is_sampled(record)]
            skipped, batch = len(batch) - len(kept), kept
        if not batch:
            self._count(unsampled=skipped)
            return
        wait = self._retry_at - time.monotonic()
        if wait > 0:  # not an attempt: nothing is sent and no span's count grows
            raise OtlpExportError(f"OTLP collector {self.endpoint} asked to retry after {wait:.2f}s (Retry-After)")
        body = orjson.dumps(build_payload(batch, self._service_name))
        try:
            status, rejected, detail, retry_after = self._post(body)
        except (OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, bad reply
            self._failed(batch, f"{type(exc).__name__}: {exc}", retryable=True, unsampled=skipped)
            return
        if 200 <= status < 300:
            rejected = min(rejected, len(batch))
            with self._lock:
                self.exported += len(batch) - rejected
                self.dropped += rejected
            self._count(exported=len(batch) - rejected, dropped=rejected, unsampled=skipped)
            with self._lock:
                if self._attempts:
                    for record in batch:
                        self._attempts.pop(id(record), None)
            if detail:
                log.warning("OTLP collector rejected some spans",
                            extra={"endpoint": safe_url(self.endpoint), "detail": detail})
            return
        retryable = status in RETRYABLE_STATUS
        if retryable and retry_after is not None:
            self._retry_at = time.monotonic() + min(retry_after, self.max_retry_after_s)
        self._failed(batch, f"HTTP {status}", retryable=retryable, unsampled=skipped)

    def shutdown(self) -> None:
        """Nothing is held open between batches; present for the Exporter protocol."""

    def _count(self, *, exported: int = 0, dropped: int = 0, unsampled: int = 0) -> None:
        """Count a batch's final outcome. Unsampled spans are counted here, once the batch they came in
        is done with: a batch the bus retries is filtered again, and must not count them twice."""
        if unsampled:
            with self._lock:
                self.unsampled += unsampled
        if self._spans is None:
            return
        if exported:
            self._spans.labels("exported").inc(exported)
        if dropped:
            self._spans.labels("dropped").inc(dropped)
        if unsampled:
            self._spans.labels("unsampled").inc(unsampled)

    def _post(self, body: bytes) -> tuple[int, int, str, float | None]:
        """One POST; returns (status, spans rejected, partial-success detail, Retry-After seconds).

        No proxies: the collector is direct."""
        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self._timeout_s)
        try:
            conn.request(
                "POST",
                self._path,
                body=body,
                headers={"Content-Type": "application/json", "User-Agent": f"infersight/{__version__}"},
            )
            response = conn.getresponse()
            reply = response.read(65_536)
            if response.status < 300:
                return response.status, *_partial_success(reply), None
            return response.status, 0, "", _retry_after(response.getheader("Retry-After"))
        finally:
            conn.close()

    def _failed(self, batch: list[RequestRecord], cause: str, *, retryable: bool, unsampled: int = 0) -> None:
        """Count the failure; raise for a retry, or drop the batch once retrying is pointless."""
        if self._failure_count is not None:
            self._failure_count.inc()
        with self._lock:
            self.failures += 1
            counts = [self._attempts.get(id(record), 0) + 1 for record in batch]
            attempts = min(counts)  # dropped once every span in it had its attempts
            give_up = not retryable or attempts >= MAX_ATTEMPTS
            if give_up:
                self.dropped += len(batch)
                for record in batch:
                    self._attempts.pop(id(record), None)
            else:
                if len(self._attempts) > 100_000:  # records the bus gave up on at stop: never grows unbounded
                    self._attempts.clear()
                self._attempts.update(zip(map(id, batch), counts))
        extra = {"endpoint": safe_url(self.endpoint), "cause": cause, "spans": len(batch), "attempt": attempts}
        if give_up:
            self._count(dropped=len(batch), unsampled=unsampled)
            log.error("OTLP export failed; dropping spans", extra=extra)
            return
        log.warning("OTLP export failed; will retry", extra=extra)
        raise OtlpExportError(f"OTLP export to {self.endpoint} failed ({cause}), attempt {attempts}")


def _partial_success(reply: bytes) -> tuple[int, str]:
    """(spans rejected, message) from the collector's partialSuccess; (0, '') when all were accepted.

    ``rejectedSpans`` is an int64, so the OTLP JSON mapping sends it as a decimal string ("0" too).
    """
    if not reply.strip():
        return 0, ""
    try:
        data = orjson.loads(reply)
    except orjson.JSONDecodeError:
        return 0, ""
    partial = data.get("partialSuccess") if isinstance(data, dict) else None
    if not isinstance(partial, dict):
        return 0, ""
    try:
        rejected = max(int(partial.get("rejectedSpans") or 0), 0)
    except (TypeError, ValueError):
        rejected = 0
    message = partial.get("errorMessage") or ""
    if not rejected and not message:
        return 0, ""
    return rejected, f"rejected {rejected}: {message}"[:500]


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)
