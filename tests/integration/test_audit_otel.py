"""Audit: what the gateway emits against the OTel GenAI conventions, OTLP/HTTP JSON and W3C Trace Context.

Real HTTP on 127.0.0.1 only: an OTLP receiver that records what it is sent (answers scripted per
POST), and, for the end-to-end check, a fake OpenAI upstream that records the headers it receives.
The semantic-convention files are read from INFERSIGHT_EXTDATA (the ``extdata`` fixture).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infersight.bus.memory import MemoryBus
from infersight.config import TracingSettings, settings_from_dict
from infersight.gateway.tracecontext import from_headers, parse_traceparent
from infersight.model import RequestRecord
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.tracing import OtlpExportError, OtlpHttpSpanExporter, build_payload, record_to_span
from tests.conftest import config_dict

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


# --------------------------------------------------------------------------------------------------
# helpers


def serve_json(answer: Callable[[dict[str, str], bytes], tuple[int, dict[str, str], bytes]]) -> ThreadingHTTPServer:
    """A 127.0.0.1 HTTP server answering each POST with ``answer(headers, body)``: (status, headers, JSON body)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, headers, body = answer(dict(self.headers), data)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return server


class Collector:
    """An OTLP/HTTP receiver: records each POST; answers from ``script`` (status, headers, body), then 200."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, dict[str, str], bytes]] = []
        self.accepted: list[bytes] = []  # bodies answered with a 2xx
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.default: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
        self.lock = threading.Lock()
        self.server = serve_json(self._answer)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def _answer(self, headers: dict[str, str], data: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.posts.append((time.monotonic(), headers, data))
            status, reply_headers, body = self.script.pop(0) if self.script else self.default
            if status < 300:
                self.accepted.append(data)
        return status, reply_headers, body

    def spans(self) -> list[dict[str, Any]]:
        """The spans the collector accepted."""
        out: list[dict[str, Any]] = []
        for body in self.accepted:
            for rs in json.loads(body)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    out.extend(ss["spans"])
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def exporter(collector: Collector) -> OtlpHttpSpanExporter:
    return OtlpHttpSpanExporter(TracingSettings(otlp_endpoint=collector.endpoint, export_timeout_s=2.0))


def record(i: int = 1, **fields: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large", backend="sim",
        started_at="2026-11-22T07:20:58.123456+00:00", total_ms=12.5, status_code=200, prompt_tokens=42,
        completion_tokens=17, finish_reason="stop",
    )
    base.update(fields)
    return RequestRecord(**base)


def attrs(span: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kv["key"]: kv["value"] for kv in span["attributes"]}


# --------------------------------------------------------------------------------------------------
# the span against the stored GenAI conventions


_OTLP_KIND = {"string": "stringValue", "int": "intValue", "double": "doubleValue", "boolean": "boolValue",
              "string[]": "arrayValue"}


def _registry(extdata: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((extdata / "otel_genai" / "otel_genai_semconv_summary.json").read_text())
    return {a["id"]: a for a in summary["registry_attributes"]}


def _inference_span_group(extdata: Path) -> dict[str, Any]:
    groups = yaml.safe_load((extdata / "otel_genai" / "model__gen-ai__spans.yaml").read_text())["groups"]
    return next(g for g in groups if g["id"] == "span.gen_ai.inference.client")


def test_span_attributes_have_the_registry_names_types_and_values(extdata: Path) -> None:
    registry = _registry(extdata)
    group = _inference_span_group(extdata)
    records = [
        record(1, stream=True, ttft_ms=80.0, cached_prompt_tokens=8, reasoning_tokens=3, api="chat"),
        record(2, api="completions", status_code=502, error_type="upstream_502", finish_reason=None),
    ]
    spans = build_payload(records, "svc")["resourceSpans"][0]["scopeSpans"][0]["spans"]
    for rec, span in zip(records, spans, strict=True):
        a = attrs(span)
        # the span: kind from the conventions, name `{gen_ai.operation.name} {gen_ai.request.model}`
        assert group["span_kind"] == "client" and span["kind"] == 3
        op = a["gen_ai.operation.name"]["stringValue"]
        assert span["name"] == f"{op} {rec.model_id}"
        assert op in registry["gen_ai.operation.name"]["enum_members"]
        assert a["gen_ai.provider.name"]["stringValue"] in registry["gen_ai.provider.name"]["enum_members"]
        assert a["gen_ai.request.model"] == {"stringValue": rec.model_id}
        for key, value in a.items():
            if not key.startswith("gen_ai."):
                continue
            assert key in registry, f"{key} is not a GenAI registry attribute"
            (kind, inner), = value.items()
            assert kind == _OTLP_KIND[registry[key]["type"].replace("enum", "string")], key
            if kind == "intValue":
                assert isinstance(inner, str) and int(inner) >= 0  # int64 as a decimal string in OTLP JSON
            if kind == "arrayValue":
                assert all(set(v) == {"stringValue"} for v in inner["values"])
        # ids: lowercase hex of the right length; times: unix nanos as decimal strings
        assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
        assert int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"]) == round(rec.total_ms * 1e6)
    ok, failed = (attrs(s) for s in spans)
    assert ok["gen_ai.response.finish_reasons"] == {"arrayValue": {"values": [{"stringValue": "stop"}]}}
    assert ok["gen_ai.request.stream"] == {"boolValue": True}
    assert "gen_ai.request.stream" not in failed  # only if streaming
    assert "error.type" not in ok and spans[0]["status"] == {"code": 0}
    assert failed["error.type"] == {"stringValue": "upstream_502"}
    assert spans[1]["status"] == {"code": 2, "message": "upstream_502"}


def test_unknown_model_and_provider_are_left_out_not_sent_empty() -> None:
    """An unauthenticated or unroutable request has no model: "" would be a bogus group in backends."""
    span = record_to_span(record(model_id="", endpoint_type="", status_code=401, error_type="auth"))
    a = attrs(span)
    assert "gen_ai.request.model" not in a
    assert "gen_ai.provider.name" not in a
    assert span["name"] == "chat"


def test_invalid_parent_span_id_is_left_out_not_invented() -> None:
    """A made-up parent id points at a span no backend has: Jaeger/Tempo show a broken, orphaned trace."""
    for bad in ("0" * 16, "not-a-span-id", "ABC"):
        span = record_to_span(record(parent_span_id=bad))
        assert "parentSpanId" not in span, bad
    span = record_to_span(record(parent_span_id=PARENT))
    assert span["parentSpanId"] == PARENT


# --------------------------------------------------------------------------------------------------
# W3C trace context


def test_traceparent_of_a_future_version_is_parsed_and_answered_as_version_00() -> None:
    """W3C 3.2.4: a higher version is parsed by its first four fields; what follows a dash is ignored."""
    ctx = from_headers(f"cc-{TRACE}-{PARENT}-01-future-fields", None)
    assert (ctx.trace_id, ctx.parent_span_id) == (TRACE, PARENT)
    assert ctx.traceparent() == f"00-{TRACE}-{ctx.span_id}-01"
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01") == (TRACE, PARENT, "01")
    # version 00 has exactly four fields; anything else is invalid, and so are these:
    for bad in (f"00-{TRACE}-{PARENT}-01-extra", f"cc-{TRACE}-{PARENT}-01x", f"ff-{TRACE}-{PARENT}-01",
                f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{PARENT}", "garbage", ""):
        assert parse_traceparent(bad) is None, bad
        ctx = from_headers(bad, None)  # a new trace, never an exception
        assert ctx.parent_span_id is None and len(ctx.trace_id) == 32 and ctx.trace_id != TRACE


def test_trace_flags_sampled_bit_propagated_and_unknown_flags_zeroed() -> None:
    """W3C: the sampled flag goes on as received; flags this version does not define are sent as zero."""
    assert from_headers(f"00-{TRACE}-{PARENT}-00", None).traceparent().endswith("-00")
    assert from_headers(f"00-{TRACE}-{PARENT}-01", None).traceparent().endswith("-01")
    assert from_headers(f"00-{TRACE}-{PARENT}-03", None).traceparent().endswith("-03")  # sampled + random (L2)
    assert from_headers(f"00-{TRACE}-{PARENT}-ff", None).traceparent().endswith("-03")
    assert from_headers(f"00-{TRACE}-{PARENT}-fc", None).traceparent().endswith("-00")


class Upstream:
    """A fake OpenAI engine: records the headers of each request, answers one chat completion."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.server = serve_json(self._answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _answer(self, headers: dict[str, str], data: bytes) -> tuple[int, dict[str, str], bytes]:
        self.headers.append({k.lower(): v for k, v in headers.items()})
        return 200, {}, json.dumps({
            "id": "cmpl-1", "object": "chat.completion", "created": 1, "model": "sim-small",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_gateway_span_is_the_parent_of_the_engine_call(tmp_path: Path, collector: Collector) -> None:
    """Through the real gateway: the exported span's id is the parent the engine is told about, the
    caller's span is its parent, and a future-version traceparent goes upstream as version 00."""
    upstream = Upstream()
    tracing = {"otlp_endpoint": collector.endpoint, "service_name": "gw-audit"}
    settings = settings_from_dict(config_dict(tmp_path / "data", upstream.url, tracing=tracing))
    gateway = ThreadedServer(build_gateway(settings)).start()
    try:
        resp = httpx.post(
            gateway.url + "/chat/completions",
            json={"model": "sim-small", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": "Bearer sk-acme-test", "traceparent": f"01-{TRACE}-{PARENT}-01-more"},
            timeout=10,
        )
        assert resp.status_code == 200
        assert resp.headers["x-trace-id"] == TRACE
    finally:
        gateway.stop()
        upstream.close()
    deadline = time.monotonic() + 5
    while not collector.posts and time.monotonic() < deadline:
        time.sleep(0.05)
    [span] = collector.spans()
    [sent] = upstream.headers
    version, trace_id, parent, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")  # sampled upstream, as the caller said
    assert span["traceId"] == TRACE and span["parentSpanId"] == PARENT
    assert span["spanId"] == parent  # the engine's spans hang under the gateway's span
    assert span["name"] == "chat sim-small" and span["kind"] == 3


@pytest.mark.parametrize("export_unsampled", [False, True])
def test_spans_of_traces_the_caller_did_not_sample_are_counted_not_exported(
        tmp_path: Path, collector: Collector, export_unsampled: bool) -> None:
    """Was: a traceparent with flags 00 (the caller's sampler said no) still produced an exported span,
    an orphan whose trace nobody recorded. Parent-based now, unless tracing.export_unsampled is set."""
    upstream = Upstream()
    tracing = {"otlp_endpoint": collector.endpoint, "export_unsampled": export_unsampled}
    settings = settings_from_dict(config_dict(tmp_path / "data", upstream.url, tracing=tracing))
    gateway = ThreadedServer(build_gateway(settings)).start()
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "x"}]}
    unsampled_trace, sampled_trace = "1" * 32, "2" * 32
    try:
        for headers in ({"traceparent": f"00-{unsampled_trace}-{PARENT}-00"},
                        {"traceparent": f"00-{sampled_trace}-{PARENT}-01"}, {}):
            headers["authorization"] = "Bearer sk-acme-test"
            assert httpx.post(gateway.url + "/chat/completions", json=body, headers=headers, timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while True:  # counted once the POST of their batch returned, a moment after the collector saw it
            metrics = httpx.get(gateway.base_url + "/metrics", timeout=10).text
            exported = 'infersight_otlp_spans_total{result="exported"} ' + ("3.0" if export_unsampled else "2.0")
            if exported in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        gateway.stop()
        upstream.close()
    assert upstream.headers[0]["traceparent"].endswith("-00")  # the engine is told the same
    traces = sorted(span["traceId"] for span in collector.spans())
    if export_unsampled:
        assert len(traces) == 3 and unsampled_trace in traces
        assert 'infersight_otlp_spans_total{result="unsampled"}' not in metrics
    else:
        assert len(traces) == 2 and unsampled_trace not in traces and sampled_trace in traces
        assert 'infersight_otlp_spans_total{result="unsampled"} 1.0' in metrics


def test_unsampled_spans_are_counted_once_however_often_the_bus_retries(collector: Collector) -> None:
    """A batch of sampled and unsampled records that fails and is retried counts its unsampled ones
    once, when the batch is done with; a batch of only unsampled records sends nothing at all."""
    ex = exporter(collector)
    batch = [record(1, trace_flags="01"), record(2, trace_flags="00"), record(3), record(4, trace_flags="02")]
    collector.script = [(503, {}, b"")]
    with pytest.raises(OtlpExportError):
        ex.export(batch)
    assert ex.unsampled == 0 and len(collector.posts) == 1
    ex.export(batch)
    assert ex.exported == 2 and ex.unsampled == 2  # "02": random-trace-id bit only, not sampled
    assert sorted(s["spanId"] for s in collector.spans()) == [f"{i:016x}" for i in (1, 3)]
    ex.export([record(5, trace_flags="00")])
    assert len(collector.posts) == 2 and ex.unsampled == 3


def test_tracestate_goes_upstream_only_with_the_traceparent_it_belongs_to(tmp_path: Path) -> None:
    """Was: forwarded as it came, also when the traceparent was invalid and a new trace started here;
    W3C says such a tracestate is void (its vendors' entries describe a trace that is not this one)."""
    upstream = Upstream()
    settings = settings_from_dict(config_dict(tmp_path / "data", upstream.url))
    gateway = ThreadedServer(build_gateway(settings)).start()
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "x"}]}
    try:
        for traceparent in (f"00-{TRACE}-{PARENT}-01", "00-not-a-valid-header-01", None):
            headers = {"authorization": "Bearer sk-acme-test", "tracestate": "vendor=abc"}
            if traceparent:
                headers["traceparent"] = traceparent
            assert httpx.post(gateway.url + "/chat/completions", json=body, headers=headers, timeout=10).status_code == 200
    finally:
        gateway.stop()
        upstream.close()
    valid, invalid, absent = upstream.headers
    assert valid.get("tracestate") == "vendor=abc"
    assert "tracestate" not in invalid and "tracestate" not in absent
    assert invalid["traceparent"].split("-")[1] != TRACE  # a new trace


# --------------------------------------------------------------------------------------------------
# OTLP/HTTP exporter behaviour


def test_partial_success_counts_rejected_spans_as_dropped(collector: Collector) -> None:
    """OTLP: a 200 with partialSuccess.rejectedSpans (int64: a string in JSON) means those spans are lost."""
    collector.script = [(200, {}, b'{"partialSuccess": {"rejectedSpans": "2", "errorMessage": "too old"}}')]
    ex = exporter(collector)
    ex.export([record(1), record(2), record(3)])
    assert ex.exported == 1 and ex.dropped == 2 and ex.failures == 0


def test_span_results_are_on_metrics_not_only_in_the_log(collector: Collector) -> None:
    """Was: spans dropped (refused for good, or after three failed attempts) showed only in a log line."""
    from prometheus_client import CollectorRegistry

    from infersight.config import TracingSettings
    from infersight.tracing.otlp import OtlpExportError, OtlpHttpSpanExporter

    registry = CollectorRegistry()
    ex = OtlpHttpSpanExporter(TracingSettings(otlp_endpoint=collector.endpoint), registry=registry)
    collector.script = [(200, {}, b'{"partialSuccess": {"rejectedSpans": "1"}}'), (400, {}, b"{}")]
    ex.export([record(1), record(2)])  # one exported, one rejected
    ex.export([record(3)])  # 400: cannot succeed on retry, dropped at once
    collector.script = [(503, {}, b"{}")]
    with pytest.raises(OtlpExportError):
        ex.export([record(4)])  # a retryable failure: retried by the bus, not dropped yet

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert value("infersight_otlp_spans_total", result="exported") == 1
    assert value("infersight_otlp_spans_total", result="dropped") == 2
    assert value("infersight_otlp_export_failures_total") == 2


def test_empty_partial_success_is_full_success(collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    collector.script = [(200, {}, b'{"partialSuccess": {"rejectedSpans": "0", "errorMessage": ""}}'),
                        (200, {}, b'{"partialSuccess": {}}')]
    ex = exporter(collector)
    with caplog.at_level(logging.WARNING, logger="infersight.tracing"):
        ex.export([record(1)])
        ex.export([record(2)])
    assert ex.exported == 2 and ex.dropped == 0
    assert not [r for r in caplog.records if r.name == "infersight.tracing"]


def test_retry_after_is_honoured_before_the_next_post(collector: Collector) -> None:
    """OTLP/HTTP: on 429/503 with Retry-After the client SHOULD wait that long; a call sooner is not sent
    and does not spend the spans' attempts."""
    collector.script = [(429, {"Retry-After": "1"}, b"slow down")]
    ex = exporter(collector)
    batch = [record(1), record(2)]
    with pytest.raises(OtlpExportError, match="429"):
        ex.export(batch)
    for _ in range(3):  # the bus would retry (and bisect) at once: none of it reaches the collector
        with pytest.raises(OtlpExportError):
            ex.export(batch)
        with pytest.raises(OtlpExportError):
            ex.export(batch[:1])
    assert len(collector.posts) == 1 and ex.failures == 1 and ex.dropped == 0
    time.sleep(1.05)
    ex.export(batch)
    assert len(collector.posts) == 2 and ex.exported == 2 and ex.dropped == 0


def test_retry_after_http_date_and_cap(collector: Collector) -> None:
    """Retry-After may be an HTTP-date; a huge one is capped so a collector cannot hold the bus for long."""
    ex = exporter(collector)
    ex.max_retry_after_s = 0.3
    collector.script = [(503, {"Retry-After": formatdate(time.time() + 3600, usegmt=True)}, b"")]
    with pytest.raises(OtlpExportError, match="503"):
        ex.export([record(1)])
    with pytest.raises(OtlpExportError):
        ex.export([record(1)])
    assert len(collector.posts) == 1
    time.sleep(0.35)
    ex.export([record(1)])
    assert len(collector.posts) == 2 and ex.exported == 1


def test_bus_keeps_spans_through_a_throttled_collector(collector: Collector) -> None:
    """Through the real bus: a collector that throttles (503 + Retry-After) for a moment loses no span."""
    collector.script = [(503, {"Retry-After": "1"}, b"busy")]
    ex = exporter(collector)
    bus = MemoryBus([ex], batch_size=8, flush_interval_s=0.01, max_backoff_s=0.05)
    bus.start()
    try:
        for i in range(1, 9):
            bus.publish(record(i))
        assert bus.flush(timeout_s=10.0)
    finally:
        bus.stop()
    assert ex.dropped == 0 and ex.exported == 8
    assert len(collector.posts) <= 4  # not hammered while it asked for a pause
    first, retried = collector.posts[0][0], collector.posts[1][0]
    assert retried - first >= 0.95
    assert sorted(s["spanId"] for s in collector.spans()) == [f"{i:016x}" for i in range(1, 9)]
