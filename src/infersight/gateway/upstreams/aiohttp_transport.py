"""The alternative transport (``upstream.client: aiohttp``): one pooled aiohttp session per process.

The default is ``http1.Http1Transport``, which the gateway benchmark measured as cheaper per request
and per chunk; this one stays as a well-trodden fallback and passes the same e2e suite. Timeouts: connect, and ``sock_read`` as the max silence between bytes,
which is what a stalled engine looks like mid-stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp

from infersight.config import UpstreamSettings
from infersight.gateway.upstreams.base import (
    UpstreamRequest,
    UpstreamDisconnected,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

log = logging.getLogger("infersight.gateway")


class _AiohttpResponse:
    __slots__ = ("_resp", "status", "headers")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("the engine stopped sending (read timeout)") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamDisconnected(f"the engine connection broke: {type(exc).__name__}") from exc

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("the engine stopped sending (read timeout)") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamDisconnected(f"the engine connection broke: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        # close(), not release(): an unfinished body must not go back to the pool, and closing the
        # socket is how the engine learns that the client went away.
        if not self._resp.closed:
            if self._resp.content.at_eof():
                self._resp.release()
            else:
                self._resp.close()


class AiohttpTransport:
    """Pooled HTTP/1.1 keep-alive connections to every engine, created lazily inside the loop."""

    def __init__(self, settings: UpstreamSettings | None = None) -> None:
        self._settings = settings or UpstreamSettings()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.pool_size, limit_per_host=s.pool_size, keepalive_timeout=s.keepalive_s, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(
            total=s.total_timeout_s, connect=s.connect_timeout_s, sock_read=s.read_timeout_s
        )
        # No Accept-Encoding of aiohttp's own: the relay reads the engine in clear (the proxy drops the
        # client's for that reason), and a gzip answer reached the client without its Content-Encoding.
        return aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self._session is None:
            self._session = self._open()
        try:
            resp = await self._session.request(
                request.method, request.url, data=request.body, headers=_wire_headers(request.headers),
                allow_redirects=False
            )
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("the engine did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"the engine is unreachable: {type(exc).__name__}") from exc
        except OSError as exc:
            raise UpstreamUnreachable(f"the engine is unreachable: {exc.strerror or type(exc).__name__}") from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _wire_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's header bytes as aiohttp will write them. The proxy decodes header values as
    latin-1 (one char per byte) and aiohttp writes UTF-8, so a UTF-8 value ("café") reached the
    engine double-encoded. Re-read as UTF-8, it goes out as the client sent it. A value that is not
    UTF-8 (obsolete latin-1 text) cannot be written by aiohttp as it came: it is left out, named in a
    warning (the http1 transport sends it as it came)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if value.isascii():
            out[name] = value
            continue
        try:
            out[name] = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            log.warning("request header left out: its value is not UTF-8, which aiohttp cannot send as it came",
                        extra={"fields": {"header": name[:64]}})
    return out
