"""The upstream seam: one Transport per engine protocol; only ``Transport.send`` does I/O."""

from infersight.gateway.upstreams.base import (
    Transport,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

__all__ = [
    "Transport",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]
