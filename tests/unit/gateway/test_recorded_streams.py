"""Every recorded real OpenAI-compatible stream, replayed through the relay at the transport seam.

The client must receive the same events (byte-identical when it asked for usage), the record's tokens
must equal the stream's final usage, and TTFT must land on the chunk that completed the first
output-bearing event, even with the stream cut into awkward 37-byte network reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from infersight.config import settings_from_dict
from infersight.gateway.sse import SseSplitter, inspect_chunk
from infersight.gateway.upstreams.mock import ManualClock, ScriptedResponse
from tests.conftest import EXTDATA, config_dict
from tests.unit.gateway.helpers import ACME, gateway

READ_SIZE = 37
STEP_MS = 2.5


def openai_streams() -> list[dict]:
    if not EXTDATA:
        return []
    index = Path(EXTDATA) / "streams" / "index.jsonl"
    entries = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["kind"] == "sse" and not e["event_names"] and e.get("ends_with_done")]


def request_body(base: Path) -> bytes:
    request = json.loads(base.with_suffix(".request.json").read_text())
    body = request.get("body") or json.dumps(request["parsed_body"])
    return body.encode() if isinstance(body, str) else body


def data_events(raw: bytes) -> list[bytes]:
    splitter = SseSplitter()
    return [data for _, data in splitter.feed(raw) if data is not None]


@pytest.mark.skipif(not EXTDATA, reason="INFERSIGHT_EXTDATA is not set (CI points it at ../shared/extdata)")
@pytest.mark.parametrize("entry", openai_streams(), ids=lambda e: e["file"])
async def test_replay_recorded_stream(entry, tmp_path) -> None:
    base = Path(EXTDATA) / "streams" / (entry["file"] + ".request.json")
    base = base.with_name(base.name.removesuffix(".request.json"))
    recorded = base.with_suffix(".sse").read_bytes() if base.with_suffix(".sse").exists() else \
        Path(str(base) + ".sse").read_bytes()
    body = request_body(Path(str(base)))
    request = orjson.loads(body)
    settings = settings_from_dict(config_dict(tmp_path, backends=[
        {"name": "recorded", "url": "http://127.0.0.1:9/v1", "models": [request["model"]]}]))
    reads = [recorded[i:i + READ_SIZE] for i in range(0, len(recorded), READ_SIZE)]
    script = [((i + 1) * STEP_MS, chunk) for i, chunk in enumerate(reads)]
    _, transport, bus, client = gateway(settings, lambda r: ScriptedResponse(chunks=script), ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", content=body, headers={**ACME, "content-type": "application/json"})
    assert resp.status_code == 200

    asked_usage = (request.get("stream_options") or {}).get("include_usage") is True
    if asked_usage:
        assert resp.content == recorded
        assert transport.requests[0].body == body
    else:
        kept = [d for d in data_events(recorded) if not ((i := inspect_chunk(d)) and i.usage_only)]
        assert data_events(resp.content) == kept

    [record] = bus.records
    usage = entry["final_usage"]
    assert record.token_source == "backend"
    assert record.prompt_tokens == usage["prompt_tokens"]
    assert record.completion_tokens == usage["completion_tokens"]
    details = usage.get("completion_tokens_details") or {}
    if details.get("reasoning_tokens") is not None:
        assert record.reasoning_tokens == details["reasoning_tokens"]
    prompt_details = usage.get("prompt_tokens_details") or {}
    if prompt_details.get("cached_tokens") is not None:
        assert record.cached_prompt_tokens == prompt_details["cached_tokens"]

    # Expected TTFT: the read that completed the first event carrying output.
    offset = 0
    first_output_end = None
    for raw_event, data in SseSplitter().feed(recorded):
        offset += len(raw_event)
        info = inspect_chunk(data) if data is not None else None
        if info is not None and info.has_output:
            first_output_end = offset
            break
    assert first_output_end is not None, "every recorded stream carries output"
    expected_read = (first_output_end - 1) // READ_SIZE + 1
    assert record.ttft_ms == pytest.approx(expected_read * STEP_MS, abs=1e-6)
    finishes = [i.finish_reason for d in data_events(recorded) if (i := inspect_chunk(d)) and i.finish_reason]
    assert record.finish_reason == (finishes[-1] if finishes else None)  # one real stream has none


def test_recorded_streams_are_found() -> None:
    if not EXTDATA:
        pytest.skip("INFERSIGHT_EXTDATA is not set")
    assert len(openai_streams()) >= 14  # 14 OpenAI-compatible SSE recordings in extdata today
