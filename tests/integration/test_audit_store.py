"""Audit of the store layer: bugs found where both backends, retention or the factory went wrong.

Each test runs on the real engines (DuckDB, and ClickHouse embedded through chdb), as the contract
suite does; the fixtures reuse its backend factory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from infersight.config import settings_from_dict
from infersight.retention import policy_from
from infersight.store.base import Store
from infersight.store.clickhouse_exec import ChdbExecutor
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.factory import open_store
from infersight.store.quality_sql import QualityQuery
from tests.contract.conftest import open_backend
from tests.contract.test_store import T0
from tests.contract.test_store_rows import TRACE, eval_row

ENGINES = ["duckdb", "clickhouse"]


@pytest.fixture(params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = open_backend(str(request.param), tmp_path)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


# -- eval results: a re-run judged later is the same result ------------------------------------------


def test_a_re_evaluation_with_a_later_evaluated_at_is_not_stored_twice(store: Store) -> None:
    """A redelivered eval task (a worker died before its ack, the journal replayed) is judged again
    with a new ``evaluated_at``; its key is the same, so it must not become a second result.

    DuckDB inserted it (its dedup only looked at the batch's ``evaluated_at`` window) and quality
    counted the request twice; ClickHouse reported it as new and FINAL showed the re-run's score.
    """
    first = eval_row("relevance", T0, score=0.75)
    assert store.write_rows("eval_results", [first]) == 1
    rerun = eval_row("relevance", T0 + timedelta(hours=3), score=0.25)  # same request, same evaluator version
    assert store.write_rows("eval_results", [rerun]) == 0

    (row,) = store.eval_results_for(TRACE)
    assert row["score"] == 0.75 and row["evaluated_at"] == T0
    (series,) = store.quality(QualityQuery(T0 - timedelta(days=1), T0 + timedelta(days=1)))
    assert series["evaluations"] == 1 and series["score_mean"] == 0.75


def test_a_re_evaluation_in_a_mixed_batch_inserts_only_the_new_results(store: Store) -> None:
    store.write_rows("eval_results", [eval_row("relevance", T0)])
    batch = [eval_row("relevance", T0 + timedelta(days=2)), eval_row("tone", T0 + timedelta(days=2))]
    assert store.write_rows("eval_results", batch) == 1
    assert sorted(r["dimension"] for r in store.eval_results_for(TRACE)) == ["relevance", "tone"]


# -- the factory: ClickHouse TTLs follow the configured retention ------------------------------------


def test_open_store_gives_clickhouse_the_configured_retention(tmp_path: Path) -> None:
    """The server enforces the tables' TTL clauses by itself; built from the default policy they
    deleted rows after 90 days under ``requests_days: 365`` and nulled a 60-day tenant's text at 30."""
    settings = settings_from_dict({
        "storage": {"path": str(tmp_path)}, "logging": {"level": "warning"},
        "backends": [{"name": "none", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
        "tenants": [{"id": "vip", "api_keys": ["sk-v"]}],
        "store": {"backend": "clickhouse", "url": "http://127.0.0.1:9"},  # connects on first use only
        "retention": {"requests_days": 365, "text_days": 30, "text_days_by_tenant": {"vip": 60}},
    })
    store = open_store(settings)
    assert isinstance(store, ClickHouseStore)
    assert store.retention == policy_from(settings.retention)

    store._exec = ChdbExecutor(str(tmp_path / "chdb"))  # the same store's DDL, on the real engine
    try:
        store.migrate()
        (row,) = store._rows("SELECT create_table_query AS q FROM system.tables "
                             "WHERE database = {db:String} AND name = 'requests'", {"db": store.database})
        assert "toIntervalDay(365)" in row["q"]
        assert "'vip'" in row["q"] and "[60]" in row["q"]
    finally:
        store.close()
