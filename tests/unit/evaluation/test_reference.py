"""Reference metrics against hand-computed and published values, and an independent LCS."""

from __future__ import annotations

import random
import sys
import time
import types
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infersight.evaluation import reference
from infersight.evaluation.reference import (
    EmbeddingSimilarity,
    lcs_length,
    normalize_answer,
    rouge_l,
    rouge_tokens,
    run_reference,
    token_f1,
)
from infersight.model import EvalTask


def task(**kw: Any) -> EvalTask:
    base: dict[str, Any] = dict(trace_id="c" * 32, span_id="d" * 16, tenant_id="t1", model_id="m1",
                                started_at="2025-01-02T03:04:05+00:00", status_code=200,
                                completion_text="police kill the gunman", reference="police killed the gunman")
    base.update(kw)
    return EvalTask(**base)


# ---- token F1 ---------------------------------------------------------------------------------

def test_normalize_answer() -> None:
    assert normalize_answer("The  Cat, a Dog & AN emu!") == "cat dog emu"
    assert normalize_answer("¿Qué «pasa»?") == "qué pasa"  # Unicode punctuation goes, accents stay
    assert normalize_answer("theatre another") == "theatre another"  # articles only as whole words


@pytest.mark.parametrize(("pred", "ref", "expected"), [
    ("Denver Broncos", "Denver Broncos", 1.0),
    ("the Broncos", "Denver Broncos", 2 / 3),  # P = 1/1, R = 1/2
    ("The cat sat on the mat.", "A cat sat on a mat", 1.0),
    ("cat cat dog", "cat dog dog", 2 / 3),  # multiset overlap is 2, not 3
    ("Paris", "London", 0.0),
    ("", "", 1.0),
    ("the", "a", 1.0),  # both empty after normalisation (SQuAD v2 behaviour)
    ("something", "", 0.0),
    ("in 1492 columbus sailed", "Columbus sailed in 1492 across the ocean", 2 * 1 * (4 / 6) / (1 + 4 / 6)),
])
def test_token_f1_hand_computed(pred: str, ref: str, expected: float) -> None:
    assert token_f1(pred, ref) == pytest.approx(expected)


# ---- ROUGE-L --------------------------------------------------------------------------------

def test_rouge_l_lin_2004_example() -> None:
    # Lin (2004), section 3.1: S1 shares "police the gunman" (LCS 3) with the reference, S2 only
    # "the gunman" (LCS 2); with beta = 1, ROUGE-L is 3/4 and 2/4.
    ref = "police killed the gunman"
    assert rouge_l("police kill the gunman", ref) == pytest.approx(0.75)
    assert rouge_l("the gunman kill police", ref) == pytest.approx(0.5)


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat on the mat", "the cat was on the mat") = 5; P = 5/6, R = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    # LCS = 2 ("a c"); P = 2/2, R = 2/4 -> F = 2/3.
    assert rouge_l("a c", "a b c d") == pytest.approx(2 / 3)
    assert rouge_l("", "anything") == 0.0 and rouge_l("x", "") == 0.0 and rouge_l("", "") == 0.0
    assert rouge_l("Ação rápida", "ação RÁPIDA!") == pytest.approx(1.0)


def _lcs_recursive(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    @lru_cache(maxsize=None)
    def go(i: int, j: int) -> int:
        if i == len(a) or j == len(b):
            return 0
        if a[i] == b[j]:
            return 1 + go(i + 1, j + 1)
        return max(go(i + 1, j), go(i, j + 1))

    return go(0, 0)


def _rouge_l_reference(pred: str, ref: str) -> float:
    a, b = tuple(pred.lower().split()), tuple(ref.lower().split())
    lcs = _lcs_recursive(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def test_rouge_l_matches_memoised_recursive_lcs_on_random_strings() -> None:
    rng = random.Random(20250102)
    vocab = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]
    for _ in range(400):
        pred = " ".join(rng.choice(vocab[: rng.randint(1, 6)]) for _ in range(rng.randint(0, 40)))
        ref = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 40)))
        assert rouge_l(pred, ref) == pytest.approx(_rouge_l_reference(pred, ref), abs=1e-12)
        assert lcs_length(pred.split(), ref.split()) == _lcs_recursive(tuple(pred.split()), tuple(ref.split()))


def test_lcs_bit_parallel_on_long_inputs_is_fast_and_exact() -> None:
    rng = random.Random(7)
    a = [str(rng.randint(0, 300)) for _ in range(4096)]
    b = [str(rng.randint(0, 300)) for _ in range(4096)]
    t0 = time.perf_counter()
    assert lcs_length(a, a) == 4096 and lcs_length(a, []) == 0
    lcs_length(a, b)
    assert time.perf_counter() - t0 < 2.0
    # A list's LCS with its own prefix is the prefix's length.
    assert lcs_length(a, a[:1000]) == 1000


def test_rouge_l_caps_tokens() -> None:
    pred = "x " * 10 + "y " * 10
    assert rouge_l(pred, "y " * 10) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert rouge_l(pred, "y " * 10, max_tokens=10) == 0.0  # only the leading x's are read
    assert rouge_tokens("Hello, World_1!") == ["hello", "world_1"]


# ---- run_reference -------------------------------------------------------------------------

def test_run_reference_rows() -> None:
    rows = {r.dimension: r for r in run_reference(task())}
    assert set(rows) == {"token_f1", "rouge_l"}
    assert rows["rouge_l"].score == pytest.approx(0.75)
    assert rows["token_f1"].score == pytest.approx(2 / 3)  # "the" is dropped: police, gunman of 3 each
    for r in rows.values():
        assert r.evaluator == "reference" and r.evaluator_version == reference.evaluator_version()
        assert r.request_started_at == "2025-01-02T03:04:05+00:00" and r.label is None
        assert "gunman" not in (r.explanation or "")


def test_run_reference_not_applicable() -> None:
    assert run_reference(task(reference=None)) == []
    assert run_reference(task(reference="   ")) == []
    assert run_reference(task(completion_text=None)) == []
    assert run_reference(task(status_code=503)) == []
    empty = {r.dimension: r.score for r in run_reference(task(completion_text=""))}
    assert empty == {"token_f1": 0.0, "rouge_l": 0.0}


# ---- embedding similarity (optional, local only) -------------------------------------------

def test_embedding_refuses_hub_ids_and_explains_missing_package(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="local model directory"):
        EmbeddingSimilarity("sentence-transformers/all-MiniLM-L6-v2")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match="pip install sentence-transformers"):
        EmbeddingSimilarity(tmp_path)


class FakeModel:
    """Stands in for SentenceTransformer: fixed vectors per text, records how it was built."""

    calls: list[tuple[str, dict[str, Any]]] = []
    vectors = {"cat": [1.0, 0.0], "kitten": [0.8, 0.6], "dog": [-1.0, 0.0]}

    def __init__(self, path: str, **kwargs: Any) -> None:
        FakeModel.calls.append((path, kwargs))

    def encode(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        assert kwargs["normalize_embeddings"] is True
        return np.array([self.vectors[t] for t in texts])


@pytest.fixture
def fake_st(monkeypatch: pytest.MonkeyPatch) -> type[FakeModel]:
    module = types.ModuleType("sentence_transformers")
    module.SentenceTransformer = FakeModel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", module)
    FakeModel.calls = []
    return FakeModel


def test_embedding_similarity_with_a_local_model(tmp_path: Path, fake_st: type[FakeModel]) -> None:
    (tmp_path / "config.json").write_text('{"dim": 2}')
    emb = EmbeddingSimilarity(tmp_path)
    assert fake_st.calls == [(str(tmp_path), {"device": None, "local_files_only": True})]
    assert emb.similarity("cat", "kitten") == pytest.approx(0.8)
    assert emb.similarity("cat", "dog") == 0.0  # cosine -1 clipped
    rows = {r.dimension: r for r in run_reference(task(completion_text="cat", reference="kitten"), embedder=emb)}
    assert rows["embedding_similarity"].score == pytest.approx(0.8)
    assert rows["embedding_similarity"].evaluator_version != rows["rouge_l"].evaluator_version
    before = emb.version
    (tmp_path / "config.json").write_text('{"dim": 3}')
    assert EmbeddingSimilarity(tmp_path).version != before  # a changed model is a new series


def test_embedding_falls_back_for_old_sentence_transformers(tmp_path: Path, fake_st: type[FakeModel],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    class OldModel(FakeModel):
        def __init__(self, path: str, device: str | None = None) -> None:
            super().__init__(path, device=device)

    monkeypatch.setattr(sys.modules["sentence_transformers"], "SentenceTransformer", OldModel)
    emb = EmbeddingSimilarity(tmp_path, device="cpu")
    assert fake_st.calls[-1] == (str(tmp_path), {"device": "cpu"})
    assert emb.similarity("kitten", "kitten") == pytest.approx(1.0)


def test_an_answer_longer_than_the_kept_text_is_scored_whole_before_masking_cuts_it() -> None:
    """The kept text is cut to max_content_chars; scoring only its start would reward long answers."""
    from infersight.evaluation.masking import mask_tasks
    from infersight.model import EvalTask

    def cut(text: str, max_chars: int) -> tuple[str, dict[str, int], bool]:  # a masker that finds nothing
        return text[:max_chars], {}, len(text) > max_chars

    reference = "Short bonds carry less rate risk."
    answer = reference + " Padding about other topics." * 20
    long_task = EvalTask(trace_id="a" * 32, span_id="b" * 16, tenant_id="t", model_id="m", status_code=200,
                         completion_text=answer, reference=reference)
    short_task = EvalTask(trace_id="c" * 32, span_id="d" * 16, tenant_id="t", model_id="m", status_code=200,
                          completion_text=reference, reference=reference)
    mask_tasks([long_task, short_task], cut, max_chars=100)
    assert long_task.completion_text == answer[:100] and long_task.content_truncated
    assert short_task.reference_scores is not None and short_task.reference_scores["cut"] == 0.0  # raw, always
    assert "whole texts" not in (run_reference(short_task)[1].explanation or "")  # nothing was cut
    rows = {r.dimension: r for r in run_reference(long_task)}
    assert rows["token_f1"].score == pytest.approx(round(token_f1(answer, reference), 6))
    assert rows["rouge_l"].score == pytest.approx(round(rouge_l(answer, reference), 6))
    assert rows["rouge_l"].score < rouge_l(answer[:100], reference)  # the cut text would score higher
    assert "whole texts" in (rows["rouge_l"].explanation or "")


def test_the_configured_embedding_model_runs_on_the_cpu_unless_told(tmp_path: Path, fake_st: type[FakeModel]) -> None:
    # sentence-transformers' own default (device None) takes the GPU whenever CUDA is there: on a GPU
    # node, memory the engine's KV cache was sized for
    from infersight.config import Settings

    cfg = {"backends": [{"name": "b", "type": "openai", "url": "http://127.0.0.1:1/v1", "models": ["m"]}],
           "tenants": [{"id": "t", "api_keys": ["sk-t"]}], "evaluation": {"embedding_model_dir": str(tmp_path)}}
    settings = Settings.model_validate(cfg)
    assert settings.evaluation.embedding_device == "cpu"
    score = reference.reference_evaluator(settings.evaluation.embedding_model_dir, settings.evaluation.embedding_device)
    assert fake_st.calls == [(str(tmp_path), {"device": "cpu", "local_files_only": True})]
    rows = {r.dimension: r.score for r in score(task(completion_text="cat", reference="kitten"))}
    assert rows["embedding_similarity"] == pytest.approx(0.8)
    reference.reference_evaluator(str(tmp_path), "cuda:1")
    assert fake_st.calls[-1] == (str(tmp_path), {"device": "cuda:1", "local_files_only": True})
    with pytest.raises(ValueError, match="embedding_device"):
        Settings.model_validate({**cfg, "evaluation": {"embedding_model_dir": str(tmp_path), "embedding_device": "gpu"}})
