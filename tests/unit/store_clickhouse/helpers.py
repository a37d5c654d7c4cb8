"""Shared helpers for the ClickHouse backend's tests: fixed times and minimal records."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.model import RequestRecord
from infersight.store.clickhouse_store import ClickHouseStore

UTC = timezone.utc
T0 = datetime(2026, 11, 22, 7, 0, 0, tzinfo=UTC)


def rec(i: int, at: datetime, tenant: str = "acme", **fields: Any) -> RequestRecord:
    """A minimal valid record; ``i`` makes trace and span ids unique."""
    base: dict[str, Any] = dict(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id="m1", backend="sim",
        started_at=at.isoformat(), status_code=200,
    )
    base.update(fields)
    return RequestRecord(**base)


def at(days_ago: float) -> datetime:
    return T0 - timedelta(days=days_ago)


def show_create(store: ClickHouseStore, table: str) -> str:
    rows = store._exec.query(f"SHOW CREATE TABLE {store.database}.{table}").to_pylist()
    return str(rows[0]["statement"])
