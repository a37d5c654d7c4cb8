"""The simulated engine: deterministic planning, slots and queueing, prefill and decode timing.

Determinism: every request gets its own ``random.Random`` seeded from a hash of (app seed, model,
raw request body, how many times this exact body was seen before). All random choices of the
request (fault, right or wrong, lengths, text, jitter) are drawn from it in a fixed order, so a
given sequence of requests gets the same answers and timings whatever the concurrency. Only state
shared between requests (queue waits, prefix-cache hits, load slowdown) depends on timing.

Decode is paced on an absolute schedule: if the event loop falls behind (CPU-bound benchmark),
tokens that are "already generated" are flushed without sleeping, as a real API server does.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from infersight.sim.judge import JudgeReply, judge_reply
from infersight.sim.judge import mentions as states  # the sim judge's own "does it state X?" rule
from infersight.sim.metrics import ModelMetrics
from infersight.sim.prefix_cache import BLOCK_SIZE, PrefixCache
from infersight.sim.profiles import ModelProfile
from infersight.sim.questions import QUESTION_BANK, Question
from infersight.sim.text import FILLERS, answer_sentence, compose_reasoning, extend_with

REASONING, CONTENT = 0, 1
_SEEN_LIMIT = 250_000  # distinct bodies remembered for the n-th-time counter (~30 MB)


@dataclass
class RequestPlan:
    """Everything decided about a request before it runs."""

    model: str
    question: Question
    correct: bool
    fault: str | None
    tokens: list[tuple[int, str]]  # (REASONING|CONTENT, chunk text)
    finish_reason: str  # "stop" or "length", if it runs to the end
    prompt_tokens: list[str]
    max_tokens: int
    rng: random.Random
    answer: str | None = None  # the bank answer the reply states (None for a judge's verdict)

    @property
    def reasoning_text(self) -> str:
        return "".join(t for k, t in self.tokens if k == REASONING)

    @property
    def content_text(self) -> str:
        return "".join(t for k, t in self.tokens if k == CONTENT)

    def cut_at_stop(self, stops: list[str]) -> None:
        """End the answer before the first stop sequence, as OpenAI and vLLM do: the text before it
        is kept (the token it starts in, cut), the sequence itself is not, and the finish is ``stop``.
        Only the answer is searched, not the reasoning."""
        content = self.content_text
        hits = [at for at in (content.find(s) for s in stops) if at >= 0]
        if not hits:
            return
        end = min(hits)
        kept: list[tuple[int, str]] = []
        pos = 0
        for kind, text in self.tokens:
            if kind != CONTENT:
                kept.append((kind, text))
                continue
            if pos + len(text) > end:
                if end > pos:
                    kept.append((kind, text[: end - pos]))
                break
            kept.append((kind, text))
            pos += len(text)
        self.tokens = kept
        self.finish_reason = "stop"
        self.settle_truth()

    def settle_truth(self) -> None:
        """``correct`` only while the answer text still states the right answer.

        A right answer cut before it is stated (``max_tokens``, a stop sequence, a reasoning trace
        that used up the budget) is not a right answer: the sim judge scores it wrong, and the truth
        header must agree, or judge calibration against ``x-sim-correct`` counts the judge wrong.
        """
        if self.correct and self.answer is not None:
            self.correct = states(self.content_text, self.answer)


@dataclass
class Outcome:
    """What actually happened when the plan ran."""

    finish_reason: str  # stop, length or abort
    generated: int = 0
    reasoning_generated: int = 0
    cached_tokens: int = 0
    queue_s: float = 0.0
    inference_s: float = 0.0  # scheduled to done: prefill (with any stall) plus decode
    ttft_s: float | None = None
    itls: list[float] = field(default_factory=list)


def pick_question(last_user: str, prompt: str) -> Question:
    """The bank question quoted in the last user message, else one chosen by prompt hash."""
    for q in QUESTION_BANK:
        if q.question in last_user:
            return q
    h = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return QUESTION_BANK[int.from_bytes(h, "big") % len(QUESTION_BANK)]


def _length(rng: random.Random, typical: int, floor: int) -> int:
    return max(floor, round(rng.gauss(typical, typical * 0.25)))


class ModelEngine:
    """One model: its slots (``max_num_seqs``), waiting queue, prefix cache and KV usage."""

    def __init__(self, name: str, profile: ModelProfile, metrics: ModelMetrics) -> None:
        self.name = name
        self.profile = profile
        self.metrics = metrics
        self.cache = PrefixCache()
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.kv_tokens = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def kv_usage(self) -> float:
        return min(1.0, self.kv_tokens / BLOCK_SIZE / max(1, self.profile.kv_cache_blocks))

    async def acquire(self, watch: asyncio.Future[object] | None) -> bool:
        """Take a slot, queueing FIFO if all are busy; False if the client left while waiting."""
        if self.running < self.profile.max_num_seqs and not self._waiters:
            self.running += 1
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if watch is None:
                await fut
            else:
                await asyncio.wait((fut, watch), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                self._forget(fut)
            raise
        if fut.done():
            return True  # the releasing request handed its slot over; running is unchanged
        self._forget(fut)
        return False

    def _forget(self, fut: asyncio.Future[None]) -> None:
        fut.cancel()
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1

    async def execute(
        self,
        plan: RequestPlan,
        *,
        stream: bool,
        watch: asyncio.Future[object] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_token: Callable[[int, str], Awaitable[None]] | None = None,
        flush: Callable[[], Awaitable[None]] | None = None,
        stall_s: float = 0.0,
    ) -> Outcome:
        """Queue, prefill and decode ``plan``; call ``on_token`` per token when streaming.

        ``flush`` is awaited before every pause, so a caller may buffer what ``on_start`` and
        ``on_token`` produce and write it once: when the loop is behind schedule, several tokens
        then leave in one write (one SSE event each) instead of one write per token.
        Stops early (finish "abort") when ``watch`` (the client's disconnect) completes. Any
        exception from the callbacks also counts as an abort and releases the slot.
        """
        loop = asyncio.get_running_loop()
        now = loop.time
        t0 = now()
        out = Outcome(finish_reason="abort")
        prof, rng = self.profile, plan.rng
        if not await self.acquire(watch):
            out.queue_s = now() - t0
            self.metrics.on_finished(
                "abort", queue_s=out.queue_s, prefill_s=0.0, decode_s=0.0, e2e_s=out.queue_s,
                ttft_s=None, itls=(), generated=0,
            )
            return out
        t_sched = now()
        out.queue_s = t_sched - t0
        n_prompt = len(plan.prompt_tokens)
        kv_held = n_prompt
        self.kv_tokens += n_prompt
        t_first = t_sched
        try:
            out.cached_tokens = self.cache.lookup_and_insert(plan.prompt_tokens)
            self.metrics.on_scheduled(n_prompt, out.cached_tokens, plan.max_tokens)
            prefill_ms = (
                prof.ttft_base_ms
                + prof.prefill_ms_per_token * (n_prompt - out.cached_tokens)
                + prof.jitter_ms * rng.random()
            )
            if not await _pause(prefill_ms / 1000.0, watch):
                return out
            if on_start is not None:
                await on_start()
            if stall_s > 0:
                if flush is not None:
                    await flush()
                if not await _pause(stall_s, watch):
                    return out
            t_first = now()
            out.ttft_s = t_first - t0
            base, slow, jit = prof.decode_ms_per_token, prof.load_slowdown, prof.jitter_ms
            next_t = prev_t = t_first
            itls = out.itls
            for i, (kind, text) in enumerate(plan.tokens):
                if i:
                    delay = base * (1.0 + slow * (self.running - 1)) + jit * (2 * rng.random() - 1)
                    next_t += max(delay, 0.0) / 1000.0
                    if stream or i % 16 == 0:
                        wait = next_t - now()
                        if wait > 0:
                            if flush is not None:
                                await flush()
                            await asyncio.sleep(wait)
                    if watch is not None and watch.done():
                        return out
                    t = now() if stream else next_t
                    itls.append(t - prev_t)
                    prev_t = t
                if on_token is not None:
                    await on_token(kind, text)
                out.generated += 1
                out.reasoning_generated += kind == REASONING
                self.kv_tokens += 1
                kv_held += 1
            if not stream:
                wait = next_t - now()
                if wait > 0 and not await _pause(wait, watch):
                    return out
            out.finish_reason = plan.finish_reason
            return out
        finally:
            self.kv_tokens -= kv_held
            self.release()
            t_end = now()
            out.inference_s = t_end - t_sched
            decode_s = t_end - t_first if out.ttft_s is not None else 0.0
            self.metrics.on_finished(
                out.finish_reason,
                queue_s=out.queue_s,
                prefill_s=t_first - t_sched,
                decode_s=decode_s,
                e2e_s=t_end - t0,
                ttft_s=out.ttft_s,
                itls=out.itls,
                generated=out.generated,
            )


async def _pause(seconds: float, watch: asyncio.Future[object] | None) -> bool:
    """Sleep, waking early if the client leaves; False if it left."""
    if watch is None:
        await asyncio.sleep(seconds)
        return True
    if watch.done():
        return False
    await asyncio.wait((watch,), timeout=seconds)
    return not watch.done()


class Simulator:
    """All model engines of one app plus the seeded per-request randomness."""

    def __init__(self, seed: int, engines: dict[str, ModelEngine]) -> None:
        self.seed = seed
        self.engines = engines
        self._seen: dict[bytes, int] = {}

    def rng_for(self, model: str, body: bytes) -> random.Random:
        """RNG for the n-th occurrence of this exact (model, body)."""
        key = hashlib.blake2b(model.encode() + b"\0" + body, digest_size=16).digest()
        n = self._seen.get(key, 0)
        if len(self._seen) >= _SEEN_LIMIT and n == 0:
            self._seen.clear()
        self._seen[key] = n + 1
        material = b"%d|%d|" % (self.seed, n) + key
        digest = hashlib.blake2b(material, digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def plan(
        self,
        model: str,
        body: bytes,
        prompt_tokens: list[str],
        prompt_text: str,
        last_user: str,
        max_tokens: int,
        ignore_eos: bool,
        reasoning: bool = True,
    ) -> RequestPlan:
        """Decide fault, answer, lengths and text; draws happen in a fixed order.

        ``reasoning=False`` (legacy completions, which have no ``reasoning_content``): a reasoner
        answers at once, so that the text, streamed or not, holds every token ``usage`` counts.
        """
        prof = self.engines[model].profile
        rng = self.rng_for(model, body)
        u = rng.random()
        fault: str | None = None
        acc = 0.0
        for kind, rate in prof.fault_rates():
            acc += rate
            if u < acc:
                fault = kind
                break
        if prof.judge is not None:
            reply = judge_reply(rng, prof.judge, prompt_text)
            return self._judge_plan(model, reply, rng, fault, prompt_tokens, last_user, max_tokens)
        q = pick_question(last_user, prompt_text)
        correct = rng.random() < prof.p_correct or not q.wrong
        answer = q.correct if correct else q.wrong[rng.randrange(len(q.wrong))]
        n_reason = (
            _length(rng, prof.typical_reasoning_tokens, 8) if prof.is_reasoner and reasoning else 0
        )
        content = list(answer_sentence(rng, answer))
        n_content = _length(rng, prof.typical_output_tokens, len(content))
        if ignore_eos or n_reason + n_content > max_tokens:
            finish = "length"
            n_reason = min(n_reason, max_tokens)
            n_content = max_tokens - n_reason
        else:
            finish = "stop"
        reasoning = compose_reasoning(rng, answer, q, n_reason) if n_reason else []
        extend_with(rng, content, FILLERS, n_content, topic=q.topic)
        tokens = [(REASONING, t) for t in reasoning]
        tokens.extend((CONTENT, t) for t in content)
        plan = RequestPlan(
            model=model, question=q, correct=correct, fault=fault, tokens=tokens,
            finish_reason=finish, prompt_tokens=prompt_tokens, max_tokens=max_tokens, rng=rng,
            answer=answer,
        )
        plan.settle_truth()
        return plan

    def _judge_plan(
        self, model: str, reply: JudgeReply, rng: random.Random, fault: str | None,
        prompt_tokens: list[str], last_user: str, max_tokens: int,
    ) -> RequestPlan:
        """A judge model's plan (``sim/judge.py``): its JSON verdict, cut at ``max_tokens``."""
        chunks = reply.chunks[:max_tokens]
        return RequestPlan(
            model=model, question=reply.question or pick_question(last_user, last_user),
            correct=reply.correct, fault=fault, tokens=[(CONTENT, t) for t in chunks],
            finish_reason="length" if len(reply.chunks) > max_tokens else "stop",
            prompt_tokens=prompt_tokens, max_tokens=max_tokens, rng=rng,
        )
