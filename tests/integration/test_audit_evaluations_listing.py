"""Audit of GET /api/v1/evaluations (Store.list_evaluations) and `export parquet --table eval_results`.

Real components only: DuckDB files, chdb (embedded ClickHouse) and the QueryApi over httpx's ASGI
transport. The first tests were defects found in review (fixed with them); the others pin behaviour
that the existing suites do not cover (mostly: the same answers on ClickHouse).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow.dataset as ds
import pytest

from infersight.api.app import QueryApi
from infersight.export.parquet import export_parquet
from infersight.gateway.tenancy import TenantDirectory
from infersight.model import RequestRecord
from infersight.store.base import Store
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.evaluations_sql import EvaluationFilter

T0 = datetime(2026, 11, 20, 23, 30, tzinfo=timezone.utc)
URL = "/api/v1/evaluations"
ACME = {"authorization": "Bearer sk-acme-test"}
GLOBEX = {"authorization": "Bearer sk-globex-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}
BACKENDS = ("duckdb", "clickhouse")


def ev(i: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m1", evaluator="llm_judge",
        evaluator_version="v1", dimension="relevance", score=3.0, label=None, explanation="ok",
        judge_model="judge-1", judge_tokens=10, judge_cost=0.001, evaluated_at=T0 + timedelta(seconds=30),
        request_started_at=T0, use_case="chat")
    row.update(fields)
    return row


def open_store(backend: str, tmp_path: Path) -> Store:
    store: Store
    if backend == "duckdb":
        store = DuckDBStore(str(tmp_path / f"audit-{backend}.duckdb"))
    else:
        store = ClickHouseStore.embedded(str(tmp_path / f"audit-{backend}-chdb"))
    store.migrate()
    return store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = open_store(str(request.param), tmp_path)
    try:
        yield s
    finally:
        s.close()


def walk(store: Store, flt: EvaluationFilter, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page = store.list_evaluations(flt, limit=limit, cursor=cursor)
        out.extend(page.data)
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("paging did not end")


def ident(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["trace_id"], row["span_id"], row["evaluator"], row["evaluator_version"], row["dimension"],
            row["evaluated_at"])


# -- found in review, fixed ---------------------------------------------------------------------------


def test_null_and_empty_span_ids_are_two_rows_and_paging_lists_both(store: Store) -> None:
    """Was: ``coalesce(span_id, '')`` alone in the sort key tied a NULL span id with an empty one, which
    both backends store as two keys, so a page ending on one of the pair skipped the other."""
    rows = [ev(1, span_id=None), ev(1, span_id="")]
    assert store.write_rows("eval_results", rows) == 2
    everything = store.list_evaluations(EvaluationFilter(), limit=100).data
    assert len(everything) == 2
    paged = walk(store, EvaluationFilter(), limit=1)
    assert sorted(map(repr, map(ident, paged))) == sorted(map(repr, map(ident, everything)))  # one row is lost


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_eval_results_export_keeps_both_rows_of_that_pair(backend: str, tmp_path: Path) -> None:
    """Was: the same skip through `export parquet --table eval_results`, silently one row short."""
    store = open_store(backend, tmp_path)
    try:
        store.write_rows("eval_results", [ev(1, span_id=None), ev(1, span_id=""), ev(2)])
        summary = export_parquet(store, None, None, tmp_path / "out", page_rows=1, table="eval_results")
    finally:
        store.close()
    assert summary.rows == 3


async def test_swapped_bounds_with_until_before_1970_are_a_400(settings: Any,
                                                                                   tmp_path: Path) -> None:
    """Was: any window whose ``until`` clamped to 1970 passed, so a mistyped year (1026 for 2026)
    answered 200 with an empty page. Only a window wholly before 1970 is let through now."""
    store = open_store("duckdb", tmp_path)
    store.write_rows("eval_results", [ev(1)])
    api = QueryApi(store, TenantDirectory(settings))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
            resp = await client.get(URL, params={"since": "2026-11-20T00:00:00Z", "until": "1026-11-21T00:00:00Z"},
                                    headers=ADMIN)
    finally:
        store.close()
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "since"


# -- pinned behaviour ----------------------------------------------------------------------------------


def _parity_rows() -> list[dict[str, Any]]:
    """Ties everywhere: one request time for most rows, NULL request times that equal another row's
    request time through evaluated_at, NULL labels and scores, non-ASCII names, an offset-aware time."""
    rows = []
    for i in range(24):
        rows.append(ev(i % 6, span_id=None if i % 7 == 0 else f"{i % 6:016x}",
                       tenant_id="acme" if i % 3 else "globex",
                       dimension=("fidélité", "関連性", "relevance", "tone😀")[i % 4],
                       evaluator=("llm_judge", "checks")[i % 2], evaluator_version=f"v{i % 5}",
                       score=None if i % 5 == 0 else float(i % 5), label=(None, "pass", "fail")[i % 3],
                       request_started_at=None if i % 4 == 3 else T0 + timedelta(seconds=i % 2),
                       evaluated_at=(T0 + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-7)))))
    rows.append(ev(40, dimension="_error", score=None, label="timeout", request_started_at=T0))
    return rows


@pytest.mark.parametrize("flt", [
    EvaluationFilter(),
    EvaluationFilter(tenant_id="acme"),
    EvaluationFilter(failed=False),  # NULL labels are "not failed", as quality counts them
    EvaluationFilter(failed=True),
    EvaluationFilter(min_score=2.0),  # NULL scores never match a bound
    EvaluationFilter(max_score=2.0, tenant_id="globex"),
    EvaluationFilter(dimension="fidélité"),
    EvaluationFilter(dimension="tone😀", label="pass"),
    EvaluationFilter(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=2)),
    EvaluationFilter(since=datetime(2026, 11, 20, 18, 30, 1, tzinfo=timezone(timedelta(hours=-5)))),
], ids=repr)
def test_duckdb_and_clickhouse_list_and_page_the_same_rows(flt: EvaluationFilter, tmp_path: Path) -> None:
    answers: dict[str, list[tuple[Any, ...]]] = {}
    for backend in BACKENDS:
        store = open_store(backend, tmp_path)
        try:
            store.write_rows("eval_results", _parity_rows())
            whole = [ident(r) for r in store.list_evaluations(flt, limit=1000).data]
            for limit in (1, 2, 5):
                assert [ident(r) for r in walk(store, flt, limit)] == whole, (backend, limit)
            answers[backend] = whole
        finally:
            store.close()
    assert answers["duckdb"] == answers["clickhouse"]
    assert len(set(answers["duckdb"])) == len(answers["duckdb"])


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_tenant_key_replaying_an_admin_cursor_still_sees_only_its_own_rows(
        backend: str, settings: Any, tmp_path: Path) -> None:
    """The cursor carries only the sort key; the tenant scope is applied on every page, so a cursor
    taken from an admin listing (or crafted) never widens a tenant key's answer."""
    store = open_store(backend, tmp_path)
    store.write_rows("eval_results", [ev(i, tenant_id=("acme", "globex")[i % 2]) for i in range(10)])
    api = QueryApi(store, TenantDirectory(settings))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
            first = (await client.get(URL, params={"limit": 1}, headers=ADMIN)).json()
            cursor = first["next_cursor"]
            mine = await client.get(URL, params={"cursor": cursor, "limit": 1000}, headers=GLOBEX)
            scoped = await client.get(URL, params={"cursor": cursor, "tenant": "acme"}, headers=GLOBEX)
            unicode = await client.get(URL, params={"dimension": "fidélité"}, headers=ACME)
    finally:
        store.close()
    assert mine.status_code == 200 and {r["tenant_id"] for r in mine.json()["data"]} == {"globex"}
    assert scoped.status_code == 403
    assert unicode.status_code == 200 and unicode.json()["data"] == []


@pytest.mark.parametrize("params", [
    {"min_score": "1e999"}, {"max_score": "nan"}, {"min_score": "0x10"}, {"failed": "yes"},
    {"cursor": "é"}, {"cursor": "W10"}, {"cursor": "WyJlMSIsMSwiYSIsImIiLCJjIiwiZCJd"},  # [] and a 6-item list
    {"cursor": "WyJlMSIsMWUzMDAsImEiLCJiIiwiYyIsImQiLCJlIl0"},  # a float time
    {"cursor": "WyJlMSIsOTIyMzM3MjAzNjg1NDc3NTgwNywiYSIsImIiLCJjIiwiZCIsImUiXQ"},  # past datetime's range
    {"limit": "1001"}, {"since": "not-a-time"},
])
async def test_bad_values_are_400s_in_the_error_shape(params: dict[str, str], settings: Any, tmp_path: Path) -> None:
    store = open_store("duckdb", tmp_path)
    api = QueryApi(store, TenantDirectory(settings))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
            resp = await client.get(URL, params=params, headers=ADMIN)
    finally:
        store.close()
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == next(iter(params)) and error["code"] in ("invalid_value", "invalid_query")


def test_eval_export_edge_cases_and_a_requests_export_in_the_same_folder(tmp_path: Path) -> None:
    """NULL request time (dated by evaluated_at), NULL model id (hive's default partition), a tenant
    filter, an empty window; and a requests export of the same window in the same folder survives
    eval re-exports (and the other way round)."""
    store = open_store("duckdb", tmp_path)
    store.write_requests([RequestRecord(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="m1", backend="sim",
        started_at=T0.isoformat(), ttft_ms=1.0, total_ms=2.0, status_code=200, prompt_tokens=1,
        completion_tokens=1, stream=False) for i in range(3)])
    store.write_rows("eval_results", [
        ev(0), ev(1, model_id=None), ev(2, request_started_at=None, evaluated_at=T0 + timedelta(hours=1)),
        ev(3, tenant_id="globex")])
    out = tmp_path / "out"
    window = (T0 - timedelta(days=1), T0 + timedelta(days=1))
    try:
        requests = export_parquet(store, *window, out)
        evals = export_parquet(store, *window, out, table="eval_results")
        again = export_parquet(store, *window, out, table="eval_results")
        acme = export_parquet(store, *window, tmp_path / "acme", tenant_id="acme", table="eval_results")
        empty = export_parquet(store, T0 + timedelta(days=5), T0 + timedelta(days=6), out, table="eval_results")
        requests_again = export_parquet(store, *window, out)
    finally:
        store.close()
    assert requests.rows == requests_again.rows == 3 and requests_again.replaced == requests.files
    assert evals.rows == again.rows == 4 and again.replaced == evals.files
    assert acme.rows == 3 and empty.rows == empty.files == empty.replaced == 0
    parts = {p.relative_to(out).parts[:3] for p in out.rglob("*.parquet")}
    assert ("date=2026-11-21", "tenant=acme", "model=m1") in parts  # the NULL request time: its judgement's day
    assert ("date=2026-11-20", "tenant=acme", "model=__HIVE_DEFAULT_PARTITION__") in parts
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet', union_by_name=true) "
                   "WHERE evaluator IS NOT NULL").fetchall()
    assert n == [(4,)]
    reqs = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet', union_by_name=true) "
                      "WHERE backend IS NOT NULL").fetchall()
    assert reqs == [(3,)]  # each table's files are there once, whichever was exported last
    table = ds.dataset(tmp_path / "acme", format="parquet", partitioning="hive").to_table()
    assert set(table.column("tenant_id").to_pylist()) == {"acme"}


def test_a_nan_score_is_stored_as_no_score_on_both_backends(tmp_path: Path) -> None:
    """Was: write_rows kept a NaN score; DuckDB then listed it for ``min_score=0`` (NaN sorts above every
    number) and ClickHouse did not, and a series' mean became NaN. Non-finite optional numbers are
    stored as null now, on every backend."""
    answers = {}
    for backend in BACKENDS:
        store = open_store(backend, tmp_path)
        try:
            store.write_rows("eval_results", [ev(1, score=float("nan"), judge_cost=float("inf")), ev(2, score=2.0)])
            listed = store.list_evaluations(EvaluationFilter(), limit=10).data
            answers[backend] = (
                sorted(r["trace_id"] for r in store.list_evaluations(EvaluationFilter(min_score=0.0), limit=10).data),
                sorted((r["trace_id"], r["score"], r["judge_cost"]) for r in listed if r["trace_id"] == f"{1:032x}"))
        finally:
            store.close()
    assert answers["duckdb"] == answers["clickhouse"] == ([f"{2:032x}"], [(f"{1:032x}", None, None)])
