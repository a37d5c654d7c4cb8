"""Privacy audit: PII masking before content leaves the gateway's trust boundary, on text as users
and models really write it.

Real components: the gateway served by uvicorn on 127.0.0.1 in front of a scripted
OpenAI-compatible engine (a real HTTP server on 127.0.0.1), the in-process eval sink and the
embedded DuckDB store, read back through the request's story (``GET /api/v1/requests/{trace}``,
its ``content``: the masked text the store keeps), and the Presidio masker itself.

The gateway's own guardrail screen (``screen.py``) is the reference in several tests: it reads the
same text and says "this is a card" (``pii_prompt:CARD_NUMBER``), so the request is force-sampled
*because* it holds a card, and the masker then keeps that very card in the clear.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from infersight.evaluation.pii import default_masker
from infersight.evaluation.screen import screen
from tests.e2e.test_evaluation import wait_for
from tests.scripted_engine import ScriptedEngine, chat_reply, embedded_gateway, engine, message  # noqa: F401 (engine: the fixture)

ADMIN = {"authorization": "Bearer sk-admin-test"}
KEEPS_ALL = {"authorization": "Bearer sk-acme-test"}  # content: all
SAMPLED = {"authorization": "Bearer sk-initech-test"}  # content: sampled, random rate 0

TENANTS = [
    {"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"},
    {"id": "initech", "api_keys": ["sk-initech-test"], "sample_rate": 0.0, "content": "sampled"},
]

CARD = "4111111111111111"  # Visa test number: Luhn-valid, Visa range and length
CARD2 = "5555555555554444"  # Mastercard test number
CPF = "52998224725"  # valid check digits


# ---- a scripted OpenAI-compatible engine on 127.0.0.1 (tests/scripted_engine.py) --------------------

def _reply(choices: list[dict[str, Any]]) -> dict[str, Any]:
    return chat_reply([message(c["message"].get("content"), c.get("finish", "stop"), i,
                               **{k: v for k, v in c["message"].items() if k != "content"})
                       for i, c in enumerate(choices)])


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("pii_privacy") / "data") as url:
        yield url


def chat(base: str, messages: list[dict[str, Any]], headers: dict[str, str] = KEEPS_ALL, **extra: Any) -> str:
    body = {"model": "sim-large", "messages": messages, **extra}
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=20)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-trace-id"]


def kept_content(base: str, trace: str) -> dict[str, Any]:
    """The ``request_content`` row of a request (what the store keeps), once it is written."""
    def row() -> dict[str, Any] | None:
        got = httpx.get(f"{base}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        if got.status_code != 200 or not got.json()["content"]:
            return None
        return got.json()["content"][0]

    return wait_for(row, what=f"the kept content of {trace}")


def record_of(base: str, trace: str) -> dict[str, Any]:
    def rec() -> dict[str, Any] | None:
        got = httpx.get(f"{base}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        return got.json()["record"] if got.status_code == 200 else None

    return wait_for(rec, what=f"the record of {trace}")


# ---- masking before the store: the shapes real prompts and answers take ------------------------------

def test_card_and_cpf_columns_of_a_pasted_csv_are_masked_before_the_store(gateway: str) -> None:
    """Spec (docs/pii.md, docs/evaluation.md): cards (Luhn + issuer) and CPFs (check digits) are
    masked before the store sees the prompt. Users paste spreadsheets as CSV; the bare-number
    patterns of ``CardNumberRecognizer``/``CpfRecognizer`` refuse a run preceded by ``,`` or
    followed by ``,<digit>`` (lookarounds ``(?<![\\w.,-])`` / ``(?![.,-]\\d)``), so every card and
    CPF in a CSV column is kept raw in ``request_content``, while the gateway's own screen reports
    ``pii_prompt:CARD_NUMBER`` and ``pii_prompt:CPF`` for the same text."""
    sheet = (f"Reconcile these customers:\nname,card,cpf,amount\nAna Silva,{CARD},{CPF},120.50\n"
             f"Bob Lee,{CARD2},11144477735,99.90")
    trace = chat(gateway, [{"role": "user", "content": sheet}])
    row = kept_content(gateway, trace)
    hits = (row["guardrail_hits"] or "").split(",")
    assert "pii_prompt:CARD_NUMBER" in hits and "pii_prompt:CPF" in hits  # the screen saw them ...
    for value in (CARD, CARD2, CPF, "11144477735"):
        assert value not in row["prompt_text"], row["prompt_text"]  # ... the store must not keep them


def test_card_on_its_own_line_in_tool_call_arguments_is_masked(gateway: str, engine: ScriptedEngine) -> None:
    """Spec (docs/checks.md): tool-call arguments are part of the completion, "screened, masked and
    counted by ``pii_leak`` like any other text". Arguments are a JSON document, so a multi-line
    string (an e-mail body, a note) carries ``\\n`` escapes: a card that starts a line reads
    ``...\\n4111111111111111\\n...``. The bare-card pattern refuses a run right after a word
    character, and the ``n`` of the escape is one, so the card the agent is about to send is kept
    raw in the stored completion (the screen flags ``pii_completion:CARD_NUMBER`` for it)."""
    arguments = orjson.dumps({"to": "billing", "subject": "Payment details",
                              "body": f"Hello,\nthe card on file is:\n{CARD}\nRegards"}).decode()
    engine.replies["toolcard"] = _reply([{"message": {"content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "send_email", "arguments": arguments}}]},
        "finish": "tool_calls"}])
    trace = chat(gateway, [{"role": "user", "content": "Email billing the card we have on file. case:toolcard"}],
                 tools=[{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}])
    row = kept_content(gateway, trace)
    assert "send_email" in (row["completion_text"] or "")  # the tool call is the completion
    assert "pii_completion:CARD_NUMBER" in (row["guardrail_hits"] or "").split(",")
    assert CARD not in row["completion_text"], row["completion_text"]


def test_pii_in_a_later_choice_forces_sampling(gateway: str, engine: ScriptedEngine) -> None:
    """Issue 4: always sample guardrail hits, "PII ... in the prompt or the completion". With ``n=2``
    the client receives both choices, and here the second one leaks a card number. The answer read
    back (``extract.py``) takes choice 0 only, so the screen never sees choice 1: a tenant with
    ``content: sampled`` gets no ``guardrail`` sample for an answer that handed a card to a client."""
    engine.replies["twochoices"] = _reply([
        {"message": {"content": "I can't share payment details."}},
        {"message": {"content": f"Sure, the customer's card is {CARD2}."}},
    ])
    trace = chat(gateway, [{"role": "user", "content": "What is the customer's card? case:twochoices"}],
                 headers=SAMPLED, n=2)
    record = record_of(gateway, trace)
    assert record["sampled_for_eval"] is True and record["sample_reason"] == "guardrail", record


def test_lower_case_iban_in_a_prompt_forces_sampling(gateway: str) -> None:
    """Issue 4 and docs/evaluation.md: a prompt with an IBAN (mod-97) is always sampled
    (``sample_reason=guardrail``). docs/pii.md: IBANs are typed in lower case "as people paste them
    into chat", and the masker finds them (``[IBAN]``). The gateway's screen, which decides the
    sampling, has an upper-case-only IBAN pattern, so this prompt (a valid IBAN, the one in the
    docs) is not sampled for a ``content: sampled`` tenant."""
    trace = chat(gateway, [{"role": "user", "content": "Please wire 250 EUR to iban de89 3704 0044 0532 0130 00 today."}],
                 headers=SAMPLED)
    record = record_of(gateway, trace)
    assert record["sampled_for_eval"] is True and record["sample_reason"] == "guardrail", record


# ---- the masker on text as users write it ------------------------------------------------------------

@pytest.mark.parametrize("text", [
    f"我的信用卡号是{CARD}，请帮我查一下余额",  # Chinese: no space between words and digits
    f"クレジットカード番号は{CARD}です",  # Japanese
    f"카드번호{CARD}로 결제해 주세요",  # Korean
    f"cartão nº{CARD}",  # Portuguese "número" abbreviation glued to the number
    f'{{"cards":[{CARD},{CARD2}]}}',  # compact JSON (JSON.stringify, orjson): no spaces after commas
])
def test_card_glued_to_a_letter_or_a_comma_is_masked(text: str) -> None:
    """Spec (docs/pii.md): "Pattern recognizers are language-agnostic"; a card is masked when it
    passes Luhn and an issuer range. The bare 13-19-digit pattern refuses a run preceded by any
    word character (``\\w`` is Unicode: every CJK, kana, hangul letter and ``º`` is one) or by a
    comma, so a card written the way CJK text and compact JSON write numbers is left raw, while the
    gateway's screen (``(?<![\\d-])``) flags it as ``CARD_NUMBER``. The "not inside a word" rule was
    meant for hex digests (``a4111...f``), i.e. ASCII alphanumerics on both sides."""
    assert "pii_prompt:CARD_NUMBER" in screen(text, None)  # the gateway's screen reads a card here
    out = default_masker().mask(text)
    assert CARD not in out.text and CARD2 not in out.text, out.text


def test_email_starting_an_escaped_line_keeps_the_json_escape() -> None:
    """Masked JSON must stay JSON (``test_audit_content_checks``: placeholders land inside the
    quotes). An e-mail that starts a line of a JSON string (``"Contact:\\nana@example.com"``, as in
    tool-call arguments) is matched from the ``n`` of the ``\\n`` escape, which the placeholder then
    eats: ``"Contact:\\[EMAIL]"`` is an invalid escape, so the judge and the store get an
    unparseable document (and the line break is gone)."""
    raw = orjson.dumps({"to": "support", "body": "Contact:\nana.silva@example.com"}).decode()
    out = default_masker().mask(raw)
    assert "ana.silva" not in out.text
    assert orjson.loads(out.text) == {"to": "support", "body": "Contact:\n[EMAIL]"}, out.text
