"""The seam between the gateway and the evaluation layer (wired by ``runtime``).

The gateway knows nothing of sampling, masking or judges: it asks a ``RequestTap`` at request start
whether to keep the response's bytes, and hands it the finished record (before the bus sees it, and
before the last byte reaches the client) so that the sampling decision is in the record.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Protocol

from infersight.model import RequestRecord


# What carries the answer in an event: text (chat's content or refusal; completions' text), tool calls,
# logprobs. Inside a JSON string every quote is escaped, so these cannot match a reasoning delta's
# text; chat's "text" keys are reasoning (OpenRouter's reasoning_details), not the answer.
_ANSWER_BYTES = {
    api: re.compile(rb'"(?:' + keys + rb')":\s?"[^"]|"(?:tool_calls|function_call)":\s?[\[{]|"logprobs":\s?\{')
    for api, keys in (("chat", b"content|refusal"), ("completions", b"text"))
}


_ANSWER_KEY_REACH = 32
"""Longer than any match of ``_ANSWER_BYTES`` (``"function_call": {`` is 18 bytes)."""


class ResponseCapture:
    """The response's raw bytes, kept up to ``limit``: the first half and the last half (what was cut
    in between is flagged, never silently). Why both ends: a reasoning model streams its thinking
    first and its answer last, and a capture of the head alone (about 5,000 tokens of thinking) kept
    none of the answer, which then escaped evaluation on exactly the hardest questions."""

    __slots__ = ("chunks", "size", "limit", "overflowed", "sse", "tail", "tail_size", "answer_bytes", "dropped_end")

    def __init__(self, limit: int, api: str = "chat") -> None:
        self.chunks: list[bytes] = []  # the head, up to limit // 2 (the whole response when it fits)
        self.size = 0
        self.limit = limit
        self.overflowed = False
        # how the response came: an SSE stream, or one JSON body (an engine may answer a stream
        # request with JSON); None until the proxy knows
        self.sse: bool | None = None
        self.tail: deque[bytes] = deque()  # once the head is full: the latest chunks, up to limit // 2
        self.tail_size = 0
        self.answer_bytes = _ANSWER_BYTES.get(api, _ANSWER_BYTES["chat"])
        self.dropped_end = b""  # the last bytes cut so far: an answer key may straddle two cuts

    def add(self, chunk: bytes) -> None:
        if not self.tail:
            if self.size + len(chunk) <= self.limit:
                self.chunks.append(chunk)
                self.size += len(chunk)
                return
            self._start_tail(chunk)
        else:
            self.tail.append(chunk)
            self.tail_size += len(chunk)
        half = self.limit // 2
        while self.tail_size - len(self.tail[0]) >= half:  # whole chunks out of the middle
            self._drop(self.tail.popleft())
        if self.tail_size > half:  # then the part of the oldest that is past the tail's size
            first = self.tail[0]
            cut = self.tail_size - half
            self._drop(first[:cut])
            self.tail[0] = first[cut:]

    def _drop(self, cut: bytes) -> None:
        """Bytes leave the middle. Only answer bytes make the text cut (``overflowed``): the thinking
        a reasoning model streams before its answer does not (its deltas carry ``"content":""``)."""
        self.tail_size -= len(cut)
        if self.overflowed:
            return
        # Searched with the end of the previous cut: events of one size, read one per chunk, were each
        # cut at the same offset inside ``"content":"``, and a whole answer left unflagged.
        joined = self.dropped_end + cut
        if self.sse is False or self.answer_bytes.search(joined) is not None:
            self.overflowed = True  # one JSON body cut anywhere no longer parses: its text is lost
        self.dropped_end = joined[-_ANSWER_KEY_REACH:]

    def _start_tail(self, chunk: bytes) -> None:
        """The response outgrew the limit: the head keeps its first ``limit // 2`` bytes, the rest
        (``chunk`` included) starts the tail. Split by bytes, not by chunks: an engine that sends a
        large body in one or two chunks left the head empty, and the start of the answer (a non-
        streamed reasoning model's thinking and its answer) was lost."""
        half = self.limit // 2
        whole = b"".join([*self.chunks, chunk])  # once per response that overflows
        self.chunks, self.size = [whole[:half]], half
        self.tail.append(whole[half:])
        self.tail_size = len(whole) - half

    def data(self) -> bytes:
        head = b"".join(self.chunks)
        if not self.tail:
            return head
        # a blank line between the two: an event cut at either edge stays a line of its own, which
        # the reader skips as unparseable instead of gluing it to the next
        return head + b"\n\n" + b"".join(self.tail)


class RequestTap(Protocol):
    def begin(self, record: RequestRecord, body: dict[str, Any]) -> ResponseCapture | None:
        """Called once the tenant and body are known. Sets the initial sampling decision on the
        record; returns a capture when the response's content is needed, else None."""
        ...

    def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body the engine gets: ``body`` itself, or a copy without the fields that are the
        tap's own (never mutates ``body``, which ``begin`` and ``finish`` still read)."""
        ...

    def finish(
        self, record: RequestRecord, body: dict[str, Any] | None, prompt: str | None, capture: ResponseCapture | None
    ) -> None:
        """The record is complete (outcome, tokens, timings). Sets the final sampling decision and
        hands content on for masking and evaluation. Called on the event loop: must not block."""
        ...
