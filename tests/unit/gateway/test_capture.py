"""ResponseCapture keeps both ends of a long response, and says when answer bytes were cut."""

from __future__ import annotations

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
    capture.add(b"x" * 10)
    capture.add(b'{"text":"' + b"a" * 5000 + b'"}')
    assert len(capture.data()) <= 10 + 2 + 500 and capture.overflowed
