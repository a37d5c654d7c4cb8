"""The gateway's eval process: masking, checks and the judge in a child, off the relay's GIL.

Why: in one process, Presidio's masking, the checks and the judge client's prompt building and JSON
parsing hold the GIL in slices of milliseconds, and a stream waiting for its first chunk waits for
them (eval_bench's added TTFT p99). Presidio (with the spaCy it imports) is also ~65 MB of the
gateway's RSS. In a child process both leave the gateway; the gateway keeps everything that
carries state or durability: the sampler, the eval bus and its journal, the sink's store writes,
the pending tasks, dead letters and metrics. So the adapters below slot into ``MaskingQueue``
(``RemoteMask``) and ``EvalSink`` (``RemoteEvaluate``, ``RemoteJudge``) unchanged.

Failure: if the child dies, its calls in flight fail (the masking thread drops and counts the task;
the sink raises, so the eval bus retries the batch from its journal) and the next call starts a new
child, at most once per ``restart_interval_s``. Raw text crosses only the pipe between the two
processes, never a disk.
"""

from __future__ import annotations

import asyncio
from typing import Any

from infersight.childproc import ChildGone, ChildProcess, RemoteError
from infersight.evaluation.offload_child import EVALUATE, EVALUATE_MANY, JUDGE, JUDGE_MANY, MASK
from infersight.evaluation.settings import EvaluationSettings
from infersight.model import EvalResult, EvalTask

__all__ = ["EvalProcess", "EvalProcessError", "RemoteError", "RemoteEvaluate", "RemoteJudge", "RemoteMask"]


class EvalProcessError(ChildGone):
    """The eval process is not there: it failed to start, exited, or did not answer in time."""

    reason = "eval_process"


class EvalProcess(ChildProcess):
    """The eval process, serving ``ops`` (a subset of mask, evaluate, judge).

    The judge's rubric is read here, once, and sent to every child this object starts: a child
    restarted after a crash judges with the rubric the gateway started with, so its rows keep the
    ``evaluator_version`` the gateway names in its error rows, and an edited (or broken) rubric file
    takes effect on the gateway's restart, never silently in the middle of a series."""

    name = "eval process"
    reader_name = "infersight-eval-process-reader"
    error = EvalProcessError

    def __init__(self, evaluation: EvaluationSettings, ops: set[str], *, log_level: str = "info",
                 **kwargs: Any) -> None:
        from infersight.evaluation.rubric import Rubric, load_rubric

        self.rubric: Rubric | None = (load_rubric(evaluation.judge.rubric, kind="pointwise")
                                      if JUDGE in ops and evaluation.judge.url else None)
        super().__init__("infersight.evaluation.offload_child",
                         (evaluation, sorted(ops), log_level, self.rubric), **kwargs)
        self.evaluation = evaluation
        self.ops = frozenset(ops)
        self.log_level = log_level


class RemoteMask:
    """``masking.Mask`` through the eval process; ``many`` masks a task's texts in one round trip
    (each call wakes threads on both sides, and every wake-up takes the gateway's GIL)."""

    def __init__(self, process: EvalProcess) -> None:
        self.process = process

    def __call__(self, text: str, max_chars: int) -> tuple[str, dict[str, int], bool]:
        return self.many([text], max_chars)[0]

    def many(self, texts: list[str], max_chars: int) -> list[tuple[str, dict[str, int], bool]]:
        results: list[tuple[str, dict[str, int], bool]] = self.process.call(MASK, (texts, max_chars))
        return results


class RemoteEvaluate:
    """The deterministic checks and reference metrics (``worker.Evaluate``) in the eval process."""

    def __init__(self, process: EvalProcess) -> None:
        self.process = process

    def __call__(self, task: EvalTask) -> list[EvalResult]:
        results: list[EvalResult] = self.process.call(EVALUATE, task)
        return results

    def many(self, tasks: list[EvalTask]) -> list[list[EvalResult] | RemoteError]:
        """A batch in one round trip; a task that failed there comes back as its ``RemoteError``."""
        outcomes: list[tuple[bool, Any]] = self.process.call(EVALUATE_MANY, tasks)
        return [value if ok else RemoteError(value) for ok, value in outcomes]


class RemoteJudge:
    """``worker.Judge`` in the eval process. The version is computed here too (from the same model,
    parameters and the rubric the process hands its children), so that a failed call's row names it
    without asking the child."""

    def __init__(self, process: EvalProcess) -> None:
        from infersight.evaluation.judge_version import compute_evaluator_version

        judge = process.evaluation.judge
        if process.rubric is None:
            raise ValueError("RemoteJudge needs an eval process that serves the judge (ops with 'judge' and a judge url)")
        self.process = process
        self.rubric = process.rubric  # the sink asks the store for its first dimension before a replay
        self.judge_model = judge.model
        self.evaluator_version = compute_evaluator_version(judge.model, process.rubric, judge.temperature,
                                                           judge.max_tokens, json_mode=judge.json_mode)

    async def evaluate(self, task: EvalTask) -> list[EvalResult]:
        """Like ``EvalProcess.call``: a child that exits during the call is replaced, and asked again once."""
        for attempt in (1, 2):
            if not self.process.alive():
                await asyncio.to_thread(self.process.ensure_started, True)
            try:
                results: list[EvalResult] = await asyncio.wrap_future(self.process.submit(JUDGE, task))
                return results
            except EvalProcessError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def evaluate_many(self, tasks: list[EvalTask]) -> list[tuple[list[EvalResult] | RemoteError, float]]:
        """A batch judged concurrently in the eval process and answered once, from the sink's thread:
        one round trip per batch instead of one per task, and no event loop in the gateway to wake.
        Per task: its results or its ``RemoteError``, and how long it took. A batch whose child exits
        is sent once more to a new one (``call``); no timeout (a judge may be slow)."""
        outcomes: list[tuple[bool, Any, float]] = self.process.call(JUDGE_MANY, tasks, timed=False)
        return [(value if ok else RemoteError(value), seconds) for ok, value, seconds in outcomes]

    async def aclose(self) -> None:
        """The judge's HTTP session lives in the eval process and closes with it."""
