"""Exact retention for ClickHouse, relative to a given ``now``.

The tables carry TTL clauses (``clickhouse_schema``): a server deletes expired rows and nulls
expired text by itself, at insert and during background merges, judged by its own clock and with
no promise of when. ``apply_retention`` is the exact pass the Store contract asks for: it deletes
rows older than each table's retention, deletes ``request_content`` rows and nulls
``prompt_text``/``completion_text`` older than ``text_days`` (or the tenant's override) relative to
the caller's ``now``, synchronously, and says how many rows it touched. The scheduler runs it
like the DuckDB backend's; on a server it mostly finds that TTL got there first and touches nothing.

Rows go with lightweight ``DELETE`` (a row mask, no part rewrite); text goes with a synchronous
``ALTER TABLE ... UPDATE`` mutation (``mutations_sync = 2``), issued only when a count says there is
something to null, because every mutation rewrites the affected column files. Counts use ``FINAL``
so a not-yet-collapsed duplicate is not counted twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from infersight.store import correlation_rollup, schema
from infersight.store.base import RetentionPolicy
from infersight.store.clickhouse_exec import Executor
from infersight.store.clickhouse_sql import TS_PARAM, aware, table_ref, ts_param

RETENTION_FIELDS = (  # table, its policy field
    ("requests", "requests_days"),
    ("eval_results", "eval_results_days"),
    ("telemetry", "telemetry_days"),
    ("cost_lines", "cost_lines_days"),
)
_HAS_TEXT = "(prompt_text IS NOT NULL OR completion_text IS NOT NULL)"


def _count(executor: Executor, sql: str, params: dict[str, Any]) -> int:
    rows = executor.query(sql, params).to_pylist()
    return int(rows[0]["n"]) if rows else 0


def text_cutoff(now: datetime, policy: RetentionPolicy) -> tuple[str, dict[str, Any]]:
    """An expression for each row's text cutoff (the tenant's override, else ``text_days``)."""
    params: dict[str, Any] = {"text_default": ts_param(now - timedelta(days=policy.text_days))}
    overrides = policy.text_days_by_tenant
    if not overrides:
        return f"{{text_default:{TS_PARAM}}}", params
    params["text_tenants"] = [str(t) for t in overrides]
    params["text_cutoffs"] = [ts_param(now - timedelta(days=d)) for d in overrides.values()]
    expr = (
        "transform(tenant_id, {text_tenants:Array(String)}, "
        f"{{text_cutoffs:Array({TS_PARAM})}}, {{text_default:{TS_PARAM}}})"
    )
    return expr, params


def apply_retention(executor: Executor, database: str, now: datetime, policy: RetentionPolicy) -> dict[str, int]:
    """Delete rows past retention, then null request text past its cutoff; rows touched per table.

    Returns one entry per table (rollup tables included: ``rollups_days``, request rollups never
    before ``requests_days``, as stats read them in place of raw rows; ``request_content``:
    ``text_days``) plus ``requests_text`` (rows whose text was nulled) and ``eval_results_text`` (judge
    explanations nulled), as DuckDB does.
    """
    aware(now, "now")
    removed: dict[str, int] = {}
    for table, days_field in RETENTION_FIELDS:
        ref = table_ref(database, table)
        column = schema.TABLES[table].time_column
        params = {"cutoff": ts_param(now - timedelta(days=getattr(policy, days_field)))}
        where = f"{column} < {{cutoff:{TS_PARAM}}}"
        n = _count(executor, f"SELECT count() AS n FROM {ref} FINAL WHERE {where}", params)
        if n:
            executor.command(f"DELETE FROM {ref} WHERE {where}", params)
        removed[table] = n
    kept = {r.name: max(policy.rollups_days, policy.requests_days) for r in schema.ROLLUPS}  # as row_ttl_expr
    for name in (*kept, correlation_rollup.TABLE):  # FINAL: partials count once
        ref = table_ref(database, name)
        params = {"cutoff": ts_param(now - timedelta(days=kept.get(name, policy.rollups_days)))}
        where = f"period_start < {{cutoff:{TS_PARAM}}}"
        n = _count(executor, f"SELECT count() AS n FROM {ref} FINAL WHERE {where}", params)
        if n:
            executor.command(f"DELETE FROM {ref} WHERE {where}", params)
        removed[name] = n
    cutoff, params = text_cutoff(now, policy)
    ref = table_ref(database, "request_content")  # masked text: the whole row is text
    where = f"started_at < {cutoff}"
    n = _count(executor, f"SELECT count() AS n FROM {ref} FINAL WHERE {where}", params)
    if n:
        executor.command(f"DELETE FROM {ref} WHERE {where}", params)
    removed["request_content"] = n
    where = f"{_HAS_TEXT} AND started_at < {cutoff}"
    ref = table_ref(database, "requests")
    n = _count(executor, f"SELECT count() AS n FROM {ref} FINAL WHERE {where}", params)
    if n:
        executor.command(
            f"ALTER TABLE {ref} UPDATE prompt_text = NULL, completion_text = NULL WHERE {where} "
            "SETTINGS mutations_sync = 2",
            params,
        )
    removed["requests_text"] = n
    removed["eval_results_text"] = _null_judge_text(executor, database, cutoff, params)
    return removed


def _null_judge_text(executor: Executor, database: str, cutoff: str, params: dict[str, Any]) -> int:
    """The judge's explanations past the text cutoff: they can quote the text the judge read. No column
    TTL does this (the request's start time is nullable on old rows), so this pass is the only one."""
    ref = table_ref(database, "eval_results")
    where = (f"evaluator = '{schema.JUDGE_EVALUATOR}' AND explanation IS NOT NULL "
             f"AND coalesce(request_started_at, evaluated_at) < {cutoff}")
    n = _count(executor, f"SELECT count() AS n FROM {ref} FINAL WHERE {where}", params)
    if n:
        executor.command(f"ALTER TABLE {ref} UPDATE explanation = NULL WHERE {where} SETTINGS mutations_sync = 2",
                         params)
    return n
