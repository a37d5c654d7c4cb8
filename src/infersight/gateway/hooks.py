"""The seam between the gateway and the evaluation layer (wired by ``runtime``).

The gateway knows nothing of sampling, masking or judges: it asks a ``RequestTap`` at request start
whether to keep the response's bytes, and hands it the finished record (before the bus sees it, and
before the last byte reaches the client) so that the sampling decision is in the record.
"""

from __future__ import annotations

from typing import Any, Protocol

from infersight.model import RequestRecord


class ResponseCapture:
    """The response's raw bytes, kept up to ``limit`` (what was cut is flagged, never silently)."""

    __slots__ = ("chunks", "size", "limit", "overflowed", "sse")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.overflowed = False
        # how the response came: an SSE stream, or one JSON body (an engine may answer a stream
        # request with JSON); None until the proxy knows
        self.sse: bool | None = None

    def add(self, chunk: bytes) -> None:
        if self.size >= self.limit:
            self.overflowed = True
            return
        self.chunks.append(chunk)
        self.size += len(chunk)

    def data(self) -> bytes:
        return b"".join(self.chunks)


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
