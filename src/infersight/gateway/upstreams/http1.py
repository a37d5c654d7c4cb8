"""The default upstream transport: pooled HTTP/1.1 keep-alive on raw asyncio protocols + httptools.

Why not aiohttp: the gateway benchmark (benchmarks/README.md) showed the client library's per-request
setup and per-chunk stream plumbing as a large share of the gateway's own CPU. Here a request is one
``transport.write`` and every body chunk goes from ``data_received`` through httptools (which also
undoes chunked encoding) into a deque that the relay drains, with no intermediate stream objects.

Timeouts: connect; and one watchdog timer per exchange that fails it when the engine has been silent
for ``read_timeout_s`` or the exchange exceeds ``total_timeout_s``. The timer is re-armed only when it
fires, so a healthy stream costs no timer work per chunk. Time spent with reading paused for a slow
client is not the engine's silence.

Pool: at most ``pool_size`` connections per origin are open (or opening) at once; requests beyond
that wait, first come first served, up to ``connect_timeout_s`` for a connection or a free slot.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from infersight.config import UpstreamSettings
from infersight.gateway.upstreams.base import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

HIGH_WATER = 1 << 20  # pause reading from the engine when this much is buffered for a slow client


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response: _Response | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reused = False
        self.interim = False  # parsing a 1xx interim response (103 Early Hints, 100 Continue)
        self.holds_slot = True  # counted in the pool's open connections until it closes

    def release_slot(self) -> None:
        """Give this connection's pool slot back, once (close() and connection_lost both lead here)."""
        if self.holds_slot:
            self.holds_slot = False
            self.pool.release_slot()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes with no exchange: the engine broke the protocol
            self.close()
            return
        response.last_data_at = self.loop.time()
        response.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response.fail(UpstreamDisconnected(f"the engine sent invalid HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.release_slot()
        response = self.response
        if response is not None and not response.complete:
            headers = response.headers
            if response.status and "content-length" not in headers and "transfer-encoding" not in headers:
                response.finish()  # a body delimited by the connection's end (HTTP/1.0 style)
            else:
                response.fail(UpstreamDisconnected("the engine closed the connection"))

    def pause_writing(self) -> None:  # requests are small; nothing to throttle
        return None

    def resume_writing(self) -> None:
        return None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.response.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (RFC 9110 15.2): the final one follows on the same connection. It was
            # taken as the response: a bare 1xx with an empty body went to the client.
            self.interim = True
            response.headers.clear()
            return
        response.status = status
        if not response.headers_ready.done():
            response.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        response.feed(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        response = self.response
        assert response is not None
        response.keep_alive = self.parser.should_keep_alive()
        response.finish()

    def close(self) -> None:
        self.closed = True
        self.release_slot()
        if self.transport is not None:
            self.transport.close()


class _Response:
    """The engine's answer, streamed out of the connection's parser callbacks."""

    def __init__(self, conn: _Connection, settings: UpstreamSettings) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_ready: asyncio.Future[None] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.released = False
        self.received_any = False
        self.read_timeout = settings.read_timeout_s
        self.started_at = self.last_data_at = self.loop.time()
        self.deadline = self.started_at + settings.total_timeout_s
        self.watchdog = self.loop.call_at(self.started_at + self.read_timeout, self._check_timeouts)

    def _check_timeouts(self) -> None:
        if self.complete or self.error is not None:
            return
        now = self.loop.time()
        if now >= self.deadline:
            self.fail(UpstreamTimeout("the engine exceeded the total timeout"))
        elif self.buffered > HIGH_WATER:
            # Reading is paused because the client is slow: the engine is not silent, we are not
            # listening. Check again later (resume_reading restarts the silence clock).
            self.watchdog = self.loop.call_at(min(now + self.read_timeout, self.deadline), self._check_timeouts)
            return
        elif now - self.last_data_at >= self.read_timeout:
            self.fail(UpstreamTimeout("the engine stopped sending (read timeout)"))
        else:
            self.watchdog = self.loop.call_at(min(self.last_data_at + self.read_timeout, self.deadline),
                                              self._check_timeouts)
            return
        self.conn.close()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.conn.transport is not None:
            self.conn.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self.watchdog.cancel()
        self._wake()

    def fail(self, error: UpstreamError) -> None:
        if self.complete or self.error is not None:
            return
        self.error = error
        self.watchdog.cancel()
        if not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved: no "never retrieved" warning if unused
        self._wake()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        chunks = self.chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                if self.buffered > HIGH_WATER and self.conn.transport is not None:
                    self.conn.transport.resume_reading()
                    self.last_data_at = self.loop.time()  # the paused time was not the engine's silence
                self.buffered = 0
                yield data
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self.waiter = self.loop.create_future()
            await self.waiter
            self.waiter = None

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aclose(self) -> None:
        if self.released:
            return
        self.released = True
        self.watchdog.cancel()
        conn = self.conn
        conn.response = None
        if self.complete and self.keep_alive and not conn.closed and self.error is None:
            conn.pool.put_back(conn)
        else:
            # An unfinished body cannot be reused; closing is how the engine learns the client left.
            conn.close()


class _Pool:
    """Idle keep-alive connections to one origin."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, tls: ssl.SSLContext | None,
                 settings: UpstreamSettings) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.tls = tls
        self.settings = settings
        self.idle: list[_Connection] = []
        self.open = 0  # connections open or opening, at most settings.pool_size
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def get(self, fresh: bool = False) -> _Connection:
        """A pooled connection, or a new one (always new when ``fresh``: the retry after a stale one
        must not take another connection that may be just as stale)."""
        while True:
            if not fresh:
                while self.idle:
                    conn = self.idle.pop()
                    if not conn.closed:
                        conn.reused = True
                        return conn
            if self.open < self.settings.pool_size:
                self.open += 1
                return await self._connect()
            if fresh and self.idle:  # every slot taken, some by idle connections: one makes room
                victim = self.idle.pop(0)
                if victim.closed:
                    continue  # its slot came back when it closed
                victim.holds_slot = False  # its slot passes to the new connection
                victim.close()
                return await self._connect()
            got = await self._wait()
            if got is None:
                return await self._connect()  # a slot was handed to us
            if not got.closed:
                return got
            # handed a connection the engine closed meanwhile (its slot went on): try again

    async def _wait(self) -> _Connection | None:
        """Queue for a connection someone puts back (returned) or a slot someone frees (None)."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():  # handed over as we timed out or were cancelled
                got = waiter.result()
                if got is None:
                    self.release_slot()
                else:
                    self.put_back(got)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no connection to {self.host}:{self.port} came free in time") from None
            raise
        finally:
            if not waiter.done():
                waiter.cancel()  # release_slot and put_back skip it

    async def _connect(self) -> _Connection:
        """Open a connection in a slot the caller holds; the slot comes back if the connect fails."""
        made: list[_Connection] = []

        def factory() -> _Connection:
            made.append(_Connection(self))
            return made[-1]

        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    factory, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None,
                ),
                timeout=self.settings.connect_timeout_s,
            )
        except BaseException as exc:
            if made:
                made[0].close()
            else:
                self.release_slot()
            if isinstance(exc, asyncio.TimeoutError):
                raise UpstreamTimeout(f"connecting to {self.host}:{self.port} timed out") from exc
            if isinstance(exc, OSError):
                raise UpstreamUnreachable(
                    f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
            raise
        return conn

    def release_slot(self) -> None:
        """A connection closed or never opened: its slot goes to the longest waiter, else is freed."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def put_back(self, conn: _Connection) -> None:
        conn.parser = httptools.HttpResponseParser(conn)
        while self.waiters:  # first come, first served: the longest waiter gets it
            waiter = self.waiters.popleft()
            if not waiter.done():
                conn.reused = True
                waiter.set_result(conn)
                return
        self.idle.append(conn)  # never more than pool_size: every idle connection holds a slot

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Http1Transport:
    """``Transport`` over pooled HTTP/1.1 connections (TLS for https URLs)."""

    def __init__(self, settings: UpstreamSettings | None = None) -> None:
        self.settings = settings or UpstreamSettings()
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, tuple[tuple[str, str, int], bytes, str]] = {}

    def _target(self, url: str) -> tuple[tuple[str, str, int], bytes, str]:
        cached = self._targets.get(url)
        if cached is None:
            parts = urlsplit(url)
            https = parts.scheme == "https"
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if https else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host_header = parts.netloc.rsplit("@", 1)[-1]
            cached = self._targets[url] = ((parts.scheme, host, port), path.encode("latin-1"), host_header)
        return cached

    def _pool(self, key: tuple[str, str, int]) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            tls = ssl.create_default_context() if key[0] == "https" else None
            pool = self._pools[key] = _Pool(asyncio.get_running_loop(), key[1], key[2], tls, self.settings)
        return pool

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        key, path, host_header = self._target(request.url)
        pool = self._pool(key)
        head = [f"{request.method} ".encode() + path + b" HTTP/1.1\r\nhost: " + host_header.encode("latin-1")]
        for name, value in request.headers.items():
            head.append(f"{name}: {value}".encode("latin-1"))
        head.append(b"content-length: " + str(len(request.body)).encode())
        payload = b"\r\n".join(head) + b"\r\n\r\n" + request.body
        for attempt in (0, 1):
            conn = await pool.get(fresh=attempt == 1)
            response = _Response(conn, self.settings)
            conn.response = response
            assert conn.transport is not None
            conn.transport.write(payload)
            try:
                await response.headers_ready
            except UpstreamDisconnected:
                # A pooled connection the engine had already closed: retry once on a fresh one, but
                # only if the engine sent nothing back (so it cannot have acted on the request).
                if attempt == 0 and conn.reused and not response.received_any:
                    continue
                raise
            except asyncio.CancelledError:
                await response.aclose()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
