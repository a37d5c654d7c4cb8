"""Starting, watching and stopping the benchmark's server processes (sim, gateway, LiteLLM).

Every process is started in its own session (so it and its workers can be stopped as a group by
the id we got when starting it) with the open-files limit raised to the hard limit.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

MB = 1024 * 1024


def raise_fd_limit() -> None:
    """Raise RLIMIT_NOFILE to the hard limit (1,000 streams need ~2,000 sockets in the gateway)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_executable(explicit: str | None, name: str, fallback: str) -> str | None:
    """``explicit`` if given (and present), else ``name`` on PATH, else ``fallback`` if it exists."""
    if explicit:
        return explicit if (shutil.which(explicit) or Path(explicit).exists()) else None
    return shutil.which(name) or (fallback if Path(fallback).exists() else None)


class Server:
    """One started server process (and whatever workers it forks)."""

    def __init__(self, name: str, cmd: Sequence[str], health_url: str, log_dir: Path,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.health_url = health_url
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            cwd=self.cwd, start_new_session=True, preexec_fn=raise_fd_limit,
        )
        log.close()
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Poll the health URL; seconds it took. Raises with the log tail if it never answers."""
        assert self.proc is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants (uvicorn workers, LiteLLM's children)."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group we started, then SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """user+system CPU seconds per pid (children already reaped are not counted)."""
    out: dict[int, float] = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def rss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler:
    """Samples the summed RSS of a process tree every ``interval_s`` in a background thread."""

    def __init__(self, server: Server, interval_s: float = 0.25) -> None:
        self.server = server
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes of the whole tree)
        self.root_samples: list[tuple[float, int]] = []  # the same instants, the root process alone
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        procs = self.server.tree()
        next_refresh = time.monotonic() + 2.0
        while True:
            if time.monotonic() > next_refresh:  # pick up workers started late
                procs, next_refresh = self.server.tree(), time.monotonic() + 2.0
            now = time.monotonic() - self._t0
            self.samples.append((now, rss_bytes(procs)))
            self.root_samples.append((now, rss_bytes([p for p in procs if p.pid == self.server.pid])))
            if self._stop.wait(self.interval_s):
                return

    def mark(self) -> float:
        """Seconds since the sampler started (to label phases)."""
        return time.monotonic() - self._t0

    @property
    def max_mb(self) -> float:
        return max((b for _, b in self.samples), default=0) / MB
