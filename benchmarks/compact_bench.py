"""DuckDB bytes per request record before and after compaction (the pipeline's <= 200 B target).

The ingest benchmark measures the file after CHECKPOINT at 255-266 B/record for 300,000 records,
of which ~40% are free blocks DuckDB keeps inside the file. This benchmark writes the same records
(``ingest_records.make_records``: realistic, no text) through ``DuckDBStore.write_requests`` in
batches of 1,000 (the bus's ``batch_size``), closes the store (rollups folded and compacted),
CHECKPOINTs, and measures the whole file (rollups included). Then ``duckdb_compact.compact`` rewrites
it and the file is measured again. Last, it appends ``--more`` records to the compacted file and
measures a third time: how fast the free blocks come back once ingest goes on. They come from the
checkpoints DuckDB runs every ``checkpoint_threshold`` of WAL (each rewrites the row groups touched
since the last one and frees the old blocks), so ``--checkpoint-threshold`` shows that trade-off.

    .venv/bin/python benchmarks/compact_bench.py                 # 300,000 + 100,000 records, ~1 min
    .venv/bin/python benchmarks/compact_bench.py --n 50000 --more 0   # a smoke run
    .venv/bin/python benchmarks/compact_bench.py --checkpoint-threshold 64MB --out /tmp/compact-64mb.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).parent))

from ingest_records import make_records  # noqa: E402

from infersight.store.duckdb_compact import compact  # noqa: E402
from infersight.store.duckdb_store import DuckDBStore  # noqa: E402

GOAL = 200.0


def measure(path: str, records: int) -> dict[str, Any]:
    """CHECKPOINT, then the file's size, its used blocks and its rows per table."""
    con = duckdb.connect(path)
    try:
        con.execute("CHECKPOINT").fetchall()
        block, used, total, free = con.execute(
            "SELECT block_size, used_blocks, total_blocks, free_blocks FROM pragma_database_size() "
            "WHERE database_name = current_database()").fetchall()[0]
        tables = {t: int(n) for t, n in con.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables() WHERE NOT temporary ORDER BY table_name").fetchall()}
    finally:
        con.close()
    size = os.path.getsize(path)
    wal = Path(path + ".wal")
    return {"records": records, "file_bytes": size, "wal_bytes": wal.stat().st_size if wal.exists() else 0,
            "bytes_per_record": size / records, "used_block_bytes": int(used) * int(block),
            "used_bytes_per_record": int(used) * int(block) / records,
            "outside_used_blocks_bytes": size - int(used) * int(block),
            "pragma_free_blocks": int(free), "pragma_total_blocks": int(total), "table_rows": tables}


def ingest(path: str, n: int, batch: int, seed: int, start_ts: float | None = None,
           id_prefix: str = "", checkpoint_threshold: str | None = None) -> dict[str, Any]:
    records = make_records(n, seed=seed, start_ts=start_ts, id_prefix=id_prefix)
    store = DuckDBStore(path)
    store.migrate()
    if checkpoint_threshold:  # DuckDB's default is 16MB of WAL; a global setting of the instance
        store._write.execute(f"SET checkpoint_threshold = '{checkpoint_threshold}'").fetchall()  # noqa: SLF001
    t0 = time.monotonic()
    inserted = sum(store.write_requests(records[i:i + batch]) for i in range(0, n, batch))
    elapsed = time.monotonic() - t0
    store.close()  # folds and compacts the rollups, as at a shutdown
    return {"inserted": inserted, "seconds": elapsed, "records_per_s": n / elapsed}


def line(label: str, m: dict[str, Any]) -> str:
    return (f"{label:<28} {m['records']:>9,} records  file {m['file_bytes'] / 2**20:7.1f} MiB  "
            f"{m['bytes_per_record']:6.1f} B/record  (used blocks {m['used_bytes_per_record']:.1f} B/record)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="records ingested before compaction")
    ap.add_argument("--more", type=int, default=100_000, help="records appended after compaction (0: none)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkpoint-threshold", help="DuckDB checkpoint_threshold while ingesting, e.g. 64MB "
                    "(default: DuckDB's 16MB)")
    ap.add_argument("--workdir", help="where the DuckDB file goes (default: a temporary folder)")
    ap.add_argument("--out", default="benchmarks/results/compact-latest.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        path = os.path.join(work, "infersight.duckdb")
        t_first = time.time() - args.n / 200.0 - max(args.more, 1) / 200.0  # both runs end about now
        written = ingest(path, args.n, args.batch_size, args.seed, start_ts=t_first,
                         checkpoint_threshold=args.checkpoint_threshold)
        before = measure(path, args.n)
        print(line("after ingest + CHECKPOINT", before), flush=True)
        report = compact(path)
        after = measure(path, args.n)
        print(line("after compaction", after), flush=True)
        print(f"compaction took {report.seconds:.2f} s "
              f"({report.bytes_before / 2**20 / report.seconds:.0f} MiB/s of the old file)", flush=True)
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "duckdb": duckdb.__version__},
            "args": vars(args), "ingest": written, "before": before, "after": after, "compaction": report.as_dict(),
            "goal_bytes_per_record": GOAL,
        }
        if args.more:
            more = ingest(path, args.more, args.batch_size, args.seed + 1, start_ts=t_first + args.n / 200.0,
                          id_prefix="ff", checkpoint_threshold=args.checkpoint_threshold)
            appended = measure(path, args.n + args.more)
            print(line(f"after {args.more:,} more", appended), flush=True)
            result["more"], result["after_more"] = more, appended
    result["verdict"] = {k: ("PASS" if result[k]["bytes_per_record"] <= GOAL else "FAIL")
                         for k in ("before", "after", "after_more") if k in result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    print(f"wrote {args.out}: {result['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
