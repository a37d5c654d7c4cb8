"""A scripted transport for tests, after httpx's ``MockTransport``.

A handler maps an UpstreamRequest to a ``ScriptedResponse``: status, headers and body chunks, each at
an exact time (ms after the request was sent). With a ``ManualClock`` shared with the gateway the times
are exact, so TTFT and ITL can be checked to the microsecond; without one, chunks are paced by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from infersight.gateway.upstreams.base import UpstreamError, UpstreamRequest, UpstreamResponse


class ManualClock:
    """A monotonic clock in seconds that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def set(self, value: float) -> None:
        self.now = max(self.now, value)


@dataclass
class ScriptedResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (ms after send, bytes)
    headers_at_ms: float = 0.0
    raise_after: UpstreamError | None = None  # raised once the chunks are exhausted


Handler = Callable[[UpstreamRequest], "ScriptedResponse | Awaitable[ScriptedResponse]"]


class _MockResponse:
    def __init__(self, script: ScriptedResponse, sent_at: float, clock: ManualClock | None) -> None:
        self.status = script.status
        self.headers: Mapping[str, str] = script.headers
        self._script = script
        self._sent_at = sent_at
        self._clock = clock
        self.closed = False

    async def _advance(self, at_ms: float) -> None:
        if self._clock is not None:
            self._clock.set(self._sent_at + at_ms / 1000.0)
            await asyncio.sleep(0)
        else:
            delay = self._sent_at + at_ms / 1000.0 - asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, delay))

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for at_ms, data in self._script.chunks:
            if self.closed:
                return
            await self._advance(at_ms)
            yield data
        if self._script.raise_after is not None:
            raise self._script.raise_after

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aclose(self) -> None:
        self.closed = True


class MockTransport:
    """Answers every request with ``handler(request)``; records what was sent for assertions."""

    def __init__(self, handler: Handler, clock: ManualClock | None = None) -> None:
        self._handler = handler
        self._clock = clock
        self.requests: list[UpstreamRequest] = []
        self.responses: list[_MockResponse] = []

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(request)
        script = self._handler(request)
        if asyncio.iscoroutine(script):
            script = await script
        assert isinstance(script, ScriptedResponse)
        sent_at = self._clock() if self._clock is not None else asyncio.get_running_loop().time()
        response = _MockResponse(script, sent_at, self._clock)
        if script.headers_at_ms:
            await response._advance(script.headers_at_ms)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        return None
