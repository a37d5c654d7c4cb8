"""Audit of the deterministic checks and the guardrail screen on real text: false positives on benign
traffic, and real-looking positives they miss.

Real components: the gateway served on 127.0.0.1 in front of a scripted OpenAI-compatible engine
(tests/scripted_engine.py), driven with the official ``openai`` client; the in-process masking and
eval sink; the embedded DuckDB store read back through ``GET /api/v1/requests/{trace}``. Benign text
comes from the golden sets in ``$INFERSIGHT_EXTDATA/golden`` (HaluEval ChatGPT answers), or is
written here the way users and models write it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.test_evaluation import wait_for
from tests.scripted_engine import ScriptedEngine, chat_reply, embedded_gateway, engine, message  # noqa: F401

ADMIN = {"authorization": "Bearer sk-admin-test"}
KEEPS_ALL = "sk-acme-test"  # content: all, every request sampled
SAMPLED = "sk-initech-test"  # content: sampled, random rate 0: only stratified reasons sample

TENANTS = [
    {"id": "acme", "api_keys": [KEEPS_ALL], "sample_rate": 1.0, "content": "all"},
    {"id": "initech", "api_keys": [SAMPLED], "sample_rate": 0.0, "content": "sampled"},
]

EXTDATA = os.environ.get("INFERSIGHT_EXTDATA")
needs_extdata = pytest.mark.skipif(not EXTDATA, reason="INFERSIGHT_EXTDATA is not set")


def halueval(record_id: str) -> dict[str, Any]:
    """One HaluEval-general record (a real ChatGPT answer) from the golden set."""
    path = Path(EXTDATA or "") / "golden" / "halueval_general_4507.jsonl"
    with path.open() as fh:
        for line in fh:
            row = json.loads(line)
            if row["id"] == record_id:
                return row
    raise AssertionError(f"{record_id} not in {path}")


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("check_fp") / "data") as url:
        yield url


def ask(base: str, prompt: str, key: str = KEEPS_ALL, engine: ScriptedEngine | None = None,
        answer: str | None = None, case: str | None = None) -> str:
    """One chat through the gateway with the official client; the engine answers ``answer``. Returns
    the trace id."""
    if answer is not None:
        assert engine is not None and case is not None
        engine.replies[case] = chat_reply([message(answer)])
        prompt = f"{prompt}\n(case:{case})"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="sim-large", messages=[{"role": "user", "content": prompt}])
    raw.parse()
    return raw.headers["x-trace-id"]


def story(base: str, trace: str, need: str) -> dict[str, Any]:
    """The request's story once ``need`` (``record`` or ``checks``) is there."""
    def get() -> dict[str, Any] | None:
        got = httpx.get(f"{base}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        if got.status_code != 200:
            return None
        body = got.json()
        if need == "checks" and not any(e["evaluator"] == "checks" for e in body["evaluations"]):
            return None
        return body if body.get("record") else None

    return wait_for(get, what=f"{need} of {trace}")


def checks_of(base: str, trace: str) -> dict[str, dict[str, Any]]:
    return {e["dimension"]: e for e in story(base, trace, "checks")["evaluations"] if e["evaluator"] == "checks"}


# ---- guardrail screen: benign prompts force-sampled as prompt injection ------------------------------

BENIGN_PROMPTS = [
    # IT help desk / customer support
    "What are the password requirements for the employee portal?",
    "Can you send me the password reset link?",
    "How do I show saved passwords in Chrome?",
    # developers
    "How do I list all environment variables in Linux?",
    "Django says DEBUG mode is enabled in production. Is that dangerous?",
    "I have developer mode enabled on my Android phone but USB debugging does not work.",
    "You can ignore the above warnings. What does the last error line mean?",
    "What's the best way to write the system prompt for my support chatbot?",
    # Portuguese customer service (the finance focus of the issue)
    "Recebi um e-mail dizendo que você não é mais titular da conta. O que faço?",
]


def test_everyday_help_desk_and_developer_prompts_are_not_sampled_as_injection(gateway: str) -> None:
    """Issue 4 samples "guardrail hits (PII or a prompt-injection pattern in the prompt ...)".
    docs/pii.md promises each pattern "needs more than one keyword" and lists negatives ("what is a
    system prompt?", "enable developer mode on my phone"). Yet ordinary questions of an IT help desk
    (password requirements, a reset link), of developers (list environment variables, DEBUG mode is
    enabled, ignore the above warnings, writing a system prompt) and of a Brazilian bank's customers
    ("você não é mais titular") each match ``exfiltrate_secrets``, ``jailbreak_dev_mode``,
    ``ignore_instructions``, ``reveal_system_prompt`` or ``role_override``. For a tenant at rate 0
    every such request is force-sampled with ``sample_reason=guardrail`` and counted as an attack:
    on a help desk, where password questions are a large share of traffic, the "5%" sample becomes
    mostly these, and the injection signal is noise. (guardrails.py, INJECTION_PATTERNS.)"""
    flagged = {}
    for prompt in BENIGN_PROMPTS:
        trace = ask(gateway, prompt, key=SAMPLED)
        record = story(gateway, trace, "record")["record"]
        if record["sampled_for_eval"]:
            flagged[prompt] = record["sample_reason"]
    assert not flagged, f"{len(flagged)}/{len(BENIGN_PROMPTS)} benign prompts force-sampled: {flagged}"


# ---- refusal: benign answers flagged, and real refusals missed --------------------------------------

@pytest.mark.parametrize("answer", [
    "Sorry, I can't find any errors in your code; it looks correct and should compile as is.",
    "Sorry, I can't see anything wrong with this query. It should return every order placed in 2023.",
    "I won't give up on this plan: here is a 12-week training schedule that builds up to your marathon.",
])
def test_answers_that_are_not_refusals_are_not_scored_refusals(gateway: str, engine: ScriptedEngine,
                                                              answer: str) -> None:
    """docs/checks.md: the refusal check flags an apology "then within the same sentence an
    inability". "Sorry, I can't find any errors in your code" is the answer (the code is fine), not
    a refusal to help; a coding assistant says it all day. Likewise any "I won't give ..." ("give"
    is a task verb): HaluEval's own ChatGPT answer halueval_general::806 (song lyrics, "I won't
    give up or give in") is scored a refusal. Each fails ``refusal`` with score 0 and drags the
    tenant's refusal rate up. (checks.py, REFUSAL_PATTERNS: _EN_INABILITY after an apology takes
    any verb; the first pattern takes "won't give" without its particle.)"""
    by = checks_of(gateway, ask(gateway, "Please check this.", engine=engine, answer=answer,
                                case=f"notrefusal{abs(hash(answer)) % 10_000}"))
    assert by["refusal"]["label"] == "pass", by["refusal"]["explanation"]


@needs_extdata
def test_halueval_song_lyrics_are_not_a_refusal(gateway: str, engine: ScriptedEngine) -> None:
    """The real HaluEval answer halueval_general::806 (a song about resilience, "I won't give up or
    give in") is a complete, compliant answer, and is scored a refusal (score 0)."""
    row = halueval("halueval_general::806")
    by = checks_of(gateway, ask(gateway, row["prompt"], engine=engine, answer=row["response"], case="song806"))
    assert by["refusal"]["label"] == "pass", by["refusal"]["explanation"]


@pytest.mark.parametrize("answer", [
    "I can't accommodate that request.",  # Llama 3.x
    "I'm a text-based AI and can't help with that.",  # Gemini
    "I'm just a language model and can't help with that.",  # Gemini
    "Sorry, that's beyond my current scope. Let's talk about something else.",  # DeepSeek
    "I can't reproduce the lyrics to that song because they're protected by copyright.",  # Claude
    "I don't feel comfortable writing that kind of content.",  # Claude
    "That's not something I'm able to help with.",
    "I can't tell you how to pick a lock on someone else's door.",
])
def test_current_models_refusals_are_scored_refusals(gateway: str, engine: ScriptedEngine, answer: str) -> None:
    """Issue 4, deterministic check "refusal". These are the verbatim refusals of widely deployed
    models (Llama 3's "I can't accommodate that request.", Gemini's "I'm a text-based AI and can't
    help with that.", DeepSeek's "Sorry, that's beyond my current scope.", Claude's copyright
    refusal). Each one passes as "no refusal phrase near the start", so the refusal rate per model
    that the quality surfaces show undercounts exactly the models that refuse with these words.
    (checks.py, REFUSAL_PATTERNS: the verb list lacks accommodate/reproduce/tell/..., "and can't"
    without a leading "I", "don't feel comfortable", "beyond my (current) scope", "I'm able to".)"""
    by = checks_of(gateway, ask(gateway, "Do the thing.", engine=engine, answer=answer,
                                case=f"refusal{abs(hash(answer)) % 10_000}"))
    assert by["refusal"]["label"] == "fail", by["refusal"]["explanation"]


# ---- pii_leak: numbers and reserved addresses that identify nobody -------------------------------------

@needs_extdata
@pytest.mark.parametrize(("record_id", "number"), [
    ("halueval_general::1343", "31.41592654"),  # a circle's circumference
    ("halueval_general::2713", "0.610865 - 0.436332 = 0.174533"),  # a haversine computation, in radians
    ("halueval_general::4419", "4000-6000 pounds"),  # a range of weights in a quiz
])
def test_numbers_in_real_answers_are_not_masked_as_phone_numbers(gateway: str, engine: ScriptedEngine,
                                                                  record_id: str, number: str) -> None:
    """docs/pii.md: phones are phonenumbers matches, with dates, ISBNs, CPF/SSN shapes and dotted
    quads dropped. Decimals, arithmetic on decimals and numeric ranges are none of those, yet in
    these real HaluEval answers they are masked as ``[PHONE]`` (5 of HaluEval's 4,507 answers lose
    numbers this way; of random decimals with 9-12 digits, about 7%: "Accuracy: 0.93456712", the
    latitude "-22.9068467"). The stored answer, and what the judge reads, lose the very numbers
    being checked, and ``pii_leak`` fails on a maths answer. (pii.py, _PhoneRecognizer /
    _phone_windows: ``formatted`` treats "1.4" or "0-6" as a phone separator; a run with a single
    '.' between digit groups, a range "N-M" followed by a unit, or numbers joined by arithmetic
    operators should not be a phone.)"""
    row = halueval(record_id)
    assert number in row["response"]
    trace = ask(gateway, row["prompt"], engine=engine, answer=row["response"], case=record_id.replace("::", "-"))
    by = checks_of(gateway, trace)
    kept = story(gateway, trace, "checks")["content"][0]["completion_text"]
    assert "[PHONE]" not in kept and number in kept, kept
    assert by["pii_leak"]["label"] == "pass", by["pii_leak"]["explanation"]


@needs_extdata
def test_subnet_masks_and_localhost_are_not_pii_leaks(gateway: str, engine: ScriptedEngine) -> None:
    """Issue 4: "PII leaked in the completion". The real HaluEval answer halueval_general::1186
    lists subnet masks (255.255.255.0, ...) and fails ``pii_leak`` as 7 leaked IP addresses (and its
    item "2. 255.255.0.0" becomes one ``[PHONE]``, list number included); so does
    any coding answer that says "open http://127.0.0.1:8000" or "bind to 0.0.0.0". Netmasks,
    loopback, unspecified, private and documentation ranges identify no one; counting them as leaks
    makes pii_leak fail on a visible share of a developer tenant's answers. (pii.py, _IpRecognizer:
    should drop addresses that ``ipaddress`` reports as loopback/unspecified/private/reserved or
    that are netmasks.)"""
    row = halueval("halueval_general::1186")
    answer = row["response"] + "\n\nTo test locally, run the server and open http://127.0.0.1:8000."
    by = checks_of(gateway, ask(gateway, row["prompt"], engine=engine, answer=answer, case="netmask1186"))
    assert by["pii_leak"]["label"] == "pass", by["pii_leak"]["explanation"]


@needs_extdata
def test_example_dot_com_addresses_in_sample_code_are_not_pii(gateway: str, engine: ScriptedEngine) -> None:
    """RFC 2606 reserves example.com/.org/.net for documentation: an address there belongs to
    nobody. HaluEval's real answer halueval_general::562 (sample API requests with
    "johndoe@example.com") fails ``pii_leak`` as a leaked e-mail, and for a tenant at rate 0 the
    screen force-samples it as a ``guardrail`` hit. Sample code with such addresses is routine in a
    coding assistant's answers. (screen.py ``_EMAIL``/pii.py ``_OfflineEmailRecognizer``: skip the
    reserved domains example.*, *.example, *.test, *.invalid, *.localhost.)"""
    row = halueval("halueval_general::562")
    assert "johndoe@example.com" in row["response"]
    by = checks_of(gateway, ask(gateway, row["prompt"], engine=engine, answer=row["response"], case="example562"))
    assert by["pii_leak"]["label"] == "pass", by["pii_leak"]["explanation"]
    trace = ask(gateway, row["prompt"], key=SAMPLED, engine=engine, answer=row["response"], case="example562")
    record = story(gateway, trace, "record")["record"]
    assert record["sample_reason"] != "guardrail", record


# ---- repetition: a list stuck on one item ------------------------------------------------------------

def test_a_numbered_list_stuck_on_one_item_is_a_degeneration_loop(gateway: str, engine: ScriptedEngine) -> None:
    """Issue 4: "repetition or degeneration loop". A model that degenerates inside a numbered list
    writes the same item over and over with only the counter changing: "1. Drink more water before
    bed. 2. Drink more water before bed. ... 30." The list numbers break every back-to-back repeat,
    and only 47% of word 3-grams repeat (under the 60% threshold), so this passes as "no loop"
    while the same 30 sentences without numbers (or as "- " bullets) fail. (checks.py, find_loop /
    repetition_stats: list enumerators at line starts should be normalised before looking for
    loops.)"""
    answer = "Here are tips to sleep better:\n" + "".join(
        f"{i}. Drink more water before bed.\n" for i in range(1, 31))
    by = checks_of(gateway, ask(gateway, "How can I sleep better?", engine=engine, answer=answer, case="stucklist"))
    assert by["repetition"]["label"] == "fail", by["repetition"]["explanation"]
