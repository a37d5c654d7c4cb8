"""CPU priority of background processes: they work off durable backlogs, so requests come first.

Used by the ingest worker and ``eval-worker`` (``bus.consumer_nice``) and by the gateway's eval
process (``evaluation.child_nice``). Kept apart so that a small process (the eval process) can lower
its priority without importing the ingest worker's store and bus.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("infersight.scheduling")


def lower_priority(increment: int, what: str = "worker") -> None:
    """Raise this process's nice value by ``increment`` (0: leave it): on a host it shares with a
    gateway, requests in flight get the CPU first. Lowering priority needs no privilege; the result
    is logged so an operator can see it took."""
    if increment <= 0:
        return
    try:
        now = os.nice(increment)
    except OSError as exc:  # e.g. a seccomp profile that forbids it: run at normal priority
        log.warning(f"could not lower the {what}'s CPU priority", extra={"error": str(exc)})
        return
    log.info(f"{what} CPU priority lowered", extra={"nice": now})
