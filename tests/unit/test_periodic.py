"""Periodic: calls its job every interval on its own thread, survives a failing round, stops."""

from __future__ import annotations

import threading
import time

from infersight.periodic import Periodic


def test_runs_at_once_then_every_interval_and_survives_a_failure() -> None:
    calls: list[float] = []
    three = threading.Event()

    def job() -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("one bad round")
        if len(calls) >= 3:
            three.set()

    job_thread = Periodic("test-periodic", lambda: 0.02, job)
    started = time.monotonic()
    job_thread.start()
    job_thread.start()  # a second start is a no-op: still one thread
    assert three.wait(5)
    job_thread.stop()
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n  # stopped: no more rounds
    assert calls[0] - started < 0.5  # the first round came at start, not after an interval
    assert sum(t.name == "test-periodic" for t in threading.enumerate()) == 0


def test_waits_one_interval_first_when_asked() -> None:
    calls: list[int] = []
    poller = Periodic("test-poller", lambda: 30.0, lambda: calls.append(1), run_first=False)
    poller.start()
    time.sleep(0.1)
    poller.stop()
    assert calls == []  # stopped within its first interval: never called
