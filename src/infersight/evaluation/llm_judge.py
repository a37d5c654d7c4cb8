"""LLM-as-judge: score an answer on a rubric's dimensions, or compare two answers, via any
OpenAI-compatible endpoint (local vLLM or Ollama, a cloud model, or our own gateway).

Why it is built this way (docs/judge.md):

- **Versioned.** ``evaluator_version`` is a hash of everything that moves scores (judge model, the
  rubric file's full text, temperature, max_tokens, rubric kind, prompt layout). Every EvalResult
  carries it, so a new judge is a new series, never averaged into an old baseline.
- **Strict JSON, lenient reading.** The judge is asked for one JSON object (``response_format``
  json_object and the schema in the prompt). Replies are repaired when that is unambiguous
  (``judge_parse``); otherwise the judge is re-asked with a corrective message. Transient HTTP
  failures are retried with backoff. Both share the ``max_retries`` budget; then ``JudgeError``.
- **Position-debiased pairwise.** ``compare`` asks twice with the answers swapped; a preference
  that flips with the order is reported as a tie (``consistent=False``).
- **Bounded.** At most ``concurrency`` calls are in flight per judge; token usage and cost are
  summed over every attempt, so a retry's cost is not hidden.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import aiohttp

from infersight.evaluation.judge_client import (
    AiohttpTransport, ChatReply, FatalError, GenerationRejected, JudgeClient, JudgeTransport, ResponseFormatRejected,
    TransientError, config_hint,
)
from infersight.evaluation.judge_parse import ReplyError, extract_scores, extract_winner, parse_json_object
from infersight.evaluation.judge_version import compute_evaluator_version
from infersight.evaluation.pacing import Pacer
from infersight.evaluation.rubric import Rubric, expect_kind, load_rubric
from infersight.evaluation.settings import JudgeSettings
from infersight.logs import safe_url
from infersight.model.evaluation import JUDGE_EVALUATOR, EvalResult, EvalTask

EVALUATOR = JUDGE_EVALUATOR
MAX_BACKOFF_S = 10.0
DEFAULT_HEADERS = {"x-infersight-request-type": "eval"}
"""Sent on every judge call: through our own gateway, judge traffic is then labelled ``eval``."""

T = TypeVar("T")
log = logging.getLogger(__name__)


class JudgeError(Exception):
    """The judge gave no usable verdict after its retries.

    ``reason`` is a short closed label (``http_error``, ``server_error``, ``rate_limited``, ``timeout``,
    ``connection``, ``invalid_reply``) for metrics; the message has the detail. The tokens and cost
    of the failed attempts are kept so that they can still be accounted.
    """

    def __init__(
        self, reason: str, message: str, *, attempts: int = 0, prompt_tokens: int = 0,
        completion_tokens: int = 0, cost: float = 0.0, evaluator_version: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.evaluator_version = evaluator_version  # the version its error row is filed under
        self.hint = hint  # what the operator should check (a bad key, an unknown model); fixed text
        self.reason = reason
        self.attempts = attempts
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cost = cost


@dataclass(slots=True)
class _Usage:
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repaired: bool = False
    json_mode: bool = True

    def add(self, reply: ChatReply) -> None:
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens


@dataclass(slots=True)
class JudgeVerdict:
    """Pointwise scores (1-5, 5 best) for every rubric dimension, and what they cost."""

    scores: dict[str, float]
    explanations: dict[str, str]
    prompt_tokens: int
    completion_tokens: int
    cost: float
    judge_model: str
    evaluator_version: str
    attempts: int
    repaired: bool = False  # the accepted reply needed JSON repair or score coercion

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class PairwiseVerdict:
    """Which of two answers is better, asked in both orders.

    ``first_order`` is the preference when ``a`` was shown first, ``second_order`` when ``b`` was
    (both mapped back to ``a``/``b``/``tie``); ``raw`` holds the labels literally answered (A/B/tie).
    ``winner`` is their common answer, or ``tie`` when they disagree (``consistent`` False).
    """

    winner: str
    consistent: bool
    first_order: str
    second_order: str
    raw: tuple[str, str]
    explanations: tuple[str, str]
    prompt_tokens: int
    completion_tokens: int
    cost: float
    judge_model: str
    evaluator_version: str
    attempts: int
    repaired: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def judge_cost(settings: JudgeSettings, prompt_tokens: int, completion_tokens: int) -> float:
    """Cost of judge tokens at the settings' prices per 1M input and output tokens."""
    return (prompt_tokens * settings.input_price_per_1m + completion_tokens * settings.output_price_per_1m) / 1e6


class LLMJudge:
    """A judge bound to one endpoint, model and rubric (pointwise ``score`` or pairwise ``compare``)."""

    evaluator = EVALUATOR

    def __init__(
        self,
        settings: JudgeSettings,
        rubric: Rubric,
        *,
        session: aiohttp.ClientSession | None = None,
        transport: JudgeTransport | None = None,
        headers: dict[str, str] | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        if settings.url is None:
            raise ValueError("evaluation.judge.url is null: the LLM judge is disabled")
        api_key = None
        if settings.api_key_env:
            api_key = os.environ.get(settings.api_key_env)
            if not api_key:
                raise ValueError(f"evaluation.judge.api_key_env names {settings.api_key_env}, which is not set")
        self.settings = settings
        self.rubric = rubric
        self.backoff_s = backoff_s
        self._transport = transport or AiohttpTransport(session, pool_size=settings.concurrency)
        self._client = JudgeClient(
            settings.url, api_key, self._transport, timeout_s=settings.timeout_s,
            headers={**DEFAULT_HEADERS, **(headers or {})},
        )
        self._sem = asyncio.Semaphore(settings.concurrency)
        self._pacer = Pacer(settings.max_calls_per_s)
        self._json_mode = settings.json_mode
        self._warned_no_usage = False
        self._versions = {mode: compute_evaluator_version(settings.model, rubric, settings.temperature,
                                                          settings.max_tokens, json_mode=mode)
                          for mode in (True, False)}

    @classmethod
    def from_settings(cls, settings: JudgeSettings, *, rubric: Rubric | str | None = None, kind: str | None = None,
                      **kwargs: Any) -> LLMJudge:
        """The judge ``settings`` describe, with ``settings.rubric`` unless ``rubric`` is given;
        ``kind``: refuse a rubric of the other kind now (``RubricError``), not on every call."""
        if not isinstance(rubric, Rubric):
            rubric = load_rubric(rubric or settings.rubric)
        if kind is not None:
            expect_kind(rubric, kind)
        return cls(settings, rubric, **kwargs)

    @property
    def evaluator_version(self) -> str:
        """See ``compute_evaluator_version``: that of the calls now made (an endpoint found to refuse
        JSON mode moves it to the ``json_mode: false`` version); stable for a given model, rubric
        text, parameters and endpoint."""
        return self._versions[self._json_mode]

    @property
    def judge_model(self) -> str:
        return self.settings.model

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> LLMJudge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _cost(self, usage: _Usage) -> float:
        return judge_cost(self.settings, usage.prompt_tokens, usage.completion_tokens)

    async def score(self, prompt: str, response: str, reference: str | None = None) -> JudgeVerdict:
        """Score ``response`` to ``prompt`` on every rubric dimension (1-5); ``JudgeError`` on failure."""
        if self.rubric.kind != "pointwise":
            raise ValueError(f"rubric '{self.rubric.name}' is {self.rubric.kind}; score() needs a pointwise rubric")
        dims = self.rubric.dimension_names

        def parse(text: str) -> tuple[tuple[dict[str, float], dict[str, str]], bool]:
            parsed = parse_json_object(text)
            scores, explanations, coerced = extract_scores(parsed.data, dims)
            return (scores, explanations), parsed.repaired or coerced

        (scores, explanations), usage = await self._ask(self.rubric.messages(prompt, response, reference), parse)
        return JudgeVerdict(
            scores=scores, explanations=explanations, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cost=self._cost(usage), judge_model=self.judge_model,
            evaluator_version=self._versions[usage.json_mode], attempts=usage.attempts, repaired=usage.repaired,
        )

    async def compare(
        self, prompt: str, response_a: str, response_b: str, reference: str | None = None
    ) -> PairwiseVerdict:
        """Which answer is better; asked as A/B and as B/A (concurrently), a flip counts as a tie."""
        if self.rubric.kind != "pairwise":
            raise ValueError(f"rubric '{self.rubric.name}' is {self.rubric.kind}; compare() needs a pairwise rubric")

        def parse(text: str) -> tuple[tuple[str, str], bool]:
            parsed = parse_json_object(text)
            return extract_winner(parsed.data), parsed.repaired

        ab = self.rubric.messages(prompt, reference=reference, answer_a=response_a, answer_b=response_b)
        ba = self.rubric.messages(prompt, reference=reference, answer_a=response_b, answer_b=response_a)
        outcomes = await asyncio.gather(self._ask(ab, parse), self._ask(ba, parse), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            first = errors[0]
            if not isinstance(first, JudgeError):
                raise first
            ok = [o[1] for o in outcomes if not isinstance(o, BaseException)]
            spent = _Usage(
                attempts=sum(u.attempts for u in ok) + sum(getattr(e, "attempts", 0) for e in errors),
                prompt_tokens=sum(u.prompt_tokens for u in ok) + sum(getattr(e, "prompt_tokens", 0) for e in errors),
                completion_tokens=sum(u.completion_tokens for u in ok)
                + sum(getattr(e, "completion_tokens", 0) for e in errors),
            )
            raise self._error(first.reason, str(first), spent)
        ((label1, expl1), u1), ((label2, expl2), u2) = outcomes  # type: ignore[misc]
        first_order = {"A": "a", "B": "b"}.get(label1, "tie")
        second_order = {"A": "b", "B": "a"}.get(label2, "tie")
        consistent = first_order == second_order
        usage = _Usage(
            attempts=u1.attempts + u2.attempts, prompt_tokens=u1.prompt_tokens + u2.prompt_tokens,
            completion_tokens=u1.completion_tokens + u2.completion_tokens, repaired=u1.repaired or u2.repaired,
            json_mode=u1.json_mode and u2.json_mode,
        )
        return PairwiseVerdict(
            winner=first_order if consistent else "tie", consistent=consistent, first_order=first_order,
            second_order=second_order, raw=(label1, label2), explanations=(expl1, expl2),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, cost=self._cost(usage),
            judge_model=self.judge_model, evaluator_version=self._versions[usage.json_mode], attempts=usage.attempts,
            repaired=usage.repaired,
        )

    async def evaluate(self, task: EvalTask) -> list[EvalResult]:
        """Score a task's answer and turn the verdict into rows (the eval worker's ``Judge`` protocol)."""
        # A task from the stream is not type-checked: a reference that is not text (a number, an
        # object) raised TypeError in the prompt builder; the answer is still judged, without it.
        reference = task.reference if isinstance(task.reference, str) else None
        verdict = await self.score(task.prompt_text or "", task.completion_text or "", reference)
        return to_results(task, verdict)

    def to_results(self, task: EvalTask, verdict: JudgeVerdict | PairwiseVerdict) -> list[EvalResult]:
        return to_results(task, verdict)

    def _error(self, reason: str, message: str, usage: _Usage, hint: str | None = None) -> JudgeError:
        return JudgeError(
            reason, message, attempts=usage.attempts, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, cost=self._cost(usage), evaluator_version=self.evaluator_version,
            hint=hint or f"{reason} after {usage.attempts} judge call(s)",
        )

    def _payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.settings.model, "messages": messages, "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens, "stream": False,
        }
        if self._json_mode:
            payload["response_format"] = {"type": "json_object"}
        return payload

    async def _ask(
        self, messages: list[dict[str, str]], parse: Callable[[str], tuple[T, bool]]
    ) -> tuple[T, _Usage]:
        """Call until ``parse`` accepts a reply, within ``max_retries`` re-asks; else ``JudgeError``."""
        usage = _Usage()
        convo = messages
        transient = 0
        wait = 0.0
        reason, detail = "invalid_reply", "no attempt made"
        calls = self.settings.max_retries + 1
        while usage.attempts < calls:
            if wait:
                await asyncio.sleep(wait)
                wait = 0.0
            usage.attempts += 1
            payload = self._payload(convo)
            try:
                async with self._sem:
                    await self._pacer.wait()  # holding a slot: paced calls still count against concurrency
                    reply = await self._client.chat(payload)
            except TransientError as e:
                reason, detail = e.reason, str(e)
                wait = self._backoff(transient, e.retry_after)
                transient += 1
                continue
            except GenerationRejected:  # the endpoint's own JSON validation failed: an invalid reply
                reason, detail = "invalid_reply", "the reply was not valid JSON (the endpoint's JSON mode said so)"
                convo = [*messages, {"role": "user", "content": self._corrective(detail)}]
                continue
            except ResponseFormatRejected as e:
                if "response_format" not in payload:  # not the flag: a concurrent call may have cleared it
                    raise self._error(e.reason, str(e), usage, config_hint(e.status)) from None
                if self._json_mode:
                    log.warning("judge endpoint %s refuses response_format: asking model %s without JSON mode; "
                                "its scores carry the evaluator_version of json_mode false (set "
                                "evaluation.judge.json_mode: false to start there)", safe_url(self._client.endpoint),
                                self.settings.model)
                self._json_mode = False  # the endpoint has no JSON mode: rely on the prompt and repair
                reason, detail = e.reason, str(e)
                calls += 1  # a free 400 (no tokens): the re-ask without JSON mode is not one of the retries
                continue
            except FatalError as e:
                raise self._error(e.reason, str(e), usage, config_hint(e.status)) from None
            usage.add(reply)
            if not reply.usage_reported and not self._warned_no_usage:
                self._warned_no_usage = True  # once per judge: the endpoint will not start sending it
                log.warning("judge endpoint %s sent no token usage for model %s: judge tokens and judge_cost "
                            "of its evaluations are undercounted", safe_url(self._client.endpoint), self.settings.model)
            try:
                value, repaired = parse(reply.content)
            except ReplyError as e:
                reason, detail = "invalid_reply", str(e)
                if reply.finish_reason == "length":
                    detail += f" (the reply was cut at max_tokens={self.settings.max_tokens})"
                convo = [*messages, {"role": "assistant", "content": reply.content[:4000]},
                         {"role": "user", "content": self._corrective(detail)}]
                continue
            usage.repaired = repaired
            usage.json_mode = "response_format" in payload  # what this verdict was asked with: its version
            return value, usage
        raise self._error(reason, f"judge gave up after {usage.attempts} attempt(s): {detail}", usage)

    def _corrective(self, problem: str) -> str:
        return (
            f"Your previous reply could not be used: {problem}. Reply again with only the JSON object, "
            f"with no prose and no code fences, in exactly this shape:\n{self.rubric.schema()}"
        )

    def _backoff(self, n: int, retry_after: float | None) -> float:
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2**n) + random.uniform(0, self.backoff_s / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF_S))
        return delay


def _split_int(total: int, n: int) -> list[int]:
    base, rem = divmod(total, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


def _split_cost(total: float, n: int) -> list[float]:
    """``total`` in ``n`` shares that sum back to it (the last share takes the rounding)."""
    shares = [total / n] * (n - 1)
    return [*shares, total - math.fsum(shares)]


def to_results(
    task: EvalTask, verdict: JudgeVerdict | PairwiseVerdict, *, evaluated_at: str | None = None
) -> list[EvalResult]:
    """EvalResult rows of a verdict: one per dimension (pointwise) or one ``pairwise`` row.

    Judge tokens and cost are split across the rows so that summing a request's rows gives what
    the judge call cost, however many dimensions it has. A pairwise row's ``label`` is the winner
    (``a``, ``b`` or ``tie``) and its score 1.0 / 0.0 / 0.5 (the share won by ``a``).
    """
    now = evaluated_at or datetime.now(timezone.utc).isoformat()
    if isinstance(verdict, PairwiseVerdict):
        score = {"a": 1.0, "b": 0.0}.get(verdict.winner, 0.5)
        expl = f"A/B order: {verdict.explanations[0]} | B/A order: {verdict.explanations[1]}"
        rows = [("pairwise", score, verdict.winner, expl)]
    else:
        rows = [(d, s, None, verdict.explanations.get(d, "")) for d, s in verdict.scores.items()]
    tokens = _split_int(verdict.total_tokens, len(rows))
    costs = _split_cost(verdict.cost, len(rows))
    return [
        EvalResult.for_task(
            task, evaluator=EVALUATOR, evaluator_version=verdict.evaluator_version, dimension=dim,
            evaluated_at=now, score=score, label=label, explanation=expl or None,
            judge_model=verdict.judge_model, judge_tokens=tok, judge_cost=cost,
        )
        for (dim, score, label, expl), tok, cost in zip(rows, tokens, costs, strict=True)
    ]


__all__ = [
    "EVALUATOR", "JudgeError", "JudgeVerdict", "LLMJudge", "PairwiseVerdict", "compute_evaluator_version",
    "judge_cost", "to_results",
]
