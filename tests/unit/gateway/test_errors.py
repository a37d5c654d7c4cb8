"""Every error the gateway answers: status, OpenAI error shape, x-trace-id, and a record written."""

from __future__ import annotations

import orjson
import pytest

from infersight.gateway.upstreams import UpstreamDisconnected, UpstreamTimeout, UpstreamUnreachable
from infersight.gateway.upstreams.mock import ManualClock, ScriptedResponse
from tests.unit.gateway.helpers import ACME, chat_body, chat_chunk, gateway, ok_stream

STREAM = ok_stream((1.0, chat_chunk("x")))


def assert_openai_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    assert len(resp.headers["x-trace-id"]) == 32
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return error


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "tenant"),
    [
        (b"{not json", ACME, 400, "invalid_json", "acme"),
        (b"[1, 2]", ACME, 400, "invalid_json", "acme"),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), ACME, 400, "missing_required_parameter", "acme"),
        (orjson.dumps({"model": "sim-large"}), ACME, 400, "missing_required_parameter", "acme"),
        (orjson.dumps({"model": "sim-large", "messages": []}), ACME, 400, "invalid_value", "acme"),
        (orjson.dumps(chat_body()), {}, 401, "missing_api_key", "_unauthenticated"),
        (orjson.dumps(chat_body()), {"authorization": "Bearer sk-wrong"}, 401, "invalid_api_key", "_unauthenticated"),
        (orjson.dumps(chat_body()), {"authorization": "Basic abc"}, 401, "missing_api_key", "_unauthenticated"),
        (orjson.dumps({**chat_body(), "model": "gpt-9"}), ACME, 404, "model_not_found", "acme"),
        (orjson.dumps({**chat_body(), "pad": "x" * 70_000}), ACME, 413, "request_too_large", "acme"),
    ],
)
async def test_gateway_errors(settings, content, headers, status, code, tenant) -> None:
    _, transport, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", content=content, headers=headers)
    error = assert_openai_error(resp, status, code)
    assert not transport.requests, "nothing may reach the engine"
    [record] = bus.records
    assert (record.status_code, record.error_type, record.tenant_id) == (status, code, tenant)
    assert record.trace_id == resp.headers["x-trace-id"]
    if code == "missing_required_parameter":
        assert error["param"] in {"model", "messages"}


async def test_oversized_declared_length_refused_before_reading(settings) -> None:
    _, _, bus, client = gateway(settings, STREAM, ManualClock())

    async with client:
        resp = await client.post(
            "/v1/chat/completions", content=b"x" * 100, headers={**ACME, "content-length": "999999999"}
        )
    assert_openai_error(resp, 413, "request_too_large")


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [(UpstreamUnreachable("refused"), 502, "upstream_unreachable"), (UpstreamTimeout("slow"), 504, "upstream_timeout")],
)
async def test_engine_unreachable_or_timeout(settings, exc, status, code) -> None:
    def handler(request):
        raise exc

    _, _, bus, client = gateway(settings, handler, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    assert_openai_error(resp, status, code)
    [record] = bus.records
    assert (record.status_code, record.error_type, record.backend) == (status, code, "sim")


async def test_engine_error_status_and_body_reach_client(settings) -> None:
    engine_body = orjson.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                          "param": None, "code": "rate_limit_exceeded"}})

    def handler(request):
        return ScriptedResponse(status=429, headers={"content-type": "application/json", "retry-after": "1"},
                                chunks=[(3.0, engine_body)])

    _, _, bus, client = gateway(settings, handler, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    assert resp.status_code == 429 and resp.content == engine_body
    assert resp.headers["retry-after"] == "1" and "x-trace-id" in resp.headers
    [record] = bus.records
    assert (record.status_code, record.error_type) == (429, "upstream_429")


async def test_mid_stream_engine_failure_is_reported_in_band(settings) -> None:
    def handler(request):
        return ScriptedResponse(chunks=[(5.0, chat_chunk(role=True)), (9.0, chat_chunk("Par"))],
                                raise_after=UpstreamDisconnected("connection broke"))

    _, _, bus, client = gateway(settings, handler, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    assert resp.status_code == 200
    last = resp.text.strip().split("\n\n")[-1]
    assert orjson.loads(last[6:])["error"]["code"] == "upstream_disconnected"
    [record] = bus.records
    assert record.error_type == "upstream_disconnected" and record.ttft_ms == pytest.approx(9.0, abs=1e-6)


async def test_unknown_path_and_wrong_method(settings) -> None:
    _, _, _, client = gateway(settings, STREAM, ManualClock())
    async with client:
        missing = await client.get("/v1/nothing", headers=ACME)
        wrong = await client.get("/v1/chat/completions", headers=ACME)
    assert_openai_error(missing, 404, "unknown_url")
    assert_openai_error(wrong, 405, "method_not_allowed")
