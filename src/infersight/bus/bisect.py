"""Telling "the sink is down" from "these records break the sink", by bisecting a failed batch.

A sink that raises on a batch may be unavailable (every part would fail: hold the batch, retry it,
dead-letter nothing) or may choke on a few records (a value the store cannot hold): then the rest
must flow on and only those few go to dead-letter. Both buses ask the same question: the Redis
consumer (``redis_consumer``) and the embedded bus (``memory``). The answer is the same walk: halve
the batch, deliver each part, and keep halving the parts that fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PROBE_LEVELS = 2  # bisection levels tried before calling a failure an outage


def halves(items: list[T]) -> list[list[T]]:
    middle = (len(items) + 1) // 2
    return [part for part in (items[:middle], items[middle:]) if part]


def isolate_failures(deliver: Callable[[list[T]], bool], items: list[T], *, full: bool = False) -> list[T] | None:
    """Deliver ``items`` in parts, in their order. Returns the items that fail alone, once some part
    went through (the sink works); None when the first ``PROBE_LEVELS`` levels of the left edge
    all failed (the sink looks down; ``full``: bisect to the end anyway, for a batch dense with
    poison).

    Depth first, left before right: apart from the records that fail, every record reaches the sink
    in its batch order, also when the failure was a passing one. Parts that pass are delivered as a
    side effect; an idempotent sink absorbs a later redelivery.
    """
    failing: list[T] = []
    proved = False

    def walk(part: list[T], depth: int) -> bool:
        nonlocal proved
        if deliver(part):
            proved = True
            return True
        if len(part) == 1:
            failing.append(part[0])
            return True
        if not proved and not full and depth >= PROBE_LEVELS:
            return False  # nothing went through yet: call it an outage
        return all(walk(half, depth + 1) for half in halves(part))

    if not all(walk(half, 1) for half in halves(items)):
        return None
    return failing if proved else None
