"""The eval breaker's scale-out signals on a real Redis: the eval stream's lag and the shared spend."""

from __future__ import annotations

import time

import redis

from infersight.evaluation.breaker import period_start
from infersight.evaluation.eval_health import RedisSpend, RedisStreamLag
from tests.redis_server import RedisServer

STREAM, GROUP = "infersight:evals", "infersight-eval"


def add(client: redis.Redis, ms: int) -> str:
    return client.xadd(STREAM, {"r": b"{}"}, id=f"{ms}-0").decode()  # type: ignore[union-attr]


def test_lag_is_the_age_of_the_oldest_unread_or_unacknowledged_task(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    lag = RedisStreamLag(client, STREAM, GROUP)
    now = time.time()
    assert lag.oldest_age_s(now) is None  # no stream: nothing was published
    base = int(now * 1000)
    first = add(client, base - 600_000)  # 10 min old
    add(client, base - 60_000)
    add(client, base - 5_000)
    assert abs(lag.oldest_age_s(now) - 600.0) < 0.01  # type: ignore[operator]  # no group yet: all wait
    client.xgroup_create(STREAM, GROUP, id="0")
    got = client.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=2)  # two delivered, pending
    ids = [entry_id for entry_id, _ in got[0][1]]  # type: ignore[index]
    assert abs(lag.oldest_age_s(now) - 600.0) < 0.01  # type: ignore[operator]  # the oldest is pending
    client.xack(STREAM, GROUP, first)
    assert abs(lag.oldest_age_s(now) - 60.0) < 0.01  # type: ignore[operator]  # next pending
    client.xack(STREAM, GROUP, ids[1])
    assert abs(lag.oldest_age_s(now) - 5.0) < 0.01  # type: ignore[operator]  # never read yet
    client.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=10)
    client.xack(STREAM, GROUP, f"{base - 5_000}-0")
    assert lag.oldest_age_s(now) is None  # all evaluated


def test_spend_is_shared_per_period_by_workers_and_gateways(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    worker_a = RedisSpend(client, f"{STREAM}:spend", "day")
    worker_b = RedisSpend(redis.Redis.from_url(redis_server.url), f"{STREAM}:spend", "day")
    gateway = RedisSpend(redis.Redis.from_url(redis_server.url), f"{STREAM}:spend", "day")
    today = period_start(time.time(), "day")
    assert gateway.spend(today) == 0.0

    worker_a.paid({("t1", "s"): 0.5, ("t2", "s"): 0.0})
    worker_b.paid({("t3", "s"): 0.25})
    assert abs(gateway.spend(today) - 0.75) < 1e-9
    assert gateway.spend(period_start(time.time() - 86_400, "day")) == 0.0  # yesterday's counter is apart
    key = f"{STREAM}:spend:{today.strftime('%Y-%m-%d')}"
    assert 0 < client.ttl(key) <= 40 * 86_400  # type: ignore[operator]  # counters expire by themselves
    monthly = RedisSpend(client, f"{STREAM}:spend", "month")
    month = period_start(time.time(), "month")
    client.set(f"{STREAM}:spend:{month.strftime('%Y-%m-%d')}", 5.0)  # the 1st's daily counter
    assert monthly.spend(month) == 0.0  # is not the month's (same period start, other period)
    monthly.paid({("t4", "s"): 2.0})
    assert abs(monthly.spend(month) - 2.0) < 1e-9 and client.exists(f"{STREAM}:spend:{month.strftime('%Y-%m')}")
