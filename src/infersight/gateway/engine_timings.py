"""What an engine says about one request it served: its own timings, and which replica answered.

Only what released engines actually send is read (docs/record.md, "Engine timings"):

- TGI answers a non-streamed request with headers, integer milliseconds: ``x-queue-time`` (waiting for
  a batch slot) goes to ``queue_ms`` and ``x-inference-time`` (prefill plus decode) to
  ``engine_inference_ms``. Its other timing headers (``x-total-time``, ``x-validation-time``,
  ``x-time-per-token``) add nothing the gateway does not measure itself.
- llama.cpp's server adds a ``timings`` object to a non-streamed body and to the last chunk of a stream;
  ``prompt_ms + predicted_ms`` is its ``engine_inference_ms``. It reports no queue time.
- vLLM returns no per-request timings in its OpenAI responses; its queue time comes through telemetry
  (the ``vllm:request_queue_time_seconds`` histogram).

Headers are read once per response; ``timings`` only from chunks the relay parses anyway (those with a
finish reason or usage), never from plain text chunks. A value that is not a finite, non-negative number
is ignored: ``None`` means "not reported", and a bad header must not become a bad figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from infersight.model import RequestRecord

QUEUE_HEADER = "x-queue-time"
INFERENCE_HEADER = "x-inference-time"
MAX_INSTANCE_CHARS = 200  # the store's and the telemetry config's bound on an instance name
_MAX_NUMBER_CHARS = 32


def observe_headers(headers: Mapping[str, str], record: RequestRecord, instance_header: str | None) -> None:
    """Apply the response headers: the replica that answered, and TGI's queue and inference times.

    ``headers`` has lowercased names (every upstream client hands them over that way), and so has
    ``instance_header`` (lowercased by the config).
    """
    if instance_header is not None:
        named = headers.get(instance_header)
        if named:
            named = named.strip()[:MAX_INSTANCE_CHARS].rstrip()
            if named and named.isprintable():
                record.instance = named
    queue = headers.get(QUEUE_HEADER)
    if queue is not None:
        value = header_ms(queue)
        if value is not None:
            record.queue_ms = value
    inference = headers.get(INFERENCE_HEADER)
    if inference is not None:
        value = header_ms(inference)
        if value is not None:
            record.engine_inference_ms = value


def observe_timings(timings: Mapping[str, Any], record: RequestRecord) -> None:
    """Apply llama.cpp's ``timings`` object: prompt processing plus generation is the engine's time."""
    prompt = json_ms(timings.get("prompt_ms"))
    predicted = json_ms(timings.get("predicted_ms"))
    if prompt is not None and predicted is not None:
        record.engine_inference_ms = prompt + predicted


def header_ms(text: str) -> float | None:
    """A header's milliseconds as a float; None unless a finite, non-negative number."""
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0.0 else None


def json_ms(value: Any) -> float | None:
    """A JSON number of milliseconds as a float; None unless a finite, non-negative number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range
        return None
    return number if math.isfinite(number) and number >= 0.0 else None
