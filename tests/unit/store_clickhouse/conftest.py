"""Fixtures for the ClickHouse backend's own tests: an embedded (chdb) store per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from infersight.model import RequestRecord
from infersight.store.clickhouse_store import ClickHouseStore

UTC = timezone.utc
T0 = datetime(2026, 11, 22, 7, 0, 0, tzinfo=UTC)


def rec(i: int, at: datetime, tenant: str = "acme", **fields: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id="m1", backend="sim",
        started_at=at.isoformat(), status_code=200,
    )
    base.update(fields)
    return RequestRecord(**base)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.embedded(str(tmp_path / "chdb"))
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def show_create(store: ClickHouseStore, table: str) -> str:
    rows = store._exec.query(f"SHOW CREATE TABLE {store.database}.{table}").to_pylist()
    return str(rows[0]["statement"])


def at(days_ago: float) -> datetime:
    return T0 - timedelta(days=days_ago)
