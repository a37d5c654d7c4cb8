"""A stream the engine closes cleanly mid-answer (no ``finish_reason``, no ``[DONE]``) is a 200 to
the client but not a success: the record says ``upstream_incomplete_stream``, so stats count it."""

from __future__ import annotations

import pytest

from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, ok_stream

CUT = [(1.0, chat_chunk(role=True)), (2.0, chat_chunk("The answer is"))]


@pytest.mark.parametrize(("ending", "error_type"), [
    ([], "upstream_incomplete_stream"),
    ([(3.0, chat_chunk(finish="stop"))], None),  # finished, [DONE] left out: some engines do
    ([(3.0, DONE)], None),  # [DONE] without a finish_reason: the engine says it is done
    ([(3.0, DONE.rstrip(b"\n"))], None),  # ... even as an unterminated last event
])
async def test_a_stream_cut_without_finish_or_done_is_recorded_as_incomplete(
    settings, ending: list[tuple[float, bytes]], error_type: str | None  # type: ignore[no-untyped-def]
) -> None:
    _, _, bus, client = gateway(settings, ok_stream(*CUT, *ending))
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
        metrics = (await client.get("/metrics")).text
    assert resp.status_code == 200 and b"The answer is" in resp.content
    (record,) = bus.capture.records
    assert (record.status_code, record.error_type) == (200, error_type)
    if error_type:
        assert f'error_type="{error_type}"' in metrics
