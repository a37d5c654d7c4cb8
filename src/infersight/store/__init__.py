"""Layer 2 storage: one Store interface, an embedded (DuckDB) and a scale-out (ClickHouse) backend."""

from infersight.store.base import (
    Page,
    RequestFilter,
    RetentionPolicy,
    StatsQuery,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = ["Page", "RequestFilter", "RetentionPolicy", "StatsQuery", "Store", "StoreError", "StoreUnavailable"]
