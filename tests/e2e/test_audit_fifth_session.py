"""Audit of the fifth session's changes, through a real embedded gateway and the official client.

An embedded gateway (in-process eval sink, DuckDB) keeps content for every request of its tenant
(policy ``all``, guardrail screen on), in front of a scripted OpenAI-compatible engine on
127.0.0.1; what evaluation made of each request is read from its story
(``GET /api/v1/requests/{trace}``). Covered here, and found wanting:

- the model's reasoning is screened for PII (extract.py ``reasoning_text``): streamed ``n > 1``
  choices, vLLM's duplicated ``reasoning``/``reasoning_content`` deltas, and a non-streamed
  response past the 1 MiB capture lose it;
- the phone false-positive fix (pii.py ``_not_a_phone``, "computations") drops real phone numbers
  written in Markdown bullets or italics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.scripted_engine import (  # noqa: F401 (engine: the fixture)
    Scripted, ScriptedEngine, chat_reply, chat_story, chunk, embedded_gateway, engine, message, story_checks,
    story_hits,
)

SERVER = {"host": "127.0.0.1", "port": 0, "max_body_bytes": 8 << 20}
TENANTS = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 0.0, "content": "all"}]
EMAIL = "bob.smith@acme-corp.io"
# an e-mail as a reasoning model streams it: one token per delta
EMAIL_TOKENS = ["The", " user", " is", " bob", ".smith", "@", "acme", "-corp", ".io", "."]


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("fifth") / "data",
                          evaluation={"guardrail_scan": True}, server=SERVER) as url:
        yield url


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": None}


def stop(index: int) -> bytes:
    return chunk([{"index": index, "delta": {}, "finish_reason": "stop"}])


# ---- the model's reasoning ------------------------------------------------------------------------------

def test_reasoning_of_interleaved_n2_stream_is_screened(gateway: str, engine: ScriptedEngine) -> None:
    """With ``n: 2`` a streaming engine (vLLM, SGLang) interleaves the choices' deltas. extract.py
    ``reasoning_text`` takes every ``reasoning_content`` string of the response with one regex and
    joins them in byte order, whatever their choice ``index``: choice 0's "bob.smith@acme-corp.io",
    streamed token by token, is read as "The Let user me is think bob about .smith the @ ...", no
    e-mail is left in it, and the address the client received gets no ``pii_completion:EMAIL``
    hit, no ``guardrail`` sample and no ``pii_leak`` failure (docs/checks.md: reasoning is screened,
    and with ``n > 1`` "the guardrail screen reads them too"). A single-choice stream of the same
    deltas is caught. The reasoning must be joined per choice (as ``_Accumulator`` does for the
    other choices' content)."""
    other = ["Let", " me", " think", " about", " the", " opening", " hours", " of", " the", " branch"]
    events = [chunk([delta(0, role="assistant", content="")]), chunk([delta(1, role="assistant", content="")])]
    for mine, theirs in zip(EMAIL_TOKENS, other, strict=True):
        events += [chunk([delta(0, reasoning_content=mine)]), chunk([delta(1, reasoning_content=theirs)])]
    events += [chunk([delta(0, content="Opens at 9.")]), chunk([delta(1, content="At 9am.")]), stop(0), stop(1)]
    engine.replies["rs-n2"] = Scripted(events=events)
    body = chat_story(gateway, [{"role": "user", "content": "case:rs-n2 hours?"}], stream=True, n=2)
    assert "pii_completion:EMAIL" in story_hits(body), story_hits(body)
    assert story_checks(body)["pii_leak"]["label"] == "fail"


def test_reasoning_streamed_under_both_keys_is_screened(gateway: str, engine: ScriptedEngine) -> None:
    """vLLM, from the rename of ``reasoning_content`` to ``reasoning`` (vllm PR #27752) until the old
    name's removal, sends both keys in every delta: ``DeltaMessage.handle_deprecated_reasoning_content``
    copies ``reasoning`` into ``reasoning_content``. ``reasoning_text`` takes both and joins them,
    so each token comes twice ("bob bob.smith.smith@@acmeacme..."), the e-mail the client received
    is no longer an e-mail, and it is neither a guardrail hit nor a ``pii_leak`` failure. Either key
    alone is caught. Read one of the two keys per delta (or message), not both."""
    events = [chunk([delta(0, role="assistant", content="")])]
    events += [chunk([delta(0, reasoning=p, reasoning_content=p)]) for p in EMAIL_TOKENS]
    events += [chunk([delta(0, content="Opens at 9.")]), stop(0)]
    engine.replies["rs-both"] = Scripted(events=events)
    body = chat_story(gateway, [{"role": "user", "content": "case:rs-both hours?"}], stream=True)
    assert "pii_completion:EMAIL" in story_hits(body), story_hits(body)
    assert story_checks(body)["pii_leak"]["label"] == "fail"


def test_reasoning_of_a_non_streamed_answer_past_the_capture_is_screened(gateway: str,
                                                                         engine: ScriptedEngine) -> None:
    """A non-streamed answer whose reasoning passes the 1 MiB capture (a long think, or several
    choices with ``n``) is kept as its head and tail joined by a blank line
    (hooks.py ``ResponseCapture.data``), so the one reasoning string now holds two raw newlines.
    ``reasoning_text`` matches it across the join, orjson refuses the control characters, the
    lenient fallback gives no string either, and the whole reasoning is dropped: an e-mail in the
    captured tail, which the client received, makes no hit (the same answer streamed is caught).
    The cut should be decoded leniently (escape the join, or screen each side of it)."""
    filler = "Let me think about this carefully once more. " * 40000  # ~1.8 MB
    engine.replies["rs-bigns"] = chat_reply([message("Opens at 9.", reasoning_content=filler + f" Mail {EMAIL}.")])
    body = chat_story(gateway, [{"role": "user", "content": "case:rs-bigns hours?"}])
    assert "pii_completion:EMAIL" in story_hits(body), story_hits(body)


# ---- false-positive fixes must keep real PII ------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Emergency contacts:\n* +1 415-555-0132 (Maria)\n* +1 415-555-0177 (John)",
    "Call us at *(415) 555-0132* for help.",
], ids=["bullet-list", "italic"])
def test_a_phone_in_markdown_bullets_or_italics_is_masked(gateway: str, engine: ScriptedEngine, text: str) -> None:
    """The "computations" rule of the phone recognizer (pii.py ``_not_a_phone``:
    ``_OPERATOR_BEFORE_RE`` / ``_OPERATOR_AFTER_RE``) reads a ``*`` standing apart next to the number
    as a multiplication. Markdown's ``*`` bullet ("* +1 415-555-0132") and italics
    ("*(415) 555-0132*") are exactly that, and models answer in Markdown: the phone numbers are no
    longer masked (they were before 01cf6c1), the raw numbers are stored in ``request_content`` and
    shown to the judge, and ``pii_leak`` passes. The same holds for a user's prompt. Bold (``**``) was
    excepted; a ``*`` at a line start followed by a space (a bullet) or hugging the number (italics)
    must be too, e.g. require the operator to have an operand on its other side."""
    case = "fp-phone-" + ("bullets" if text.startswith("Emergency") else "italic")
    engine.replies[case] = chat_reply([message(text)])
    body = chat_story(gateway, [{"role": "user", "content": f"case:{case} help"}])
    stored = body["content"][0]["completion_text"]
    assert "555-0132" not in stored, stored
    assert "pii_completion:PHONE" in story_hits(body), story_hits(body)
    assert story_checks(body)["pii_leak"]["label"] == "fail"
