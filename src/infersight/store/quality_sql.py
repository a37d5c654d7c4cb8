"""The quality query (``Store.quality``): eval_results aggregated per evaluator version and dimension.

Both backends run the same SQL; only parameter placeholders differ (``?`` for DuckDB, typed
``{name:Type}`` for ClickHouse), and ClickHouse reads with ``FINAL`` so replaced rows count once.

Every row is one (evaluator, evaluator_version, dimension) series, optionally split by tenant,
model and use case: versions are never averaged together, because a new judge model, rubric or
parameter set is a new baseline. The window applies to the time of the *request*
(``request_started_at``, else ``evaluated_at``), so late judgements land in the period they judge;
``window_on="evaluation"`` windows on ``evaluated_at`` instead: when the judge was paid, which is
what the breaker's budget counts (a backlog of yesterday's requests judged today is today's spend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from infersight.store.base import InvalidQuery

QUALITY_GROUPABLE = ("tenant_id", "model_id", "use_case")
QUALITY_SERIES = ("evaluator", "evaluator_version", "dimension")
QUALITY_FIELDS = ("evaluations", "scored", "score_mean", "score_stddev", "score_min", "score_max", "failures",
                  "failure_rate", "judge_tokens", "judge_cost", "first_evaluated_at", "last_evaluated_at")
"""Each quality row: the group_by columns, the series columns, then these. ``failures`` counts rows
labelled ``fail`` (deterministic checks) and judge errors; ``failure_rate`` is failures / evaluations.
``scored`` counts the rows with a score (what ``score_mean`` and the sample ``score_stddev`` cover):
the drift check (``evaluation/drift.py``) tests two windows' means with them."""
_FILTERS = ("tenant_id", "model_id", "use_case", "evaluator", "evaluator_version", "dimension")


@dataclass(frozen=True)
class QualityQuery:
    since: datetime
    until: datetime
    group_by: tuple[str, ...] = ()  # any of QUALITY_GROUPABLE
    tenant_id: str | None = None  # scope: set for tenant keys
    model_id: str | None = None
    use_case: str | None = None
    evaluator: str | None = None
    evaluator_version: str | None = None
    dimension: str | None = None
    window_on: Literal["request", "evaluation"] = "request"
    # drift: only rows whose request was sampled whatever its outcome (``representative``; rows
    # written before the column existed count, as unknown): errors, guardrail hits and
    # low-confidence answers are always sampled, so the pooled mix moved with the sampling rate
    representative_only: bool = False


def quality_sql(table: str, query: QualityQuery, dialect: Literal["duckdb", "clickhouse"]) -> tuple[str, Any]:
    bad = [g for g in query.group_by if g not in QUALITY_GROUPABLE]
    if bad:
        raise InvalidQuery(f"quality can be grouped by {list(QUALITY_GROUPABLE)}, not {bad}")
    ch = dialect == "clickhouse"
    params: list[Any] | dict[str, Any] = {} if ch else []

    def param(name: str, value: Any, ch_type: str) -> str:
        if ch:
            params[name] = value  # type: ignore[index]
            return f"{{{name}:{ch_type}}}"
        params.append(value)  # type: ignore[union-attr]
        return "?"

    when = "evaluated_at" if query.window_on == "evaluation" else "coalesce(request_started_at, evaluated_at)"
    ts_type = "DateTime64(6, 'UTC')"
    since, until = _times(query, ch)
    conds = [f"{when} >= {param('since', since, ts_type)}", f"{when} < {param('until', until, ts_type)}"]
    for column in _FILTERS:
        value = getattr(query, column)
        if value is not None:
            conds.append(f"{column} = {param(column, value, 'String')}")
    if query.representative_only:
        conds.append("coalesce(representative, true)")
    keys = [*query.group_by, *QUALITY_SERIES]
    fails = "(label = 'fail' OR dimension = '_error')"
    failures = f"countIf({fails})" if ch else f"count(*) FILTER (WHERE {fails})"
    source = f"{table} FINAL" if ch else table
    stddev = "stddevSampStable(score)" if ch else "stddev_samp(score)"  # stddevSamp: 8e-9 on a constant 0.4
    sql = (
        f"SELECT {', '.join(keys)}, count(*) AS evaluations, count(score) AS scored, avg(score) AS score_mean, "
        f"{stddev} AS score_stddev, min(score) AS score_min, "
        f"max(score) AS score_max, {failures} AS failures, "
        f"coalesce(sum(judge_tokens), 0) AS judge_tokens, coalesce(sum(judge_cost), 0) AS judge_cost, "
        f"min(evaluated_at) AS first_evaluated_at, max(evaluated_at) AS last_evaluated_at "
        f"FROM {source} WHERE {' AND '.join(conds)} GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    )
    return sql, params


def _times(query: QualityQuery, ch: bool) -> tuple[Any, Any]:
    for name in ("since", "until"):
        value = getattr(query, name)
        if value.tzinfo is None:
            raise InvalidQuery(f"{name} must be a timezone-aware datetime")
    if not ch:
        return query.since, query.until
    from infersight.store.clickhouse_sql import ts_param

    return ts_param(query.since, "since"), ts_param(query.until, "until")


def quality_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Typed rows: integers as int, the failure rate computed, NaN-free."""
    out = []
    for row in rows:
        n = int(row["evaluations"])
        row["evaluations"] = n
        row["scored"] = int(row["scored"])
        row["failures"] = int(row["failures"])
        row["judge_tokens"] = int(row["judge_tokens"])
        row["judge_cost"] = float(row["judge_cost"])
        row["failure_rate"] = row["failures"] / n if n else None
        for k in ("score_mean", "score_stddev", "score_min", "score_max"):
            v = row.get(k)  # ClickHouse gives nan (or inf) where DuckDB gives NULL, e.g. a stddev of one score
            row[k] = None if v is None or not math.isfinite(v) else float(v)
        out.append(row)
    return out
