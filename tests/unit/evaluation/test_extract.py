"""Reading the answer (and its confidence) back from captured response bytes."""

from __future__ import annotations

import math

import orjson
import pytest

from infersight.evaluation.extract import extract, reasoning_text, token_entropies


def sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_chat_stream_joins_content_of_choice_zero() -> None:
    raw = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 1, "delta": {"content": "other"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    )
    got = extract(raw, stream=True, api="chat")
    assert got.text == "Hello"
    assert got.mean_entropy is None


def test_non_stream_chat_and_completions() -> None:
    chat = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]})
    assert extract(chat, stream=False, api="chat").text == "Paris."
    comp = orjson.dumps({"choices": [{"index": 0, "text": " forty-two"}]})
    assert extract(comp, stream=False, api="completions").text == " forty-two"
    assert extract(b"not json", stream=False, api="chat").text is None
    assert extract(b"", stream=True, api="chat").text is None


def test_entropy_from_top_logprobs_renormalised() -> None:
    p = [0.5, 0.25, 0.25]
    item = {"token": "a", "logprob": math.log(0.5), "top_logprobs": [{"token": t, "logprob": math.log(x)}
                                                                        for t, x in zip("abc", p)]}
    (h,) = token_entropies({"content": [item]})
    assert h == pytest.approx(-sum(x * math.log(x) for x in p))
    # only the own logprob: surprisal stands in
    (s,) = token_entropies({"content": [{"token": "a", "logprob": -2.0, "top_logprobs": []}]})
    assert s == pytest.approx(2.0)
    raw = sse({"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [item, item]}}]})
    assert extract(raw, stream=True, api="chat").mean_entropy == pytest.approx(h)


def test_completions_logprobs_shape() -> None:
    lp = {"tokens": ["x"], "token_logprobs": [-0.1], "top_logprobs": [{"x": math.log(0.9), "y": math.log(0.1)}]}
    (h,) = token_entropies(lp)
    assert h == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def _general(raw: bytes) -> str | None:
    """The reference: every event parsed with orjson (the general path)."""
    from infersight.evaluation.extract import _Accumulator

    acc = _Accumulator("chat")
    for line in raw.splitlines():
        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
            try:
                acc.feed(orjson.loads(line[5:].strip()), delta=True)
            except orjson.JSONDecodeError:
                pass
    return acc.result().text


@pytest.mark.parametrize("content", ['plain', 'quotes "x" and \\\\ backslash', "unicode é ✓ \\u00e9", "new\nline",
                                     'tricky "content":"no" inside', ""])
def test_fast_path_matches_the_general_parse(content: str) -> None:
    raw = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
              {"choices": [{"index": 0, "delta": {"reasoning_content": "hidden"}}]},
              {"choices": [{"index": 0, "delta": {"content": content}}]},
              {"choices": [{"index": 0, "delta": {"content": " end"}, "finish_reason": "stop"}]})
    assert extract(raw, stream=True, api="chat").text == _general(raw) == content + " end"


def test_recorded_provider_streams_read_back_identically() -> None:
    import json
    import os
    from pathlib import Path

    extdata = os.environ.get("INFERSIGHT_EXTDATA")
    if not extdata:
        pytest.skip("INFERSIGHT_EXTDATA is not set (CI points it at ../shared/extdata)")
    root = Path(extdata) / "streams"
    entries = [json.loads(x) for x in (root / "index.jsonl").read_text().splitlines() if x.strip()]
    checked = 0
    for entry in entries:
        if entry["kind"] != "sse" or entry["event_names"]:
            continue
        files = [p for p in (root / (entry["file"] + ".sse"), (root / entry["file"]).with_suffix(".sse")) if p.exists()]
        if not files:
            continue
        raw = files[0].read_bytes()
        assert extract(raw, stream=True, api="chat").text == _general(raw), entry["file"]
        checked += 1
    assert checked >= 10


def test_the_fast_path_reads_only_choice_zero_and_leaves_logprobs_to_the_general_path() -> None:
    two = sse({"choices": [{"index": 0, "delta": {"content": "first"}}]},
              {"choices": [{"index": 1, "delta": {"content": "second"}}]},
              {"choices": [{"index": 0, "delta": {"content": " answer"}}]})
    assert extract(two, stream=True, api="chat").text == "first answer"
    with_logprobs = sse({"choices": [{"index": 0, "delta": {"content": "Paris"}, "logprobs": {"content": [
        {"token": "Paris", "logprob": -0.1, "top_logprobs": [{"token": "Paris", "logprob": -0.1},
                                                              {"token": "Lyon", "logprob": -2.4}]}]}}]})
    got = extract(with_logprobs, stream=True, api="chat")
    assert got.text == "Paris" and got.mean_entropy is not None and got.mean_entropy > 0


def test_a_plain_engine_stream_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's stream (OpenAI's shape: ``"logprobs":null``, a usage chunk) never reaches the
    per-event parse: the event loop pays one regex pass, not a JSON parse per token."""
    import infersight.evaluation.extract as module

    def general_path(*_: object) -> None:
        raise AssertionError("took the general path")

    monkeypatch.setattr(module, "_Accumulator", general_path)
    raw = sse({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "logprobs": None, "finish_reason": None}]},
              {"id": "c", "choices": [{"index": 0, "delta": {"content": "Paris"}, "logprobs": None,
                                       "finish_reason": None}]},
              {"id": "c", "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
              {"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    assert extract(raw, stream=True, api="chat").text == "Paris"


def test_impossible_logprobs_are_clamped_not_an_overflow() -> None:
    """A log probability above 0 (or infinite) is an engine bug; exp() of 1000 raised OverflowError,
    which failed the evaluation tap. Clamped to 0 (probability 1), the token reads as certain."""
    (h,) = token_entropies({"content": [{"token": "a", "logprob": 1000.0,
                                         "top_logprobs": [{"token": "a", "logprob": 1000.0},
                                                          {"token": "b", "logprob": -math.inf}]}]})
    assert h == pytest.approx(0.0)
    (s,) = token_entropies({"content": [{"token": "a", "logprob": 5.0, "top_logprobs": []}]})
    assert s == 0.0
    assert token_entropies({"content": [{"token": "a", "logprob": math.inf, "top_logprobs": []}]}) == []


def test_other_choices_are_kept_apart_for_the_screen_with_choice_zeros_own_finish_reason() -> None:
    """n > 1: choice 0 is the answer checked and judged; the others reached the client too, so the
    guardrail screen reads them (each choice's pieces joined in order, choices on lines of their
    own); and the stream's last finish_reason may be another choice's."""
    raw = sse(
        {"choices": [{"index": 0, "delta": {"content": "I can't share "}}]},
        {"choices": [{"index": 1, "delta": {"content": "The card is 4111 "}}]},
        {"choices": [{"index": 2, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "that."}, "finish_reason": "stop"}]},
        {"choices": [{"index": 1, "delta": {"content": "1111 1111 1111"}, "finish_reason": "length"}]},
    )
    got = extract(raw, stream=True, api="chat")
    assert got.text == "I can't share that." and got.finish_reason == "stop"
    assert got.other_text == 'The card is 4111 1111 1111 1111\n{"a":'
    assert not got.tool_calls_only
    plain = extract(sse({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
                    stream=True, api="chat")
    assert plain.other_text is None


def test_a_turn_of_tool_calls_alone_is_flagged() -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "get_rate", "arguments": '{"from": "EUR"}'}}
    raw = sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [call]},
                            "finish_reason": "tool_calls"}]})
    got = extract(raw, stream=True, api="chat")
    assert got.text == 'get_rate({"from": "EUR"})' and got.tool_calls_only
    both = orjson.dumps({"choices": [{"index": 0, "message": {"content": "Checking.", "tool_calls": [call]}}]})
    assert not extract(both, stream=False, api="chat").tool_calls_only


def _completion_chunk(text: str, tokens: list[str], lps: list[float | None]) -> bytes:
    tops = [None if lp is None else {t: lp, " other": math.log(1 - math.exp(lp))} for t, lp in zip(tokens, lps)]
    choice = {"index": 0, "text": text, "finish_reason": None,
              "logprobs": {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops}}
    return b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n"


@pytest.mark.parametrize("stream", [False, True])
def test_an_echoed_prompt_is_cut_from_the_text_and_from_the_entropy(stream: bool) -> None:
    """``echo: true``: the prompt's words are not the answer, and its tokens' spread is not the
    model's doubt; the generated tokens (p=0.99 against 0.01) are all that count."""
    prompt, answer = "Mail me at ana@example.org. Answer:", " Paris."
    prompt_tokens = ["Mail", " me", " at", " ana@example.org.", " Answer:"]
    spread = [None] + [math.log(0.5)] * 4
    sure = [math.log(0.99), math.log(0.99)]
    if stream:  # the echo first, then the generated tokens, as vLLM streams them
        raw = _completion_chunk(prompt, prompt_tokens, spread) + _completion_chunk(answer, [" Paris", "."], sure) \
            + b"data: [DONE]\n\n"
    else:
        body = {"choices": [{"index": 0, "text": prompt + answer, "finish_reason": "stop", "logprobs": {
            "tokens": [*prompt_tokens, " Paris", "."], "token_logprobs": [*spread, *sure],
            "top_logprobs": [None, *[{"x": -0.69, "y": -0.69}] * 4, {" Paris": sure[0], " Lyon": math.log(0.01)},
                             {".": sure[0], "!": math.log(0.01)}]}}]}
        raw = orjson.dumps(body)
    got = extract(raw, stream=stream, api="completions", echo=prompt)
    plain = extract(raw, stream=stream, api="completions")
    assert got.text == answer and plain.text == prompt + answer
    assert got.mean_entropy is not None and plain.mean_entropy is not None
    assert got.mean_entropy < 0.1 < plain.mean_entropy


def test_an_echo_the_engine_did_not_send_leaves_the_text_whole() -> None:
    raw = orjson.dumps({"choices": [{"index": 0, "text": " Paris.", "finish_reason": "stop"}]})
    assert extract(raw, stream=False, api="completions", echo="Capital of France?").text == " Paris."


def test_reasoning_text_reads_every_reasoning_string_and_not_the_answer() -> None:
    raw = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "The user's CPF "}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "is 529.982.247-25 \"quoted\"\n"}}]},
        {"choices": [{"index": 1, "delta": {"reasoning": "choice one thinks", "reasoning_details": [{"text": "x"}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "I can't share that.", "reasoning": None}}]},
    )
    assert reasoning_text(raw) == 'The user\'s CPF is 529.982.247-25 "quoted"\n\nchoice one thinks'
    assert extract(raw, stream=True, api="chat").text == "I can't share that."  # the answer has none of it
    message = {"choices": [{"index": 0, "message": {"content": "ok", "reasoning": "thinking about ana@corp.com"}}]}
    assert reasoning_text(orjson.dumps(message)) == "thinking about ana@corp.com"


def test_reasoning_text_is_none_without_reasoning_and_reads_bytes_that_are_not_utf8() -> None:
    assert reasoning_text(sse({"choices": [{"index": 0, "delta": {"content": '"reasoning": "no"'}}]})) is None
    assert reasoning_text(b'data: {"choices":[{"delta":{"reasoning":null}}]}\n\n') is None
    raw = b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"caf\xe9 \\u00e9"}}]}\n\n'
    assert reasoning_text(raw) == "caf\ufffd \u00e9"


def test_reasoning_is_joined_choice_by_choice_and_once_per_delta() -> None:
    """``n > 1`` streams interleave the choices' deltas, and vLLM (while renaming the key) sent
    ``reasoning`` and ``reasoning_content`` with the same text: joined as they came, a token-by-token
    e-mail was no e-mail any more."""
    tokens = ["bob", ".smith", "@", "acme", ".io"]
    events = []
    for token in tokens:
        events.append({"choices": [{"index": 0, "delta": {"reasoning": token, "reasoning_content": token}}]})
        events.append({"choices": [{"index": 1, "delta": {"reasoning_content": "x"}}]})
    assert reasoning_text(sse(*events)) == "bob.smith@acme.io\nxxxxx"
    one_key_then_other = sse({"choices": [{"index": 0, "delta": {"reasoning_content": "first "}}]},
                             {"choices": [{"index": 0, "delta": {"reasoning": "second"}}]})
    assert reasoning_text(one_key_then_other) == "first second"  # both kept, in order, when they differ


def test_reasoning_cut_by_the_capture_join_is_still_read() -> None:
    """A non-streamed answer past the capture is head + blank line + tail: raw newlines inside one
    JSON string, which orjson refuses; the text on both sides is still read."""
    head = b'{"choices":[{"index":0,"message":{"content":"ok","reasoning_content":"start ana@corp.com '
    raw = head + b"\n\n" + b'end bob@corp.com"}}]}'
    assert reasoning_text(raw) == "start ana@corp.com   end bob@corp.com"
