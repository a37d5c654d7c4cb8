"""Engine failures over real sockets: unreachable (502), timeout (504), mid-stream disconnect."""

from __future__ import annotations

import socket

import httpx

from tests.e2e.conftest import start_stack

BODY = {"model": "sim-large", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
ACME = {"authorization": "Bearer sk-acme-test"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_engine_is_502(tmp_path, upstream_client) -> None:
    stack, sim = start_stack(tmp_path, sim_url=f"http://127.0.0.1:{closed_port()}/v1",
                             upstream={"client": upstream_client})
    try:
        resp = httpx.post(stack.url + "/chat/completions", json=BODY, headers=ACME, timeout=10)
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_unreachable"
        [record] = stack.records(1)
        assert (record.status_code, record.error_type) == (502, "upstream_unreachable")
    finally:
        stack.gateway.stop()
        sim.stop()


def test_engine_timeout_is_504_and_stream_stall_reported(tmp_path, upstream_client) -> None:
    upstream = {"client": upstream_client, "connect_timeout_s": 1.0, "read_timeout_s": 0.5}
    stack, sim = start_stack(tmp_path, upstream=upstream)
    try:
        stalled = {**ACME, "x-sim-fault": "timeout", "x-sim-timeout-s": "3"}
        resp = httpx.post(stack.url + "/chat/completions", json=BODY, headers=stalled, timeout=10)
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
        streamed = httpx.post(stack.url + "/chat/completions", json={**BODY, "stream": True}, headers=stalled,
                              timeout=10)
        assert streamed.status_code == 200 and '"code":"upstream_timeout"' in streamed.text
        first, second = stack.records(2)
        assert (first.status_code, first.error_type) == (504, "upstream_timeout")
        assert second.error_type == "upstream_timeout" and second.stream
    finally:
        stack.gateway.stop()
        sim.stop()


def test_engine_disconnect_mid_stream_is_recorded(stack) -> None:
    headers = {**ACME, "x-sim-fault": "disconnect"}
    resp = httpx.post(stack.url + "/chat/completions", json={**BODY, "stream": True}, headers=headers, timeout=10)
    assert resp.status_code == 200 and '"code":"upstream_disconnected"' in resp.text
    [record] = stack.records(1)
    assert record.error_type == "upstream_disconnected" and record.ttft_ms is not None


def test_client_disconnect_over_real_socket_cancels_engine_work(stack) -> None:
    body = {**BODY, "stream": True, "max_tokens": 2000, "ignore_eos": True}
    with httpx.stream("POST", stack.url + "/chat/completions", json=body, headers=ACME, timeout=10) as resp:
        for i, _ in enumerate(resp.iter_raw()):
            if i >= 3:
                break
    [record] = stack.records(1, timeout_s=10)
    assert record.client_disconnected and record.status_code == 499
    assert record.completion_tokens is None or record.completion_tokens < 2000
