"""The Store contract, part 6: ``request_content`` (masked request text kept per the content policy):
round trip, idempotency, tenant scope, and retention by ``text_days`` and per tenant."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from infersight.store import schema
from infersight.store.base import RequestFilter, RetentionPolicy, Store, StoreError
from tests.contract.test_store import T0, rec

UTC = timezone.utc
NOW = datetime(2096, 12, 1, tzinfo=UTC)
POLICY = RetentionPolicy(text_days=30, text_days_by_tenant={"vip": 60, "strict": 7})


def content(i: int, at: datetime, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id=tenant, model_id="m1", started_at=at,
        prompt_text=f"Write to [EMAIL] about order {i} — ✓ 日本語", completion_text=f"Done {i}.",
        reference_text=None, guardrail_hits="pii:EMAIL", content_truncated=False, sample_reason="guardrail",
    )
    row.update(fields)
    return row


def test_content_round_trips_oldest_first(store: Store) -> None:
    trace = f"{1:032x}"
    later = content(1, T0 + timedelta(seconds=5), span_id="b" * 16, reference_text="Paris",
                    guardrail_hits="pii:EMAIL,injection:ignore_instructions", content_truncated=True)
    first = content(1, T0.isoformat(), completion_text=None, guardrail_hits=None, sample_reason=None)
    assert store.write_rows("request_content", [later, first]) == 2
    got = store.content_for(trace)
    assert [r["span_id"] for r in got] == [f"{1:016x}", "b" * 16]
    assert got[0] == {**first, "started_at": T0}
    assert got[1] == later
    assert set(got[0]) == set(schema.REQUEST_CONTENT.names)


def test_content_is_idempotent_by_trace_and_span(store: Store) -> None:
    rows = [content(1, T0), content(2, T0 + timedelta(seconds=1))]
    assert store.write_rows("request_content", [*rows, rows[0]]) == 2  # a repeat inside the batch: once
    assert store.write_rows("request_content", rows) == 0  # a redelivered batch inserts nothing
    assert store.write_rows("request_content", [rows[1], content(3, T0)]) == 1
    assert [len(store.content_for(f"{i:032x}")) for i in (1, 2, 3)] == [1, 1, 1]


def test_content_is_scoped_by_tenant(store: Store) -> None:
    store.write_rows("request_content", [content(1, T0, tenant="acme"), content(2, T0, tenant="globex")])
    assert [r["tenant_id"] for r in store.content_for(f"{1:032x}", tenant_id="acme")] == ["acme"]
    assert store.content_for(f"{1:032x}", tenant_id="globex") == []  # another tenant's text looks absent
    assert [r["tenant_id"] for r in store.content_for(f"{2:032x}")] == ["globex"]  # an admin read
    assert store.content_for("f" * 32) == []


def test_content_refuses_rows_without_a_request_time(store: Store) -> None:
    with pytest.raises(StoreError, match="started_at"):
        store.write_rows("request_content", [content(1, T0, started_at=None)])
    with pytest.raises(StoreError):
        store.write_rows("request_content", [{**content(1, T0), "prompt": "raw"}])


def test_retention_deletes_content_past_text_days_per_tenant(store: Store) -> None:
    store.write_rows("request_content", [
        content(1, NOW - timedelta(days=31)), content(2, NOW - timedelta(days=29)),  # default: 30 days
        content(3, NOW - timedelta(days=61), tenant="vip"), content(4, NOW - timedelta(days=45), tenant="vip"),
        content(5, NOW - timedelta(days=8), tenant="strict"), content(6, NOW - timedelta(days=6), tenant="strict"),
    ])
    store.write_requests([rec(1, NOW - timedelta(days=31))])  # the request row outlives its content

    removed = store.apply_retention(NOW, POLICY)

    assert removed["request_content"] == 3
    kept = {i for i in range(1, 7) if store.content_for(f"{i:032x}")}
    assert kept == {2, 4, 6}
    assert store.count_requests(RequestFilter()) == 1
    assert store.apply_retention(NOW, POLICY)["request_content"] == 0  # a second pass touches nothing
    assert store.write_rows("request_content", [content(1, NOW - timedelta(days=31))]) == 1  # gone: new again


def test_retention_uses_the_default_text_days(store: Store) -> None:
    store.write_rows("request_content", [content(1, NOW - timedelta(days=31)), content(2, NOW - timedelta(days=1))])
    removed = store.apply_retention(NOW, RetentionPolicy())
    assert removed["request_content"] == 1
    assert [bool(store.content_for(f"{i:032x}")) for i in (1, 2)] == [False, True]
