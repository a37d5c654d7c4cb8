"""One daemon thread that calls a function every few seconds until stopped.

The breaker, the sampling-overrides poller and the retention loop each run background work on a
fixed interval, off the request path; this is their shared start/stop. A failing call is logged
and the next one still comes: a periodic job must never die of one bad round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("infersight.periodic")


class Periodic:
    def __init__(self, name: str, every_s: Callable[[], float], call: Callable[[], object], *,
                 run_first: bool = True) -> None:
        self.name = name
        self.every_s = every_s  # read each round, so a changed setting takes effect
        self.call = call
        self.run_first = run_first  # call at start, or wait one interval first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        if not self.run_first and self._stop.wait(self.every_s()):
            return
        while True:
            try:
                self.call()
            except Exception:  # noqa: BLE001 - retried at the next interval
                log.exception("periodic job failed", extra={"fields": {"job": self.name}})
            if self._stop.wait(self.every_s()):
                return
