"""Token log probabilities for the simulated engine (``logprobs``, ``top_logprobs``).

Why: the gateway samples low-confidence answers for evaluation by their mean token entropy
(``evaluation/extract.py``, threshold ``evaluation.low_confidence_entropy``, 1.5 nats), and only an
engine that returns logprobs lets that path run end to end. The simulator knows whether each
answer is right, so its logprobs say so, as a calibrated model's would:

- a correct answer is confident: each token holds ~0.9 of the mass (entropy ~0.45 nats over the
  top 5, ~0.1 from the token's own logprob alone);
- a wrong answer is a guess: each token holds ~0.2 and its alternatives share the rest evenly
  (entropy ~1.6 nats over the top 5, and ~1.6 from the own logprob), above the default threshold.

Values are deterministic per token position. Shapes follow OpenAI: chat ``logprobs.content`` (each
``{token, logprob, bytes, top_logprobs}``), completions ``{tokens, token_logprobs, top_logprobs,
text_offset}``. Only answer tokens carry logprobs; reasoning tokens do not.
"""

from __future__ import annotations

import math
from typing import Any

from infersight.sim.wire import BadRequest

MAX_TOP_CHAT = 20  # OpenAI's limit for chat ``top_logprobs``
MAX_TOP_COMPLETIONS = 5  # and for legacy completions' ``logprobs``
_ALTERNATIVES = (" the", " a", " it", " is", " of", " and", " to", " in", " that", " this", " on", " for",
                 " with", " as", " was", " at", " by", " an", " be", " or")


def requested(req: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token the request asks for, or None for no logprobs."""
    if chat:
        want, top = req.get("logprobs"), req.get("top_logprobs")
        if want is not None and not isinstance(want, bool):
            raise BadRequest("'logprobs' must be a boolean", "logprobs")
        if top is not None:
            if type(top) is not int or not 0 <= top <= MAX_TOP_CHAT:
                raise BadRequest(f"'top_logprobs' must be an integer from 0 to {MAX_TOP_CHAT}", "top_logprobs")
            if not want:
                raise BadRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
        return (top or 0) if want else None
    value = req.get("logprobs")
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_TOP_COMPLETIONS:
        raise BadRequest(f"'logprobs' must be an integer from 0 to {MAX_TOP_COMPLETIONS}", "logprobs")
    return value


def _own_probability(position: int, correct: bool) -> float:
    wiggle = 0.02 * (position % 3)
    return (0.88 + wiggle) if correct else (0.19 + wiggle)


def _alternatives(text: str, position: int, correct: bool, k: int) -> list[tuple[str, float]]:
    """The top ``k`` (token, logprob) of one position, the sampled token among them, most likely first."""
    own = _own_probability(position, correct)
    if k <= 0:
        return []
    others = [alt for alt in _ALTERNATIVES if alt != text][: k - 1]
    share = (1.0 - own) / max(len(others), 1)
    top = [(text, math.log(own))] + [(alt, math.log(share)) for alt in others]
    return sorted(top, key=lambda item: -item[1])


def chat_entry(text: str, position: int, correct: bool, k: int) -> dict[str, Any]:
    """One token of chat ``logprobs.content``."""
    return {
        "token": text, "logprob": math.log(_own_probability(position, correct)), "bytes": list(text.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                         for t, lp in _alternatives(text, position, correct, k)],
    }


def chat_logprobs(texts: list[str], correct: bool, k: int, start: int = 0) -> dict[str, Any]:
    """A chat choice's ``logprobs`` for answer tokens ``texts`` (positions from ``start``)."""
    return {"content": [chat_entry(t, start + i, correct, k) for i, t in enumerate(texts)], "refusal": None}


def completions_logprobs(texts: list[str], correct: bool, k: int, start: int = 0,
                         offset: int = 0) -> dict[str, Any]:
    """A completions choice's ``logprobs`` for ``texts`` (positions from ``start``; ``offset`` is the
    character offset of the first one in the answer)."""
    offsets = []
    for t in texts:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": list(texts),
        "token_logprobs": [math.log(_own_probability(start + i, correct)) for i in range(len(texts))],
        "top_logprobs": [dict(_alternatives(t, start + i, correct, k)) or None for i, t in enumerate(texts)],
        "text_offset": offsets,
    }


def choice_logprobs(texts: list[str], correct: bool, k: int, chat: bool, start: int = 0,
                    offset: int = 0) -> dict[str, Any]:
    """The ``logprobs`` object of a choice (chat or completions shape)."""
    if chat:
        return chat_logprobs(texts, correct, k, start)
    return completions_logprobs(texts, correct, k, start, offset)
