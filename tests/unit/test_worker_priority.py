"""``bus.consumer_nice``: ingest and eval workers lower their own CPU priority at start."""

from __future__ import annotations

import subprocess
import sys

_PROBE = "import os; from infersight.ingest.worker import lower_priority; b = os.nice(0); lower_priority({n}); print(b, os.nice(0))"


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

