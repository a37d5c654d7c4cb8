"""``infersight export parquet``: request records (or eval results) as a hive-partitioned Parquet dataset.

``--table eval_results`` exports the scores instead, partitioned the same way by the judged
request's day, tenant and model; export each table into a folder of its own (one dataset, one
schema).

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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from infersight.store.arrow import rows_to_arrow
from infersight.store.base import Page, RequestFilter, Store
from infersight.store.evaluations_sql import EvaluationFilter
from infersight.store.schema import EVAL_RESULTS, REQUESTS, Table

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


def window_key(since: datetime | None, until: datetime | None, tenant_id: str | None, table: str = "requests") -> str:
    """12 hex digits naming an export's table, window and tenant filter in its file names (the
    requests table's keys are those of exports made before other tables could be exported)."""
    def iso(t: datetime | None) -> str:
        return "" if t is None else (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()

    which = "" if table == "requests" else f"|{table}"
    return hashlib.sha256(f"{iso(since)}|{iso(until)}|{tenant_id or ''}{which}".encode()).hexdigest()[:12]


Pager = Callable[[Store, "Window", int, "str | None"], Page]


@dataclass(frozen=True)
class Window:
    since: datetime | None
    until: datetime | None
    tenant_id: str | None


@dataclass(frozen=True)
class ExportTable:
    """What exporting one table takes: its columns, the time its ``date=`` comes from, its pages."""

    schema: Table
    day_of: Callable[[pa.Table], pa.ChunkedArray]
    pages: Pager


def _request_pages(store: Store, w: Window, limit: int, cursor: str | None) -> Page:
    return store.list_requests(RequestFilter(tenant_id=w.tenant_id, since=w.since, until=w.until),
                               limit=limit, cursor=cursor)


def _eval_pages(store: Store, w: Window, limit: int, cursor: str | None) -> Page:
    return store.list_evaluations(EvaluationFilter(tenant_id=w.tenant_id, since=w.since, until=w.until),
                                  limit=limit, cursor=cursor)


TABLES: dict[str, ExportTable] = {
    "requests": ExportTable(REQUESTS, lambda t: t.column("started_at"), _request_pages),
    # the judged request's day, as /quality and /evaluations window them (late judgements included)
    "eval_results": ExportTable(EVAL_RESULTS, lambda t: pc.coalesce(t.column("request_started_at"),
                                                                    t.column("evaluated_at")), _eval_pages),
}


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


def _with_partitions(table: pa.Table, spec: ExportTable) -> pa.Table:
    dates = pc.strftime(spec.day_of(table), format="%Y-%m-%d")
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
    table: str = "requests",
) -> ExportSummary:
    """Export ``table``'s rows of ``[since, until)`` (``tenant_id``: one tenant, None: all) into
    ``out_dir``, replacing an earlier export of the same table and window; files appear only once
    the whole run is written."""
    if tenant_id == "":  # an unset shell variable: "" matched no row and replaced the all-tenant export
        raise ValueError("tenant_id is empty: pass a tenant id, or None to export every tenant")
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, not {table!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    key = window_key(since, until, tenant_id, table)
    staging = out / f"{STAGING}{key}-{run}"
    try:
        total, staged = _stage(store, TABLES[table], Window(since, until, tenant_id), staging,
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


def _stage(store: Store, spec: ExportTable, window: Window, staging: Path, prefix: str, page_rows: int,
           chunk_rows: int) -> tuple[int, list[Path]]:
    """Read the window's rows page by page and write them under ``staging``, ``chunk_rows`` at a time;
    rows written and the staged files' paths relative to ``staging``."""
    rows: list[dict] = []
    staged: list[Path] = []
    total = chunks = 0
    cursor: str | None = None

    def flush() -> None:
        nonlocal total, chunks
        if not rows:
            return
        table = _with_partitions(rows_to_arrow(spec.schema, rows), spec)
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
        page = spec.pages(store, window, page_rows, cursor)
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
