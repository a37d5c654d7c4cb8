"""The sim answers non-streamed requests with TGI's per-request timing headers (whole ms)."""

from __future__ import annotations

import asyncio
import time

import httpx

from infersight.sim.server import SimServer

BODY = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 30}


def test_non_stream_reply_has_queue_and_inference_time(sim: SimServer) -> None:
    start = time.perf_counter()
    resp = httpx.post(f"{sim.url}/chat/completions", json={"model": "fast", **BODY}, timeout=10)
    elapsed_ms = (time.perf_counter() - start) * 1000
    assert resp.status_code == 200
    queue, inference = int(resp.headers["x-queue-time"]), int(resp.headers["x-inference-time"])
    assert queue == 0  # nothing else running: scheduled at once
    assert 5 <= inference <= elapsed_ms  # at least the profile's 5 ms TTFT base, never more than the wall time


def test_streams_have_no_timing_headers(sim: SimServer) -> None:
    with httpx.stream("POST", f"{sim.url}/chat/completions", json={"model": "fast", "stream": True, **BODY},
                      timeout=10) as resp:
        resp.read()
    assert resp.status_code == 200 and "x-queue-time" not in resp.headers and "x-inference-time" not in resp.headers


async def test_queue_time_shows_a_wait_for_the_only_slot(sim: SimServer) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        replies = await asyncio.gather(*(
            client.post(f"{sim.url}/chat/completions", json={"model": "one-slot", **BODY, "ignore_eos": True})
            for _ in range(2)
        ))
    queues = sorted(int(r.headers["x-queue-time"]) for r in replies)
    inferences = [int(r.headers["x-inference-time"]) for r in replies]
    # one slot: the second waits for the whole first request (5 ms + 29 x 3 ms of decode, at least)
    assert queues[0] <= 5 and queues[1] >= 60
    assert all(i >= 60 for i in inferences)
