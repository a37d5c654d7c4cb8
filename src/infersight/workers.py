"""``--workers N``: N gateway processes, each with its own SO_REUSEPORT socket on the same port.

Why not uvicorn's own ``workers``: those share one listening socket, and with long-lived keep-alive
client pools the connections pile up on whichever worker accepted first (the benchmark saw a 75/25
split). With one socket per worker and SO_REUSEPORT, the kernel spreads new connections evenly.

The supervisor forwards SIGINT/SIGTERM to the workers (each drains and flushes its bus on shutdown)
and restarts a worker that dies on its own, with a growing delay when it dies at start; after
``MAX_FAILED_STARTS`` failed starts in a row it stops the others and exits 1 rather than loop.
Workers die with the supervisor (``_die_with``), so none is left serving as an orphan.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

log = logging.getLogger("infersight.workers")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


#: a worker that exits sooner than this after its start failed to start (it did not crash in service)
START_GRACE_S = 10.0
#: failed starts in a row of one worker after which the supervisor stops everything and exits 1
MAX_FAILED_STARTS = 5
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: how long SIGTERMed workers get to drain and flush before they are SIGKILLed (the journal keeps
#: what a killed worker had not delivered; the next start replays it)
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with(supervisor: int) -> None:
    """Ask the kernel to SIGTERM this worker when the supervisor dies (Linux ``PR_SET_PDEATHSIG``).

    Why: a SIGKILLed supervisor (the OOM killer, ``kill -9``) left its workers serving as orphans,
    holding their journal slots and the port, where SO_REUSEPORT let a new supervisor start N more
    beside them. SIGTERM, not SIGKILL, so an orphan still drains and flushes its bus."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(config_path: str, port: int, supervisor: int) -> None:
    _die_with(supervisor)
    import uvicorn

    from infersight.config import load_settings
    from infersight.logs import configure_logging
    from infersight.runtime import build_gateway, prefer_the_event_loop, uvicorn_options

    settings = load_settings(config_path)
    prefer_the_event_loop(settings)
    configure_logging(settings.logging.level)
    options = uvicorn_options(settings, port)
    sock = reuse_port_socket(str(options.pop("host")), int(options.pop("port")))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(build_gateway(settings), **options))  # type: ignore[arg-type]
    server.run(sockets=[sock])


class _Slot:
    """One worker position: its process, when it started, and its failed starts in a row."""

    def __init__(self) -> None:
        self.process: BaseProcess | None = None
        self.started_at = 0.0
        self.failed_starts = 0
        self.restart_at: float | None = None


def supervise(config_path: str, host: str, port: int, workers: int, metrics_dir: Path) -> int:
    """Run ``workers`` gateway processes until SIGINT/SIGTERM; blocks. Returns the exit status:
    0 after a signal, 1 when a worker kept failing at start or had to be killed at stop."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    probe = reuse_port_socket(host, port)  # fail fast, in the parent, if the port is taken
    probe.close()
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(slot: _Slot) -> None:
        process = context.Process(target=_worker, args=(config_path, port, os.getpid()), name="infersight-worker")
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    slots = [_Slot() for _ in range(workers)]
    for slot in slots:
        start(slot)
    log.info("workers started", extra={"workers": workers, "port": port,
                                       "pids": [s.process.pid for s in slots if s.process is not None]})
    status = 0
    while not stopping:
        time.sleep(0.2)
        now = time.monotonic()
        for slot in slots:
            if stopping:
                break
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    start(slot)
                continue
            process = slot.process
            assert process is not None
            if process.is_alive():
                if slot.failed_starts and now - slot.started_at >= START_GRACE_S:
                    slot.failed_starts = 0  # it is serving: a later death starts a fresh count
                continue
            _mark_dead(process)
            if now - slot.started_at < START_GRACE_S:
                slot.failed_starts += 1
            if slot.failed_starts >= MAX_FAILED_STARTS:
                log.error("a worker crashed at start %d times in a row; giving up (see its error above)",
                          slot.failed_starts, extra={"pid": process.pid, "exitcode": process.exitcode})
                stopping, status = True, 1
                break
            delay = FIRST_BACKOFF_S * 2 ** max(slot.failed_starts - 1, 0)
            slot.restart_at = now + min(delay, MAX_BACKOFF_S)
            log.error("worker died; restarting", extra={"pid": process.pid, "exitcode": process.exitcode,
                                                         "failed_starts": slot.failed_starts,
                                                         "restart_in_s": min(delay, MAX_BACKOFF_S)})
    return max(status, _stop_all([s.process for s in slots if s.process is not None]))


def _stop_all(processes: list[BaseProcess]) -> int:
    """SIGTERM every worker (each drains and flushes), SIGKILL those still there after
    ``STOP_TIMEOUT_S``; 1 when one had to be killed."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    status = 0
    for process in processes:
        process.join(timeout=max(deadline - time.monotonic(), 0.0))
        if process.is_alive():
            log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
            process.kill()
            process.join(timeout=5)
            status = 1
        _mark_dead(process)
    return status


def _mark_dead(process: BaseProcess) -> None:
    from prometheus_client import multiprocess

    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid)
