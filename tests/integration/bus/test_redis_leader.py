"""The retention lease in Redis: one ingest worker among hosts runs retention (real redis-server)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from infersight.bus.redis_conn import connect
from infersight.bus.redis_leader import RedisLeader
from infersight.config import settings_from_dict
from infersight.ingest.worker import retention_leader
from infersight.retention import RetentionLoop
from infersight.store.base import RetentionPolicy
from tests.conftest import config_dict
from tests.redis_server import RedisServer


def test_one_holder_at_a_time_and_the_holder_keeps_it(redis_server: RedisServer) -> None:
    a = RedisLeader(connect(redis_server.url), "s:retention-leader", ttl_s=30)
    b = RedisLeader(connect(redis_server.url), "s:retention-leader", ttl_s=30)
    assert a() is True
    assert b() is False
    assert a() is True  # renewed, not lost to b
    assert b() is False


def test_a_dead_holders_lease_expires_and_another_takes_over(redis_server: RedisServer) -> None:
    a = RedisLeader(connect(redis_server.url), "s:retention-leader", ttl_s=0.3)
    b = RedisLeader(connect(redis_server.url), "s:retention-leader", ttl_s=0.3)
    assert a() is True and b() is False
    time.sleep(0.5)  # a stopped renewing (it died)
    assert b() is True
    assert a() is False  # a's renewal does not take back b's lease


def test_release_lets_the_next_worker_lead_at_once(redis_server: RedisServer) -> None:
    a = RedisLeader(connect(redis_server.url), "s:retention-leader", ttl_s=60)
    b = RedisLeader(connect(redis_server.url), "s:retention-leader", ttl_s=60)
    assert a() is True
    b.release()  # not b's lease: nothing happens
    assert b() is False
    a.release()
    assert b() is True


def test_redis_down_means_nobody_leads_and_it_comes_back(redis_server: RedisServer) -> None:
    leader = RedisLeader(connect(redis_server.url, socket_timeout=1.0), "s:retention-leader", ttl_s=60)
    redis_server.stop()
    assert leader() is False  # no exception reaches the retention thread
    redis_server.start()
    assert leader() is True


class CountingStore:
    def __init__(self) -> None:
        self.runs = 0

    def apply_retention(self, now: datetime, policy: RetentionPolicy) -> dict[str, Any]:
        self.runs += 1
        return {}


def test_ingest_workers_share_one_retention_lease(redis_server: RedisServer, tmp_path: Path) -> None:
    """Before: every `infersight ingest` worker ran retention at start and every hour, on one shared
    store. Now the workers of one bus stream elect one through Redis."""
    settings = settings_from_dict(config_dict(tmp_path, bus={"backend": "redis", "url": redis_server.url,
                                                                   "stream": "prod"}))
    stores = [CountingStore(), CountingStore(), CountingStore()]
    loops = [RetentionLoop(s, RetentionPolicy(), leader=retention_leader(settings)) for s in stores]  # type: ignore[arg-type]
    for loop in loops:
        loop._scheduled()
    assert sorted(s.runs for s in stores) == [0, 0, 1]
    assert connect(redis_server.url).pttl(b"prod:retention-leader") > 3_600_000  # outlives one interval
