"""Open the store named by config; the only place that imports a concrete backend."""

from __future__ import annotations

from pathlib import Path

from infersight.config import Settings
from infersight.store.base import Store


def open_store(settings: Settings) -> Store:
    cfg = settings.store
    if cfg.backend == "clickhouse":
        from infersight.retention import policy_from
        from infersight.store.clickhouse_store import ClickHouseStore

        assert cfg.url is not None  # validated by config
        # The tables' TTL clauses come from this policy and the server enforces them on its own:
        # the default one would delete rows and text that the configured retention keeps.
        return ClickHouseStore.from_url(cfg.url, database=cfg.database, retention=policy_from(settings.retention, settings.tenants))
    from infersight.store.duckdb_store import DuckDBStore

    path = Path(cfg.path) if cfg.path else Path(settings.storage.path) / "infersight.duckdb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.compact_at_start_free_ratio is not None:
        from infersight.store.duckdb_compact import compact_if_fragmented

        compact_if_fragmented(path, cfg.compact_at_start_free_ratio)
    return DuckDBStore(str(path), threads=cfg.threads)


def open_gateway_store(settings: Settings, *, listen: bool = False) -> Store:
    """The store a gateway owns, migrated: embedded DuckDB runs in the store process
    (``store.child_process``, ``store/remote.py``), so its writes stay off the relay's GIL.
    ``listen``: the store process also takes the gateway's eval process's calls (``store_socket``)."""
    if settings.store.backend == "duckdb" and settings.store.child_process:
        from infersight.store.remote import RemoteStore

        return RemoteStore(settings, listen=listen)  # the child opens and migrates it before it says ready
    store = open_store(settings)
    store.migrate()
    return store
