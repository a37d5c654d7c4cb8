"""Reference metrics: how close a completion is to a reference answer the client supplied.

When a request carries a reference (a golden answer, a known-good summary), these give cheap,
deterministic, reproducible scores in [0, 1] next to the judge's: SQuAD token F1 and ROUGE-L.
An optional embedding similarity runs only from a model directory already on disk; nothing here
ever downloads. Definitions are in docs/checks.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from infersight.evaluation.text_classes import CJK, WORD_PATTERN
from infersight.model.evaluation import EvalResult, EvalTask

EVALUATOR = "reference"
REFERENCE_REVISION = 5  # 2: NFKC + casefold, one token per CJK character; 3: combining marks in words;
# 4: texts past max_content_chars scored whole, before masking cuts them; 5: always on the raw texts
"""Bump when a metric's logic changes in a way the parameters below do not show."""

_CJK = CJK
ROUGE_TOKEN_PATTERN = WORD_PATTERN
"""Word runs with their combining marks, but each Chinese/Japanese character alone: those scripts
put no spaces between words, so a whole sentence would otherwise be one token and any difference
would score 0."""
ROUGE_BETA = 1.0
MAX_TOKENS = 4096
"""ROUGE-L reads at most this many leading tokens of each side, bounding the O(n * m) LCS."""

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_ROUGE_TOKEN_RE = re.compile(ROUGE_TOKEN_PATTERN)
_ASCII_PUNCT = frozenset(string.punctuation)
_CJK_CHAR_RE = re.compile(f"([{_CJK}])")


def _is_punct(char: str) -> bool:
    return char in _ASCII_PUNCT or unicodedata.category(char).startswith("P")


def _fold(text: str) -> str:
    """NFKC, then casefold: "café" typed precomposed or with a combining accent, full-width "ＡＢＣ"
    and "Straße"/"STRASSE" compare equal (plain ``lower()`` scored each of these pairs 0)."""
    return unicodedata.normalize("NFKC", text).casefold()


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop English articles, squeeze whitespace.

    Punctuation is ASCII ``string.punctuation`` (as in SQuAD) plus every Unicode punctuation
    character, so Portuguese and Spanish marks (« » ¿ ¡) go too. Lowercasing is NFKC + casefold,
    and each CJK character becomes a token of its own (as MLQA's evaluation does for Chinese).
    """
    lowered = _fold(text)
    no_punct = "".join(c for c in lowered if not _is_punct(c))
    return " ".join(_CJK_CHAR_RE.sub(r" \1 ", _ARTICLES_RE.sub(" ", no_punct)).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the multiset of normalised tokens.

    Both empty after normalisation: 1.0; only one empty: 0.0 (as SQuAD v2's ``compute_f1``).
    """
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokens: NFKC-casefolded Unicode word runs (letters, digits, underscore), each CJK
    character alone; no stemming."""
    return _ROUGE_TOKEN_RE.findall(_fold(text))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyro).

    Row j of the classic DP is held as the bits of one integer over ``b``'s positions, so each of
    ``a``'s tokens costs a few big-integer operations: O(len(a) * len(b) / 64) machine words.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    row = full
    for token in a:
        match = row & masks.get(token, 0)
        row = ((row + match) | (row - match)) & full
    return len(b) - row.bit_count()


def rouge_l(prediction: str, reference: str, *, max_tokens: int = MAX_TOKENS) -> float:
    """ROUGE-L F-measure with beta = 1: ``2PR / (P + R)``, P = LCS/len(pred), R = LCS/len(ref).

    Sentence-level ROUGE-L (not ROUGE-Lsum). Either side empty: 0.0, as in Google's rouge-score.
    Each side is cut to ``max_tokens`` leading tokens first.
    """
    pred = rouge_tokens(prediction)[:max_tokens]
    ref = rouge_tokens(reference)[:max_tokens]
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    beta2 = ROUGE_BETA**2
    return (1 + beta2) * precision * recall / (recall + beta2 * precision)


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings from a LOCAL sentence-transformers model directory.

    Optional: sentence-transformers is not a dependency of infersight. The model must already be
    on disk (e.g. saved with ``SentenceTransformer(...).save(dir)`` on a connected machine); a hub
    id is refused so that the eval worker never downloads anything.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str | None = None) -> None:
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"EmbeddingSimilarity needs a local model directory; {str(model_dir)!r} is not one "
                "(hub ids are refused: infersight never downloads models)."
            )
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                "EmbeddingSimilarity needs the optional package sentence-transformers: "
                "`pip install sentence-transformers`, plus a model directory already on local disk."
            ) from exc
        try:
            self._model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        except TypeError:  # releases before local_files_only; a local path is loaded without the hub
            self._model = SentenceTransformer(str(path), device=device)
        self.model_dir = path
        self.version = _model_fingerprint(path)

    def similarity(self, prediction: str, reference: str) -> float:
        """Cosine similarity of the two texts, clipped to [0, 1] (negative means unrelated here)."""
        vectors = self._model.encode([prediction, reference], normalize_embeddings=True, convert_to_numpy=True)
        cosine = float((vectors[0] * vectors[1]).sum())
        return min(1.0, max(0.0, cosine))


def _model_fingerprint(path: Path) -> str:
    """The directory name plus its small config files: a re-trained model in place is a new version."""
    digest = hashlib.sha256(path.name.encode())
    for name in ("modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        candidate = path / name
        if candidate.is_file():
            digest.update(name.encode() + candidate.read_bytes())
    return f"{path.name}:{digest.hexdigest()[:12]}"


def evaluator_version(embedder: EmbeddingSimilarity | None = None) -> str:
    """A hash of the metric definitions (and the embedding model, for its rows)."""
    params: dict[str, Any] = {
        "revision": REFERENCE_REVISION,
        "token_f1": ["squad", "unicode-punct", "nfkc-casefold", _CJK_CHAR_RE.pattern, _ARTICLES_RE.pattern],
        "rouge_l": [ROUGE_TOKEN_PATTERN, ROUGE_BETA, MAX_TOKENS],
    }
    if embedder is not None:
        params["embedding"] = embedder.version
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def reference_evaluator(embedding_model_dir: str | None,
                        device: str = "cpu") -> Callable[[EvalTask], list[EvalResult]]:
    """``run_reference``, with ``embedding_similarity`` when a local embedding model is configured
    (``evaluation.embedding_model_dir``, on ``evaluation.embedding_device``; loaded once, at a
    worker's start, not per task)."""
    if not embedding_model_dir:
        return run_reference
    embedder = EmbeddingSimilarity(embedding_model_dir, device=device)
    return lambda task: run_reference(task, embedder=embedder)


def run_reference(task: EvalTask, *, embedder: EmbeddingSimilarity | None = None) -> list[EvalResult]:
    """``token_f1`` and ``rouge_l`` rows (plus ``embedding_similarity`` with an embedder) for a task
    with a reference and a completion; nothing for failed requests or tasks without either."""
    reference, prediction = task.reference, task.completion_text
    # Not text (a task from another producer on the stream): no metric, rather than an AttributeError
    # that failed the task's checks too, stalled its batch with retries and ended in dead-letter.
    if not isinstance(reference, str) or not isinstance(prediction, str):
        return []
    if not reference.strip() or task.answer_incomplete:
        return []
    now = datetime.now(timezone.utc).isoformat()
    base = evaluator_version()
    whole = task.reference_scores  # the raw texts, scored before masking cut them
    if isinstance(whole, dict) and {"token_f1", "rouge_l", "prediction_tokens", "reference_tokens"} <= whole.keys():
        f1, rouge = float(whole["token_f1"]), float(whole["rouge_l"])
        pred_tokens, ref_tokens = int(whole["prediction_tokens"]), int(whole["reference_tokens"])
        scope = ", whole texts (the kept text is cut)" if whole.get("cut", 1.0) else ""
    else:
        f1, rouge = token_f1(prediction, reference), rouge_l(prediction, reference)
        pred_tokens, ref_tokens = len(rouge_tokens(prediction)), len(rouge_tokens(reference))
        scope = ""
    capped = f" (cut to the first {MAX_TOKENS})" if max(pred_tokens, ref_tokens) > MAX_TOKENS else ""
    rows = [
        ("token_f1", f1, base, f"SQuAD token F1 against the reference{scope}"),
        ("rouge_l", rouge, base, f"ROUGE-L F1, {pred_tokens} vs {ref_tokens} tokens{capped}{scope}"),
    ]
    if embedder is not None:
        rows.append(("embedding_similarity", embedder.similarity(prediction, reference), evaluator_version(embedder),
                     f"cosine similarity, model {embedder.version}"))
    return [
        EvalResult.for_task(task, evaluator=EVALUATOR, evaluator_version=version, dimension=dimension,
                            evaluated_at=now, score=round(score, 6), explanation=explanation)
        for dimension, score, version, explanation in rows
    ]
