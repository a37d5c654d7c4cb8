"""A fresh real redis-server per test (it starts in about 0.1 s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infersight.bus.redis_consumer import RedisStreamConsumer
from infersight.model import RequestRecord
from tests.redis_server import RedisServer, find_redis_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", binary=find_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.stop()


class DictSink:
    """An idempotent sink like the store: keyed by (trace_id, span_id); counts every write."""

    idempotent = True  # so the consumer may probe it with a record it took (as it does the store)

    def __init__(self, fail: Callable[[list[RequestRecord]], bool] | None = None) -> None:
        self.rows: dict[tuple[str, str], RequestRecord] = {}
        self.writes = 0
        self.calls: list[int] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, batch: list[RequestRecord]) -> None:
        with self.lock:
            self.calls.append(len(batch))
            if self.fail is not None and self.fail(batch):
                raise RuntimeError("sink refused the batch")
            for record in batch:
                self.rows[(record.trace_id, record.span_id)] = record
            self.writes += len(batch)

    def __len__(self) -> int:
        with self.lock:
            return len(self.rows)


class Running:
    """A consumer running on its own thread, stopped at teardown."""

    def __init__(self, consumer: RedisStreamConsumer) -> None:
        self.consumer = consumer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=consumer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def run_consumer() -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(url: str, sink: DictSink, **kwargs: object) -> Running:
        options: dict[str, object] = {"group": "ingest", "consumer": f"c{len(running)}", "block_ms": 100}
        options.update(kwargs)
        r = Running(RedisStreamConsumer(url, sink=sink, **options))  # type: ignore[arg-type]
        running.append(r)
        return r

    yield start
    for r in running:
        r.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
