"""The eval process's main: PII masking, the deterministic checks and the LLM judge, off the gateway.

Started by ``offload.EvalProcess`` as ``python -m infersight.evaluation.offload_child FD``: a fresh
interpreter (the gateway runs threads and an event loop, which ``fork`` would copy mid-flight; and
unlike multiprocessing's ``spawn`` it never re-runs the caller's ``__main__``). FD is its end of a
socket pair; the first message is ``(evaluation settings, ops, log level, rubric)`` (the rubric the
gateway loaded at its start, so a restarted child judges with the same one). It then reads
``(call_id, op, payload)`` messages and answers ``(call_id, ok, value)``. ``mask`` (texts, a batch's
at once) and ``evaluate``/``evaluate_many`` are CPU work done in order on the main thread;
``judge``/``judge_many`` calls are I/O (``judge_many`` answers once its whole batch is judged), run
concurrently on the process's own event loop (the judge's ``concurrency`` bounds them). It exits
when the gateway sends ``None`` or the pipe closes (the gateway died), so it never outlives its
parent. Text stays in memory: nothing here writes content to disk or to logs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from infersight.childproc import Replies, ignore_group_signals, incoming
from infersight.evaluation.rubric import Rubric
from infersight.evaluation.settings import EvaluationSettings
from infersight.logs import configure_logging
from infersight.scheduling import idle_policy, lower_priority, pin_to_cpus
from infersight.model import EvalResult, EvalTask

log = logging.getLogger("infersight.evaluation.process")

MASK, EVALUATE, JUDGE = "mask", "evaluate", "judge"
EVALUATE_MANY, JUDGE_MANY = "evaluate_many", "judge_many"  # a batch's tasks in one round trip


def error_value(exc: BaseException, *, with_message: bool = True) -> dict[str, Any]:
    """What the gateway needs to rebuild a failure: its type and, for a judge, its accounted cost.
    A masking error's message is left out: it could quote the raw text, and the gateway logs it."""
    return {
        "type": type(exc).__name__, "message": str(exc)[:500] if with_message else "(not kept: masking input)",
        "reason": getattr(exc, "reason", None),
        "prompt_tokens": getattr(exc, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(exc, "completion_tokens", 0) or 0, "cost": getattr(exc, "cost", 0.0) or 0.0,
        "evaluator_version": getattr(exc, "evaluator_version", None), "hint": getattr(exc, "hint", None),
    }


class _Replies(Replies):
    """The main thread and the judge loop both answer; a judge call answers when its future is done."""

    def finish(self, call_id: int, future: Future[Any]) -> None:
        exc = future.exception()
        if exc is None:
            self.send(call_id, True, future.result())
        else:
            self.send(call_id, False, error_value(exc))


def _handlers(evaluation: EvaluationSettings, ops: frozenset[str]) -> dict[str, Callable[[Any], Any]]:
    handlers: dict[str, Callable[[Any], Any]] = {}
    if MASK in ops:
        from infersight.evaluation.masking import presidio_mask

        mask = presidio_mask()
        handlers[MASK] = lambda payload: [mask(text, payload[1]) for text in payload[0]]  # a task's texts
    if EVALUATE in ops:
        from infersight.evaluation.checks import run_checks
        from infersight.evaluation.reference import reference_evaluator

        run_reference = reference_evaluator(evaluation.embedding_model_dir, evaluation.embedding_device)

        def evaluate(task: EvalTask) -> list[EvalResult]:
            return [*run_checks(task), *run_reference(task)]

        handlers[EVALUATE] = evaluate
        handlers[EVALUATE_MANY] = lambda tasks: [_outcome(evaluate, task) for task in tasks]
    return handlers


def _outcome(evaluate: Callable[[EvalTask], list[EvalResult]], task: EvalTask) -> tuple[bool, Any]:
    """One task of a batch: its results, or its failure (each task fails alone)."""
    try:
        return True, evaluate(task)
    except Exception as exc:  # noqa: BLE001 - sent back; the gateway's sink decides (retry, dead-letter)
        return False, error_value(exc)


async def judge_many(judge: Any, tasks: list[EvalTask]) -> list[tuple[bool, Any, float]]:
    """Judge a batch concurrently (the judge's ``concurrency`` bounds it): per task its results or
    its failure, and how long it took."""
    async def one(task: EvalTask) -> tuple[bool, Any, float]:
        t0 = time.perf_counter()
        try:
            return True, await judge.evaluate(task), time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - recorded by the gateway as the task's judge error row
            return False, error_value(exc), time.perf_counter() - t0

    return list(await asyncio.gather(*(one(task) for task in tasks)))


def settle_eval_process(evaluation: EvaluationSettings, log_level: str) -> None:
    """What an eval process does first, whichever shape it serves: logs, signals, priority (before
    any thread starts: they inherit it)."""
    configure_logging(log_level)
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)  # it logs at import, once per recognizer
    ignore_group_signals()  # the gateway stops us, after its last flush or hand-off
    lower_priority(evaluation.child_nice, "eval process")  # requests in flight get the CPU first
    if evaluation.child_sched_idle:
        idle_policy("eval process")


def main(conn: Connection, evaluation: EvaluationSettings, ops: frozenset[str], log_level: str,
         rubric: Rubric | None = None) -> None:
    """Serve the gateway's calls until it says stop or goes away."""
    settle_eval_process(evaluation, log_level)
    replies = _Replies(conn)
    try:
        pin_to_cpus(evaluation.child_cpus, "evaluation.child_cpus", "eval process")  # before any thread starts
        handlers = _handlers(evaluation, ops)
        judge = None
        if JUDGE in ops and evaluation.judge.url:
            from infersight.evaluation.llm_judge import LLMJudge

            judge = LLMJudge.from_settings(evaluation.judge, rubric=rubric)
    except Exception as exc:  # noqa: BLE001 - reported to the gateway, which fails its start
        replies.send(0, False, error_value(exc))
        return
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="infersight-eval-process-judge", daemon=True)
    loop_thread.start()
    replies.send(0, True, {"ops": sorted(ops)})
    try:
        for call_id, op, payload in incoming(conn):
            if op in (JUDGE, JUDGE_MANY) and judge is not None:
                work = judge.evaluate(payload) if op == JUDGE else judge_many(judge, payload)
                future = asyncio.run_coroutine_threadsafe(work, loop)
                future.add_done_callback(lambda f, cid=call_id: replies.finish(cid, f))
                continue
            handler = handlers.get(op)
            try:
                if handler is None:
                    raise ValueError(f"the eval process does not serve {op!r}")
                value = handler(payload)
            except Exception as exc:  # noqa: BLE001 - one bad task fails its own call, not the process
                replies.send(call_id, False, error_value(exc, with_message=op != MASK))
            else:
                replies.send(call_id, True, value)
    finally:
        if judge is not None:
            try:
                asyncio.run_coroutine_threadsafe(judge.aclose(), loop).result(timeout=5)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(5)
        if not loop_thread.is_alive():  # else Python closes it at exit: "Exception ignored in BaseEventLoop.__del__"
            loop.close()


def run_from_fd(fd: int) -> None:
    conn = Connection(fd)
    try:
        evaluation, ops, log_level, rubric = conn.recv()
    except (EOFError, OSError):
        return
    main(conn, evaluation, frozenset(ops), log_level, rubric)


if __name__ == "__main__":
    run_from_fd(int(sys.argv[1]))
