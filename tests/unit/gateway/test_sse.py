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


def test_plain_output_fast_path_is_conservative() -> None:
    from infersight.gateway.sse import plain_output_chunk

    assert plain_output_chunk(b'{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}')
    assert plain_output_chunk(b'{"choices":[{"index":0,"text":"Hi","finish_reason":null}]}')
    for data in [
        b'{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}',  # role only
        b'{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}',               # finish
        b'{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}',          # usage
        b'{"choices":[{"delta": {"content": "x"}, "finish_reason": "stop"}]}',            # spaced JSON
        b'{"choices":[{"delta":{"reasoning_content":"x"}}]}',                            # other output
        b'{"error":{"message":"boom"}}',
    ]:
        assert not plain_output_chunk(data), data
    # whatever the fast path accepts, the full parse agrees it is output with nothing else
    accepted = b'{"choices":[{"delta":{"content":"a \\"content\\":\\"\\" b"},"finish_reason":null}],"usage":null}'
    assert plain_output_chunk(accepted)
    info = inspect_chunk(accepted)
    assert info is not None and info.has_output and info.usage is None and info.finish_reason is None


def test_plain_output_events_counts_whole_reads_only() -> None:
    from infersight.gateway.sse import plain_output_events

    token = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
    assert plain_output_events(token) == 1
    assert plain_output_events(token * 5) == 5
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    finish = b'data: {"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":"stop"}]}\n\n'
    for chunk in [token[:-1], role + token, token + finish, token + b"data: [DONE]\n\n", token + b": ping\n\n",
                  token.replace(b"\n\n", b"\r\n\r\n")]:
        assert plain_output_events(chunk) == 0, chunk
