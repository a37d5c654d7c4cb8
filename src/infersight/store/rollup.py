"""Rollups, backend-neutral: which tables answer a stats query, and how merged sums become stats rows.

A month of seed traffic is 60M requests; scanning them takes seconds, so ``stats`` over long windows
reads the rollup tables (``schema.ROLLUPS``: per minute, hour, six hours, day and week) instead. Each backend writes
the rollups of exactly the rows it inserts (DuckDB in the same transaction, ClickHouse through
materialized views) and merges rows at read time (ClickHouse in SQL, DuckDB in numpy:
``rollup_merge``); this module holds the parts that do not depend on the engine:

- ``plan_stats`` splits ``[since, until)`` into segments: the longest stretch aligned to the
  coarsest usable period comes from that rollup table, the unaligned edges from the next finer one,
  and what no period covers (under a minute at each end) from the raw requests, pre-aggregated the
  same way. Counts and sums are therefore exact for any window; only quantiles are estimates.
- ``stats_rows`` turns merged rows (counters plus each sketch's quantiles) into contract rows.

When the raw table is the better answer it is used instead (``source: "raw"``): short windows
(``RAW_MAX_WINDOW``; the raw scan is fast there and the quantiles exact), ``StatsQuery.exact``, and
resolutions that are not a whole number of minutes (no rollup row fits inside such a bucket).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.store import schema
from infersight.store.base import STAT_FIELDS, InvalidQuery, StatsQuery

RAW_MAX_WINDOW = timedelta(hours=6)
"""Windows up to this long are read from the raw table (exact): at seed scale that is ~500k rows."""
QUANTILES = (0.5, 0.95, 0.99)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class Segment:
    """A part of the window read from one rollup table, or from the raw requests (``rollup=None``)."""

    rollup: schema.Rollup | None
    since: datetime
    until: datetime


@dataclass(frozen=True)
class Plan:
    source: str  # the value of each row's "source" field
    segments: tuple[Segment, ...] = ()  # empty: answer from the raw table, exactly

    @property
    def raw(self) -> bool:
        return not self.segments


RAW = Plan("raw")


def check_query(query: StatsQuery) -> None:
    """Refuse what neither path can answer: naive times, bad groupings, non-positive resolutions."""
    for what in ("since", "until"):
        value = getattr(query, what)
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise InvalidQuery(f"{what} must be a timezone-aware datetime")
    bad = [g for g in query.group_by if g not in schema.GROUPABLE]
    if bad or len(set(query.group_by)) != len(query.group_by):
        raise InvalidQuery(f"group_by must be distinct columns of {list(schema.GROUPABLE)}; got {list(query.group_by)}")
    if query.resolution is not None and query.resolution <= timedelta(0):
        raise InvalidQuery("resolution must be positive")


def plan_stats(query: StatsQuery, rollups: tuple[schema.Rollup, ...] = schema.ROLLUPS) -> Plan:
    """Which tables answer ``query``: the raw table, or rollup segments (see the module docstring).

    A rollup table is usable only when the resolution is a whole number of its periods: buckets
    are aligned to the epoch, so each of its rows then falls inside exactly one bucket.
    """
    check_query(query)
    if query.exact or query.until - query.since <= RAW_MAX_WINDOW:
        return RAW
    res = query.resolution
    usable = sorted((r for r in rollups if res is None or res % r.period == timedelta(0)),
                    key=lambda r: r.period, reverse=True)
    segments = _split(_micros(query.since), _micros(query.until), usable)
    used = [s.rollup for s in segments if s.rollup is not None]
    if not used:
        return RAW
    return Plan(max(used, key=lambda r: r.period).source, tuple(segments))


def _micros(t: datetime) -> int:
    return (t - EPOCH) // _US


def _at(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _split(lo: int, hi: int, tiers: list[schema.Rollup]) -> list[Segment]:
    """``[lo, hi)`` (epoch microseconds) as segments, coarsest period first, edges recursively finer."""
    if lo >= hi:
        return []
    if not tiers:
        return [Segment(None, _at(lo), _at(hi))]
    tier, finer = tiers[0], tiers[1:]
    p = tier.micros
    start, end = -(-lo // p) * p, hi // p * p  # the aligned stretch inside [lo, hi)
    if start >= end:
        return _split(lo, hi, finer)
    return [*_split(lo, start, finer), Segment(tier, _at(start), _at(end)), *_split(end, hi, finer)]


def period_range(rollup: schema.Rollup, lo: datetime, hi: datetime) -> tuple[datetime, datetime]:
    """The periods of ``rollup`` that hold any instant of ``[lo, hi]``: ``[first start, last end)``."""
    p = rollup.micros
    return _at(_micros(lo) // p * p), _at((_micros(hi) // p + 1) * p)


def stats_rows(raw_rows: Iterable[dict[str, Any]], query: StatsQuery, source: str) -> list[dict[str, Any]]:
    """Merged rollup rows in the contract's shape: group columns, bucket_start, STAT_FIELDS, source.

    Each raw row carries the summed counters and, per sketch, ``<prefix>_q``: its estimates of
    ``QUANTILES`` (each ``None`` when no value was known), merged by the backend.
    """
    out = []
    for raw in raw_rows:
        row: dict[str, Any] = {g: raw[g] for g in query.group_by}
        if query.resolution is not None:
            row["bucket_start"] = raw["bucket_start"]
        figures: dict[str, Any] = {
            "requests": int(raw["requests"] or 0),
            "errors": int(raw["errors"] or 0),
            "prompt_tokens_sum": int(raw["prompt_tokens_sum"] or 0),
            "completion_tokens_sum": int(raw["completion_tokens_sum"] or 0),
        }
        known = int(raw["tokens_per_s_count"] or 0)
        figures["output_tokens_per_s_mean"] = float(raw["tokens_per_s_sum"]) / known if known else None
        for _, prefix, _ in schema.ROLLUP_SKETCHES:
            for label, value in zip(("p50", "p95", "p99"), raw[f"{prefix}_q"], strict=True):
                figures[f"{prefix}_{label}"] = value
        for name in STAT_FIELDS:
            row[name] = figures[name]
        row["source"] = source
        out.append(row)
    return out
