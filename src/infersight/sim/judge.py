"""The simulated LLM judge (model ``sim-judge``): scores answers to bank questions, as JSON.

A real judge is slow, costs tokens, is a little noisy and sometimes biased, and now and then breaks
its JSON. This one is all of that on purpose, with the truth known: it reads the judge prompt (the
rubric's tagged sections ``<question>``, ``<reference>``, ``<answer>`` or ``<answer_a>`` /
``<answer_b>``; the *last* ones, since few-shot examples come first), looks the question up in
``QUESTION_BANK`` and checks whether the answer states ``Question.correct`` or a known wrong answer.
Correct answers score high and wrong ones low, whatever their length; ``JudgeProfile`` adds seeded
noise, bias, position bias and malformed replies so a client's repair and retry run over real HTTP.

Pure functions only: ``engine.Simulator.plan`` calls :func:`judge_reply` and paces the reply like
any other model, so usage, slots, queueing and metrics come for free.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import orjson

from infersight.sim.profiles import MALFORMED_KINDS, JudgeProfile, ModelProfile
from infersight.sim.questions import QUESTION_BANK, Question
from infersight.sim.text import split_chunks

DIMENSIONS: tuple[str, ...] = (
    "relevance", "coherence", "factual_fidelity", "no_hallucination", "no_undue_refusal",
    "tone_compliance",
)
REPAIRABLE_KINDS: tuple[str, ...] = MALFORMED_KINDS[:5]
"""Malformed replies a careful client repairs without re-asking; the other kinds need a re-ask."""

# Base score per verdict, in DIMENSIONS order. Length plays no part: a one-word right answer is a 5.
_BASE: dict[str, tuple[float, ...]] = {
    "correct": (5, 5, 5, 5, 5, 5),
    "hedged": (4, 3, 3, 3, 5, 4),  # states the right and a wrong answer
    "wrong": (3, 4, 1, 1, 5, 4),
    "refusal": (2, 4, 3, 5, 1, 4),
    "unknown": (3, 4, 3, 3, 5, 4),  # question not in the bank and no reference: no opinion
}
_WHY: dict[str, str] = {
    "correct": "states {c}, which is correct",
    "hedged": "mentions {c} but also the wrong {w}",
    "wrong": "states {w}; the correct answer is {c}",
    "refusal": "refuses a harmless factual question",
    "unknown": "cannot be checked against a known answer",
}
_REFUSAL = re.compile(
    r"\b(i can(?:no|')t (?:help|answer|assist)|i(?: am|'m) (?:unable|not able)|i won't|as an ai)\b", re.I
)
_GARBAGE = "Overall the answer looks fine to me, I would give it about a 4 out of 5."


@dataclass(frozen=True, slots=True)
class JudgeReply:
    """What the judge says: the reply text as stream chunks, and the truth it was based on."""

    question: Question | None
    correct: bool
    chunks: tuple[str, ...]
    malformed: str | None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def sim_judge_profile(
    latency_ms: float = 1000.0,
    *,
    noise: float = 0.3,
    bias: float = 0.0,
    malformed_rate: float = 0.0,
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS,
    position_bias: float = 0.0,
    max_num_seqs: int = 256,
) -> ModelProfile:
    """A judge model profile whose every call takes ``latency_ms`` (plus queueing beyond the slots)."""
    if not (math.isfinite(latency_ms) and latency_ms >= 0):
        raise ValueError(f"judge latency_ms must be a finite number >= 0, not {latency_ms!r}")
    judge = JudgeProfile(noise, bias, malformed_rate, tuple(malformed_kinds), position_bias)
    return ModelProfile(
        ttft_base_ms=latency_ms, prefill_ms_per_token=0.0, decode_ms_per_token=0.0,
        max_num_seqs=max_num_seqs, typical_output_tokens=150, kv_cache_blocks=65536, judge=judge,
    )


def with_judge(profile: ModelProfile, **knobs: object) -> ModelProfile:
    """Copy of a judge ``profile`` with some ``JudgeProfile`` knobs changed (e.g. ``bias=0.5``)."""
    base = profile.judge or JudgeProfile()
    return dataclasses.replace(profile, judge=dataclasses.replace(base, **knobs))  # type: ignore[arg-type]


def _section(text: str, tag: str) -> str | None:
    """Body of the last ``<tag>...</tag>`` in ``text``."""
    end = text.rfind(f"</{tag}>")
    start = text.rfind(f"<{tag}>", 0, end)
    if end < 0 or start < 0:
        return None
    return text[start + len(tag) + 2 : end].strip()


def mentions(text: str, phrase: str) -> bool:
    phrase = re.sub(r"^the\s+", "", phrase.strip().rstrip(".!"), flags=re.I)
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.I) is not None


def find_question(text: str) -> Question | None:
    """The bank question quoted last in ``text`` (no hash fallback: an unknown question is unknown).
    Last: a multi-turn chat reaches the judge whole, and the engine answers its last question."""
    best, at = None, -1
    for q in QUESTION_BANK:
        found = text.rfind(q.question)
        if found > at:
            best, at = q, found
    return best


def classify(question: Question | None, answer: str, reference: str | None) -> tuple[str, str, str]:
    """(verdict, correct answer, wrong answer seen) for one answer; verdict is a key of ``_BASE``."""
    if _REFUSAL.search(answer):
        return "refusal", question.correct if question else "", ""
    if question is not None:
        right, wrongs = question.correct, question.wrong
    elif reference:
        right, wrongs = reference, ()
    else:
        return "unknown", "", ""
    hit = mentions(answer, right)
    wrong = next((w for w in wrongs if mentions(answer, w)), "")
    if hit:
        return ("hedged" if wrong else "correct"), right, wrong
    return "wrong", right, wrong or "something else"


def _asked_dimensions(prompt: str) -> tuple[str, ...]:
    asked = tuple(d for d in DIMENSIONS if d in prompt)
    return asked or DIMENSIONS


def _pointwise(rng: random.Random, cfg: JudgeProfile, prompt: str, tail: str) -> tuple[dict[str, Any], bool]:
    question = find_question(_section(tail, "question") or "")
    verdict, right, wrong = classify(question, _section(tail, "answer") or "", _section(tail, "reference"))
    why = _WHY[verdict].format(c=right, w=wrong)
    out: dict[str, dict[str, object]] = {}
    for dim, base in zip(DIMENSIONS, _BASE[verdict]):
        raw = base + cfg.bias + (rng.gauss(0.0, cfg.noise) if cfg.noise > 0 else 0.0)
        # half a point rounds away from the truth, either way: bias -0.5 is as strict as +0.5 is lenient
        score = min(5, max(1, math.floor(raw + 0.5) if raw >= base else math.ceil(raw - 0.5)))
        out[dim] = {"explanation": f"The answer {why}.", "score": score}
    asked = _asked_dimensions(prompt)
    return {d: out[d] for d in asked}, verdict == "correct"


def _pairwise(rng: random.Random, cfg: JudgeProfile, tail: str) -> tuple[dict[str, Any], bool]:
    question = find_question(_section(tail, "question") or "")
    ref = _section(tail, "reference")
    va = classify(question, _section(tail, "answer_a") or "", ref)[0]
    vb = classify(question, _section(tail, "answer_b") or "", ref)[0]
    if cfg.position_bias > 0 and rng.random() < cfg.position_bias:
        return {"explanation": "Answer A reads better.", "winner": "A"}, va == "correct"
    if va == "correct" and vb != "correct":
        return {"explanation": "Only answer A is correct.", "winner": "A"}, True
    if vb == "correct" and va != "correct":
        return {"explanation": "Only answer B is correct.", "winner": "B"}, False
    return {"explanation": "The two answers are equally good.", "winner": "tie"}, va == "correct"


def _malform(kind: str, obj: dict[str, Any], rng: random.Random) -> str:
    """``obj`` as JSON broken in the way ``kind`` says."""
    text = orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()
    if kind == "fenced":
        return f"```json\n{text}\n```"
    if kind == "prose":
        return f"Here is my evaluation:\n{text}\nI hope this helps."
    if kind == "trailing_comma":
        return re.sub(r"(?<=[\"\d}])(\n\s*\})", r",\1", text)
    if kind == "single_quotes":
        return text.replace('"', "'")
    if kind == "string_scores" and "winner" in obj:  # a pairwise reply has no score: fenced instead
        return f"```json\n{text}\n```"
    if kind == "string_scores":
        return re.sub(r'"score": (\d)', r'"score": "\1/5"', text)
    if kind == "truncated":
        return text[: max(1, len(text) // 2)]
    if kind == "missing_dimension" and len(obj) > 1 and "winner" not in obj:
        drop = list(obj)[rng.randrange(len(obj))]
        return orjson.dumps({k: v for k, v in obj.items() if k != drop}, option=orjson.OPT_INDENT_2).decode()
    return _GARBAGE


def judge_reply(rng: random.Random, cfg: JudgeProfile, prompt: str) -> JudgeReply:
    """The judge's reply to a rendered chat ``prompt``; draws (malformed?, noise...) in a fixed order."""
    broken = cfg.malformed_rate > 0 and rng.random() < cfg.malformed_rate
    kind = cfg.malformed_kinds[rng.randrange(len(cfg.malformed_kinds))] if broken else None
    start = prompt.rfind("<question>")
    tail = prompt[start:] if start >= 0 else prompt
    if "<answer_a>" in tail:
        obj, correct = _pairwise(rng, cfg, tail)
    else:
        obj, correct = _pointwise(rng, cfg, prompt, tail)
    text = _malform(kind, obj, rng) if kind else orjson.dumps(obj).decode()
    question = find_question(_section(tail, "question") or "")
    return JudgeReply(question=question, correct=correct, chunks=split_chunks.__wrapped__(text),  # uncached: unique
                      malformed=kind)


__all__ = [
    "DIMENSIONS", "REPAIRABLE_KINDS", "JudgeProfile", "JudgeReply", "classify", "find_question",
    "judge_reply", "sim_judge_profile", "with_judge",
]
