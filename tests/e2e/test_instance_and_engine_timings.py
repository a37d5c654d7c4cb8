"""End to end with the official openai client: every record names the instance that served it and
carries the engine's own queue and inference times (the simulator sends TGI's headers), down to the
embedded DuckDB store."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_non_streamed_record_has_instance_and_engine_times(stack) -> None:
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    reply = client.chat.completions.with_raw_response.create(model="sim-large", messages=QUESTION, max_tokens=20)
    assert reply.parse().choices[0].message.content
    [record] = stack.records(1)
    sim = urlsplit(stack.sim.url)
    assert record.instance == f"{sim.hostname}:{sim.port}"  # no telemetry target: the URL's host:port
    assert record.queue_ms == float(reply.headers["x-queue-time"]) and record.queue_ms >= 0
    assert record.engine_inference_ms == float(reply.headers["x-inference-time"])
    # sim-large: 120 ms before the first token; the engine's time is within the gateway's total
    assert record.total_ms is not None and 120 <= record.engine_inference_ms <= record.total_ms


def test_streamed_record_has_instance_but_no_engine_times(stack) -> None:
    client = openai.OpenAI(base_url=stack.url, api_key="sk-acme-test", max_retries=0)
    chunks = list(client.chat.completions.create(model="sim-small", messages=QUESTION, stream=True, max_tokens=10))
    assert chunks
    [record] = stack.records(1)
    assert record.instance and record.instance.startswith("127.0.0.1:")
    assert record.queue_ms is None and record.engine_inference_ms is None  # TGI-style: headers precede the times


def test_instance_from_the_engine_target_reaches_the_store(tmp_path: Path) -> None:
    with SimServer(seed=12) as sim:
        settings = settings_from_dict(config_dict(
            tmp_path / "data", sim.url, bus={"flush_interval_s": 0.05},
            telemetry={"interval_s": 5, "targets": [
                {"instance": "sim-gpu-0", "kind": "vllm", "url": f"{sim.base_url}/metrics", "models": ["sim-large"]},
                {"instance": "sim-gpu-0", "kind": "dcgm", "url": f"{sim.base_url}/dcgm/metrics"},
            ]},
        ))
        with ThreadedServer(build_gateway(settings)) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="sk-acme-test", max_retries=0)
            reply = client.chat.completions.with_raw_response.create(model="sim-large", messages=QUESTION,
                                                                     max_tokens=20)
            trace_id = reply.headers["x-trace-id"]
            queue, inference = float(reply.headers["x-queue-time"]), float(reply.headers["x-inference-time"])
            with pytest.raises(openai.NotFoundError) as err:  # a request that never routes
                client.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=5)
            missing_trace = err.value.response.headers["x-trace-id"]
        # leaving the block stops the gateway, which flushes the bus into the store and closes it
    store = DuckDBStore(str(tmp_path / "data" / "infersight.duckdb"))
    try:
        [row] = store.get_requests(trace_id)
        [never_routed] = store.get_requests(missing_trace)
    finally:
        store.close()
    assert row["instance"] == "sim-gpu-0"
    assert (row["queue_ms"], row["engine_inference_ms"]) == (queue, inference)
    assert never_routed["status_code"] == 404 and never_routed["instance"] is None
