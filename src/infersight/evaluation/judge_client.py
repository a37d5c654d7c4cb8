"""The judge's HTTP side: one OpenAI-compatible ``/v1/chat/completions`` call, classified.

Policy (what to retry, how long to wait) lives in ``llm_judge``; this module only sends a request
and sorts the outcome into a reply, a ``TransientError`` (worth retrying: 408, 429, 5xx, timeouts,
dropped connections, a garbled body) or a ``FatalError`` (a 4xx that will fail again). As in httpx,
only the transport does I/O, so another HTTP stack can be dropped in without touching the policy.

Exception tree::

    JudgeCallError
     +-- TransientError        (reason: server_error | rate_limited | timeout | connection)
     +-- FatalError            (reason: http_error)
          +-- ResponseFormatRejected   (the endpoint refuses response_format json_object)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
MAX_REPLY_BYTES = 4 << 20
"""A judge reply is a few kB (``max_tokens`` caps it); a body past this is not read to its end, so an
endpoint that ignores ``max_tokens`` or streams garbage cannot fill the eval process's memory."""


class JudgeCallError(Exception):
    """One failed judge call; ``reason`` is a short closed label (used in metrics)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(JudgeCallError):
    """A failure that may pass: retry after a backoff (``retry_after`` seconds when the server said)."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after


class FatalError(JudgeCallError):
    """A failure that asking again will not fix (bad key, unknown model, bad request)."""


class ResponseFormatRejected(FatalError):
    """HTTP 400 about ``response_format``: the caller may re-ask without JSON mode."""


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The parts of a chat completion the judge uses."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None


class JudgeTransport(Protocol):
    """Sends one POST; raises ``TransientError`` for timeouts and connection failures."""

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes]: ...

    async def aclose(self) -> None: ...


class AiohttpTransport:
    """``JudgeTransport`` over a pooled aiohttp session (created lazily, on the caller's loop)."""

    def __init__(self, session: aiohttp.ClientSession | None = None, pool_size: int = 16) -> None:
        self._session = session
        self._owned = session is None
        self._pool_size = pool_size

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._pool_size))
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                data = await resp.content.read(MAX_REPLY_BYTES + 1)  # up to the limit, then stop
                while len(data) <= MAX_REPLY_BYTES and not resp.content.at_eof():
                    more = await resp.content.read(MAX_REPLY_BYTES + 1 - len(data))
                    if not more:
                        break
                    data += more
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, data
        except asyncio.TimeoutError:
            raise TransientError("timeout", f"no complete reply within {timeout_s:g} s") from None
        except aiohttp.ClientError as e:
            raise TransientError("connection", f"{type(e).__name__}: {e}"[:300]) from None

    async def aclose(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
        self._session = None


class JudgeClient:
    """Posts chat requests to ``{url}/chat/completions`` with a Bearer key; returns ``ChatReply``."""

    def __init__(
        self, url: str, api_key: str | None, transport: JudgeTransport, *,
        timeout_s: float, headers: dict[str, str] | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.transport = transport
        self.timeout_s = timeout_s
        self.headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"

    async def chat(self, payload: dict[str, Any]) -> ChatReply:
        """One call; raises ``TransientError`` or ``FatalError``."""
        status, headers, body = await self.transport.post(
            self.endpoint, self.headers, orjson.dumps(payload), self.timeout_s
        )
        if status != 200:
            raise _status_error(status, headers, body)
        if len(body) > MAX_REPLY_BYTES:
            raise TransientError("server_error", f"HTTP 200 with a body over {MAX_REPLY_BYTES} bytes")
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            content = (choice.get("message") or {}).get("content") or ""
            usage = data.get("usage")
            finish_reason = choice.get("finish_reason")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise TransientError("server_error", "HTTP 200 with a body that is not a chat completion") from None
        if not isinstance(usage, dict):
            usage = {}  # a usage that is not an object ("n/a", a list) raised AttributeError past the judge
        return ChatReply(
            content=content if isinstance(content, str) else str(content),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        )


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _status_error(status: int, headers: dict[str, str], body: bytes) -> JudgeCallError:
    detail = body[:300].decode("utf-8", "replace")
    message = f"HTTP {status} from the judge endpoint: {detail}"
    if status == 429 or status in _TRANSIENT_STATUS or status >= 500:
        retry_after: float | None = None
        try:
            retry_after = float(headers.get("retry-after", ""))
        except ValueError:
            pass
        reason = "rate_limited" if status == 429 else "server_error"
        return TransientError(reason, message, retry_after)
    if status == 400 and b"response_format" in body:
        return ResponseFormatRejected("http_error", message)
    return FatalError("http_error", message)


__all__ = [
    "AiohttpTransport", "ChatReply", "FatalError", "JudgeCallError", "JudgeClient", "JudgeTransport",
    "ResponseFormatRejected", "TransientError",
]
