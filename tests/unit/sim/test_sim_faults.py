"""Fault injection and client disconnects, seen from real clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from infersight.sim.server import SimServer

CHAT: dict[str, Any] = {"model": "fast", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def _fault(kind: str, **extra: str) -> dict[str, str]:
    return {"x-sim-fault": kind, **extra}


def test_429_and_500_have_openai_error_shape(sim: SimServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rl:
        client.chat.completions.create(**CHAT, extra_headers=_fault("429"))
    assert rl.value.response.headers["retry-after"] == "1"
    assert rl.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**CHAT, stream=True, extra_headers=_fault("500"))
    raw = httpx.post(sim.url + "/chat/completions", json=CHAT, headers=_fault("500"))
    assert raw.status_code == 500
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert sim.app.stats["fault_429"] == 1 and sim.app.stats["fault_500"] == 2
    assert client.chat.completions.create(**CHAT).choices[0].message.content  # no fault forced


async def test_disconnect_fault_breaks_the_stream(sim: SimServer) -> None:
    events: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(sim.url + "/chat/completions", json={**CHAT, "stream": True},
                              headers=_fault("disconnect")) as r:
                assert r.status == 200
                async for line in r.content:
                    if line.startswith(b"data: "):
                        events.append(line)
    assert len(events) == 4  # role chunk + 3 tokens, then the connection drops
    assert not any(b"[DONE]" in e for e in events)


def test_disconnect_fault_cuts_non_stream_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(**CHAT, extra_headers=_fault("disconnect"))


async def test_timeout_fault_stalls_after_role_chunk(sim: SimServer) -> None:
    stamps: list[tuple[float, bytes]] = []
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.post(sim.url + "/chat/completions", json={**CHAT, "stream": True},
                          headers=_fault("timeout", **{"x-sim-timeout-s": "0.6"})) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    stamps.append((time.perf_counter() - t0, line))
    assert b'"role":"assistant"' in stamps[0][1] and stamps[0][0] < 0.3
    assert stamps[1][0] - stamps[0][0] >= 0.55  # silence between role chunk and first token
    assert stamps[-1][1].strip() == b"data: [DONE]"
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        async with s.post(sim.url + "/chat/completions", json=CHAT,
                          headers=_fault("timeout", **{"x-sim-timeout-s": "0.4"})) as r:
            assert r.status == 200 and (await r.json())["choices"]
    assert time.perf_counter() - t0 >= 0.4


def _wait_for(cond, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_client_timeout_during_stall_releases_the_slot(sim: SimServer) -> None:
    with openai.OpenAI(base_url=sim.url, api_key="x", max_retries=0, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(**CHAT, extra_headers=_fault("timeout"))  # 30 s stall
    engine = sim.app.engines["fast"]
    assert _wait_for(lambda: sim.app.stats["client_disconnects"] == 1 and engine.running == 0)


async def test_client_leaving_mid_stream_stops_generation(sim: SimServer) -> None:
    body = {**CHAT, "model": "slow", "stream": True, "max_tokens": 500, "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        r = await s.post(sim.url + "/chat/completions", json=body)
        for _ in range(3):
            await r.content.readline()
        r.close()  # drop the connection mid-stream
    engine = sim.app.engines["slow"]
    for _ in range(200):
        if sim.app.stats["client_disconnects"] == 1 and engine.running == 0:
            break
        await asyncio.sleep(0.01)
    assert sim.app.stats["client_disconnects"] == 1 and engine.running == 0
    assert engine.kv_tokens == 0
    metrics = httpx.get(sim.base_url + "/metrics").text
    assert 'vllm:request_success_total{engine="0",finished_reason="abort",model_name="slow"} 1.0' in metrics
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="slow"} 0.0' in metrics


def test_fault_rate_profiles_inject_faults_deterministically() -> None:
    def statuses(seed: int) -> list[int]:
        with SimServer(seed=seed, fault_rate=0.4) as sim:
            body = {"model": "sim-bench", "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 2}
            with httpx.Client(timeout=0.25) as c:
                out = []
                for _ in range(20):
                    try:
                        out.append(c.post(sim.url + "/chat/completions", json=body).status_code)
                    except httpx.HTTPError:
                        out.append(-1)  # timeout or dropped connection
                return out

    first = statuses(3)
    assert first == statuses(3)
    assert {429, 500, 200} <= set(first) and -1 in first


def test_run_sim_serves_in_its_own_process() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from infersight.sim.server import run_sim; run_sim(port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.2).status_code == 200
            except httpx.HTTPError:
                return False

        assert _wait_for(healthy, timeout_s=10)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert {"sim-large", "sim-small", "sim-reasoner", "sim-bench"} <= {m["id"] for m in models}
    finally:
        proc.terminate()
        proc.wait(5)
