"""The server executor (clickhouse-connect over HTTP) against a chdb-backed stand-in server.

Same SQL as the embedded executor, different wire: these check that parameters, Arrow inserts and
Arrow results survive clickhouse-connect, and how failures map onto StoreError/StoreUnavailable.
The whole contract suite also runs this way: INFERSIGHT_CLICKHOUSE_URL pointed at ``fake_http``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from infersight.store import schema
from infersight.store.base import RequestFilter, RetentionPolicy, StatsQuery, StoreError, StoreUnavailable
from infersight.store.clickhouse_store import ClickHouseStore
from tests.unit.store_clickhouse.helpers import T0, rec
from tests.unit.store_clickhouse.fake_http import _Server, fake_clickhouse
from tests.unit.store_clickhouse.test_unavailable import closed_port

NASTY = "Résumé 🚀 \"q\" 'single' \\ back\nnew\ttab"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, _Server]]:
    with fake_clickhouse(str(tmp_path / "server")) as running:
        yield running


@pytest.fixture
def remote(server: tuple[str, _Server]) -> Iterator[ClickHouseStore]:
    store = ClickHouseStore.from_url(server[0], database="infersight_test", ttl_merges=False)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


def test_reads_and_writes_through_clickhouse_connect(remote: ClickHouseStore) -> None:
    records = [rec(i, T0 + timedelta(seconds=i), tenant=NASTY if i % 2 else "acme", prompt_text=NASTY,
                   ttft_ms=float(i)) for i in range(10)]
    assert remote.write_requests(records) == 10
    assert remote.write_requests(records) == 0
    (row,) = remote.get_requests(records[1].trace_id, tenant_id=NASTY)
    assert row["prompt_text"] == NASTY and row["started_at"] == T0 + timedelta(seconds=1)
    assert row["started_at"].utcoffset() == timedelta(0)
    page = remote.list_requests(RequestFilter(tenant_id=NASTY), limit=3)
    rest = remote.list_requests(RequestFilter(tenant_id=NASTY), limit=3, cursor=page.next_cursor)
    assert [r["trace_id"][-1] for r in page.data + rest.data] == ["9", "7", "5", "3", "1"]
    (stats,) = remote.stats(StatsQuery(since=T0, until=T0 + timedelta(minutes=1), tenant_id="acme"))
    assert stats["requests"] == 5 and stats["ttft_ms_p50"] == 4.0


def test_retention_runs_its_mutations_on_the_server(remote: ClickHouseStore) -> None:
    remote.write_requests([rec(1, T0 - timedelta(days=100)), rec(2, T0 - timedelta(days=40), prompt_text="p")])
    policy = RetentionPolicy(text_days_by_tenant={"acme": 35})
    assert remote.apply_retention(T0, policy) == {
        "requests": 1, "eval_results": 0, "telemetry": 0, "cost_lines": 0, "requests_text": 1, "request_content": 0,
        "eval_results_text": 0,
        **{r.name: 0 for r in schema.ROLLUPS}, "correlation_rollups_1h": 0,  # kept 455 days
    }
    assert [r["prompt_text"] for r in remote.list_requests(RequestFilter()).data] == [None]


def test_paused_ttl_is_asked_of_the_server(server: tuple[str, _Server], remote: ClickHouseStore) -> None:
    stops = [sql for sql in server[1].requests if sql.startswith("SYSTEM STOP TTL MERGES")]
    assert len(stops) == len(schema.TABLES) + len(schema.ROLLUPS)


def test_engine_errors_are_store_errors_not_unavailable(remote: ClickHouseStore) -> None:
    with pytest.raises(StoreError) as info:
        remote._exec.query("SELECT * FROM infersight_test.no_such_table")
    assert not isinstance(info.value, StoreUnavailable)


def test_the_store_recovers_once_the_server_is_back(tmp_path: Path) -> None:
    port = closed_port()
    store = ClickHouseStore.from_url(f"http://127.0.0.1:{port}", database="infersight_test")
    try:
        with pytest.raises(StoreUnavailable):
            store.migrate()
        with fake_clickhouse(str(tmp_path / "server"), port=port):
            assert store.migrate() == schema.SCHEMA_VERSION
            assert store.write_requests([rec(1, T0)]) == 1
    finally:
        store.close()
