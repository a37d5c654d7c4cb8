"""Eval tasks through a real Redis: the gateway-side producer (RedisStreamBus of EvalTasks) and the
eval workers' consumer group writing eval_results to a real DuckDB store."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from infersight.bus.redis_streams import RedisStreamBus
from infersight.config import settings_from_dict
from infersight.evaluation.eval_worker import eval_consumer
from infersight.model import EvalTask
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.redis_server import RedisServer


def test_eval_tasks_flow_through_redis_to_eval_results(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = settings_from_dict(config_dict(tmp_path / "data", bus={"backend": "redis", "url": redis_server.url}))
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    producer = RedisStreamBus(redis_server.url, stream=settings.evaluation.stream, record_type=EvalTask,
                              journal_dir=str(tmp_path / "spool-evals"), flush_interval_s=0.05)
    producer.start()
    tasks = [EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                      use_case="chat", started_at="2096-01-01T00:00:00+00:00", status_code=200,
                      finish_reason="length" if i % 2 else "stop", prompt_text="q", completion_text=f"answer {i}",
                      guardrail_hits=["pii_completion:EMAIL"] if i == 0 else [])
             for i in range(6)]
    for t in tasks:
        producer.publish(t)  # type: ignore[arg-type]
    consumer, sink = eval_consumer(settings, store, CollectorRegistry())
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while sink.written < 6 * 4 and time.monotonic() < deadline:  # empty, truncated, repetition, pii_leak
            time.sleep(0.05)
        truncated = {t.trace_id: next(r for r in store.eval_results_for(t.trace_id) if r["dimension"] == "truncated")
                     for t in tasks}
        assert [truncated[t.trace_id]["label"] for t in tasks] == ["pass", "fail"] * 3
        leak = next(r for r in store.eval_results_for(tasks[0].trace_id) if r["dimension"] == "pii_leak")
        assert leak["label"] == "fail" and leak["use_case"] == "chat"
        assert consumer.stats().delivered == 6
    finally:
        stop.set()
        runner.join(10)
        producer.stop()
        sink.shutdown()
        store.close()
