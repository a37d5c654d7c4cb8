"""``infersight export parquet``: request records as a hive-partitioned Parquet dataset.

Layout: ``OUT/date=YYYY-MM-DD/tenant=<id>/model=<id>/part-<window>-<run>-<n>-<i>.parquet`` (partition
values are URI-encoded, so model ids like ``openai/gpt-4o`` stay one directory). The files carry every record
column (docs/record.md); pyarrow, pandas and DuckDB read the folder directly, e.g.
``duckdb.sql("SELECT * FROM read_parquet('OUT/**/*.parquet', hive_partitioning=true)")``.
Reads go through the Store interface page by page, so memory stays bounded by ``chunk_rows``.

Directory names are bounded: a file system refuses a name over 255 bytes, and URI encoding triples
every byte it escapes (a 28-character CJK model id, 84 slashes, or any 250-character id, all of which a
client can put in a request's ``model``). A partition value whose directory name would pass
``MAX_DIR_NAME`` bytes is cut and ends with ``~`` and 16 hex digits of the SHA-256 of the whole value,
so distinct ids stay apart; the files' own ``tenant_id`` and ``model_id`` columns keep the full ids.

Exporting the same window again replaces the earlier export: ``<window>`` is a hash of the window
and the tenant filter, and once a run has written all its files it deletes the files of earlier
runs with the same ``<window>``. A scheduled job that is retried, or a day exported again after a
late replay, therefore never doubles what a reader sees. (Windows that merely overlap are distinct
exports.)

A run writes its files under a hidden staging folder, ``OUT/.staging-<window>-<run>/``, named
``*.parquet.tmp``, and renames them into place only once every page has been read and written: a
reader (pyarrow skips dot folders; DuckDB's ``**/*.parquet`` does not, hence the suffix) never sees
a half-written file or half of a run. A run that fails removes its staging folder and any file it
had renamed, so the earlier export stays as it was; a killed run leaves only the staging folder,
which the next successful run of the same window removes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from infersight.store.arrow import rows_to_arrow
from infersight.store.base import RequestFilter, Store
from infersight.store.schema import REQUESTS

PARTITIONS = ("date", "tenant", "model")
MAX_DIR_NAME = 200  # bytes of one partition directory's name; file systems allow 255
STAGING = ".staging-"  # OUT/.staging-<window>-<run>/: a run's files until all of them are written
TMP_SUFFIX = ".tmp"  # staged files end .parquet.tmp, so no *.parquet glob picks them up


@dataclass(frozen=True)
class ExportSummary:
    rows: int
    files: int
    out_dir: Path
    replaced: int = 0  # files of an earlier export of the same window, deleted after this one was written


def window_key(since: datetime | None, until: datetime | None, tenant_id: str | None) -> str:
    """12 hex digits naming an export's window and tenant filter in its file names."""
    def iso(t: datetime | None) -> str:
        return "" if t is None else (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()

    return hashlib.sha256(f"{iso(since)}|{iso(until)}|{tenant_id or ''}".encode()).hexdigest()[:12]


def _encoded(value: str) -> str:
    """A partition value as pyarrow writes it in a directory name (URI-encoded, only ``-._~`` kept)."""
    return quote(value, safe="")


def partition_value(key: str, value: str) -> str:
    """``value``, or when ``key=<encoded value>`` would pass ``MAX_DIR_NAME`` bytes, its longest prefix
    that fits followed by ``~`` and 16 hex digits of its SHA-256 (see the module doc)."""
    budget = MAX_DIR_NAME - len(key) - 1
    if len(_encoded(value)) <= budget:
        return value
    suffix = "~" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    room, prefix = budget - len(suffix), []
    for char in value:
        room -= len(_encoded(char))
        if room < 0:
            break
        prefix.append(char)
    return "".join(prefix) + suffix


def _partition(column: pa.ChunkedArray, key: str) -> pa.ChunkedArray:
    """The partition column for ``column``: the same values, the overlong ones shortened."""
    short = {v: partition_value(key, v) for v in pc.unique(column).to_pylist() if v is not None}
    short = {v: p for v, p in short.items() if p != v}
    if not short:
        return column
    return pa.chunked_array([pa.array([short.get(v, v) for v in column.to_pylist()], pa.string())])


def _with_partitions(table: pa.Table) -> pa.Table:
    started = table.column("started_at")
    dates = pc.strftime(started, format="%Y-%m-%d")
    return table.append_column("date", dates).append_column(
        "tenant", _partition(table.column("tenant_id"), "tenant")).append_column(
        "model", _partition(table.column("model_id"), "model"))


def export_parquet(
    store: Store,
    since: datetime | None,
    until: datetime | None,
    out_dir: str | Path,
    tenant_id: str | None = None,
    page_rows: int = 1000,
    chunk_rows: int = 100_000,
) -> ExportSummary:
    """Export ``[since, until)`` (``tenant_id``: one tenant, None: all) into ``out_dir``, replacing an
    earlier export of the same window; files appear only once the whole run is written."""
    if tenant_id == "":  # an unset shell variable: "" matched no row and replaced the all-tenant export
        raise ValueError("tenant_id is empty: pass a tenant id, or None to export every tenant")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    key = window_key(since, until, tenant_id)
    staging = out / f"{STAGING}{key}-{run}"
    try:
        total, staged = _stage(store, RequestFilter(tenant_id=tenant_id, since=since, until=until), staging,
                               f"part-{key}-{run}", page_rows, chunk_rows)
        _publish(staging, out, staged)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    replaced = 0
    for old in out.rglob(f"part-{key}-*.parquet"):  # only after every new file is in place
        if not old.name.startswith(f"part-{key}-{run}-"):
            old.unlink()
            replaced += 1
    for stale in out.glob(f"{STAGING}{key}-*"):  # left by a killed run of this window
        shutil.rmtree(stale, ignore_errors=True)
    return ExportSummary(rows=total, files=len(staged), out_dir=out, replaced=replaced)


def _stage(store: Store, flt: RequestFilter, staging: Path, prefix: str, page_rows: int,
           chunk_rows: int) -> tuple[int, list[Path]]:
    """Read the filter's rows page by page and write them under ``staging``, ``chunk_rows`` at a time;
    rows written and the staged files' paths relative to ``staging``."""
    rows: list[dict] = []
    staged: list[Path] = []
    total = chunks = 0
    cursor: str | None = None

    def flush() -> None:
        nonlocal total, chunks
        if not rows:
            return
        table = _with_partitions(rows_to_arrow(REQUESTS, rows))
        ds.write_dataset(
            table, staging, format="parquet", partitioning=list(PARTITIONS), partitioning_flavor="hive",
            basename_template=f"{prefix}-{chunks}-{{i}}.parquet{TMP_SUFFIX}",
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda f: staged.append(Path(f.path).relative_to(staging)),
        )
        chunks += 1
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
    return total, staged


def _publish(staging: Path, out: Path, staged: list[Path]) -> None:
    """Rename each staged file to its place under ``out`` (a rename within one folder tree: atomic per
    file); on failure, take back the ones already renamed so the run leaves nothing behind."""
    done: list[Path] = []
    try:
        for rel in staged:
            target = out / rel.with_name(rel.name.removesuffix(TMP_SUFFIX))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            done.append(target)
    except BaseException:
        for target in done:
            target.unlink(missing_ok=True)
        raise
