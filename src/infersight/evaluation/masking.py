"""Masks eval content off the event loop, then publishes the task on the eval bus (or hands the
batch to the gateway's eval process, which masks it and publishes to a bus of its own).

The gateway's ``finish`` must not block, and Presidio takes milliseconds per text, so tasks wait in a
bounded queue for one daemon thread, which masks what arrived within ``linger_s`` in one call.
Content is raw here and only here: it is never spooled to disk unmasked, so a full queue (or a stop with tasks still waiting) drops the task, counts it on
``infersight_eval_tasks{outcome="dropped_..."}`` and logs once a minute. The request's record is
unaffected: it went to the bus already, with its sampling decision.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from infersight.bus.base import Bus
from infersight.evaluation.eval_health import PendingTasks, task_key
from infersight.evaluation.metrics import EvalGatewayMetrics
from infersight.model import EvalTask

log = logging.getLogger("infersight.evaluation.masking")

Mask = Callable[[str, int], tuple[str, dict[str, int], bool]]  # text, max_chars -> masked, entity counts, truncated


def presidio_mask() -> Mask:
    """The default masker: Presidio pattern recognizers plus ours (``pii.py``), built once."""
    from infersight.evaluation.pii import default_masker

    masker = default_masker()

    def mask(text: str, max_chars: int) -> tuple[str, dict[str, int], bool]:
        out = masker.mask(text, max_chars=max_chars)
        return out.text, dict(out.entities), out.truncated

    return mask


def mask_tasks(batch: list[EvalTask], mask: Mask, max_chars: int) -> float:
    """Mask every text of ``batch`` in place, in one call when ``mask`` takes many (the eval
    process: one round trip); PII found becomes guardrail hits. Returns the masking time per task."""
    t0 = time.perf_counter()
    for task in batch:
        score_whole_reference(task, max_chars)
    fields = [(task, side, attr) for task in batch
              for side, attr in (("prompt", "prompt_text"), ("completion", "completion_text"), (None, "reference"))
              if getattr(task, attr) is not None]
    texts = [getattr(task, attr) for task, _, attr in fields]
    many = getattr(mask, "many", None)
    outcomes = many(texts, max_chars) if many is not None else [mask(t, max_chars) for t in texts]
    hits = {id(task): list(task.guardrail_hits) for task in batch}
    for (task, side, attr), (masked, entities, cut) in zip(fields, outcomes, strict=True):
        setattr(task, attr, masked)
        if side == "completion":  # the answer's cut (a long reference or prompt must not hide `empty`)
            task.content_truncated = task.content_truncated or cut
        if side is not None:
            found = hits[id(task)]
            found += [f"pii_{side}:{kind}" for kind in sorted(entities) if f"pii_{side}:{kind}" not in found]
    for task in batch:
        task.guardrail_hits = hits[id(task)]
    return (time.perf_counter() - t0) / len(batch)


def score_whole_reference(task: EvalTask, max_chars: int) -> None:
    """Token F1 and ROUGE-L of the raw texts, before masking (``EvalTask.reference_scores``).

    Raw, always: masking can cut a text (past ``max_chars``, or past it once placeholders lengthened
    it) and can mask the two sides differently (an account number found by its context word in the
    answer, left alone in a bare reference), and either wrongly scored a right answer low. Only the
    numbers leave here. ``cut``: 1.0 when masking will cut one of the texts (the explanation says so)."""
    completion, reference = task.completion_text, task.reference
    if not isinstance(completion, str) or not isinstance(reference, str) or task.answer_incomplete \
            or not reference.strip():
        return
    from infersight.evaluation.reference import rouge_l, rouge_tokens, token_f1

    task.reference_scores = {
        "token_f1": token_f1(completion, reference), "rouge_l": rouge_l(completion, reference),
        "prediction_tokens": float(len(rouge_tokens(completion))), "reference_tokens": float(len(rouge_tokens(reference))),
        "cut": 1.0 if max(len(completion), len(reference)) > max_chars else 0.0,
    }


def mask_each(batch: list[EvalTask], mask: Mask, max_chars: int) -> tuple[list[EvalTask], list[tuple[EvalTask, str]], float]:
    """``mask_tasks``, falling back to one task at a time when the batch's call fails, so only the
    task whose text fails is lost: (masked tasks, (failed task, error type) pairs, seconds per task).
    The error's type only: a masker's message can quote the raw text it failed on."""
    try:
        return batch, [], mask_tasks(batch, mask, max_chars)
    except Exception as exc:  # noqa: BLE001 - one bad text must not drop the others
        if len(batch) == 1:
            return [], [(batch[0], getattr(exc, "remote_type", None) or type(exc).__name__)], 0.0
    masked: list[EvalTask] = []
    failed: list[tuple[EvalTask, str]] = []
    seconds = 0.0
    for task in batch:
        ok, bad, per_task = mask_each([task], mask, max_chars)
        masked += ok
        failed += bad
        seconds += per_task
    return masked, failed, seconds / len(batch)


# the eval process's answer to a batch: tasks taken, (trace id, error) of those masking failed on,
# seconds of masking per task, and tasks its eval bus dropped since the last answer
IngestReply = tuple[int, list[tuple[str, str]], float, int]
Handoff = Callable[[list[EvalTask]], "Future[IngestReply]"]
"""Sends a batch of raw tasks to the eval process that masks and evaluates them; the future holds
its ``IngestReply``."""


MAX_CHARS_WAITING = 64 << 20
"""Raw text characters (prompts, completions, references) waiting for masking, at most: a task
that would pass it is dropped and counted (``dropped_queue_full``), unless nothing waits."""


def _raw_chars(task: EvalTask) -> int:
    return len(task.prompt_text or "") + len(task.completion_text or "") + len(task.reference or "")


class MaskingQueue:
    def __init__(
        self,
        bus: Bus | None,
        metrics: EvalGatewayMetrics | None,
        *,
        max_chars: int = 2000,
        max_queue: int = 1000,
        mask: Mask | None = None,
        pending: PendingTasks | None = None,
        linger_s: float = 0.0,
        max_batch: int = 32,
        handoff: Handoff | None = None,
    ) -> None:
        self.bus = bus  # None with ``handoff``: the eval process publishes to its own bus
        self._handoff = handoff
        # lag counts from the submit: in-process until the write; with ``handoff`` until the eval
        # process answers for the batch (it follows what it took from then)
        self.pending = pending
        self.metrics = metrics
        self.max_chars = max_chars
        self.max_queue = max_queue
        self._mask = mask
        self.linger_s = linger_s  # how long the first task of a batch waits for more (one round trip each)
        self.max_batch = max_batch
        # A deque and an Event rather than a queue.Queue: a Queue's put wakes the waiting thread for
        # every task, and each wake-up takes the relay's GIL; here only a batch's first task does.
        self._tasks: deque[EvalTask] = deque()
        self._arrived = threading.Event()  # set by the task that finds the queue empty
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0
        # with ``handoff``: raw tasks handed to the eval process and not yet answered for. They count
        # against ``max_queue``: the hand-off returns at once, so without them the bound held only
        # the gateway's side while the eval process's queue grew with the burst
        self._handed = 0
        self._handed_lock = threading.Lock()
        # raw characters waiting (queued and handed): a task count alone let 1,000 pasted documents
        # of 3.5 MB each wait for a frozen eval process (~4 GB); beyond the budget, dropped and counted
        self.max_chars_waiting = MAX_CHARS_WAITING
        self._chars = 0
        self.dropped = 0
        self.published = 0

    def submit(self, task: EvalTask) -> None:
        """Queue a task with raw content; never blocks (a full queue drops and counts it)."""
        if self.pending is not None:
            self.pending.add(task)  # before the queue: the write may end before the append returns
        if self._stopping.is_set():
            self._drop("dropped_at_shutdown", task)
            return
        size = _raw_chars(task)
        if len(self._tasks) + self._handed >= self.max_queue or (
                self._chars and self._chars + size > self.max_chars_waiting):
            self._drop("dropped_queue_full", task)
            return
        first = not self._tasks
        self._chars_more(size)
        self._tasks.append(task)  # atomic under the GIL: the masking thread pops from the other end
        if self.metrics is not None:
            self.metrics.mask_queue.inc()
        if first:
            self._arrived.set()

    def start(self) -> None:
        if self._mask is None and self._handoff is None:
            self._mask = presidio_mask()  # slow to build: at start-up, not on the first request
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="infersight-eval-masking", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Mask and publish what is queued (within the timeout); the rest is dropped and counted."""
        if self._thread is None:
            return
        self._stopping.set()
        self._arrived.set()
        self._thread.join(timeout_s)
        self._thread = None
        while self._tasks:
            task = self._tasks.popleft()
            self._waiting_less(1)
            self._chars_more(-_raw_chars(task))
            self._drop("dropped_at_shutdown", task)

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._process_batch(batch)
            if stop:
                return

    def _next_batch(self) -> tuple[list[EvalTask], bool]:
        """The tasks to mask in one call, and whether ``stop`` was asked for. The first task waits
        up to ``linger_s`` for others: with the eval process each call wakes the gateway's threads
        (and takes its GIL) on the way out and back, so ten tasks a second in one call or two
        is what keeps that off the relay (benchmarks/README.md, eval_bench "Discussion")."""
        if not self._tasks:
            self._arrived.wait()
        self._arrived.clear()  # before taking tasks: one that lands after this sets it again
        if self._stopping.is_set():  # mask what waits (stop's timeout bounds it), no more lingering
            batch = [self._tasks.popleft() for _ in range(min(len(self._tasks), self.max_batch))]
            return self._dequeued(batch), not self._tasks
        if len(self._tasks) < self.max_batch and self.linger_s > 0:
            self._stopping.wait(self.linger_s)
        batch = [self._tasks.popleft() for _ in range(min(len(self._tasks), self.max_batch))]
        return self._dequeued(batch), False

    def _dequeued(self, batch: list[EvalTask]) -> list[EvalTask]:
        if self._handoff is None:  # handed off, they still wait for masking, in the eval process
            self._waiting_less(len(batch))
            self._chars_more(-sum(map(_raw_chars, batch)))
        return batch

    def _chars_more(self, count: int) -> None:
        with self._handed_lock:
            self._chars += count

    def _waiting_less(self, count: int) -> None:
        if self.metrics is not None and count:
            self.metrics.mask_queue.dec(count)

    def _process_batch(self, batch: list[EvalTask]) -> None:
        if self._handoff is not None:
            self._hand_off(batch)
            return
        assert self._mask is not None
        masked, failed, per_task = mask_each(batch, self._mask, self.max_chars)
        self._mask_failed([(task.trace_id, error, task) for task, error in failed])
        for task in masked:
            if self.metrics is not None:
                self.metrics.mask_seconds.observe(per_task)
                self.metrics.tasks.labels("published").inc()
            self.published += 1
            assert self.bus is not None
            self.bus.publish(task)  # type: ignore[arg-type]  # the eval bus carries EvalTasks

    def _mask_failed(self, failed: list[tuple[str, str, EvalTask | None]]) -> None:
        """Tasks whose text the masker failed on: (trace id, error type, the task where it is here)."""
        for trace_id, error, task in failed:
            log.error("masking failed; eval task dropped", extra={"fields": {"trace_id": trace_id, "error": error}})
            self._drop("dropped_mask_error", task)

    def _hand_off(self, batch: list[EvalTask]) -> None:
        """The eval process masks, journals and evaluates the batch: one message out, one small
        answer back, which says how many it took (the rest are counted as dropped here)."""
        assert self._handoff is not None
        self._handed_more(len(batch))
        try:
            future = self._handoff(batch)
        except Exception:  # noqa: BLE001 - the eval process is down (and could not be restarted)
            self._handed_more(-len(batch))
            self._chars_more(-sum(map(_raw_chars, batch)))
            for task in batch:
                self._drop("dropped_eval_process", task)
            return
        future.add_done_callback(lambda done: self._handed_off(batch, done))

    def _handed_off(self, batch: list[EvalTask], future: Future[IngestReply]) -> None:
        """On the eval process's reader thread: count what the batch became. From here the eval
        process follows the tasks it took (its lag); this side followed them until now."""
        size = len(batch)
        self._handed_more(-size)
        self._chars_more(-sum(map(_raw_chars, batch)))
        if self.pending is not None:
            self.pending.done([task_key(task) for task in batch])
        if future.exception() is not None:  # the process exited before it journaled the batch
            for _ in range(size):
                self._drop("dropped_eval_process")
            return
        taken, failed, per_task, bus_dropped = future.result()
        self._mask_failed([(trace_id, error, None) for trace_id, error in failed])
        for _ in range(bus_dropped):  # the eval process's bus: memory full and no journal to hold them
            self._drop("dropped_bus")
        self.published += taken
        if self.metrics is not None:
            self.metrics.tasks.labels("published").inc(taken)
            for _ in range(taken):
                self.metrics.mask_seconds.observe(per_task)

    def _handed_more(self, count: int) -> None:
        """Tasks the eval process holds unanswered (the masking thread adds, its reader thread takes)."""
        with self._handed_lock:
            self._handed += count
        self._waiting_less(-count if count < 0 else 0)

    def _drop(self, reason: str, task: EvalTask | None = None) -> None:
        """Count (and log, once a minute) a task that will not be evaluated; ``task`` leaves the lag."""
        self.dropped += 1
        if task is not None and self.pending is not None:
            self.pending.done([task_key(task)])  # never evaluated, and counted as dropped: not lag
        if self.metrics is not None:
            self.metrics.tasks.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("eval tasks dropped before masking", extra={"fields": {"reason": reason,
                                                                              "dropped_total": self.dropped}})
