"""The executor seam: parameters and Arrow data make the round trip through the engine unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from infersight.store.base import StoreError
from infersight.store.clickhouse_exec import ChdbExecutor, encode_param, quote_ident

NASTY = ["plain", "it's", "back\\slash", "tab\there", "new\nline", "cr\rx", "\\N", "nul\0x", "`tick`", "日本語 🚀", ""]


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[ChdbExecutor]:
    ex = ChdbExecutor(str(tmp_path / "chdb"))
    yield ex
    ex.close()


@pytest.mark.parametrize("value", NASTY)
def test_string_parameters_arrive_verbatim(chdb: ChdbExecutor, value: str) -> None:
    (row,) = chdb.query("SELECT {v:String} AS v", {"v": value}).to_pylist()
    assert row["v"] == value


def test_array_null_and_number_parameters(chdb: ChdbExecutor) -> None:
    (row,) = chdb.query(
        "SELECT {a:Array(String)} AS a, {n:Nullable(String)} AS n, {i:Int64} AS i, {f:Float64} AS f, {b:Bool} AS b",
        {"a": NASTY, "n": None, "i": -(2**62), "f": 1e-7, "b": True},
    ).to_pylist()
    assert row == {"a": NASTY, "n": None, "i": -(2**62), "f": 1e-7, "b": True}


def test_encode_param_text() -> None:
    assert encode_param("a'b") == "a\\'b"
    assert encode_param(["a'b", None, 1]) == "['a\\'b', NULL, 1]"
    assert encode_param(None) == "\\N"
    with pytest.raises(StoreError):
        encode_param(object())


def test_arrow_round_trip(chdb: ChdbExecutor) -> None:
    chdb.command("CREATE DATABASE d")
    chdb.command(
        "CREATE TABLE d.t (s Nullable(String), i Nullable(Int64), f Float64, b Nullable(Bool), "
        "ts DateTime64(6, 'UTC'), lc LowCardinality(Nullable(String))) ENGINE = MergeTree ORDER BY ts"
    )
    when = datetime(2026, 11, 22, 7, 20, 58, 123456, tzinfo=timezone.utc)
    data = pa.table({
        "s": pa.array(NASTY[:3], pa.string()), "i": pa.array([1, None, 3], pa.int64()), "f": [0.5, 1.5, 2.5],
        "b": pa.array([True, None, False]), "ts": pa.array([when] * 3, pa.timestamp("us", tz="UTC")),
        "lc": pa.array(["x", None, "x"]),
    })
    chdb.insert("d", "t", data)
    chdb.insert("d", "t", data.slice(0, 0))  # nothing to do
    back = chdb.query("SELECT * FROM d.t ORDER BY f").to_pylist()
    assert back == data.to_pylist()
    assert back[0]["ts"].utcoffset().total_seconds() == 0


def test_engine_errors_become_store_errors(chdb: ChdbExecutor) -> None:
    with pytest.raises(StoreError):
        chdb.query("SELECT * FROM no_such_table")
    with pytest.raises(StoreError):
        chdb.command("CREATE TABLE broken (")


def test_a_closed_executor_refuses_work(tmp_path: Path) -> None:
    ex = ChdbExecutor(str(tmp_path / "chdb"))
    ex.close()
    ex.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        ex.query("SELECT 1")


def test_quote_ident() -> None:
    assert quote_ident("a`b") == "`a\\`b`"
