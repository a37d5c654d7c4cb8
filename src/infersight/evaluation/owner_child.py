"""The eval process's main when it owns the sampled path (``owner.py`` is the gateway's side).

Started as ``python -m infersight.evaluation.owner_child FD``; the first message is ``(settings, log
level, rubric, store address, relay results)``. It builds the masker, its own eval bus (journal
``<storage.path>/spool-evals``, replayed at start: what an earlier child journaled and did not write),
the ``EvalSink`` with the checks and the judge, and a connection to the gateway's store process.
Then it serves ``ingest`` (a batch of raw tasks: masked, journaled, answered with how many it
took) and ``flush``, in order on a thread of their own, and ``lag``, ``spend``, ``metrics`` and
``results`` at once on the main thread, whatever ingests wait. The bus's writer thread
evaluates and writes. When the gateway sends ``None`` (or goes away) it stops its bus, which
delivers what it holds first; anything left stays journaled for the next start. Text stays in
memory and in the journal only after masking: nothing here writes raw content to disk or logs.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from datetime import datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from infersight.childproc import Replies, incoming
from infersight.config import Settings
from infersight.evaluation.offload_child import error_value, settle_eval_process
from infersight.evaluation.owner import FLUSH, INGEST, LAG, METRICS, RESULTS, SPEND, STOP_TIMEOUT_S
from infersight.evaluation.rubric import Rubric
from infersight.model import EvalResult, EvalTask
from infersight.scheduling import pin_to_cpus
from infersight.store.store_socket import StoreAddress

if TYPE_CHECKING:
    from infersight.evaluation.masking import IngestReply

log = logging.getLogger("infersight.evaluation.process")

RELAY_CAP = 20_000  # results kept for the gateway's observers between two relays (the oldest go first)
BUS_STOP_S = STOP_TIMEOUT_S - 5.0  # a stop's delivery, within the gateway's wait for this process
GONE_STOP_S = 1.0  # the gateway went away: what is not delivered by then stays in the journal


class SampledPath:
    """Everything after the gateway's hand-off: masking, the eval bus, the sink and its store."""

    def __init__(self, settings: Settings, rubric: Rubric | None, store_at: StoreAddress,
                 relay_results: bool) -> None:
        from infersight.evaluation.dead_letters import JsonlDeadLetters, dead_letter_dir
        from infersight.evaluation.eval_health import LocalSpend, PendingTasks, store_spend
        from infersight.evaluation.masking import presidio_mask
        from infersight.runtime_eval import build_eval_bus, build_eval_sink, keep_spend_on_disk, redrive_poller
        from infersight.store.remote import RemoteStore

        self.max_chars = settings.evaluation.max_content_chars
        self.mask = presidio_mask()
        self.store = RemoteStore.connect(settings, store_at)
        self.pending = PendingTasks()
        self.local_spend = LocalSpend(seed=store_spend(self.store),
                                      period=settings.evaluation.breaker.budget_period)
        self.registry = CollectorRegistry()
        self.recent: deque[EvalResult] | None = deque(maxlen=RELAY_CAP) if relay_results else None
        observers = [self.recent.extend] if self.recent is not None else []
        dead = JsonlDeadLetters(dead_letter_dir(settings.storage.path))
        self.sink = build_eval_sink(settings, self.store, self.registry, observers=observers, spend=self.local_spend,
                                    pending=self.pending, dead_letter=dead, hold_on_judge_outage=True, rubric=rubric)
        self.bus_dropped: list[str] = []  # trace ids the eval bus dropped, told in the next ingest reply
        self.bus = build_eval_bus(settings, [self.sink], on_drop=self._bus_dropped)
        keep_spend_on_disk(self.local_spend, self.bus)
        self.redrive = redrive_poller(settings, self.bus, self.pending.add)

    def start(self) -> None:
        self.bus.start()  # replays the journal: the sink writes it once the store answers
        self.redrive.start()

    def stop(self, timeout_s: float) -> None:
        self.redrive.stop()
        self.bus.stop(timeout_s)  # delivers what it holds (its exporters' shutdown closes the judge's session)
        self.store.close()  # our connection only

    def handle(self, op: str, payload: Any) -> Any:
        if op == INGEST:
            return self.ingest(payload)
        if op == LAG:
            return self.pending.oldest_age_s(time.time())
        if op == SPEND:
            assert isinstance(payload, datetime)
            return self.local_spend.spend(payload)
        if op == METRICS:
            return list(self.registry.collect())
        if op == RESULTS:
            return self.drain()
        if op == FLUSH:
            return self.bus.flush(float(payload))
        raise ValueError(f"the eval process does not serve {op!r}")

    def ingest(self, batch: list[EvalTask]) -> IngestReply:
        """Mask and journal a batch; the answer says what was taken, what failed masking and how
        many tasks the eval bus dropped since the last answer (the gateway counts those)."""
        from infersight.evaluation.masking import mask_each

        masked, failed, per_task = mask_each(batch, self.mask, self.max_chars)
        for task in masked:
            self.pending.add(task)  # before the publish: the write may end before it returns
            self.bus.publish(task)  # type: ignore[arg-type]  # the eval bus carries EvalTasks
        dropped, self.bus_dropped = self.bus_dropped, []
        return len(masked) - len(dropped), [(task.trace_id, error) for task, error in failed], per_task, len(dropped)

    def _bus_dropped(self, task: EvalTask) -> None:
        """The eval bus had to drop a task (memory full, journal full or failing): not lag; the
        gateway counts it as ``dropped_bus`` from the next ingest reply."""
        self.pending.drop(task)
        self.bus_dropped.append(task.trace_id)

    def drain(self) -> list[EvalResult]:
        if self.recent is None:
            return []
        out = []
        while self.recent:
            out.append(self.recent.popleft())
        return out


def main(conn: Connection, settings: Settings, log_level: str, rubric: Rubric | None, store_at: StoreAddress,
         relay_results: bool) -> None:
    """Serve the gateway's hand-offs and questions until it says stop or goes away."""
    evaluation = settings.evaluation
    settle_eval_process(evaluation, log_level)
    replies = Replies(conn)
    try:
        pin_to_cpus(evaluation.child_cpus, "evaluation.child_cpus", "eval process")  # before any thread starts
        path = SampledPath(settings, rubric, store_at, relay_results)
        path.start()
    except Exception as exc:  # noqa: BLE001 - reported to the gateway, which fails its start
        replies.send(0, False, error_value(exc))
        return
    replies.send(0, True, {"owner": True})
    gone: list[bool] = []

    def answer(call_id: int, op: str, payload: Any) -> None:
        try:
            value = path.handle(op, payload)
        except Exception as exc:  # noqa: BLE001 - one bad call fails itself, not the process
            replies.send(call_id, False, error_value(exc, with_message=op != INGEST))
        else:
            replies.send(call_id, True, value)

    # Ingests (masking, seconds under a flood) and flushes run in order on a thread of their own:
    # the breaker's lag and spend and the scrape's metrics are answered at once, not after every
    # batch queued ahead of them (the lag then read nothing, or a stale figure, while a backlog grew).
    ordered: queue.SimpleQueue[tuple[int, str, Any] | None] = queue.SimpleQueue()

    def run_ordered() -> None:
        while (call := ordered.get()) is not None:
            answer(*call)

    worker = threading.Thread(target=run_ordered, name="infersight-eval-ingest", daemon=True)
    worker.start()
    try:
        for call_id, op, payload in incoming(conn, on_gone=lambda: gone.append(True)):
            if op in (INGEST, FLUSH):
                ordered.put((call_id, op, payload))
            else:
                answer(call_id, op, payload)
    finally:
        ordered.put(None)
        worker.join()
        # The gateway asked: deliver what the bus holds within its wait. The gateway is gone (killed):
        # nobody waits and its store process goes too, so leave the rest to the journal at once,
        # and free its slot for the gateway that a supervisor starts again right away.
        path.stop(GONE_STOP_S if gone else BUS_STOP_S)


def run_from_fd(fd: int) -> None:
    conn = Connection(fd)
    try:
        settings, log_level, rubric, store_at, relay_results = conn.recv()
    except (EOFError, OSError):
        return
    main(conn, settings, log_level, rubric, store_at, relay_results)


if __name__ == "__main__":
    run_from_fd(int(sys.argv[1]))
