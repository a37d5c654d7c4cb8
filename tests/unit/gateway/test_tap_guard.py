"""Evaluation never fails inference: a tap that raises costs the request its evaluation only.

The tap here is a stand-in at the ``RequestTap`` seam that raises on purpose, so that whatever bug a
future evaluator has, the guard in the proxy is what is tested (the bugs found so far are fixed at
their source and tested there)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infersight.gateway.app import GatewayApp
from infersight.gateway.hooks import ResponseCapture
from infersight.gateway.upstreams.mock import MockTransport
from infersight.model import RequestRecord
from tests.conftest import DirectBus
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, ok_stream

SECRET = "zebra-tap-marker"


class FaultyTap:
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def begin(self, record: RequestRecord, body: dict[str, Any]) -> ResponseCapture | None:
        record.sampled_for_eval, record.sample_reason = True, "random"
        if self.stage == "begin":
            raise ValueError(f"tap bug quoting the prompt: {SECRET}")
        return ResponseCapture(1 << 20)

    def upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.stage == "upstream":
            raise KeyError(f"tap bug quoting the body: {SECRET}")
        return body

    def finish(self, record: RequestRecord, body: dict[str, Any] | None, prompt: str | None,
               capture: ResponseCapture | None) -> None:
        if self.stage in ("begin", "finish"):
            raise OverflowError(f"tap bug quoting the answer: {SECRET}")


@pytest.mark.parametrize("stage", ["begin", "upstream", "finish"])
async def test_a_failing_tap_leaves_the_response_and_the_record_whole(
    settings, stage: str, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    stream = ok_stream((1.0, chat_chunk(role=True)), (2.0, chat_chunk("Paris")), (3.0, chat_chunk(finish="stop")),
                       (4.0, DONE))
    bus = DirectBus()
    app = GatewayApp(settings, MockTransport(stream), bus, tap=FaultyTap(stage))  # type: ignore[arg-type]
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
        metrics = (await client.get("/metrics")).text
    assert resp.status_code == 200 and b"Paris" in resp.content and resp.content.endswith(DONE)
    (record,) = bus.capture.records
    assert record.status_code == 200 and record.finish_reason == "stop" and record.error_type is None
    if stage == "upstream":  # the body went on as sent; the evaluation itself is whole
        assert (record.sampled_for_eval, record.sample_reason) == (True, "random")
    else:
        assert (record.sampled_for_eval, record.sample_reason) == (False, None)  # no eval task will follow
    failures = {s.labels["stage"]: s.value for f in text_string_to_metric_families(metrics)
                if f.name == "infersight_eval_tap_failures" for s in f.samples if s.name.endswith("_total")}
    assert failures == {stage: 1.0}
    assert "evaluation tap failed" in caplog.text and SECRET not in caplog.text


async def test_a_body_no_hash_can_take_costs_the_hash_not_the_record(settings, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
                                                                     ) -> None:
    """A content part nested 1,000 deep passes the body parser (orjson takes 1,023 levels); hashing
    it raised RecursionError in the request's finish, before the answer was sent (fixed in
    ``prompt_hash``). Whatever else a hash cannot take: the answer and the record are whole."""
    import orjson

    from infersight.gateway import proxy

    def broken_hash(*args: Any) -> str:
        raise RecursionError(f"quoting the prompt: {SECRET}")

    stream = ok_stream((1.0, chat_chunk(role=True)), (2.0, chat_chunk("Paris")), (3.0, chat_chunk(finish="stop")),
                       (4.0, DONE))
    bus = DirectBus()
    app = GatewayApp(settings, MockTransport(stream), bus)
    caplog.set_level(logging.INFO)
    body = chat_body(stream=True)
    body["messages"][-1]["content"] = [{"type": "text", "text": "hi"}, [[[[1]]]]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proxy, "prompt_hash", broken_hash)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            resp = await client.post("/v1/chat/completions", content=orjson.dumps(body), headers=ACME)
    assert resp.status_code == 200 and b"Paris" in resp.content and resp.content.endswith(DONE)
    (record,) = bus.capture.records
    assert record.status_code == 200 and record.prompt_hash is None
    assert "prompt hash failed" in caplog.text and SECRET not in caplog.text
