"""Bodies go upstream untouched, except the include_usage the gateway adds and then hides."""

from __future__ import annotations

import orjson
import pytest

from infersight.gateway.upstreams.mock import ManualClock
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, ok_stream, usage_chunk

STREAM = ok_stream(
    (1.0, chat_chunk(role=True)), (2.0, chat_chunk("Hi")), (3.0, chat_chunk(finish="stop")),
    (4.0, usage_chunk(5, 1)), (5.0, DONE),
)


async def test_usage_is_requested_and_hidden_when_client_did_not_ask(settings) -> None:
    _, transport, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    sent = orjson.loads(transport.requests[0].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert '"usage":{' not in resp.text and resp.text.endswith("data: [DONE]\n\n")
    assert bus.records[0].completion_tokens == 1 and bus.records[0].token_source == "backend"


async def test_body_forwarded_byte_for_byte_when_usage_asked(settings) -> None:
    raw = b'{"model":"sim-large",  "messages":[{"role":"user","content":"x"}],"stream":true,' \
          b'"stream_options":{"include_usage":true},"temperature":0.2,"vendor_extra":{"a":[1,2]}}'
    _, transport, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        resp = await client.post(
            "/v1/chat/completions", content=raw, headers={**ACME, "content-type": "application/json"}
        )
    assert transport.requests[0].body == raw
    assert '"usage":{"prompt_tokens":5' in resp.text


async def test_other_stream_options_survive_injection(settings) -> None:
    _, transport, _, client = gateway(settings, STREAM, ManualClock())
    async with client:
        await client.post(
            "/v1/chat/completions", json=chat_body(stream=True, stream_options={"continuous_usage_stats": False}),
            headers=ACME,
        )
    sent = orjson.loads(transport.requests[0].body)
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}


async def test_non_stream_body_untouched_and_client_key_not_forwarded(make_settings, monkeypatch) -> None:
    monkeypatch.setenv("SIM_KEY", "upstream-secret")
    settings = make_settings(backends=[{"name": "sim", "url": "http://127.0.0.1:9/v1", "api_key_env": "SIM_KEY",
                                        "models": ["sim-large"]}])
    raw = orjson.dumps(chat_body())
    _, transport, _, client = gateway(settings, STREAM, ManualClock())
    async with client:
        await client.post("/v1/chat/completions", content=raw, headers={**ACME, "x-custom": "kept"})
    request = transport.requests[0]
    assert request.body == raw
    assert request.url == "http://127.0.0.1:9/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer upstream-secret"
    assert request.headers["x-custom"] == "kept"
    assert "sk-acme-test" not in str(request.headers)


async def test_completions_api_routes_and_measures_text(settings) -> None:
    def chunk(text: str, finish=None) -> bytes:
        return b"data: " + orjson.dumps({"id": "c", "object": "text_completion", "model": "sim-small",
                                         "choices": [{"index": 0, "text": text, "finish_reason": finish}]}) + b"\n\n"

    handler = ok_stream((7.0, chunk("")), (11.0, chunk("Par")), (13.0, chunk("is", "stop")), (14.0, DONE))
    _, transport, bus, client = gateway(settings, handler, ManualClock())
    async with client:
        resp = await client.post("/v1/completions", json={"model": "sim-small", "prompt": "Capital of France:",
                                                          "stream": True}, headers=ACME)
    assert resp.status_code == 200
    assert transport.requests[0].url.endswith("/v1/completions")
    [record] = bus.records
    assert record.api == "completions" and record.finish_reason == "stop"
    assert record.ttft_ms == pytest.approx(11.0, abs=1e-6)
