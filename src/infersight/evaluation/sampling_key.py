"""The secret the random sampling draw is keyed with, shared by every gateway that decides.

The draw is ``BLAKE2b(trace_id, key) < rate``. Unkeyed, anyone could compute it: a client sets its own
trace id (``traceparent``, ``x-trace-id``), so a tenant could pick ids offline that are always judged
(spending the observability budget, and through the budget breaker lowering every other tenant's
sampling) or never judged (hiding its quality), and the observed rate left its binomial interval.
With a key no client knows, the draw is still deterministic (the same trace is decided the same way
by every gateway, and after a replay) but out of the client's hands.

The key is made once, at random, where the sampling overrides live (``runtime_eval.build_sampler``):
a file under ``storage.path`` for the processes of one host (``--workers N``), a Redis key for
gateways on many hosts. Gateways re-read it with the overrides every second, so one that Redis lost
is made again and every gateway moves to the new one within a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from infersight.keyfile import load_or_create_key, parse_key

KEY_BYTES = 32
KEY_FILE = "sampling.key"


class SamplingKeyStore(Protocol):
    def get(self) -> bytes:
        """The shared key, made if there is none yet; raises when it cannot be read or made."""
        ...


def _parse(raw: bytes | str | None) -> bytes | None:
    return parse_key(raw, KEY_BYTES)


class FileSamplingKey:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def get(self) -> bytes:
        return load_or_create_key(self.path, KEY_BYTES)


class RedisSamplingKey:
    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def get(self) -> bytes:
        found = _parse(self.client.get(self.key))
        if found is not None:
            return found
        self.client.set(self.key, os.urandom(KEY_BYTES).hex(), nx=True)  # the first gateway's stays
        key = _parse(self.client.get(self.key))
        if key is None:
            raise ValueError("the sampling key vanished as it was made")
        return key
