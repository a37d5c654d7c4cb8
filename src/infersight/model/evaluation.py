"""EvalTask and EvalResult: what travels to the eval workers, and the scores they write.

Field names are a public contract (eval_results table, API, docs/evaluation.md). An EvalTask carries
content that was already PII-masked and truncated inside the gateway: nothing in it is raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

JUDGE_EVALUATOR = "llm_judge"
"""The ``evaluator`` of the LLM judge's eval_results rows (the one whose versions are calibrated)."""


@dataclass(slots=True)
class EvalTask:
    """One request's evaluation input, published on the eval bus by the gateway.

    ``sample_reason`` is set when the request was sampled for the LLM judge (random, error, guardrail,
    low_confidence, forced); ``None`` means deterministic checks only (the tenant keeps content for
    all traffic). ``guardrail_hits`` names what the gateway's guardrails saw, e.g. ``pii_prompt:EMAIL`` or
    ``injection:ignore_instructions``.
    """

    trace_id: str
    span_id: str
    tenant_id: str
    model_id: str
    use_case: str = "other"
    api: str = "chat"
    started_at: str = ""
    status_code: int = 0
    error_type: str | None = None
    finish_reason: str | None = None
    prompt_text: str | None = None
    completion_text: str | None = None
    json_requested: bool = False
    reference: str | None = None
    logprob_entropy: float | None = None
    sample_reason: str | None = None
    guardrail_hits: list[str] = field(default_factory=list)
    content_truncated: bool = False
    json_check: dict[str, Any] | None = None
    """The ``invalid_json`` check as the gateway ran it on the raw completion, before masking
    turned a numeric id into a bare ``[CPF]``: ``{"score", "label", "explanation"}``, ``{}`` when it
    does not apply (the text was cut), None when not run there (older gateways: the worker then
    checks the masked text)."""
    reference_scores: dict[str, float] | None = None
    """``token_f1`` and ``rouge_l`` of the raw answer against the raw reference, with their
    ``prediction_tokens`` and ``reference_tokens`` and ``cut`` (1.0 when masking cuts a text),
    computed before masking; None from producers that did not (the worker scores the masked text)."""
    rate_sampled: bool | None = None
    """The sampler's decision before the outcome was known (random, or a forced window): the task is
    part of a sample that does not depend on how the request went. None from older producers."""
    census: bool = False
    """The tenant keeps content for every request (``content: all``): every request has a task."""

    @property
    def answer_incomplete(self) -> bool:
        """The request failed (``status_code`` >= 400) or its answer was broken off after a 200 (an
        engine error mid-stream: ``error_type`` set): the text is not the model's whole answer, so
        only ``pii_leak`` applies to it, and neither reference metrics nor the judge score it."""
        return self.status_code >= 400 or self.error_type is not None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVAL_TASK_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalTask:
        """Rebuild a task, ignoring unknown keys so older workers survive newer gateways."""
        return cls(**{k: v for k, v in data.items() if k in _TASK_KNOWN})


@dataclass(slots=True)
class EvalResult:
    """One score on one dimension of one request by one evaluator version (a row of eval_results).

    ``score`` is numeric (1-5 for judge rubrics, 0-1 for checks and reference metrics); ``label`` is
    the categorical outcome where there is one (e.g. ``pass``/``fail``, ``yes``/``no``).
    ``evaluator_version`` separates series: a new judge model, rubric or parameter set is a new
    version, never mixed into an old baseline.
    """

    trace_id: str
    span_id: str
    tenant_id: str
    model_id: str
    evaluator: str
    evaluator_version: str
    dimension: str
    evaluated_at: str
    score: float | None = None
    label: str | None = None
    explanation: str | None = None
    judge_model: str | None = None
    judge_tokens: int | None = None
    judge_cost: float | None = None
    request_started_at: str | None = None
    use_case: str | None = None
    representative: bool | None = None
    """The row's request would have been evaluated whatever its outcome (rate-sampled, or every
    request checked): drift compares only such rows, since errors, guardrail hits and low-confidence
    answers are always sampled and their share of the rest moves with the rate. None: unknown (older)."""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVAL_RESULT_FIELDS}

    @classmethod
    def for_task(
        cls, task: EvalTask, *, evaluator: str, evaluator_version: str, dimension: str, evaluated_at: str,
        **fields: Any,
    ) -> EvalResult:
        """A result about ``task``: its identity, use case, request time and whether it is
        representative filled in (a judge row when the request was rate-sampled; a check or
        reference row also when every request of the tenant is checked)."""
        rate_sampled = task.rate_sampled
        representative = None if rate_sampled is None else \
            rate_sampled or (task.census and evaluator != "llm_judge")
        return cls(
            trace_id=task.trace_id, span_id=task.span_id, tenant_id=task.tenant_id, model_id=task.model_id,
            evaluator=evaluator, evaluator_version=evaluator_version, dimension=dimension,
            evaluated_at=evaluated_at, request_started_at=task.started_at or None, use_case=task.use_case,
            representative=representative, **fields,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(**{k: v for k, v in data.items() if k in _RESULT_KNOWN})


EVAL_TASK_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EvalTask))
EVAL_RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(EvalResult))
_TASK_KNOWN = frozenset(EVAL_TASK_FIELDS)
_RESULT_KNOWN = frozenset(EVAL_RESULT_FIELDS)
