"""Builders for scripted OpenAI SSE streams and an in-process gateway client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson

from infersight.config import Settings
from infersight.gateway.app import GatewayApp
from infersight.gateway.upstreams.mock import ManualClock, MockTransport, ScriptedResponse
from infersight.runtime import build_gateway
from tests.conftest import DirectBus

ACME = {"authorization": "Bearer sk-acme-test"}


def sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


def chat_chunk(content: str | None = None, *, role: bool = False, finish: str | None = None, **delta: Any) -> bytes:
    d: dict[str, Any] = dict(delta)
    if role:
        d["role"] = "assistant"
        d.setdefault("content", "")
    if content is not None:
        d["content"] = content
    return sse({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "sim-large",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    })


def usage_chunk(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> bytes:
    return sse({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "sim-large", "choices": [],
        "usage": {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    })


DONE = b"data: [DONE]\n\n"


def chat_body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-large", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "stream": stream, **extra}


def gateway(
    settings: Settings,
    handler: Callable[..., Any],
    clock: ManualClock | None = None,
) -> tuple[GatewayApp, MockTransport, DirectBus, httpx.AsyncClient]:
    transport = MockTransport(handler, clock=clock)
    bus = DirectBus()
    app = build_gateway(settings, transport=transport, bus=bus, clock=clock)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
    return app, transport, bus, client


def ok_stream(*chunks: tuple[float, bytes]) -> Callable[[Any], ScriptedResponse]:
    return lambda request: ScriptedResponse(chunks=list(chunks))
