"""Where run-time sampling overrides live, so that every gateway process sees an admin change.

- ``FileOverrides``: one small JSON file under ``storage.path`` (written atomically): every process on
  a host, e.g. ``--workers N``, sees a change.
- ``RedisOverrides``: one Redis key (``bus.backend: redis``): every gateway on every host sees it.

Both are read by the sampler's poller thread (``Sampler.start``), never on the request path, and
written by the admin API through ``update``: read, change and write as one step (an flock on the
file, a WATCH transaction on the key), so two admin calls that reach two workers at once both take
effect. (They used to read, change and save independently, so one could undo the other's change
to another tenant.)
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger("infersight.evaluation.overrides")


@dataclass
class Overrides:
    """Run-time changes on top of config: rates per tenant and forced windows (epoch deadlines)."""

    rates: dict[str, float] = field(default_factory=dict)
    forced: dict[str, float] = field(default_factory=dict)  # tenant or "*" -> deadline (epoch seconds)

    def to_json(self) -> bytes:
        return orjson.dumps({"rates": self.rates, "forced": self.forced})

    @classmethod
    def from_json(cls, raw: bytes) -> Overrides:
        """Parse and validate; ``ValueError`` on anything the admin API could not have written.

        Why strict: the file (or key) is shared state that anything may have written or cut short,
        and the sampler keeps the last good overrides when this raises. Before, ``true`` or ``"1"``
        became a 100% rate, ``7`` or ``"nan"`` were kept as rates, a deadline of ``1e300`` forced
        sampling for ever (and made ``GET /api/v1/admin/sampling`` a 500), and an empty file (one
        cut off mid-write) silently dropped every override.
        """
        if not raw.strip():
            raise ValueError("empty overrides (a write cut short?)")
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("overrides must be a JSON object")
        rates = _numbers(data.get("rates"), "rates", 0.0, 1.0)
        forced = _numbers(data.get("forced"), "forced", 0.0, MAX_DEADLINE)
        return cls(rates, forced)


MAX_DEADLINE = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the last epoch second a ``datetime`` (and so the admin API) can show."""


def _numbers(value: Any, name: str, low: float, high: float) -> dict[str, float]:
    """``{str: number}`` with every number finite and within [low, high]; else ``ValueError``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"'{name}' must be an object")
    out: dict[str, float] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number <= high:
            raise ValueError(f"'{name}' values must be numbers within [{low:g}, {high:g}]")
        out[str(key)] = float(number)
    return out


class OverridesUnavailable(Exception):
    """The shared store could not be read or written (disk full, read-only volume, Redis down):
    nothing was changed. The admin API answers 503, not a bare 500."""


class OverrideStore(Protocol):
    def load(self) -> Overrides | None:
        """The stored overrides; None when there are none yet. May raise on I/O errors."""
        ...

    def save(self, overrides: Overrides) -> None: ...

    def update(self, change: Callable[[Overrides], None], fallback: Overrides) -> Overrides:
        """Apply ``change`` to the stored overrides and store the result, atomically; returns it.
        ``fallback`` (the caller's last good copy) stands in for stored overrides that cannot be read."""
        ...


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

    def update(self, change: Callable[[Overrides], None], fallback: Overrides) -> Overrides:
        """Under an flock on ``<file>.lock``, so the processes of a host change it one at a time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OverridesUnavailable(type(exc).__name__) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            overrides, unreadable = _readable(self.load, fallback)
            if unreadable:  # kept for whoever repairs it; the admin's change is written over it
                aside = self.path.with_name(f"{self.path.name}.unreadable-{_stamp()}")
                os.replace(self.path, aside)
                log.warning("unreadable sampling overrides file kept aside; rewritten from the last good overrides",
                            extra={"fields": {"kept_at": str(aside)}})
            change(overrides)
            self.save(overrides)
            return overrides
        except OSError as exc:
            raise OverridesUnavailable(type(exc).__name__) from exc
        finally:
            os.close(fd)  # releases the lock


class RedisOverrides:
    def __init__(self, client: Any, key: str = "infersight:sampling-overrides") -> None:
        self.client = client  # a redis.Redis (bus.redis_conn.connect)
        self.key = key

    def load(self) -> Overrides | None:
        raw = self.client.get(self.key)
        return None if raw is None else Overrides.from_json(raw)

    def save(self, overrides: Overrides) -> None:
        self.client.set(self.key, overrides.to_json())

    def update(self, change: Callable[[Overrides], None], fallback: Overrides) -> Overrides:
        """In a WATCH transaction: redone if another gateway wrote the key meanwhile."""
        result: list[Overrides] = []

        def attempt(pipe: Any) -> None:
            raw = pipe.get(self.key)
            overrides, unreadable = _readable(lambda: None if raw is None else Overrides.from_json(raw), fallback)
            change(overrides)
            pipe.multi()
            if unreadable:  # kept for whoever repairs it, as the file is
                pipe.set(f"{self.key}:unreadable-{_stamp()}", raw)
            pipe.set(self.key, overrides.to_json())
            result[:] = [overrides]

        try:
            self.client.transaction(attempt, self.key)
        except Exception as exc:  # noqa: BLE001 - redis' errors (connection, timeout, ...) share no OS base
            raise OverridesUnavailable(type(exc).__name__) from exc
        return result[0]


def _readable(load: Callable[[], Overrides | None], fallback: Overrides) -> tuple[Overrides, bool]:
    """The stored overrides; missing or unreadable ones (cut short, hand-edited) as a copy of
    ``fallback``: the admin's change is then written over them. True when they were unreadable: the
    caller keeps them aside first, since a gateway that started on them had no good copy to fall back
    on, and whatever they held would otherwise be gone.

    Missing too, as the poller reads it: it keeps the last overrides when the file or key is gone
    (a Redis restarted without its data), and a write used to start from nothing instead, so changing
    one tenant silently reset every other tenant's override. Before any overrides, fallback is empty."""
    try:
        loaded = load()
    except ValueError:
        return Overrides(dict(fallback.rates), dict(fallback.forced)), True
    return (loaded if loaded is not None else Overrides(dict(fallback.rates), dict(fallback.forced))), False


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
