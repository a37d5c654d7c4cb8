"""``infersight deadletter --stream telemetry`` against a real redis-server and a real DuckDB store: the
ingest worker's telemetry dead letters (``<bus.stream>:telemetry:dead``) are counted by kind without
their payload, a dry run changes nothing, and a replay reaches the telemetry table once."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import redis

from infersight.bus.deadletter_cli import add_arguments, run
from infersight.bus.redis_conn import encode
from infersight.bus.redis_consumer import RedisStreamConsumer
from infersight.bus.redis_streams import RedisStreamExporter
from infersight.config import Settings, load_settings
from infersight.model.telemetry import TelemetrySample
from infersight.runtime_telemetry import telemetry_consumer, telemetry_stream
from infersight.store.duckdb_store import DuckDBStore
from infersight.telemetry.sink import TelemetrySink
from tests.integration.bus.conftest import wait_until
from tests.redis_server import RedisServer
from tests.unit.bus.helpers import SECRET, make_record

BAD = {2, 5}  # the sink refuses samples of these instances until "fixed"
AT = datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def sample(i: int) -> TelemetrySample:
    # the instance carries the marker: it is payload, so it must never be printed
    return TelemetrySample(ts=AT, source="vllm", instance=f"{SECRET}-{i}", metric="kv_cache_usage",
                           value=i / 10, model_id="sim-large")


def index(s: TelemetrySample) -> int:
    return int(s.instance.rsplit("-", 1)[1])


class RefusingSink:
    """The ingest worker's TelemetrySink, refusing batches with a BAD instance until ``fixed``."""

    idempotent = True  # as the TelemetrySink it wraps: the consumer may probe with a sample it took

    def __init__(self, sink: TelemetrySink) -> None:
        self.sink = sink
        self.fixed = False

    def __call__(self, batch: list[TelemetrySample]) -> None:
        if not self.fixed and any(index(s) in BAD for s in batch):
            raise RuntimeError("sink refused the batch")
        self.sink(batch)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="infersight deadletter")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))


def consume(consumer: RedisStreamConsumer) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> str:
    path = tmp_path / "gw.yaml"
    path.write_text(f"storage: {{path: {tmp_path / 'data'}}}\nbackends: [{{name: sim, url: 'http://127.0.0.1:9/v1', "
                    f"models: [sim-large]}}]\ntenants: [{{id: acme, api_keys: [sk-a]}}]\n"
                    f"bus: {{backend: redis, url: '{redis_server.url}'}}\n")
    return str(path)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    db = DuckDBStore(str(tmp_path / "s.duckdb"))
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def dead(config: str, store: DuckDBStore) -> Settings:
    """8 samples and one request record (poison here) on the telemetry stream, through a consumer of
    ``bus.group`` whose sink refuses BAD: 6 written, 2 dead-lettered after max_deliveries, the record
    at once (it does not decode as a TelemetrySample). The consumer is stopped."""
    settings = load_settings(config)
    assert settings.bus.url is not None
    stream = telemetry_stream(settings)
    r = redis.Redis.from_url(settings.bus.url, protocol=2)
    RedisStreamExporter(settings.bus.url, stream).export([sample(i) for i in range(8)])  # type: ignore[list-item]
    r.xadd(stream, {"r": encode(make_record(1))})
    sink = RefusingSink(TelemetrySink(store))
    consumer = RedisStreamConsumer(
        settings.bus.url, sink=sink, stream=stream, group=settings.bus.group, consumer="c0",  # type: ignore[arg-type]
        block_ms=100, max_deliveries=2, max_backoff_s=0.1, dead_letter_stream=f"{stream}:dead",
        record_type=TelemetrySample,
    )
    stop, thread = consume(consumer)
    try:
        wait_until(lambda: r.xlen(f"{stream}:dead") == 3 and sink.sink.inserted == 6, what="6 written, 3 dead")
        wait_until(lambda: int(r.xpending(stream, settings.bus.group)["pending"]) == 0, what="acks")
    finally:
        stop.set()
        thread.join(10)
    return settings


def test_list_counts_telemetry_dead_letters_without_payloads(
    dead: Settings, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = telemetry_stream(dead)
    assert cli("list", "--config", config, "--stream", "telemetry") == 0
    out = capsys.readouterr().out
    assert f"{stream}:dead: 3 dead letters (sink_failed 2, undecodable 1); 1 poison" in out
    assert "sink failed on it 2 times (max_deliveries 2)" in out and SECRET not in out

    assert cli("list", "--config", config, "--stream", "telemetry", "--json", "--reason", "undecodable") == 0
    data = orjson.loads(capsys.readouterr().out)
    assert (data["dead_stream"], data["total"], data["by_kind"], data["poison"]) == (
        f"{stream}:dead", 1, {"undecodable": 1}, 1)
    assert SECRET not in str(data)

    assert cli("list", "--config", config) == 0  # the requests stream has its own dead letters: none
    assert "infersight:requests:dead: no dead letters" in capsys.readouterr().out


def test_replay_puts_telemetry_back_once_and_dry_run_changes_nothing(
    dead: Settings, config: str, store: DuckDBStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dead.bus.url is not None
    stream = telemetry_stream(dead)
    r = redis.Redis.from_url(dead.bus.url, protocol=2)
    before = (r.xrange(stream), r.xrange(f"{stream}:dead"))
    assert cli("replay", "--config", config, "--stream", "telemetry", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"dry run: would replay 2 dead letters from {stream}:dead to {stream}; skipped 1 poison" in out
    assert (r.xrange(stream), r.xrange(f"{stream}:dead")) == before

    assert cli("replay", "--config", config, "--stream", "telemetry") == 0
    assert f"replayed 2 dead letters from {stream}:dead to {stream}" in capsys.readouterr().out
    assert r.xlen(f"{stream}:dead") == 1  # only the poison is left
    assert r.xlen(stream) == len(before[0]) + 2

    consumer, sink = telemetry_consumer(dead, store)  # the ingest worker's own consumer, the cause fixed
    stop, thread = consume(consumer)
    try:
        wait_until(lambda: sink.inserted == 2, what="the replayed samples in the store")
        wait_until(lambda: int(r.xpending(stream, dead.bus.group)["pending"]) == 0, what="acks")
    finally:
        stop.set()
        thread.join(10)
    rows = store.telemetry_around("sim-large", datetime.fromisoformat(AT), timedelta(minutes=5))  # not now:
    # AT is taken at collection, and a full run reaches this test more than 5 minutes later
    assert sorted(int(row["instance"].rsplit("-", 1)[1]) for row in rows) == list(range(8))
    assert consumer.stats().dead_lettered == 0 and r.xlen(f"{stream}:dead") == 1
