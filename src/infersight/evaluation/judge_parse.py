"""Reading a judge's reply: lenient JSON repair, then strict extraction of scores or a winner.

Even with ``response_format: json_object`` judges wrap JSON in code fences or prose, leave trailing
commas, use single quotes, or write scores as ``"4/5"``. Re-asking costs a full judge call, so the
cheap, unambiguous repairs are done here; anything still unusable raises ``ReplyError`` with a
reason that the judge quotes back to the model in its corrective re-ask.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

MAX_REPAIR_CHARS = 262_144
"""Replies longer than this are not repaired (re-asked instead): a judge reply is a few kB, and the
quote repair walks the text in Python, which on a multi-MB reply held the CPU (and, with the judge in
the gateway's process, its GIL) for seconds per attempt. A valid JSON object of any size still parses."""

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_THINK_END = "</think>"
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Starts only where a number starts: tried from inside a long digit run, each start re-scanned the
# rest of the run, quadratic (an 8 kB score string of digits held the judge worker's loop for seconds).
_FRACTION = re.compile(r"(?<![\d.])(-?\d+(?:\.\d+)?)\s*\(?\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.I)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_WINNERS = {
    "a": "A", "answer a": "A", "answer_a": "A", "response a": "A", "assistant a": "A", "first": "A",
    "b": "B", "answer b": "B", "answer_b": "B", "response b": "B", "assistant b": "B", "second": "B",
    "tie": "tie", "draw": "tie", "equal": "tie", "both": "tie", "neither": "tie", "none": "tie",
}


class ReplyError(ValueError):
    """A judge reply that cannot be used even after repair; the message says why."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """The JSON object read from a reply, and whether it needed repair to be read."""

    data: dict[str, Any]
    repaired: bool


def _single_to_double_quotes(text: str) -> str:
    """Turn single-quoted JSON-ish strings into double-quoted ones; double-quoted ones pass through."""
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None:
            if ch in "'\"":
                quote = ch
                out.append('"')
            else:
                out.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(nxt if quote == "'" and nxt == "'" else ch + nxt)
            i += 1
        elif ch == quote:
            quote = None
            out.append('"')
        elif ch == '"':  # a double quote inside a single-quoted string
            out.append('\\"')
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _load(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def parse_json_object(reply: str) -> Parsed:
    """The JSON object in ``reply``, repaired if needed (reasoning, fences, prose, trailing commas,
    quotes).

    A reasoning model's ``<think>...</think>`` (or a bare ``</think>``, as DeepSeek-R1's template
    leaves it) is dropped first: drafts and the schema restated there are not the verdict. Of what
    is left, the last code fence is the answer; else the text from the first ``{`` to the last ``}``,
    repaired; else the last whole JSON object in it (prose after the JSON may hold braces of its
    own: "scores use {1-5}")."""
    text = reply.strip()
    data = _load(text)
    if isinstance(data, dict):
        return Parsed(data, repaired=False)
    if len(text) > MAX_REPAIR_CHARS:
        raise ReplyError(f"the reply is {len(text)} characters long and not one JSON object; "
                         f"reply with the JSON object alone")
    think = text.rfind(_THINK_END)
    if think >= 0:
        text = text[think + len(_THINK_END):].strip()
        data = _load(text)
        if isinstance(data, dict):
            return Parsed(data, repaired=True)
    fences = _FENCE.findall(text)
    if fences:
        text = fences[-1].strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0:
        raise ReplyError("the reply holds no JSON object")
    if end <= start:
        raise ReplyError("the JSON object is not closed (the reply looks cut off)")
    whole = text[start : end + 1]
    for candidate in (whole, _TRAILING_COMMA.sub(r"\1", whole)):
        data = _load(candidate)
        if isinstance(data, dict):
            return Parsed(data, repaired=True)
    data = _load(_TRAILING_COMMA.sub(r"\1", _single_to_double_quotes(whole)))
    if isinstance(data, dict):
        return Parsed(data, repaired=True)
    found = _last_object(text)  # several objects, or prose after the JSON with braces of its own
    if found is not None:
        return Parsed(found, repaired=True)
    raise ReplyError("the reply is not valid JSON")


def _last_object(text: str) -> dict[str, Any] | None:
    """The last top-level JSON object that decodes as it stands in ``text`` (each ``{`` tried in
    turn; a decoded object's inner braces are skipped), or None."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    at = text.find("{")
    while at >= 0:
        try:
            value, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):  # nested ~1,000 deep: Python's decoder recurses
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found = value
        at = text.find("{", end)
    return found


def coerce_score(value: Any) -> float | None:
    """A 1-5 score from a number or a string like ``"4"``, ``"4/5"``, ``"Score: 8 out of 10"``,
    ``"80%"``; else None, which re-asks the judge.

    Only unambiguous strings are read: one fraction (scaled to 5), one percentage, or one number.
    A string with several numbers and no single fraction (``"on a scale of 1 to 5, 3"``) is not
    guessed at: its first number was taken, a wrong score written as a valid one. Scores outside
    the scale are clamped to 1-5 (a "6" is a judge's way to say "best").
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            score = float(value)
        except OverflowError:  # an integer of 310 digits or more (json decodes it whole)
            return None
    elif isinstance(value, str):
        fractions = _FRACTION.findall(value)
        percent = _PERCENT.match(value)
        numbers = _NUMBER.findall(value)
        if len(fractions) == 1 and len(numbers) == 2:
            num, den = float(fractions[0][0]), float(fractions[0][1])
            score = num if den in (0.0, 5.0) else num / den * 5.0
        elif percent:
            score = float(percent.group(1)) / 100.0 * 5.0
        elif len(numbers) == 1:
            score = float(numbers[0])
        else:
            return None
    else:
        return None
    if math.isnan(score) or math.isinf(score):
        return None
    return min(5.0, max(1.0, score))


def _norm(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def extract_scores(
    data: dict[str, Any], dimensions: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, str], bool]:
    """(scores, explanations, coerced) for every one of ``dimensions``; ReplyError names the gaps.

    Accepts ``{dim: {"score", "explanation"}}`` (our schema), ``{dim: 4}``, and
    ``{"scores": {...}, "explanations": {...}}``; keys are matched case- and separator-blind.
    ``coerced`` is True when some score was not a plain number.
    """
    flat = _normalised(data, dimensions)
    nested_expl = {}
    if isinstance(flat.get("scores"), dict) and not all(dim in flat for dim in dimensions):
        if isinstance(flat.get("explanations"), dict):
            nested_expl = {_norm(k): v for k, v in flat["explanations"].items()}
        flat = _normalised(flat["scores"], dimensions)
    scores: dict[str, float] = {}
    explanations: dict[str, str] = {}
    coerced = False
    missing: list[str] = []
    bad: list[str] = []
    for dim in dimensions:
        if dim not in flat:
            missing.append(dim)
            continue
        raw = flat[dim]
        expl: Any = nested_expl.get(dim, "")
        if isinstance(raw, dict):
            inner = {_norm(k): v for k, v in raw.items()}
            raw = inner.get("score", inner.get("rating"))
            expl = inner.get("explanation", inner.get("reason", inner.get("rationale", "")))
        score = coerce_score(raw)
        if score is None:
            bad.append(dim)
            continue
        coerced |= not (isinstance(raw, (int, float)) and 1 <= raw <= 5)
        scores[dim] = score
        explanations[dim] = expl if isinstance(expl, str) else str(expl)
    problems = []
    if missing:
        problems.append("missing dimensions: " + ", ".join(missing))
    if bad:
        problems.append("no usable 1-5 score for: " + ", ".join(bad))
    if problems:
        raise ReplyError("; ".join(problems))
    return scores, explanations, coerced


def _normalised(data: dict[str, Any], dimensions: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with keys matched case- and separator-blind; a dimension given twice with different
    values (``{"Relevance": 1, "relevance": 5}``) is ambiguous: re-asked, where the last one won."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _norm(key)
        if name in dimensions and name in out and out[name] != value:
            raise ReplyError(f"dimension {name} given twice, with different values")
        out[name] = value
    return out


def extract_winner(data: dict[str, Any]) -> tuple[str, str]:
    """(``A`` | ``B`` | ``tie``, explanation) from a pairwise reply."""
    flat = {_norm(k): v for k, v in data.items()}
    raw = next((flat[k] for k in ("winner", "preferred", "better", "preference", "choice") if k in flat), None)
    if not isinstance(raw, str):
        raise ReplyError('no "winner" field ("A", "B" or "tie")')
    label = _WINNERS.get(re.sub(r"[\s_]+", " ", raw.strip().strip(".").lower()))
    if label is None:
        raise ReplyError('"winner" must be "A", "B" or "tie" (the reply gave something else)')
    expl = flat.get("explanation", flat.get("reason", ""))
    return label, expl if isinstance(expl, str) else str(expl)


__all__ = [
    "MAX_REPAIR_CHARS", "Parsed", "ReplyError", "coerce_score", "extract_scores", "extract_winner",
    "parse_json_object",
]
