"""A non-streamed engine response is read whole (to measure it), so it is capped: past the cap the
gateway answers 502 ``upstream_response_too_large`` and records it, instead of holding any size."""

from __future__ import annotations

import orjson
import pytest

from infersight.gateway import proxy
from infersight.gateway.upstreams.mock import ScriptedResponse
from tests.unit.gateway.helpers import ACME, chat_body, gateway

JSON = {"content-type": "application/json"}
KIB = 1 << 10


def answer(size: int) -> list[tuple[float, bytes]]:
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * size},
                                      "finish_reason": "stop"}]})
    return [(1.0, body[: len(body) // 2]), (2.0, body[len(body) // 2:])]


@pytest.mark.parametrize(("size", "status"), [(700 * KIB, 200), (1100 * KIB, 502)])
async def test_a_response_over_the_cap_is_a_502_and_recorded(
    settings, monkeypatch: pytest.MonkeyPatch, size: int, status: int  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(proxy, "MAX_RESPONSE_BYTES", 1 << 20)
    _, _, bus, client = gateway(settings, lambda request: ScriptedResponse(headers=JSON, chunks=answer(size)))
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=False), headers=ACME)
    assert resp.status_code == status
    (record,) = bus.capture.records
    assert record.status_code == status
    if status == 502:
        assert resp.json()["error"]["code"] == "upstream_response_too_large"
        assert record.error_type == "upstream_response_too_large"
    else:
        assert len(resp.content) > 700 * KIB and record.finish_reason == "stop"
