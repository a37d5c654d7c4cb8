"""The transport seam between the gateway and an engine, after httpx's ``Transport.handle_request``.

The gateway holds policy (routing, measuring, error mapping); a Transport only moves bytes. Tests
swap in ``MockTransport`` to script status, headers and chunk timings without sockets.

Exceptions::

    UpstreamError
    ├── UpstreamUnreachable   connect refused / DNS / reset before a response   -> 502
    │   └── UpstreamDisconnected  the engine closed the connection mid-body
    └── UpstreamTimeout       connect, header or between-chunk read timeout     -> 504
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class UpstreamError(Exception):
    """The engine could not be used; the message is safe to show a client."""

    error_type = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    error_type = "upstream_unreachable"


class UpstreamDisconnected(UpstreamUnreachable):
    error_type = "upstream_disconnected"


class UpstreamTimeout(UpstreamError):
    error_type = "upstream_timeout"


@dataclass(slots=True)
class UpstreamRequest:
    """One request to an engine. ``body`` is sent byte for byte."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class UpstreamResponse(Protocol):
    """A response whose headers have arrived; the body is read by ``aiter_bytes`` or ``aread``."""

    status: int
    headers: Mapping[str, str]

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive. Raises UpstreamTimeout / UpstreamUnreachable mid-body."""
        ...

    async def aread(self) -> bytes:
        """The whole body."""
        ...

    async def aclose(self) -> None:
        """Release the connection; closing early cancels the engine's work."""
        ...


@runtime_checkable
class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the response headers are in."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...
