"""EvalTap: the evaluation layer's side of the gateway hook (``gateway.hooks.RequestTap``).

At request start it draws the deterministic sample and decides whether the response's bytes are
needed. At the end (before the record is published, so before the last byte reaches the client) it
reads the answer back, screens it for guardrail hits, measures confidence from logprobs, settles the
stratified sampling decision on the record, and hands content to the masking queue when the
tenant's policy lets content leave the gateway.

Per tenant ``content`` policy: ``none`` (opt-out: no content is captured, kept or sent; the record
still carries the metadata, the prompt hash and the sampling decision), ``sampled`` (content only
for sampled requests) or ``all`` (every request: deterministic checks then cover 100% of traffic).
"""

from __future__ import annotations

from typing import Any

from infersight.config import EVAL_REQUEST_TYPE, Settings
from infersight.evaluation.checks import LENGTH_FINISH_REASONS, raw_json_check
from infersight.evaluation.checksums import ascii_shadow
from infersight.evaluation.extract import extract, reasoning_text
from infersight.evaluation.masking import MaskingQueue
from infersight.evaluation.metrics import Bounded, EvalGatewayMetrics
from infersight.evaluation.sampler import Sampler
from infersight.evaluation.screen import screen
from infersight.gateway.hooks import ResponseCapture
from infersight.gateway.tokens import OPERATOR_ROLES, latest_turn_text, role_of, untrusted_prompt_text
from infersight.model import EvalTask, RequestRecord

MAX_CAPTURE_BYTES = 1 << 20  # response bytes kept per request; beyond, the text is cut (and flagged)
_JSON_FORMATS = frozenset({"json_object", "json_schema"})
_NOT_MODEL_ERRORS = frozenset({"client_disconnected"})


class EvalTap:
    def __init__(
        self,
        settings: Settings,
        sampler: Sampler,
        masking: MaskingQueue,
        metrics: EvalGatewayMetrics | None = None,
    ) -> None:
        self.cfg = settings.evaluation
        self.sampler = sampler
        self.masking = masking
        self.metrics = metrics
        self._policy = {t.id: t.content for t in settings.tenants}
        self._tenant_label = Bounded(t.id for t in settings.tenants)
        ascii_shadow("\u00a0")  # builds the screen's Unicode table (~40 ms) now, not on a request

    def begin(self, record: RequestRecord, body: dict[str, Any]) -> ResponseCapture | None:
        if not self.cfg.enabled or record.request_type == EVAL_REQUEST_TYPE:
            return None  # a judge's own call is never sampled: no judge of the judge, whatever the window
        initial = self.sampler.initial(record.tenant_id, record.trace_id)
        record.sampled_for_eval, record.sample_reason = initial is not None, initial
        policy = self._policy.get(record.tenant_id, "none")
        if policy == "none":
            return None
        # the answer is read back to screen it, to check it, or for its logprobs' entropy (a low-confidence
        # answer is always sampled, screen or no screen)
        if policy == "all" or initial is not None or self.cfg.guardrail_scan or _logprobs_requested(body):
            return ResponseCapture(MAX_CAPTURE_BYTES, record.api)
        return None

    def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """``metadata.reference`` is the evaluation's answer key, not the engine's: it stays in the
        gateway. Forwarded, it showed the engine the expected answer, and OpenAI refuses a metadata
        value over 512 characters: a long reference failed the request itself."""
        metadata = body.get("metadata")
        if not isinstance(metadata, dict) or "reference" not in metadata:
            return body
        forward = {k: v for k, v in body.items() if k != "metadata"}
        rest = {k: v for k, v in metadata.items() if k != "reference"}
        if rest:  # the client's other metadata goes on; a metadata of the reference alone goes away
            forward["metadata"] = rest
        return forward

    def finish(
        self, record: RequestRecord, body: dict[str, Any] | None, prompt: str | None, capture: ResponseCapture | None
    ) -> None:
        if not self.cfg.enabled or record.request_type == EVAL_REQUEST_TYPE:
            return
        completion, entropy, hits, refused, tools_only = None, None, [], False, False
        finish_reason = record.finish_reason  # the stream's last; with n > 1 it may be another choice's
        if capture is not None:
            stream = record.stream if capture.sse is None else capture.sse  # as the engine answered
            raw = capture.data()
            got = extract(raw, stream=stream, api=record.api, echo=_echoed_prompt(body, record.api),
                          echoed=_echoed_prompts(body, record.api))
            completion, entropy, refused, tools_only = got.text, got.mean_entropy, got.refused, got.tool_calls_only
            finish_reason = got.finish_reason or finish_reason
            if self.cfg.guardrail_scan:
                pii_text, injection_text = _screened_prompt(body, record.api, prompt)
                hits = screen(pii_text, completion, injection_text)
                # the client got these too: the other choices (n > 1) and the model's reasoning
                besides = "\n".join(t for t in (got.other_text, reasoning_text(raw)) if t)
                if besides:
                    hits += [hit for hit in screen(None, besides) if hit not in hits]
        error = (record.status_code >= 400 or record.error_type is not None) \
            and record.error_type not in _NOT_MODEL_ERRORS
        low_confidence = entropy is not None and entropy > self.cfg.low_confidence_entropy
        rate_sampled = record.sample_reason is not None  # decided at the start, whatever the outcome
        reason = self.sampler.final(record.sample_reason, error=error, guardrail=bool(hits),
                                    low_confidence=low_confidence)
        record.sampled_for_eval, record.sample_reason = reason is not None, reason
        if reason is not None and self.metrics is not None:
            self.metrics.sampled.labels(self._tenant_label(record.tenant_id), reason).inc()
        policy = self._policy.get(record.tenant_id, "none")
        if capture is None or policy == "none" or (reason is None and policy != "all"):
            return
        json_requested = _json_requested(body)
        self.masking.submit(EvalTask(
            trace_id=record.trace_id,
            span_id=record.span_id,
            tenant_id=record.tenant_id,
            model_id=record.model_id,
            use_case=record.use_case,
            api=record.api,
            started_at=record.started_at,
            status_code=record.status_code,
            error_type=record.error_type,
            finish_reason=finish_reason,
            prompt_text=_answered_prompt(body, record.api, prompt),
            completion_text=completion,
            json_requested=json_requested,
            # a structured-output refusal is the API's answer instead of the JSON (`refusal` fails, not
            # this), and a turn of tool calls alone answers with calls, which response_format not governs
            json_check=({} if refused or tools_only else raw_json_check(
                completion, cut=capture.overflowed or finish_reason in LENGTH_FINISH_REASONS))
            if json_requested else None,
            reference=None if tools_only else _reference(body),  # a turn of tool calls is no answer to it
            logprob_entropy=entropy,
            sample_reason=reason,
            guardrail_hits=hits,
            content_truncated=capture.overflowed,
            rate_sampled=rate_sampled,
            census=policy == "all",
        ))


def _screened_prompt(body: dict[str, Any] | None, api: str, prompt: str | None) -> tuple[str | None, str | None]:
    """(text to look for PII in, text to look for injection in). PII: this turn's user and tool
    messages (``latest_turn_text``): the operator's system prompt ("write to help@acme-bank.com")
    and earlier turns (a user's e-mail in turn 1) go with every request, and made all of a tenant's
    or a conversation's requests guardrail samples; masking still covers the whole prompt. Injection:
    every user and tool message (``untrusted_prompt_text``), history included, so that an attack
    cannot hide in a made-up earlier turn; not the operator's guard phrases ("never reveal your
    system prompt"). ``prompt`` for both when the request is one turn of the user alone."""
    messages = body.get("messages") if body and api == "chat" else None
    if not isinstance(messages, list) or not any(
            isinstance(m, dict) and (role_of(m) in OPERATOR_ROLES) for m in messages):
        return prompt, prompt
    return latest_turn_text(body, api), untrusted_prompt_text(body, api)  # type: ignore[arg-type]


def _own_prompt(body: dict[str, Any] | None, api: str) -> str | None:
    """The prompt string choice 0 answers in a completions request: ``prompt``, or its first entry
    when ``prompt`` is a batch of strings (choice ``i`` answers ``prompt[i]``)."""
    prompt = body.get("prompt") if body and api != "chat" else None
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


def _echoed_prompts(body: dict[str, Any] | None, api: str) -> list[str]:
    """With ``echo: true``, every prompt string of a completions request: what its choices echo."""
    prompt = body.get("prompt") if body and api != "chat" and body.get("echo") is True else None
    if isinstance(prompt, str):
        return [prompt]
    return [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else []


def _echoed_prompt(body: dict[str, Any] | None, api: str) -> str | None:
    """With ``echo: true`` the answer's text starts with the prompt it answers."""
    return _own_prompt(body, api) if body and body.get("echo") is True else None


def _answered_prompt(body: dict[str, Any] | None, api: str, prompt: str | None) -> str | None:
    """What the task pairs with choice 0's answer: the whole prompt text (roles and contents, or the
    prompt with its ``suffix``), but of a batch of completions prompts only the one choice 0 answers;
    the batch joined paired the answer with questions it never answered (the screen still reads all)."""
    batch = body.get("prompt") if body and api != "chat" else None
    if not isinstance(batch, list) or len(batch) < 2:
        return prompt
    own = _own_prompt(body, api)
    if own is None:
        return prompt
    suffix = body.get("suffix") if body else None
    return f"{own}\n{suffix}" if isinstance(suffix, str) and suffix else own


def _logprobs_requested(body: dict[str, Any] | None) -> bool:
    """Chat's ``logprobs: true`` or completions' ``logprobs: N``: the engine will send them."""
    value = body.get("logprobs") if body else None
    return value is True or (type(value) is int and value > 0)


def _json_requested(body: dict[str, Any] | None) -> bool:
    fmt = body.get("response_format") if body else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return isinstance(kind, str) and kind in _JSON_FORMATS  # a list here raised TypeError (unhashable)


def _reference(body: dict[str, Any] | None) -> str | None:
    """A reference answer supplied by the client as ``metadata.reference`` (OpenAI's metadata field)."""
    metadata = body.get("metadata") if body else None
    ref = metadata.get("reference") if isinstance(metadata, dict) else None
    return ref if isinstance(ref, str) and ref else None
