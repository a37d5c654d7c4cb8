"""Audit of content handling (PII masking, the content policy) and the deterministic evaluators.

Real components throughout: the gateway served by uvicorn on 127.0.0.1 in front of a scripted
OpenAI-compatible engine that is itself a real HTTP server on 127.0.0.1, the embedded DuckDB store
read back through the query API, a real redis-server for the scale-out eval stream, and the
Presidio masker. The deterministic checks and reference metrics are pure functions and are called
directly, against reference implementations written here.

Every test names in its docstring what the spec (docs/evaluation.md, docs/pii.md, docs/checks.md)
expects and what the code did instead.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from infersight.config import settings_from_dict
from infersight.evaluation.checks import check_refusal, check_repetition
from infersight.evaluation.pii import default_masker
from infersight.evaluation.reference import rouge_l
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from tests.conftest import config_dict
from tests.e2e.test_evaluation import wait_for
from tests.redis_server import RedisServer
from tests.scripted_engine import ScriptedEngine, chat_reply, embedded_gateway, engine, message  # noqa: F401 (engine: the fixture)

ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}
OPTOUT = {"authorization": "Bearer sk-optout-test"}


# ---- a scripted OpenAI-compatible engine on 127.0.0.1 (tests/scripted_engine.py) --------------------

def _message_reply(msg: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return chat_reply([message(msg.get("content"), finish_reason,
                               **{k: v for k, v in msg.items() if k != "content"})])


TENANTS = [
    {"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"},
    {"id": "optout", "api_keys": ["sk-optout-test"], "sample_rate": 1.0, "content": "none"},
]


@pytest.fixture(scope="module")
def embedded(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded shape: gateway, in-process eval sink and DuckDB; content kept for every request
    of ``acme`` (policy ``all``) and none for ``optout``. Threads, not child processes (2 vCPUs)."""
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("embedded") / "data") as url:
        yield url


@pytest.fixture(scope="module")
def scale_out(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The scale-out shape: a gateway whose records and eval tasks go to a real redis-server."""
    import redis

    tmp = tmp_path_factory.mktemp("scale_out")
    server_redis = RedisServer(tmp / "redis")
    server_redis.start()
    settings = settings_from_dict(config_dict(
        tmp / "data", engine.url, tenants=TENANTS,
        bus={"backend": "redis", "url": server_redis.url, "flush_interval_s": 0.05},
        evaluation={"child_process": False, "mask_linger_s": 0.0},
        logging={"level": "warning", "access_log": False},
    ))
    server = ThreadedServer(build_gateway(settings)).start()
    client = redis.Redis.from_url(server_redis.url)
    try:
        yield server.base_url, client
    finally:
        server.stop()
        client.close()
        server_redis.stop()


def chat(base: str, content: str, headers: dict[str, str] = ACME, **extra: Any) -> str:
    """One chat request through the gateway over HTTP; its trace id."""
    body = {"model": "sim-large", "messages": [{"role": "user", "content": content}], **extra}
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=20)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-trace-id"]


def checks_of(base: str, trace: str) -> dict[str, dict[str, Any]]:
    """The ``checks`` rows of a request's story, by dimension, once they are written."""
    def rows() -> dict[str, dict[str, Any]] | None:
        got = httpx.get(f"{base}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        if got.status_code != 200:
            return None
        found = {e["dimension"]: e for e in got.json()["evaluations"] if e["evaluator"] == "checks"}
        return found or None

    return wait_for(rows, what=f"check rows of {trace}")


# ---- masking before the trust boundary --------------------------------------------------------------

def test_cpf_written_with_only_its_check_dash_is_masked_before_the_redis_eval_stream(
        scale_out: tuple[str, Any]) -> None:
    """Spec: PII is masked before content leaves the gateway (Redis eval stream included); a CPF
    with valid check digits becomes ``[CPF]``. ``529982247-25`` (nine digits, dash, check digits) is
    a common way to write a CPF, and the gateway's own guardrail screen recognises it as a CPF
    (``pii_prompt:CPF``), yet the masker's CPF patterns only take ``ddd.ddd.ddd-dd`` or 11 bare
    digits: the raw CPF was published to Redis, where the eval workers, the store and the judge read it."""
    base, client = scale_out
    trace = chat(base, "Meu CPF é 529982247-25, pode conferir meu cadastro?")

    def published() -> dict[str, Any] | None:
        for _, fields in client.xrange("infersight:evals"):
            blob = b"".join(v for v in fields.values() if isinstance(v, bytes))
            if trace.encode() in blob:
                return {k.decode(): v for k, v in fields.items()}
        return None

    fields = wait_for(published, what="the eval task on the Redis stream")
    task = orjson.loads(next(v for v in fields.values() if trace.encode() in v))
    assert "pii_prompt:CPF" in task["guardrail_hits"]  # the gateway's screen saw a CPF ...
    assert "529982247" not in task["prompt_text"], task["prompt_text"]  # ... the masked text must not carry it


@pytest.mark.parametrize("text", [
    "card 4111\u00a01111\u00a01111\u00a01111",  # no-break spaces (text pasted from a PDF or a web page)
    "carte 4111\u202f1111\u202f1111\u202f1111",  # narrow no-break spaces (French digit grouping)
    "IBAN FR76\u00a03000\u00a06000\u00a00112\u00a03456\u00a07890\u00a0189",
    "SSN 536\u201122\u20118190",  # non-breaking hyphens (word processors)
    "card \uff14\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11 \uff11\uff11\uff11\uff11",
])
def test_unicode_separators_and_digits_do_not_hide_identifiers(text: str) -> None:
    """Spec: cards (Luhn), IBANs (mod-97) and SSNs are masked before text leaves the gateway. The
    recognizers accept only ASCII space or '-' between groups (and the guardrail screen likewise),
    so the same, valid identifiers written with a no-break space, a narrow no-break space, a
    non-breaking hyphen or full-width digits were kept in the clear. NFKC (or a 1:1 map of Unicode
    spaces/dashes/digits to ASCII) before analysis would find them."""
    out = default_masker().mask(text)
    digits = "".join(str(unicodedata.digit(c)) for c in text if c.isdigit())
    visible = "".join(str(unicodedata.digit(c)) for c in out.text if c.isdigit())
    assert len(visible) < 4, (text, out.text)
    assert digits[-4:] not in visible


# ---- the opt-out tenant -----------------------------------------------------------------------------

# ---- the checks on what engines really answer --------------------------------------------------------

@pytest.mark.parametrize(("name", "answer"), [
    ("json_cpf", '{"name": "Ana", "cpf": 52998224725}'),
    ("json_account", '{"account_number": 12345678, "bank": "Itau"}'),
    ("json_phone", '{"contact": "support", "phone": 4155550132}'),
    ("json_url", '{"source": "https://example.com/search?q=\\"rates\\""}'),
])
def test_valid_json_answer_with_pii_is_not_invalid_json(embedded: str, engine: ScriptedEngine,
                                                        name: str, answer: str) -> None:
    """Spec: ``invalid_json`` fails when the raw completion does not parse. These answers are valid
    JSON (the engine's raw text parses), but the check runs on the *masked* text: a numeric PII
    value becomes a bare ``[CPF]``/``[ACCOUNT_NUMBER]``/``[PHONE]`` token, and the URL pattern
    swallows the backslash of an escaped quote, so the masked text no longer parses and a correct
    JSON-mode answer is scored 0.0 "does not parse"."""
    assert orjson.loads(answer) is not None
    engine.replies[name] = _message_reply({"content": answer})
    trace = chat(embedded, f"Extract the fields as JSON. case:{name}", response_format={"type": "json_object"})
    rows = checks_of(embedded, trace)
    assert rows["invalid_json"]["label"] == "pass", rows["invalid_json"]["explanation"]


TOOL_CALL = {
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "send_email",
                                 "arguments": '{"to": "ana.silva@example.com", "subject": "Your invoice"}'}}],
}


def test_tool_call_answer_is_not_scored_empty(embedded: str, engine: ScriptedEngine) -> None:
    """Spec: ``empty`` fails when the model produced nothing. An assistant message that calls a tool
    (``content: null``, ``tool_calls``, ``finish_reason: tool_calls``) is a complete answer in
    OpenAI's API, but the answer read back takes only ``message.content``, so every tool-calling
    (agent) request of a ``content: all`` tenant failed ``empty`` ("no completion text")."""
    engine.replies["tool"] = _message_reply(TOOL_CALL, finish_reason="tool_calls")
    trace = chat(embedded, "Email Ana her invoice. case:tool",
                 tools=[{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}])
    rows = checks_of(embedded, trace)
    assert rows["empty"]["label"] == "pass", rows["empty"]["explanation"]


def test_pii_in_tool_call_arguments_counts_as_pii_in_the_completion(embedded: str, engine: ScriptedEngine) -> None:
    """Spec: ``pii_leak`` flags PII in the completion. A model that puts an e-mail address into a
    tool call's arguments has output that PII (the client executes it), but tool-call arguments
    are never read back, masked or screened: no ``pii_leak`` row, no ``pii_completion:EMAIL`` hit."""
    engine.replies["toolpii"] = _message_reply(TOOL_CALL, finish_reason="tool_calls")
    trace = chat(embedded, "Send the invoice. case:toolpii",
                 tools=[{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}])
    rows = checks_of(embedded, trace)
    assert "pii_leak" in rows and rows["pii_leak"]["label"] == "fail", {d: r["label"] for d, r in rows.items()}


def test_structured_output_refusal_is_scored_as_a_refusal(embedded: str, engine: ScriptedEngine) -> None:
    """Spec: the ``refusal`` check flags refusals. With structured outputs (``response_format``
    ``json_schema``), OpenAI-compatible APIs return a refusal as ``message.refusal`` with
    ``content: null``. That field is never read, so the refusal is scored as an ``empty`` answer and
    as ``invalid_json`` ("empty completion"), and ``refusal`` has no row at all."""
    engine.replies["refusal"] = _message_reply(
        {"content": None, "refusal": "I'm sorry, but I can't help with that request."})
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                      "schema": {"type": "object", "properties": {}}}}
    trace = chat(embedded, "Write malware as JSON. case:refusal", response_format=schema)
    rows = checks_of(embedded, trace)
    assert rows.get("refusal", {}).get("label") == "fail", {d: (r["label"], r["explanation"]) for d, r in rows.items()}
    assert rows["empty"]["label"] == "pass", rows["empty"]["explanation"]


# ---- deterministic evaluators -------------------------------------------------------------------------

@pytest.mark.parametrize("code", [
    "```ruby\nclass Greeter\n  def greet(names)\n    names.each do |name|\n      puts \"Hi #{name}\"\n"
    "    end\n  end\nend\n```",
    "```julia\nfunction f(xs)\n    for x in xs\n        if x > 0\n            println(x)\n        end\n"
    "    end\nend\n```",
    '<div class="page">\n  <div class="row">\n    <div class="col">\n      <div class="card">\n'
    '        <div class="card-body">\n          <p>Hello</p>\n        </div>\n      </div>\n'
    "    </div>\n  </div>\n</div>",
])
def test_nested_block_closers_in_code_are_not_degeneration_loops(code: str) -> None:
    """Spec: ``repetition`` flags degeneration loops, not code (docs/checks.md: numbers, separators
    and data repeat legitimately). Nested blocks close with the same keyword or tag on consecutive
    lines: three ``end`` in Ruby, Julia or Lua ("a word repeated 3 times in a row") and five
    ``</div>`` in ordinary HTML ("a phrase of 4 tokens repeated 5 times") both fail today, so
    well-formed code answers are labelled degenerate."""
    out = check_repetition(code)
    assert out.label == "pass", out


@pytest.mark.parametrize("text", [
    "I can't help noticing that your loop never ends: the condition is never updated. Move i += 1 inside it.",
    "I can't help wondering whether you meant the 2019 edition, so here are the answers for both editions.",
    "I can't help laughing at this one! The joke works because of the double meaning of 'bank'.",
])
def test_cant_help_plus_gerund_is_not_a_refusal(text: str) -> None:
    """Spec (docs/checks.md): "I can't help but ..." and the like are guarded: enthusiasm, not a
    refusal (the guard lists "help but", "help feeling", "help thinking"). "I can't help noticing /
    wondering / laughing" is the same idiom (can't help + -ing: cannot stop oneself), yet these
    ordinary answers are scored as full refusals (0.0)."""
    out = check_refusal(text)
    assert out.label == "pass", out


def _reference_rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (beta 1) over NFKC-casefolded words, where a word is a run of letters, digits,
    underscores *and combining marks* (a vowel sign is part of its word, as in any word count)."""
    def tokens(text: str) -> list[str]:
        out, cur = [], ""
        for ch in unicodedata.normalize("NFKC", text).casefold():
            if ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M"):
                cur += ch
            elif cur:
                out.append(cur)
                cur = ""
        return out + ([cur] if cur else [])

    a, b = tokens(pred), tokens(ref)
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


@pytest.mark.parametrize(("pred", "ref"), [
    ("दिन", "दान"),  # "day" vs "donation": different words
    ("मेरा नाम राम है", "मेरा काम आराम है"),
    ("ครับ", "คับ"),  # Thai: a vowel mark dropped
])
def test_rouge_l_keeps_combining_marks_inside_words(pred: str, ref: str) -> None:
    """Spec (docs/checks.md): ROUGE-L over Unicode word tokens, no stemming. The token pattern is
    ``\\w+``, which in Python does not match combining marks, so a Hindi or Thai word is cut at every
    vowel sign and the signs are dropped: "दिन" and "दान" both become ["द", "न"] and score ROUGE-L 1.0
    (token F1, which splits on whitespace, says 0.0). Words must keep their marks."""
    assert rouge_l(pred, ref) == pytest.approx(_reference_rouge_l(pred, ref))


def test_masked_json_with_string_pii_stays_parseable() -> None:
    """Gap kept on purpose: the masker leaves an ordinary JSON answer with string PII parseable
    (placeholders land inside the quotes), which the JSON fix above must not break."""
    out = default_masker().mask('{"email": "ana@example.com", "ip": "203.0.113.42", "note": "call +55 11 98765-4321"}')
    doc = orjson.loads(out.text)
    assert doc == {"email": "[EMAIL]", "ip": "[IP_ADDRESS]", "note": "call [PHONE]"}
