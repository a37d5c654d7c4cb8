"""Where the eval breaker's signals come from: lag (oldest unevaluated task) and judge spend.

In-process evaluation (memory bus): ``PendingTasks`` follows each task from the masking queue to its
write, and ``LocalSpend`` adds up the judge cost of written results (seeded from the store at start,
so a restart does not forget the day's spend). Scale-out: ``RedisStreamLag`` reads the eval stream's
consumer group (oldest pending or undelivered entry; an entry id is its XADD time in ms) and
``RedisSpend`` keeps one counter per budget period in Redis, added to by every eval worker and read
by every gateway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.model import EvalResult, EvalTask

TaskKey = tuple[str, str]
SPEND_TTL_S = 40 * 86_400  # a month's counter outlives its month
log = logging.getLogger("infersight.evaluation.health")


def task_key(task: EvalTask) -> TaskKey:
    return task.trace_id, task.span_id


def epoch_of(iso: str | None) -> float | None:
    """An ISO 8601 time as epoch seconds; None when missing or unreadable."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def started_epoch(iso: str | None, default: float) -> float:
    epoch = epoch_of(iso)
    return default if epoch is None else epoch


class PendingTasks:
    """Eval tasks handed on and not yet written (or dropped), in arrival order.

    Tasks arrive roughly in request order, so the first entry is the oldest; ``OrderedDict`` gives
    that and O(1) removal from the middle. Bounded: past ``cap`` entries new ones are not tracked
    (the oldest, which is what lag reports, is already in).
    """

    def __init__(self, cap: int = 1_000_000, clock: Callable[[], float] | None = None) -> None:
        import time

        self.cap = cap
        self._clock = clock or time.time
        self._pending: OrderedDict[TaskKey, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, task: EvalTask) -> None:
        key = task_key(task)
        with self._lock:
            if key not in self._pending and len(self._pending) < self.cap:
                self._pending[key] = started_epoch(task.started_at, self._clock())

    def add_many(self, tasks: Iterable[EvalTask]) -> None:
        """Tasks the sink met without a submit (replayed from the journal after a restart)."""
        for task in tasks:
            self.add(task)

    def done(self, keys: Iterable[TaskKey]) -> None:
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)

    def drop(self, task: EvalTask) -> None:
        """A task that will never be written (the eval bus dropped it): no longer lag."""
        self.done([task_key(task)])

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_age_s(self, now: float) -> float | None:
        with self._lock:
            if not self._pending:
                return None
            first = next(iter(self._pending.values()))
        return max(0.0, now - first)


class LocalSpend:
    """Judge cost per budget period, added to as results are written (an EvalSink observer).

    ``resync_s``: read the period's total from the store again this often. With ``--workers N`` on
    one store every worker judges, but each added up only its own results after its start, so the
    breaker's budget held per worker and the spend could reach N times it."""

    def __init__(self, seed: Callable[[datetime], float] | None = None, resync_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seed = seed
        self._resync_s = resync_s
        self._clock = clock
        self._seeded_at = 0.0
        self._period: datetime | None = None
        self._spend = 0.0
        self._lock = threading.Lock()

    def spend(self, period_start: datetime) -> float:
        with self._lock:
            stale = self._resync_s is not None and self._clock() - self._seeded_at >= self._resync_s
            if self._period != period_start or (stale and self._seed is not None):
                self._period = period_start
                self._spend = self._seed(period_start) if self._seed is not None else 0.0
                self._seeded_at = self._clock()
            return self._spend

    def observe(self, results: list[EvalResult]) -> None:
        cost = sum(r.judge_cost or 0.0 for r in results)
        if cost:
            with self._lock:
                self._spend += cost


def store_spend(store: Any) -> Callable[[datetime], float]:
    """Judge spend already in eval_results since a period start, by when the judge was paid
    (``evaluated_at``), as the live counters add it: judging yesterday's requests today is today's."""
    from infersight.store.quality_sql import QualityQuery

    def seed(since: datetime) -> float:
        until = datetime.now(timezone.utc) + timedelta(minutes=1)  # a clock a little ahead: still counted
        rows = store.quality(QualityQuery(since=since, until=until, evaluator="llm_judge", window_on="evaluation"))
        return float(sum(r.get("judge_cost") or 0.0 for r in rows))

    return seed


def _entry_ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[0])


class RedisStreamLag:
    """Age of the eval stream's oldest task the group has not acknowledged (pending or never read).

    An entry's id is when it reached the stream; its task's ``started_at`` is when the request was
    made. A task the gateway journaled while Redis was away reaches the stream late, so each
    candidate counts from the earlier of the two (a task's own clock ahead of Redis's cannot make
    it look younger than its entry)."""

    def __init__(self, client: Any, stream: str, group: str) -> None:
        self.client, self.stream, self.group = client, stream, group

    def oldest_age_s(self, now: float) -> float | None:
        import redis

        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:  # no stream yet: nothing was published
            return None
        group = next((g for g in groups if _text(g.get("name")) == self.group), None)
        candidates: list[float] = []
        if group is None:  # no worker ever joined: everything is waiting
            candidates += map(_entry_started, self.client.xrange(self.stream, count=1))
        else:
            if int(group.get("pending") or 0):
                oldest = self.client.xpending(self.stream, self.group).get("min")
                if oldest is not None:
                    entry = self.client.xrange(self.stream, min=oldest, max=oldest, count=1)
                    candidates += map(_entry_started, entry) if entry else [_entry_ms(oldest) / 1000.0]
            last = _text(group.get("last-delivered-id")) or "0-0"
            candidates += map(_entry_started, self.client.xrange(self.stream, min=f"({last}", count=1))
        if not candidates:
            return None
        return max(0.0, now - min(candidates))


def _entry_started(entry: Any) -> float:
    """When a stream entry's task started: the earlier of its request's start and its entry id."""
    from infersight.bus.redis_conn import PoisonMessage, decode

    entry_id, fields = entry
    added = _entry_ms(entry_id) / 1000.0
    try:
        started = epoch_of(decode(fields, EvalTask).started_at)
    except PoisonMessage:
        return added
    return added if started is None else min(added, started)


class RedisSpend:
    """One Redis counter per budget period, ``<key>:<period start>``, shared by workers and gateways.

    Eval workers add (``observe``) and gateways read (``spend``). Two things would make the counter
    read low, and a low reading lets the judge overspend the budget: an INCRBYFLOAT that fails
    (Redis down for a moment; the rows are written already) is kept as ``owed`` and added by the next
    ``observe``; and a counter that is gone (a Redis without persistence restarted, or was flushed)
    is rebuilt by a worker from the store (``seed``, set by eval workers) before it adds again.
    """

    def __init__(self, client: Any, key: str, period: str = "day",
                 seed: Callable[[datetime], float] | None = None) -> None:
        self.client, self.key, self.period = client, key, period
        self.seed = seed  # the period's spend already in eval_results (eval workers only)
        self._owed: dict[datetime, float] = {}  # cost written to the store but not yet to Redis
        self._lock = threading.Lock()
        self._failing = False

    def _name(self, period_start: datetime) -> str:
        """``<key>:2026-11`` for a month, ``<key>:2026-11-01`` for a day: a budget_period changed in
        the middle of a month must not read the 1st's daily counter as the month's."""
        return f"{self.key}:{period_start.strftime('%Y-%m' if self.period == 'month' else '%Y-%m-%d')}"

    def spend(self, period_start: datetime) -> float:
        value = self.client.get(self._name(period_start))
        return float(value) if value is not None else 0.0

    def owed(self) -> float:
        """Cost written to the store that Redis has not been told yet (it was unreachable)."""
        with self._lock:
            return sum(self._owed.values())

    def observe(self, results: list[EvalResult]) -> None:
        """Add written results' judge cost to the current period (called by eval workers, after the
        write); never raises: what Redis did not take is owed and added next time."""
        import redis

        from infersight.evaluation.breaker import period_start

        cost = sum(r.judge_cost or 0.0 for r in results)
        start = period_start(time.time(), self.period)
        with self._lock:
            if cost:
                self._owed[start] = self._owed.get(start, 0.0) + cost
            snapshot = dict(self._owed)
        if not snapshot and self.seed is None:
            return
        send = dict(snapshot)
        try:
            if self.seed is not None and self._reseed(start):
                send.pop(start, None)  # the store's total already holds this period's written results
            if send:
                pipe = self.client.pipeline()
                for at, amount in send.items():
                    pipe.incrbyfloat(self._name(at), amount)
                    pipe.expire(self._name(at), SPEND_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("judge spend not added to Redis; owed until it answers",
                            extra={"fields": {"error": type(exc).__name__, "owed": sum(snapshot.values())}})
            self._failing = True
            return
        self._failing = False
        with self._lock:  # what was sent (or seeded) is paid; cost observed meanwhile stays owed
            for at, amount in snapshot.items():
                left = self._owed.get(at, 0.0) - amount
                if left > 1e-12:
                    self._owed[at] = left
                else:
                    self._owed.pop(at, None)

    def _reseed(self, start: datetime) -> bool:
        """Rebuild a missing counter from the store: True when this call set it."""
        assert self.seed is not None
        name = self._name(start)
        if self.client.exists(name):
            return False
        total = self.seed(start)
        return bool(self.client.set(name, repr(float(total)), nx=True, ex=SPEND_TTL_S))


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
