"""Incremental Server-Sent Events splitting and OpenAI chunk inspection.

The relay forwards each complete event's original bytes (never re-serialised), so what the client
receives is byte-identical to what the engine sent, except for the usage chunk the gateway itself
asked for. Events are split on a blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``, per the SSE spec).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from infersight.gateway.upstreams.base import UpstreamError

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")
DONE = b"[DONE]"
# Delta fields that carry generated output. The first chunk that has any of them marks TTFT.
_OUTPUT_DELTA_FIELDS = ("content", "reasoning_content", "reasoning", "refusal", "tool_calls", "function_call")


MAX_EVENT_BYTES = 16 << 20
"""Longest unterminated event the relay holds. An engine that never ends an event (a bug, or a proxy
in front of it gone wrong) would otherwise grow the buffer until the read timeout, or forever while
it keeps sending; 16 MiB is far above any real chunk (a whole long answer fits in one)."""


class EventTooLarge(UpstreamError):
    """The engine sent more than ``MAX_EVENT_BYTES`` without ending an event: the stream is cut."""

    error_type = "upstream_event_too_large"


class SseSplitter:
    """Feeds raw bytes, yields complete events as (raw_bytes, data_payload_or_None)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bool:
        """True while part of an event is waiting for the rest of its bytes."""
        return bool(self._buffer)

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        if len(self._buffer) > MAX_EVENT_BYTES:  # checked on the next read: this one's whole events went out
            self._buffer = b""  # the partial event is not forwarded: it would end the stream mid-JSON
            raise EventTooLarge(f"the engine sent over {MAX_EVENT_BYTES >> 20} MiB without ending an SSE event; "
                                "the stream was cut")
        if not self._buffer and chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == len(chunk) - 2 \
                and b"\r" not in chunk:
            # The common case on a healthy stream: one whole event per network read.
            return [(chunk, event_data(chunk[:-2]))]
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[tuple[bytes, bytes | None]] = []
        start = 0
        for match in _EVENT_END.finditer(buffer):
            end = match.end()
            raw = buffer[start:end]
            events.append((raw, event_data(buffer[start : match.start()])))
            start = end
        self._buffer = buffer[start:]
        return events

    def remainder(self) -> bytes:
        """Bytes of an unterminated final event (forwarded as-is at end of stream)."""
        rest, self._buffer = self._buffer, b""
        return rest


def event_data(block: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event block, or None if it has none (comments, pings)."""
    if block.startswith(b"data:") and b"\n" not in block and b"\r" not in block:
        value = block[5:]
        return value[1:] if value.startswith(b" ") else value
    parts: list[bytes] = []
    for line in _LINE.split(block):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


@dataclass(slots=True)
class ChunkInfo:
    """What one stream chunk tells the meter."""

    has_output: bool = False
    lead_output: bool = False  # the output is (also) choice 0's: per-sequence ITL when n > 1
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    usage_only: bool = False  # ``choices: []`` plus usage: the chunk include_usage adds
    error: dict[str, Any] | None = None
    model: str | None = None
    timings: dict[str, Any] | None = None  # llama.cpp's per-request timings (gateway/engine_timings.py)


_NOT_PLAIN = (b'": ', b'"finish_reason":"', b'"usage":{', b'"error"', b'"content":""', b"[DONE]", b"\r",
              b'"index":1')


def plain_output_events(chunk: bytes) -> int:
    """n when ``chunk`` is exactly n complete ``data:`` events, each just the next piece of text.

    The relay's fast path for a whole network read: a handful of byte scans instead of splitting,
    and parsing each event. Conservative like :func:`plain_output_chunk`; 0 means "take the slow path".
    """
    if not chunk.endswith(b"\n\n"):
        return 0
    events = chunk.count(b"\n\n")
    if chunk.count(b"data: {") != events or chunk.count(b'"content":"') != events:
        return 0
    for marker in _NOT_PLAIN:
        if marker in chunk:
            return 0
    return events


def plain_output_chunk(data: bytes) -> bool:
    """True for a compact-JSON chunk that carries text and nothing else the meter needs.

    Most chunks of a stream are just the next token. This byte test lets the relay skip the JSON
    parse for them; it is conservative: anything it is unsure of (spaces after colons, a finish
    reason, usage, an error, an empty or missing content) returns False and gets the full parse.
    Inside a JSON string every quote is escaped, so ``"content":"`` cannot match string contents.
    """
    if b'": ' in data or b'"finish_reason":"' in data or b'"usage":{' in data or b'"error"' in data:
        return False
    at = data.find(b'"content":"')
    if at >= 0:
        return data[at + 11 : at + 12] != b'"'
    at = data.find(b'"text":"')
    return at >= 0 and data[at + 8 : at + 9] != b'"'


def inspect_chunk(data: bytes) -> ChunkInfo | None:
    """Parse one ``data:`` payload; None for ``[DONE]`` or non-JSON payloads."""
    if data == DONE or not data:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = loads_lenient(data)
    if not isinstance(obj, dict):
        return None
    return inspect_object(obj)


def loads_lenient(data: bytes) -> Any:
    """JSON with bytes that are not UTF-8 read as U+FFFD, as clients decode it; None if still not JSON."""
    try:
        return orjson.loads(data.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        return None


def parses(data: bytes) -> bool:
    """Whether a ``data:`` payload is JSON (read leniently) or ``[DONE]``: one that is not makes the
    ``openai`` client raise mid-stream, so the request failed for its caller."""
    return data == DONE or not data.strip() or loads_lenient(data) is not None


def inspect_object(obj: dict[str, Any]) -> ChunkInfo:
    info = ChunkInfo()
    usage = obj.get("usage")
    if isinstance(usage, dict):
        info.usage = usage
    error = obj.get("error")
    if isinstance(error, dict):
        info.error = error
    elif isinstance(error, str) and error:
        # TGI before 2.1: {"error": "...", "error_type": "..."}, then [DONE]. The openai client raises on
        # any truthy "error"; the record must say so too (it said success).
        info.error = {"message": error, "type": obj.get("error_type")}
    timings = obj.get("timings")
    if isinstance(timings, dict):
        info.timings = timings
    choices = obj.get("choices")
    if isinstance(choices, list):
        if not choices and info.usage is not None:
            info.usage_only = True
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            if reason and isinstance(reason, str):  # anything else would be a record the store refuses
                info.finish_reason = reason
            if choice_has_output(choice):
                info.has_output = True
                if choice.get("index", 0) == 0:
                    info.lead_output = True
    return info


def choice_has_output(choice: dict[str, Any]) -> bool:
    """True when a chat delta or a completions choice carries generated text, reasoning or tool calls."""
    text = choice.get("text")
    if isinstance(text, str) and text:
        return True
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for name in _OUTPUT_DELTA_FIELDS:
            if delta.get(name):
                return True
    return False
