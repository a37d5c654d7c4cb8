"""A leader lease in Redis: one process among many hosts does a periodic job (retention).

``FileLeader`` (an flock under ``storage.path``) only elects among processes of one host. Ingest
workers on several hosts share one ClickHouse, and each ran the same retention counts and deletes
every hour; with Redis already the bus, a key set with ``NX`` and an expiry is the lease. The
holder renews it on each call; if the holder dies, the key expires and another worker takes over
within ``ttl_s``. If Redis cannot be reached, nobody leads that round (the job is skipped, logged
once per outage): retention is hourly housekeeping, and ClickHouse's TTL forgets on its own.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import redis

log = logging.getLogger("infersight.bus.redis_leader")

# Renew only our own lease: GET and PEXPIRE in one step, so a lease another worker took after ours
# expired is never extended by us.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeader:
    """True in the one process that holds ``key``; call it before each run of the job."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}".encode()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._unreachable = False

    def __call__(self) -> bool:
        try:
            if self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]):
                held = True
            else:
                held = bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))
        except redis.RedisError as exc:
            if not self._unreachable:
                log.warning("leader lease: Redis unreachable; the job is skipped until it is back",
                            extra={"fields": {"key": self.key, "error": type(exc).__name__}})
            self._unreachable = True
            return False
        self._unreachable = False
        return held

    def release(self) -> None:
        """Give the lease up at a clean stop, so another worker need not wait for it to expire."""
        try:
            self._release(keys=[self.key], args=[self.owner])
        except redis.RedisError:
            pass  # it expires by itself
