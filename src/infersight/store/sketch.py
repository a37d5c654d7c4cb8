"""DDSketch: a mergeable quantile sketch whose estimates are within a relative error ``alpha``.

Why this sketch: rollups must answer p50/p95/p99 for any union of minutes, hours and days, so the
summary of a period has to merge losslessly with others (t-digest merges only approximately), and
the guarantee has to be relative, because latencies span orders of magnitude. DDSketch (Masson,
Rim, Lee, VLDB 2019) maps a positive value ``x`` to the bucket ``i = ceil(ln(x) / ln(gamma))`` with
``gamma = (1 + alpha) / (1 - alpha)``; bucket ``i`` holds ``(gamma^(i-1), gamma^i]`` and is represented
by ``2 * gamma^i / (gamma + 1)``, which is within ``alpha`` of every value in it. A sketch is just
``{bucket index: count}``, so merging is adding counts: exactly what ``SUM ... GROUP BY`` and
ClickHouse's ``sumMap`` do, which is why the stores compute bucket indexes in SQL and merge in SQL.

The bucket-index expression is duplicated in SQL (``duckdb_rollup``, ``clickhouse_rollup``); both
use ``LN_GAMMA``, ``MIN_INDEXABLE``, ``ZERO_INDEX`` and ``MAX_INDEX`` from here, so the three agree
(up to the last ulp of ``ln``, which can move a value sitting exactly on a bucket edge by one bucket
and still keeps it within ``alpha``). ``ALPHA`` is part of the stored format: changing it needs the
rollup tables rebuilt.

Quantiles follow the stores' exact definition (linear interpolation between the order statistics
around rank ``q * (n - 1)``, numpy's default): the sketch estimates both order statistics from their
buckets and interpolates, so the estimate is within ``alpha`` of the exact value, not merely of one
of its neighbours. Values at or below ``MIN_INDEXABLE`` share one zero bucket represented by 0.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

ALPHA = 0.005
"""Relative accuracy of the stored sketches: estimates are within 0.5% of the exact quantile."""
MIN_INDEXABLE = 1e-3
"""Values (ms) at or below this go to the zero bucket: one microsecond is below any timer here."""
ZERO_INDEX = -32768
"""Bucket index of the zero bucket; the indexes fit a 16-bit integer (Int16 / SMALLINT)."""
MAX_INDEX = 32767
"""Indexes are clamped to [-MAX_INDEX, MAX_INDEX]; with ALPHA = 0.005 that is e^±327, never reached."""


def gamma_of(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return (1.0 + alpha) / (1.0 - alpha)


GAMMA = gamma_of(ALPHA)
LN_GAMMA = math.log(GAMMA)


class DDSketch:
    """A DDSketch with relative accuracy ``alpha``: ``add``, ``merge`` and ``quantile``.

    ``bins`` is the whole state (``{index: count}``), which is also its serialised form.
    """

    __slots__ = ("alpha", "gamma", "ln_gamma", "bins", "count")

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self.gamma = gamma_of(alpha)
        self.ln_gamma = math.log(self.gamma)
        self.bins: dict[int, int] = {}
        self.count = 0

    def index(self, value: float) -> int | None:
        """The bucket of ``value``; ``None`` for NaN, which no bucket can represent."""
        if math.isnan(value):
            return None
        if value <= MIN_INDEXABLE:
            return ZERO_INDEX
        if math.isinf(value):
            return MAX_INDEX
        return max(-MAX_INDEX, min(MAX_INDEX, math.ceil(math.log(value) / self.ln_gamma)))

    def value(self, index: int) -> float:
        """The representative of a bucket: within ``alpha`` of every value that maps to it."""
        if index == ZERO_INDEX:
            return 0.0
        return 2.0 * math.exp(index * self.ln_gamma) / (self.gamma + 1.0)

    def add(self, value: float, count: int = 1) -> None:
        i = self.index(value)
        if i is None or count <= 0:
            return
        self.bins[i] = self.bins.get(i, 0) + count
        self.count += count

    def merge(self, other: DDSketch) -> None:
        """Add ``other``'s counts into this sketch (both must share ``alpha``)."""
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches of alpha {self.alpha} and {other.alpha}")
        for i, n in other.bins.items():
            self.bins[i] = self.bins.get(i, 0) + n
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        keys = sorted(self.bins)
        return quantiles_from_bins(keys, [self.bins[k] for k in keys], qs, self.alpha)

    def to_dict(self) -> dict[int, int]:
        return dict(self.bins)

    @classmethod
    def from_dict(cls, bins: Mapping[int, int], alpha: float = ALPHA) -> DDSketch:
        sketch = cls(alpha)
        for i, n in bins.items():
            if n > 0:
                sketch.bins[int(i)] = sketch.bins.get(int(i), 0) + int(n)
                sketch.count += int(n)
        return sketch

    @classmethod
    def of(cls, values: Iterable[float], alpha: float = ALPHA) -> DDSketch:
        sketch = cls(alpha)
        for v in values:
            sketch.add(v)
        return sketch


def bucket_value(index: int, alpha: float = ALPHA) -> float:
    """``DDSketch.value`` for the module's default ``alpha`` (without building a sketch)."""
    if index == ZERO_INDEX:
        return 0.0
    gamma = GAMMA if alpha == ALPHA else gamma_of(alpha)
    return 2.0 * math.exp(index * math.log(gamma)) / (gamma + 1.0)


def quantiles_from_bins(
    keys: Sequence[int], counts: Sequence[int], qs: Sequence[float], alpha: float = ALPHA
) -> list[float | None]:
    """Quantiles of a merged sketch given as parallel bucket indexes and counts.

    This is the read path of the stores: SQL returns, per output row, the summed counts per bucket;
    this turns them into the contract's linear-interpolation quantiles in O(buckets), without a
    Python loop over the buckets (``accumulate`` and ``bisect`` run in C). ``keys`` need not be
    sorted; zero and negative counts are ignored. ``None`` for each q when the sketch is empty.
    """
    pairs = sorted((k, c) for k, c in zip(keys, counts, strict=True) if c > 0)
    if not pairs:
        return [None] * len(qs)
    idx = [k for k, _ in pairs]
    cum = list(accumulate(c for _, c in pairs))
    n = cum[-1]
    cache: dict[int, float] = {}

    def order_stat(j: int) -> float:
        """Estimate of the j-th smallest value (0-based): the bucket whose cumulative count passes j."""
        if j not in cache:
            cache[j] = bucket_value(idx[bisect.bisect_right(cum, j)], alpha)
        return cache[j]

    out: list[float | None] = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        rank = q * (n - 1)
        lo = math.floor(rank)
        hi = min(lo + 1, n - 1)
        low = order_stat(lo)
        out.append(low + (order_stat(hi) - low) * (rank - lo))
    return out
