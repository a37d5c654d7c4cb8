"""Serving any ASGI app on a real 127.0.0.1 socket from a background thread.

Used by the demo (simulator and gateway in one process) and by tests, which then talk to the app
exactly as clients talk to a deployed one.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import uvicorn

try:
    import uvloop

    UVICORN_LOOP = "uvloop"
    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - Windows
    UVICORN_LOOP = "asyncio"
    new_event_loop = asyncio.new_event_loop

AsgiApp = Callable[..., Awaitable[None]]


class ThreadedServer:
    """``with ThreadedServer(app) as srv: srv.url`` gives ``http://127.0.0.1:PORT/v1``.

    ``async with`` works too (start and stop then run in a worker thread so the caller's loop is free).
    Port 0 picks a free port. The ASGI lifespan runs, so apps start and flush as in production.
    """

    def __init__(self, app: AsgiApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (for /metrics, /healthz)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI base URL, ``http://host:port/v1``."""
        return self.base_url + "/v1"

    def start(self, timeout_s: float = 60.0) -> ThreadedServer:
        """Bind, start serving, and return once uvicorn reports ``started``.

        The timeout is generous because a gateway's start-up (its lifespan) waits for its store and
        eval processes, which import DuckDB and Presidio: on a loaded 2-vCPU host that took over
        10 s (the old limit), and the demo or a test failed with "server did not start". A start
        that fails ends the thread, which is reported at once whatever the timeout."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, http="httptools", lifespan="on",
            access_log=False, log_level="warning", log_config=None, timeout_graceful_shutdown=1,
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"infersight-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive():
                sock.close()
                raise RuntimeError(f"server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                server.should_exit = True  # it may still come up: make it leave instead of serving unseen
                sock.close()
                raise RuntimeError(f"server did not start within {timeout_s:g} s")
            time.sleep(0.005)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(server.serve(sockets=[sock]))
        except BaseException as e:  # noqa: BLE001 - surfaced by start()
            self._error = e

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to exit (running the lifespan shutdown) and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> ThreadedServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.stop)
