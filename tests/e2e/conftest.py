"""A real stack on 127.0.0.1: the simulator and the gateway, each a uvicorn server in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infersight.bus.memory import MemoryBus
from infersight.config import Settings, settings_from_dict
from infersight.exporters.jsonl import JsonlExporter
from infersight.gateway.app import GatewayApp
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer
from tests.conftest import CaptureExporter, config_dict


@dataclass
class Stack:
    sim: SimServer
    gateway: ThreadedServer
    app: GatewayApp
    bus: MemoryBus
    capture: CaptureExporter
    settings: Settings
    data_dir: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def records(self, count: int, timeout_s: float = 5.0):
        """Wait until at least ``count`` records reached the exporters, then return them."""
        import time

        deadline = time.monotonic() + timeout_s
        while len(self.capture.records) < count and time.monotonic() < deadline:
            self.bus.flush(0.2)
            time.sleep(0.01)
        return list(self.capture.records)


def start_stack(tmp: Path, sim_url: str | None = None, **overrides) -> tuple[Stack, SimServer]:
    sim = SimServer(seed=11).start()
    settings = settings_from_dict(config_dict(tmp / "data", sim_url or sim.url, **overrides))
    capture = CaptureExporter()
    bus = MemoryBus([JsonlExporter(settings.storage.path), capture], flush_interval_s=0.05)
    app = build_gateway(settings, bus=bus)
    gateway = ThreadedServer(app).start()
    return Stack(sim, gateway, app, bus, capture, settings, tmp / "data"), sim


@pytest.fixture(params=["http1", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    """Every e2e test runs against both upstream transports."""
    return str(request.param)


@pytest.fixture
def stack(tmp_path: Path, upstream_client: str) -> Iterator[Stack]:
    stack, sim = start_stack(tmp_path, upstream={"client": upstream_client})
    try:
        yield stack
    finally:
        stack.gateway.stop()
        sim.stop()
