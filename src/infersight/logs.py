"""Structured JSON logs, one object per line on stderr.

Prompt and completion text never reach a log: call sites pass only identity, outcome and timing
fields, and as a second line of defence this formatter drops any extra field whose name suggests
content (prompt, messages, completion, content, text).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_CONTENT_KEYS = frozenset({"prompt", "prompt_text", "messages", "completion", "completion_text", "content", "text", "body"})
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime", "fields", "color_message"}


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
            out.update({k: v for k, v in fields.items() if k not in _CONTENT_KEYS})
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and key not in _CONTENT_KEYS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


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
