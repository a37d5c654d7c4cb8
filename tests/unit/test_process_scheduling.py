"""Process-level scheduling: workers lower their CPU priority (`bus.consumer_nice`) and gateways
shorten the GIL switch interval (`server.switch_interval_ms`)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = "import os; from infersight.scheduling import lower_priority; b = os.nice(0); lower_priority({n}); print(b, os.nice(0))"


def _nice_before_and_after(increment: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(n=increment)], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    return before, after


def test_the_worker_raises_its_nice_value_by_the_configured_increment() -> None:
    before, after = _nice_before_and_after(7)
    assert after == min(before + 7, 19)


def test_zero_leaves_the_priority_alone() -> None:
    before, after = _nice_before_and_after(0)
    assert after == before



def test_a_gateway_process_takes_the_configured_gil_switch_interval() -> None:
    from infersight.config import Settings
    from infersight.runtime import prefer_the_event_loop

    settings = Settings.model_validate({
        "backends": [{"name": "b", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
        "tenants": [{"id": "t", "api_keys": ["k"]}],
        "server": {"switch_interval_ms": 0.5},
    })
    before = sys.getswitchinterval()
    try:
        prefer_the_event_loop(settings)
        assert sys.getswitchinterval() == 0.0005
    finally:
        sys.setswitchinterval(before)
