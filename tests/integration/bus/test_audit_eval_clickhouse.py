"""Audit of the scale-out evaluation shape on ClickHouse against the embedded DuckDB shape.

Real parts only: a real redis-server (tests/redis_server.py) carrying the eval stream, ``infersight
eval-worker``'s consumer (``eval_consumer``) writing to ClickHouse through its HTTP interface (the
chdb-backed stand-in server of tests/unit/store_clickhouse/fake_http.py, reached by clickhouse-connect
as a production worker reaches a server), the embedded shape's eval sink writing to DuckDB, and the
query API (``QueryApi``, as ``infersight ingest`` and the gateway serve it) over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from infersight.api.app import QueryApi
from infersight.bus.redis_conn import FIELD, encode
from infersight.config import Settings, settings_from_dict
from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.evaluation.eval_worker import eval_consumer
from infersight.gateway.tenancy import TenantDirectory
from infersight.ingest.worker import IngestApp
from infersight.model import EvalTask
from infersight.runtime_eval import build_eval_sink
from infersight.serving import ThreadedServer
from infersight.store.base import Store
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict
from tests.integration.bus.conftest import wait_until
from tests.redis_server import RedisServer
from tests.unit.store_clickhouse.fake_http import fake_clickhouse

ADMIN = {"authorization": "Bearer sk-admin-test"}
TIME_FIELDS = ("first_evaluated_at", "last_evaluated_at")  # when each store's worker ran: differ by design


def settings_for(tmp_path: Path, name: str, redis_url: str | None) -> Settings:
    bus = {"backend": "redis", "url": redis_url} if redis_url else {"backend": "memory"}
    return settings_from_dict(config_dict(tmp_path / name, bus=bus, evaluation={"child_process": False}))


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseStore]:
    """The scale-out store: a ClickHouse HTTP interface on 127.0.0.1, reached by clickhouse-connect."""
    with fake_clickhouse(str(tmp_path / "clickhouse")) as (url, _):
        store = ClickHouseStore.from_url(url)
        store.migrate()
        try:
            yield store
        finally:
            store.close()


@pytest.fixture
def duckdb(tmp_path: Path) -> Iterator[DuckDBStore]:
    store = DuckDBStore(str(tmp_path / "embedded.duckdb"))
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def api_get(store: Store, settings: Settings, path: str, params: dict[str, str]) -> dict[str, Any]:
    """One GET of the query API over real HTTP, as the process owning ``store`` serves it."""
    api = QueryApi(store, TenantDirectory(settings), settings.telemetry.diagnosis, settings.evaluation.drift,
                   calibrations=CalibrationIndex(settings.storage.path))
    app = IngestApp(CollectorRegistry(), api, lambda: {"status": "ok"}, TenantDirectory(settings))  # `ingest`'s
    with ThreadedServer(app) as server:
        resp = httpx.get(f"{server.base_url}{path}", params=params, headers=ADMIN, timeout=30)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def run_eval_worker(settings: Settings, store: Store, tasks: list[EvalTask]) -> None:
    """Publish ``tasks`` on the eval stream as gateways do and let an eval worker write them."""
    client = redis.Redis.from_url(str(settings.bus.url))
    for task in tasks:
        client.xadd(settings.evaluation.stream, {FIELD: encode(task)})
    consumer, sink = eval_consumer(settings, store, CollectorRegistry())
    stop = threading.Event()
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: consumer.stats().delivered >= len(tasks), 30, "the eval worker wrote every task")
    finally:
        stop.set()
        runner.join(10)
        sink.shutdown()


# -- parity of /api/v1/quality --------------------------------------------------------------------------


def test_the_same_reference_tasks_give_the_same_quality_rows_on_clickhouse_as_on_duckdb(
        redis_server: RedisServer, clickhouse: ClickHouseStore, duckdb: DuckDBStore, tmp_path: Path) -> None:
    """docs/store.md: one contract, "so they behave the same"; docs/api.md: ``/quality`` reports each
    series' ``score_stddev`` (sample). Eight requests of one model answered alike against the same
    reference (``metadata.reference``) have one token F1 and one ROUGE-L each: their spread is 0.

    The embedded shape (DuckDB) says 0.0. The scale-out shape, the very same tasks through the eval
    stream and ``eval-worker`` into ClickHouse, says a spread of about 1e-8 for both series: the
    ClickHouse quality query uses ``stddevSamp``, which ClickHouse documents as numerically unstable
    (sum of squares minus square of sums), so a constant non-integer series reads as varying. A
    dashboard or the drift check then sees noise that is not in the data, and the two stores answer
    one question differently."""
    now = datetime.now(timezone.utc)
    tasks = [EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                      use_case="chat", started_at=(now - timedelta(minutes=i)).isoformat(), status_code=200,
                      finish_reason="stop", prompt_text="What is the capital of France?",
                      completion_text="Paris is capital city", reference="Paris")
             for i in range(1, 9)]
    scale_out = settings_for(tmp_path, "scale-out", redis_server.url)
    embedded = settings_for(tmp_path, "embedded", None)
    run_eval_worker(scale_out, clickhouse, tasks)
    sink = build_eval_sink(embedded, duckdb, CollectorRegistry())
    sink.export(tasks)
    sink.shutdown()

    params = {"group_by": "tenant,model,use_case", "evaluator": "reference", "window": "1d"}
    answers = {}
    for name, store, settings in (("duckdb", duckdb, embedded), ("clickhouse", clickhouse, scale_out)):
        rows = api_get(store, settings, "/api/v1/quality", params)["data"]
        answers[name] = {row["dimension"]: {k: v for k, v in row.items() if k not in TIME_FIELDS} for row in rows}
    assert set(answers["duckdb"]) == {"token_f1", "rouge_l"}
    assert [answers["duckdb"][d]["score_stddev"] for d in ("token_f1", "rouge_l")] == [0.0, 0.0]
    for dimension, row in answers["duckdb"].items():
        other = answers["clickhouse"][dimension]
        assert other["evaluations"] == row["evaluations"] == len(tasks)
        assert other["score_stddev"] == pytest.approx(row["score_stddev"]), (
            f"{dimension}: a constant series has a spread of {other['score_stddev']!r} on ClickHouse, "
            f"{row['score_stddev']!r} on DuckDB")
        assert other == pytest.approx(row)
