"""OpenAI wire format: prompt rendering, response bodies and pre-templated SSE chunks.

Streamed token chunks are built by concatenating a per-request byte prefix and suffix around the
JSON-encoded token, because serialising a full dict per token would dominate the sim's CPU time
when benchmarks push hundreds of concurrent streams through it.
"""

from __future__ import annotations

from typing import Any

import orjson

from infersight.sim.engine import REASONING
from infersight.sim.text import tokenize

DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_infersight_sim"


class BadRequest(ValueError):
    """A request the sim rejects with HTTP 400 and an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, type_: str, code: str | int | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _content_text(content: Any) -> str:
    """Text of a message's content: a string or a list of OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest("each content part must be an object with a 'type'", "messages")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):  # OpenAI and vLLM refuse it too
                    raise BadRequest("a 'text' content part needs a string 'text'", "messages")
                texts.append(text)
        return "\n".join(texts)
    raise BadRequest("message content must be a string or a list of parts", "messages")


def render_chat(req: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(prompt text as a chat template would render it, last user message, prompt tokens)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    parts: list[str] = []
    last_user = ""
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a 'role'", "messages")
        text = _content_text(m.get("content"))
        if m["role"] == "user":
            last_user = text
        parts.append(f"<|{m['role']}|>\n{text}\n")
    parts.append("<|assistant|>\n")
    prompt = "".join(parts)
    return prompt, last_user, tokenize(prompt)


def render_completion(req: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(prompt text, text to search for a bank question, prompt tokens) of a completions call."""
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, prompt, tokenize(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        tokens = [str(t) for t in prompt]
        return " ".join(tokens), "", tokens
    raise BadRequest("'prompt' must be a string or one list of token ids", "prompt")


def stop_sequences(req: dict[str, Any]) -> list[str]:
    """The request's ``stop``: null, a string or a list of strings (empty ones are ignored)."""
    stop = req.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise BadRequest("'stop' must be a string or a list of strings", "stop")


def include_usage(req: dict[str, Any]) -> bool:
    """``stream_options.include_usage``. As OpenAI and vLLM do, ``stream_options`` without
    ``stream: true`` is a 400: the client expects a usage chunk that would never come."""
    opts = req.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    if not req.get("stream"):
        raise BadRequest("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return bool(opts.get("include_usage"))


def usage(prompt: int, completion: int, cached: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


class ChunkWriter:
    """SSE event bytes of one streamed response (chat or legacy completions)."""

    def __init__(self, rid: str, created: int, model: str, chat: bool, include_usage: bool):
        self.chat = chat
        self.include_usage = include_usage
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = {
            "id": rid, "object": obj, "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        head = orjson.dumps(self._head)[:-1] + b',"choices":[{"index":0,'
        tail = b',"logprobs":null,"finish_reason":null}]'
        tail += b',"usage":null}\n\n' if include_usage else b"}\n\n"
        if chat:
            self._pre_content = b"data: " + head + b'"delta":{"content":'
            self._pre_reason = b"data: " + head + b'"delta":{"reasoning_content":'
            self._post = b"}" + tail
        else:
            self._pre_content = self._pre_reason = b"data: " + head + b'"text":'
            self._post = tail

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = dict(self._head, choices=choices, **extra)
        if self.include_usage and "usage" not in extra:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def role(self) -> bytes:
        choice = {
            "index": 0, "delta": {"role": "assistant", "content": ""},
            "logprobs": None, "finish_reason": None,
        }
        return self._event([choice])

    def token(self, kind: int, text: str, logprobs: dict[str, Any] | None = None) -> bytes:
        if logprobs is not None:  # the rare request that asks for them: a whole event, serialised
            choice: dict[str, Any] = {"index": 0, "logprobs": logprobs, "finish_reason": None}
            if self.chat:
                choice["delta"] = {"content": text}
            else:
                choice["text"] = text
            return self._event([choice])
        pre = self._pre_reason if kind == REASONING else self._pre_content
        return pre + orjson.dumps(text) + self._post

    def finish(self, reason: str) -> bytes:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        return self._event([choice])

    def usage(self, u: dict[str, Any]) -> bytes:
        return self._event([], usage=u)


def full_response(
    *,
    rid: str,
    created: int,
    model: str,
    chat: bool,
    content: str,
    reasoning: str | None,
    finish_reason: str,
    usage_obj: dict[str, Any],
    sim: dict[str, Any],
    logprobs: dict[str, Any] | None = None,
) -> bytes:
    """Body of a non-streamed response, with the extra top-level ``sim`` truth field."""
    choice: dict[str, Any] = {"index": 0, "logprobs": logprobs, "finish_reason": finish_reason}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        choice["message"] = message
    else:
        choice["text"] = content
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": usage_obj,
            "sim": sim,
        }
    )
