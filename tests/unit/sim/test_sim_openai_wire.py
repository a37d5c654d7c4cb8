"""The wire format, as parsed by the official openai SDK and as raw SSE bytes."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from infersight.sim.server import SimServer
from infersight.sim.text import count_tokens


def ask(text: str = "What is the capital of France?") -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_non_stream_chat_is_parsed_by_sdk_and_carries_truth(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fast", messages=ask(), max_tokens=200
    )
    resp = raw.parse()
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    text = choice.message.content or ""
    assert resp.usage is not None and resp.usage.completion_tokens == count_tokens(text)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    sim = (resp.model_extra or {})["sim"]
    assert sim["question_id"] == "geo-01"
    assert raw.headers["x-sim-correct"] == ("true" if sim["correct"] else "false")
    assert ("Paris" in text) == sim["correct"]


def test_stream_with_usage_matches_openai_chunk_layout(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="fast", messages=ask(), stream=True, stream_options={"include_usage": True},
    ))
    first, *middle, last_choice, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None for c in middle)
    assert all(count_tokens(c.choices[0].delta.content or "") == 1 for c in middle)
    assert last_choice.choices[0].finish_reason == "stop"
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(middle)
    details = usage_chunk.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 0
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_usage_chunk_absent_unless_requested(sim: SimServer) -> None:
    body = {"model": "fast", "messages": ask(), "stream": True}
    text = httpx.post(sim.url + "/chat/completions", json=body, timeout=10).text
    events = text.split("\n\n")
    assert events[-2] == "data: [DONE]" and events[-1] == ""
    payloads = [orjson.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(p["choices"] for p in payloads)
    assert all("usage" not in p for p in payloads)
    with_usage = httpx.post(
        sim.url + "/chat/completions",
        json={**body, "stream_options": {"include_usage": True}}, timeout=10,
    ).text
    parsed = [orjson.loads(e[6:]) for e in with_usage.split("\n\n")[:-2]]
    assert all("usage" in p for p in parsed)
    assert all(p["usage"] is None for p in parsed[:-1]) and parsed[-1]["usage"]["total_tokens"] > 0


def test_ignore_eos_generates_exactly_max_tokens(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fast", messages=ask(), stream=True, max_tokens=100,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 100
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 100
    short = client.chat.completions.create(model="fast", messages=ask(), max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3


def test_legacy_completions_stream_and_non_stream(client: openai.OpenAI) -> None:
    resp = client.completions.create(model="fast", prompt="What is 7 multiplied by 8?", max_tokens=50)
    assert resp.object == "text_completion" and resp.choices[0].text
    assert (resp.model_extra or {})["sim"]["question_id"] == "math-02"
    default = client.completions.create(model="fast", prompt="hi", extra_body={"ignore_eos": True})
    assert default.usage is not None and default.usage.completion_tokens == 16  # vLLM default
    chunks = list(client.completions.create(model="fast", prompt="hi", max_tokens=5, stream=True))
    texts = [c.choices[0].text for c in chunks]
    assert len(texts) == 6 and texts[-1] == "" and chunks[-1].choices[0].finish_reason == "length"


def test_models_health_and_errors(sim: SimServer, client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"fast", "prefill", "one-slot", "slow", "thinker"}
    assert httpx.get(sim.base_url + "/health").status_code == 200
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=ask())
    assert nf.value.code == "model_not_found"
    bad = httpx.post(sim.url + "/chat/completions", content=b"{not json", timeout=5)
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    too_long = httpx.post(sim.url + "/chat/completions", timeout=5,
                          json={"model": "fast", "messages": ask(), "max_tokens": 10**6})
    assert too_long.status_code == 400 and "context length" in too_long.json()["error"]["message"]


def test_last_headers_records_trace_context(sim: SimServer, client: openai.OpenAI) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    client.chat.completions.create(
        model="fast", messages=ask(), extra_headers={"traceparent": tp, "X-Trace-Id": "abc"}
    )
    assert sim.app.last_headers["traceparent"] == tp
    assert sim.app.last_headers["x-trace-id"] == "abc"


def test_reasoner_streams_reasoning_before_content(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="thinker", messages=ask(), stream=True, max_tokens=500,
        stream_options={"include_usage": True},
    ))
    kinds = []
    for c in chunks[1:]:
        if not c.choices:
            continue
        extra = c.choices[0].delta.model_extra or {}
        if extra.get("reasoning_content"):
            kinds.append("r")
        elif c.choices[0].delta.content:
            kinds.append("c")
    assert kinds and kinds[0] == "r" and "c" in kinds
    assert kinds == sorted(kinds, reverse=True)  # every r before every c
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == kinds.count("r")
    assert usage.completion_tokens == len(kinds)
    full = client.chat.completions.create(model="thinker", messages=ask(), max_tokens=500)
    assert (full.choices[0].message.model_extra or {}).get("reasoning_content")
    assert full.usage is not None and full.usage.completion_tokens_details is not None
    assert (full.usage.completion_tokens_details.reasoning_tokens or 0) > 0
