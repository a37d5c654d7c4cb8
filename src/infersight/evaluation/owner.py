"""The eval process that owns the sampled path (the default embedded shape), seen from the gateway.

Why: with the eval process serving only masking, checks and judge calls, the gateway still ran the
rest of every sampled task: the masked reply, the eval journal, the sink's round trips and its
store writes. Each woke the gateway's threads and took the relay's GIL, and at ten times the
target's eval load that was most of eval-on's added TTFT p99 (benchmarks/README.md, eval_bench
"Discussion": +8 to +11 ms, against +2 to +3 ms with one send per batch and nothing else).

So here the gateway sends a batch of raw tasks once (``MaskingQueue`` with a ``handoff``) and the
child does the rest (``owner_child.py``): masks, journals to ``spool-evals`` (its bus), runs the
checks and the judge, and writes ``request_content`` and ``eval_results`` to the gateway's store
process through its socket (``store/store_socket.py``). What the gateway still needs comes back on
demand, never per task: the breaker's lag and spend (``ProcessLag``, ``ProcessSpend``), the eval
metrics at scrape time (``ProcessMetrics``), and, for the demo's live table only, the results
(``ResultsRelay``).

Nothing is lost when the child dies: what it journaled is replayed by the next child (started on
the next hand-off, paced); a batch it had not journaled yet fails its answer and is counted as
``dropped_eval_process``. Raw text crosses only the pipe, never a disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric

from infersight.childproc import ChildProcess
from infersight.config import Settings
from infersight.evaluation.offload import EvalProcessError
from infersight.model import EvalResult, EvalTask
from infersight.periodic import Periodic
from infersight.store.store_socket import StoreAddress

if TYPE_CHECKING:
    from infersight.evaluation.eval_health import PendingTasks
    from infersight.evaluation.masking import IngestReply

log = logging.getLogger("infersight.evaluation.owner")

INGEST, LAG, SPEND, METRICS, RESULTS, FLUSH = "ingest", "lag", "spend", "metrics", "results", "flush"
FINAL_FLUSH_S = 10.0
SCRAPE_TIMEOUT_S = 5.0  # a scrape that the child does not answer in time shows the gateway's own metrics
RELAY_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 30.0


class EvalOwnerProcess(ChildProcess):
    """The eval process in the shape where it owns the sampled path. Like ``EvalProcess`` it reads
    the rubric once, here, so a restarted child judges with the one the gateway started with."""

    name = "eval process"
    reader_name = "infersight-eval-process-reader"
    error = EvalProcessError

    def __init__(self, settings: Settings, store_at: StoreAddress, *, relay_results: bool = False,
                 **kwargs: Any) -> None:
        from infersight.evaluation.rubric import Rubric, load_rubric

        judge = settings.evaluation.judge
        self.rubric: Rubric | None = load_rubric(judge.rubric, kind="pointwise") if judge.url else None
        super().__init__("infersight.evaluation.owner_child",
                         (settings, settings.logging.level, self.rubric, store_at, relay_results), **kwargs)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """The child delivers what its bus holds first (the rest stays journaled), hence the longer wait."""
        super().stop(timeout_s)

    def handoff(self, batch: list[EvalTask]) -> Future[IngestReply]:
        """``masking.Handoff``: one send; a child that exited is replaced first (paced: the masking
        thread waits, its queue holds what arrives meanwhile)."""
        self.ensure_started(wait=True)
        return self.submit(INGEST, batch)


class ProcessLag:
    """The breaker's lag: the age of the oldest task not yet written, the older of those still on
    this side (queued for the hand-off, or sent and not yet answered for: ``handed``) and those the
    child took and has not written."""

    def __init__(self, process: EvalOwnerProcess, handed: PendingTasks | None = None) -> None:
        self.process = process
        self.handed = handed

    def oldest_age_s(self, now: float) -> float | None:
        here = self.handed.oldest_age_s(now) if self.handed is not None else None
        there: float | None = self.process.call(LAG, None)
        ages = [age for age in (here, there) if age is not None]
        return max(ages) if ages else None


class ProcessSpend:
    """The breaker's spend: the child adds up what it wrote, seeded from the store at its start."""

    def __init__(self, process: EvalOwnerProcess) -> None:
        self.process = process

    def spend(self, period_start: datetime) -> float:
        return float(self.process.call(SPEND, period_start))


class ProcessMetrics:
    """A Prometheus collector for the gateway's registry: the child's eval metrics (scores, lag,
    judge use and failures), asked for at scrape time. A child that is down or slow leaves them
    out of that scrape rather than holding it."""

    def __init__(self, process: EvalOwnerProcess) -> None:
        self.process = process

    def describe(self) -> list[Metric]:
        return []  # registering must not ask a child that has not started yet

    def collect(self) -> Iterable[Metric]:
        if not self.process.alive():
            return []
        try:
            deadline = time.monotonic() + SCRAPE_TIMEOUT_S  # the send's wait counts (a child not reading)
            future = self.process.submit(METRICS, None, SCRAPE_TIMEOUT_S)
            metrics: list[Metric] = future.result(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - this scrape goes without them; the next asks again
            log.warning("eval process metrics unavailable for this scrape")
            return []
        return metrics


class ResultsRelay:
    """Hands the child's new results to in-process observers (the demo's live table) once a second.
    Only when there are observers: otherwise no result crosses back to the gateway."""

    def __init__(self, process: EvalOwnerProcess, observers: list[Callable[[list[EvalResult]], None]]) -> None:
        self.process = process
        self.observers = observers
        self._periodic = Periodic("infersight-eval-results", lambda: RELAY_INTERVAL_S, self.relay, run_first=False)

    def relay(self) -> None:
        if not self.process.alive():
            return
        results: list[EvalResult] = self.process.call(RESULTS, None)
        if not results:
            return
        for observe in self.observers:
            try:
                observe(results)
            except Exception:  # noqa: BLE001 - an observer must not stop the relay
                log.exception("eval result observer failed")

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def final(self) -> None:
        """At stop, after the last hand-off: let the child evaluate what it holds, then relay it, so
        the observers' last view (the demo's final table) has every result the run produced."""
        try:
            self.process.call(FLUSH, FINAL_FLUSH_S)
            self.relay()
        except Exception:  # noqa: BLE001 - only the observers' view is short; the rows are written
            log.warning("eval results at stop could not be relayed")
