"""The official openai client, sync and async, streaming and not, through the gateway to the simulator."""

from __future__ import annotations

import asyncio

import openai
import pytest

from infersight.exporters.jsonl import read_records

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_sync_chat_non_streaming(stack) -> None:
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    reply = client.chat.completions.with_raw_response.create(
        model="sim-large", messages=QUESTION, max_tokens=40, extra_headers={"x-infersight-use-case": "chat"}
    )
    completion = reply.parse()
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens <= 40
    trace_id = reply.headers["x-trace-id"]
    [record] = stack.records(1)
    assert record.trace_id == trace_id and record.tenant_id == "acme" and record.use_case == "chat"
    assert record.prompt_tokens == completion.usage.prompt_tokens
    assert record.completion_tokens == completion.usage.completion_tokens
    assert record.status_code == 200 and record.stream is False and record.backend == "sim"
    assert stack.sim.app.last_headers["traceparent"].split("-")[1] == trace_id


def test_sync_chat_streaming_hides_injected_usage(stack) -> None:
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    chunks = list(client.chat.completions.create(model="sim-small", messages=QUESTION, stream=True, max_tokens=30))
    assert all(chunk.usage is None for chunk in chunks), "the client did not ask for usage"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    [record] = stack.records(1)
    assert record.token_source == "backend" and record.completion_tokens and record.completion_tokens <= 30
    assert record.ttft_ms is not None and 0 < record.ttft_ms <= record.total_ms
    assert record.itl_ms_p50 is not None and record.itl_ms_p99 >= record.itl_ms_p50
    assert record.output_tokens_per_s and record.output_tokens_per_s > 0
    assert record.finish_reason in {"stop", "length"}


def test_sync_completions_streaming_with_usage(stack) -> None:
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    chunks = list(client.completions.create(model="sim-small", prompt="The capital of France is", stream=True,
                                            max_tokens=12, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == stack.records(1)[0].completion_tokens
    assert stack.records(1)[0].api == "completions"


async def test_async_streaming_and_not_concurrently(stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.url, api_key="sk-globex-test", max_retries=0)

    async def streamed() -> str:
        stream = await client.chat.completions.create(model="sim-reasoner", messages=QUESTION, stream=True,
                                                      max_tokens=400, stream_options={"include_usage": True})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def plain() -> str:
        reply = await client.chat.completions.create(model="sim-large", messages=QUESTION, max_tokens=20)
        return reply.choices[0].message.content or ""

    results = await asyncio.gather(*(streamed() for _ in range(4)), *(plain() for _ in range(4)))
    await client.close()
    assert all(results)
    records = await asyncio.to_thread(stack.records, 8)
    assert len(records) == 8 and {r.tenant_id for r in records} == {"globex"}
    reasoner = [r for r in records if r.model_id == "sim-reasoner"]
    assert len(reasoner) == 4 and all(r.reasoning_tokens and r.reasoning_tokens > 0 for r in reasoner)
    assert len({r.trace_id for r in records}) == 8


def test_records_land_in_jsonl(stack) -> None:
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    client.chat.completions.create(model="sim-small", messages=QUESTION, max_tokens=5)
    stack.records(1)
    on_disk = read_records(stack.data_dir)
    assert len(on_disk) == 1 and on_disk[0].model_id == "sim-small"


def test_openai_client_sees_gateway_errors(stack) -> None:
    bad_key = openai.OpenAI(base_url=stack.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.chat.completions.create(model="sim-large", messages=QUESTION)
    assert auth.value.body["code"] == "invalid_api_key"
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="sim-large", messages=QUESTION, extra_headers={"x-sim-fault": "429"})
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim-large", messages=QUESTION, extra_headers={"x-sim-fault": "500"})
    records = stack.records(4)
    assert [(r.status_code, r.error_type) for r in records] == [
        (401, "invalid_api_key"), (404, "model_not_found"), (429, "upstream_429"), (500, "upstream_500")
    ]
