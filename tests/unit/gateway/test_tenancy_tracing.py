"""Tenant from the bearer key, bounded labels, and W3C trace context in and out."""

from __future__ import annotations

import re

from infersight.gateway.upstreams.mock import ManualClock
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, ok_stream

STREAM = ok_stream((1.0, chat_chunk("x")), (2.0, DONE))
GLOBEX = {"authorization": "Bearer sk-globex-test"}


async def test_use_case_and_request_type_are_bounded(settings) -> None:
    _, _, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(),
                          headers={**ACME, "x-infersight-use-case": "summarize", "x-infersight-request-type": "batch"})
        await client.post("/v1/chat/completions", json=chat_body(),
                          headers={**ACME, "x-infersight-use-case": "made-up-123", "x-infersight-request-type": "zzz"})
        await client.post("/v1/chat/completions", json=chat_body(), headers=ACME)
    assert [(r.use_case, r.request_type) for r in bus.records] == [
        ("summarize", "batch"), ("other", "other"), ("other", "other")
    ]


async def test_hashed_key_and_per_tenant_request_types(settings) -> None:
    _, _, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(),
                                 headers={**GLOBEX, "x-infersight-use-case": "search",
                                          "x-infersight-request-type": "interactive"})
    assert resp.status_code == 200
    [record] = bus.records
    assert (record.tenant_id, record.use_case, record.request_type) == ("globex", "search", "other")


async def test_traceparent_is_continued_and_propagated(settings) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    _, transport, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(),
                                 headers={**ACME, "traceparent": f"00-{trace_id}-{parent}-01"})
    assert resp.headers["x-trace-id"] == trace_id
    sent = transport.requests[0].headers
    version, sent_trace, sent_span, flags = sent["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01")
    assert sent_span != parent and sent_span == bus.records[0].span_id
    assert sent["x-trace-id"] == trace_id and bus.records[0].trace_id == trace_id
    assert bus.records[0].parent_span_id == parent


async def test_x_trace_id_accepted_and_new_trace_otherwise(settings) -> None:
    given = "0af7651916cd43dd8448eb211c80319c"
    _, transport, bus, client = gateway(settings, STREAM, ManualClock())
    async with client:
        a = await client.post("/v1/chat/completions", json=chat_body(), headers={**ACME, "x-trace-id": given})
        b = await client.post("/v1/chat/completions", json=chat_body(), headers={**ACME, "traceparent": "garbage"})
        c = await client.post("/v1/chat/completions", json=chat_body(), headers={**ACME, "x-trace-id": "not-hex"})
    assert a.headers["x-trace-id"] == given
    for resp in (b, c):
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-trace-id"]) and resp.headers["x-trace-id"] != given
    assert transport.requests[1].headers["traceparent"].split("-")[1] == b.headers["x-trace-id"]
    assert len({r.trace_id for r in bus.records}) == 3


async def test_error_responses_carry_the_callers_trace_id(settings) -> None:
    given = "0af7651916cd43dd8448eb211c80319c"
    _, _, _, client = gateway(settings, STREAM, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers={"x-trace-id": given})
        missing = await client.get("/nope", headers={"x-trace-id": given})
    assert resp.status_code == 401 and resp.headers["x-trace-id"] == given
    assert missing.status_code == 404 and missing.headers["x-trace-id"] == given


async def test_models_endpoint_requires_a_key(settings) -> None:
    _, _, _, client = gateway(settings, STREAM, ManualClock())
    async with client:
        anonymous = await client.get("/v1/models")
        listed = await client.get("/v1/models", headers=ACME)
        health = await client.get("/healthz")
    assert anonymous.status_code == 401
    assert {m["id"] for m in listed.json()["data"]} == {"sim-large", "sim-small", "sim-reasoner", "sim-bench"}
    assert health.json()["status"] == "ok"
