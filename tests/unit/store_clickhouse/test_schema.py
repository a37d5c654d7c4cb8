"""The ClickHouse schema: engines, sorting keys and the TTL clauses that enforce retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from infersight.store import schema
from infersight.store.base import RetentionPolicy, StoreError
from infersight.store.clickhouse_exec import ChdbExecutor
from infersight.store.clickhouse_schema import MIGRATIONS, Migration, check_steps
from infersight.store.clickhouse_store import ClickHouseStore
from tests.unit.store_clickhouse.helpers import show_create


def test_every_table_is_a_replacing_merge_tree_keyed_for_idempotency(store: ClickHouseStore) -> None:
    for table in schema.TABLES.values():
        ddl = show_create(store, table.name)
        assert "ENGINE = ReplacingMergeTree" in ddl
        assert f"PARTITION BY toYYYYMM({table.time_column})" in ddl
        order_by = ddl.split("ORDER BY (", 1)[1].split(")", 1)[0]
        assert set(table.key) <= {c.strip() for c in order_by.split(",")}, table.name
    assert "ORDER BY (tenant_id, started_at, span_id, trace_id)" in show_create(store, "requests")


def test_row_and_text_ttls_follow_the_default_policy(store: ClickHouseStore) -> None:
    policy = RetentionPolicy()
    ddl = show_create(store, "requests")
    assert f"TTL started_at + toIntervalDay({policy.requests_days})" in ddl
    for column in ("prompt_text", "completion_text"):
        line = next(line for line in ddl.splitlines() if f"`{column}`" in line)
        assert line.rstrip(",").endswith(f"TTL started_at + toIntervalDay({policy.text_days})")
    assert f"TTL evaluated_at + toIntervalDay({policy.eval_results_days})" in show_create(store, "eval_results")
    assert f"TTL ts + toIntervalDay({policy.telemetry_days})" in show_create(store, "telemetry")
    assert f"TTL period_start + toIntervalDay({policy.cost_lines_days})" in show_create(store, "cost_lines")


def test_request_content_is_keyed_per_trace_and_expires_with_text(store: ClickHouseStore) -> None:
    ddl = show_create(store, "request_content")
    assert "ORDER BY (tenant_id, trace_id, span_id)" in ddl
    assert f"TTL started_at + toIntervalDay({RetentionPolicy().text_days})" in ddl


def test_an_older_database_gains_request_content(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    old = ClickHouseStore(ChdbExecutor(path), migrations=MIGRATIONS[:3])
    assert old.migrate() == 3
    old.close()
    policy = RetentionPolicy(text_days_by_tenant={"acme": 2})
    s = ClickHouseStore.embedded(path, retention=policy)
    try:
        assert s.migrate() == schema.SCHEMA_VERSION
        ddl = show_create(s, "request_content")
        assert "transform(tenant_id, ['acme'], [2], 30)" in ddl
        row = {"trace_id": "a" * 32, "span_id": "b" * 16, "tenant_id": "acme", "model_id": "m1",
               "started_at": "2096-01-01T00:00:00+00:00", "prompt_text": "[EMAIL]"}
        assert s.write_rows("request_content", [row]) == 1
    finally:
        s.close()


def test_ttls_take_the_policy_given_to_the_constructor(tmp_path: Path) -> None:
    policy = RetentionPolicy(requests_days=14, text_days=3, text_days_by_tenant={"bank'o": 1, "acme": 7})
    s = ClickHouseStore.embedded(str(tmp_path / "chdb"), retention=policy)
    try:
        s.migrate()
        ddl = show_create(s, "requests")
    finally:
        s.close()
    assert "TTL started_at + toIntervalDay(14)" in ddl
    assert "toIntervalDay(transform(tenant_id, ['bank\\'o', 'acme'], [1, 7], 3))" in ddl


def test_a_changed_policy_is_applied_to_existing_tables(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    s = ClickHouseStore.embedded(path)
    s.migrate()
    s.close()
    s = ClickHouseStore.embedded(path, retention=RetentionPolicy(requests_days=30, text_days_by_tenant={"acme": 2}))
    try:
        assert s.migrate() == schema.SCHEMA_VERSION
        ddl = show_create(s, "requests")
        assert "TTL started_at + toIntervalDay(30)" in ddl
        assert "transform(tenant_id, ['acme'], [2], 30)" in ddl
        policies = s._exec.query("SELECT count() AS n FROM infersight.retention_policy").to_pylist()[0]["n"]
        s.migrate()  # unchanged policy: no new ALTERs, no new bookkeeping row
        assert s._exec.query("SELECT count() AS n FROM infersight.retention_policy").to_pylist()[0]["n"] == policies
    finally:
        s.close()


def test_columns_are_nullable_unless_required(store: ClickHouseStore) -> None:
    ddl = show_create(store, "requests")
    assert "`status_code` Int64" in ddl and "`ttft_ms` Nullable(Float64)" in ddl
    assert "`tenant_id` LowCardinality(String)" in ddl
    assert "`started_at` DateTime64(6, 'UTC')" in ddl


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "chdb")
    future = schema.SCHEMA_VERSION + 1
    newer = ClickHouseStore(ChdbExecutor(path), migrations=(*MIGRATIONS, Migration(future, "future", lambda db, p: [])))
    assert newer.migrate() == future
    newer.close()
    older = ClickHouseStore.embedded(path)
    try:
        assert older.schema_version() == future
        with pytest.raises(StoreError, match="newer than this code"):
            older.migrate()
    finally:
        older.close()


def test_migration_steps_are_checked() -> None:
    assert check_steps(MIGRATIONS) == schema.SCHEMA_VERSION
    with pytest.raises(StoreError):
        check_steps((Migration(2, "b", lambda db, p: []), Migration(1, "a", lambda db, p: [])))


@pytest.mark.parametrize("name", ["", "x-y", "a;DROP", "1abc", "a" * 65])
def test_database_names_are_validated(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError):
        ClickHouseStore.from_url("http://127.0.0.1:1", database=name)


def test_schema_version_of_an_empty_database_is_zero(tmp_path: Path) -> None:
    s = ClickHouseStore.embedded(str(tmp_path / "chdb"))
    try:
        assert s.schema_version() == 0
    finally:
        s.close()
