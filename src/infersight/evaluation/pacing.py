"""Spacing of judge calls: at most ``rate`` call starts per second, evenly spread.

Why: the eval sink hands the judge a whole flush's tasks at once, so without pacing up to
``judge.concurrency`` calls (each a ~2,000-token prompt) reach the endpoint in the same instant.
A judge that shares hardware with production traffic (a vLLM that also serves customers, or a
co-hosted Ollama) turns that burst into a prefill spike that customers' requests queue behind, and
a cloud API with a requests-per-minute limit answers it with 429s. A pacer turns the burst into a
steady trickle; the backlog it builds is the eval lag, which the circuit breaker already watches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Pacer:
    """Call starts at least ``1 / rate`` seconds apart (no burst allowance); ``rate=None``: no pacing.

    Each ``wait()`` reserves the next free start time and sleeps until it, so concurrent callers of
    one event loop queue up in call order. Not thread-safe: one pacer per event loop.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for no pacing)")
        self.interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")

    async def wait(self) -> float:
        """Sleep until this caller's start time; returns the seconds slept (0 when not paced)."""
        if not self.interval:
            return 0.0
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval
        delay = start - now
        if delay > 0:
            await self._sleep(delay)
        return delay
