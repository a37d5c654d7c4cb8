"""Small raw-ASGI helpers for the hot path: reading a bounded body, answering JSON, header hygiene."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from infersight.gateway.errors import GatewayError, body_too_large, duplicate_header, unsupported_encoding

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_CT = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> str | None:
    """One request header as text (the first of its name), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def single_header(scope: Scope, name: bytes) -> str | None:
    """A header that must have one value (``authorization``): two different ones are a 400.

    Why: the proxy read the last of them and ``/v1/models`` the first, so ``Bearer bad`` then
    ``Bearer good`` authenticated one route and not the other; a front proxy that checks the first
    would see another caller than the gateway does. Repeats of the same value are harmless."""
    found: bytes | None = None
    for key, value in scope["headers"]:
        if key == name:
            if found is not None and value != found:
                raise duplicate_header(name.decode("latin-1"))
            found = value
    return found.decode("latin-1") if found is not None else None


#: RFC 9110 7.6.1 hop-by-hop fields, plus the obsolete ``proxy-connection``; any ``proxy-*`` field is
#: meant for the proxy too (credentials for us, or a challenge from a proxy in front of the engine).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade"})


def connection_named(values: Iterable[str]) -> frozenset[str]:
    """Header names listed in ``Connection`` values: hop-by-hop for this connection only (RFC 9110 7.6.1)."""
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def hop_by_hop(name: str, named: frozenset[str]) -> bool:
    """Whether a lower-cased header name must not cross the proxy, in either direction."""
    return name in HOP_BY_HOP or name in named or name.startswith("proxy-")


def forward_headers(raw: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]) -> dict[str, str]:
    """The client's headers for the engine: minus ``drop``, hop-by-hop ones and those ``Connection``
    names; repeated fields joined with ``", "`` (RFC 9110 5.3) instead of all but the last one lost."""
    pairs = list(raw)
    named = connection_named(v.decode("latin-1") for k, v in pairs if k == b"connection")
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in drop:
            continue
        name = key.decode("latin-1")
        if hop_by_hop(name, named):
            continue
        text = value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out


def response_hop_names(headers: Mapping[str, str]) -> frozenset[str]:
    """What the engine's ``Connection`` header names (its own hop-by-hop fields, not for our client)."""
    return connection_named(v for k, v in headers.items() if k.lower() == "connection")


def header_map(scope: Scope) -> dict[bytes, bytes]:
    """Lower-cased request headers (ASGI servers already lower-case names); last one wins."""
    return dict(scope["headers"])


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole request body, or 413 as soon as it is known to exceed ``limit`` (415 if compressed)."""
    encoding = headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        raise unsupported_encoding(encoding.decode("latin-1").strip())
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: GatewayError, extra: Headers) -> None:
    await send_bytes(send, error.status, error.body(), [JSON_CT, *extra])
