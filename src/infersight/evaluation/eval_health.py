"""Where the eval breaker's signals come from: lag (oldest unevaluated task) and judge spend.

In-process evaluation (memory bus): ``PendingTasks`` follows each task from the masking queue to its
write, and ``LocalSpend`` adds up the judge cost as the judge is paid (seeded from the store at
start, so a restart does not forget the day's spend). Scale-out: ``RedisStreamLag`` reads the eval stream's
consumer group (oldest pending or undelivered entry; an entry id is its XADD time in ms) and
``RedisSpend`` keeps one counter per budget period in Redis, added to by every eval worker and read
by every gateway.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from infersight.evaluation.spend_ledger import SpendLedger
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
    """Eval tasks handed on and not yet written (or dropped), with the oldest request start among them.

    Tasks arrive when their request ends, not when it started: a long stream finishes after short
    requests begun later, and tasks replayed from the journal or handed back from the dead letters
    are older than those already pending. So the oldest is kept in a heap of start times (removal is
    lazy: an entry whose task is done is dropped when it reaches the top, and the heap is rebuilt
    when such entries outnumber the live ones). Bounded: past ``cap`` entries new ones are not tracked.
    """

    def __init__(self, cap: int = 1_000_000, clock: Callable[[], float] | None = None) -> None:
        import time

        self.cap = cap
        self._clock = clock or time.time
        self._pending: dict[TaskKey, float] = {}
        self._oldest: list[tuple[float, TaskKey]] = []  # heap; may hold entries of tasks already done
        self._lock = threading.Lock()

    def _track(self, key: TaskKey, task: EvalTask) -> None:
        started = started_epoch(task.started_at, self._clock())
        self._pending[key] = started
        heapq.heappush(self._oldest, (started, key))

    def add(self, task: EvalTask) -> None:
        key = task_key(task)
        with self._lock:
            if key not in self._pending and len(self._pending) < self.cap:
                self._track(key, task)

    def add_many(self, tasks: Iterable[EvalTask]) -> set[TaskKey]:
        """Tasks the sink met without a submit (replayed from the journal after a restart): the keys
        of those this process had not seen pending."""
        fresh: set[TaskKey] = set()
        with self._lock:
            for task in tasks:
                key = task_key(task)
                if key not in self._pending:
                    fresh.add(key)
                    if len(self._pending) < self.cap:
                        self._track(key, task)
        return fresh

    def done(self, keys: Iterable[TaskKey]) -> None:
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)
            if len(self._oldest) > 2 * len(self._pending) + 1024:  # mostly entries of finished tasks
                self._oldest = [(started, key) for key, started in self._pending.items()]
                heapq.heapify(self._oldest)

    def drop(self, task: EvalTask) -> None:
        """A task that will never be written (the eval bus dropped it): no longer lag."""
        self.done([task_key(task)])

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_age_s(self, now: float) -> float | None:
        with self._lock:
            heap = self._oldest
            while heap and self._pending.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)  # done (or done and added again with another start)
            if not heap:
                return None
            first = heap[0][0]
        return max(0.0, now - first)


class LocalSpend:
    """Judge cost per budget period, added to as the judge is paid (``paid``, told by the EvalSink
    as each judge call returns, before the write: a task dead-lettered or a batch that never reaches
    the store was still paid for).

    The period's total is read from the store (``seed``) at its start, so a restart does not forget
    the day's spend, and with ``resync_s`` again that often: with ``--workers N`` on one store every
    worker judges, and each would otherwise add up only its own calls, so the budget held per worker
    and the spend could reach N times it. The store holds written rows only, so what was paid and is
    not written yet is kept apart (``_unwritten``, by task, with the period it was paid in: a call
    paid just after midnight and written after the new day's first reading is the new day's) and
    added to whatever the store says."""

    def __init__(self, seed: Callable[[datetime], float] | None = None, resync_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, max_unwritten: int = 100_000,
                 period: str = "day", wall_clock: Callable[[], float] = time.time) -> None:
        self._seed = seed
        self._period_kind, self._wall_clock = period, wall_clock
        self._resync_s = resync_s
        self._clock = clock
        self._seeded_at = 0.0
        self._period: datetime | None = None
        self._base = 0.0  # the store's total at the last seed
        self._written_since = 0.0  # paid, then written after that seed: not in _base
        self._unwritten: OrderedDict[TaskKey, tuple[datetime, float]] = OrderedDict()  # paid, not written
        self._max_unwritten = max_unwritten
        self._lock = threading.Lock()
        self._ledger: SpendLedger | None = None

    def attach_ledger(self, ledger: SpendLedger) -> None:
        """Keep the unwritten costs on disk too, and take back those a killed predecessor left."""
        with self._lock:
            for key, (paid_in, cost) in ledger.load().items():
                before = self._unwritten.get(key)
                self._unwritten[key] = (paid_in, cost + (before[1] if before and before[0] == paid_in else 0.0))
            self._ledger = ledger

    def spend(self, period_start: datetime) -> float:
        """The period's spend; raises while the store cannot be read for a new period's seed (the
        breaker keeps its last reading, and the next check reads again: an eval process restarted
        while the store process was away read 0 for the rest of the day)."""
        with self._lock:
            stale = self._resync_s is not None and self._clock() - self._seeded_at >= self._resync_s
            if self._period != period_start:
                self._reseed(period_start, new_period=self._period is not None)
            elif stale and self._seed is not None:
                try:
                    self._reseed(period_start, new_period=False)
                except Exception:  # noqa: BLE001 - a resync that fails keeps the running total
                    log.warning("judge spend could not be re-read from the store; kept", exc_info=True)
                    self._seeded_at = self._clock()
            return self._base + self._written_since + sum(
                cost for paid_in, cost in self._unwritten.values() if paid_in == period_start)

    def _reseed(self, period_start: datetime, *, new_period: bool) -> None:
        base = self._seed(period_start) if self._seed is not None else 0.0  # first: it may raise
        if new_period:  # paid in a period before: counted there
            for key in [k for k, (paid_in, _) in self._unwritten.items() if paid_in < period_start]:
                del self._unwritten[key]
        self._period, self._base = period_start, base
        self._written_since = 0.0  # written before the read: in the store's total now
        self._seeded_at = self._clock()

    def paid(self, costs: dict[TaskKey, float]) -> None:
        from infersight.evaluation.breaker import period_start

        paid_in = period_start(self._wall_clock(), self._period_kind)
        with self._lock:
            for key, cost in costs.items():
                if cost:
                    before = self._unwritten.get(key)
                    earlier = before[1] if before is not None and before[0] == paid_in else 0.0
                    self._unwritten[key] = (paid_in, earlier + cost)
            while len(self._unwritten) > self._max_unwritten:  # bounded: only a cost is forgotten
                self._unwritten.popitem(last=False)
            if self._ledger is not None:
                self._ledger.paid(paid_in, costs, self._unwritten)

    def written(self, results: list[EvalResult]) -> None:
        """The rows of these tasks are in the store: their cost moves from unwritten to written."""
        with self._lock:
            done = []
            for key in {(r.trace_id, r.span_id) for r in results}:
                entry = self._unwritten.pop(key, None)
                if entry is not None:
                    done.append(key)
                    if entry[0] == self._period:  # another period's: not this one's
                        self._written_since += entry[1]
            if self._ledger is not None:
                self._ledger.written(done, self._unwritten)


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
    it look younger than its entry). Such a task can also sit behind fresher entries, where the
    oldest pending and the first unread are not it: gateways note them in ``late_key`` (a sorted
    set by start, ``bus.redis_streams.LateIndex``), whose oldest unacknowledged member is one more
    candidate; members found acknowledged are removed as the reading passes them, in pages, up to
    ``LATE_CHECKS`` per reading (a steady flow of long streams, each noted, must not outgrow what
    the readers remove: 16 per reading did, and an old task behind them went unseen)."""

    LATE_PAGE = 128
    LATE_CHECKS = 4096

    def __init__(self, client: Any, stream: str, group: str, late_key: str | None = None) -> None:
        self.client, self.stream, self.group = client, stream, group
        self.late_key = late_key

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
            if self.late_key is not None:
                candidates += self._oldest_late(last)
        if not candidates:
            return None
        return max(0.0, now - min(candidates))

    def _oldest_late(self, last_delivered: str) -> list[float]:
        """The start of the oldest late entry the group has not acknowledged, if any."""
        assert self.late_key is not None
        for _ in range(self.LATE_CHECKS // self.LATE_PAGE):
            page = self.client.zrange(self.late_key, 0, self.LATE_PAGE - 1, withscores=True)
            if not page:
                return []
            pipe = self.client.pipeline(transaction=False)
            for member, _started in page:
                entry_id = _text(member) or "0-0"
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            pending = pipe.execute()
            done = []
            for (member, started), held in zip(page, pending, strict=True):
                if _id_key(_text(member) or "0-0") > _id_key(last_delivered) or held:
                    if done:
                        self.client.zrem(self.late_key, *done)
                    return [float(started)]  # never read, or read and not acknowledged
                done.append(member)  # acknowledged (or trimmed): evaluated
            self.client.zrem(self.late_key, *done)
        return []


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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


@dataclass(slots=True)
class _Owed:
    """Judge cost Redis has not been told of yet: when it was paid, for which task, and when that
    task's rows were written (None: not yet)."""

    period: datetime
    key: TaskKey
    cost: float
    written_at: float | None = None


class RedisSpend:
    """One Redis counter per budget period, ``<key>:<period start>``, shared by workers and gateways.

    Eval workers add what the judge costs as it is paid (``paid``) and gateways read (``spend``).
    Two things would make the counter read low, and a low reading lets the judge overspend the
    budget: an INCRBYFLOAT that fails (Redis down for a moment) is kept as owed and added at the next
    call; and a counter that is gone (a Redis without persistence restarted, or was flushed) is
    rebuilt by a worker from the store (``seed``, set by eval workers) before it adds again. The
    rebuild notes when it read the store (``<counter>:seeded``): an owed cost whose rows were written
    before that is in the rebuilt total already, so it is not added again, by this worker or any
    other. Not counted after a rebuild: costs Redis had taken before it lost them whose rows were
    not written yet, and paid verdicts never written (a dead-lettered task), until the period ends.
    """

    def __init__(self, client: Any, key: str, period: str = "day",
                 seed: Callable[[datetime], float] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.client, self.key, self.period = client, key, period
        self.seed = seed  # the period's spend already in eval_results (eval workers only)
        self._clock = clock
        self._owed: list[_Owed] = []
        self._lock = threading.Lock()
        self._failing = False
        self._last: tuple[datetime, float] | None = None  # this process's last reading: (period, spend)

    def _name(self, period_start: datetime) -> str:
        """``<key>:2026-11`` for a month, ``<key>:2026-11-01`` for a day: a budget_period changed in
        the middle of a month must not read the 1st's daily counter as the month's."""
        return f"{self.key}:{period_start.strftime('%Y-%m' if self.period == 'month' else '%Y-%m-%d')}"

    def spend(self, period_start: datetime) -> float:
        """The period's spend. It only grows within a period, so a reading below the last one (the
        counter gone with a Redis that lost its data, or rebuilt without what was not written yet)
        keeps the last: read as 0, it closed every gateway's budget breaker until a worker rebuilt it."""
        value = self.client.get(self._name(period_start))
        spend = float(value) if value is not None else 0.0
        if self._last is not None and self._last[0] == period_start:
            spend = max(spend, self._last[1])
        self._last = (period_start, spend)
        return spend

    def owed(self) -> float:
        """Judge cost paid that Redis has not been told yet (it was unreachable)."""
        with self._lock:
            return sum(o.cost for o in self._owed)

    def paid(self, costs: dict[TaskKey, float]) -> None:
        """Add what the judge was just paid to the current period; never raises: what Redis did
        not take is owed and added next time."""
        from infersight.evaluation.breaker import period_start

        start = period_start(self._clock(), self.period)
        with self._lock:
            self._owed.extend(_Owed(start, key, cost) for key, cost in costs.items() if cost)
        self._settle()

    def written(self, results: list[EvalResult]) -> None:
        """Rows are written (after ``paid``): owed costs of those tasks are now in the store, which a
        rebuild counts; and the write is when a missing counter is noticed and rebuilt."""
        now = self._clock()
        keys = {(r.trace_id, r.span_id) for r in results}
        with self._lock:
            for owed in self._owed:
                if owed.written_at is None and owed.key in keys:
                    owed.written_at = now
        if self._owed or self.seed is not None:
            self._settle()

    def _settle(self) -> None:
        import redis

        from infersight.evaluation.breaker import period_start

        with self._lock:
            snapshot = list(self._owed)
        try:
            if self.seed is not None:
                self._reseed(period_start(self._clock(), self.period))
            if snapshot:
                self._send(snapshot)
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("judge spend not added to Redis; owed until it answers",
                            extra={"fields": {"error": type(exc).__name__, "owed": sum(o.cost for o in snapshot)}})
            self._failing = True
            return
        self._failing = False
        with self._lock:  # what was sent (or found counted) is settled; cost paid meanwhile stays owed
            sent = {id(o) for o in snapshot}
            self._owed = [o for o in self._owed if id(o) not in sent]

    def _send(self, owed: list[_Owed]) -> None:
        periods = sorted({o.period for o in owed})
        markers = dict(zip(periods, self.client.mget([f"{self._name(p)}:seeded" for p in periods]), strict=True))
        amounts: dict[datetime, float] = {}
        for o in owed:
            seeded = markers.get(o.period)
            if seeded is not None and o.written_at is not None and o.written_at <= float(seeded):
                continue  # written before the counter was rebuilt from the store: counted there
            amounts[o.period] = amounts.get(o.period, 0.0) + o.cost
        if amounts:
            pipe = self.client.pipeline()
            for at, amount in amounts.items():
                pipe.incrbyfloat(self._name(at), amount)
                pipe.expire(self._name(at), SPEND_TTL_S)
            pipe.execute()

    def _reseed(self, start: datetime) -> bool:
        """Rebuild a missing counter from the store, noting when the store was read: True when this
        call set it."""
        assert self.seed is not None
        name = self._name(start)
        if self.client.exists(name):
            return False
        read_at = self._clock()
        total = self.seed(start)
        if not self.client.set(name, repr(float(total)), nx=True, ex=SPEND_TTL_S):
            return False  # another worker rebuilt it first (its marker says when)
        self.client.set(f"{name}:seeded", repr(read_at), ex=SPEND_TTL_S)
        return True


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
