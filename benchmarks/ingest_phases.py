"""Throughput and storage runs of the ingest benchmark: embedded (MemoryBus -> DuckDB) and
through Redis (RedisStreamBus -> redis-server -> consumer -> DuckDB or embedded ClickHouse)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from phases import summarize_profile
from procs import Server, cpu_delta, cpu_seconds, free_port, raise_fd_limit
from segment import _host_busy

HERE = Path(__file__).parent
REPO = HERE.parent
PROCS = HERE / "ingest_procs.py"
GW_KEY = "sk-bench"


class RedisServer(Server):
    """redis-server on a free port with AOF on (``appendfsync everysec``, Redis's default with
    ``appendonly yes``, as docs/scale-out.md runs it); RDB snapshots off."""

    def __init__(self, binary: str, tmp: Path) -> None:
        self.port = free_port()
        data = tmp / "redis"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
               "--appendonly", "yes", "--appendfsync", "everysec"]
        super().__init__("redis", cmd, "", tmp, cwd=str(tmp))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(payload)
            return sock.recv(4096)

    def wait_ready(self, timeout_s: float = 30.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not ready:\n{self.log_tail()}")


def write_config(path: Path, data: Path, *, redis_url: str | None = None, stream: str = "infersight:requests",
                 port: int = 0, sim_port: int = 9, models: str = "sim-bench") -> Path:
    """A gateway/ingest config: defaults everywhere (journal on, batch 1000, max_queue 100,000)."""
    bus = f"bus: {{backend: redis, url: '{redis_url}', stream: '{stream}'}}\n" if redis_url else ""
    path.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"storage: {{path: {data}}}\n"
        "logging: {level: warning, access_log: false}\n" + bus +
        f"backends: [{{name: sim, type: openai, url: 'http://127.0.0.1:{sim_port}/v1', models: [{models}]}}]\n"
        f"tenants: [{{id: bench, api_keys: [{GW_KEY}]}}]\n"
    )
    return path


class Proc:
    """A benchmark worker process (ingest_procs.py) whose MARK lines are collected as they come."""

    def __init__(self, name: str, args: list[str], tmp: Path) -> None:
        self.name = name
        self.out = tmp / f"{name}-{time.monotonic_ns()}.json"
        self.marks: dict[str, float] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.log = tmp / f"{name}.log"
        err = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, str(PROCS), *args, "--out", str(self.out)], cwd=str(REPO),
                                     stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=raise_fd_limit)
        err.close()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "MARK":
                with self._lock:
                    self.marks[parts[1]] = float(parts[2])
                    self._event(parts[1]).set()

    def _event(self, name: str) -> threading.Event:
        return self._events.setdefault(name, threading.Event())

    def wait_mark(self, name: str, timeout_s: float = 600.0) -> float:
        with self._lock:
            event = self._event(name)
        deadline = time.monotonic() + timeout_s
        while not event.wait(0.2):
            if self.proc.poll() is not None and not event.is_set():
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {name}: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {name} in {timeout_s:.0f}s")
        return self.marks[name]

    def result(self, timeout_s: float = 600.0) -> dict[str, Any]:
        if self.proc.wait(timeout_s) != 0:
            raise RuntimeError(f"{self.name} failed ({self.proc.returncode}): {self.tail()}")
        data: dict[str, Any] = orjson.loads(self.out.read_bytes())
        return data

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Spy:
    """py-spy (non-blocking, 100 Hz) on one process until ``finish``."""

    def __init__(self, py_spy: str | None, pid: int, path: Path) -> None:
        self.path = path
        self.proc = None if py_spy is None else subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format", "raw",
             "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return {"error": "py-spy did not stop"}
        if not self.path.exists():
            return {"error": f"py-spy wrote nothing ({self.proc.returncode}): {err.strip()[-300:]}"}
        return summarize_profile(self.path.read_text(), top=25)


class HostBusy:
    """The whole host's busy share between two marks: how much of the 2 cores others took."""

    def __init__(self) -> None:
        self.t0, self.b0 = time.monotonic(), _host_busy()

    def pct(self) -> float:
        import psutil

        return 100.0 * (_host_busy() - self.b0) / ((time.monotonic() - self.t0) * (psutil.cpu_count() or 1))


def run_embedded(n: int, tmp: Path, tag: str, seed: int, py_spy: str | None = None) -> dict[str, Any]:
    """The gateway's shape: producer thread -> MemoryBus (journal) -> StoreSink -> store process (DuckDB)."""
    work = tmp / f"embedded-{tag}"
    cfg = write_config(work.with_suffix(".yaml"), work / "data")
    proc = Proc(f"embedded-{tag}", ["embedded", "--config", str(cfg), "--n", str(n), "--seed", str(seed)], tmp)
    proc.wait_mark("ready", 120)
    spy = Spy(py_spy, proc.proc.pid, tmp / f"profile-embedded-{tag}.txt") if py_spy else None
    try:
        proc.wait_mark("publish_start")
        host = HostBusy()
        proc.wait_mark("done")
        busy = host.pct()
        if spy:
            return {"profile": spy.finish()}
        result = proc.result()
        result["host_busy_pct"] = busy
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["process_cores"] = result["process_cpu_s"] / result["e2e_s"]
    return result


def run_store_only(n: int, store: str, tmp: Path, tag: str, seed: int) -> dict[str, Any]:
    """The store alone: ``write_requests`` in batches of 1,000 from one thread (no bus, no Redis)."""
    work = tmp / f"store-{store}-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    path = work / ("chdb" if store == "chdb" else "infersight.duckdb")
    proc = Proc(f"store-{store}-{tag}", ["store", "--store", store, "--path", str(path), "--n", str(n),
                                         "--seed", str(seed)], tmp)
    try:
        proc.wait_mark("ready", 120)
        host = HostBusy()
        proc.wait_mark("done")
        busy = host.pct()
        result = proc.result()
        result["host_busy_pct"] = busy
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["process_cores"] = result["process_cpu_s"] / result["e2e_s"]
    return result


def _healthz_inserted(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return int(json.loads(r.read())["inserted"])


def _ingest_metric(port: int, name: str) -> float:
    """One sample (e.g. infersight_ingest_write_seconds_sum) from an ingest worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def run_redis(n: int, store: str, redis: RedisServer, tmp: Path, tag: str, seed: int,
              py_spy: str | None = None) -> dict[str, Any]:
    """Producer process (RedisStreamBus) -> redis-server -> consumer process -> store.

    DuckDB: the consumer is ``infersight ingest`` itself (same config), done when its /healthz
    counts ``n`` inserted rows. chdb: ``ingest_procs.py consume``, which reports its own finish.
    """
    work = tmp / f"redis-{store}-{tag}"
    stream = f"bench:{store}:{tag}"
    cfg = write_config(work.with_suffix(".yaml"), work / "data", redis_url=redis.url, stream=stream)
    consumer: Server | Proc
    done: Callable[[], float]
    db_path = work / "data" / "infersight.duckdb"
    port = 0
    if store == "duckdb":
        port = free_port()
        consumer = Server(f"ingest-{tag}", [sys.executable, "-m", "infersight.cli", "ingest", "--config", str(cfg),
                                            "--port", str(port)], f"http://127.0.0.1:{port}/healthz", tmp,
                          cwd=str(REPO)).start()
        consumer.wait_ready(60)
        consumer_pid = consumer.pid

        def done() -> float:
            while _healthz_inserted(port) < n:
                time.sleep(0.05)
            return time.monotonic()
    else:
        (work / "data").mkdir(parents=True, exist_ok=True)
        consumer = Proc(f"consume-{store}-{tag}", ["consume", "--store", store, "--url", redis.url, "--stream", stream,
                                                  "--path", str(work / "data" / "chdb"), "--n", str(n)], tmp)
        consumer.wait_mark("ready", 120)
        consumer_pid = consumer.proc.pid

        def done() -> float:
            return consumer.wait_mark("done")  # type: ignore[union-attr]

    producer = Proc(f"produce-{store}-{tag}", ["produce", "--config", str(cfg), "--n", str(n), "--seed", str(seed)], tmp)
    spies: list[tuple[str, Spy]] = []
    try:
        producer.wait_mark("ready", 120)
        if py_spy:
            spies = [("consumer", Spy(py_spy, consumer_pid, tmp / f"profile-consumer-{store}-{tag}.txt")),
                     ("producer", Spy(py_spy, producer.proc.pid, tmp / f"profile-producer-{store}-{tag}.txt"))]
        trees = {"producer": [_ps(producer.proc.pid)], "redis": redis.tree(), "consumer": _tree(consumer_pid)}
        t0 = producer.wait_mark("publish_start")
        c0, host = {k: cpu_seconds(v) for k, v in trees.items()}, HostBusy()
        t_done = done()
        c1, busy = {k: cpu_seconds(v) for k, v in trees.items()}, host.pct()
        write_s = _ingest_metric(port, "infersight_ingest_write_seconds_sum") if store == "duckdb" else None
        batches = _ingest_metric(port, "infersight_ingest_batch_size_count") if store == "duckdb" else None
        if spies:
            return {"profile": {name: spy.finish() for name, spy in spies}}
        prod = producer.result()
        cons = consumer.result() if isinstance(consumer, Proc) else None
    finally:
        for _, spy in spies:
            if spy.proc and spy.proc.poll() is None:
                spy.proc.kill()
        producer.stop()
        consumer.stop()
        redis.command("FLUSHALL")
    e2e = t_done - t0
    out: dict[str, Any] = {
        "n": n, "store": store, "consumer": "infersight ingest" if store == "duckdb" else "ingest_procs.py consume",
        "e2e_s": e2e, "records_per_s": n / e2e, "publish_s": prod["publish_s"], "in_redis_s": prod["in_redis_s"],
        "publish_us": prod["publish_us"], "producer_bus": prod["bus"],
        "cores": {k: cpu_delta(c0[k], c1[k]) / e2e for k in trees}, "host_busy_pct": busy,
    }
    out["store_write_s"], out["store_batches"] = write_s, batches
    if cons is not None:
        out["storage"], out["duplicates"] = cons["storage"], cons["duplicates"]
        out["store_write_s"], out["store_batches"] = cons["store_write_s"], cons["store_batches"]
        out["consumer_stats"] = cons["consumer"]
    else:
        from ingest_procs import duckdb_size

        out["storage"] = duckdb_size(str(db_path))
    shutil.rmtree(work, ignore_errors=True)
    return out


def _ps(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def _tree(pid: int) -> list[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]
