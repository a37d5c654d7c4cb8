"""The Redis Streams bus against a real redis-server: groups, acks, claims, dead letters, restarts."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis

from infersight.bus.redis_streams import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM, RedisStreamBus, RedisStreamExporter
from infersight.model import RequestRecord
from tests.integration.bus.conftest import DictSink, wait_until
from tests.redis_server import RedisServer
from tests.unit.bus.helpers import SECRET, index_of, make_record


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, protocol=2)


def pending(server: RedisServer, group: str = "ingest") -> int:
    return int(client(server).xpending(DEFAULT_STREAM, group)["pending"])


def dead_letters(server: RedisServer) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client(server).xrange(DEFAULT_DEAD_LETTER_STREAM)]


def test_publish_consume_ack(redis_server: RedisServer, run_consumer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bus = RedisStreamBus(redis_server.url, journal_dir=tmp_path / "journal", batch_size=100)
    bus.start()
    sink = DictSink()
    consumer = run_consumer(redis_server.url, sink).consumer
    for i in range(500):
        bus.publish(make_record(i))
    assert bus.flush(10)
    bus.stop()
    wait_until(lambda: len(sink) == 500, what="500 records in the sink")
    wait_until(lambda: consumer.stats().delivered == 500, what="acks")
    assert pending(redis_server) == 0 and client(redis_server).xlen(DEFAULT_STREAM) == 500
    assert sorted(index_of(r) for r in sink.rows.values()) == list(range(500))
    assert sink.rows[(make_record(7).trace_id, make_record(7).span_id)] == make_record(7)  # every field survives
    assert bus.stats().delivered == 500 and list((tmp_path / "journal").rglob("journal-*")) == []


def test_a_dead_consumers_messages_are_claimed_by_another(redis_server: RedisServer, run_consumer) -> None:  # type: ignore[no-untyped-def]
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(20)])
    r = client(redis_server)
    r.xgroup_create(DEFAULT_STREAM, "ingest", id="0")
    taken = r.xreadgroup("ingest", "dead", {DEFAULT_STREAM: ">"}, count=20)  # read, then "crash": no ack
    assert len(taken[0][1]) == 20
    sink = DictSink()
    consumer = run_consumer(redis_server.url, sink, claim_idle_ms=200).consumer
    wait_until(lambda: len(sink) == 20, what="claimed records delivered")
    wait_until(lambda: pending(redis_server) == 0, what="acks")
    assert consumer.stats().claimed == 20 and consumer.stats().dead_lettered == 0


def test_a_restarted_consumer_rereads_its_own_pending_entries_at_once(redis_server: RedisServer, run_consumer) -> None:  # type: ignore[no-untyped-def]
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(5)])
    r = client(redis_server)
    r.xgroup_create(DEFAULT_STREAM, "ingest", id="0")
    r.xreadgroup("ingest", "c0", {DEFAULT_STREAM: ">"}, count=5)  # c0 took them, then died
    sink = DictSink()
    run_consumer(redis_server.url, sink, consumer="c0", claim_idle_ms=60_000)
    wait_until(lambda: len(sink) == 5, timeout_s=3, what="own pending entries re-read")
    wait_until(lambda: pending(redis_server) == 0, what="acks")


def test_poison_messages_go_to_the_dead_letter_stream_and_the_rest_flows(
    redis_server: RedisServer,
    run_consumer,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    r = client(redis_server)
    poison = [
        {"r": b'{"trace_id": "1", "prompt_text": "' + SECRET.encode() + b'" oops'},
        {"other": b"field"},
        {"r": orjson.dumps({"tenant_id": "acme"})},
        {"r": b"[1, 2, 3]"},
    ]
    exporter = RedisStreamExporter(redis_server.url)
    exporter.export([make_record(i) for i in range(5)])
    for fields in poison:
        r.xadd(DEFAULT_STREAM, fields)  # type: ignore[arg-type]
    exporter.export([make_record(i) for i in range(5, 10)])
    sink = DictSink()
    with caplog.at_level(logging.ERROR, logger="infersight.bus.redis"):
        consumer = run_consumer(redis_server.url, sink).consumer
        wait_until(lambda: len(sink) == 10 and consumer.stats().dead_lettered == 4, what="good ones + dead letters")
        wait_until(lambda: pending(redis_server) == 0, what="acks")
    dead = dead_letters(redis_server)
    assert [d[b"reason"].split(b":")[0] for d in dead] == [b"undecodable"] * 4
    assert dead[0][b"field:r"] == poison[0]["r"] and dead[1][b"field:other"] == b"field"  # kept intact
    assert dead[0][b"source_stream"] == DEFAULT_STREAM.encode() and dead[0][b"deliveries"] == b"1"
    lines = [rec for rec in caplog.records if rec.getMessage() == "message moved to the dead-letter stream"]
    assert len(lines) == 4 and all(getattr(rec, "reason", "").startswith("undecodable") for rec in lines)
    assert SECRET not in caplog.text and all(SECRET not in str(vars(rec)) for rec in caplog.records)


def test_records_the_sink_keeps_refusing_are_dead_lettered_after_max_deliveries(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
) -> None:
    bad = {3, 7, 20}
    records = [make_record(i, tenant="poison" if i in bad else "acme") for i in range(30)]
    RedisStreamExporter(redis_server.url).export(records)
    sink = DictSink(fail=lambda batch: any(r.tenant_id == "poison" for r in batch))
    consumer = run_consumer(redis_server.url, sink, max_deliveries=3, batch_size=30).consumer
    wait_until(lambda: consumer.stats().dead_lettered == 3, what="the poison records dead-lettered")
    wait_until(lambda: pending(redis_server) == 0, what="acks")
    assert sorted(index_of(r) for r in sink.rows.values()) == [i for i in range(30) if i not in bad]
    dead = dead_letters(redis_server)
    assert sorted(index_of(RequestRecord.from_dict(orjson.loads(d[b"field:r"]))) for d in dead) == sorted(bad)
    assert {d[b"deliveries"] for d in dead} == {b"3"}
    assert all(d[b"reason"].startswith(b"sink failed on it 3 times") for d in dead)


def _over_deliver(server: RedisServer, records: list[RequestRecord], times: int) -> list[bytes]:
    """Publish ``records`` and have ``times`` consumers take them and die (each took the batch)."""
    RedisStreamExporter(server.url).export(records)
    r = client(server)
    r.xgroup_create(DEFAULT_STREAM, "ingest", id="0")
    ((_, entries),) = r.xreadgroup("ingest", "victim", {DEFAULT_STREAM: ">"}, count=len(records))
    ids = [mid for mid, _ in entries]
    for n in range(times - 1):
        r.xclaim(DEFAULT_STREAM, "ingest", f"victim{n}", 0, ids)
    return ids


def test_a_message_that_kills_its_consumer_alone_is_dead_lettered_alone(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
) -> None:
    """A batch taken by 6 consumers that all died: each message gets one more delivery, alone. The
    one a consumer died delivering alone (it is still in the last-chance set) is dead-lettered, and
    its batch-mates go through (they used to be dead-lettered with it: the count rose for all)."""
    ids = _over_deliver(redis_server, [make_record(i) for i in range(3)], times=6)
    client(redis_server).sadd(f"{DEFAULT_STREAM}:ingest:last-chance", ids[1])  # died on it, alone
    sink = DictSink()
    consumer = run_consumer(redis_server.url, sink, max_deliveries=5, claim_idle_ms=50).consumer
    wait_until(lambda: consumer.stats().dead_lettered == 1 and len(sink) == 2, what="dead letter")
    wait_until(lambda: pending(redis_server) == 0, what="acks")
    assert sorted(index_of(r) for r in sink.rows.values()) == [0, 2] and sink.calls == [1, 1]
    (dead,) = dead_letters(redis_server)
    assert dead[b"source_id"] == ids[1]
    assert dead[b"reason"] == b"delivered 7 times (max_deliveries 5); a consumer died while it was delivered alone"
    assert client(redis_server).scard(f"{DEFAULT_STREAM}:ingest:last-chance") == 0


def test_over_delivered_messages_the_sink_refuses_alone_are_dead_lettered(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
) -> None:
    ids = _over_deliver(redis_server, [make_record(i, tenant="poison" if i == 0 else "acme") for i in range(3)], 6)
    RedisStreamExporter(redis_server.url).export([make_record(9)])  # the probe's record-to-be
    sink = DictSink(fail=lambda batch: any(r.tenant_id == "poison" for r in batch))
    consumer = run_consumer(redis_server.url, sink, max_deliveries=5, claim_idle_ms=50).consumer
    wait_until(lambda: consumer.stats().dead_lettered == 1 and len(sink) == 3, what="dead letter")
    (dead,) = dead_letters(redis_server)
    assert dead[b"source_id"] == ids[0] and dead[b"reason"].endswith(b"it failed again alone")


def test_over_delivered_messages_are_held_not_dead_lettered_while_the_sink_is_down(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
) -> None:
    """Workers restarted during a store outage raise every count: that is no reason to dead-letter."""
    down = threading.Event()
    down.set()
    _over_deliver(redis_server, [make_record(i) for i in range(3)], times=6)
    sink = DictSink(fail=lambda batch: down.is_set())
    consumer = run_consumer(redis_server.url, sink, max_deliveries=5, claim_idle_ms=50, max_backoff_s=0.05).consumer
    wait_until(lambda: consumer.stats().sink_failures >= 10, what="failures while down")
    assert consumer.stats().dead_lettered == 0
    down.clear()
    wait_until(lambda: len(sink) == 3 and pending(redis_server) == 0, what="delivered after the outage")
    assert consumer.stats().dead_lettered == 0 and dead_letters(redis_server) == []


def test_a_sink_outage_dead_letters_nothing(redis_server: RedisServer, run_consumer) -> None:  # type: ignore[no-untyped-def]
    down = threading.Event()
    down.set()
    sink = DictSink(fail=lambda batch: down.is_set())
    consumer = run_consumer(redis_server.url, sink, max_deliveries=2, batch_size=50, claim_idle_ms=300).consumer
    other = run_consumer(redis_server.url, DictSink(fail=lambda batch: down.is_set()), claim_idle_ms=300).consumer
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(200)])
    wait_until(lambda: consumer.stats().sink_failures + other.stats().sink_failures > 10, what="failures")
    time.sleep(0.8)  # longer than claim_idle_ms: held batches must not be stolen and counted
    down.clear()
    wait_until(lambda: pending(redis_server) == 0 and client(redis_server).xlen(DEFAULT_STREAM) == 200, what="drain")
    assert consumer.stats().dead_lettered == other.stats().dead_lettered == 0
    assert consumer.stats().claimed == other.stats().claimed == 0  # held batches were kept fresh
    assert consumer.stats().delivered + other.stats().delivered == 200


def test_an_outage_that_starts_during_a_bisection_dead_letters_only_the_poison(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
) -> None:
    """Was: once a part of the failed batch went through, every later part was bisected to single
    records, each failure was charged to its record (an XCLAIM, a counted delivery), and the
    retries alone went on charging them while the sink was down: good records were dead-lettered."""
    down = threading.Event()
    failures_while_down = []

    def fail(batch: list[RequestRecord]) -> bool:
        if down.is_set():
            failures_while_down.append(len(batch))
            return True
        if any(r.tenant_id == "poison" for r in batch):
            return True
        return False

    class GoesDown(DictSink):
        armed = True

        def __call__(self, batch: list[RequestRecord]) -> None:
            super().__call__(batch)
            if self.armed:  # the outage starts right after the first write
                self.armed = False
                down.set()

    records = [make_record(i, tenant="poison" if i == 30 else "acme") for i in range(40)]
    RedisStreamExporter(redis_server.url).export(records)
    sink = GoesDown(fail=fail)
    consumer = run_consumer(redis_server.url, sink, max_deliveries=2, batch_size=40, max_backoff_s=0.05,
                            claim_idle_ms=60_000).consumer
    wait_until(lambda: len(failures_while_down) >= 60 or consumer.stats().dead_lettered > 0, what="outage rounds")
    assert consumer.stats().dead_lettered == 0
    down.clear()
    wait_until(lambda: consumer.stats().dead_lettered == 1 and pending(redis_server) == 0, what="poison dead-lettered")
    assert sorted(index_of(r) for r in sink.rows.values()) == [i for i in range(40) if i != 30]
    (dead,) = dead_letters(redis_server)
    assert index_of(RequestRecord.from_dict(orjson.loads(dead[b"field:r"]))) == 30


def test_a_slow_sink_call_keeps_its_batch_from_other_consumers(
    redis_server: RedisServer,
    run_consumer,  # type: ignore[no-untyped-def]
) -> None:
    """Was: a store write slower than ``claim_idle_ms`` let another consumer take the batch over
    (XAUTOCLAIM): written twice and every delivery count raised, on the way to dead-letter."""

    started = threading.Event()

    class SlowSink(DictSink):
        def __call__(self, batch: list[RequestRecord]) -> None:
            started.set()
            time.sleep(3.0)  # three times claim_idle_ms
            super().__call__(batch)

    # claim_idle_ms 1000 (refreshed every 333 ms): at 300 a busy host (tests run in parallel) could
    # hold the refresher past the idle time, which is a test of the scheduler, not of the lease
    slow = SlowSink()
    # the records first: a consumer blocked in XREADGROUP is served after each XADD of the pipeline,
    # so one started first could read a batch of 1 and leave the rest to the other (not a claim)
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(20)])
    consumer = run_consumer(redis_server.url, slow, claim_idle_ms=1000, batch_size=50).consumer
    wait_until(started.is_set, what="the slow write started")
    other = DictSink()
    thief = run_consumer(redis_server.url, other, claim_idle_ms=1000).consumer
    wait_until(lambda: pending(redis_server) == 0 and len(slow) == 20, timeout_s=15, what="the slow write done")
    time.sleep(0.5)  # the other consumer's claim loop had every chance
    assert thief.stats().claimed == 0 and len(other) == 0
    assert slow.writes == 20 and consumer.stats().delivered == 20


def test_a_group_lost_with_redis_data_is_created_again(redis_server: RedisServer, run_consumer) -> None:  # type: ignore[no-untyped-def]
    exporter = RedisStreamExporter(redis_server.url)
    sink = DictSink()
    run_consumer(redis_server.url, sink)
    exporter.export([make_record(i) for i in range(3)])
    wait_until(lambda: len(sink) == 3, what="first records")
    client(redis_server).flushall()
    exporter.export([make_record(i) for i in range(3, 6)])
    wait_until(lambda: len(sink) == 6, what="records after the group was recreated")


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restarted_under_load_loses_nothing(
    redis_server: RedisServer,
    run_consumer,
    tmp_path: Path,
    kill: bool,  # type: ignore[no-untyped-def]
) -> None:
    n = 3000
    bus = RedisStreamBus(
        redis_server.url, journal_dir=tmp_path / "journal", batch_size=100, flush_interval_s=0.01, max_backoff_s=0.2
    )
    bus.start()
    sink = DictSink()
    consumer = run_consumer(redis_server.url, sink, batch_size=100, max_backoff_s=0.2).consumer
    published = threading.Event()

    def load() -> None:
        for i in range(n):
            bus.publish(make_record(i))
            if i % 50 == 49:
                time.sleep(0.01)  # about 4k records/s, for about 0.75 s
        published.set()

    producer = threading.Thread(target=load)
    producer.start()
    wait_until(lambda: len(sink) > n // 4, what="load flowing")
    assert not published.is_set()
    redis_server.restart(kill=kill, down_s=0.3)
    producer.join()
    assert published.is_set() and bus.flush(20)
    wait_until(lambda: len(sink) == n, timeout_s=20, what=f"all {n} records (have {len(sink)})")
    bus.stop()
    assert sorted(index_of(r) for r in sink.rows.values()) == list(range(n))  # each once in the store
    assert sink.writes >= n  # a few may have been written twice (at-least-once), absorbed by the key
    assert bus.stats().dropped == 0 and consumer.stats().dead_lettered == 0
    assert bus.stats().export_failures > 0 and consumer.stats().redis_errors > 0  # the outage was real


def test_a_trickle_lingers_and_is_written_in_one_batch_not_one_write_per_message(
    redis_server: RedisServer, run_consumer
) -> None:  # type: ignore[no-untyped-def]
    exporter = RedisStreamExporter(redis_server.url)
    sink = DictSink()
    run_consumer(redis_server.url, sink, batch_size=1000, min_batch=100, linger_s=0.5)
    time.sleep(0.3)  # the consumer is blocked in XREADGROUP
    exporter.export([make_record(0)])  # wakes it: one message, fewer than min_batch -> it lingers
    time.sleep(0.1)
    for i in range(1, 30):  # arrive while it lingers
        exporter.export([make_record(i)])
    wait_until(lambda: len(sink) == 30, what="30 records in the sink")
    assert sink.calls == [30]  # one write, topped up after the linger


def test_without_a_linger_each_read_is_written_at_once(redis_server: RedisServer, run_consumer) -> None:  # type: ignore[no-untyped-def]
    exporter = RedisStreamExporter(redis_server.url)
    sink = DictSink()
    run_consumer(redis_server.url, sink, batch_size=1000)
    time.sleep(0.3)
    for i in range(3):
        exporter.export([make_record(i)])
        wait_until(lambda i=i: len(sink) == i + 1, what=f"record {i} written")
    assert sink.calls == [1, 1, 1]
