"""The evaluations listing (``Store.list_evaluations``): single eval_results rows, newest first.

Why it exists: ``Store.quality`` says that a series got worse ("hallucination fell from 4.1 to
3.2 for acme"); this says which requests did, so an operator can open each one's debug view.
Filters match the quality query's, plus ``label``, ``failed`` (exactly what ``quality`` counts as
``failures``: a check labelled ``fail`` or a judge error) and a score range, so ``failures: 12``
in a quality row lists as those 12 rows.

Both backends run the same SQL (``?`` parameters for DuckDB, typed ``{name:Type}`` ones and
``FINAL`` for ClickHouse). Rows come newest judged request first, ordered by
``(coalesce(request_started_at, evaluated_at), trace_id, span_id (NULL after ''), evaluator,
evaluator_version, dimension)`` descending: the table's key after the time, so the order is total and a keyset
cursor (``encode_evaluation_cursor``) pages through it without skipping or repeating a row when
new results arrive between pages. The window is on the judged request's time, as for quality.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import orjson

from infersight.store import schema
from infersight.store.base import InvalidQuery, Page

WHEN = "coalesce(request_started_at, evaluated_at)"
_KEY = (  # (expression, ClickHouse type); the sort key after WHEN
    ("trace_id", "String"),
    ("coalesce(span_id, '')", "String"),
    # a NULL span id and an empty one are distinct keys in both stores: without this they tie, and
    # a page ending on one of them skipped the other
    ("CASE WHEN span_id IS NULL THEN 1 ELSE 0 END", "UInt8"),
    ("evaluator", "String"),
    ("evaluator_version", "String"),
    ("dimension", "String"),
)
_FAILED = "(label = 'fail' OR dimension = '_error')"
_TS_TYPE = "DateTime64(6, 'UTC')"
_FILTERS = ("tenant_id", "model_id", "use_case", "evaluator", "evaluator_version", "dimension", "label")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2300, 1, 1, tzinfo=timezone.utc)  # past ClickHouse DateTime64's range: no row there
_CURSOR_VERSION = "e2"
_MAX_CURSOR = 2048


@dataclass(frozen=True)
class EvaluationFilter:
    """Which eval_results rows to list; every field set narrows the answer."""

    tenant_id: str | None = None  # scope: set for tenant keys
    model_id: str | None = None
    use_case: str | None = None
    evaluator: str | None = None
    evaluator_version: str | None = None
    dimension: str | None = None
    label: str | None = None
    failed: bool | None = None  # True: label 'fail' or a judge error (dimension '_error'); False: the rest
    min_score: float | None = None  # inclusive; rows without a score never match a score bound
    max_score: float | None = None  # inclusive
    since: datetime | None = None  # inclusive, on the judged request's time
    until: datetime | None = None  # exclusive


def evaluations_sql(table: str, flt: EvaluationFilter, limit: int, cursor: str | None,
                    dialect: Literal["duckdb", "clickhouse"]) -> tuple[str, Any]:
    """The query for one page (``limit + 1`` rows: the extra one says whether a next page exists)."""
    if limit < 1:
        raise InvalidQuery("limit must be at least 1")
    ch = dialect == "clickhouse"
    params: list[Any] | dict[str, Any] = {} if ch else []
    count = 0

    def param(value: Any, ch_type: str) -> str:
        nonlocal count
        if ch:
            count += 1
            params[f"p{count}"] = value  # type: ignore[index]
            return f"{{p{count}:{ch_type}}}"
        params.append(value)  # type: ignore[union-attr]
        return "?"

    def ts(value: datetime, what: str) -> str:
        if value.tzinfo is None:
            raise InvalidQuery(f"{what} must be a timezone-aware datetime")
        if ch:
            from infersight.store.clickhouse_sql import ts_param

            return param(ts_param(value, what), _TS_TYPE)
        return param(value, "")

    conds: list[str] = []
    for column in _FILTERS:
        value = getattr(flt, column)
        if value is not None:
            conds.append(f"{column} = {param(value, 'String')}")
    if flt.failed is not None:
        conds.append(_FAILED if flt.failed else f"NOT coalesce({_FAILED}, false)")
    for bound, op in ((flt.min_score, ">="), (flt.max_score, "<=")):
        if bound is not None:
            if not math.isfinite(bound):
                raise InvalidQuery("score bounds must be finite numbers")
            conds.append(f"score {op} {param(float(bound), 'Float64')}")
    if flt.min_score is not None and flt.max_score is not None and flt.min_score > flt.max_score:
        raise InvalidQuery("min_score must not be above max_score")
    if flt.since is not None:
        conds.append(f"{WHEN} >= {ts(flt.since, 'since')}")
    if flt.until is not None:
        conds.append(f"{WHEN} < {ts(flt.until, 'until')}")
    if cursor is not None:
        when, *rest = decode_evaluation_cursor(cursor)
        at = ts(when, "cursor time")
        conds.append(f"{WHEN} <= {at}")  # lets the engine prune by time; the keyset test follows
        # Placeholders are taken in the order they appear in the text (DuckDB's are positional).
        earlier = f"{WHEN} < {ts(when, 'cursor time')}"
        keyset = " OR ".join(
            "(" + " AND ".join([f"{WHEN} = {ts(when, 'cursor time')}",
                                *(f"{expr} = {param(v, t)}" for (expr, t), v in zip(_KEY[:i], rest[:i])),
                                f"{_KEY[i][0]} < {param(rest[i], _KEY[i][1])}"]) + ")"
            for i in range(len(_KEY))
        )
        conds.append(f"({earlier} OR {keyset})")
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    source = f"{table} FINAL" if ch else table
    cols = ", ".join(schema.EVAL_RESULTS.names)
    order = ", ".join(f"{e} DESC" for e in (WHEN, *(k for k, _ in _KEY)))
    limit_sql = param(limit + 1, "UInt64") if ch else str(limit + 1)
    return f"SELECT {cols} FROM {source} {where} ORDER BY {order} LIMIT {limit_sql}", params


def evaluations_page(rows: list[dict[str, Any]], limit: int) -> Page:
    """A page of ``evaluations_sql``'s answer (``limit + 1`` rows at most) and its next cursor."""
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], page_end_cursor(rows[limit - 1]))


def page_end_cursor(row: dict[str, Any]) -> str:
    """The cursor of a page whose last row is ``row``."""
    when = row.get("request_started_at") or row["evaluated_at"]
    span = row.get("span_id")
    return encode_evaluation_cursor(when, row["trace_id"], span or "", int(span is None), row["evaluator"],
                                    row["evaluator_version"], row["dimension"])


def encode_evaluation_cursor(when: datetime, trace_id: str, span_id: str, span_missing: int, evaluator: str,
                             evaluator_version: str, dimension: str) -> str:
    """An opaque token for the sort key of a page's last row (URL-safe base64 of a JSON list)."""
    if when.tzinfo is None:
        raise InvalidQuery("cursor time must be timezone-aware")
    micros = (when - _EPOCH) // timedelta(microseconds=1)
    raw = orjson.dumps([_CURSOR_VERSION, micros, trace_id, span_id, span_missing, evaluator, evaluator_version,
                        dimension])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_evaluation_cursor(token: str) -> tuple[Any, ...]:
    """Parse ``encode_evaluation_cursor``'s token into (time, *sort key); anything else, a token of
    another version or a time outside 1970-2299 included, is ``InvalidQuery("invalid cursor")``."""
    try:
        if not token or len(token) > _MAX_CURSOR:
            raise ValueError
        parts = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(parts, list) or len(parts) != 8 or parts[0] != _CURSOR_VERSION:
            raise ValueError
        micros, trace_id, span_id, span_missing, *rest = parts[1:]
        if type(micros) is not int or span_missing not in (0, 1) or type(span_missing) is not int \
                or not all(isinstance(k, str) for k in (trace_id, span_id, *rest)):
            raise ValueError
        when = _EPOCH + timedelta(microseconds=micros)
        if not _EPOCH <= when < _LATEST:
            raise ValueError
    except (ValueError, binascii.Error, OverflowError, orjson.JSONDecodeError):
        raise InvalidQuery("invalid cursor") from None
    return (when, trace_id, span_id, span_missing, *rest)
