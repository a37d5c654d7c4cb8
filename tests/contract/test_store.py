"""The Store contract, part 1: schema, request writes, idempotency and request reads.

Backend-neutral: only the ``Store`` interface is used, so every backend in conftest.BACKENDS must
pass the same assertions. Times are fixed (never now()) so runs are reproducible, and they lie in
the future (2096): a backend whose TTL runs on the server's clock (ClickHouse) drops rows already
past retention at insert time, so dates in the past would make the suite fail as the years go by.
Stats live in test_store_stats.py; eval/telemetry/cost rows and retention in test_store_rows.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from infersight.model import RequestRecord
from infersight.model.records import RECORD_FIELDS
from infersight.store import schema
from infersight.store.base import RequestFilter, Store, StoreError

UTC = timezone.utc
T0 = datetime(2096, 11, 22, 7, 0, 0, tzinfo=UTC)


def rec(i: int, at: datetime, tenant: str = "acme", model: str = "m1", **fields: Any) -> RequestRecord:
    """A minimal valid record; ``i`` makes trace and span ids unique."""
    base: dict[str, Any] = dict(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id=model, backend="sim",
        started_at=at.isoformat(), status_code=200,
    )
    base.update(fields)
    return RequestRecord(**base)


def full_record() -> RequestRecord:
    """Every field set to a non-default value, unicode text and microsecond time included."""
    return RequestRecord(
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7", tenant_id="acmé-团队",
        model_id="llama-3.1-8b-instruct", backend="vllm-a", endpoint_type="bedrock", use_case="summarize",
        request_type="batch", api="completions", parent_span_id="a3ce929d0e0e4736",
        started_at="2096-11-22T07:20:58.123456+00:00", ttft_ms=36.47168599991346, total_ms=382.667860999959,
        itl_ms_mean=11.16354016129105, itl_ms_p50=11.287594000009449, itl_ms_p99=13.422797500038541,
        output_tokens_per_s=89.57731916148285, queue_ms=1.5, prompt_tokens=31, completion_tokens=32,
        cached_prompt_tokens=16, reasoning_tokens=7, prompt_tokens_estimated=22,
        prompt_tokens_estimate_kind="tokenizer", token_source="backend", status_code=499,
        error_type="client_disconnected", finish_reason="length", stream=True, client_disconnected=True,
        prompt_hash="5aad6296773520b5f962ce9d9c30417e78f06f8a9116237509f80bfd4a4f00a9",
        prompt_text="Résumé: 日本語のテキスト 🚀 \"quotes\" 'single' \\ backslash\nnewline\ttab",
        completion_text="Ça va — ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", sampled_for_eval=True, sample_reason="error",
    )


def expected_row(record: RequestRecord) -> dict[str, Any]:
    row = record.to_dict()
    row["started_at"] = datetime.fromisoformat(record.started_at).astimezone(UTC)
    return row


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["trace_id"] for r in rows]


# -- schema ---------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_reports_the_version(store: Store) -> None:
    assert store.schema_version() == schema.SCHEMA_VERSION
    store.write_requests([rec(1, T0)])
    assert store.migrate() == schema.SCHEMA_VERSION
    assert store.migrate() == schema.SCHEMA_VERSION
    assert store.schema_version() == schema.SCHEMA_VERSION
    assert len(store.get_requests(f"{1:032x}")) == 1  # data survives a re-run


# -- round trip -----------------------------------------------------------------------------------


def test_every_field_round_trips(store: Store) -> None:
    full = full_record()
    sparse = rec(2, T0)  # None wherever a field may be None; defaults elsewhere
    assert store.write_requests([full, sparse]) == 2
    for record in (full, sparse):
        (row,) = store.get_requests(record.trace_id)
        assert set(row) == set(RECORD_FIELDS)
        assert row == expected_row(record)
        assert row["started_at"].utcoffset() == timedelta(0)
    assert store.get_requests(sparse.trace_id)[0]["ttft_ms"] is None


def test_times_with_other_offsets_are_stored_as_utc(store: Store) -> None:
    store.write_requests([rec(1, T0, started_at="2096-11-22T09:00:00.000001+02:00")])
    (row,) = store.get_requests(f"{1:032x}")
    assert row["started_at"] == T0 + timedelta(microseconds=1)
    assert row["started_at"].utcoffset() == timedelta(0)


def test_an_empty_batch_writes_nothing(store: Store) -> None:
    assert store.write_requests([]) == 0


def test_a_record_without_start_time_is_refused(store: Store) -> None:
    with pytest.raises(StoreError):
        store.write_requests([rec(1, T0, started_at="")])


# -- idempotency ----------------------------------------------------------------------------------


def test_redelivered_batch_inserts_nothing(store: Store) -> None:
    batch = [rec(i, T0 + timedelta(seconds=i)) for i in range(20)]
    assert store.write_requests(batch) == 20
    assert store.write_requests(batch) == 0
    assert store.count_requests(RequestFilter()) == 20


def test_duplicates_inside_a_batch_are_written_once(store: Store) -> None:
    batch = [rec(i, T0 + timedelta(seconds=i)) for i in range(5)]
    assert store.write_requests(batch + [batch[2], batch[4]]) == 5
    assert store.count_requests(RequestFilter()) == 5


def test_overlapping_batch_inserts_only_new_rows(store: Store) -> None:
    first = [rec(i, T0 + timedelta(seconds=i)) for i in range(10)]
    store.write_requests(first)
    second = first[5:] + [rec(i, T0 + timedelta(seconds=i)) for i in range(10, 15)]
    assert store.write_requests(second) == 5
    assert store.count_requests(RequestFilter()) == 15


def test_same_trace_with_another_span_is_a_new_row(store: Store) -> None:
    a = rec(1, T0)
    b = rec(1, T0 + timedelta(milliseconds=5), span_id="b" * 16)
    assert store.write_requests([a, b]) == 2
    assert [r["span_id"] for r in store.get_requests(a.trace_id)] == [a.span_id, b.span_id]  # oldest first


# -- get_requests -----------------------------------------------------------------------------------


def test_get_requests_is_scoped_by_tenant(store: Store) -> None:
    store.write_requests([rec(1, T0, tenant="acme"), rec(2, T0, tenant="globex")])
    trace = f"{1:032x}"
    assert ids(store.get_requests(trace, tenant_id="acme")) == [trace]
    assert store.get_requests(trace, tenant_id="globex") == []
    assert ids(store.get_requests(trace)) == [trace]  # no scope: an admin read
    assert store.get_requests("f" * 32) == []


# -- list_requests ------------------------------------------------------------------------------------


@pytest.fixture
def mixed(store: Store) -> list[RequestRecord]:
    records = [
        rec(1, T0, tenant="acme", model="m1", use_case="chat"),
        rec(2, T0 + timedelta(minutes=1), tenant="acme", model="m2", use_case="summarize", status_code=500),
        rec(3, T0 + timedelta(minutes=2), tenant="globex", model="m1", use_case="chat"),
        rec(4, T0 + timedelta(minutes=3), tenant="globex", model="m2", use_case="summarize", status_code=429),
        rec(5, T0 + timedelta(minutes=4), tenant="acme", model="m1", use_case="chat"),
    ]
    store.write_requests(records)
    return records


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (RequestFilter(), [5, 4, 3, 2, 1]),
        (RequestFilter(tenant_id="acme"), [5, 2, 1]),
        (RequestFilter(model_id="m2"), [4, 2]),
        (RequestFilter(use_case="chat"), [5, 3, 1]),
        (RequestFilter(status_code=500), [2]),
        (RequestFilter(since=T0 + timedelta(minutes=1)), [5, 4, 3, 2]),  # since is inclusive
        (RequestFilter(until=T0 + timedelta(minutes=3)), [3, 2, 1]),  # until is exclusive
        (RequestFilter(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=4)), [4, 3, 2]),
        (RequestFilter(tenant_id="globex", model_id="m1"), [3]),
        (RequestFilter(tenant_id="acme", status_code=429), []),
        (RequestFilter(tenant_id="nobody"), []),
    ],
)
def test_list_and_count_apply_each_filter(
    store: Store, mixed: list[RequestRecord], flt: RequestFilter, expected: list[int]
) -> None:
    page = store.list_requests(flt)
    assert ids(page.data) == [f"{i:032x}" for i in expected]  # newest first
    assert page.next_cursor is None
    assert store.count_requests(flt) == len(expected)


def test_filters_take_any_utc_offset(store: Store, mixed: list[RequestRecord]) -> None:
    plus2 = timezone(timedelta(hours=2))
    flt = RequestFilter(since=(T0 + timedelta(minutes=3)).astimezone(plus2))
    assert ids(store.list_requests(flt).data) == [f"{5:032x}", f"{4:032x}"]


def test_rows_come_back_whole(store: Store) -> None:
    full = full_record()
    store.write_requests([full])
    (row,) = store.list_requests(RequestFilter(tenant_id=full.tenant_id)).data
    assert row == expected_row(full)


def walk(store: Store, flt: RequestFilter, limit: int) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        page = store.list_requests(flt, limit=limit, cursor=cursor)
        pages.append(page.data)
        if page.next_cursor is None:
            return pages
        assert len(page.data) == limit
        cursor = page.next_cursor
        assert len(pages) < 100, "pagination does not terminate"


def test_cursor_walks_every_row_exactly_once_newest_first(store: Store) -> None:
    # groups of 7 rows share one started_at: ties must neither repeat nor vanish across pages
    records = [rec(i, T0 + timedelta(seconds=i // 7)) for i in range(250)]
    store.write_requests(records[::2])
    store.write_requests(records[1::2])
    pages = walk(store, RequestFilter(), limit=100)
    assert [len(p) for p in pages] == [100, 100, 50]
    rows = [r for p in pages for r in p]
    assert sorted(ids(rows)) == sorted(r.trace_id for r in records)
    times = [r["started_at"] for r in rows]
    assert times == sorted(times, reverse=True)


def test_cursor_pages_respect_filters(store: Store) -> None:
    store.write_requests([rec(i, T0 + timedelta(seconds=i % 10), tenant="acme" if i % 3 else "globex") for i in range(60)])
    rows = [r for p in walk(store, RequestFilter(tenant_id="acme"), limit=7) for r in p]
    assert len(rows) == 40 and len(set(ids(rows))) == 40
    assert {r["tenant_id"] for r in rows} == {"acme"}


def test_cursor_is_stable_when_newer_rows_arrive(store: Store) -> None:
    store.write_requests([rec(i, T0 + timedelta(seconds=i // 3)) for i in range(30)])
    everything = ids(store.list_requests(RequestFilter(), limit=30).data)
    first = store.list_requests(RequestFilter(), limit=10)
    store.write_requests([rec(100 + i, T0 + timedelta(hours=1, seconds=i)) for i in range(5)])
    second = store.list_requests(RequestFilter(), limit=10, cursor=first.next_cursor)
    assert ids(first.data) + ids(second.data) == everything[:20]


def test_a_multiple_of_the_page_size_needs_no_empty_last_page(store: Store) -> None:
    store.write_requests([rec(i, T0 + timedelta(seconds=i)) for i in range(10)])
    assert [len(p) for p in walk(store, RequestFilter(), limit=5)] == [5, 5]


@pytest.mark.parametrize("cursor", ["not a cursor", "djF8", "AAAA", "eyJ0IjoxfQ", "%%%", "v1|1|a|b"])
def test_malformed_cursor_is_refused(store: Store, cursor: str) -> None:
    store.write_requests([rec(1, T0)])
    with pytest.raises(StoreError):
        store.list_requests(RequestFilter(), cursor=cursor)


def test_limit_must_be_positive(store: Store) -> None:
    with pytest.raises(StoreError):
        store.list_requests(RequestFilter(), limit=0)


def test_count_on_an_empty_store(store: Store) -> None:
    assert store.count_requests(RequestFilter()) == 0
    assert store.list_requests(RequestFilter()).data == []
