"""The raw HTTP/1.1 upstream transport against a scripted asyncio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from infersight.config import UpstreamSettings
from infersight.gateway.upstreams import UpstreamDisconnected, UpstreamRequest, UpstreamTimeout, UpstreamUnreachable
from infersight.gateway.upstreams.http1 import Http1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> str:
        async def serve(reader, writer):
            self.connections += 1
            index = self.connections
            try:
                await self.handler(reader, writer, index)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def request(url: str) -> UpstreamRequest:
    return UpstreamRequest("POST", url, {"content-type": "application/json"}, b'{"x":1}')


async def test_keep_alive_reuse_and_exact_request_bytes() -> None:
    server: Server

    async def handler(reader, writer, index):
        while True:
            server.requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    server = Server(handler)
    transport = Http1Transport()
    async with server as url:
        for _ in range(3):
            response = await transport.send(request(url))
            assert response.status == 200 and await response.aread() == b"{}"
            await response.aclose()
    await transport.aclose()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
    assert first.endswith(b'content-length: 7\r\n\r\n{"x":1}')


async def test_chunked_stream_arrives_incrementally() -> None:
    release = asyncio.Event()

    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata: \r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"3\r\nabc\r\n0\r\n\r\n")
        await writer.drain()

    transport = Http1Transport()
    async with Server(handler) as url:
        response = await transport.send(request(url))
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.aiter_bytes()
        assert await chunks.__anext__() == b"data: "
        release.set()
        assert await chunks.__anext__() == b"abc"
        with pytest.raises(StopAsyncIteration):
            await chunks.__anext__()
        await response.aclose()
    await transport.aclose()


async def test_a_connection_the_engine_closed_never_fails_a_request() -> None:
    """Whether the close is seen before reuse (skipped) or only on reuse (retried once), all succeed."""

    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # then close: the pooled connection is dead when the next request comes

    server = Server(handler)
    transport = Http1Transport()
    async with server as url:
        for i in range(6):
            response = await transport.send(request(url))
            assert await response.aread() == b"ok"
            await response.aclose()
            if i % 2:
                await asyncio.sleep(0.02)
    await transport.aclose()
    assert server.connections >= 6


async def test_close_delimited_body_and_mid_body_disconnect() -> None:
    async def handler(reader, writer, index):
        await read_request(reader)
        if index == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil close")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()

    transport = Http1Transport()
    async with Server(handler) as url:
        response = await transport.send(request(url))
        assert await response.aread() == b"until close"
        await response.aclose()
        response = await transport.send(request(url))
        with pytest.raises(UpstreamDisconnected):
            await response.aread()
        await response.aclose()
    await transport.aclose()


async def test_read_timeout_and_unreachable() -> None:
    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    transport = Http1Transport(UpstreamSettings(read_timeout_s=0.2))
    async with Server(handler) as url:
        response = await transport.send(request(url))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await response.aread()
        assert 0.15 < loop.time() - started < 2.0
        await response.aclose()
    with pytest.raises(UpstreamUnreachable):
        await transport.send(request("http://127.0.0.1:9/v1/x"))
    await transport.aclose()


async def test_closing_an_unfinished_response_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        await reader.read()  # returns b"" when the gateway hangs up
        closed.set()

    transport = Http1Transport()
    async with Server(handler) as url:
        response = await transport.send(request(url))
        assert await response.aiter_bytes().__anext__() == b"a"
        await response.aclose()
        await asyncio.wait_for(closed.wait(), 2)
    await transport.aclose()
