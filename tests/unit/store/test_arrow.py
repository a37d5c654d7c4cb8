"""Arrow conversion shared by both backends: column order, kinds, UTC times, refusals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from infersight.model import RequestRecord
from infersight.store import schema
from infersight.store.arrow import TS_TYPE, arrow_schema, records_to_arrow, rows_to_arrow, to_utc
from infersight.store.base import StoreError

UTC = timezone.utc
KINDS = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "ts": TS_TYPE}


def rec(**fields: object) -> RequestRecord:
    base: dict[str, object] = dict(trace_id="a" * 32, span_id="b" * 16, tenant_id="acme", model_id="m1",
                                   backend="sim", started_at="2026-11-22T07:20:58.123456+00:00", status_code=200)
    base.update(fields)
    return RequestRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("table", list(schema.TABLES.values()), ids=lambda t: t.name)
def test_schema_follows_the_table(table: schema.Table) -> None:
    s = arrow_schema(table)
    assert s.names == list(table.names)
    for name, kind in table.columns:
        assert s.field(name).type == KINDS[kind]
        assert s.field(name).nullable is (name not in table.required)


def test_records_become_columns_in_schema_order() -> None:
    t = records_to_arrow([rec(ttft_ms=12.5, stream=True, prompt_tokens=7), rec(span_id="c" * 16)])
    assert t.schema == arrow_schema(schema.REQUESTS)
    assert t.num_rows == 2
    assert t.column("started_at")[0].as_py() == datetime(2026, 11, 22, 7, 20, 58, 123456, tzinfo=UTC)
    assert t.column("ttft_ms").to_pylist() == [12.5, None]
    assert t.column("stream").to_pylist() == [True, False]
    assert t.column("prompt_tokens").to_pylist() == [7, None]


def test_an_empty_batch_is_an_empty_table() -> None:
    t = records_to_arrow([])
    assert t.num_rows == 0 and t.schema == arrow_schema(schema.REQUESTS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T07:20:58.123456+00:00", datetime(2026, 11, 22, 7, 20, 58, 123456, tzinfo=UTC)),
        ("2026-11-22T07:20:58Z", datetime(2026, 11, 22, 7, 20, 58, tzinfo=UTC)),
        ("2026-11-22T09:20:58+02:00", datetime(2026, 11, 22, 7, 20, 58, tzinfo=UTC)),
        ("2026-11-22T07:20:58", datetime(2026, 11, 22, 7, 20, 58, tzinfo=UTC)),  # naive is UTC
        (datetime(2026, 11, 22, 2, 20, 58, tzinfo=timezone(timedelta(hours=-5))), datetime(2026, 11, 22, 7, 20, 58, tzinfo=UTC)),
        (datetime(2026, 11, 22, 7, 20, 58), datetime(2026, 11, 22, 7, 20, 58, tzinfo=UTC)),
    ],
)
def test_times_become_utc(value: str | datetime, expected: datetime) -> None:
    assert to_utc(value) == expected and to_utc(value).utcoffset() == timedelta(0)
    row = {"ts": value, "source": "nvml", "instance": "h", "metric": "m", "value": 1.0}
    assert rows_to_arrow(schema.TELEMETRY, [row]).column("ts")[0].as_py() == expected


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-13-01T00:00:00Z", 1732259458])
def test_bad_times_are_refused_naming_the_column(bad: object) -> None:
    with pytest.raises(StoreError, match="ts"):
        rows_to_arrow(schema.TELEMETRY, [{"ts": bad, "source": "nvml", "instance": "h", "metric": "m", "value": 1.0}])


def test_a_record_that_never_started_is_refused() -> None:
    with pytest.raises(StoreError, match="started_at is required"):
        records_to_arrow([rec(started_at="")])


def test_rows_fill_missing_columns_with_null_and_refuse_unknown_ones() -> None:
    t = rows_to_arrow(schema.TELEMETRY, [{"ts": "2026-11-22T07:00:00Z", "source": "nvml", "instance": "h",
                                          "metric": "gpu_utilization", "value": 50}])
    assert t.column("gpu").to_pylist() == [None] and t.column("value").to_pylist() == [50.0]
    with pytest.raises(StoreError, match="unknown column"):
        rows_to_arrow(schema.TELEMETRY, [{"ts": "2026-11-22T07:00:00Z", "bogus": 1}])


def test_required_columns_and_types_are_checked() -> None:
    with pytest.raises(StoreError, match="telemetry.metric is required"):
        rows_to_arrow(schema.TELEMETRY, [{"ts": "2026-11-22T07:00:00Z", "source": "s", "instance": "h", "value": 1.0}])
    with pytest.raises(StoreError, match="value"):
        rows_to_arrow(schema.TELEMETRY, [{"ts": "2026-11-22T07:00:00Z", "source": "s", "instance": "h",
                                          "metric": "m", "value": "high"}])
