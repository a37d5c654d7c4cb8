"""ResponseCapture keeps both ends of a long response, and says when answer bytes were cut."""

from __future__ import annotations

import pytest

from infersight.evaluation.extract import extract
from infersight.gateway.hooks import ResponseCapture


def _event(delta: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":' + delta.encode() + b',"finish_reason":null}]}\n\n'


def test_a_short_response_is_kept_whole() -> None:
    capture = ResponseCapture(1000)
    chunks = [_event('{"content":"Hi"}'), b"data: [DONE]\n\n"]
    for chunk in chunks:
        capture.add(chunk)
    assert capture.data() == b"".join(chunks) and not capture.overflowed


def test_long_thinking_is_cut_from_the_middle_and_the_answer_kept_unflagged() -> None:
    """A reasoning model's thinking first, its answer last: the answer survives, and since only
    thinking was cut, the text is not marked cut."""
    capture = ResponseCapture(4096)
    capture.add(_event('{"role":"assistant","content":""}'))
    for i in range(500):
        capture.add(_event('{"content":"","reasoning_content":"step %d of the thinking"}' % i))
    capture.add(_event('{"content":"The answer is 4."}'))
    capture.add(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    data = capture.data()
    assert len(data) <= 4096 + 2 and not capture.overflowed
    got = extract(data, stream=True, api="chat")
    assert got.text == "The answer is 4."


def test_cutting_answer_text_marks_the_capture_overflowed() -> None:
    capture = ResponseCapture(2048)
    for i in range(400):
        capture.add(_event('{"content":"word%d "}' % i))
    assert capture.overflowed
    text = extract(capture.data(), stream=True, api="chat").text
    assert text is not None and text.startswith("word0 ") and text.endswith("word399 ")
    assert "word200 " not in text


def test_one_chunk_larger_than_the_capture_keeps_its_end() -> None:
    capture = ResponseCapture(1000, "completions")
    capture.sse = False  # one JSON body, as the proxy says
    capture.add(b"x" * 10)
    capture.add(b'{"text":"' + b"a" * 5000 + b'"}')
    data = capture.data()
    assert len(data) == 500 + 2 + 500 and capture.overflowed  # the head keeps its half too
    assert data.startswith(b"x" * 10 + b'{"text":"a') and data.endswith(b'a"}')


@pytest.mark.parametrize("size", [1, 7, 300, 999, 1000, 1001, 5000, 20_000])
def test_head_and_tail_are_each_half_of_the_limit_whatever_the_chunks(size: int) -> None:
    """Was: a body sent in one or two large chunks left the head empty (the head kept whole chunks
    only), and the answer's start was lost; the tail kept whole chunks, so it could hold far less
    than its half."""
    body = bytes(range(256)) * 80  # 20,480 bytes, no two windows alike
    capture = ResponseCapture(1000, "chat")
    for i in range(0, len(body), size):
        capture.add(body[i:i + size])
    data = capture.data()
    assert data == body[:500] + b"\n\n" + body[-500:]
