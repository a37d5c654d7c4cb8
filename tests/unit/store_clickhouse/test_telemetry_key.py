"""Schema v6: telemetry's ClickHouse sorting key includes model_id, and an older table is rebuilt."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from infersight.store import schema
from infersight.store.arrow import rows_to_arrow
from infersight.store.base import RetentionPolicy
from infersight.store.clickhouse_exec import ChdbExecutor
from infersight.store.clickhouse_schema import MIGRATIONS, TELEMETRY_REBUILD, _v6, create_table_sql
from infersight.store.clickhouse_store import ClickHouseStore
from tests.unit.store_clickhouse.helpers import show_create

NOW = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)  # within retention: TTL keeps it


def sample(model: str, value: float, ts: datetime = NOW) -> dict[str, Any]:
    return dict(ts=ts, source="vllm", instance="gpu-host-1:8000", gpu=None, model_id=model,
                metric="kv_cache_usage", value=value)


def order_by(store: ClickHouseStore, table: str = "telemetry") -> str:
    return show_create(store, table).split("ORDER BY (", 1)[1].split(")", 1)[0]


def test_a_new_database_keys_telemetry_by_model(store: ClickHouseStore) -> None:
    assert order_by(store) == "ts, source, instance, gpu, model_id, metric"
    assert store.write_rows("telemetry", [sample("a", 0.1), sample("b", 0.2)]) == 2
    store._exec.command("OPTIMIZE TABLE infersight.telemetry FINAL")  # a merge must not collapse them
    rows = store._rows("SELECT model_id, value FROM infersight.telemetry FINAL ORDER BY model_id")
    assert rows == [{"model_id": "a", "value": 0.1}, {"model_id": "b", "value": 0.2}]


def test_a_v5_table_is_rebuilt_with_its_rows_and_rerunning_the_step_is_harmless(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    old = ClickHouseStore(ChdbExecutor(path), migrations=MIGRATIONS[:5])
    assert old.migrate() == 5
    # what v1-v5 created: the sorting key without model_id
    old._exec.command("DROP TABLE infersight.telemetry SYNC")
    ddl = create_table_sql("infersight", schema.TELEMETRY, RetentionPolicy())
    old._exec.command(ddl.replace("gpu, model_id, metric", "gpu, metric"))
    assert order_by(old) == "ts, source, instance, gpu, metric"
    # distinct old keys (two models at one ts would already have collapsed into one row)
    rows = [sample("a", 0.1), sample("b", 0.2, NOW - timedelta(seconds=5)), sample("a", 0.3, NOW - timedelta(seconds=10))]
    old._exec.insert("infersight", "telemetry", rows_to_arrow(schema.TELEMETRY, rows))
    old.close()

    s = ClickHouseStore.embedded(path)
    try:
        assert s.migrate() == schema.SCHEMA_VERSION >= 6
        assert order_by(s) == "ts, source, instance, gpu, model_id, metric"
        tables = {r["name"] for r in s._rows("SELECT name FROM system.tables WHERE database = 'infersight'")}
        assert TELEMETRY_REBUILD not in tables
        got = s._rows("SELECT model_id, value FROM infersight.telemetry FINAL ORDER BY value")
        assert [(r["model_id"], r["value"]) for r in got] == [("a", 0.1), ("b", 0.2), ("a", 0.3)]
        for sql in _v6("infersight", RetentionPolicy()):  # a crash-and-rerun of the step keeps every row
            s._exec.command(sql)
        got = s._rows("SELECT model_id, value FROM infersight.telemetry FINAL ORDER BY value")
        assert [r["value"] for r in got] == [0.1, 0.2, 0.3]
        assert s.write_rows("telemetry", [sample("a", 0.1), sample("b", 0.4)]) == 1  # idempotent by the new key
        got = s._rows("SELECT model_id, value FROM infersight.telemetry FINAL ORDER BY value")
        assert [(r["model_id"], r["value"]) for r in got] == [("a", 0.1), ("b", 0.2), ("a", 0.3), ("b", 0.4)]
    finally:
        s.close()
