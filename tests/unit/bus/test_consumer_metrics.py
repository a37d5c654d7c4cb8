"""Consumer gauges sum every consumer of a worker, under the worker's own prefix."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from infersight.bus.consumer_metrics import ConsumerGauges
from infersight.bus.redis_consumer import ConsumerStats
from infersight.ingest.sink import IngestMetrics


def value(registry: CollectorRegistry, name: str) -> float:
    got = registry.get_sample_value(name)
    assert got is not None, name
    return got


def test_the_eval_workers_gauges_sum_its_consumers() -> None:
    registry = CollectorRegistry()
    gauges = ConsumerGauges(registry, "infersight_eval_worker")
    gauges.sync([ConsumerStats(dead_lettered=2, claimed=1, dropped=0), ConsumerStats(dead_lettered=1, dropped=4)])
    assert value(registry, "infersight_eval_worker_dead_lettered_messages") == 3
    assert value(registry, "infersight_eval_worker_claimed_messages") == 1
    assert value(registry, "infersight_eval_worker_dropped_messages") == 4
    gauges.sync([ConsumerStats(dead_lettered=5)])  # a gauge follows the consumers' running totals
    assert value(registry, "infersight_eval_worker_dead_lettered_messages") == 5


def test_the_ingest_worker_keeps_its_metric_names() -> None:
    registry = CollectorRegistry()
    IngestMetrics(registry).sync_consumers([ConsumerStats(dead_lettered=1, claimed=2, dropped=3)])
    text = generate_latest(registry).decode()
    for name, expected in (("dead_lettered", 1), ("claimed", 2), ("dropped", 3)):
        assert f"infersight_ingest_{name}_messages {float(expected)}" in text
