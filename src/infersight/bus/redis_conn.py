"""What the Redis producer and consumer share: stream names, the wire format, the client settings.

One stream entry is one record: a single field ``r`` holding the orjson of ``RequestRecord`` (the
same keys as ``to_dict``). One field keeps XADD cheap and lets readers ignore fields they do not
know; ``from_dict`` already ignores unknown keys, so older consumers survive newer producers.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from infersight.model import RequestRecord

DEFAULT_STREAM = "infersight:requests"
DEAD_LETTER_SUFFIX = ":dead"
DEFAULT_DEAD_LETTER_STREAM = DEFAULT_STREAM + DEAD_LETTER_SUFFIX
FIELD = b"r"


def connect(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A binary-safe RESP2 client that fails fast: the bus and consumer own the retry policy.

    One immediate retry covers a pooled connection that went stale when Redis restarted.
    """
    return redis.Redis.from_url(
        url,
        protocol=2,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


def encode(record: Any) -> bytes:
    return orjson.dumps(record)


class PoisonMessage(ValueError):
    """A stream entry that is not a record. The message is safe to log: it never quotes content."""


def decode(fields: dict[Any, Any] | None, record_type: type[Any] = RequestRecord) -> Any:
    """Rebuild a record (or another bus payload with ``from_dict``, e.g. an EvalTask) from a stream
    entry; raises PoisonMessage when it is not one."""
    raw = (fields or {}).get(FIELD, (fields or {}).get("r"))
    if raw is None:
        raise PoisonMessage("no 'r' field")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(data, dict):
        raise PoisonMessage("not a JSON object")
    identity = getattr(record_type, "IDENTITY", ("trace_id", "span_id"))  # TelemetrySample: ts, source, ...
    if not all(isinstance(data.get(name), str) for name in identity):
        raise PoisonMessage(f"no {'/'.join(identity)} strings: the store could not write it idempotently")
    try:
        return record_type.from_dict(data)
    except TypeError:
        raise PoisonMessage("required record fields missing") from None
