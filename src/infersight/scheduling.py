"""CPU priority and placement of background processes: they work off durable backlogs, so requests
come first.

Used by the ingest worker and ``eval-worker`` (``bus.consumer_nice``) and by the gateway's eval and
store processes (``evaluation.child_nice``/``child_cpus``, ``store.child_nice``/``child_cpus``). Kept
apart so that a small process (the eval process) can lower its priority without importing the ingest
worker's store and bus.

Priority is not isolation: on a shared host a busy neighbour slows the relay even at ``SCHED_IDLE``
(benchmarks/README.md, ingest "Why the miss"). Cores of their own are what shields it, hence
``child_cpus``: the gateway's children can be placed on cores the relay does not use (the gateway
itself is placed with ``taskset`` or a cpuset, which the children would otherwise inherit).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Field

#: A config value naming CPUs by number, as ``taskset -c`` does: at least one, none negative.
CpuList = Annotated[list[Annotated[int, Field(ge=0, le=65535, strict=True)]], Field(min_length=1)]

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


def idle_policy(what: str = "process") -> None:
    """Put this thread, and the threads it starts later, under ``SCHED_IDLE``: the scheduler runs
    them only when no normal thread wants the CPU. A nice value only weighs the shares, so a relay
    thread that wakes can still wait for a niced one's slice; an idle-policy one yields at once
    (benchmarks/README.md, eval_bench "Discussion"). Needs no privilege; call it before the
    process starts threads. Where the policy is missing (not Linux) or refused, the nice value stays."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        log.warning(f"SCHED_IDLE is not available here; the {what} keeps its nice value")
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:
        log.warning(f"could not put the {what} under SCHED_IDLE", extra={"error": str(exc)})
        return
    log.info(f"{what} runs under SCHED_IDLE")


def parse_cpu_list(text: str) -> set[int]:
    """CPUs written as the kernel writes them (``0-3,6``); empty text is no CPU."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _cpuset_files() -> list[Path]:
    """This process's cgroup cpuset limit files (v2 and v1 layouts), where the host exposes them."""
    files: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "cpuset.cpus.effective")
        elif "cpuset" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/cpuset") / path.lstrip("/") / "cpuset.effective_cpus")
    return files


def offered_cpus() -> set[int]:
    """The CPUs a process here may be moved to: the host's online CPUs within this cgroup's cpuset.

    Not this process's own affinity: a gateway placed on some cores with ``taskset`` may still put
    its children on the others (that is what ``child_cpus`` is for)."""
    cpus: set[int] = set()
    for path in (Path("/sys/devices/system/cpu/online"), *_cpuset_files()):
        try:
            limit = parse_cpu_list(path.read_text())
        except (OSError, ValueError):
            continue
        if limit:
            cpus = cpus & limit if cpus else limit
    if not cpus:
        try:
            cpus = os.sched_getaffinity(0)
        except (OSError, AttributeError):
            return set()
    return cpus


def unavailable_cpus(cpus: Sequence[int] | None) -> list[int]:
    """The CPUs of ``cpus`` no process here may run on (the host or its cpuset lacks them): checked
    before a child is started, so that the config error names the key and the file."""
    if not cpus:
        return []
    offered = offered_cpus()
    if not offered:  # no affinity here: pin_to_cpus says so when it is asked
        return []
    return sorted(set(cpus) - offered)


def pin_to_cpus(cpus: Sequence[int] | None, key: str, what: str = "process") -> None:
    """Run every thread of this process (and those it starts later) on ``cpus`` only; None: leave it.

    ``os.sched_setaffinity(0, ...)`` moves only the calling thread, so each thread already running
    is moved too. CPUs this host (or its cpuset) does not offer raise ``ValueError`` naming ``key``:
    an operator who asked for placement must not get a silently unpinned process."""
    if not cpus:
        return
    wanted = set(cpus)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread only (a child pins itself before it starts any)
        tids = [0]
    try:
        for tid in tids:
            try:
                os.sched_setaffinity(tid, wanted)
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
    except (OSError, AttributeError) as exc:  # EINVAL: none of them is usable here
        raise ValueError(f"{key} {sorted(wanted)}: cannot run on these CPUs here "
                         f"({getattr(exc, 'strerror', None) or exc}); this host has {os.cpu_count()} CPUs") from None
    got = os.sched_getaffinity(0)
    if got != wanted:  # the kernel keeps the part of the set the host's cpuset allows
        raise ValueError(f"{key} {sorted(wanted)}: CPUs {sorted(wanted - got)} are not available here "
                         f"(pinned to {sorted(got)} instead)")
    log.info(f"{what} pinned to CPUs", extra={"cpus": sorted(wanted)})
