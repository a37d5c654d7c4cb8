"""RequestRecord: one per inference request, written for 100% of traffic.

Field names are a public contract (API, Parquet export, ClickHouse schema): keep them stable.
Times are UTC; durations are milliseconds as floats. See docs/record.md for every field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
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

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with the contract's field names, ready for JSON (all values are scalars)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Rebuild a record, ignoring unknown keys so older readers survive newer writers."""
        known = _KNOWN_FIELDS
        return cls(**{k: v for k, v in data.items() if k in known})


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))
_KNOWN_FIELDS = frozenset(RECORD_FIELDS)  # built once: from_dict runs for every replayed record
