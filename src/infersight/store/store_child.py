"""The store process's main: the gateway's embedded DuckDB store, in a child (``store/remote.py``).

Started as ``python -m infersight.store.store_child FD``; the first message is ``(settings, log
level, listen)``; ``listen`` (a ``StoreAddress`` or None) opens a second way in for the gateway's
eval process (``store_socket.py``), served by the same threads. It opens and migrates the store, answers ``(0, True, info)``, then serves
``(call_id, method, (args, kwargs))`` calls on a few threads, so an API read never waits behind a
write (the store keeps separate read and write connections). A failure is sent back as the
exception itself when it is one of ours or a builtin (the gateway raises the same type), else as
a ``StoreError`` naming the original type: the gateway never has to import DuckDB. It closes the
store (folding the rollups) and exits when the gateway sends ``None`` or the pipe closes.

It runs at ``store.child_nice`` and, unless ``store.threads`` says otherwise, with one DuckDB
worker thread: on a small host a write's parallel burst and its CPU took the relay's cores
(measured as event-loop stalls of the gateway; benchmarks/README.md, eval_bench "Discussion").
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from infersight.childproc import Replies, ignore_group_signals, incoming, portable_exception
from infersight.config import Settings
from infersight.logs import configure_logging
from infersight.scheduling import lower_priority, pin_to_cpus
from infersight.store import store_socket
from infersight.store.base import Store, StoreError
from infersight.store.store_socket import StoreAddress

log = logging.getLogger("infersight.store")

STORE_METHODS = frozenset({
    "migrate", "schema_version", "write_requests", "write_rows", "get_requests", "list_requests", "count_requests",
    "stored_keys", "eval_results_for", "list_evaluations", "content_for", "telemetry_around", "stats", "quality", "telemetry",
    "correlation", "build_correlation_rollups", "diagnosis_inputs", "apply_retention",
})
_CALL_THREADS = 4  # the bus writer, the eval and telemetry sinks, and API reads at once


def sendable_error(exc: BaseException) -> BaseException:
    """The exception to send: ours and builtins as they are; anything else (DuckDB's) as a StoreError."""
    module = type(exc).__module__
    if module == "builtins" or module.startswith("infersight."):
        portable = portable_exception(exc)
        if portable is not None:
            return portable
    return StoreError(f"{type(exc).__name__}: {exc}"[:2000])


def _serve(store: Store, replies: Replies, call_id: int, method: str, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> None:
    try:
        if method not in STORE_METHODS:
            raise StoreError(f"the store process does not serve {method!r}")
        value = getattr(store, method)(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a failed call fails itself; the gateway retries or reports it
        replies.send(call_id, False, sendable_error(exc))
    else:
        replies.send(call_id, True, value)


def main(conn: Connection, settings: Settings, log_level: str, listen: StoreAddress | None = None) -> None:
    """Serve the gateway's store calls until it says stop or goes away."""
    from infersight.store.factory import open_store

    configure_logging(log_level)
    ignore_group_signals()  # the gateway stops us, after its last flush
    replies = Replies(conn)
    lower_priority(settings.store.child_nice, "store process")  # requests in flight get the CPU first
    if settings.store.threads is None:  # one DuckDB worker: a write's parallel burst took the relay's other core
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={"threads": 1})})
    pool = ThreadPoolExecutor(max_workers=_CALL_THREADS, thread_name_prefix="infersight-store-call")
    listener = None
    try:
        pin_to_cpus(settings.store.child_cpus, "store.child_cpus", "store process")  # before DuckDB's threads
        store = open_store(settings)
        version = store.migrate()
        if listen is not None:  # before "ready": a client that connects as soon as we are up must get in
            listener = store_socket.listen(listen, lambda r, *call: pool.submit(_serve, store, r, *call))
    except Exception as exc:  # noqa: BLE001 - reported to the gateway, which fails its start
        pool.shutdown(wait=False)
        replies.send(0, False, sendable_error(exc))
        return
    replies.send(0, True, {"backend": settings.store.backend, "schema_version": version})
    try:
        for call_id, method, (args, kwargs) in incoming(conn):
            pool.submit(_serve, store, replies, call_id, method, args, kwargs)
    finally:
        if listener is not None:
            listener.close()  # the gateway stopped its eval process first: nobody else writes now
        pool.shutdown(wait=True)  # calls already received are answered before the store closes
        try:
            store.close()
        except Exception:  # noqa: BLE001 - logged; the WAL keeps what was committed
            log.exception("closing the store failed")


def run_from_fd(fd: int) -> None:
    conn = Connection(fd)
    try:
        settings, log_level, listen = conn.recv()
    except (EOFError, OSError):
        return
    main(conn, settings, log_level, listen)


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown, once the store is closed and logs are flushed.

    DuckDB 2's bindings (nanobind) list every Python object of theirs still alive at teardown on
    stderr ("nanobind: leaked 29 instances!"): here, those held by the frames of daemon threads that
    served the eval process's socket. Nothing is lost by skipping it, and the demo's last screen no
    longer ends in a page of false alarms."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run_from_fd(int(sys.argv[1]))
    _exit_now(0)
