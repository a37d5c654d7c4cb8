"""Running the simulator: ``run_sim`` for the CLI and demo, ``SimServer`` for tests.

``SimServer`` serves on a real socket from a background thread with its own event loop, so tests
(sync or async) talk to it exactly as the gateway talks to a real engine, over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, cast

import uvicorn

from infersight.sim.app import SimApp, create_sim_app
from infersight.sim.profiles import DEFAULT_PROFILES, ModelProfile

try:
    import uvloop

    _LOOP = "uvloop"
    _new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - Windows
    _LOOP = "asyncio"
    _new_loop = asyncio.new_event_loop


def _profiles_with_faults(
    profiles: dict[str, ModelProfile] | None, fault_rate: float
) -> dict[str, ModelProfile] | None:
    if not fault_rate:
        return profiles
    base = profiles or DEFAULT_PROFILES
    return {name: p.with_fault_rate(fault_rate) for name, p in base.items()}


def run_sim(host: str = "127.0.0.1", port: int = 8001, seed: int = 0, fault_rate: float = 0.0) -> None:
    """Serve the default models until interrupted; ``fault_rate`` is split over the 4 fault kinds."""
    app = create_sim_app(seed=seed, profiles=_profiles_with_faults(None, fault_rate))
    uvicorn.run(
        app, host=host, port=port, loop=_LOOP, http="httptools", lifespan="on",
        access_log=False, log_level="warning",
    )


class SimServer:
    """The sim on a free 127.0.0.1 port in a background thread.

    ``with SimServer(seed=1) as sim: sim.url`` gives ``http://127.0.0.1:PORT/v1``; ``async with``
    works too (start and stop then run in a worker thread so the caller's loop is not blocked).
    """

    def __init__(
        self,
        seed: int = 0,
        profiles: dict[str, ModelProfile] | None = None,
        fault_rate: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        app: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        # Any ASGI app can be served this way (the e2e tests run the gateway with it too).
        self.app: SimApp = (
            cast(SimApp, app)
            if app is not None
            else create_sim_app(seed, _profiles_with_faults(profiles, fault_rate))
        )
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (for /metrics, /health)."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI base URL, ``http://host:port/v1``."""
        return self.base_url + "/v1"

    def start(self, timeout_s: float = 10.0) -> SimServer:
        """Bind, start serving, and return once uvicorn reports ``started``."""
        if self._thread is not None:
            raise RuntimeError("SimServer already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, http="httptools", lifespan="on",
            access_log=False, log_level="warning", log_config=None,
            timeout_graceful_shutdown=1,
        )
        server = self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"infersight-sim-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"sim server did not start: {self._error!r}")
            time.sleep(0.005)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            with asyncio.Runner(loop_factory=_new_loop) as runner:
                runner.run(server.serve(sockets=[sock]))
        except BaseException as e:  # surfaced by start()
            self._error = e

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.stop)
