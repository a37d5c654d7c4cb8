"""Running the simulator: ``run_sim`` for the CLI, ``SimServer`` for the demo and tests.

``SimServer`` serves on a real socket from a background thread (see ``infersight.serving``), so tests
talk to it exactly as the gateway talks to a real engine, over 127.0.0.1.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

from infersight.serving import UVICORN_LOOP, ThreadedServer
from infersight.sim.app import SimApp, create_sim_app
from infersight.sim.profiles import DEFAULT_PROFILES, ModelProfile


def _profiles_with_faults(
    profiles: dict[str, ModelProfile] | None, fault_rate: float
) -> dict[str, ModelProfile] | None:
    if not fault_rate:
        return profiles
    base = profiles or DEFAULT_PROFILES
    return {name: p.with_fault_rate(fault_rate) for name, p in base.items()}


def run_sim(host: str = "127.0.0.1", port: int = 8001, seed: int = 0, fault_rate: float = 0.0,
            scenario: str = "normal") -> None:
    """Serve the default models until interrupted; ``fault_rate`` is split over the 4 fault kinds.

    The socket is bound here, before uvicorn runs, so the line on stderr names the real port: with
    ``--port 0`` (any free port) a script starting the simulator reads it from there."""
    app = create_sim_app(seed=seed, profiles=_profiles_with_faults(None, fault_rate), scenario=scenario)
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"infersight sim: serving http://{shown}:{bound}/v1 ({', '.join(app.sim.engines)})", file=sys.stderr,
          flush=True)
    config = uvicorn.Config(app, loop=UVICORN_LOOP, http="httptools", lifespan="on", access_log=False,
                            log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


class SimServer(ThreadedServer):
    """The sim on a free 127.0.0.1 port in a background thread.

    ``with SimServer(seed=1) as sim: sim.url`` gives ``http://127.0.0.1:PORT/v1``; ``sim.app`` is the
    SimApp (``last_headers``, ``stats``) for assertions.
    """

    app: SimApp

    def __init__(
        self,
        seed: int = 0,
        profiles: dict[str, ModelProfile] | None = None,
        fault_rate: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        scenario: str = "normal",
    ) -> None:
        super().__init__(create_sim_app(seed, _profiles_with_faults(profiles, fault_rate), scenario), host, port)

    def start(self, timeout_s: float = 10.0) -> SimServer:
        super().start(timeout_s)
        return self

    def __enter__(self) -> SimServer:
        return self.start()
