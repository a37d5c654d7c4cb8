"""Audit: robustness of evaluation's pure text paths against arbitrary input.

Found with seeded random generators (lone surrogates, control and RTL/zero-width characters, emoji ZWJ
sequences, PII atoms glued with separators, garbled SSE bytes and framings, arbitrary request bodies and
judge replies, huge and deeply nested JSON). Only the failing cases are kept here, each as the smallest
input that shows it, hard-coded so the tests are deterministic. Each docstring tells the defect as it
was found (all fixed since).
"""

from __future__ import annotations

import time

import orjson
import pytest

from infersight.evaluation.extract import extract
from infersight.evaluation.judge_parse import ReplyError, extract_scores, parse_json_object
from infersight.evaluation.pii import default_masker
from infersight.evaluation.screen import pii_kinds
from infersight.evaluation.tap import MAX_CAPTURE_BYTES
from infersight.gateway.hooks import ResponseCapture
from infersight.gateway.proxy import _parse_body
from infersight.gateway.tokens import latest_turn_text, prompt_hash, prompt_text, untrusted_prompt_text

DIMS = ("relevance", "coherence")


def _judge(reply: str) -> None:
    """What ``LLMJudge.score`` does with a reply: only ``ReplyError`` is handled (re-ask)."""
    extract_scores(parse_json_object(reply).data, DIMS)


# ---- judge_parse -------------------------------------------------------------------------------------


def test_a_judge_reply_nested_a_thousand_deep_is_a_reply_error() -> None:
    """A judge reply stuck in a bracket loop (``{"relevance": [[[[...``, about 1,000 deep, well under
    MAX_REPAIR_CHARS) makes ``parse_json_object`` raise a bare ``RecursionError``: ``_last_object``
    calls ``json.JSONDecoder.raw_decode`` and catches only ``ValueError``. ``LLMJudge._ask`` handles
    ``ReplyError`` alone, so instead of a corrective re-ask the error escapes ``score()`` as something
    that is no ``JudgeError`` (the judge tokens already spent are not recorded with a verdict)."""
    reply = '{"relevance": ' + "[" * 1000 + "}"
    with pytest.raises(ReplyError):  # the judge re-asks
        _judge(reply)


def test_a_judge_score_beyond_float_range_is_a_reply_error() -> None:
    """A score written as an integer of 310 digits (a degenerate "1000...0") parses as a Python int
    (orjson refuses it, ``_last_object``'s ``json`` takes it), then ``coerce_score`` does
    ``float(value)`` and raises ``OverflowError`` instead of returning None (re-ask) or clamping to 5.
    Same consequence as above: the exception is not ``ReplyError`` and escapes the judge."""
    reply = '{"relevance": 1' + "0" * 309 + ', "coherence": 4}'
    with pytest.raises(ReplyError):  # the judge re-asks
        _judge(reply)


def test_a_judge_score_string_of_digits_parses_in_linear_time() -> None:
    """``coerce_score`` runs ``_FRACTION`` = ``(-?\\d+(?:\\.\\d+)?)\\s*\\(?\\s*(?:/|out of)...`` over a
    score string. On a long digit run with no ``/`` the greedy ``\\d+`` backtracks at every start
    position: O(n^2). An 8 kB reply (a judge repeating one digit, or a judge endpoint that ignores
    ``max_tokens``) takes seconds, and the parse runs on the judge worker's event loop."""
    reply = '{"relevance": "' + "1" * 8000 + '", "coherence": 4}'
    started = time.perf_counter()
    try:
        _judge(reply)
    except ReplyError:
        pass
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"parsing an 8 kB judge reply took {elapsed:.1f} s (ReDoS in judge_parse._FRACTION)"


# ---- PII masking and the guardrail screen --------------------------------------------------------------


def test_a_card_number_followed_by_its_expiry_is_masked() -> None:
    """"Card: 4111 1111 1111 1111 09/27" is how people paste a card. The grouped card pattern's optional
    extra group (``(?:\\1\\d{1,3})?``) swallows the " 09" of the expiry date, the 18-digit candidate fails
    Luhn and the issuer check, and the regex never retries the 16 digits alone: the card goes to the
    store and to the judge unmasked. Masking the masked text again changes nothing either."""
    masker = default_masker()
    out = masker.mask("Card: 4111 1111 1111 1111 09/27 CVV 123", max_chars=2000)
    assert "4111 1111 1111 1111" not in out.text, out.text
    assert out.entities.get("CARD_NUMBER") == 1


def test_the_screen_finds_a_card_number_followed_by_its_expiry() -> None:
    """The gateway's screen has the same blind spot: ``_CARD`` = ``\\d(?:[ -]?\\d){12,18}`` takes the
    expiry's digits too (18 digits), Luhn fails, and no shorter match is tried. So the request is not
    sampled as a guardrail hit (``pii_prompt:CARD_NUMBER``), although the prompt carries a card."""
    assert "CARD_NUMBER" in pii_kinds("Card: 4111 1111 1111 1111 09/27 CVV 123")


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        pytest.param("write to sales/ana@acme.com", "ana@acme.com", id="word-slash-email"),
        pytest.param("ana@acme.com/bob@acme.com", "bob@acme.com", id="two-emails-slash"),
    ],
)
def test_an_email_after_a_slash_is_masked(text: str, leaked: str) -> None:
    """Presidio's e-mail pattern allows ``/`` in the local part, so it matches "sales/ana@acme.com"
    whole; ``_OfflineEmailRecognizer.validate_result`` then runs tldextract on the whole match, which
    reads "sales" as the host and "/ana@acme.com" as a path (fqdn ""), and drops it. The address is
    stored and sent to the judge in clear, while the screen counts it (``pii_kinds`` says EMAIL), so
    the record claims PII that masking did not remove. Masking the output again finds it."""
    masker = default_masker()
    assert pii_kinds(text) == ["EMAIL"]
    out = masker.mask(text, max_chars=2000)
    assert leaked not in out.text, out.text


# ---- reading the answer back (capture and extract) -----------------------------------------------------


def test_an_sse_event_whose_data_spans_several_lines_is_read() -> None:
    """SSE lets one event carry its data on several ``data:`` lines (joined with "\\n"; servers built on
    sse-starlette do so for any payload with a newline, e.g. indented JSON). The gateway's own relay
    reads them (``sse.event_data`` joins the lines) and so does the openai client, but
    ``extract._feed_all`` parses each line alone: the event is lost, and the evaluated answer is
    " world" (or None, which fails ``empty`` on a successful answer)."""
    raw = (
        b'data: {"choices":[{"index":0,\n'
        b'data: "delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":" world"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    assert extract(raw, stream=True, api="chat").text == "Hello world"


def test_a_capture_cut_is_flagged_whatever_the_chunk_boundaries() -> None:
    """``ResponseCapture`` promises that what it cuts from the middle "is flagged, never silently"
    (``overflowed`` becomes ``EvalTask.content_truncated`` and ``raw_json_check``'s ``cut``). But
    ``_drop`` searches each dropped piece on its own for answer bytes (``"content":"x``). A stream of
    same-size events (a model repeating one token), one whole event per read, over the real 1 MiB
    limit: every event is cut at the same offset, inside ``"content":"``, so no piece ever matches and
    ~250 kB of answer vanish with ``overflowed`` False. The flag depends on how the bytes were chunked."""
    event = b"data: " + orjson.dumps({
        "id": "chatcmpl-aaaaaaaaaaaaaa",
        "choices": [{"index": 0, "delta": {"content": " ha"}, "finish_reason": None}],
    }) + b"\n\n"
    capture = ResponseCapture(MAX_CAPTURE_BYTES, "chat")
    capture.sse = True
    for _ in range(MAX_CAPTURE_BYTES * 5 // 4 // len(event)):
        capture.add(event)
    sent = (MAX_CAPTURE_BYTES * 5 // 4 // len(event)) * len(event)
    assert sent - len(capture.data()) > 200_000  # the middle of the answer was dropped
    assert capture.overflowed, "answer bytes were cut from the middle of the capture without being flagged"


# ---- request bodies (gateway/tokens.py) ----------------------------------------------------------------


@pytest.mark.parametrize("fn", [latest_turn_text, untrusted_prompt_text], ids=lambda f: f.__name__)
def test_a_role_that_is_not_a_string_is_an_untrusted_message(fn) -> None:  # type: ignore[no-untyped-def]
    """``{"role": [], "content": "hi"}`` passes the gateway's body validation (only a non-empty
    ``messages`` array is required). ``m.get("role") not in OPERATOR_ROLES`` then raises
    ``TypeError: unhashable type: 'list'`` (``tap._screened_prompt`` has the same ``in``). The tap's
    ``finish`` fails, so the request (which the engine answers with a 400) loses its evaluation and
    is recorded as not sampled, although errors are always to be sampled."""
    body = {"model": "m", "messages": [{"role": [], "content": "hi"}]}
    assert fn(body, "chat") == "hi"


def test_a_content_part_nested_a_thousand_deep_is_hashed() -> None:
    """A content part nested 1,000 deep is accepted by the gateway's parser (orjson allows 1,023
    levels), but ``prompt_hash`` cannot encode it with orjson (254 levels), falls back to ``repr``,
    and ``repr`` raises ``RecursionError``, which the ``except (TypeError, JSONEncodeError)`` does
    not catch. ``InferenceProxy._finish`` calls it unguarded, from ``flight.finish()``, which runs
    before the answer (non-streamed) or the stream's last bytes are sent: the engine's answer never
    reaches the client, and the request's record is never published (no metrics, no bus record)."""
    raw = b'{"model": "m", "messages": [{"role": "user", "content": [' + b"[" * 1000 + b"]" * 1000 + b"]}]}"
    body = _parse_body(raw, "chat")  # accepted: the request is forwarded to the engine
    digest = prompt_hash(body, "chat", prompt_text(body, "chat"), b"k" * 32)
    assert len(digest) == 64
