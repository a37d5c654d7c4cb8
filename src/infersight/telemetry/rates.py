"""Counters to rates, histograms to quantiles, hits over queries: maths between two scrapes.

Engines export cumulative values since their start. What an operator wants is what happened in
the last interval: tokens per second now, the p99 TTFT of the last 10 s, the hit rate of the
requests just served. ``RateTracker`` keeps the previous scrape of every series per
(instance, series key) and returns increases; the pure functions turn increases into figures.

Conventions (Prometheus's, so figures agree with a PromQL ``rate``/``histogram_quantile``):

- a counter that drops has been reset (engine restart): its whole new value is the increase;
- a histogram whose count or any bucket drops, or whose bucket bounds change, has been reset;
- quantiles interpolate linearly inside the bucket holding the rank; a rank in the ``+Inf``
  bucket returns the largest finite bound; the first bucket starts at 0 (if its bound is > 0);
- the first scrape of a series, a non-positive interval, an interval with no observations, or a
  hit rate with no queries give None: no figure, never a made-up 0;
- a value that is not finite (``NaN``, ``+Inf``, ``-Inf``: an engine mid-restart, a broken exporter)
  gives None and is not remembered, so the next finite value is measured against the last finite one
  instead of reading as a reset (a spike of the whole counter) or an infinite rate.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Hashable, Sequence

__all__ = ["Buckets", "RateTracker", "hit_ratio", "quantile"]

# Cumulative histogram buckets: (upper bound, cumulative count), sorted by bound, +Inf last.
Buckets = Sequence[tuple[float, float]]
INF = math.inf


def quantile(q: float, buckets: Buckets) -> float | None:
    """``histogram_quantile(q, ...)`` over cumulative buckets; None when it is undefined.

    Undefined: no +Inf bucket, fewer than two buckets, no observations, or a count that is not finite
    (or a NaN bound): a figure from those would be NaN or made up. Counts that are not
    monotonic (a scrape can catch buckets mid-update) are made monotonic first, as Prometheus does.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if len(buckets) < 2 or buckets[-1][0] != INF:
        return None
    if not all(math.isfinite(c) for _, c in buckets) or any(math.isnan(b) for b, _ in buckets):
        return None
    bounds = [b for b, _ in buckets]
    counts: list[float] = []
    top = 0.0
    for _, c in buckets:
        top = c if c > top else top
        counts.append(top)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = bisect_left(counts, rank)
    if b == len(bounds) - 1:  # the rank falls in the +Inf bucket
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if b == 0 else bounds[b - 1]
    below = 0.0 if b == 0 else counts[b - 1]
    in_bucket = counts[b] - below
    if in_bucket <= 0:
        return bounds[b]
    return start + (bounds[b] - start) * ((rank - below) / in_bucket)


def hit_ratio(hits: float, queries: float) -> float | None:
    """Hits over queries in one interval (both increases); None when nothing was queried."""
    if queries <= 0:
        return None
    return min(1.0, max(0.0, hits / queries))


class RateTracker:
    """The previous scrape of each series, per (instance, key), to compute increases.

    Keys are whatever identifies a series to the caller (e.g. sample name and label pairs).
    Times are seconds (``time.time()`` or monotonic; one clock per tracker). Not thread-safe:
    one tracker per collector loop.
    """

    def __init__(self, max_age_s: float = 3600.0) -> None:
        self.max_age_s = max_age_s
        self._counters: dict[tuple[str, Hashable], tuple[float, float]] = {}
        self._hists: dict[tuple[str, Hashable], tuple[float, tuple[float, ...], tuple[float, ...]]] = {}

    def __len__(self) -> int:
        return len(self._counters) + len(self._hists)

    def counter_increase(self, instance: str, key: Hashable, value: float, t: float) -> tuple[float, float] | None:
        """(increase, seconds) since the previous value of this series; None on its first value."""
        if not math.isfinite(value):  # no reading: keep the last finite one as the base
            return None
        k = (instance, key)
        prev = self._counters.get(k)
        self._counters[k] = (t, value)
        if prev is None:
            return None
        t0, v0 = prev
        dt = t - t0
        if dt <= 0:
            return None
        return (value - v0 if value >= v0 else value), dt

    def counter_rate(self, instance: str, key: Hashable, value: float, t: float) -> float | None:
        """Per-second increase of a counter since its previous value."""
        inc = self.counter_increase(instance, key, value, t)
        return None if inc is None else inc[0] / inc[1]

    def histogram_increase(
        self, instance: str, key: Hashable, buckets: Buckets, t: float
    ) -> tuple[list[tuple[float, float]], float] | None:
        """(cumulative bucket increases, seconds) since the previous scrape of this histogram."""
        bounds = tuple(b for b, _ in buckets)
        counts = tuple(c for _, c in buckets)
        if not all(map(math.isfinite, counts)) or any(map(math.isnan, bounds)):
            return None  # no reading this time: the last finite one stays the base
        k = (instance, key)
        prev = self._hists.get(k)
        self._hists[k] = (t, bounds, counts)
        if prev is None:
            return None
        t0, bounds0, counts0 = prev
        dt = t - t0
        if dt <= 0:
            return None
        if bounds0 != bounds or any(c < c0 for c, c0 in zip(counts, counts0)):
            return list(zip(bounds, counts)), dt  # reset: everything since the restart is new
        return [(b, c - c0) for b, c, c0 in zip(bounds, counts, counts0)], dt

    def hit_rate(self, instance: str, key: Hashable, hits: float, queries: float, t: float) -> float | None:
        """Hit ratio of the interval since the previous scrape of this (hits, queries) pair."""
        h = self.counter_increase(instance, (key, "hits"), hits, t)
        q = self.counter_increase(instance, (key, "queries"), queries, t)
        if h is None or q is None:
            return None
        return hit_ratio(h[0], q[0])

    def forget(self, instance: str) -> None:
        """Drop an instance's state (a target removed from config)."""
        for store in (self._counters, self._hists):
            for k in [k for k in store if k[0] == instance]:
                del store[k]

    def expire(self, now: float) -> int:
        """Drop series not seen for ``max_age_s`` (label sets that disappeared); returns how many."""
        cutoff = now - self.max_age_s
        dropped = 0
        for store in (self._counters, self._hists):
            old = [k for k, v in store.items() if v[0] < cutoff]
            for k in old:
                del store[k]
            dropped += len(old)
        return dropped
