"""DDSketch: a mergeable quantile sketch whose estimates are within a relative error ``alpha``.

Why this sketch: rollups must answer p50/p95/p99 for any union of minutes, hours and days, so the
summary of a period has to merge losslessly with others (t-digest merges only approximately), and
the guarantee has to be relative, because latencies span orders of magnitude. DDSketch (Masson,
Rim, Lee, VLDB 2019) maps a positive value ``x`` to the bucket ``i = ceil(ln(x) / ln(gamma))`` with
``gamma = (1 + alpha) / (1 - alpha)``; bucket ``i`` holds ``(gamma^(i-1), gamma^i]`` and is represented
by ``2 * gamma^i / (gamma + 1)``, which is within ``alpha`` of every value in it. A sketch is just
``{bucket index: count}``, so merging is adding counts: exactly what ``SUM ... GROUP BY`` and
ClickHouse's ``sumMap`` do, which is why the stores compute bucket indexes in SQL and merge there
(DuckDB's stats reads merge in numpy instead: ``grouped_quantiles``).

The bucket-index expression is duplicated in SQL (``duckdb_rollup``, ``clickhouse_rollup``); both
use ``LN_GAMMA``, ``MIN_INDEXABLE``, ``ZERO_INDEX`` and ``MAX_INDEX`` from here, so the three agree
(up to the last ulp of ``ln``, which can move a value sitting exactly on a bucket edge by one bucket
and still keeps it within ``alpha``). ``ALPHA`` is part of the stored format: changing it needs the
rollup tables rebuilt.

Why ``ALPHA`` is 0.99998% and not 0.5%: a read merges every bucket of every rollup row it touches, so
its cost follows the number of buckets, and the contract promises 1%, not 0.5%. Squaring ``gamma``
halves the buckets (a 30-day stats query merges ~3M entries instead of ~6M) and keeps the 1% bound
with the 0.5% sketches' buckets nested in the new ones: new bucket ``j`` is exactly old buckets
``2j - 1`` and ``2j``, so the sketches stored at ``V2_ALPHA`` convert losslessly (``v2_index``),
which is what the schema migration does.

Quantiles follow the stores' exact definition (linear interpolation between the order statistics
around rank ``q * (n - 1)``, numpy's default): the sketch estimates both order statistics from their
buckets and interpolates, so the estimate is within ``alpha`` of the exact value, not merely of one
of its neighbours (it is ``(1 - f)·r_lo + f·r_hi`` with each ``r`` within ``alpha`` of its order
statistic, so its error is at most ``alpha·((1 - f)·x_lo + f·x_hi)``, ``alpha`` times the exact
value). Values at or below ``MIN_INDEXABLE`` share one zero bucket represented by 0.

Reads merge many sketches at once: ``grouped_quantiles`` does it for parallel arrays of (group,
bucket, count) with numpy (a dense count matrix per group, ``np.add.at`` and ``cumsum``), and
``quantiles_from_order_stats`` finishes what SQL started when an engine finds the buckets itself.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

import numpy as np

MIN_INDEXABLE = 1e-3
"""Values (ms) at or below this go to the zero bucket: one microsecond is below any timer here."""
ZERO_INDEX = -32768
"""Bucket index of the zero bucket; the indexes fit a 16-bit integer (Int16 / SMALLINT)."""
MAX_INDEX = 32767
"""Indexes are clamped to [-MAX_INDEX, MAX_INDEX]; with ALPHA that is e^±655, never reached."""


def gamma_of(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return (1.0 + alpha) / (1.0 - alpha)


V2_ALPHA = 0.005
"""The accuracy of the sketches stored before the schema step that moved them to ``ALPHA``."""
GAMMA = gamma_of(V2_ALPHA) ** 2
ALPHA = (GAMMA - 1.0) / (GAMMA + 1.0)
"""Relative accuracy of the stored sketches: 0.0099998, so estimates are within 1% of the exact quantile."""
LN_GAMMA = math.log(GAMMA)
_DENSE_CELLS = 1 << 22
"""``grouped_quantiles`` counts at most this many (group, bucket) cells at once (32 MiB of int64)."""


def v2_index(index: int) -> int:
    """The ``ALPHA`` bucket holding a ``V2_ALPHA`` bucket: ``ceil(index / 2)`` (the zero bucket stays)."""
    return index if index == ZERO_INDEX else (index + 1) >> 1


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
    return 2.0 * math.exp(index * (LN_GAMMA if alpha == ALPHA else math.log(gamma))) / (gamma + 1.0)


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


def quantiles_from_order_stats(
    n: int, buckets: Sequence[int], qs: Sequence[float], alpha: float = ALPHA
) -> list[float | None]:
    """Quantiles of a merged sketch of ``n`` values from the buckets of their order statistics.

    ``buckets`` holds, per q, the buckets of the order statistics ``floor(q·(n - 1))`` and the next
    one (``2·len(qs)`` indexes): what an engine that merged the sketch itself (ClickHouse) returns,
    so only a few numbers per group leave it. Same arithmetic as ``quantiles_from_bins``.
    """
    if n <= 0:
        return [None] * len(qs)
    out: list[float | None] = []
    for i, q in enumerate(qs):
        rank = q * (n - 1)
        low = bucket_value(buckets[2 * i], alpha)
        out.append(low + (bucket_value(buckets[2 * i + 1], alpha) - low) * (rank - math.floor(rank)))
    return out


Entries = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Sketch entries as parallel arrays: the group (0-based), the bucket index and the count of each."""


def grouped_quantiles(parts: Sequence[Entries], ngroups: int, qs: Sequence[float]) -> np.ndarray:
    """Quantiles of ``ngroups`` merged sketches whose entries come in ``parts`` (see ``Entries``).

    Returns a ``(ngroups, len(qs))`` float array, NaN for a group without values. Merging is a dense
    count matrix per group (``np.add.at`` at ``group·span + bucket``: no hashing, no sorting, a few
    ns an entry) and ``cumsum``; each order statistic is then the first bucket whose running count
    passes it, as in ``quantiles_from_bins``. Groups are taken in slices so the matrix stays under
    ``_DENSE_CELLS``; the zero bucket is counted apart (its index is far below the others).
    """
    out = np.full((ngroups, len(qs)), np.nan)
    zeros = np.zeros(ngroups, dtype=np.int64)
    kept: list[Entries] = []
    for groups, keys, counts in parts:
        counts = counts.astype(np.int64, copy=False)
        zero = keys == ZERO_INDEX
        if zero.any():
            np.add.at(zeros, groups[zero], counts[zero])
            groups, keys, counts = groups[~zero], keys[~zero], counts[~zero]
        if keys.size:
            kept.append((groups, keys, counts))
    kmin = min((int(k.min()) for _, k, _ in kept), default=0)
    span = max((int(k.max()) for _, k, _ in kept), default=kmin) - kmin + 1
    step = max(1, _DENSE_CELLS // span)
    for g0 in range(0, ngroups, step):
        g1 = min(ngroups, g0 + step)
        dense = np.zeros((g1 - g0) * span, dtype=np.int64)
        for groups, keys, counts in kept:
            if g1 - g0 < ngroups:
                sel = (groups >= g0) & (groups < g1)
                groups, keys, counts = groups[sel], keys[sel], counts[sel]
            cells = keys.astype(np.intp)
            cells += (groups - g0) * span - kmin  # in place: these arrays hold millions of entries
            np.add.at(dense, cells, counts)  # exact integers (faster than float bincount in numpy 2)
        out[g0:g1] = _pick(np.cumsum(dense.reshape(-1, span), axis=1), zeros[g0:g1], kmin, qs)
    return out


def _pick(cum: np.ndarray, zeros: np.ndarray, kmin: int, qs: Sequence[float]) -> np.ndarray:
    """The interpolated quantiles of each row of running bucket counts (after ``zeros`` zero values)."""
    n = cum[:, -1] + zeros
    out = np.full((len(n), len(qs)), np.nan)
    has = n > 0

    def order_stat(j: np.ndarray) -> np.ndarray:
        """Estimates of the j-th smallest values (0-based): 0 in the zero bucket, else the bucket
        whose running count first exceeds j."""
        col = (cum <= (j - zeros)[:, None]).sum(axis=1)
        value = 2.0 * np.exp((kmin + col) * LN_GAMMA) / (GAMMA + 1.0)
        return np.where(j < zeros, 0.0, value)

    for i, q in enumerate(qs):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        rank = q * (n - 1)
        lo = np.floor(rank)
        low = order_stat(lo)
        out[:, i] = np.where(has, low + (order_stat(np.minimum(lo + 1, n - 1)) - low) * (rank - lo), np.nan)
    return out
