"""Audit of issue 4 part 3: reference metrics (token F1, ROUGE-L) and the optional embedding similarity.

Real components: the gateway served on 127.0.0.1 in front of the scripted OpenAI-compatible engine
(tests/scripted_engine.py), the in-process Presidio masker and eval sink, the embedded DuckDB store
read back through the query API. The scores are checked against implementations written here from
the definitions in docs/checks.md (SQuAD's normalisation, Lin 2004's LCS on a classic DP table).

Each test says in its docstring what the spec (issue 4, docs/checks.md, docs/evaluation.md)
expects and what the code did instead.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.integration.test_audit_checks_reference import chat, lcs_rouge_l, squad_f1, story
from tests.scripted_engine import Scripted, ScriptedEngine, embedded_gateway, engine  # noqa: F401 (the fixture)
from tests.scripted_engine import chat_reply as _chat_reply
from tests.scripted_engine import message as _message

TENANTS = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"}]


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded shape: gateway, in-process masking and eval sink, DuckDB; content kept for all."""
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("reference_metrics") / "data") as url:
        yield url


# ---- helpers -----------------------------------------------------------------------------------

def reference_rows(base: str, trace: str) -> dict[str, dict[str, Any]]:
    return {e["dimension"]: e for e in story(base, trace)["evaluations"] if e["evaluator"] == "reference"}


# ---- the whole answer, when masking is what pushes it past the cap ---------------------------------

def test_answer_that_masking_lengthens_past_the_cap_is_scored_whole(gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md, reference metrics): "They score the whole answer: when the completion or
    the reference is longer than ``evaluation.max_content_chars`` (2,000), which the kept text is cut
    to, both metrics are computed on the raw texts ... before it cuts them; scoring the first 2,000
    characters of a verbose answer would count only its start against the reference".

    The gateway decides that on the *raw* length (``score_whole_reference``: ``max(len) <=
    max_chars``), but the masker masks first and cuts after, and a placeholder can be longer than
    what it replaces (``10.0.3.7`` -> ``[IP_ADDRESS]``, +4 characters). A 1,970-character answer that
    lists 30 hosts becomes ~2,090 characters once masked, is cut to 2,000, and the worker scores the
    cut text: the answer's conclusion, the sentence that matches the reference, is gone, and the
    scores fall to a tenth (token F1 0.0069 instead of 0.066, ROUGE-L 0.012 instead of 0.052),
    with no "whole texts" in the explanation."""
    reference = "Restart the load balancer pool to restore service for every host."
    hosts = " ".join(f"Host {i} answers at 10.0.{i}.7 on the internal network." for i in range(30))
    filler = " Checked links."
    answer = hosts
    while len(answer) + len(filler) + len(reference) + 1 <= 1990:
        answer += filler
    answer += " " + reference
    assert len(answer) <= 2000 < len(re.sub(r"10\.0\.\d+\.7", "[IP_ADDRESS]", answer))
    engine.replies["ipcap"] = Scripted(body=_chat_reply([_message(answer)]))
    trace, resp = chat(gateway, "Which hosts are up, and what now? case:ipcap;", metadata={"reference": reference})
    assert resp.json()["choices"][0]["message"]["content"] == answer
    rows = reference_rows(gateway, trace)
    scores = {d: r["score"] for d, r in rows.items()}
    expected = {"token_f1": squad_f1(answer, reference), "rouge_l": lcs_rouge_l(answer, reference)}
    assert scores == pytest.approx(expected, abs=1e-4), (scores, expected, {d: r["explanation"] for d, r in rows.items()})


# ---- masking is not the same on both sides -----------------------------------------------------------

def test_exact_answer_is_not_scored_zero_because_masking_differs_between_answer_and_reference(
        gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md): shorter texts "are scored by the worker on the masked text (the same
    placeholder on both sides matches)"; token F1 is SQuAD's, where an answer that contains the
    reference has recall 1. That premise fails whenever a recognizer needs context: the account-number
    recognizer masks ``12345678901`` after "Your account number is" but not as a bare reference. A
    bank assistant that answers "Your account number is 12345678901." against the reference
    ``12345678901`` (the SQuAD shape: a short extracted span) is scored token F1 0.0 and ROUGE-L 0.0
    (``[ACCOUNT_NUMBER]`` against ``12345678901``), where the metrics give 0.33 on the texts the
    client sent and received; the raw texts are at hand where ``score_whole_reference`` runs."""
    reference = "12345678901"
    answer = "Your account number is 12345678901."
    engine.replies["acct"] = Scripted(body=_chat_reply([_message(answer)]))
    trace, _ = chat(gateway, "What is my account number? case:acct;", metadata={"reference": reference})
    rows = reference_rows(gateway, trace)
    scores = {d: r["score"] for d, r in rows.items()}
    expected = {"token_f1": squad_f1(answer, reference), "rouge_l": lcs_rouge_l(answer, reference)}
    assert scores == pytest.approx(expected, abs=1e-4), (scores, expected)


# ---- a long reference is not a cut answer ------------------------------------------------------------

def test_a_long_reference_does_not_hide_an_empty_answer(gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md, ``empty``): on a 2xx, a missing completion fails ``empty``; the one
    exception is "when the answer was past the gateway's 1 MiB capture and did not parse back:
    ``content_truncated``". The masker sets ``EvalTask.content_truncated`` when it cuts *any* text of
    the task (``masking.mask_tasks`` ORs the cut of the prompt, the completion and the reference),
    so a client whose reference is longer than ``max_content_chars`` (a summary's reference is
    often over 2,000 characters) turns the flag on for an answer that was never cut. An engine that
    answers 200 with ``content: null`` (nothing at all) then gets no ``empty`` row, where the same
    answer with a short reference fails ``empty``; the request's content also says
    ``content_truncated: true`` about a prompt and completion that are whole."""
    long_reference = " ".join(f"Point {i}: bonds of duration {i} carry more rate risk." for i in range(60))
    assert len(long_reference) > 2000
    engine.replies["nullans"] = Scripted(body=_chat_reply([_message(None)]))
    outcomes = {}
    for name, ref in (("short", "Long bonds carry more rate risk."), ("long", long_reference)):
        trace, _ = chat(gateway, f"Summarise the rate risk of bonds. case:nullans; {name}", metadata={"reference": ref})
        st = story(gateway, trace)
        checks = {e["dimension"]: e["label"] for e in st["evaluations"] if e["evaluator"] == "checks"}
        outcomes[name] = (checks.get("empty"), st["content"][0]["content_truncated"])
    assert outcomes["short"] == ("fail", False)
    assert outcomes["long"] == ("fail", False), outcomes


# ---- a turn of tool calls is not an answer to compare with the reference -------------------------------

def test_tool_call_turn_is_not_scored_against_the_reference(gateway: str, engine: ScriptedEngine) -> None:
    """Spec (issue 4: reference metrics compare the answer with "a reference answer"; docs/checks.md
    already treats a turn of tool calls alone as no answer for ``invalid_json``: "response_format
    governs content, and there is none"). Agent frameworks send the same request metadata, reference
    included, on every turn of a task. The intermediate turn ``content: null`` + ``tool_calls`` is
    read back as the text ``get_rate({"currency": "EUR"})`` and scored against the final answer's
    reference (token F1 0.29, ROUGE-L 0.2 here), so the model's ``token_f1`` / ``rouge_l`` series
    mostly measure how many tool turns its agents take, not how close its answers are."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_rate", "arguments": '{"currency": "EUR"}'}}
    engine.replies["toolturn"] = Scripted(body=_chat_reply([_message(None, "tool_calls", tool_calls=[call])]))
    trace, _ = chat(gateway, "What is the EUR rate? case:toolturn;", tools=[{"type": "function", "function": {
        "name": "get_rate", "parameters": {"type": "object", "properties": {"currency": {"type": "string"}}}}}],
        metadata={"reference": "The EUR rate is 1.08 dollars."})
    rows = reference_rows(gateway, trace)
    assert rows == {}, {d: r["score"] for d, r in rows.items()}


# ---- embedding similarity: an optional extra a deployment can turn on --------------------------------

class _FakeSentenceTransformer:
    """sentence-transformers' model class at its seam (the package and a model cannot be installed
    or downloaded here): letter counts as the embedding, so equal texts score 1 and others less."""

    def __init__(self, path: str, device: str | None = None, local_files_only: bool = False) -> None:
        assert local_files_only, "a model must be loaded from the local directory only"

    def encode(self, texts: list[str], normalize_embeddings: bool, convert_to_numpy: bool) -> Any:
        import numpy as np

        vectors = np.array([[text.lower().count(c) for c in string.ascii_lowercase] for text in texts], dtype=float)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def test_embedding_similarity_is_turned_on_by_a_local_model_directory(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Spec (issue 4, part 3): "embedding similarity as an optional extra". Was: no setting turned it
    on; the pipeline's evaluators never had an embedder. ``evaluation.embedding_model_dir`` names a
    local model directory, and the workers' reference evaluator adds ``embedding_similarity`` rows."""
    import sys
    import types

    from infersight.config import settings_from_dict
    from infersight.model import EvalTask
    from infersight.runtime_eval import build_evaluators
    from tests.conftest import config_dict

    model = tmp_path / "minilm"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.SimpleNamespace(SentenceTransformer=_FakeSentenceTransformer))
    settings = settings_from_dict(config_dict(tmp_path, evaluation={"embedding_model_dir": str(model)}))
    task = EvalTask(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="m", status_code=200,
                    completion_text="Paris is the capital.", reference="Paris is the capital.", finish_reason="stop")
    rows = [r for evaluate in build_evaluators(settings) for r in evaluate(task)]
    similarity = next(r for r in rows if r.dimension == "embedding_similarity")
    assert similarity.score == pytest.approx(1.0) and "minilm" in (similarity.explanation or "")
    assert similarity.evaluator_version != next(r for r in rows if r.dimension == "token_f1").evaluator_version


def test_an_embedding_model_that_is_not_there_is_a_config_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Named by its key and file before anything starts: not a directory, or the package missing."""
    import sys

    from infersight.config import ConfigError, settings_from_dict
    from infersight.runtime_eval import check_judge_rubric
    from tests.conftest import config_dict

    missing = settings_from_dict(config_dict(tmp_path, evaluation={"embedding_model_dir": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="evaluation.embedding_model_dir.*not a directory"):
        check_judge_rubric(missing, "gw.yaml")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # not installed
    present = settings_from_dict(config_dict(tmp_path, evaluation={"embedding_model_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="pip install sentence-transformers"):
        check_judge_rubric(present, "gw.yaml")


# ---- the reference is the evaluation's, not the engine's -----------------------------------------------

def sent_upstream(engine: ScriptedEngine, marker: str) -> dict[str, Any]:
    [raw] = [r for r in engine.received if marker.encode() in r]
    return orjson.loads(raw)


@pytest.mark.parametrize("stream", [False, True])
def test_reference_stays_in_the_gateway_and_other_metadata_goes_on(
        gateway: str, engine: ScriptedEngine, stream: bool) -> None:
    """``metadata.reference`` is an answer key: forwarded, it showed the engine the expected answer,
    and OpenAI refuses a metadata value over 512 characters, so a long reference failed the request
    itself. The engine gets the client's other metadata; the reference is still scored."""
    reference = " ".join(f"Bond {i} carries rate risk." for i in range(40))
    assert len(reference) > 512
    marker = f"case:refkept-{int(stream)};"
    trace, _ = chat(gateway, f"Summarise the rate risk. {marker}", stream=stream,
                    metadata={"reference": reference, "customer": "c-17"})
    sent = sent_upstream(engine, marker)
    assert sent["metadata"] == {"customer": "c-17"}
    assert "Bond 3 carries" not in orjson.dumps(sent).decode()
    assert sent.get("stream_options") == ({"include_usage": True} if stream else None)
    assert set(reference_rows(gateway, trace)) == {"token_f1", "rouge_l"}


def test_metadata_of_the_reference_alone_is_not_forwarded(gateway: str, engine: ScriptedEngine) -> None:
    """An engine that knows no ``metadata`` (or wants ``store`` with it) never sees one the client
    sent for the gateway alone."""
    trace, _ = chat(gateway, "Capital of France? case:refonly;", metadata={"reference": "Paris"})
    assert "metadata" not in sent_upstream(engine, "case:refonly;")
    assert set(reference_rows(gateway, trace)) == {"token_f1", "rouge_l"}
