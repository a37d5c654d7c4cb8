"""An engine that never ends an SSE event: the relay cuts the stream at ``MAX_EVENT_BYTES`` with an
in-band error, rather than buffering without bound until a timeout (or forever)."""

from __future__ import annotations

import orjson

from infersight.gateway.sse import MAX_EVENT_BYTES, EventTooLarge, SseSplitter
from tests.unit.gateway.helpers import ACME, chat_body, chat_chunk, gateway, ok_stream

MIB = 1 << 20


def test_the_splitter_refuses_an_endless_event_after_passing_on_whole_ones() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: {}\n\n" + b"x" * (MAX_EVENT_BYTES + 1)) == [(b"data: {}\n\n", b"{}")]
    try:
        splitter.feed(b"x")
    except EventTooLarge as exc:
        assert exc.error_type == "upstream_event_too_large"
    else:
        raise AssertionError("an event over MAX_EVENT_BYTES was still buffered")
    assert splitter.remainder() == b""  # the partial event is dropped, not forwarded


async def test_an_endless_event_ends_the_stream_with_an_in_band_error(settings) -> None:  # type: ignore[no-untyped-def]
    chunks = [(1.0, chat_chunk(role=True)), (2.0, chat_chunk("Hello"))]
    chunks += [(3.0 + i, b"data: " + b"y" * MIB) for i in range(MAX_EVENT_BYTES // MIB + 2)]
    _, _, bus, client = gateway(settings, ok_stream(*chunks))
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
    events = [e for e in resp.content.split(b"\n\n") if e]
    assert b"Hello" in events[1]
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_event_too_large"
    assert len(resp.content) < 4 * MIB  # the oversized event never reached the client
    (record,) = bus.capture.records
    assert record.error_type == "upstream_event_too_large" and record.status_code == 200
