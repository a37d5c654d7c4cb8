"""The eval worker: turns eval tasks into eval_results rows, off the gateway's hot path.

One ``EvalSink`` serves both shapes (like ``ingest.StoreSink``): an exporter on the embedded eval
bus (in the gateway process) and the sink of ``infersight eval-worker``, a Redis consumer group.

Per batch: the deterministic checks and reference metrics run on every task with content; the LLM
judge runs on sampled tasks with an answer, concurrently (``judge.concurrency``) on the worker's
own event loop thread. With the gateway's eval process each of the two is one call per batch
(``evaluate_many``, ``judge_many``): every round trip wakes the gateway's threads, and their GIL is
the relay's. The tasks' masked text goes to ``request_content`` (the request row is stored
before masking ends, so this is where the text is kept, per the tenant's content policy), then the
results to ``eval_results``. If a write fails the batch is raised back to the bus (retried, nothing
lost; both writes are idempotent), and the scores already computed are kept by task
so a redelivery does not pay the judge twice. A judge failure after its own repair and retries is
written as a row (dimension ``_error``) and counted, so the request's story shows it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from infersight.bus.base import SinkUnavailable
from infersight.evaluation.eval_health import PendingTasks, epoch_of
from infersight.evaluation.metrics import Bounded, EvalWorkerMetrics
from infersight.model import EvalResult, EvalTask
from infersight.store.base import Store

log = logging.getLogger("infersight.evaluation.worker")

OUTAGE_REASONS = frozenset({"timeout", "connection", "server_error", "rate_limited"})
"""Judge failure reasons that say the judge is away, not that the task is bad. A lost eval process is
not one: a task that kills it would hold the bus forever, so its tasks still get their error rows."""


class JudgeUnavailable(SinkUnavailable):
    """The judge is away (``OUTAGE_REASONS``): the bus holds the batch and retries it. ``cause`` is
    the judge's failure (its reason, and what its attempts cost)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


Evaluate = Callable[[EvalTask], list[EvalResult]]
DeadLetter = Callable[[EvalTask, str], None]
_MAX_REMEMBERED = 100_000  # tasks whose results wait for a store write that failed
_RECENTLY_WRITTEN = 10_000  # tasks whose judge a probe or redelivery skips
POISON_HOLD_S = 60.0
"""How long a task the judge keeps failing on while answering others is held before its error row."""


class SpendRecorder(Protocol):
    """The breaker's spend, told when the judge is paid (``paid``: task key -> cost, as each judge
    call returns, before anything is written, so a batch that never reaches the store, a worker
    killed mid-write or a dead-lettered task still counts) and when rows are written (``written``)."""

    def paid(self, costs: dict[tuple[str, str], float]) -> None: ...

    def written(self, results: list[EvalResult]) -> None: ...


class Judge(Protocol):
    evaluator_version: str
    judge_model: str

    async def evaluate(self, task: EvalTask) -> list[EvalResult]: ...


def judge_error_result(task: EvalTask, judge: Judge, reason: str, exc: BaseException | None = None) -> EvalResult:
    """The row of a judge call that failed for good: what it cost is still accounted for."""
    tokens = (getattr(exc, "prompt_tokens", 0) or 0) + (getattr(exc, "completion_tokens", 0) or 0)
    return EvalResult.for_task(
        task, evaluator="llm_judge", dimension="_error",
        evaluator_version=getattr(exc, "evaluator_version", None) or judge.evaluator_version,
        evaluated_at=datetime.now(timezone.utc).isoformat(), label=reason[:64], judge_model=judge.judge_model,
        judge_tokens=tokens or None, judge_cost=getattr(exc, "cost", None) or None,
        explanation=getattr(exc, "hint", None),
    )


class EvalSink:
    def __init__(
        self,
        store: Store,
        *,
        evaluators: list[Evaluate],
        judge: Judge | None = None,
        metrics: EvalWorkerMetrics | None = None,
        tenants: list[str] | None = None,
        models: list[str] | None = None,
        close_store: bool = False,
        observers: list[Callable[[list[EvalResult]], None]] | None = None,
        pending: PendingTasks | None = None,
        dead_letter: DeadLetter | None = None,
        max_failures: int = 5,
        hold_on_judge_outage: bool = False,
        content_policy: dict[str, str] | None = None,
        ask_store_before_judging: bool = False,
        spend: SpendRecorder | None = None,
        text_days: Callable[[str], int] | None = None,
    ) -> None:
        self.store = store
        # tenant -> days its text is kept (retention.text_days, capped by requests_days, 0 for a tenant
        # now on content none): a task older than that (a dead letter replayed, a journal replayed after
        # a long outage) is checked, but its text is not written back nor sent to the judge
        self.text_days = text_days
        self.text_expired = 0
        self.spend = spend  # the breaker's spend, told at payment time (never raises to the sink)
        # several workers share a stream (scale-out): one killed after its write and before its
        # acknowledgement leaves the batch to another, which asks the store first, so that the judge
        # is not paid twice (one query per judged batch). The embedded shape has no other worker, but
        # a journal replayed after a restart may hold tasks written already (a batch held for one
        # task while its mates were written): with ``pending``, those replayed tasks are asked about.
        self.ask_store_before_judging = ask_store_before_judging
        self.judged_elsewhere = 0
        # tenant -> content policy of this process's config: a task of a tenant with "none" (or one
        # the config does not know) is dropped, text and all, as the gateway's tap would not send it
        # (it was on its way when the tenant opted out: a journal replayed, a stream backlog, a
        # gateway still on the old config). None: every task is taken (tests, tools).
        self.content_policy = content_policy
        self.opted_out = 0
        # The embedded bus holds a batch while the judge is away (lag grows, the breaker sees it);
        # a Redis consumer would bisect it instead, so there an outage still ends as _error rows.
        self.hold_on_judge_outage = hold_on_judge_outage
        self._outage_logged = 0.0
        self.pending = pending  # the breaker's lag: tasks handed on and not yet written
        self.dead_letter = dead_letter  # None: raise every failure to the bus (Redis dead-letters itself)
        self.max_failures = max_failures  # rounds a task the judge fails on while answering others is held
        self.observers = observers or []  # e.g. the demo's live table; called after each write
        self.evaluators = evaluators
        self.judge = judge
        self.metrics = metrics
        self.close_store = close_store
        self._tenant = Bounded(tenants or [])
        self._model = Bounded(models or [])
        self._done: dict[tuple[str, str], list[EvalResult]] = {}
        self._failures: dict[tuple[str, str], str] = {}  # the evaluators' last error kind per task
        self._written: OrderedDict[tuple[str, str], None] = OrderedDict()  # recently written (idempotent)
        # tasks that got an outage reason in a round where the judge answered others: (since, rounds)
        self._suspects: dict[tuple[str, str], tuple[float, int]] = {}
        self.poison_hold_s = POISON_HOLD_S
        self._unbilled: dict[tuple[str, str], tuple[int, float]] = {}  # paid in attempts that ended held
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.written = 0
        self.content_written = 0  # request_content rows sent to the store (re-sent ones included)
        self.judge_failures = 0
        self.dead_lettered_count = 0

    idempotent = True
    """A task sent again (a bus's probe, a redelivery) is evaluated and written again without its
    judge: the store keeps one row per key, and the judge is not paid twice. So a bus can probe
    this sink with the last task it took, which tests the evaluators and the store, to tell a
    poison task from an outage when no other task is at hand (``bus.base.Exporter``)."""

    def __call__(self, batch: list[EvalTask]) -> None:
        self.export(batch)

    def export(self, batch: list[EvalTask]) -> None:
        # one task twice in a batch (a journal replayed beside its stream entry) is judged once
        unique: dict[tuple[str, str], EvalTask] = {}
        for task in batch:
            unique.setdefault((task.trace_id, task.span_id), task)
        batch = list(unique.values())
        replayed: set[tuple[str, str]] = set()
        if self.pending is not None:  # replayed tasks were never submitted in this process; written
            # ones (a probe, a held batch's part written already) are no longer lag
            replayed = self.pending.add_many(t for t in batch if (t.trace_id, t.span_id) not in self._written)
        if self.content_policy is not None:
            batch = self._within_policy(batch)
        ready = self._evaluate_many([task for task in batch if (task.trace_id, task.span_id) not in self._done])
        self._evaluate_all(batch, ready)
        to_judge: list[EvalTask] = []
        for task in batch:
            key = (task.trace_id, task.span_id)
            if self.judge is not None and task.sample_reason is not None and task.completion_text \
                    and not task.answer_incomplete and not self._text_expired(task) and key not in self._written and not any(r.evaluator == "llm_judge" for r in self._done[key]):
                to_judge.append(task)
        if to_judge and self.ask_store_before_judging:
            to_judge = self._not_judged_yet(to_judge)
        elif to_judge and replayed:  # from a journal a process before this one wrote: judged already?
            again = [t for t in to_judge if (t.trace_id, t.span_id) in replayed]
            if again:
                kept = {(t.trace_id, t.span_id) for t in self._not_judged_yet(again)}
                to_judge = [t for t in to_judge if (t.trace_id, t.span_id) not in replayed
                            or (t.trace_id, t.span_id) in kept]
        unavailable: JudgeUnavailable | None = None
        if to_judge:
            try:
                self._settle_judged(to_judge, self._judge_batch(to_judge))
            except JudgeUnavailable as exc:
                unavailable = exc
        if unavailable is None:
            self._write(batch)
            return
        # The judge is away for some tasks: write the rest now (checks-only tasks, verdicts in hand),
        # then hold the batch. Else one task the judge keeps timing out on, in a batch the bus tops
        # up with new tasks, kept every verdict of an overloaded judge from the store. Written ones
        # come back with the batch and are written again without their judge (idempotent).
        held = {(t.trace_id, t.span_id) for t in to_judge
                if not any(r.evaluator == "llm_judge" for r in self._done.get((t.trace_id, t.span_id), ()))}
        held |= self._written.keys()
        ready = [t for t in batch if (t.trace_id, t.span_id) not in held]
        if ready:
            self._write(ready)
        raise unavailable

    def _write(self, batch: list[EvalTask]) -> None:
        """Write the batch's text and rows (kept in ``_done``), then settle lag, spend and observers."""
        keys = [(task.trace_id, task.span_id) for task in batch]
        results: list[EvalResult] = []
        for task, key in zip(batch, keys, strict=True):
            for result in self._done.get(key, ()):
                if result.use_case is None:
                    result.use_case = task.use_case  # quality is grouped by use case too
                results.append(result)
        rows = [r.to_dict() for r in results]
        kept = [task for task in batch if not self._text_expired(task)]
        content = [row for row in map(content_row, kept) if row is not None]
        try:
            if content:  # first, so a story with scores always has its text
                self.store.write_rows("request_content", content)
            if rows:
                self.store.write_rows("eval_results", rows)
        except Exception:
            if self.metrics is not None:
                self.metrics.store_failures.inc()
            if len(self._done) > _MAX_REMEMBERED:
                self._done.clear()  # bounded memory: a redelivery then re-evaluates, still nothing lost
            raise
        again = {key for key in keys if key in self._written}  # probes and redeliveries: counted once
        kept_keys = {(task.trace_id, task.span_id) for task in kept}
        expired = sum(1 for key in keys if key not in kept_keys and key not in again)  # once per task
        if expired:
            self.text_expired += expired
            if self.metrics is not None:
                self.metrics.tasks.labels("text_expired").inc(expired)
        for key in keys:
            self._done.pop(key, None)
            self._failures.pop(key, None)
            self._suspects.pop(key, None)
        self._remember_written(keys)
        if self.pending is not None:
            self.pending.done(keys)
        self.written += len(rows)
        self.content_written += len(content)
        if again:
            batch = [task for task in batch if (task.trace_id, task.span_id) not in again]
            results = [r for r in results if (r.trace_id, r.span_id) not in again]
        self._observe(batch, results)
        if self.spend is not None:
            try:
                self.spend.written(results)
            except Exception:  # noqa: BLE001 - the rows are written; see observers below
                log.exception("judge spend could not be told of written rows")
        for observe in self.observers:
            try:
                observe(results)
            except Exception:  # noqa: BLE001 - the rows are written; an observer must not cause a redelivery
                log.exception("eval result observer failed")

    def _text_expired(self, task: EvalTask) -> bool:
        """The task's text is past its tenant's text retention: not kept, not judged."""
        if self.text_days is None:
            return False
        started = epoch_of(task.started_at)
        return started is not None and started < time.time() - self.text_days(task.tenant_id) * 86_400

    def _not_judged_yet(self, tasks: list[EvalTask]) -> list[EvalTask]:
        """``tasks`` without those whose judge rows (first rubric dimension, or ``_error``) the store
        holds already for this evaluator_version; when the store cannot say, all of them (at least
        once: judged again, the rows stay one each)."""
        assert self.judge is not None
        rubric = getattr(self.judge, "rubric", None)
        dims = ["_error", *(rubric.dimension_names[:1] if rubric is not None and rubric.kind == "pointwise" else [])]
        now = datetime.now(timezone.utc)
        rows = [{"trace_id": t.trace_id, "span_id": t.span_id, "tenant_id": t.tenant_id, "evaluator": "llm_judge",
                 "evaluator_version": self.judge.evaluator_version, "dimension": dim, "evaluated_at": now,
                 "request_started_at": t.started_at or None} for t in tasks for dim in dims]
        try:
            found = {(k[0], k[1]) for k in self.store.stored_keys("eval_results", rows)}
        except Exception:  # noqa: BLE001 - an unreadable start time, a store away: judge them (at least once)
            log.warning("could not ask the store which eval tasks are judged already; judging them", exc_info=True)
            return tasks
        if not found:
            return tasks
        for key in found:  # written by another worker: this one writes only its (idempotent) check rows
            self._written[key] = None
        self.judged_elsewhere += len(found)
        log.info("eval tasks judged already by another worker; not judged again",
                 extra={"fields": {"tasks": len(found)}})
        return [t for t in tasks if (t.trace_id, t.span_id) not in found]

    def _within_policy(self, batch: list[EvalTask]) -> list[EvalTask]:
        """The batch without the tasks of tenants whose content policy is ``none``: dropped and
        counted (``outcome="dropped_opted_out"``), no row, no judge call, nothing of the text kept."""
        policy = self.content_policy or {}
        kept, dropped = [], []
        for task in batch:
            if policy.get(task.tenant_id, "none") == "none":
                dropped.append((task.trace_id, task.span_id))
            else:
                kept.append(task)
        if not dropped:
            return batch
        fresh = [key for key in dropped if key not in self._written]  # a held batch comes back: counted once
        self._remember_written(dropped)  # handled for good: nothing of theirs will be written
        if self.pending is not None:
            self.pending.done(dropped)
        if not fresh:
            return kept
        self.opted_out += len(fresh)
        if self.metrics is not None:
            self.metrics.tasks.labels("dropped_opted_out").inc(len(fresh))
        log.warning("eval tasks of tenants whose content policy is none (or unknown here) dropped",
                    extra={"fields": {"tasks": len(fresh)}})
        return kept

    def _remember_written(self, keys: list[tuple[str, str]]) -> None:
        """Tasks handled for good (written, or dropped by policy): a redelivery is not counted again."""
        for key in keys:
            self._written[key] = None
            self._written.move_to_end(key)
        while len(self._written) > _RECENTLY_WRITTEN:
            self._written.popitem(last=False)

    def _settle_judged(self, tasks: list[EvalTask], outcomes: list[list[EvalResult] | JudgeUnavailable]) -> None:
        """Keep each task's judge rows in ``_done``; raise ``JudgeUnavailable`` (the bus holds the
        batch) while a task's judge is away.

        "Away" has to be the judge's state, not the task's. A task that gets an outage reason in a
        round where the judge answered other tasks (an HTTP 500 its text alone causes, a prompt
        that always times out) is a suspect: once it has failed ``max_failures`` rounds and
        ``poison_hold_s`` seconds since, it gets its ``_error`` row, so one task cannot hold its
        batch (and a Redis consumer, which reads nothing new while it holds one) forever. The
        seconds keep a real outage that starts mid-round from costing the tasks then in flight
        their verdicts, and a round in which tasks not suspected failed too and none was answered
        (the judge is away) counts against no suspect. What held attempts cost is added to the task's first judge row."""
        assert self.judge is not None
        self._paid(tasks, outcomes)
        answered = any(not isinstance(outcome, JudgeUnavailable) for outcome in outcomes)
        # a task not suspected before failing in a round that answered none: the judge is away, so the
        # round counts against no suspect (else an outage longer than poison_hold_s cost the tasks in
        # flight when it began their verdicts); a round of suspects alone still counts
        away = not answered and any(isinstance(outcome, JudgeUnavailable) and (t.trace_id, t.span_id) not in
                                    self._suspects for t, outcome in zip(tasks, outcomes, strict=True))
        now = time.monotonic()
        unavailable = None
        for task, judged in zip(tasks, outcomes, strict=True):
            key = (task.trace_id, task.span_id)
            if isinstance(judged, JudgeUnavailable):
                self._bill_later(key, judged.cause)
                since, rounds = self._suspects.get(key, (now, 0))
                counted = answered or (rounds > 0 and not away)
                if counted:
                    self._suspects[key] = (since, rounds + 1)
                if not counted or rounds + 1 < self.max_failures or now - since < self.poison_hold_s:
                    unavailable = judged  # kept out of _done: judged again when the bus retries
                    continue
                reason = str(getattr(judged.cause, "reason", None) or "unavailable")
                self.judge_failures += 1
                log.warning("judge kept failing on one task while it answered others; recorded as a judge error",
                            extra={"fields": {"trace_id": task.trace_id, "reason": reason[:64], "rounds": rounds + 1}})
                judged = [judge_error_result(task, self.judge, reason)]
            self._done[key].extend(self._billed(key, judged))
        if len(self._suspects) > _MAX_REMEMBERED or len(self._unbilled) > _MAX_REMEMBERED:
            self._suspects.clear()  # bounded memory: only a count or a cost is forgotten
            self._unbilled.clear()
        if unavailable is not None:
            raise unavailable  # what was scored stays in _done; the bus holds the batch (no dead letters)

    def _paid(self, tasks: list[EvalTask], outcomes: list[list[EvalResult] | JudgeUnavailable]) -> None:
        """Tell the breaker's spend what this round of judge calls cost, now that it is paid."""
        if self.spend is None:
            return
        costs: dict[tuple[str, str], float] = {}
        for task, judged in zip(tasks, outcomes, strict=True):
            if isinstance(judged, JudgeUnavailable):
                cost = getattr(judged.cause, "cost", 0.0) or 0.0
            else:
                cost = sum(r.judge_cost or 0.0 for r in judged)
            if cost:
                costs[(task.trace_id, task.span_id)] = cost
        if costs:
            try:
                self.spend.paid(costs)
            except Exception:  # noqa: BLE001 - the verdicts stand; a spend source keeps what it owes
                log.exception("judge spend could not be recorded")

    def _bill_later(self, key: tuple[str, str], cause: BaseException | None) -> None:
        tokens = (getattr(cause, "prompt_tokens", 0) or 0) + (getattr(cause, "completion_tokens", 0) or 0)
        cost = getattr(cause, "cost", 0.0) or 0.0
        if tokens or cost:
            have_tokens, have_cost = self._unbilled.get(key, (0, 0.0))
            self._unbilled[key] = (have_tokens + tokens, have_cost + cost)

    def _billed(self, key: tuple[str, str], rows: list[EvalResult]) -> list[EvalResult]:
        """``rows`` with what earlier held attempts for the task cost added to its first judge row."""
        unbilled = self._unbilled.pop(key, None)
        first = next((r for r in rows if r.evaluator == "llm_judge"), None)
        if unbilled is not None and first is not None:
            first.judge_tokens = (first.judge_tokens or 0) + unbilled[0] or None
            first.judge_cost = (first.judge_cost or 0.0) + unbilled[1] or None
        return rows

    def _evaluate_many(self, tasks: list[EvalTask]) -> dict[tuple[str, str], list[EvalResult] | BaseException]:
        """The batch's checks in one call when the evaluator takes batches (the eval process: one
        round trip instead of one per task); {} otherwise, and ``_evaluate_all`` runs them per task."""
        many = getattr(self.evaluators[0], "many", None) if len(self.evaluators) == 1 else None
        if many is None or not tasks:
            return {}
        try:
            outcomes = many(tasks)
        except Exception:  # noqa: BLE001 - e.g. a task that kills the eval process: one at a time then,
            return {}  # so each task's own error is known (the bus then proves which one is poison)
        return {(t.trace_id, t.span_id): outcome for t, outcome in zip(tasks, outcomes, strict=True)}

    def _evaluate_all(self, batch: list[EvalTask],
                      ready: dict[tuple[str, str], list[EvalResult] | BaseException]) -> None:
        """Run the cheap evaluators once per task (kept until written); ``ready`` is what a batched
        call already returned. Every task is tried; a failure is then raised back to the bus.

        The sink does not count failures itself: it cannot tell a poison task from an eval process
        that is away (restarting), which fails every task, and counting per call dead-lettered
        healthy tasks (the first task of each part of a bisected batch took a strike per part:
        five within a second). The bus can: it bisects, counts a failure only when a later record
        went through, and after ``max_deliveries`` gives the task to ``dead_lettered``, with the
        evaluators' error kept here as the reason (the Redis consumer dead-letters to its stream)."""
        failed: list[Exception] = []
        for task in batch:
            key = (task.trace_id, task.span_id)
            if key in self._done:
                continue
            outcome = ready.get(key)
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                self._done[key] = outcome if outcome is not None else \
                    [r for evaluate in self.evaluators for r in evaluate(task)]
                self._failures.pop(key, None)
            except Exception as exc:  # noqa: BLE001 - raised back below, after the batch was tried
                if len(self._failures) > _MAX_REMEMBERED:
                    self._failures.clear()
                self._failures[key] = getattr(exc, "remote_type", None) or type(exc).__name__  # the child's type
                failed.append(exc)
        if failed:
            raise failed[0]

    def dead_lettered(self, task: EvalTask, reason: str) -> bool:
        """File a task given up on with the eval dead letters and take it out of the lag. Called by
        the memory bus (``bus.base.Exporter``) for a task it proved bad ``max_deliveries`` times (the
        evaluators keep failing on it, or the store keeps refusing its rows). False without a
        dead-letter file (Redis dead-letters itself), which leaves the task to the bus's own."""
        if self.dead_letter is None:
            return False
        kind = self._failures.get((task.trace_id, task.span_id))
        if kind is not None:  # what the evaluators raised on it, before the bus's count
            reason = f"evaluators failed: {kind}; {reason}"
        self.dead_letter(task, reason)
        key = (task.trace_id, task.span_id)
        for remembered in (self._failures, self._done, self._suspects, self._unbilled):
            remembered.pop(key, None)
        self.dead_lettered_count += 1
        if self.pending is not None:
            self.pending.done([key])
        if self.metrics is not None:
            self.metrics.tasks.labels("dead_lettered").inc()
        log.error("eval task moved to dead-letter", extra={"fields": {"trace_id": task.trace_id, "reason": reason}})
        return True

    def _judge_batch(self, tasks: list[EvalTask]) -> list[list[EvalResult] | JudgeUnavailable]:
        """Judge the tasks concurrently: in one call when the judge takes batches (the eval
        process), else on the sink's own event loop."""
        many = getattr(self.judge, "evaluate_many", None)
        if many is None:
            return list(self._run(self._judge_all(tasks)))
        try:
            outcomes = many(tasks)
        except Exception as exc:  # noqa: BLE001 - the eval process failed the whole call: each task's error row
            return [self._judge_failed(task, exc) for task in tasks]
        judged = []
        for task, (outcome, seconds) in zip(tasks, outcomes, strict=True):
            if self.metrics is not None:
                self.metrics.judge_seconds.observe(seconds)
            judged.append(self._judge_failed(task, outcome) if isinstance(outcome, BaseException) else outcome)
        return judged

    async def _judge_all(self, tasks: list[EvalTask]) -> list[list[EvalResult] | JudgeUnavailable]:
        return list(await asyncio.gather(*(self._judge_one(t) for t in tasks)))

    async def _judge_one(self, task: EvalTask) -> list[EvalResult] | JudgeUnavailable:
        assert self.judge is not None
        t0 = time.perf_counter()
        try:
            return await self.judge.evaluate(task)
        except Exception as exc:  # noqa: BLE001 - a judge failure is recorded, never fatal to the batch
            return self._judge_failed(task, exc)
        finally:
            if self.metrics is not None:
                self.metrics.judge_seconds.observe(time.perf_counter() - t0)

    def _judge_failed(self, task: EvalTask, exc: BaseException) -> list[EvalResult] | JudgeUnavailable:
        """A judge call that failed after its own repair and retries: counted, logged, and kept as
        the task's ``_error`` row with what it cost; or, with ``hold_on_judge_outage`` and a reason
        that says the judge is away rather than the task bad, a ``JudgeUnavailable`` (no row: the
        bus retries the batch with backoff, and the task is judged once the judge is back)."""
        assert self.judge is not None
        reason = getattr(exc, "reason", None) or type(exc).__name__
        if self.metrics is not None:
            self.metrics.judge_failures.labels(str(reason)[:32]).inc()
        if self.hold_on_judge_outage and reason in OUTAGE_REASONS:
            now = time.monotonic()
            if now - self._outage_logged > 60:
                self._outage_logged = now
                log.warning("judge unavailable; holding its tasks until it answers",
                            extra={"fields": {"reason": str(reason)[:64]}})
            return JudgeUnavailable(f"judge unavailable: {str(reason)[:64]}", exc)
        self.judge_failures += 1
        log.warning("judge failed", extra={"fields": {"trace_id": task.trace_id, "reason": str(reason)[:64],
                                                      "hint": getattr(exc, "hint", None)}})
        return [judge_error_result(task, self.judge, str(reason), exc)]

    def _run(self, coro: Any) -> Any:
        """Run a coroutine on the worker's own loop (a thread), so judge HTTP sessions live on."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self._loop.run_forever, name="infersight-eval-judge",
                                                 daemon=True)
            self._loop_thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _observe(self, batch: list[EvalTask], results: list[EvalResult]) -> None:
        m = self.metrics
        if m is None:
            return
        now = time.time()
        for task in batch:
            m.tasks.labels("evaluated").inc()
            started = epoch_of(task.started_at)
            if started is not None:
                m.lag.observe(max(0.0, now - started))
        for r in results:
            m.results.labels(r.evaluator).inc()
            tenant, model = self._tenant(r.tenant_id), self._model(r.model_id)
            version = m.version(r.evaluator_version)
            if r.score is not None:
                m.score.labels(tenant, model, r.evaluator, version, r.dimension).observe(r.score)
            if r.label == "fail":
                m.failed_checks.labels(tenant, model, version, r.dimension).inc()
            if r.judge_tokens:
                m.judge_tokens.labels("total").inc(r.judge_tokens)
            if r.judge_cost:
                m.judge_cost.inc(r.judge_cost)

    def shutdown(self) -> None:
        if self._loop is not None:
            close = getattr(self.judge, "aclose", None)
            if close is not None:
                try:
                    asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(5)
            self._loop = None
        if self.close_store:
            self.store.close()


def content_row(task: EvalTask) -> dict[str, Any] | None:
    """The task's ``request_content`` row: its text is already masked and truncated by the gateway.

    None when there is no text, or no request time (only hand-built tasks lack one): the row's
    retention and its idempotency check both hang on ``started_at``.
    """
    if not (task.prompt_text or task.completion_text or task.reference) or not task.started_at:
        return None
    return {
        "trace_id": task.trace_id, "span_id": task.span_id, "tenant_id": task.tenant_id,
        "model_id": task.model_id, "started_at": task.started_at, "prompt_text": task.prompt_text,
        "completion_text": task.completion_text, "reference_text": task.reference,
        "guardrail_hits": ",".join(task.guardrail_hits) or None, "content_truncated": task.content_truncated,
        "sample_reason": task.sample_reason,
    }
