"""A real redis-server for tests: a free 127.0.0.1 port, a private data dir, start/stop/restart.

Why a real server and not a fake: the bus's guarantees (consumer groups, XAUTOCLAIM, delivery counts,
what survives a restart) are Redis semantics, and fakes get exactly those details wrong.
Persistence is AOF with ``appendfsync always``, so a restart (even a SIGKILL) keeps every entry
Redis acknowledged, like a production Redis configured for durability.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def find_redis_server() -> str:
    """The redis-server binary; a missing one fails under INFERSIGHT_REQUIRE_TOOLS, else skips."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("INFERSIGHT_REQUIRE_TOOLS"):
            pytest.fail("redis-server is required here (apt-get install redis-server)")
        pytest.skip("redis-server not installed (Debian package redis-server); .ci/run installs it")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, *, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
            if self._ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (Redis flushes and exits) or SIGKILL (a crash)."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` (clients see connection refused), start on the same port."""
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
