"""A sink that says it is down (``SinkUnavailable``, the eval sink while its judge is away) gets the
embedded bus's treatment from the Redis consumer too: the batch is held and retried with backoff,
never bisected into dead letters, and no delivery is counted against its records, however long
the outage lasts; once the sink is back every record is written once."""

from __future__ import annotations

from collections.abc import Callable

import redis

from infersight.bus.base import SinkUnavailable
from infersight.bus.redis_streams import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM, RedisStreamExporter
from infersight.model import RequestRecord
from tests.integration.bus.conftest import DictSink, Running, wait_until
from tests.redis_server import RedisServer
from tests.unit.bus.helpers import index_of, make_record

S, DEAD = DEFAULT_STREAM, DEFAULT_DEAD_LETTER_STREAM
AWAY = {2, 5, 9}  # the records the missing judge would score; the others need no judge


class JudgedSink(DictSink):
    """Raises ``SinkUnavailable`` for a batch holding a record that needs the judge while it is away."""

    def __init__(self) -> None:
        super().__init__()
        self.away = True
        self.unavailable = 0

    def __call__(self, batch: list[RequestRecord]) -> None:
        if self.away and any(index_of(r) in AWAY for r in batch):
            with self.lock:
                self.calls.append(len(batch))
                self.unavailable += 1
            raise SinkUnavailable("judge unavailable: timeout")
        super().__call__(batch)


def test_a_sink_that_says_it_is_down_is_held_not_dead_lettered(
    redis_server: RedisServer, run_consumer: Callable[..., Running]
) -> None:
    r = redis.Redis.from_url(redis_server.url, protocol=2)
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(12)])
    sink = JudgedSink()
    run_consumer(redis_server.url, sink, max_deliveries=2, max_backoff_s=0.05, batch_size=50)
    # far more rounds than max_deliveries: a bisecting consumer would have dead-lettered AWAY by now
    wait_until(lambda: sink.unavailable >= 12, what="the held batch retried many times")
    assert r.xlen(DEAD) == 0
    assert len(sink) == 0  # held whole: not bisected into parts (the others wait with it)
    assert set(sink.calls) == {12}
    pending = r.xpending_range(S, "ingest", "-", "+", 100)
    assert len(pending) == 12 and all(p["times_delivered"] == 1 for p in pending)  # nothing counted
    sink.away = False  # the judge is back
    wait_until(lambda: len(sink) == 12, what="every record written")
    wait_until(lambda: int(r.xpending(S, "ingest")["pending"]) == 0, what="acks")
    assert r.xlen(DEAD) == 0 and sink.writes == 12
