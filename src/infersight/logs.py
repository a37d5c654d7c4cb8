"""Structured JSON logs, one object per line on stderr.

Prompt and completion text never reach a log: call sites pass only identity, outcome and timing
fields, and as a second line of defence this formatter
- drops any extra field whose name suggests content (prompt, messages, completion, content, text,
  reference, explanation, ...), at any depth: an eval task or a body passed whole under ``fields``
  loses its text, not its identity;
- writes an exception's traceback (frames and types) without its message, except for OS errors
  (errno, file name): a message can quote what failed, and pydantic's quotes the value it refused,
  an engine's 400 body the prompt, a DuckDB conversion error the value. This covers every
  ``log.exception`` of ours and of uvicorn ("Exception in ASGI application").
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

_CONTENT_KEYS = frozenset({
    "prompt", "prompt_text", "messages", "completion", "completion_text", "content", "text", "body",
    "reference", "reference_text", "explanation", "raw", "input", "choices", "delta", "arguments",
})
_MAX_DEPTH = 8  # nested extras deeper than this are left out whole
_KEEP_MESSAGE: tuple[type[BaseException], ...] = (OSError,)  # errno, strerror and file name: no content
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime", "fields", "color_message"}


def safe_url(url: str | None) -> str | None:
    """A URL fit for a log line: without the user and password it may carry (a judge or collector
    URL with Basic auth) and without its query (where some services take a key)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(_scrub(fields, 0))
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not _is_content(key) and not key.startswith("_"):
                out[key] = _scrub(value, 1)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging.Formatter's name
        """The traceback, frames and types, with messages withheld (see the module docstring)."""
        _, exc, _ = ei
        if not isinstance(exc, BaseException):
            return ""
        return "".join(_exception_lines(exc, set()))


def _is_content(key: object) -> bool:
    return isinstance(key, str) and key.lower() in _CONTENT_KEYS


def _scrub(value: Any, depth: int) -> Any:
    """``value`` without content-named keys in any dict inside it (lists and tuples included)."""
    if depth > _MAX_DEPTH and isinstance(value, (dict, list, tuple)):
        return "(nested too deep; left out)"
    if isinstance(value, dict):
        return {k: _scrub(v, depth + 1) for k, v in value.items() if not _is_content(k)}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, depth + 1) for v in value]
    return value


def _exception_lines(exc: BaseException, seen: set[int]) -> list[str]:
    """Like ``traceback.format_exception`` (causes and contexts first), each message replaced."""
    seen.add(id(exc))
    lines: list[str] = []
    if exc.__cause__ is not None and id(exc.__cause__) not in seen:
        lines += _exception_lines(exc.__cause__, seen)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif exc.__context__ is not None and not exc.__suppress_context__ and id(exc.__context__) not in seen:
        lines += _exception_lines(exc.__context__, seen)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    tb: TracebackType | None = exc.__traceback__
    if tb is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_tb(tb)
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(exc, _KEEP_MESSAGE):
        lines.append(f"{name}: {exc}\n")
    else:
        lines.append(f"{name}: (message withheld: {len(_safe_str(exc))} characters)\n")
    return lines


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the log line
        return ""


def configure_logging(level: str = "info", stream: Any = None) -> None:
    """Route infersight's and uvicorn's loggers through one JSON handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
