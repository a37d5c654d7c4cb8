"""The ingest benchmark's worker processes; each runs as its own subprocess of ingest_bench.py.

    ingest_procs.py embedded --config CFG --n N --out F   gateway shape: producer thread -> MemoryBus
                                                          (journal on) -> StoreSink -> the store
                                                          process (DuckDB), as `infersight serve` runs it
    ingest_procs.py produce  --config CFG --n N --out F   a gateway's RedisStreamBus (journal on) -> Redis
    ingest_procs.py consume  --url U --store chdb ...     RedisStreamConsumer + StoreSink -> store (as
                                                          `infersight ingest` wires it; chdb is not
                                                          reachable from a config, so it is built here)
    ingest_procs.py store    --store duckdb --path P ...  write_requests in batches, no bus: the ceiling
    ingest_procs.py flood    --url U --stream S ...       XADDs synthetic records until SIGTERM, keeping
                                                          the consumer group's lag near --max-lag

Buses and stores are built with the project's own wiring (``runtime.build_bus``, ``open_store`` or
``open_gateway_store``,
``StoreSink`` with ``IngestMetrics``) from a config file, so the settings are production's.
Progress markers go to stdout as ``MARK <name> <time.monotonic()>`` (CLOCK_MONOTONIC is one clock
for every process on the host); results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))

from ingest_records import make_records  # noqa: E402

from infersight.model import RequestRecord  # noqa: E402
from infersight.config import BusSettings  # noqa: E402


def mark(name: str) -> float:
    t = time.monotonic()
    print(f"MARK {name} {t:.6f}", flush=True)
    return t


def percentiles_us(durations_ns: list[int]) -> dict[str, float]:
    s = sorted(durations_ns)
    n = len(s)
    pick = lambda q: s[min(n - 1, int(q * (n - 1) + 0.5))] / 1e3  # noqa: E731
    return {"mean": sum(s) / n / 1e3, "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99),
            "p999": pick(0.999), "max": s[-1] / 1e3}


def freeze() -> None:
    """Move the pre-generated records out of the collector's view. Holding N records ready is the
    benchmark's doing, not the gateway's; left in view, gen-2 collections over them stall single
    publish calls for up to ~300 ms (measured), which would be charged to the bus."""
    gc.collect()
    gc.freeze()


def publish_all(bus: Any, records: list[RequestRecord]) -> tuple[float, float, list[int]]:
    """Publish every record as fast as possible from a producer thread, timing each call."""
    durations: list[int] = []
    span: list[float] = []

    def run() -> None:
        pub, clock, add = bus.publish, time.perf_counter_ns, durations.append
        span.append(mark("publish_start"))
        for r in records:
            t = clock()
            pub(r)
            add(clock() - t)
        span.append(mark("published"))

    thread = threading.Thread(target=run, name="producer")
    thread.start()
    thread.join()
    return span[0], span[1], durations


def wait_until(cond: Any, timeout_s: float, poll_s: float = 0.005) -> float:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(poll_s)
    return time.monotonic()


def write_seconds(metrics: Any) -> float:
    """Seconds spent in ``store.write_requests`` so far (the sink's write-latency histogram sum)."""
    return _histogram(metrics.write_seconds, "_sum")


def write_batches(metrics: Any) -> float:
    """Store writes so far (the sink's batch-size histogram count)."""
    return _histogram(metrics.batch_size, "_count")


def _histogram(hist: Any, suffix: str) -> float:
    for family in hist.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                return float(sample.value)
    return float("nan")


def duckdb_size(path: str) -> dict[str, Any]:
    """CHECKPOINT the file (folds the WAL in), then its size, its used and free blocks, and rows."""
    import duckdb

    con = duckdb.connect(path)
    try:
        con.execute("CHECKPOINT").fetchall()
        rows = con.execute("SELECT count(*) FROM requests").fetchall()[0][0]
        block, used, free = con.execute("SELECT block_size, used_blocks, free_blocks FROM pragma_database_size()").fetchall()[0]
        tables = {t: int(n) for t, n in con.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables() ORDER BY table_name").fetchall()}
        # the requests table alone, copied into a fresh file: its size without rollups or free blocks
        alone = path + ".requests-only"
        con.execute(f"ATTACH '{alone}' AS alone").fetchall()
        con.execute("CREATE TABLE alone.requests AS SELECT * FROM requests").fetchall()
        con.execute("DETACH alone").fetchall()
        alone_bytes = os.path.getsize(alone)
        os.unlink(alone)
    finally:
        con.close()
    wal = Path(path + ".wal")
    return {"rows": int(rows), "file_bytes": os.path.getsize(path), "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "used_block_bytes": int(used) * int(block), "free_block_bytes": int(free) * int(block),
            "table_rows": tables, "requests_only_file_bytes": alone_bytes}


def chdb_size(store: Any, path: str) -> dict[str, Any]:
    """OPTIMIZE FINAL (one part per partition, duplicates merged), then the active parts' bytes."""
    db = store.database
    store._exec.command(f"OPTIMIZE TABLE `{db}`.requests FINAL")  # noqa: SLF001 - a benchmark's look inside
    per_table = {r["table"]: {"rows": int(r["rows"]), "bytes": int(r["bytes"]), "parts": int(r["parts"]),
                              "compressed": int(r["compressed"]), "uncompressed": int(r["uncompressed"])}
                 for r in store._rows(  # noqa: SLF001
                     "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes, count() AS parts, "
                     "sum(data_compressed_bytes) AS compressed, sum(data_uncompressed_bytes) AS uncompressed "
                     "FROM system.parts WHERE database = {db:String} AND active GROUP BY table", {"db": db})}
    req = per_table.get("requests", {"rows": 0, "bytes": 0, "parts": 0, "compressed": 0, "uncompressed": 0})
    dir_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
                    if not os.path.islink(os.path.join(d, f)))
    return {"rows": req["rows"], "parts_bytes": req["bytes"], "compressed_bytes": req["compressed"],
            "uncompressed_bytes": req["uncompressed"], "parts": req["parts"],
            "all_tables_parts_bytes": sum(t["bytes"] for t in per_table.values()), "tables": per_table,
            "dir_bytes_incl_outdated_parts": dir_bytes}


# -- embedded: one process, as the gateway runs it ------------------------------------------------

def tree_cpu_s() -> float:
    """CPU seconds of this process and its children (the store process) so far."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in (me, *me.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def cmd_embedded(args: argparse.Namespace) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from infersight.config import load_settings
    from infersight.ingest.sink import IngestMetrics, StoreSink
    from infersight.runtime import build_bus
    from infersight.store.base import RequestFilter
    from infersight.store.factory import open_gateway_store

    settings = load_settings(args.config)
    store = open_gateway_store(settings)  # as `infersight serve` opens it: DuckDB in its store process
    metrics = IngestMetrics(CollectorRegistry())
    sink = StoreSink(store, metrics)
    bus = build_bus(settings, [sink])  # MemoryBus, journal in <storage.path>/spool
    records = make_records(args.n, seed=args.seed)
    freeze()
    bus.start()
    mark("ready")
    cpu0 = tree_cpu_s()
    out: dict[str, Any] = {}

    def watch() -> None:  # when did the last record reach the store?
        out["t_done"] = wait_until(lambda: sink.inserted >= args.n, args.timeout, 0.02)
        out["cpu_s"] = tree_cpu_s() - cpu0
        out["write_s"] = write_seconds(metrics)
        out["batches"] = write_batches(metrics)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0, t1, durations = publish_all(bus, records)
    at_publish_end = bus.stats()
    journal = bus.journal
    spool_bytes = journal.size_bytes if journal is not None else 0
    watcher.join()
    mark("done")
    rows = store.count_requests(RequestFilter())
    stats = bus.stats()
    bus.stop()
    store.close()
    db_path = str(Path(settings.storage.path) / "infersight.duckdb")
    return {
        "n": args.n, "t_publish_start": t0, "t_published": t1, "t_done": out["t_done"],
        "e2e_s": out["t_done"] - t0, "publish_s": t1 - t0, "drain_after_publish_s": out["t_done"] - t1,
        "records_per_s": args.n / (out["t_done"] - t0), "publish_us": percentiles_us(durations),
        "delivered_at_publish_end": at_publish_end.delivered, "spool_bytes_at_publish_end": spool_bytes,
        "bus": {k: getattr(stats, k) for k in stats.__slots__}, "rows_counted": rows,
        "inserted": sink.inserted, "duplicates": sink.duplicates, "process_cpu_s": out["cpu_s"],
        "store_write_s": out["write_s"], "store_batches": out["batches"],
        "storage": duckdb_size(db_path),
    }


# -- scale-out: the producer (a gateway's bus) -------------------------------------------------------

def cmd_produce(args: argparse.Namespace) -> dict[str, Any]:
    from infersight.config import load_settings
    from infersight.runtime import build_bus

    settings = load_settings(args.config)
    bus = build_bus(settings, [])  # RedisStreamBus: journal + XADD pipelines from the writer thread
    records = make_records(args.n, seed=args.seed)
    freeze()
    bus.start()
    mark("ready")
    cpu0 = time.process_time()
    t0, t1, durations = publish_all(bus, records)
    if not bus.flush(args.timeout):
        raise TimeoutError("the bus did not hand everything to Redis in time")
    t2 = mark("flushed")
    cpu = time.process_time() - cpu0
    stats = bus.stats()
    bus.stop()
    return {"n": args.n, "t_publish_start": t0, "t_published": t1, "t_flushed": t2, "publish_s": t1 - t0,
            "in_redis_s": t2 - t0, "publish_us": percentiles_us(durations), "process_cpu_s": cpu,
            "bus": {k: getattr(stats, k) for k in stats.__slots__}}


# -- scale-out: a consumer (what `infersight ingest` runs) for the embedded ClickHouse store ---------

def cmd_consume(args: argparse.Namespace) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from infersight.bus.redis_consumer import RedisStreamConsumer
    from infersight.ingest.sink import IngestMetrics, StoreSink

    if args.store == "chdb":
        from infersight.store.clickhouse_store import ClickHouseStore

        store: Any = ClickHouseStore.embedded(args.path)
    else:
        from infersight.store.duckdb_store import DuckDBStore

        store = DuckDBStore(args.path)
    store.migrate()
    metrics = IngestMetrics(CollectorRegistry())
    sink = StoreSink(store, metrics)
    consumer = RedisStreamConsumer(args.url, sink=sink, stream=args.stream, group="infersight-ingest",
                                   consumer=f"bench-{os.getpid()}", batch_size=args.batch_size,
                                   dead_letter_stream=f"{args.stream}:dead")
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), name="consumer")
    thread.start()
    mark("ready")
    wait_until(lambda: sink.inserted > 0, args.timeout)
    cpu0 = time.process_time()
    t_done = wait_until(lambda: sink.inserted >= args.n, args.timeout, 0.02)
    mark("done")
    cpu = time.process_time() - cpu0
    spent, batches = write_seconds(metrics), write_batches(metrics)
    stop.set()
    thread.join(10)
    storage = chdb_size(store, args.path) if args.store == "chdb" else None
    stats = consumer.stats()
    store.close()
    if storage is None:
        storage = duckdb_size(args.path)
    return {"n": args.n, "t_done": t_done, "inserted": sink.inserted, "duplicates": sink.duplicates,
            "process_cpu_s_from_first_row": cpu, "store_write_s": spent, "store_batches": batches, "consumer": {k: getattr(stats, k) for k in stats.__slots__},
            "storage": storage}


# -- the store alone: the ceiling the pipelines above work under ----------------------------------

def cmd_store(args: argparse.Namespace) -> dict[str, Any]:
    """``write_requests`` in batches of ``--batch-size`` from one thread, no bus: the store's own rate."""
    if args.store == "chdb":
        from infersight.store.clickhouse_store import ClickHouseStore

        store: Any = ClickHouseStore.embedded(args.path)
    else:
        from infersight.store.duckdb_store import DuckDBStore

        store = DuckDBStore(args.path)
    store.migrate()
    records = make_records(args.n, seed=args.seed)
    freeze()
    mark("ready")
    b = args.batch_size
    cpu0, t0 = time.process_time(), time.monotonic()
    inserted = sum(store.write_requests(records[i:i + b]) for i in range(0, args.n, b))
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    mark("done")
    storage = chdb_size(store, args.path) if args.store == "chdb" else None
    store.close()
    if storage is None:
        storage = duckdb_size(args.path)
    return {"n": args.n, "e2e_s": elapsed, "records_per_s": args.n / elapsed, "inserted": inserted,
            "process_cpu_s": cpu, "store_write_s": elapsed, "store_batches": -(-args.n // b), "storage": storage}


# -- flood: other gateways' traffic, as fast as the ingest side takes it ----------------------------

def cmd_flood(args: argparse.Namespace) -> dict[str, Any]:
    from infersight.bus.redis_conn import connect

    # The flood stands in for other hosts' gateways: in production its CPU is not on this host, so it
    # runs at the lowest priority and takes only what the measured processes leave.
    os.nice(19)
    pool = make_records(args.pool, seed=args.seed)
    freeze()
    # each payload is split around trace_id and started_at, so every XADD gets a fresh id and time
    parts = []
    for r in pool:
        raw = orjson.dumps(r)
        head, rest = raw.split(b'"trace_id":"', 1)
        rest = rest[32:]
        mid, tail = rest.split(b'"started_at":"', 1)
        tail = tail.split(b'"', 1)[1]
        parts.append((head + b'"trace_id":"', mid + b'"started_at":"', b'"' + tail))
    client = connect(args.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_id = os.urandom(4).hex()
    sent = waits = 0
    i = 0
    mark("ready")
    t0 = time.monotonic()
    while not stop.is_set():
        if args.rate > 0:  # paced: never ahead of rate x elapsed
            ahead = sent / args.rate - (time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)
                continue
        lag = _group_lag(client, args.stream, args.group)
        if lag is not None and lag > args.max_lag:
            waits += 1
            stop.wait(0.002)
            continue
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + b".%06d+00:00" % int(now % 1 * 1e6)
        pipe = client.pipeline(transaction=False)
        for _ in range(args.batch):
            head, mid, tail = parts[i % len(parts)]
            payload = b"".join((head, b"%s%024x" % (run_id.encode(), sent), mid, ts, tail))
            pipe.xadd(args.stream, {"r": payload}, maxlen=args.maxlen, approximate=True)
            i += 1
            sent += 1
        pipe.execute()
    elapsed = time.monotonic() - t0
    client.close()
    return {"sent": sent, "elapsed_s": elapsed, "rate": sent / elapsed if elapsed else 0.0, "lag_waits": waits}


def _group_lag(client: Any, stream: str, group: str) -> int | None:
    """Entries not yet delivered to the group (Redis >= 7.0), None when unknown."""
    try:
        for g in client.xinfo_groups(stream):
            name = g.get("name", g.get(b"name"))
            if name in (group, group.encode()):
                lag = g.get("lag", g.get(b"lag"))
                return int(lag) if lag is not None else None
    except Exception:  # noqa: BLE001 - no stream or group yet: just send
        return None
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("embedded", "produce", "consume", "store", "flood"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--timeout", type=float, default=600.0)
        if name in ("embedded", "produce"):
            s.add_argument("--config", required=True)
        if name != "flood":
            s.add_argument("--n", type=int, required=True)
        if name in ("consume", "flood"):
            s.add_argument("--url", required=True)
            s.add_argument("--stream", default="infersight:requests")
        if name in ("consume", "store"):
            s.add_argument("--store", choices=("chdb", "duckdb"), default="chdb")
            s.add_argument("--path", required=True)
            # what `infersight ingest` reads per XREADGROUP and writes per store call under a backlog
            s.add_argument("--batch-size", type=int, default=BusSettings().max_batch_size)
    f = sub.choices["flood"]
    f.add_argument("--group", default="infersight-ingest")
    f.add_argument("--max-lag", type=int, default=20_000, help="pause while the group lags more than this")
    f.add_argument("--rate", type=float, default=0.0,
                   help="records/s to send at most (0: as fast as the worker takes them, bounded by --max-lag)")
    f.add_argument("--maxlen", type=int, default=200_000, help="XADD MAXLEN ~ (trims only consumed entries)")
    f.add_argument("--batch", type=int, default=500, help="XADDs per pipeline")
    f.add_argument("--pool", type=int, default=20_000, help="distinct record shapes cycled through")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commands = {"embedded": cmd_embedded, "produce": cmd_produce, "consume": cmd_consume, "store": cmd_store,
                "flood": cmd_flood}
    result = commands[args.cmd](args)
    Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
