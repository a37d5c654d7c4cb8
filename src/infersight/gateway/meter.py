"""Per-request measurement: TTFT, inter-token latency, totals and token usage.

Definitions (also in docs/measurement.md):

- t0 is when the gateway received the request (ASGI call), on a monotonic clock.
- TTFT is t0 to the arrival at the gateway of the first chunk that carries output: content,
  reasoning, refusal or tool-call deltas (chat) or non-empty text (completions). The role-only first
  chunk does not count. Streaming requests only; ``None`` for non-streaming ones.
- ITL is the gap between consecutive output-bearing chunks: mean, p50 and p99 (linear interpolation).
  Engines stream one token per chunk by default, so this is the inter-token latency. With several
  choices (``n`` > 1, or several completions prompts) it is choice 0's: the chunks of the other
  choices of one decode step arrive together, and their 0 ms gaps are not a latency.
- total is t0 to the last byte relayed to the client.
- output tokens/s is the decode rate: (completion_tokens - 1) / (last output chunk - first output chunk)
  for streams, completion_tokens / total for non-streaming responses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from infersight.gateway.sse import ChunkInfo


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted, non-empty list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    frac = pos - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


class StreamMeter:
    """Accumulates timings and usage as chunks arrive; cheap per chunk (append a float)."""

    __slots__ = ("clock", "t0", "output_times", "finish_reason", "usage", "error", "ended_at", "timings",
                 "lead_times")

    def __init__(self, clock: Callable[[], float], t0: float) -> None:
        self.clock = clock
        self.t0 = t0
        self.output_times: list[float] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.ended_at: float | None = None
        self.timings: dict[str, Any] | None = None  # the engine's own, when it sends them (the last one wins)
        # Choice 0's output times, kept only for a request of several choices (see many_choices); the
        # relay then inspects every event (its byte-level fast paths do not see the choice index).
        self.lead_times: list[float] | None = None

    def observe(self, info: ChunkInfo, at: float) -> None:
        if info.has_output:
            self.output_times.append(at)
            if info.lead_output and self.lead_times is not None:
                self.lead_times.append(at)
        if info.finish_reason:
            self.finish_reason = info.finish_reason
        if info.usage is not None:
            self.usage = info.usage
        if info.error is not None:
            self.error = info.error
        if info.timings is not None:
            self.timings = info.timings

    def end(self) -> None:
        if self.ended_at is None:
            self.ended_at = self.clock()

    @property
    def ttft_ms(self) -> float | None:
        return (self.output_times[0] - self.t0) * 1000.0 if self.output_times else None

    @property
    def total_ms(self) -> float:
        end = self.ended_at if self.ended_at is not None else self.clock()
        return (end - self.t0) * 1000.0

    def itl_ms(self) -> tuple[float | None, float | None, float | None]:
        """(mean, p50, p99) of the gaps between output chunks; Nones with fewer than two chunks."""
        times = self.output_times if self.lead_times is None else self.lead_times
        if len(times) < 2:
            return None, None, None
        gaps = sorted((times[i] - times[i - 1]) * 1000.0 for i in range(1, len(times)))
        return sum(gaps) / len(gaps), percentile(gaps, 0.5), percentile(gaps, 0.99)

    def decode_seconds(self) -> float | None:
        if len(self.output_times) < 2:
            return None
        return self.output_times[-1] - self.output_times[0]

    def time_per_token_s(self, completion_tokens: int) -> float | None:
        """One sequence's time per output token (TPOT). With several choices, the decode span over all
        their tokens would be the step time divided by ``n``: choice 0's mean gap is used instead."""
        if self.lead_times is not None:
            mean_ms = self.itl_ms()[0]
            return None if mean_ms is None else mean_ms / 1000.0
        decode = self.decode_seconds()
        return decode / (completion_tokens - 1) if decode and completion_tokens > 1 else None


def many_choices(body: dict[str, Any], api: str) -> bool:
    """True when the answer has several choices: ``n`` > 1, or a completions batch of prompts."""
    n = body.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return True
    prompt = body.get("prompt") if api == "completions" else None
    return isinstance(prompt, list) and len(prompt) > 1 and isinstance(prompt[0], (str, list))


def usage_tokens(usage: dict[str, Any] | None) -> tuple[int | None, int | None, int | None, int | None]:
    """(prompt, completion, cached prompt, reasoning) from an OpenAI-style usage object."""
    if not usage:
        return None, None, None, None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    cached = reasoning = None
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = _int(details.get("cached_tokens"))
    if cached is None and "prompt_cache_hit_tokens" in usage:  # DeepSeek's spelling
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    cdetails = usage.get("completion_tokens_details")
    if isinstance(cdetails, dict):
        reasoning = _int(cdetails.get("reasoning_tokens"))
    return prompt, completion, cached, reasoning


MAX_COUNT = 2**63 - 1  # the store's BIGINT / Int64


def _int(value: Any) -> int | None:
    """A token count as the engine reported it; None (not reported) unless it is a non-negative number
    that fits the store. A negative count broke the token counters (a 500, the record lost), and one
    beyond Int64 made the store refuse the record's whole batch on every retry."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    count = int(value)
    return count if 0 <= count <= MAX_COUNT else None
