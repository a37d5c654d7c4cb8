"""Dead-letter inspection and replay against a real redis-server: replayed records reach the sink
once, a dry run changes nothing, poison stays unless asked for, and the CLI never prints content."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from infersight.bus.deadletter_cli import add_arguments, run
from infersight.bus.redis_conn import encode
from infersight.bus.redis_deadletter import count_by_kind, list_dead_letters, replay
from infersight.bus.redis_streams import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM, RedisStreamExporter
from tests.integration.bus.conftest import DictSink, Running, wait_until
from tests.redis_server import RedisServer, free_port
from tests.unit.bus.helpers import SECRET, index_of, make_record

S, DEAD = DEFAULT_STREAM, DEFAULT_DEAD_LETTER_STREAM
BAD = {3, 7, 11}  # the sink refuses these until "fixed"


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, protocol=2)


def pending(r: redis.Redis) -> int:
    return int(r.xpending(S, "ingest")["pending"])


@pytest.fixture
def dead(redis_server: RedisServer, run_consumer: Callable[..., Running]) -> DictSink:
    """20 records and one poison message through a consumer whose sink refuses BAD: 17 written,
    3 dead-lettered after max_deliveries, the poison dead-lettered at once. The consumer is stopped."""
    r = client(redis_server)
    RedisStreamExporter(redis_server.url).export([make_record(i) for i in range(20)])
    r.xadd(S, {"r": f"not json {SECRET}".encode()})
    sink = DictSink(fail=lambda batch: any(index_of(rec) in BAD for rec in batch))
    running = run_consumer(redis_server.url, sink, max_deliveries=2, max_backoff_s=0.1)
    wait_until(lambda: r.xlen(DEAD) == 4 and len(sink) == 17, what="17 written, 4 dead-lettered")
    wait_until(lambda: pending(r) == 0, what="acks")
    running.close()
    sink.fail = None  # the fix
    return sink


def test_list_counts_by_kind_and_flags_poison(redis_server: RedisServer, dead: DictSink) -> None:
    letters = list_dead_letters(client(redis_server), DEAD)
    assert count_by_kind(letters) == {"sink_failed": 3, "undecodable": 1}
    assert [letter.poison for letter in letters].count(True) == 1
    sink_failed = [letter for letter in letters if not letter.poison]
    assert all(letter.deliveries == 2 and letter.source_id and 0 <= letter.age_s() < 60 for letter in sink_failed)
    assert len(list_dead_letters(client(redis_server), DEAD, limit=2)) == 2
    assert len(list_dead_letters(client(redis_server), DEAD, reason="UNDECODABLE")) == 1
    assert len(list_dead_letters(client(redis_server), DEAD, reason="sink failed on it")) == 3
    assert SECRET not in repr(letters)  # the payload is kept out of repr


def test_dry_run_changes_nothing(redis_server: RedisServer, dead: DictSink) -> None:
    r = client(redis_server)
    before = (r.xrange(S), r.xrange(DEAD))
    result = replay(r, S, DEAD, dry_run=True)
    assert (result.replayed, result.skipped_poison, result.replayed_ids) == (3, 1, [])
    assert (r.xrange(S), r.xrange(DEAD)) == before


def test_replay_writes_each_dead_letter_once(
    redis_server: RedisServer, dead: DictSink, run_consumer: Callable[..., Running]
) -> None:
    r = client(redis_server)
    writes = dead.writes
    result = replay(r, S, DEAD)
    assert (result.replayed, result.skipped_poison, result.failed) == (3, 1, 0)
    assert [letter.poison for letter in list_dead_letters(r, DEAD)] == [True]  # only the poison is left
    consumer = run_consumer(redis_server.url, dead, consumer="after-fix").consumer
    wait_until(lambda: len(dead) == 20, what="the replayed records in the sink")
    wait_until(lambda: pending(r) == 0, what="acks")
    assert dead.writes == writes + 3 and consumer.stats().dead_lettered == 0
    assert sorted(index_of(rec) for rec in dead.rows.values()) == list(range(20))

    # a record that was written already (e.g. dead-lettered after a write whose ack was lost): harmless
    r.xadd(DEAD, {"source_id": "1-0", "reason": "delivered 6 times (max_deliveries 5)", "deliveries": 6,
                  "dead_at": "1.0", b"field:r": encode(make_record(5))})
    assert replay(r, S, DEAD, reason="max_deliveries").replayed == 1
    wait_until(lambda: dead.writes == writes + 4 and pending(r) == 0, what="the duplicate delivered")
    assert len(dead) == 20 and dead.rows[(make_record(5).trace_id, make_record(5).span_id)] == make_record(5)


def test_poison_is_replayed_only_when_asked(
    redis_server: RedisServer, dead: DictSink, run_consumer: Callable[..., Running]
) -> None:
    r = client(redis_server)
    assert replay(r, S, DEAD, reason="undecodable").skipped_poison == 1 and r.xlen(DEAD) == 4
    (old,) = list_dead_letters(r, DEAD, reason="undecodable")
    result = replay(r, S, DEAD, reason="undecodable", include_poison=True)
    assert (result.replayed, result.skipped_poison) == (1, 0)
    assert r.xrange(S, min=result.replayed_ids[0][1], max="+")[0][1] == {b"r": f"not json {SECRET}".encode()}
    run_consumer(redis_server.url, dead, consumer="after-fix")
    wait_until(lambda: len(list_dead_letters(r, DEAD, reason="undecodable")) == 1, what="poison dead again")
    (again,) = list_dead_letters(r, DEAD, reason="undecodable")
    assert again.dead_id != old.dead_id and again.source_id == result.replayed_ids[0][1]


def test_limit_replays_the_oldest(redis_server: RedisServer, dead: DictSink) -> None:
    r = client(redis_server)
    first = list_dead_letters(r, DEAD, reason="sink_failed")[0]
    result = replay(r, S, DEAD, limit=1)
    assert result.replayed == 1 and result.replayed_ids[0][0] == first.dead_id and r.xlen(DEAD) == 3


# -- the CLI ----------------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="infersight deadletter")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))


def write_config(tmp_path: Path, bus: str) -> str:
    config = tmp_path / "gw.yaml"
    config.write_text(f"storage: {{path: {tmp_path / 'data'}}}\nbackends: [{{name: sim, url: 'http://127.0.0.1:9/v1', "
                      f"models: [sim-large]}}]\ntenants: [{{id: acme, api_keys: [sk-a]}}]\nbus: {bus}\n")
    return str(config)


def test_cli_list_and_replay(redis_server: RedisServer, dead: DictSink, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"{{backend: redis, url: '{redis_server.url}'}}")
    assert cli("list", "--config", config) == 0
    out = capsys.readouterr().out
    assert f"{DEAD}: 4 dead letters (sink_failed 3, undecodable 1); 1 poison" in out
    assert "sink failed on it 2 times (max_deliveries 2)" in out and SECRET not in out

    assert cli("list", "--config", config, "--json", "--limit", "1") == 0
    data = orjson.loads(capsys.readouterr().out)
    assert (data["total"], data["poison"], len(data["entries"])) == (4, 1, 1) and SECRET not in str(data)

    assert cli("replay", "--config", config, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run: would replay 3 dead letters" in out and "skipped 1 poison" in out
    assert client(redis_server).xlen(DEAD) == 4

    assert cli("replay", "--config", config, "--reason", "sink_failed", "--limit", "2") == 0
    assert "replayed 2 dead letters" in capsys.readouterr().out and client(redis_server).xlen(DEAD) == 2

    assert cli("list", "--config", config, "--stream", "evals") == 0
    assert "infersight:evals:dead: no dead letters" in capsys.readouterr().out


def test_cli_refuses_the_memory_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("list", "--config", write_config(tmp_path, "{backend: memory}")) == 2
    assert "bus.backend" in capsys.readouterr().err


def test_cli_reports_redis_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"{{backend: redis, url: 'redis://127.0.0.1:{free_port()}/0'}}")
    assert cli("replay", "--config", config) == 1
    assert "Redis (bus.url) failed: ConnectionError" in capsys.readouterr().err


def test_the_ingest_retention_pass_drops_eval_dead_letters_past_their_text_retention(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """The store deletes masked text at text_days; the same text in the eval dead-letter stream
    (``<evaluation.stream>:dead``) must not outlive it: the retention leader's pass deletes those
    entries (per tenant; 0 days for a tenant now on content none), and keeps the rest."""
    from datetime import datetime, timedelta, timezone

    from infersight.config import settings_from_dict
    from infersight.model import EvalTask
    from infersight.retention import RetentionLoop, policy_from
    from infersight.runtime_eval import eval_dead_stream_sweep
    from infersight.store.duckdb_store import DuckDBStore
    from tests.conftest import config_dict

    tenants = [{"id": "acme", "api_keys": ["sk-a"]}, {"id": "initech", "api_keys": ["sk-i"], "content": "none"}]
    settings = settings_from_dict(config_dict(tmp_path / "data", tenants=tenants, retention={"text_days": 30},
                                              bus={"backend": "redis", "url": redis_server.url}))
    now = datetime.now(timezone.utc)
    client = redis.Redis.from_url(redis_server.url)
    stream = f"{settings.evaluation.stream}:dead"

    def letter(i: int, tenant: str, age_days: float) -> None:
        task = EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id="m",
                        started_at=(now - timedelta(days=age_days)).isoformat(), prompt_text=f"masked {i}")
        client.xadd(stream, {b"reason": b"sink failed 5 times", b"field:r": encode(task)})

    letter(1, "acme", 40)  # past 30 days: goes
    letter(2, "acme", 3)  # kept
    letter(3, "initech", 0.5)  # opted out since: goes
    client.xadd(stream, {b"reason": b"poison", b"field:r": b"not json"})  # undecodable: aged by nothing, kept
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    try:
        removed = RetentionLoop(store, policy_from(settings.retention, settings.tenants),
                                sweeps=eval_dead_stream_sweep(settings)).run_once(now)
    finally:
        store.close()
    assert removed["eval_dead_stream"] == 2
    left = [fields.get(b"field:r") for _, fields in client.xrange(stream)]
    assert len(left) == 2 and b"not json" in left and any(b"masked 2" in (v or b"") for v in left)
