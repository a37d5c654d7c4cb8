"""A second way into the store process: an authenticated Unix socket for the gateway's eval process.

Why: the eval process owns the sampled path (masking, its journal, the checks and the judge) and
writes its rows itself, so the gateway never sees them go by (each batch it relayed took the relay's
GIL: benchmarks/README.md, eval_bench "Discussion"). DuckDB has one writer, the store process, so
the eval process needs a connection of its own to it.

The store process listens on an abstract Unix socket (Linux: no file to leave behind or to guard)
whose name and 32-byte key the gateway draws at start and hands to both children through their
pipes; ``multiprocessing.connection`` makes every client prove the key (HMAC challenge) before a
call is read, so another local user who finds the name cannot use it. Calls and replies keep the
pipe's shape, ``(call_id, method, (args, kwargs))`` and ``(call_id, ok, value)``.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from typing import Any

from infersight.childproc import RemoteError, Replies, incoming

log = logging.getLogger("infersight.store")


@dataclass(frozen=True)
class StoreAddress:
    """Where the store process listens, and the key a client must prove (never logged: repr hides it)."""

    address: str
    authkey: bytes = field(repr=False)

    @classmethod
    def new(cls) -> StoreAddress:
        return cls(f"\0infersight-store-{os.getpid()}-{secrets.token_hex(8)}", secrets.token_bytes(32))


Serve = Callable[[Replies, int, str, tuple[Any, ...], dict[str, Any]], None]


def listen(where: StoreAddress, serve: Serve) -> Listener:
    """Accept clients on a daemon thread; each client proves the key and has its calls served on a
    thread of its own, so a client that never answers the challenge holds up only that thread.
    Closing the returned listener stops accepting (clients already in keep their connection)."""
    listener = Listener(where.address, family="AF_UNIX")  # the key is checked per client, below

    def read(conn: Connection) -> None:
        try:
            deliver_challenge(conn, where.authkey)  # the client proves the key ...
            answer_challenge(conn, where.authkey)  # ... and we prove it back, as Listener(authkey) does
        except Exception as exc:  # noqa: BLE001 - a client without the key: refused, the rest go on
            log.warning("store socket: client refused", extra={"fields": {"error": type(exc).__name__}})
            conn.close()
            return
        replies = Replies(conn)
        try:
            for call_id, method, (args, kwargs) in incoming(conn):
                serve(replies, call_id, method, args, kwargs)
        except RuntimeError:  # the store is closing: its pool takes no more calls
            pass
        finally:
            conn.close()

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=read, args=(conn,), name="infersight-store-socket-client", daemon=True).start()

    threading.Thread(target=accept, name="infersight-store-socket", daemon=True).start()
    return listener


class StoreSocketCaller:
    """The client side, for ``RemoteStore``: one call at a time over one connection, reconnecting
    after a failure (the store process restarted). A store that cannot be reached raises ``error``
    (the gateway's ``StoreProcessError``, a ``StoreUnavailable``): the caller's bus keeps the batch."""

    def __init__(self, where: StoreAddress, error: type[Exception], call_timeout_s: float = 900.0) -> None:
        self.where = where
        self.error = error
        self.call_timeout_s = call_timeout_s
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.connects = 0

    def start(self) -> None:
        """Connections are made on the first call (the store process may still be starting)."""

    def health(self) -> dict[str, object]:
        return {"connected": self._conn is not None, "connects": self.connects}

    def call(self, op: str, payload: Any, *, timed: bool = True) -> Any:
        with self._lock:
            conn = self._connect()
            call_id = next(self._ids)
            try:
                conn.send((call_id, op, payload))
                if not conn.poll(self.call_timeout_s if timed else None):
                    raise TimeoutError(f"no answer to {op!r} in {self.call_timeout_s:.0f} s")
                answer_id, ok, value = conn.recv()
            except (EOFError, OSError, TimeoutError) as exc:
                self._close()
                raise self.error(f"the store process is not reachable: {type(exc).__name__}") from None
            if answer_id != call_id:  # cannot happen with one call at a time; never hand back another's reply
                self._close()
                raise self.error("the store process answered another call")
        if ok:
            return value
        raise value if isinstance(value, BaseException) else RemoteError(value)

    def _connect(self) -> Connection:
        if self._conn is None:
            try:
                self._conn = Client(self.where.address, family="AF_UNIX", authkey=self.where.authkey)
            except (OSError, EOFError, AuthenticationError) as exc:  # a wrong key: the store refused us
                raise self.error(f"the store process is not reachable: {type(exc).__name__}") from None
            self.connects += 1
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def stop(self, timeout_s: float | None = None) -> None:
        """Close this connection only: the store process belongs to the gateway."""
        with self._lock:
            self._close()
