"""SSE splitting: whole events, split events, CRLF and CR endings, comments and multi-line data."""

from __future__ import annotations

from infersight.gateway.sse import SseSplitter, choice_has_output, inspect_chunk


def test_one_event_per_read_fast_path() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b'data: {"a":1}\n\n') == [(b'data: {"a":1}\n\n', b'{"a":1}')]
    assert splitter.remainder() == b""


def test_split_and_merged_events_keep_raw_bytes() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: one\n") == []
    events = splitter.feed(b"\ndata: two\r\n\r\n: ping\n\nevent: x\ndata: a\ndata: b\r\rdata: tail")
    assert events == [
        (b"data: one\n\n", b"one"),
        (b"data: two\r\n\r\n", b"two"),
        (b": ping\n\n", None),
        (b"event: x\ndata: a\ndata: b\r\r", b"a\nb"),
    ]
    assert splitter.remainder() == b"data: tail"


def test_what_counts_as_output() -> None:
    assert not choice_has_output({"delta": {"role": "assistant", "content": ""}})
    assert choice_has_output({"delta": {"content": "x"}})
    assert choice_has_output({"delta": {"reasoning": "hmm"}})
    assert choice_has_output({"delta": {"tool_calls": [{"index": 0}]}})
    assert choice_has_output({"text": "x"}) and not choice_has_output({"text": ""})
    usage = inspect_chunk(b'{"choices":[],"usage":{"prompt_tokens":1}}')
    assert usage is not None and usage.usage_only and not usage.has_output
    assert inspect_chunk(b"[DONE]") is None and inspect_chunk(b"not json") is None
