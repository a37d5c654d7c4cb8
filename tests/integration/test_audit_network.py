"""The gateway under real network faults: misbehaving engines and slow clients on 127.0.0.1 sockets.

The engine is an asyncio server in the test's loop; the gateway runs through uvicorn in its own thread
(``ThreadedServer``) with the configured upstream client, exactly as deployed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from tests.conftest import DirectBus, config_dict

ACME = {"authorization": "Bearer sk-acme-test"}
CHAT = {"model": "sim-large", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "sim-large",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk_event(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return event({"id": "c1", "object": "chat.completion.chunk", "model": "sim-large",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


class Engine:
    """A scripted engine; counts connections, requests and the most connections open at once."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests = 0
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(reader, writer, self.connections)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self.closed.set()
            writer.close()


@pytest.fixture(params=["http1", "aiohttp"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Both upstream clients meet the same faults (the stale-connection retry is http1's alone)."""
    return request.param


@asynccontextmanager
async def stack(tmp_path: Path, handler: Handler, **upstream: Any) -> AsyncIterator[tuple[str, Engine, DirectBus]]:
    """Engine + gateway; yields the gateway's OpenAI base URL, the engine and the record bus."""
    engine = Engine(handler)
    server = await asyncio.start_server(engine.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = settings_from_dict(config_dict(
        tmp_path / "data", f"http://127.0.0.1:{port}/v1",
        upstream={"connect_timeout_s": 2.0, "read_timeout_s": 5.0, **upstream}))
    bus = DirectBus()
    try:
        async with ThreadedServer(build_gateway(settings, bus=bus)) as gw:
            yield gw.url, engine, bus
    finally:
        server.close()


async def wait_for_records(bus: DirectBus, n: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(bus.records) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


# --- pooled connections the engine closed ------------------------------------------------------------


async def test_every_stale_pooled_connection_is_retried_on_a_fresh_one(tmp_path: Path) -> None:
    """The engine closes idle keep-alive connections just as the next request arrives (its keep-alive
    timer races the request). With two such connections pooled, the retry took the second stale one
    from the pool and the request failed with a 502; the retry must use a fresh connection."""

    async def handler(reader, writer, index):
        await read_request(reader)
        await asyncio.sleep(0.1)  # keeps the two first requests concurrent: two pooled connections
        writer.write(OK_HEAD % len(ANSWER) + ANSWER)
        await writer.drain()
        await reader.read(1)  # the next request's first byte: the engine hangs up instead

    async with stack(tmp_path, handler) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        first = await asyncio.gather(*[client.post("/chat/completions", json=CHAT, headers=ACME) for _ in range(2)])
        assert [r.status_code for r in first] == [200, 200] and engine.connections == 2
        resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "Paris"
        await wait_for_records(bus, 3)
    assert [r.error_type for r in bus.records] == [None, None, None]


async def test_a_post_the_engine_received_on_a_fresh_connection_is_not_retried(
        tmp_path: Path, client_kind: str) -> None:
    """Guard: an engine that takes the request and dies without a byte back gets it once (the client
    gets the 502 and decides), never a duplicate generation."""

    async def handler(reader, writer, index):
        await read_request(reader)
        engine.requests += 1

    async with stack(tmp_path, handler, client=client_kind) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
        await wait_for_records(bus, 1)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_unreachable"
    assert engine.requests == 1
    [record] = bus.records
    assert (record.status_code, record.error_type) == (502, "upstream_unreachable")


async def test_a_connection_close_response_is_not_pooled(tmp_path: Path, client_kind: str) -> None:
    """Guard: an engine saying ``Connection: close`` but leaving the socket open must not get the next
    request on it (that request would hang to the read timeout)."""

    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n" % len(ANSWER) + ANSWER)
        await writer.drain()
        await asyncio.sleep(30)  # never reads again, never answers

    async with stack(tmp_path, handler, client=client_kind, read_timeout_s=3.0) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        started = time.monotonic()
        for _ in range(2):
            resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
            assert resp.status_code == 200
        assert time.monotonic() - started < 2.0
    assert engine.connections == 2


# --- framing at awkward boundaries ---------------------------------------------------------------------


async def test_chunked_stream_split_byte_by_byte_with_trailers_is_relayed_and_pooled(
        tmp_path: Path, client_kind: str) -> None:
    """Guard: chunk-size lines split across reads, chunk extensions and trailers; the body reaches the
    client byte-identical, the record is clean, and the connection goes back to the pool."""
    events = [chunk_event("Par"), chunk_event("is"), chunk_event(None, "stop"), b"data: [DONE]\n\n"]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\nx-trailer: t\r\n\r\n"

    async def handler(reader, writer, index):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(len(body)):
                writer.write(body[i:i + 1])
                await writer.drain()
                if i % 7 == 0:
                    await asyncio.sleep(0)

    async with stack(tmp_path, handler, client=client_kind) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(2):
            resp = await client.post("/chat/completions", json={**CHAT, "stream": True,
                                                                 "stream_options": {"include_usage": True}},
                                     headers=ACME)
            assert resp.status_code == 200 and resp.content == b"".join(events)
        await wait_for_records(bus, 2)
    assert engine.connections == 1
    assert [(r.error_type, r.finish_reason) for r in bus.records] == [(None, "stop")] * 2


async def test_content_length_longer_than_the_body_is_an_error_not_a_short_answer(
        tmp_path: Path, client_kind: str) -> None:
    """Guard: a body cut before its Content-Length is a 502, recorded; the next request still works."""

    async def handler(reader, writer, index):
        await read_request(reader)
        if index == 1:
            writer.write(OK_HEAD % (len(ANSWER) + 10) + ANSWER)  # then hangs up
        else:
            writer.write(OK_HEAD % len(ANSWER) + ANSWER)
        await writer.drain()

    async with stack(tmp_path, handler, client=client_kind) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        cut = await client.post("/chat/completions", json=CHAT, headers=ACME)
        good = await client.post("/chat/completions", json=CHAT, headers=ACME)
        await wait_for_records(bus, 2)
    assert cut.status_code == 502 and cut.json()["error"]["code"] == "upstream_unreachable"
    assert good.status_code == 200
    assert [r.status_code for r in bus.records] == [502, 200]


# --- silent engines, unreachable engines ---------------------------------------------------------------


def _full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: a new connect hangs in SYN_SENT (no answer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(s)
    return listener, fillers


async def test_connect_timeout_is_honoured_and_a_client_leaving_during_connect_is_recorded(
        tmp_path: Path, client_kind: str) -> None:
    listener, fillers = _full_listener()
    port = listener.getsockname()[1]
    settings = settings_from_dict(config_dict(tmp_path / "data", f"http://127.0.0.1:{port}/v1",
                                              upstream={"client": client_kind, "connect_timeout_s": 0.5,
                                                                        "read_timeout_s": 5.0}))
    bus = DirectBus()
    try:
        async with ThreadedServer(build_gateway(settings, bus=bus)) as gw, \
                httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            started = time.monotonic()
            resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
            assert 0.4 < time.monotonic() - started < 2.0
            assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
            with pytest.raises(httpx.TimeoutException):  # the client gives up while the gateway connects
                await client.post("/chat/completions", json=CHAT, headers=ACME, timeout=0.15)
            await wait_for_records(bus, 2)
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert [(r.status_code, r.error_type) for r in bus.records] == [(504, "upstream_timeout"),
                                                                   (499, "client_disconnected")]


async def test_engine_that_accepts_but_never_answers_times_out_and_is_hung_up_on(
        tmp_path: Path, client_kind: str) -> None:
    async def handler(reader, writer, index):
        await read_request(reader)
        await reader.read()  # b"" once the gateway hangs up

    async with stack(tmp_path, handler, client=client_kind, read_timeout_s=0.4) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        started = time.monotonic()
        resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
        assert 0.3 < time.monotonic() - started < 2.0
        await asyncio.wait_for(engine.closed.wait(), 2)  # the connection was closed, not kept
        await wait_for_records(bus, 1)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
    [record] = bus.records
    assert (record.status_code, record.error_type) == (504, "upstream_timeout")


async def test_connection_refused_is_an_openai_502_and_recorded(tmp_path: Path, client_kind: str) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    settings = settings_from_dict(config_dict(tmp_path / "data", f"http://127.0.0.1:{port}/v1",
                                              upstream={"client": client_kind}))
    bus = DirectBus()
    async with ThreadedServer(build_gateway(settings, bus=bus)) as gw, \
            httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        resp = await client.post("/chat/completions", json={**CHAT, "stream": True}, headers=ACME)
        await wait_for_records(bus, 1)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unreachable" and resp.headers["x-trace-id"]
    [record] = bus.records
    assert (record.status_code, record.error_type) == (502, "upstream_unreachable")


# --- slow clients --------------------------------------------------------------------------------------

# More than every buffer on the way can hold, or the engine may finish its writes with the client
# not reading at all: Linux autotunes a loopback receive buffer up to tcp_rmem's maximum (32 MB
# here) and a send buffer up to tcp_wmem's (4 MB); at 400 events (12.8 MB) this failed now and then.
BIG_EVENTS = 1500
BIG = chunk_event("x" * 32_000)


async def test_a_slow_client_is_not_an_engine_timeout_and_backpressure_reaches_the_engine(
        tmp_path: Path, client_kind: str) -> None:
    """A client that stops reading for longer than read_timeout_s: the gateway pauses reading from the
    engine (bounded memory), so the engine's writes block. The paused time is the client's, not the
    engine's silence: it was reported as upstream_timeout, cutting a healthy stream."""
    sent: list[int] = [0]

    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(BIG_EVENTS):
            writer.write(b"%x\r\n%s\r\n" % (len(BIG), BIG))
            await writer.drain()
            sent[0] += 1
        tail = chunk_event(None, "stop") + b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        await writer.drain()

    async with stack(tmp_path, handler, client=client_kind, read_timeout_s=0.5) as (url, engine, bus):
        host, port = url.split("//")[1].split("/")[0].split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        body = orjson.dumps({**CHAT, "stream": True})
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"authorization: Bearer sk-acme-test\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(1.5)  # the client does not read: three read timeouts long
        assert sent[0] < BIG_EVENTS  # the engine is held back, not buffered whole in the gateway
        data = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        await wait_for_records(bus, 1)
    assert b"upstream_timeout" not in data
    assert data.count(b"x" * 32_000) == BIG_EVENTS and b"data: [DONE]" in data
    [record] = bus.records
    assert (record.status_code, record.error_type, record.finish_reason) == (200, None, "stop")
    assert record.completion_tokens == BIG_EVENTS + 1 or record.completion_tokens == BIG_EVENTS


# --- a bounded pool --------------------------------------------------------------------------------------


async def test_pool_size_bounds_open_engine_connections_and_queued_requests_complete(
        tmp_path: Path, client_kind: str) -> None:
    """``upstream.pool_size`` is "max open connections per gateway process": a burst beyond it queues
    for a connection instead of opening one per request; failures give their slot back."""

    async def handler(reader, writer, index):
        while True:
            request = await read_request(reader)
            await asyncio.sleep(0.1)
            if b"fail" in request:
                return  # hangs up without answering: a 502, the slot must come back
            writer.write(OK_HEAD % len(ANSWER) + ANSWER)
            await writer.drain()

    async with stack(tmp_path, handler, client=client_kind, pool_size=2) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        failing = [client.post("/chat/completions", json={**CHAT, "user": "fail"}, headers=ACME) for _ in range(3)]
        failed = await asyncio.gather(*failing)
        assert [r.status_code for r in failed] == [502] * 3
        burst = await asyncio.gather(*[client.post("/chat/completions", json=CHAT, headers=ACME) for _ in range(8)])
        assert [r.status_code for r in burst] == [200] * 8
        await wait_for_records(bus, 11)
    assert engine.max_open <= 2
    assert len(bus.records) == 11


async def test_clients_leaving_mid_stream_or_while_queued_give_their_pool_slot_back(
        tmp_path: Path, client_kind: str) -> None:
    """pool_size=1: one client leaves mid-stream while another waits in the queue and leaves too;
    afterwards the single slot is free again (a leak would make every later request wait and fail)."""
    first_sent = asyncio.Event()

    async def handler(reader, writer, index):
        while True:
            request = await read_request(reader)
            if b"slow" in request:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                first = chunk_event("a")
                writer.write(b"%x\r\n%s\r\n" % (len(first), first))
                await writer.drain()
                first_sent.set()
                await reader.read()  # until the gateway hangs up on the abandoned stream
                return
            writer.write(OK_HEAD % len(ANSWER) + ANSWER)
            await writer.drain()

    async with stack(tmp_path, handler, client=client_kind, pool_size=1, connect_timeout_s=3.0) \
            as (url, engine, bus), httpx.AsyncClient(base_url=url, timeout=10) as client:
        async def leave_mid_stream() -> None:
            async with client.stream("POST", "/chat/completions", json={**CHAT, "stream": True, "user": "slow"},
                                     headers=ACME) as resp:
                assert resp.status_code == 200
                await asyncio.wait_for(first_sent.wait(), 5)
                await asyncio.sleep(0.3)  # the queued request below is waiting for the slot now

        queued = asyncio.create_task(client.post("/chat/completions", json=CHAT, headers=ACME, timeout=0.2))
        await leave_mid_stream()
        with pytest.raises(httpx.TimeoutException):
            await queued
        await asyncio.sleep(0.2)
        resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
        assert resp.status_code == 200
        await wait_for_records(bus, 3)
    assert sorted(r.error_type or "" for r in bus.records) == ["", "client_disconnected", "client_disconnected"]


async def test_an_interim_1xx_answer_is_not_taken_for_the_response(tmp_path: Path, client_kind: str) -> None:
    """An engine (or a proxy before it) sending ``103 Early Hints`` or ``100 Continue`` first: the
    final answer follows. http1 relayed the interim status with an empty body as the response."""

    async def handler(reader, writer, index):
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(OK_HEAD % len(ANSWER) + ANSWER)
            await writer.drain()

    async with stack(tmp_path, handler, client=client_kind) as (url, engine, bus), \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(2):
            resp = await client.post("/chat/completions", json=CHAT, headers=ACME)
            assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Paris"
            assert "link" not in resp.headers
        await wait_for_records(bus, 2)
    assert engine.connections == 1
    assert [(r.status_code, r.finish_reason) for r in bus.records] == [(200, "stop")] * 2
