"""A client that goes away mid-stream cancels the upstream request, and the record says so."""

from __future__ import annotations

import asyncio

import orjson

from infersight.gateway.upstreams.mock import ScriptedResponse
from infersight.runtime import build_gateway
from infersight.gateway.upstreams.mock import MockTransport
from tests.conftest import DirectBus
from tests.unit.gateway.helpers import chat_body, chat_chunk


async def test_client_disconnect_cancels_upstream_and_is_recorded(settings) -> None:
    def handler(request):
        chunks = [(5.0 * i, chat_chunk(f"t{i}")) for i in range(1, 200)]
        return ScriptedResponse(chunks=chunks)

    transport = MockTransport(handler)  # real time: 5 ms per chunk, about a second in all
    bus = DirectBus()
    app = build_gateway(settings, transport=transport, bus=bus)
    body = orjson.dumps(chat_body(stream=True))
    sent: list[dict] = []
    gone = asyncio.Event()
    delivered = 0

    async def receive():
        nonlocal delivered
        if delivered == 0:
            delivered = 1
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) >= 4:
            gone.set()

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"authorization", b"Bearer sk-acme-test"), (b"content-type", b"application/json")]}
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    assert transport.responses[0].closed, "the upstream response must be closed (cancelling the engine)"
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert len(bodies) < 20, "relaying must stop soon after the disconnect"
    [record] = bus.records
    assert record.client_disconnected is True
    assert (record.status_code, record.error_type) == (499, "client_disconnected")
    assert record.ttft_ms is not None
