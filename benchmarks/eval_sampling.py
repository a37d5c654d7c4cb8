"""Sampling accuracy: is the observed sampling rate inside the binomial 99% interval of the rate?

``Sampler(rate).initial(tenant, trace_id)`` decides on a hash of the trace id, so over n distinct
ids the number sampled should behave like Binomial(n, rate). The 99% interval is the exact
central one: the counts k_lo and k_hi with P(X < k_lo) <= 0.5% and P(X > k_hi) <= 0.5% (quantiles
of the binomial distribution, computed here from log-gamma, no SciPy needed), divided by n.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from infersight.evaluation.sampler import Sampler


def binom_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """Central ``level`` interval of Binomial(n, p), as counts [lo, hi] (inclusive)."""
    if n <= 0:
        return 0, 0
    if p <= 0.0:
        return 0, 0
    if p >= 1.0:
        return n, n
    tail = (1.0 - level) / 2
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    a, b = max(0, int(mean - 12 * sd) - 1), min(n, int(mean + 12 * sd) + 1)
    lp, lq, lgn = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    pmf = [math.exp(lgn - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
           for k in range(a, b + 1)]
    cdf, lo, hi = 0.0, a, b
    found_lo = False
    for i, m in enumerate(pmf):
        cdf += m
        if not found_lo and cdf > tail:  # smallest k with P(X <= k) > tail: P(X < k) <= tail
            lo, found_lo = a + i, True
        if cdf >= 1.0 - tail:  # smallest k with P(X <= k) >= 1 - tail: P(X > k) <= tail
            hi = a + i
            break
    return lo, hi


def check(sampled: int, n: int, rate: float) -> dict[str, Any]:
    lo, hi = binom_interval(n, rate)
    return {"n": n, "sampled": sampled, "observed_rate": sampled / n if n else None, "rate": rate,
            "interval_99": [lo / n, hi / n] if n else None, "interval_99_counts": [lo, hi],
            "inside": lo <= sampled <= hi}


def trace_ids(kind: str, n: int, seed: int) -> list[str]:
    """``random``: 128-bit random hex ids (as W3C trace ids); ``sequential``: 0, 1, 2, ... as 32 hex."""
    if kind == "random":
        rng = random.Random(seed)
        return [f"{rng.getrandbits(128):032x}" for _ in range(n)]
    if kind == "sequential":
        return [f"{i:032x}" for i in range(1, n + 1)]
    raise ValueError(kind)


def sampler_accuracy(n: int, rates: list[float], seed: int = 1) -> list[dict[str, Any]]:
    """Sampler alone: per id kind and rate, the count sampled over n ids against the 99% interval."""
    out = []
    for kind in ("random", "sequential"):
        ids = trace_ids(kind, n, seed)
        for rate in rates:
            sampler = Sampler(rate)
            t0 = time.perf_counter()
            k = sum(1 for t in ids if sampler.initial("bench", t) == "random")
            us = (time.perf_counter() - t0) / n * 1e6
            out.append({"ids": kind, **check(k, n, rate), "us_per_decision": us})
    return out
