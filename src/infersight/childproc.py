"""A child Python process that serves one gateway's calls over a socket pair, off the relay's GIL.

Why: the gateway relays streams on one event loop, and any Python work in another thread of the
same process (masking, checks, a DuckDB write, which takes the GIL to scan its Arrow batch) holds
that loop up when a stream's first chunk arrives; eval_bench and the store ablation in
benchmarks/README.md measured it in the added TTFT's p99. A child process has its own GIL.

The parent side (``ChildProcess``) sends ``(call_id, op, payload)`` and a reader thread resolves
each call's future with the child's ``(call_id, ok, value)``. The child is a fresh interpreter,
``python -m <module> FD`` (``fork`` would copy the gateway's threads mid-flight; multiprocessing's
``spawn`` would re-run the caller's ``__main__``); its first message is the module's init payload,
and it answers ``(0, True, info)`` once ready. ``Replies`` is the child's sending half.

Failure: if the child dies its calls in flight fail with the owner's error type, and the next call
starts a new child, at most once per ``restart_interval_s``. The child exits when the pipe closes,
so it never outlives the gateway.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("infersight.childproc")

SEND_FAILED_WAIT_S = 0.5  # how long a failed send waits for the exiting child to be reaped
STOP_SEND_TIMEOUT_S = 2.0  # how long stop waits to send its goodbye past a sender stuck on the child


class SendBlocked(TimeoutError):
    """A call could not even be sent in time: another send is stuck on a child that does not read."""


class ChildGone(RuntimeError):
    """The child is not there: it failed to start, exited, or did not answer in time."""

    reason = "child_process"


class RemoteError(Exception):
    """A call the child ran and that raised there, sent back as a dict (``error_value``); ``reason``
    is the original type's name, or the reason the exception carried."""

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__(f"{value.get('type')}: {value.get('message')}")
        self.remote_type = str(value.get("type") or "error")
        self.reason = value.get("reason") or value.get("type") or "error"
        self.prompt_tokens = int(value.get("prompt_tokens") or 0)
        self.completion_tokens = int(value.get("completion_tokens") or 0)
        self.cost = float(value.get("cost") or 0.0)
        self.evaluator_version = value.get("evaluator_version")  # a judge's: the version its error row takes
        self.hint = value.get("hint")  # a judge's: what its error row explains


def portable_exception(exc: BaseException) -> BaseException | None:
    """``exc`` itself when it survives pickling (so the parent raises the same type), else None."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - unpicklable exceptions are sent as RemoteError dicts
        return None
    return exc


class ChildProcess:
    """One child process serving calls; started, restarted on demand (paced) and stopped by its owner.

    ``module`` is run as ``python -m module FD``; ``init`` is its first message. Subclasses name the
    child in log lines (``name``) and pick the error that callers already handle (``error``).
    """

    name = "child process"
    reader_name = "infersight-child-reader"
    error: type[ChildGone] = ChildGone

    def __init__(
        self,
        module: str,
        init: Any,
        *,
        start_timeout_s: float = 120.0,
        call_timeout_s: float = 120.0,
        restart_interval_s: float = 5.0,
        on_restart: Any = None,
    ) -> None:
        self.module = module
        self.init = init
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
        """Start the child and wait until it is ready (it may build slow parts first)."""
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
                raise self.error(f"the {self.name} is stopping")
            remaining = self._last_start + self.restart_interval_s - time.monotonic()
            if remaining > 0:
                if not wait:
                    raise self.error(f"the {self.name} exited; restarting it is paced")
                time.sleep(remaining)
            self._start_locked()
            if self.on_restart is not None:
                self.on_restart()

    def _start_locked(self) -> None:
        self._last_start = time.monotonic()
        self._close_locked()
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-m", self.module, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
        )
        theirs.close()  # the child holds its end; ours sees EOF when the child exits
        parent = Connection(ours.detach())
        try:
            parent.send(self.init)
            ready = parent.poll(self.start_timeout_s)
        except (OSError, EOFError):
            ready = True  # the child is gone already: recv below says so
        if not ready:
            process.kill()
            process.wait(5)
            parent.close()
            raise self.error(f"the {self.name} did not start within {self.start_timeout_s:.0f} s")
        try:
            _, ok, value = parent.recv()
        except (EOFError, OSError):
            parent.close()
            raise self.error(f"the {self.name} exited at start (exit code {process.wait(5)})") from None
        if not ok:
            parent.close()
            process.wait(5)
            detail = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) \
                else f"{value.get('type')}: {value.get('message')}"
            raise self.error(f"the {self.name} failed to start: {detail}")
        self._conn, self._process = parent, process
        self._last_start = time.monotonic()  # pacing counts from when it was ready
        self._reader = threading.Thread(target=self._read, args=(parent,), name=self.reader_name,
                                        daemon=True)
        self._reader.start()
        self.starts += 1
        log.info(f"{self.name} started", extra={"fields": {"pid": process.pid}})

    def submit(self, op: str, payload: Any, send_timeout_s: float | None = None, *,
               kill_if_blocked: bool = False) -> Future[Any]:
        """Send one call; the future resolves with its value, the child's exception or ``error``.

        A child that stopped reading (hung, or frozen) blocks a send once the socket's buffer is
        full. ``send_timeout_s`` bounds the send, the wait for another sender included: past it,
        ``SendBlocked`` (and with ``kill_if_blocked`` the child is killed, which fails the stuck
        send; the next call starts a new child). Without it the send blocks (the hand-off's
        thread, whose queue holds what arrives meanwhile)."""
        self.ensure_started()
        future: Future[Any] = Future()
        call_id = next(self._ids)
        conn = self._conn
        try:
            if conn is None:
                raise OSError("no connection")
            self._calls[call_id] = (conn, future)
            if send_timeout_s is None:
                with self._send_lock:
                    conn.send((call_id, op, payload))
            elif not self._send_in_time(conn, (call_id, op, payload), send_timeout_s):
                if kill_if_blocked and conn is self._conn:
                    self._kill()
                raise SendBlocked(f"the {self.name} did not read a call in {send_timeout_s:.0f} s")
        except (OSError, ValueError) as exc:
            self._calls.pop(call_id, None)
            self._await_exit(conn)
            raise self.error(f"the {self.name} is gone: {exc}") from None
        except BaseException:  # a payload that does not pickle, SendBlocked: no answer will come
            self._calls.pop(call_id, None)
            raise
        return future

    def _await_exit(self, conn: Connection | None) -> None:
        """After a send on ``conn`` failed: give the child a moment to be reaped. Its socket closes
        while it exits, before it can be waited for, so ``alive()`` could still say yes and the
        retry in ``call`` would send to the same dead child instead of starting another."""
        process = self._process
        if process is not None and conn is not None and conn is self._conn:
            try:
                process.wait(SEND_FAILED_WAIT_S)
            except subprocess.TimeoutExpired:
                pass

    def call(self, op: str, payload: Any, *, timed: bool = True) -> Any:
        """A blocking call, for threads. A child that exits during the call is replaced and the call
        sent once more; a second exit fails it. A call past ``call_timeout_s`` kills the child;
        ``timed=False`` waits as long as the call takes (a batch of judge calls may be slow)."""
        for attempt in (1, 2):
            self.ensure_started(wait=True)
            try:
                # in the try: a child that died before its reader saw it fails the send (broken pipe),
                # and that call too is sent again, to the child that replaces it
                deadline = time.monotonic() + self.call_timeout_s  # the send and the answer share it
                future = self.submit(op, payload, self.call_timeout_s if timed else None, kill_if_blocked=True)
                return future.result(max(0.0, deadline - time.monotonic()) if timed else None)
            except (TimeoutError, SendBlocked):
                log.error(f"{self.name} did not answer; restarting it", extra={"fields": {"op": op}})
                self._kill()
                raise self.error(f"the {self.name} did not answer {op!r} in {self.call_timeout_s:.0f} s") \
                    from None
            except ChildGone:
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
                future.set_exception(value if isinstance(value, BaseException) else RemoteError(value))
        if conn is self._conn:
            self._conn = None
            if not self._stopping:
                log.error(f"{self.name} exited", extra={"fields": {"exit_code": self._exit_code()}})
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
                entry[1].set_exception(self.error(f"the {self.name} exited during the call"))

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
            # a child that stopped reading (hung, frozen) blocks a send for good, ours or one that
            # holds the lock: then it is killed, not waited for (the gateway would never exit)
            if conn is not None and not self._goodbye(conn, min(timeout_s, STOP_SEND_TIMEOUT_S)) \
                    and process is not None:
                log.error(f"{self.name} does not read; killed")
                process.kill()
            if process is not None:
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.error(f"{self.name} did not stop within {timeout_s:.0f} s; killed")
                    process.kill()
                    process.wait(5)
            if self._reader is not None:
                self._reader.join(5)
            self._conn, self._process, self._reader = None, None, None
            if conn is not None:
                conn.close()
            self._fail_calls()


    def _goodbye(self, conn: Connection, timeout_s: float) -> bool:
        try:
            return self._send_in_time(conn, None, timeout_s)
        except (OSError, ValueError):
            return True  # the child is gone already: the wait below sees it

    def _send_in_time(self, conn: Connection, message: Any, timeout_s: float) -> bool:
        """Send ``message`` within ``timeout_s``, the wait for another sender included: False when
        it is still stuck, on a thread that fails once the child is killed. An error of the send
        itself (the child gone, a payload that does not pickle) is raised here."""
        deadline = time.monotonic() + timeout_s
        if not self._send_lock.acquire(timeout=timeout_s):
            return False
        done = threading.Event()
        failed: list[BaseException] = []

        def send() -> None:
            try:
                conn.send(message)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failed.append(exc)
            finally:
                self._send_lock.release()
                done.set()

        try:
            threading.Thread(target=send, name="infersight-child-send", daemon=True).start()
        except BaseException:
            self._send_lock.release()
            raise
        if not done.wait(max(0.0, deadline - time.monotonic())):
            return False
        if failed:
            raise failed[0]
        return True


class Replies:
    """The child's sending half; calls may finish on several threads, so sends are serialized."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, call_id: int, ok: bool, value: Any) -> None:
        with self._lock:
            try:
                self._conn.send((call_id, ok, value))
            except (OSError, ValueError):  # the gateway is gone: nobody to answer
                pass


def incoming(conn: Connection, on_gone: Callable[[], None] | None = None) -> Iterator[Any]:
    """The child's calls from its parent, until the parent sends ``None`` (stop) or goes away (then
    ``on_gone`` is called: a child may stop faster when nobody waits for it)."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            if on_gone is not None:
                on_gone()
            return
        if message is None:
            return
        yield message


def ignore_group_signals() -> None:
    """Ctrl-C and a service manager's SIGTERM reach the whole process group: the child ignores both
    and lets the gateway stop it through the pipe, after the gateway's last flush (a store child
    that died first would leave the final batch to the journal's replay). A dead gateway still ends
    the child: its end of the pipe closes. SIGKILL is the hard stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
