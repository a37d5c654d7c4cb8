"""Telling "the sink is down" from "these records break the sink", by bisecting a failed batch.

A sink that raises on a batch may be unavailable (every part would fail: hold the batch, retry it,
dead-letter nothing) or may choke on a few records (a value the store cannot hold): then the rest
must flow on and only those few go to dead-letter. Both buses ask the same question: the Redis
consumer (``redis_consumer``) and the embedded bus (``memory``). The answer is the same walk: halve
the batch, deliver each part, and keep halving the parts that fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")

PROBE_LEVELS = 2  # bisection levels tried before calling a failure an outage


def halves(items: list[T]) -> list[list[T]]:
    middle = (len(items) + 1) // 2
    return [part for part in (items[:middle], items[middle:]) if part]


class Isolation(NamedTuple, Generic[T]):
    """What bisecting a failed batch showed; every item not delivered is in exactly one list."""

    failing: list[T]  # failed alone, and a later part went through: the sink works, these do not
    suspect: list[T]  # failed alone after the last part that went through: proves nothing yet
    untried: list[T]  # not tried alone: the walk stopped (the sink looked down from there)


def isolate_failures(deliver: Callable[[list[T]], bool], items: list[T], *, full: bool = False) -> Isolation[T] | None:
    """Deliver ``items`` (a batch that just failed whole) in parts, in their order. None when
    nothing went through and ``PROBE_LEVELS`` levels of the left edge failed (the sink looks down;
    ``full``: bisect to the end anyway, for a batch dense with poison). Otherwise the items that
    were not delivered, split by what proves them bad.

    A record's failure proves something only when a part delivered after it went through: had the
    sink gone down in the middle of the walk, every part after that point would fail alone too.
    So failures after the last success are only ``suspect`` (never counted against the record).
    The same probe guards the rest of the walk: once ``PROBE_LEVELS`` parts in a row have failed
    since the last success, and a record failed meanwhile, the walk stops and what is left is
    ``untried``, so an outage that starts mid-walk costs a few calls, not one per record.

    Depth first, left before right: apart from the records that fail, every record reaches the sink
    in its batch order, also when the failure was a passing one. Parts that pass are delivered as a
    side effect; an idempotent sink absorbs a later redelivery.
    """
    failing: list[T] = []
    unproven: list[T] = []
    untried: list[T] = []
    proved = stopped = False
    streak = 1  # failed deliveries since the last success: the caller's whole batch

    def walk(part: list[T]) -> None:
        nonlocal proved, stopped, streak
        if stopped:
            untried.extend(part)
            return
        if deliver(part):
            proved, streak = True, 0
            failing.extend(unproven)  # the sink took this after they failed: they are the problem
            unproven.clear()
            return
        if len(part) == 1:
            unproven.append(part[0])
            return
        streak += 1
        if not full and streak > PROBE_LEVELS and (not proved or unproven):
            stopped = True  # nothing went through for a while: the sink looks down from here
            untried.extend(part)
            return
        for half in halves(part):
            walk(half)

    for half in halves(items):
        walk(half)
    if not proved:
        return None
    return Isolation(failing, unproven, untried)
