"""Audit of the LLM judge against what real OpenAI-compatible judge endpoints send back: reasoning
models (``<think>`` before the JSON), prose after the JSON, content as a list of parts, TGI's 422 for
``response_format`` json_object, Groq's 400 ``json_validate_failed``, and a misconfigured judge (401)
seen from the eval sink.

The judge is a scripted OpenAI-compatible endpoint served over real HTTP on 127.0.0.1
(``ThreadedServer`` with the ``Endpoint`` app of ``test_audit_judge_client``); what those tests and
``test_audit_evaluation`` already cover (Retry-After, usage, cut replies, fences, empty choices, JSON
mode refused with a 400, ...) is not repeated here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from infersight.evaluation.llm_judge import JudgeError, LLMJudge
from infersight.evaluation.rubric import DIMENSION_NAMES
from infersight.evaluation.settings import JudgeSettings
from infersight.evaluation.worker import EvalSink
from infersight.serving import ThreadedServer
from infersight.store.duckdb_store import DuckDBStore
from tests.integration.test_audit_judge_client import Endpoint, Reply, chat
from tests.unit.evaluation.test_worker import task

FOURS = dict.fromkeys(DIMENSION_NAMES, 4.0)
FINAL = orjson.dumps({d: {"explanation": "Right, and says it plainly.", "score": 4} for d in DIMENSION_NAMES}).decode()
DRAFT = orjson.dumps({d: {"explanation": "first guess", "score": 1} for d in DIMENSION_NAMES}).decode()
SCHEMA_ECHO = '{"relevance": {"explanation": "<one short sentence>", "score": <integer 1-5>}, ...}'


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    app = Endpoint()
    with ThreadedServer(app) as server:
        yield app, server.url


def make_judge(url: str, model: str, rubric: str = "default", **kw: Any) -> LLMJudge:
    settings = JudgeSettings(url=url, model=model, input_price_per_1m=1.0, output_price_per_1m=4.0, **kw)
    return LLMJudge.from_settings(settings, rubric=rubric, backoff_s=0.01)


# --- reasoning judges: <think> before the JSON -----------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        # DeepSeek-R1 / QwQ / Qwen3 served by vLLM without --reasoning-parser, or by Ollama: the reasoning
        # is in `content`. A reasoning model restates the schema it was shown (braces included)...
        pytest.param(f"<think>\nThey want JSON shaped like {SCHEMA_ECHO}. The answer is right. "
                     f"I'll give 4 everywhere.\n</think>\n\n{FINAL}", id="schema-restated-in-think"),
        # ...or drafts a verdict, fenced, and revises it: the draft must not become the verdict
        pytest.param(f"<think>\nDraft:\n```json\n{DRAFT}\n```\nNo, that is far too harsh: the answer is "
                     f"right.\n</think>\n\n```json\n{FINAL}\n```", id="fenced-draft-in-think"),
        # DeepSeek-R1's chat template puts the opening <think> in the prompt: only </think> comes back
        pytest.param(f"Okay, the format is {SCHEMA_ECHO}. Let me check the answer... it's right.\n</think>\n\n"
                     f"{FINAL}", id="no-opening-tag"),
    ],
)
async def test_a_reasoning_judges_think_block_is_not_read_as_its_verdict(endpoint, content: str) -> None:
    """The verdict of a reasoning judge is the JSON after its reasoning. Before: the repair took the
    text from the first ``{`` (inside the think block) to the last ``}``, so a schema restated in the
    reasoning made every reply unusable (each one re-asked, paid, and the task ended ``invalid_reply``),
    and a fenced draft in the reasoning was taken, silently, as the verdict."""
    app, url = endpoint
    model = app.script(f"think-{len(app.scripts)}", chat(content))
    async with make_judge(url, model) as j:
        verdict = await j.score("What is the capital of France?", "Paris.")
    assert verdict.scores == FOURS
    assert verdict.attempts == 1 and len(app.requests[model]) == 1  # one paid call, not max_retries + 1


async def test_a_pairwise_reasoning_judges_draft_does_not_invert_the_winner(endpoint) -> None:
    """The same with the pairwise rubric: both orders draft the wrong winner in their reasoning and
    settle on the right one. Before: the drafts were read, both orders "agreed" on the wrong answer,
    and the comparison reported a consistent win for the answer the judge had rejected."""
    app, url = endpoint

    def reasoned(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        right_is_a = "<answer_a>\nParis.\n</answer_a>" in request["messages"][-1]["content"]
        final, draft = ("A", "B") if right_is_a else ("B", "A")
        return chat(f'<think>\nDraft:\n```json\n{{"explanation": "longer", "winner": "{draft}"}}\n```\n'
                    f"Wait, the longer one names the wrong city.\n</think>\n\n"
                    f'```json\n{{"explanation": "names the right city", "winner": "{final}"}}\n```')

    app.script("think-pair", reasoned)
    async with make_judge(url, "think-pair", rubric="pairwise") as j:
        verdict = await j.compare("What is the capital of France?", "Lyon, a lovely city on the Rhone.", "Paris.")
    assert (verdict.first_order, verdict.second_order) == ("b", "b")
    assert verdict.winner == "b" and verdict.consistent


# --- prose after the JSON ------------------------------------------------------------------------------


async def test_prose_with_a_brace_after_the_json_is_dropped_not_reasked(endpoint) -> None:
    """docs/judge.md: the repair "takes the outermost ``{...}`` (drops prose around it)". Before: a
    note after the object that holds a brace (``{1-5}``) moved the last ``}`` into the prose, the
    reply was unusable, and a judge that always adds such a note never gave a verdict."""
    app, url = endpoint
    app.script("prose-after", chat(FINAL + "\n\nNote: every score is on the rubric's {1-5} scale."))
    async with make_judge(url, "prose-after") as j:
        verdict = await j.score("What is the capital of France?", "Paris.")
    assert verdict.scores == FOURS and verdict.attempts == 1


# --- content as a list of parts ------------------------------------------------------------------------


async def test_content_given_as_a_list_of_parts_is_read_from_its_text_parts(endpoint) -> None:
    """Some cloud APIs (Mistral's Magistral models) send ``message.content`` as a list of typed parts:
    a ``thinking`` part, then the ``text`` part with the answer. Before: the list was turned into its
    Python repr (``str(content)``), which is no JSON object holding the scores: every reply was
    re-asked and the task ended ``invalid_reply``."""
    app, url = endpoint
    body = {
        "id": "c1", "object": "chat.completion", "model": "magistral",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": [
            {"type": "thinking", "thinking": [{"type": "text", "text": "The answer names the right city."}]},
            {"type": "text", "text": FINAL},
        ]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }
    app.script("parts", (200, {}, orjson.dumps(body)))
    async with make_judge(url, "parts") as j:
        verdict = await j.score("What is the capital of France?", "Paris.")
    assert verdict.scores == FOURS and verdict.attempts == 1


# --- JSON mode refused, as real servers refuse it -------------------------------------------------------


async def test_tgis_422_for_response_format_json_object_falls_back_to_no_json_mode(endpoint) -> None:
    """Hugging Face TGI (and the HF Inference API) answer ``response_format: {"type": "json_object"}``
    with HTTP **422**, ``Failed to deserialize the JSON body into the target type: response_format:
    missing field `value```. docs/judge.md: an endpoint that rejects JSON mode is re-asked without it.
    Before: only a 400 was recognised; the 422 was a final ``http_error``, so a TGI judge gave every
    sampled task an ``_error`` row and never a score."""
    app, url = endpoint

    def tgi(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        if "response_format" in request:
            return 422, {}, (b"Failed to deserialize the JSON body into the target type: response_format: "
                             b"missing field `value` at line 1 column 168")
        return chat(FINAL)

    app.script("tgi", tgi)
    async with make_judge(url, "tgi", max_retries=0) as j:
        verdict = await j.score("What is the capital of France?", "Paris.")
        no_json_version = j._versions[False]
    assert verdict.scores == FOURS
    assert [("response_format" in r) for r, _ in app.requests["tgi"]] == [True, False]
    assert verdict.evaluator_version == no_json_version  # asked without JSON mode: that series


async def test_groqs_400_json_validate_failed_is_reasked_within_max_retries(endpoint) -> None:
    """Groq answers a JSON-mode call whose output failed its JSON validation with HTTP 400
    ``json_validate_failed`` (the bad output in ``failed_generation``). That is the judge's reply
    being invalid JSON, which the issue says is repaired and retried. Before: a 400 without the word
    ``response_format`` was a final ``http_error``: the task got an ``_error`` row on the first bad
    generation, with ``max_retries`` unused."""
    app, url = endpoint
    groq = {"error": {"message": "Failed to generate JSON. Please adjust your prompt. See 'failed_generation' "
                                 "for more details.", "type": "invalid_request_error",
                      "code": "json_validate_failed", "failed_generation": '{"relevance": {"score": 4'}}
    app.script("groq", (400, {}, orjson.dumps(groq)), chat(FINAL))
    async with make_judge(url, "groq", max_retries=2) as j:
        verdict = await j.score("What is the capital of France?", "Paris.")
    assert verdict.scores == FOURS
    assert len(app.requests["groq"]) == 2  # one re-ask, within the budget


# --- a misconfigured judge, as the pipeline records it --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        pytest.param(401, {"error": {"message": "Incorrect API key provided: sk-wr***ng.", "type":
                                     "invalid_request_error", "code": "invalid_api_key"}}, "evaluation.judge.api_key",
                     id="401-bad-key"),
        pytest.param(404, {"error": {"message": 'model "llama3.1:8b" not found, try pulling it first',
                                     "type": "api_error"}}, "evaluation.judge.model", id="404-ollama-model-not-pulled"),
    ],
)
def test_a_misconfigured_judge_is_a_clear_error_row_not_a_bare_label(
    endpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, body: dict[str, Any], detail: str,
) -> None:
    """A wrong key or a model name the server does not have is not an outage: the eval sink ends the
    task with its ``_error`` row at once (right). But the operator must be able to see *why*:
    docs/judge.md speaks of the error body reaching "a log or an ``_error`` row". Before: the row held
    only the label ``http_error`` (no explanation) and the sink's log line only ``reason=http_error``;
    the status and the server's message (``JudgeError``'s text) were dropped, so a 401 could not be
    told from a 404 or a 400 anywhere in the store or the logs. Now both say what to check (fixed
    text, not the server's body, which may quote the request)."""
    app, url = endpoint
    model = app.script(f"misconfigured-{status}", (status, {}, orjson.dumps(body)))
    judge = LLMJudge.from_settings(JudgeSettings(url=url, model=model, max_retries=2))
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    sink = EvalSink(store, evaluators=[], judge=judge, hold_on_judge_outage=True)
    try:
        with caplog.at_level(logging.DEBUG):
            sink.export([task(status, sampled=True)])
        (row,) = store.eval_results_for(f"{status:032x}")
    finally:
        sink.shutdown()
        store.close()
    assert (row["dimension"], row["label"]) == ("_error", "http_error")  # a clear error, not held
    assert len(app.requests[model]) == 1  # not retried
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert detail in (row["explanation"] or "") and detail in logged, (row["explanation"], logged)
