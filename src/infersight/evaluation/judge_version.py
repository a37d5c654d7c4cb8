"""``evaluator_version``: the hash that makes a new judge a new series (docs/judge.md, "Versions").

Apart from ``llm_judge`` because the gateway computes the version of the judge its eval process
runs (``offload.RemoteJudge``) without loading the judge's HTTP client (aiohttp, ~13 MB of RSS).
"""

from __future__ import annotations

import hashlib

import orjson

from infersight.evaluation.rubric import Rubric

PROMPT_LAYOUT = "2026-11-22"
"""Bump when the code changes how prompts are assembled (few-shot turns, corrective message): that
moves scores as surely as a rubric edit, so it is part of ``evaluator_version``."""


def compute_evaluator_version(model: str, rubric: Rubric, temperature: float, max_tokens: int,
                              json_mode: bool = True) -> str:
    """sha256 (hex, first 16) of judge model + rubric full text + score-moving parameters.

    Included: the judge model id, the rubric file's full text (any edit, even a comment; line ends
    and a BOM are normalised when it is read), the rubric kind, temperature, max_tokens, whether the
    JSON response format is asked for (``json_mode``: an endpoint without it is asked differently
    and its replies repaired differently) and ``PROMPT_LAYOUT``. Not included
    (they do not change what the judge answers): the endpoint URL and key, timeouts, retries,
    concurrency and prices. So moving the same judge behind the gateway keeps the version.
    """
    material = orjson.dumps(
        {
            "model": model, "rubric_text": rubric.text, "rubric_kind": rubric.kind,
            "temperature": float(temperature) + 0.0, "max_tokens": int(max_tokens),  # + 0.0: -0.0 is 0.0
            "response_format": "json_object" if json_mode else "none", "layout": PROMPT_LAYOUT,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(material).hexdigest()[:16]
