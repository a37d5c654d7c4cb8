"""Fixtures for the ClickHouse backend's own tests: an embedded (chdb) store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infersight.store.clickhouse_store import ClickHouseStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.embedded(str(tmp_path / "chdb"))
    s.migrate()
    try:
        yield s
    finally:
        s.close()
