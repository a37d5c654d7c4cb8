"""Tokenizer and answer text of the simulator.

The sim needs a tokenizer only to count tokens and to cut text into stream chunks, so a regex
(``\\w+|[^\\w\\s]``) is enough and costs nothing to load. Answers are a bank answer followed by filler
sentences; all pieces are pre-split and cached, so composing an answer is list work only.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from infersight.sim.questions import Question

TOKEN_RE = re.compile(r"\w+|[^\w\s]")

ANSWER_TEMPLATES: tuple[str, ...] = (
    "The answer is {a}.",
    "It is {a}.",
    "{a}.",
    "The correct answer is {a}.",
)

FILLERS: tuple[str, ...] = (
    "This is a well established fact in {topic}.",
    "Most reference works on {topic} agree on this point.",
    "It is a common question in {topic} quizzes.",
    "The detail is easy to check in any encyclopedia.",
    "Historically, this has been taught in schools for a long time.",
    "People sometimes confuse it with a similar fact, but the distinction matters.",
    "In short, that is the answer to the question.",
    "Let me know if you would like more background on {topic}.",
    "There is a lot more that could be said about {topic}.",
    "This summary leaves out some nuance, as short answers do.",
)

REASONING: tuple[str, ...] = (
    "The user asks a question about {topic}.",
    "Let me recall what I know about {topic}.",
    "One candidate answer is {c}.",
    "I should double check that against what I remember.",
    "Another possibility would be {w}, but that seems less likely.",
    "I think the answer is settled, so I will state it briefly.",
    "Let me make sure the wording of the question is understood.",
    "A short explanation after the answer would help the user.",
)


def tokenize(text: str) -> list[str]:
    """Tokens of ``text``: words and single punctuation characters."""
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN_RE.finditer(text))


@lru_cache(maxsize=8192)
def split_chunks(text: str) -> tuple[str, ...]:
    """Stream chunks of ``text``: one per token, each with its leading whitespace.

    Joining the chunks gives back ``text`` (less trailing whitespace), so streamed and
    non-streamed answers are identical.
    """
    out: list[str] = []
    prev = 0
    for m in TOKEN_RE.finditer(text):
        out.append(text[prev : m.end()])
        prev = m.end()
    return tuple(out)


def answer_sentence(rng: random.Random, answer: str) -> tuple[str, ...]:
    template = ANSWER_TEMPLATES[rng.randrange(len(ANSWER_TEMPLATES))]
    text = template.format(a=answer)
    return split_chunks(text[0].upper() + text[1:])


def extend_with(
    rng: random.Random,
    chunks: list[str],
    pool: tuple[str, ...],
    n_tokens: int,
    **fmt: str,
) -> list[str]:
    """Append random sentences from ``pool`` until ``chunks`` holds ``n_tokens``; cut there."""
    last = -1
    while len(chunks) < n_tokens:
        i = rng.randrange(len(pool))
        last = i = (i + 1) % len(pool) if i == last else i  # no sentence twice in a row
        sentence = pool[i].format(**fmt)
        chunks.extend(split_chunks((" " if chunks else "") + sentence))
    del chunks[n_tokens:]
    return chunks


def compose_answer(
    rng: random.Random, answer: str, question: Question, n_tokens: int
) -> list[str]:
    """Chunks of an answer of exactly ``n_tokens`` tokens that states ``answer`` first."""
    chunks = list(answer_sentence(rng, answer))
    return extend_with(rng, chunks, FILLERS, n_tokens, topic=question.topic)


def compose_reasoning(
    rng: random.Random, answer: str, question: Question, n_tokens: int
) -> list[str]:
    """Chunks of a reasoning trace of exactly ``n_tokens`` tokens."""
    wrong = question.wrong[0] if question.wrong else "something else"
    return extend_with(rng, [], REASONING, n_tokens, topic=question.topic, c=answer, w=wrong)
