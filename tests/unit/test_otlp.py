"""OTLP/HTTP JSON span export against a small in-test receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infersight.bus.memory import MemoryBus
from infersight.config import ConfigError, TracingSettings
from infersight.model import RequestRecord
from infersight.tracing import OtlpExportError, OtlpHttpSpanExporter, record_to_span

SECRET_PROMPT = "my card number is 4111-1111-1111-1111"
SECRET_COMPLETION = "the answer mentions Alice Secretperson"


class Receiver:
    """Collects POST bodies; answers ``status`` (settable) to each."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.raw.append(data)
                receiver.headers.append(dict(self.headers))
                receiver.paths.append(self.path)
                if receiver.status == 200:
                    receiver.bodies.append(json.loads(data))
                reply = b"{}" if receiver.status == 200 else b"unavailable"
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def make_records() -> list[RequestRecord]:
    ok = RequestRecord(
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        tenant_id="acme",
        model_id="sim-large",
        backend="sim",
        use_case="support",
        request_type="interactive",
        api="chat",
        started_at="2026-11-22T07:20:58.123456+00:00",
        ttft_ms=120.5,
        total_ms=1500.0,
        prompt_tokens=42,
        completion_tokens=17,
        cached_prompt_tokens=8,
        token_source="backend",
        status_code=200,
        finish_reason="stop",
        stream=True,
        prompt_text=SECRET_PROMPT,
        completion_text=SECRET_COMPLETION,
    )
    failed = RequestRecord(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        tenant_id="globex",
        model_id="sim-small",
        backend="sim",
        api="completions",
        started_at="2026-11-22T07:21:00Z",
        total_ms=2.25,
        status_code=502,
        error_type="upstream_error",
        prompt_text=SECRET_PROMPT,
    )
    return [ok, failed]


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span["attributes"]:
        (kind, value), = kv["value"].items()
        if kind == "arrayValue":
            value = [next(iter(v.values())) for v in value["values"]]
        out[kv["key"]] = value
    return out


def exporter_for(receiver: Receiver, **kwargs: Any) -> OtlpHttpSpanExporter:
    settings = TracingSettings(otlp_endpoint=receiver.endpoint, service_name="gw-test", export_timeout_s=2.0)
    return OtlpHttpSpanExporter(settings, **kwargs)


def test_export_posts_otlp_json(receiver: Receiver) -> None:
    exporter = exporter_for(receiver)
    exporter.export(make_records())
    assert exporter.exported == 2 and exporter.failures == 0
    assert receiver.paths == ["/v1/traces"]
    assert receiver.headers[0]["Content-Type"] == "application/json"

    (payload,) = receiver.bodies
    (resource_spans,) = payload["resourceSpans"]
    assert resource_spans["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "gw-test"}}
    ]
    (scope_spans,) = resource_spans["scopeSpans"]
    assert scope_spans["scope"]["name"] == "infersight"
    ok, failed = scope_spans["spans"]

    assert ok["name"] == "chat sim-large"
    assert failed["name"] == "text_completion sim-small"
    assert ok["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ok["spanId"] == "00f067aa0ba902b7"
    assert failed["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert ok["kind"] == 3
    assert ok["startTimeUnixNano"] == "1795332058123456000"
    assert ok["endTimeUnixNano"] == str(1795332058123456000 + 1_500_000_000)
    assert failed["startTimeUnixNano"] == "1795332060000000000"
    assert int(failed["endTimeUnixNano"]) - int(failed["startTimeUnixNano"]) == 2_250_000

    a = attrs(ok)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "sim-large"
    assert a["gen_ai.usage.input_tokens"] == "42"  # int64 travels as a string in OTLP JSON
    assert a["gen_ai.usage.output_tokens"] == "17"
    assert a["gen_ai.usage.cache_read.input_tokens"] == "8"
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.1205)
    assert a["http.response.status_code"] == "200"
    assert a["infersight.tenant_id"] == "acme"
    assert a["infersight.use_case"] == "support"
    assert a["infersight.request_type"] == "interactive"
    assert a["infersight.backend"] == "sim"
    assert a["infersight.ttft_ms"] == 120.5
    assert "error.type" not in a
    assert ok["status"] == {"code": 0}

    b = attrs(failed)
    assert b["gen_ai.operation.name"] == "text_completion"
    assert b["error.type"] == "upstream_error"
    assert b["http.response.status_code"] == "502"
    assert "gen_ai.usage.input_tokens" not in b  # unknown is absent, never zero
    assert "gen_ai.request.stream" not in b
    assert failed["status"] == {"code": 2, "message": "upstream_error"}


def test_no_text_content_is_ever_exported(receiver: Receiver) -> None:
    exporter_for(receiver).export(make_records())
    raw = receiver.raw[0].decode()
    assert SECRET_PROMPT not in raw and "4111" not in raw
    assert SECRET_COMPLETION not in raw and "Secretperson" not in raw


def test_error_status_from_http_code_alone() -> None:
    record = RequestRecord("a" * 32, "b" * 16, "t", "m", "b", status_code=429, started_at="bad date")
    span = record_to_span(record, now_ns=10_000_000_000)
    assert span["status"]["code"] == 2
    assert attrs(span)["error.type"] == "429"
    assert span["startTimeUnixNano"] == span["endTimeUnixNano"] == "10000000000"


def test_invalid_ids_are_replaced_not_exported() -> None:
    span = record_to_span(RequestRecord("not-hex", "", "t", "m", "b", status_code=200))
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
    int(span["traceId"], 16), int(span["spanId"], 16)


def test_503_raises_then_drops_after_three_attempts(receiver: Receiver) -> None:
    receiver.status = 503
    exporter = exporter_for(receiver)
    batch = make_records()
    for attempt in (1, 2):
        with pytest.raises(OtlpExportError) as info:
            exporter.export(batch)
        assert "503" in str(info.value) and SECRET_PROMPT not in str(info.value)
        assert exporter.failures == attempt and exporter.dropped == 0
    exporter.export(batch)  # third failure: dropped, returns so the bus moves on
    assert exporter.failures == 3 and exporter.dropped == 2
    assert len(receiver.raw) == 3

    receiver.status = 200  # a fresh batch starts a fresh count
    exporter.export(make_records())
    assert exporter.exported == 2 and exporter.failures == 3


def test_failure_count_resets_for_a_new_batch(receiver: Receiver) -> None:
    receiver.status = 503
    exporter = exporter_for(receiver)
    first, second = make_records(), make_records()[:1]
    with pytest.raises(OtlpExportError):
        exporter.export(first)
    with pytest.raises(OtlpExportError):
        exporter.export(second)
    with pytest.raises(OtlpExportError):
        exporter.export(second)
    assert exporter.dropped == 0 and exporter.failures == 3


def test_non_retryable_status_drops_at_once(receiver: Receiver) -> None:
    receiver.status = 400
    exporter = exporter_for(receiver)
    exporter.export(make_records())
    assert exporter.failures == 1 and exporter.dropped == 2


def test_unreachable_collector_raises(receiver: Receiver) -> None:
    endpoint = receiver.endpoint
    receiver.close()  # nothing listens on that port now
    exporter = OtlpHttpSpanExporter(TracingSettings(export_timeout_s=1.0), endpoint_override=endpoint)
    with pytest.raises(OtlpExportError):
        exporter.export(make_records())
    assert exporter.failures == 1


def test_memory_bus_is_not_blocked_by_a_dead_collector(receiver: Receiver) -> None:
    receiver.status = 503
    exporter = exporter_for(receiver)
    bus = MemoryBus([exporter], batch_size=2, flush_interval_s=0.01, max_backoff_s=0.05)
    bus.start()
    for record in make_records():
        bus.publish(record)
    assert bus.flush(timeout_s=5.0)
    bus.stop()
    assert exporter.dropped == 2 and exporter.exported == 0
    # every failure went back to the bus for a retry, except the last, which dropped the spans (the
    # bus may retry a batch whole or in bisected parts: each span counts its own attempts)
    assert bus.stats().export_failures == exporter.failures - 1 >= 2


def test_endpoint_is_required() -> None:
    with pytest.raises(ConfigError, match="tracing.otlp_endpoint"):
        OtlpHttpSpanExporter(TracingSettings())
    with pytest.raises(ConfigError, match="tracing.otlp_endpoint"):
        OtlpHttpSpanExporter(TracingSettings(otlp_endpoint="127.0.0.1:4318"))
