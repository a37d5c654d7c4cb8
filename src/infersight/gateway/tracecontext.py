"""W3C trace context: accept ``traceparent`` or ``x-trace-id``, or start a new trace.

The gateway is one span in the caller's trace: it keeps the caller's trace id, makes its own span id,
and sends ``traceparent`` (with that span as parent) and ``x-trace-id`` to the engine.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# version, trace-id, parent-id, flags; then, in versions after 00 only, "-" and fields we do not know
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16
_KNOWN_FLAGS = 0x03  # sampled (Level 1) and random trace id (Level 2); the other bits are sent as zero
_rand = random.Random()  # ids need uniqueness, not secrecy; seeded from os.urandom


@dataclass(slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    flags: str = "01"

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def new_span_id() -> str:
    return f"{_rand.getrandbits(64) or 1:016x}"


def new_trace_id() -> str:
    return f"{_rand.getrandbits(128) or 1:032x}"


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace_id, parent_span_id, flags) from a valid header, else None.

    Version 00 has exactly four fields. A later version is read by its first four, whatever follows
    a dash (W3C Trace Context 3.2.4), so callers on a newer tracer keep their trace. Flags the
    specification does not define are zeroed: they must not be passed on (3.2.2.5.2).
    """
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return None
    version, trace_id, span_id, flags, extra = match.groups()
    if version == "ff" or (version == "00" and extra is not None):
        return None
    if trace_id == _INVALID_TRACE or span_id == _INVALID_SPAN:
        return None
    return trace_id, span_id, f"{int(flags, 16) & _KNOWN_FLAGS:02x}"


def normalize_trace_id(value: str) -> str | None:
    """Accept 32 hex digits, with or without UUID dashes; anything else is not a trace id."""
    candidate = value.strip().lower().replace("-", "")
    if _HEX32.match(candidate) and candidate != _INVALID_TRACE:
        return candidate
    return None


def from_headers(traceparent: str | None, x_trace_id: str | None) -> TraceContext:
    """``traceparent`` wins, then ``x-trace-id``; otherwise a new trace starts here."""
    if traceparent:
        parsed = parse_traceparent(traceparent)
        if parsed:
            return TraceContext(parsed[0], new_span_id(), parsed[1], parsed[2])
    if x_trace_id:
        trace_id = normalize_trace_id(x_trace_id)
        if trace_id:
            return TraceContext(trace_id, new_span_id(), None)
    return TraceContext(new_trace_id(), new_span_id(), None)
