"""Audit of issue 4 part 3: the deterministic checks and the reference metrics, end to end.

Real components: the gateway served by uvicorn on 127.0.0.1 in front of a scripted
OpenAI-compatible engine that is itself a real HTTP server on 127.0.0.1 (streamed and not
streamed, chat and legacy completions, an engine that fails mid-stream), the embedded DuckDB
store read back through the query API, and the Presidio masker. Pure functions (the checks, the
metrics) are also called directly, against independent implementations written here.

Each test says in its docstring what the spec (issue 4, docs/checks.md, docs/evaluation.md)
expects and what the code did instead.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from infersight.evaluation.checks import check_refusal, check_repetition
from infersight.evaluation.text_classes import MARKS
from tests.e2e.test_evaluation import wait_for
from tests.scripted_engine import Scripted, ScriptedEngine, embedded_gateway, engine  # noqa: F401 (the fixture)
from tests.scripted_engine import chat_reply as _chat_reply
from tests.scripted_engine import chunk as _chunk
from tests.scripted_engine import message as _message

ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}


# ---- a scripted OpenAI-compatible engine on 127.0.0.1 (tests/scripted_engine.py) -----------------

TENANTS = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"}]


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded shape: gateway, in-process eval sink, DuckDB; content kept for every request."""
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("checks_reference") / "data") as url:
        yield url


def post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    resp = httpx.post(f"{base}/v1/{path}", json=body, headers=ACME, timeout=20)
    assert resp.status_code == 200, resp.text
    return resp


def chat(base: str, content: str, **extra: Any) -> tuple[str, httpx.Response]:
    body = {"model": "sim-large", "messages": [{"role": "user", "content": content}], **extra}
    resp = post(base, "chat/completions", body)
    return resp.headers["x-trace-id"], resp


def story(base: str, trace: str) -> dict[str, Any]:
    """The request's story once its eval task is written: its check rows, or its kept content when
    no check applies (a failed request with no text and no PII hit gets no check row at all). The
    content row is written just before the scores, so content with text means: wait for the rows."""
    def get() -> dict[str, Any] | None:
        got = httpx.get(f"{base}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        if got.status_code != 200:
            return None
        body = got.json()
        if any(e["evaluator"] == "checks" for e in body.get("evaluations", [])):
            return body
        content = body.get("content") or []
        no_check_applies = content and not any(
            c.get("completion_text") is not None or "pii_completion" in str(c.get("guardrail_hits") or "") for c in content)
        return body if no_check_applies else None

    return wait_for(get, what=f"check rows of {trace}")


def rows_of(base: str, trace: str, evaluator: str = "checks") -> dict[str, dict[str, Any]]:
    return {e["dimension"]: e for e in story(base, trace)["evaluations"] if e["evaluator"] == evaluator}


def brief(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Any, Any]]:
    return {d: (r.get("label"), r.get("score"), r.get("explanation")) for d, r in rows.items()}


def stream_chat(*pieces: tuple[int, str | None, str | None]) -> list[bytes]:
    """Chat chunks from (choice index, text, finish_reason) triples."""
    out = []
    for index, text, finish in pieces:
        delta = {} if text is None else {"content": text}
        out.append(_chunk([{"index": index, "delta": delta, "finish_reason": finish}]))
    return out


def stream_completions(*pieces: tuple[int, str, str | None]) -> list[bytes]:
    """Legacy /v1/completions chunks from (choice index, text, finish_reason) triples."""
    return [_chunk([{"index": index, "text": text, "finish_reason": finish}], obj="text_completion")
            for index, text, finish in pieces]


# ---- truncated: the finish reason of the text that is checked ---------------------------------------

@pytest.mark.parametrize("api", ["chat", "completions"])
def test_n_choices_stream_truncated_judges_choice_0_by_its_own_finish_reason(
        gateway: str, engine: ScriptedEngine, api: str) -> None:
    """Spec (docs/checks.md): the checks judge "the completion", which is choice 0's text;
    ``truncated`` fails when *its* ``finish_reason`` is ``length``. With ``n=2`` streamed, choice 0
    ends with ``stop`` (a complete answer) and choice 1, finishing later, with ``length``. The task
    carries the record's finish_reason, which is the *last* one the stream reported (choice 1's),
    so choice 0's complete answer is scored ``truncated`` 0.0 (and the reverse order hides a cut
    choice 0). Chat and legacy completions alike."""
    name = f"n2{api}"
    if api == "chat":
        events = stream_chat((0, "The capital of France is Paris.", None), (1, "The capital of", None),
                             (0, None, "stop"), (1, None, "length"))
        engine.replies[name] = Scripted(events=events)
        trace, _ = chat(gateway, f"Capital of France? case:{name};", stream=True, n=2)
    else:
        events = stream_completions((0, "The capital of France is Paris.", None), (1, "The capital of", None),
                                    (0, "", "stop"), (1, "", "length"))
        engine.replies[name] = Scripted(events=events)
        resp = post(gateway, "completions", {"model": "sim-large", "prompt": f"Capital of France? case:{name};",
                                             "stream": True, "n": 2})
        trace = resp.headers["x-trace-id"]
    rows = rows_of(gateway, trace)
    assert rows["truncated"]["label"] == "pass", brief(rows)


# ---- invalid_json: what JSON mode asks of an answer -------------------------------------------------

JSON_TOOLS = [{"type": "function", "function": {"name": "get_rate", "parameters": {
    "type": "object", "properties": {"currency": {"type": "string"}}}}}]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_call_turn_in_json_mode_is_not_invalid_json(gateway: str, engine: ScriptedEngine, stream: bool) -> None:
    """Spec (docs/checks.md): ``invalid_json`` fails when the raw *completion* asked for as JSON does
    not parse. An agent that sets ``response_format: json_object`` and offers tools gets, on a
    tool-calling turn, ``content: null`` plus ``tool_calls`` whose arguments are valid JSON: there
    is no JSON answer to check yet. The tool call is read back as the text ``get_rate({...})``
    and that text is fed to the JSON check, so every tool-calling turn of a JSON-mode agent is
    scored ``invalid_json`` 0.0 ("does not parse")."""
    name = f"jsontool{int(stream)}"
    call = {"id": "call_1", "type": "function", "function": {"name": "get_rate", "arguments": '{"currency": "EUR"}'}}
    if stream:
        engine.replies[name] = Scripted(events=[
            _chunk([{"index": 0, "delta": {"role": "assistant", "content": None,
                                           "tool_calls": [{"index": 0, **call, "function": {"name": "get_rate",
                                                                                            "arguments": ""}}]},
                     "finish_reason": None}]),
            _chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                "arguments": '{"currency": "EUR"}'}}]}, "finish_reason": None}]),
            _chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
        ])
    else:
        engine.replies[name] = Scripted(body=_chat_reply([_message(None, "tool_calls", tool_calls=[call])]))
    trace, _ = chat(gateway, f"What is the EUR rate? Answer in JSON. case:{name};", stream=stream,
                    response_format={"type": "json_object"}, tools=JSON_TOOLS)
    rows = rows_of(gateway, trace)
    assert rows.get("invalid_json", {}).get("label") != "fail", brief(rows)


# ---- streams that fail mid-way -----------------------------------------------------------------------

ENGINE_ERROR = orjson.dumps({"error": {"message": "CUDA error: an illegal memory access", "type": "server_error"}})


@pytest.mark.parametrize("how", ["error_event", "connection_closed"])
def test_json_stream_cut_by_an_engine_failure_is_not_scored_invalid_json(
        gateway: str, engine: ScriptedEngine, how: str) -> None:
    """Spec (docs/checks.md, ``invalid_json``): "When the text was cut and does not parse, no row is
    written: the cut may be what broke it ... one fault gives one failure, not two". A JSON-mode
    stream that the engine breaks off mid-answer (an in-band error event, or the connection closed
    with no finish_reason and no [DONE]) is recorded as an error by the gateway
    (``upstream_stream_error`` / ``upstream_incomplete_stream``, sampled as ``error``), yet its
    status stays 200, so the eval worker treats it as a successful answer and scores the half JSON
    ``invalid_json`` 0.0 "does not parse": an engine crash charged to the model's quality."""
    name = f"cutjson{how}"
    events = stream_chat((0, '{"answer": "Par', None))
    if how == "error_event":
        events.append(ENGINE_ERROR)
    engine.replies[name] = Scripted(events=events, cut=True)
    trace, _ = chat(gateway, f"Capital of France, as JSON. case:{name};", stream=True,
                    response_format={"type": "json_object"})
    st = story(gateway, trace)
    assert st["record"]["error_type"] in {"upstream_stream_error", "upstream_incomplete_stream"}
    rows = {e["dimension"]: e for e in st["evaluations"] if e["evaluator"] == "checks"}
    assert rows.get("invalid_json", {}).get("label") != "fail", brief(rows)


def test_stream_failing_before_its_first_token_is_not_an_empty_answer(gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md): ``empty`` applies when "the request did not fail". An engine that
    fails in-band before producing any text (an error event after the 200 headers) is a failed
    request for the gateway (``error_type=upstream_stream_error``, ``sample_reason=error``), but the
    check looks only at the status code and fails ``empty`` with the explanation "no completion
    text on a *successful* response": engine outages show up as the model answering nothing."""
    engine.replies["err0"] = Scripted(events=[ENGINE_ERROR], cut=True)
    trace, _ = chat(gateway, "Hello? case:err0;", stream=True)
    st = story(gateway, trace)
    assert st["record"]["error_type"] == "upstream_stream_error"
    rows = {e["dimension"]: e for e in st["evaluations"] if e["evaluator"] == "checks"}
    assert rows.get("empty", {}).get("label") != "fail", brief(rows)


def test_stream_failed_midway_gets_no_reference_metrics(gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md): reference metrics run when "the request did not fail". A stream the
    engine broke off after two words is a failed request for the gateway, yet the partial text is
    scored against the reference (token F1 0.33, ROUGE-L 0.5 here) and those rows land in the
    model's ``token_f1`` / ``rouge_l`` series as if it had answered that way."""
    engine.replies["refcut"] = Scripted(events=stream_chat((0, "The capital", None)) + [ENGINE_ERROR], cut=True)
    trace, _ = chat(gateway, "Capital of France? case:refcut;", stream=True,
                    metadata={"reference": "The capital of France is Paris."})
    st = story(gateway, trace)
    assert st["record"]["error_type"] == "upstream_stream_error"
    reference_rows = {e["dimension"]: e["score"] for e in st["evaluations"] if e["evaluator"] == "reference"}
    assert reference_rows == {}, reference_rows


# ---- refusal -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "I'm sorry you're going through this, I can't imagine how stressful it must be. Here's what to do "
    "right now: freeze the card in the app, then call the number on the back to report it.",
    "Sorry to hear about the double charge, I can't imagine how annoying that is! The second charge is "
    "a pre-authorisation hold and will drop off your statement within three business days.",
])
def test_empathy_cant_imagine_is_not_a_refusal(gateway: str, engine: ScriptedEngine, text: str) -> None:
    """Spec (docs/checks.md, ``refusal``): enthusiasm and empathy idioms are guarded ("I can't wait /
    believe / stress enough / help but"). "I'm sorry ..., I can't imagine how stressful that is" is
    the customer-support sentence of every bank assistant, and it answers the question, yet the
    apology pattern ("sorry", then within the sentence "I can't" + anything not guarded) scores
    these answers as (partial) refusals."""
    name = f"empathy{len(text)}"
    engine.replies[name] = Scripted(body=_chat_reply([_message(text)]))
    trace, _ = chat(gateway, f"My card was stolen. case:{name};")
    rows = rows_of(gateway, trace)
    assert rows["refusal"]["label"] == "pass", brief(rows)
    assert check_refusal(text).label == "pass"


# ---- repetition in scripts other than the Latin one ---------------------------------------------------

@pytest.mark.parametrize("unit", [
    "ขอบคุณครับ",  # Thai: "thank you"
    "ฉันไม่แน่ใจ",  # Thai: "I am not sure"
    "ខ្ញុំមិនដឹងទេ",  # Khmer: "I don't know"
    "ကျေးဇူးတင်ပါတယ်",  # Burmese: "thank you"
])
def test_loop_in_a_script_without_spaces_is_detected(gateway: str, engine: ScriptedEngine, unit: str) -> None:
    """Spec (docs/checks.md, ``repetition``): a degeneration loop fails; Chinese and Japanese get one
    token per character because "those scripts use no spaces, so a whole run would otherwise be one
    token and a loop inside it invisible". Thai, Khmer and Burmese use no spaces between words
    either: a model stuck repeating a phrase twelve times in a row ("ขอบคุณครับขอบคุณครับ…") is one
    single word token for the detector, so the loop passes with score 1.0. (The same phrase
    separated by spaces fails, as its English translation does.)"""
    answer = unit * 12
    name = f"loop{unit.encode().hex()[:16]}"
    engine.replies[name] = Scripted(events=stream_chat((0, answer[: len(answer) // 2], None),
                                                       (0, answer[len(answer) // 2:], "stop")))
    trace, _ = chat(gateway, f"case:{name};", stream=True)
    rows = rows_of(gateway, trace)
    assert rows["repetition"]["label"] == "fail", brief(rows)


@pytest.mark.parametrize(("text", "english"), [
    ("我不确定。我不确定。我不确定。", "I am not sure. I am not sure. I am not sure."),
    ("分かりません。分かりません。分かりません。", "I don't know. I don't know. I don't know."),
    ("मुझे नहीं पता। मुझे नहीं पता। मुझे नहीं पता।", "I don't know. I don't know. I don't know."),
    ("هل أنت متأكد؟ هل أنت متأكد؟ هل أنت متأكد؟", "Are you sure? Are you sure? Are you sure?"),
    ("我不确定！我不确定！我不确定！我不确定！", "I am not sure! I am not sure! I am not sure! I am not sure!"),
])
def test_sentence_loop_ending_in_a_native_full_stop_is_a_loop(text: str, english: str) -> None:
    """Spec (docs/checks.md, ``repetition``): a repeated *sentence* is a loop from three repeats ("I
    am. I am. I am."). Sentences are recognised only by the ASCII ``.``, ``!``, ``?``, so the same
    loop ending in the full stop of its script (Chinese/Japanese 。 and ！, Devanagari ।, Arabic ؟)
    is treated as a "short" unit that needs five repeats, and three or four copies of a sentence pass
    in those languages while their English translation fails."""
    assert check_repetition(english).label == "fail"
    out = check_repetition(text)
    assert out.label == "fail", out


# ---- reference metrics against independent implementations --------------------------------------------

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
ROUGE_TOKEN = re.compile(rf"[{CJK}]|(?:[^\W{CJK}]|[{MARKS}])+")


def squad_tokens(text: str) -> list[str]:
    """SQuAD's normalize_answer with the documented Unicode extensions."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in text if c not in string.punctuation and not unicodedata.category(c).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = re.sub(f"([{CJK}])", r" \1 ", text)
    return text.split()


def squad_f1(prediction: str, reference: str) -> float:
    pred, gold = squad_tokens(prediction), squad_tokens(reference)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def lcs_rouge_l(prediction: str, reference: str) -> float:
    """Lin (2004) sentence-level ROUGE-L F, beta = 1, classic O(n*m) LCS table, 4,096-token cap."""
    a = ROUGE_TOKEN.findall(unicodedata.normalize("NFKC", prediction).casefold())[:4096]
    b = ROUGE_TOKEN.findall(unicodedata.normalize("NFKC", reference).casefold())[:4096]
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


TOPICS = ("inflation", "bonds", "equities", "liquidity", "duration", "credit", "spreads", "yields", "hedging",
          "volatility", "dividends", "leverage", "collateral", "custody", "settlement", "clearing", "margin",
          "futures", "options", "swaps")


def test_reference_metrics_score_the_whole_answer_not_its_first_2000_characters(
        gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md): token F1 and ROUGE-L compare *the completion* with the reference
    (ROUGE-L even caps each side at 4,096 tokens "for safety", which says long answers are meant to
    be scored whole). The metrics run in the eval worker on the masked text, which the gateway has
    already cut to 2,000 characters: for a verbose answer (a correct first sentence, then ~4,000
    characters of padding) precision is computed over the first 2,000 characters only, so both scores
    come out about twice as high as for the answer the client actually received, which rewards
    verbosity (the bias the issue asks to counter). The gateway already runs ``invalid_json`` on the
    whole raw answer for the same reason (``json_check``); the reference metrics get no such care."""
    reference = "Short-dated government bonds carry less interest rate risk than long-dated ones."
    padding = " ".join(f"Consider also {TOPICS[i % len(TOPICS)]} in scenario {i} of the review."
                       for i in range(80))
    answer = reference + " " + padding
    assert len(answer) > 4000
    engine.replies["verbose"] = Scripted(body=_chat_reply([_message(answer)]))
    trace, resp = chat(gateway, "Which bonds carry less rate risk? case:verbose;", metadata={"reference": reference})
    assert resp.json()["choices"][0]["message"]["content"] == answer  # what the client received

    def rows() -> dict[str, float] | None:
        got = httpx.get(f"{gateway}/api/v1/requests/{trace}", headers=ADMIN, timeout=10).json()
        found = {e["dimension"]: e["score"] for e in got.get("evaluations", []) if e["evaluator"] == "reference"}
        return found or None

    scores = wait_for(rows, what="reference rows")
    expected = {"token_f1": squad_f1(answer, reference), "rouge_l": lcs_rouge_l(answer, reference)}
    assert scores == pytest.approx(expected, abs=1e-4), (scores, expected)
