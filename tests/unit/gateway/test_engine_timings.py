"""Engine-reported per-request timings: TGI's headers and llama.cpp's ``timings`` object, to
``queue_ms`` and ``engine_inference_ms``; anything not a finite, non-negative number is ignored."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from infersight.gateway.engine_timings import header_ms, json_ms, observe_headers, observe_timings
from infersight.gateway.sse import inspect_chunk
from infersight.gateway.upstreams.mock import ManualClock, ScriptedResponse
from infersight.model import RequestRecord
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, sse

# What llama.cpp's server (llama-server) returns: 68 prompt tokens, 60 of them from its cache.
LLAMA_TIMINGS = {"cache_n": 60, "prompt_n": 8, "prompt_ms": 43.237, "prompt_per_token_ms": 5.404625,
                 "prompt_per_second": 185.03, "predicted_n": 25, "predicted_ms": 238.74,
                 "predicted_per_token_ms": 9.5496, "predicted_per_second": 104.72}
LLAMA_MS = 43.237 + 238.74
LLAMA_CHAT = {
    "choices": [{"finish_reason": "stop", "index": 0,
                 "message": {"role": "assistant", "content": "The capital of France is Paris."}}],
    "created": 1735689600, "model": "sim-large", "system_fingerprint": "b4600-8f2a4b52", "object": "chat.completion",
    "usage": {"completion_tokens": 25, "prompt_tokens": 68, "total_tokens": 93},
    "id": "chatcmpl-1Qz6yq2tEdUbBfx0aQbXJ1b5ZkmqRg3T", "timings": LLAMA_TIMINGS,
}
# What TGI's OpenAI route sends with a non-streamed reply (its router's generate headers).
TGI_HEADERS = {"content-type": "application/json", "x-compute-type": "1-nvidia-a10g", "x-compute-time": "1",
               "x-compute-characters": "95", "x-total-time": "1342", "x-validation-time": "1", "x-queue-time": "17",
               "x-inference-time": "1323", "x-time-per-token": "52", "x-prompt-tokens": "21",
               "x-generated-tokens": "25"}
OPENAI_CHAT = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "sim-large",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 21, "completion_tokens": 25, "total_tokens": 46}}


def record() -> RequestRecord:
    return RequestRecord(trace_id="t" * 32, span_id="s" * 16, tenant_id="acme", model_id="m", backend="b")


# --- parsing ---------------------------------------------------------------------------------------------------


def test_tgi_headers() -> None:
    rec = record()
    observe_headers(TGI_HEADERS, rec, None)
    assert (rec.queue_ms, rec.engine_inference_ms) == (17.0, 1323.0)
    assert rec.instance is None


def test_llama_cpp_timings() -> None:
    rec = record()
    observe_timings(LLAMA_TIMINGS, rec)
    assert rec.engine_inference_ms == pytest.approx(281.977) and rec.queue_ms is None


@pytest.mark.parametrize("text", ["", "abc", "-1", "nan", "NaN", "inf", "-inf", "1e400", "12ms", "1" * 40])
def test_bad_header_values_are_ignored(text: str) -> None:
    assert header_ms(text) is None
    rec = record()
    observe_headers({"x-queue-time": text, "x-inference-time": text}, rec, None)
    assert rec.queue_ms is None and rec.engine_inference_ms is None


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), (" 17 ", 17.0), ("12.5", 12.5)])
def test_good_header_values(text: str, value: float) -> None:
    assert header_ms(text) == value


@pytest.mark.parametrize("value", [None, True, False, "43.2", -0.5, math.nan, math.inf, -math.inf, [1], {"ms": 1},
                                   10**400])
def test_bad_json_values_are_ignored(value: Any) -> None:
    assert json_ms(value) is None
    rec = record()
    observe_timings({**LLAMA_TIMINGS, "prompt_ms": value}, rec)
    assert rec.engine_inference_ms is None


def test_timings_need_both_halves() -> None:
    rec = record()
    observe_timings({"prompt_ms": 43.237, "prompt_n": 8}, rec)
    assert rec.engine_inference_ms is None
    observe_timings({"prompt_ms": 0, "predicted_ms": 12}, rec)
    assert rec.engine_inference_ms == 12.0


def test_the_chunk_inspector_carries_timings() -> None:
    data = orjson.dumps({"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], "timings": LLAMA_TIMINGS})
    info = inspect_chunk(data)
    assert info is not None and info.timings == LLAMA_TIMINGS and info.finish_reason == "stop"
    not_a_dict = inspect_chunk(b'{"choices":[],"timings":[1,2]}')
    assert not_a_dict is not None and not_a_dict.timings is None


# --- through the gateway ---------------------------------------------------------------------------------------


async def one_record(settings, handler, body: dict[str, Any]) -> tuple[Any, RequestRecord]:
    _, _, bus, client = gateway(settings, handler, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=body, headers=ACME)
    [rec] = bus.records
    return resp, rec


async def test_tgi_non_streamed_reply(settings) -> None:
    payload = orjson.dumps(OPENAI_CHAT)
    resp, rec = await one_record(settings, lambda r: ScriptedResponse(headers=TGI_HEADERS, chunks=[(5.0, payload)]),
                                 chat_body())
    assert resp.content == payload and resp.headers["x-queue-time"] == "17"  # forwarded untouched
    assert (rec.queue_ms, rec.engine_inference_ms) == (17.0, 1323.0)
    assert rec.completion_tokens == 25


async def test_tgi_bad_header_leaves_the_field_empty(settings) -> None:
    headers = {**TGI_HEADERS, "x-queue-time": "-3", "x-inference-time": "soon"}
    _, rec = await one_record(settings, lambda r: ScriptedResponse(
        headers=headers, chunks=[(5.0, orjson.dumps(OPENAI_CHAT))]), chat_body())
    assert rec.status_code == 200 and rec.queue_ms is None and rec.engine_inference_ms is None


async def test_llama_cpp_non_streamed_reply(settings) -> None:
    payload = orjson.dumps(LLAMA_CHAT)
    resp, rec = await one_record(settings, lambda r: ScriptedResponse(
        headers={"content-type": "application/json; charset=utf-8"}, chunks=[(5.0, payload)]), chat_body())
    assert resp.content == payload
    assert rec.engine_inference_ms == pytest.approx(LLAMA_MS) and rec.queue_ms is None
    assert (rec.prompt_tokens, rec.completion_tokens) == (68, 25)


def llama_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    """A llama-server stream chunk: compact JSON, its own key order."""
    return sse({"choices": [{"finish_reason": finish, "index": 0, "delta": delta}], "created": 1735689600,
                "id": "chatcmpl-1Qz6", "model": "sim-large", "system_fingerprint": "b4600-8f2a4b52",
                "object": "chat.completion.chunk", **extra})


def llama_stream(*, usage_chunk: bool, per_token: bool = False) -> list[tuple[float, bytes]]:
    token_extra = {"timings": {**LLAMA_TIMINGS, "prompt_ms": 1.0, "predicted_ms": 1.0}} if per_token else {}
    chunks = [llama_chunk({"role": "assistant", "content": None}),
              llama_chunk({"content": "Paris"}, **token_extra), llama_chunk({"content": " it is."}, **token_extra)]
    usage = {"completion_tokens": 25, "prompt_tokens": 68, "total_tokens": 93}
    if usage_chunk:  # with include_usage, llama-server puts timings on the usage chunk, the last one
        chunks += [llama_chunk({}, "stop"),
                   sse({"choices": [], "created": 1735689600, "id": "chatcmpl-1Qz6", "model": "sim-large",
                        "system_fingerprint": "b4600-8f2a4b52", "object": "chat.completion.chunk", "usage": usage,
                        "timings": LLAMA_TIMINGS})]
    else:
        chunks.append(llama_chunk({}, "stop", timings=LLAMA_TIMINGS))
    return [(float(i + 1), c) for i, c in enumerate([*chunks, DONE])]


async def test_llama_cpp_stream_timings_on_the_final_chunk(settings) -> None:
    stream = llama_stream(usage_chunk=False)
    resp, rec = await one_record(settings, lambda r: ScriptedResponse(chunks=stream),
                                 chat_body(stream=True, stream_options={"include_usage": False}))
    assert rec.engine_inference_ms == pytest.approx(LLAMA_MS)
    assert '"timings":{' in resp.text  # forwarded as sent


async def test_llama_cpp_stream_timings_on_the_usage_chunk_the_gateway_hides(settings) -> None:
    stream = llama_stream(usage_chunk=True)
    resp, rec = await one_record(settings, lambda r: ScriptedResponse(chunks=stream), chat_body(stream=True))
    assert rec.engine_inference_ms == pytest.approx(LLAMA_MS) and rec.completion_tokens == 25
    assert '"usage":{' not in resp.text  # the client did not ask for usage


async def test_timings_on_plain_text_chunks_are_not_parsed(settings) -> None:
    """``timings_per_token``: every text chunk carries running timings; only the final one is read."""
    stream = llama_stream(usage_chunk=False, per_token=True)
    _, rec = await one_record(settings, lambda r: ScriptedResponse(chunks=stream), chat_body(stream=True))
    assert rec.engine_inference_ms == pytest.approx(LLAMA_MS)
    only_text = [item for item in stream if b'"finish_reason":"stop"' not in item[1]]
    _, rec = await one_record(settings, lambda r: ScriptedResponse(chunks=only_text), chat_body(stream=True))
    assert rec.engine_inference_ms is None  # the text chunks' timings were never looked at


async def test_openai_style_streams_have_none(settings) -> None:
    stream = [(1.0, chat_chunk(role=True)), (2.0, chat_chunk("Hi")), (3.0, chat_chunk(finish="stop")), (4.0, DONE)]
    _, rec = await one_record(settings, lambda r: ScriptedResponse(chunks=stream), chat_body(stream=True))
    assert rec.status_code == 200 and rec.queue_ms is None and rec.engine_inference_ms is None
