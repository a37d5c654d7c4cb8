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
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
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

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(reason, message)
        self.status = status


class ResponseFormatRejected(FatalError):
    """HTTP 400 or 422 about ``response_format`` (TGI answers 422): the caller may re-ask without
    JSON mode."""


class GenerationRejected(FatalError):
    """The endpoint generated a reply and refused it itself (Groq's 400 ``json_validate_failed``:
    not valid JSON in JSON mode): an invalid reply, which the caller re-asks within its retries."""


def config_hint(status: int | None) -> str | None:
    """What an HTTP refusal from the judge endpoint says about the config: the ``_error`` row's
    explanation and the log line (fixed text: a server's body may quote the request)."""
    if status in (401, 403):
        return (f"HTTP {status}: the judge endpoint refused the key; check evaluation.judge.api_key_env "
                "and the variable it names")
    if status == 404:
        return ("HTTP 404: the judge endpoint has no such model or path; check evaluation.judge.model "
                "and evaluation.judge.url")
    if status is not None:
        return f"HTTP {status}: the judge endpoint refused the request"
    return None


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The parts of a chat completion the judge uses."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    usage_reported: bool = True  # False: no usable token counts, so this call's cost is unknown


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
        self._api_key = api_key
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
            if isinstance(data, dict) and "choices" not in data and isinstance(data.get("error"), dict):
                raise _error_object(data["error"])
            choice = data["choices"][0]
            content = _text_of((choice.get("message") or {}).get("content"))
            usage = data.get("usage")
            finish_reason = choice.get("finish_reason")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise TransientError("server_error", "HTTP 200 with a body that is not a chat completion") from None
        if not isinstance(usage, dict):
            usage = {}  # a usage that is not an object ("n/a", a list) raised AttributeError past the judge
        prompt, completion = _usage_counts(usage)
        return ChatReply(
            content=content,
            prompt_tokens=prompt or 0,
            completion_tokens=completion or 0,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            usage_reported=prompt is not None and completion is not None,
        )


def _text_of(content: Any) -> str:
    """A message's text: a string, or the ``text`` of a list of typed parts (Mistral's reasoning
    models send a ``thinking`` part, then a ``text`` one); its Python repr never parsed."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text"
                       and isinstance(part.get("text"), str))
    return ""


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _usage_counts(usage: dict[str, Any]) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens; a part that is missing is ``total_tokens`` minus the other.

    Some servers send only ``prompt_tokens`` and ``total_tokens``: reading the missing part as 0
    priced the judge's output at nothing.
    """
    prompt, completion, total = (_int(usage.get(k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if total is not None:
        if completion is None and prompt is not None and total >= prompt:
            completion = total - prompt
        elif prompt is None and completion is not None and total >= completion:
            prompt = total - completion
    return prompt, completion


def _retry_after(headers: dict[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``retry-after`` as delta-seconds
    or an HTTP-date (RFC 9110); None when absent or unreadable. The caller caps it."""
    try:
        if "retry-after-ms" in headers:
            value = float(headers["retry-after-ms"]) / 1000.0
            return value if math.isfinite(value) else None
    except ValueError:
        pass
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max((moment - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _status_error(status: int, headers: dict[str, str], body: bytes) -> JudgeCallError:
    """The error of a non-200 answer. Its message names the status and the error's type and code,
    never the body's text: a server's error message may quote the request (the prompt, the answer),
    and ``eval calibrate`` and ``eval compare`` print these messages."""
    message = f"HTTP {status} from the judge endpoint{_error_kind(body)}"
    if status == 429 or status in _TRANSIENT_STATUS or status >= 500:
        reason = "rate_limited" if status == 429 else "server_error"
        return TransientError(reason, message, _retry_after(headers))
    if status in (400, 422) and b"response_format" in body:
        return ResponseFormatRejected("http_error", message, status)
    if status == 400 and b"json_validate_failed" in body:
        return GenerationRejected("invalid_reply", message, status)
    return FatalError("http_error", message, status)


def _error_object(error: dict[str, Any]) -> TransientError:
    """An OpenAI error object in a 200 body (some proxies answer so): retried, named by its type and
    code (not its message, which may quote the request)."""
    label = f"{error.get('type') or ''} {error.get('code') or ''}".lower()
    reason = "rate_limited" if "rate_limit" in label or "429" in label else "server_error"
    kinds = [k for k in (_identifier(error.get("type")), _identifier(error.get("code"))) if k]
    return TransientError(reason, f"HTTP 200 with an error object ({' / '.join(kinds) or 'no type'})")


_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _identifier(value: Any) -> str | None:
    """An error type or code that is an identifier (``invalid_request_error``, ``429``), not prose."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return text if _IDENTIFIER.fullmatch(text) else None


def _error_kind(body: bytes) -> str:
    """`` (type / code)`` of an OpenAI-shaped error body, when it has them; else nothing."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    kinds = [k for k in (_identifier(error.get("type")), _identifier(error.get("code"))) if k]
    return f" ({' / '.join(kinds)})" if kinds else ""


__all__ = [
    "AiohttpTransport", "ChatReply", "FatalError", "GenerationRejected", "JudgeCallError", "JudgeClient",
    "JudgeTransport", "ResponseFormatRejected", "TransientError", "config_hint",
]
