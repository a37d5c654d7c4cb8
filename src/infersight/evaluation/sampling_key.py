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

import errno
import os
from pathlib import Path
from typing import Any, Protocol

KEY_BYTES = 32
KEY_FILE = "sampling.key"


class SamplingKeyStore(Protocol):
    def get(self) -> bytes:
        """The shared key, made if there is none yet; raises when it cannot be read or made."""
        ...


def _parse(raw: bytes | str | None) -> bytes | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    key = bytes.fromhex(text.strip())  # ValueError on anything else
    if len(key) != KEY_BYTES:
        raise ValueError(f"a sampling key is {KEY_BYTES} bytes, hex-encoded")
    return key


class FileSamplingKey:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def get(self) -> bytes:
        try:
            found = _parse(self.path.read_bytes())
        except FileNotFoundError:
            found = None
        if found is not None:
            return found
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:  # a full disk fails the write: the temporary goes too (one was left at every poll)
            try:
                data = os.urandom(KEY_BYTES).hex().encode()
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write of the sampling key")
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)  # whole or absent: two processes starting at once keep the first
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
        key = _parse(self.path.read_bytes())
        assert key is not None
        return key


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
