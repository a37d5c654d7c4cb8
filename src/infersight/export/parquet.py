"""``infersight export parquet``: request records as a hive-partitioned Parquet dataset.

Layout: ``OUT/date=YYYY-MM-DD/tenant=<id>/model=<id>/part-<run>-<n>.parquet`` (partition values are
URI-encoded, so model ids like ``openai/gpt-4o`` stay one directory). The files carry every record
column (docs/record.md); pyarrow, pandas and DuckDB read the folder directly, e.g.
``duckdb.sql("SELECT * FROM read_parquet('OUT/**/*.parquet', hive_partitioning=true)")``.
Reads go through the Store interface page by page, so memory stays bounded by ``chunk_rows``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from infersight.store.arrow import rows_to_arrow
from infersight.store.base import RequestFilter, Store
from infersight.store.schema import REQUESTS

PARTITIONS = ("date", "tenant", "model")


@dataclass(frozen=True)
class ExportSummary:
    rows: int
    files: int
    out_dir: Path


def _with_partitions(table: pa.Table) -> pa.Table:
    started = table.column("started_at")
    dates = pc.strftime(started, format="%Y-%m-%d")
    return table.append_column("date", dates).append_column("tenant", table.column("tenant_id")).append_column(
        "model", table.column("model_id"))


def export_parquet(
    store: Store,
    since: datetime | None,
    until: datetime | None,
    out_dir: str | Path,
    tenant_id: str | None = None,
    page_rows: int = 1000,
    chunk_rows: int = 100_000,
) -> ExportSummary:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    flt = RequestFilter(tenant_id=tenant_id, since=since, until=until)
    rows: list[dict] = []
    total = files = 0
    cursor: str | None = None

    def flush() -> None:
        nonlocal files, total
        if not rows:
            return
        table = _with_partitions(rows_to_arrow(REQUESTS, rows))
        written: list[str] = []
        ds.write_dataset(
            table, out, format="parquet", partitioning=list(PARTITIONS), partitioning_flavor="hive",
            basename_template=f"part-{run}-{files}-{{i}}.parquet", existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda f: written.append(f.path),
        )
        files += len(written)
        total += len(rows)
        rows.clear()

    while True:
        page = store.list_requests(flt, limit=page_rows, cursor=cursor)
        rows.extend(page.data)
        if len(rows) >= chunk_rows:
            flush()
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    flush()
    return ExportSummary(rows=total, files=files, out_dir=out)
