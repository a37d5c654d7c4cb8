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
import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from infersight.evaluation.offload_child import EVALUATE, JUDGE, MASK
from infersight.evaluation.settings import EvaluationSettings
from infersight.model import EvalResult, EvalTask

log = logging.getLogger("infersight.evaluation.process")


class EvalProcessError(RuntimeError):
    """The eval process is not there: it failed to start, exited, or did not answer in time."""

    reason = "eval_process"


class RemoteError(Exception):
    """A call the eval process ran and that raised there; ``reason`` is the original type's name."""

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__(f"{value.get('type')}: {value.get('message')}")
        self.remote_type = str(value.get("type") or "error")
        self.reason = value.get("reason") or value.get("type") or "error"
        self.prompt_tokens = int(value.get("prompt_tokens") or 0)
        self.completion_tokens = int(value.get("completion_tokens") or 0)
        self.cost = float(value.get("cost") or 0.0)


class EvalProcess:
    """One child process serving ``ops`` (a subset of mask, evaluate, judge); restarted on demand."""

    def __init__(
        self,
        evaluation: EvaluationSettings,
        ops: set[str],
        *,
        log_level: str = "info",
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 120.0,
        restart_interval_s: float = 5.0,
        on_restart: Any = None,
    ) -> None:
        self.evaluation = evaluation
        self.ops = frozenset(ops)
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.restart_interval_s = restart_interval_s
        self.on_restart = on_restart  # called after each start that replaced a dead child
        self._lock = threading.Lock()  # one start at a time
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._calls: dict[int, tuple[Connection, Future[Any]]] = {}  # call id -> (the pipe it went on, its future)
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._last_start = float("-inf")
        self._stopping = False
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def health(self) -> dict[str, object]:
        """For ``/healthz``: whether the child is up, its pid and how many times it was started."""
        return {"up": self.alive(), "pid": self.pid, "starts": self.starts}

    def alive(self) -> bool:
        return self._conn is not None and self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child and wait until it has built its parts (Presidio takes seconds)."""
        self._stopping = False
        with self._lock:
            self._start_locked()

    def ensure_started(self, wait: bool = False) -> None:
        """Start a new child if the last one exited. Restarts are paced (``restart_interval_s``):
        within it, raise, or with ``wait`` sleep out the interval (callers that hold a task)."""
        if self.alive():
            return
        with self._lock:
            if self.alive():
                return
            if self._stopping:
                raise EvalProcessError("the eval process is stopping")
            remaining = self._last_start + self.restart_interval_s - time.monotonic()
            if remaining > 0:
                if not wait:
                    raise EvalProcessError("the eval process exited; restarting it is paced")
                time.sleep(remaining)
            self._start_locked()
            if self.on_restart is not None:
                self.on_restart()

    def _start_locked(self) -> None:
        self._last_start = time.monotonic()
        self._close_locked()
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-m", "infersight.evaluation.offload_child", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
        )
        theirs.close()  # the child holds its end; ours sees EOF when the child exits
        parent = Connection(ours.detach())
        try:
            parent.send((self.evaluation, sorted(self.ops), self.log_level))
            ready = parent.poll(self.start_timeout_s)
        except (OSError, EOFError):
            ready = True  # the child is gone already: recv below says so
        if not ready:
            process.kill()
            process.wait(5)
            parent.close()
            raise EvalProcessError(f"the eval process did not start within {self.start_timeout_s:.0f} s")
        try:
            _, ok, value = parent.recv()
        except (EOFError, OSError):
            parent.close()
            raise EvalProcessError(f"the eval process exited at start (exit code {process.wait(5)})") from None
        if not ok:
            parent.close()
            process.wait(5)
            raise EvalProcessError(f"the eval process failed to start: {value.get('type')}: {value.get('message')}")
        self._conn, self._process = parent, process
        self._last_start = time.monotonic()  # pacing counts from when it was ready
        self._reader = threading.Thread(target=self._read, args=(parent,), name="infersight-eval-process-reader",
                                        daemon=True)
        self._reader.start()
        self.starts += 1
        log.info("eval process started", extra={"fields": {"pid": process.pid, "ops": sorted(self.ops)}})

    def submit(self, op: str, payload: Any) -> Future[Any]:
        """Send one call; the future resolves with its value or a ``RemoteError``/``EvalProcessError``."""
        self.ensure_started()
        future: Future[Any] = Future()
        call_id = next(self._ids)
        conn = self._conn
        try:
            if conn is None:
                raise OSError("no connection")
            self._calls[call_id] = (conn, future)
            with self._send_lock:
                conn.send((call_id, op, payload))
        except (OSError, ValueError) as exc:
            self._calls.pop(call_id, None)
            raise EvalProcessError(f"the eval process is gone: {exc}") from None
        return future

    def call(self, op: str, payload: Any) -> Any:
        """A blocking call, for threads (the masking thread, the bus writer). A child that exits
        during the call is replaced and the call sent once more; a second exit fails it."""
        for attempt in (1, 2):
            self.ensure_started(wait=True)
            future = self.submit(op, payload)
            try:
                return future.result(self.call_timeout_s)
            except TimeoutError:
                log.error("eval process did not answer; restarting it", extra={"fields": {"op": op}})
                self._kill()
                raise EvalProcessError(f"the eval process did not answer {op!r} in {self.call_timeout_s:.0f} s") \
                    from None
            except EvalProcessError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                call_id, ok, value = conn.recv()
            except (EOFError, OSError):
                break
            entry = self._calls.pop(call_id, None)
            if entry is None:
                continue
            future = entry[1]
            if ok:
                future.set_result(value)
            else:
                future.set_exception(RemoteError(value))
        if conn is self._conn:
            self._conn = None
            if not self._stopping:
                log.error("eval process exited", extra={"fields": {"exit_code": self._exit_code()}})
        self._fail_calls(conn)

    def _exit_code(self) -> int | None:
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(1)
        except subprocess.TimeoutExpired:
            return None

    def _fail_calls(self, conn: Connection | None = None) -> None:
        """Fail the calls sent on ``conn`` (all calls when None): no answer will come for them."""
        for call_id, (sent_on, _) in list(self._calls.items()):
            if conn is not None and sent_on is not conn:
                continue
            entry = self._calls.pop(call_id, None)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(EvalProcessError("the eval process exited during the call"))

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()

    def _close_locked(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(5)
            self._process = None
        self._fail_calls()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to finish (it answers calls already received first), then reap it."""
        self._stopping = True
        with self._lock:
            conn, process = self._conn, self._process
            if conn is not None:
                try:
                    with self._send_lock:
                        conn.send(None)
                except (OSError, ValueError):
                    pass
            if process is not None:
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            if self._reader is not None:
                self._reader.join(5)
            self._conn, self._process, self._reader = None, None, None
            if conn is not None:
                conn.close()
            self._fail_calls()


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


class RemoteJudge:
    """``worker.Judge`` in the eval process. The version is computed here too (from the same model,
    rubric text and parameters), so that a failed call's row names it without asking the child."""

    def __init__(self, process: EvalProcess) -> None:
        from infersight.evaluation.judge_version import compute_evaluator_version
        from infersight.evaluation.rubric import load_rubric

        judge = process.evaluation.judge
        self.process = process
        self.judge_model = judge.model
        self.evaluator_version = compute_evaluator_version(judge.model, load_rubric(judge.rubric),
                                                           judge.temperature, judge.max_tokens)

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

    async def aclose(self) -> None:
        """The judge's HTTP session lives in the eval process and closes with it."""
