"""Shared fixtures: settings built in code, an in-memory record capture, and a gateway factory."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infersight.config import Settings, settings_from_dict
from infersight.model import RequestRecord

EXTDATA = os.environ.get("INFERSIGHT_EXTDATA")


def pytest_configure(config: pytest.Config) -> None:
    """Let the processes the tests start see Ctrl-C as they would from a shell.

    Why: pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored across exec.
    A ``serve`` started by a worker then ignored the tests' SIGINT until uvicorn installed its own
    handler, so a Ctrl-C sent during start-up was lost and the test waited for ever. With Python's
    own handler back in the worker, every child starts as it would from a terminal.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CaptureExporter:
    """Collects every exported record (thread-safe), for assertions."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def export(self, batch: list[RequestRecord]) -> None:
        with self._lock:
            self.records.extend(batch)

    def shutdown(self) -> None:
        return None


class DirectBus:
    """A synchronous Bus for unit tests: publish hands the record straight to the capture."""

    def __init__(self) -> None:
        self.capture = CaptureExporter()
        self.published = 0

    def publish(self, record: RequestRecord) -> None:
        self.published += 1
        self.capture.export([record])

    def start(self) -> None:
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        return None

    def stats(self) -> Any:
        from infersight.bus.base import BusStats

        return BusStats(published=self.published, delivered=self.published)

    @property
    def records(self) -> list[RequestRecord]:
        return self.capture.records


def config_dict(storage: Path, url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 64 * 1024},
        "storage": {"path": str(storage)},
        "upstream": {"connect_timeout_s": 2.0, "read_timeout_s": 5.0},
        "backends": [
            {"name": "sim", "type": "openai", "url": url, "models": ["sim-large", "sim-small", "sim-reasoner", "sim-bench"]}
        ],
        "tenants": [
            {"id": "acme", "api_keys": ["sk-acme-test"], "use_cases": ["chat", "summarize"]},
            {
                "id": "globex",
                "api_keys": ["sha256:" + __import__("hashlib").sha256(b"sk-globex-test").hexdigest()],
                "use_cases": ["search"],
                "request_types": ["batch"],
            },
        ],
        "admin_api_keys": ["sk-admin-test"],
        "logging": {"level": "info", "access_log": True},
    }
    data.update(overrides)
    return data


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_from_dict(config_dict(tmp_path / "data"))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> Settings:
        return settings_from_dict(config_dict(tmp_path / "data", url, **overrides))

    return build


@pytest.fixture
def extdata() -> Path:
    if not EXTDATA:
        pytest.skip("INFERSIGHT_EXTDATA is not set (CI points it at ../shared/extdata)")
    return Path(EXTDATA)
