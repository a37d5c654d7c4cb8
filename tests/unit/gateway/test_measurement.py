"""TTFT, ITL and totals from scripted chunk timings at the transport seam (exact with a manual clock)."""

from __future__ import annotations

import orjson
import pytest

from infersight.gateway.upstreams.base import UpstreamDisconnected
from infersight.gateway.upstreams.mock import ManualClock, ScriptedResponse
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, ok_stream, usage_chunk


async def test_ttft_and_itl_exact_from_scripted_timings(settings) -> None:
    clock = ManualClock()
    handler = ok_stream(
        (50.0, chat_chunk(role=True)),          # role-only: not the first token
        (120.0, chat_chunk("Paris")),            # TTFT = 120 ms
        (150.0, chat_chunk(" is")),
        (190.0, chat_chunk(" the")),
        (260.0, chat_chunk(" capital")),
        (262.0, chat_chunk(finish="stop")),
        (263.0, usage_chunk(14, 4)),
        (264.0, DONE),
    )
    _, _, bus, client = gateway(settings, handler, clock)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    assert resp.status_code == 200
    [record] = bus.records
    assert record.ttft_ms == pytest.approx(120.0, abs=1e-6)
    gaps = [30.0, 40.0, 70.0]
    assert record.itl_ms_mean == pytest.approx(sum(gaps) / 3, abs=1e-6)
    assert record.itl_ms_p50 == pytest.approx(40.0, abs=1e-6)
    assert record.itl_ms_p99 == pytest.approx(40.0 + 0.98 * 30.0, abs=1e-6)
    assert record.total_ms == pytest.approx(264.0, abs=1e-6)
    assert record.output_tokens_per_s == pytest.approx(3 / 0.140, rel=1e-6)
    assert (record.prompt_tokens, record.completion_tokens, record.token_source) == (14, 4, "backend")
    assert record.finish_reason == "stop"
    assert record.stream is True and record.status_code == 200 and record.error_type is None


async def test_reasoning_delta_counts_as_first_token(settings) -> None:
    clock = ManualClock()
    handler = ok_stream(
        (10.0, chat_chunk(role=True)),
        (40.0, chat_chunk(reasoning_content="Let me think")),
        (90.0, chat_chunk("Paris")),
        (91.0, chat_chunk(finish="stop")),
        (92.0, usage_chunk(10, 20, reasoning=15)),
        (93.0, DONE),
    )
    _, _, bus, client = gateway(settings, handler, clock)
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    [record] = bus.records
    assert record.ttft_ms == pytest.approx(40.0, abs=1e-6)
    assert record.reasoning_tokens == 15


async def test_events_split_across_network_chunks_keep_exact_times(settings) -> None:
    clock = ManualClock()
    first = chat_chunk("Hello")
    handler = ok_stream(
        (10.0, chat_chunk(role=True) + first[:7]),  # half an event: not yet a token
        (25.0, first[7:]),                            # the event completes here
        (45.0, chat_chunk(" world") + chat_chunk(finish="stop") + usage_chunk(3, 2) + DONE),
    )
    _, _, bus, client = gateway(settings, handler, clock)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    [record] = bus.records
    assert record.ttft_ms == pytest.approx(25.0, abs=1e-6)
    assert record.itl_ms_p50 == pytest.approx(20.0, abs=1e-6)
    texts = [orjson.loads(line[6:]) for line in resp.text.split("\n\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in texts) == "Hello world"


async def test_non_streaming_usage_and_rate(settings) -> None:
    clock = ManualClock()
    body = {
        "id": "x", "object": "chat.completion", "model": "sim-large",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 50, "total_tokens": 59},
    }

    def handler(request):
        return ScriptedResponse(headers={"content-type": "application/json"}, chunks=[(500.0, orjson.dumps(body))])

    _, _, bus, client = gateway(settings, handler, clock)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=ACME)
    assert resp.json() == body
    [record] = bus.records
    assert record.ttft_ms is None and record.total_ms == pytest.approx(500.0, abs=1e-6)
    assert record.output_tokens_per_s == pytest.approx(100.0)
    assert (record.prompt_tokens, record.completion_tokens, record.finish_reason) == (9, 50, "stop")


async def test_without_backend_usage_tokens_are_estimated(settings) -> None:
    clock = ManualClock()
    handler = ok_stream((5.0, chat_chunk("a")), (6.0, chat_chunk("b")), (7.0, chat_chunk(finish="length")), (8.0, DONE))
    _, _, bus, client = gateway(settings, handler, clock)
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    [record] = bus.records
    assert record.token_source == "estimate"
    assert record.prompt_tokens == record.prompt_tokens_estimated and record.prompt_tokens > 0
    assert record.prompt_tokens_estimate_kind == "heuristic"
    assert record.completion_tokens == 2 and record.finish_reason == "length"


@pytest.mark.parametrize(("status", "stream", "cut"), [(500, False, False), (429, True, False), (200, True, True)])
async def test_an_error_answer_without_output_counts_no_prompt_tokens(settings, status, stream, cut) -> None:
    """Was: the engine's 429 or 500 (no usage, no output) got the gateway's prompt estimate as its
    prompt_tokens, so refused requests added to token totals and cost. The estimate is kept in
    prompt_tokens_estimated. A stream the engine cut after output did consume its prompt: counted."""
    error = orjson.dumps({"error": {"message": "busy", "type": "server_error", "code": None}})
    if cut:
        script = ScriptedResponse(chunks=[(5.0, chat_chunk("Par"))], raise_after=UpstreamDisconnected("reset"))
    else:
        script = ScriptedResponse(status=status, headers={"content-type": "application/json"}, chunks=[(5.0, error)])
    app, _, bus, client = gateway(settings, lambda request: script, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=stream), headers=ACME)
    assert resp.status_code == status
    [record] = bus.records
    assert record.token_source == "estimate" and record.prompt_tokens_estimated and record.prompt_tokens_estimated > 0
    assert record.error_type is not None
    counted = app.metrics.registry.get_sample_value(
        "infersight_tokens_total", {"tenant": "acme", "model": "sim-large", "backend": "sim", "use_case": "other",
                                    "token_type": "input"})
    if cut:
        assert record.prompt_tokens == record.prompt_tokens_estimated and counted == record.prompt_tokens
    else:
        assert record.prompt_tokens is None and not counted
