"""One contract suite, run against every Store backend (after Phoenix's --db sqlite|postgresql).

- duckdb: an embedded file in tmp_path.
- duckdb-process: the same file behind the gateway's store process (``store/remote.py``): every
  call and every failure crosses the pipe to a child, as in ``infersight serve``.
- clickhouse: the real ClickHouse engine in-process through chdb (CI), or a real server when
  INFERSIGHT_CLICKHOUSE_URL is set (each test gets its own database there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infersight.store.base import Store

BACKENDS = ["duckdb", "duckdb-process", "clickhouse"]


def open_backend(name: str, tmp_path: Path) -> Store:
    if name == "duckdb":
        from infersight.store.duckdb_store import DuckDBStore

        return DuckDBStore(str(tmp_path / "infersight.duckdb"))
    if name == "duckdb-process":
        from infersight.config import settings_from_dict
        from infersight.store.remote import RemoteStore

        return RemoteStore(settings_from_dict({
            "storage": {"path": str(tmp_path)}, "logging": {"level": "warning"},
            "backends": [{"name": "none", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
            "tenants": [{"id": "t", "api_keys": ["sk-t"]}]}))
    from infersight.store.clickhouse_store import ClickHouseStore

    url = os.environ.get("INFERSIGHT_CLICKHOUSE_URL")
    if url:
        # a scratch database; TTL merges paused so apply_retention is what the suite observes
        return ClickHouseStore.from_url(url, database=f"infersight_test_{uuid.uuid4().hex[:12]}", ttl_merges=False)
    return ClickHouseStore.embedded(str(tmp_path / "chdb"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[Store]:
    s = open_backend(backend, tmp_path)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
