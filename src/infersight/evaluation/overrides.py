"""Where run-time sampling overrides live, so that every gateway process sees an admin change.

- ``FileOverrides``: one small JSON file under ``storage.path`` (written atomically): every process on
  a host, e.g. ``--workers N``, sees a change.
- ``RedisOverrides``: one Redis key (``bus.backend: redis``): every gateway on every host sees it.

Both are read by the sampler's poller thread (``Sampler.start``), never on the request path, and
written by the admin API. Concurrent admin writes are last-writer-wins (admin changes are rare).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson


@dataclass
class Overrides:
    """Run-time changes on top of config: rates per tenant and forced windows (epoch deadlines)."""

    rates: dict[str, float] = field(default_factory=dict)
    forced: dict[str, float] = field(default_factory=dict)  # tenant or "*" -> deadline (epoch seconds)

    def to_json(self) -> bytes:
        return orjson.dumps({"rates": self.rates, "forced": self.forced})

    @classmethod
    def from_json(cls, raw: bytes) -> Overrides:
        data = orjson.loads(raw) if raw.strip() else {}
        rates = {str(k): float(v) for k, v in (data.get("rates") or {}).items()}
        forced = {str(k): float(v) for k, v in (data.get("forced") or {}).items()}
        return cls(rates, forced)


class OverrideStore(Protocol):
    def load(self) -> Overrides | None:
        """The stored overrides; None when there are none yet. May raise on I/O errors."""
        ...

    def save(self, overrides: Overrides) -> None: ...


class FileOverrides:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> Overrides | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return Overrides.from_json(raw)

    def save(self, overrides: Overrides) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(overrides.to_json())
        os.replace(tmp, self.path)


class RedisOverrides:
    def __init__(self, client: Any, key: str = "infersight:sampling-overrides") -> None:
        self.client = client  # a redis.Redis (bus.redis_conn.connect)
        self.key = key

    def load(self) -> Overrides | None:
        raw = self.client.get(self.key)
        return None if raw is None else Overrides.from_json(raw)

    def save(self, overrides: Overrides) -> None:
        self.client.set(self.key, overrides.to_json())
