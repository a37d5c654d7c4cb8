"""``--workers N``: N gateway processes, each with its own SO_REUSEPORT socket on the same port.

Why not uvicorn's own ``workers``: those share one listening socket, and with long-lived keep-alive
client pools the connections pile up on whichever worker accepted first (the benchmark saw a 75/25
split). With one socket per worker and SO_REUSEPORT, the kernel spreads new connections evenly.

The supervisor forwards SIGINT/SIGTERM to the workers (each drains and flushes its bus on shutdown)
and restarts a worker that dies on its own.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
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


def _worker(config_path: str, port: int) -> None:
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


def supervise(config_path: str, host: str, port: int, workers: int, metrics_dir: Path) -> None:
    """Run ``workers`` gateway processes until SIGINT/SIGTERM; blocks."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    probe = reuse_port_socket(host, port)  # fail fast, in the parent, if the port is taken
    probe.close()
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(config_path, port), name="infersight-worker")
        process.start()
        return process

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [start() for _ in range(workers)]
    log.info("workers started", extra={"workers": workers, "port": port, "pids": [p.pid for p in processes]})
    while not stopping:
        time.sleep(0.2)
        for index, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                _mark_dead(process)
                log.error("worker died; restarting", extra={"pid": process.pid, "exitcode": process.exitcode})
                time.sleep(0.5)
                processes[index] = start()
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=30)
        _mark_dead(process)


def _mark_dead(process: BaseProcess) -> None:
    from prometheus_client import multiprocess

    if process.pid is not None:
        multiprocess.mark_process_dead(process.pid)
