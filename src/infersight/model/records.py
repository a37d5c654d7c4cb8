"""RequestRecord: one per inference request, written for 100% of traffic.

Field names are a public contract (API, Parquet export, ClickHouse schema): keep them stable.
Times are UTC; durations are milliseconds as floats. See docs/record.md for every field.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal

TokenSource = Literal["backend", "estimate"]
EstimateKind = Literal["tokenizer", "heuristic"]
SampleReason = Literal["random", "error", "guardrail", "low_confidence", "forced"]


@dataclass(slots=True)
class RequestRecord:
    """What the gateway measured about one request. ``None`` means "not known", never zero."""

    # identity
    trace_id: str
    span_id: str
    tenant_id: str
    model_id: str
    backend: str
    endpoint_type: str = "openai"
    use_case: str = "other"
    request_type: str = "other"
    api: str = "chat"
    parent_span_id: str | None = None
    # timing (started_at is an ISO-8601 UTC timestamp; durations in ms)
    started_at: str = ""
    ttft_ms: float | None = None
    total_ms: float | None = None
    itl_ms_mean: float | None = None
    itl_ms_p50: float | None = None
    itl_ms_p99: float | None = None
    output_tokens_per_s: float | None = None
    queue_ms: float | None = None
    # tokens
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    reasoning_tokens: int | None = None
    prompt_tokens_estimated: int | None = None
    prompt_tokens_estimate_kind: EstimateKind = "heuristic"
    token_source: TokenSource = "estimate"
    # outcome
    status_code: int = 0
    error_type: str | None = None
    finish_reason: str | None = None
    stream: bool = False
    client_disconnected: bool = False
    # content (text only where the tenant's policy allows; never logged)
    prompt_hash: str | None = None
    prompt_text: str | None = None
    completion_text: str | None = None
    # evaluation
    sampled_for_eval: bool = False
    sample_reason: SampleReason | None = None
    # serving (v7): which engine instance answered, and the engine's own per-request timings
    instance: str | None = None
    engine_inference_ms: float | None = None
    # tracing (v9): the W3C trace-flags the gateway passed on ("01" sampled, "00" not); null before v9
    trace_flags: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with the contract's field names, ready for JSON (all values are scalars)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Rebuild a record, ignoring unknown keys so older readers survive newer writers.

        Every record the ingester reads passes through here, so it fills the slots directly:
        the generated ``__init__`` with 45 keyword arguments costs ~3.5x as much (7 vs 2 µs).
        A missing required field raises ``TypeError``, as ``__init__`` would.
        """
        record = _new(cls)
        get = data.get
        for name, default in _FIELD_DEFAULTS:
            value = get(name, default)
            if value is _REQUIRED:
                raise TypeError(f"{cls.__name__} is missing the required field {name!r}")
            _setattr(record, name, value)
        return record


_REQUIRED = object()
_FIELD_DEFAULTS: tuple[tuple[str, Any], ...] = tuple(
    (f.name, _REQUIRED if f.default is MISSING else f.default) for f in fields(RequestRecord)
)
RECORD_FIELDS: tuple[str, ...] = tuple(name for name, _ in _FIELD_DEFAULTS)
_new = object.__new__
_setattr = object.__setattr__
