"""Give a DuckDB file's free blocks back to the OS by rewriting it into a fresh file.

Why: DuckDB reuses free blocks but only ever cuts free blocks off the end of its file; neither
``CHECKPOINT`` nor ``VACUUM`` gives back the ones in the middle. Checkpoints during appends (each
rewrites the row groups touched since the last), retention deletes and rollup folds leave them
behind (38-41% of the file after a 300k-record ingest, benchmarks/README.md). DuckDB's documented
way to compact is ``COPY FROM DATABASE old TO new`` into a fresh file, which writes only live data
and keeps every table, view, sequence and macro (``schema_version`` is an ordinary table).

How, safely:

1. The old file is opened (its lock keeps other processes out from here to the swap), CHECKPOINTed,
   and copied into ``<path>.compact-tmp``, attached with the old file's storage version.
2. The copy is verified from disk in its own DuckDB instance: same tables, views and sequences, the
   same row count per table and the same schema version. Any mismatch raises and leaves the old
   file untouched.
3. The old file is hard-linked to ``<path>.bak``, then ``os.replace`` puts the copy in its place:
   ``path`` always names a complete database, old or new, whatever happens in between.
4. The old connection closes, the new file is checked once more (its inode, its row counts, and
   that no other connection of this process still holds the old database, which DuckDB would hand
   back on reopening), and the ``.bak`` goes unless ``keep_backup``. A failure after the swap
   restores the ``.bak``.

``compact(path)`` is the offline form (``infersight store compact``); ``compact_open_store`` is the
in-process one behind ``DuckDBStore.compact`` (writes wait on the store's write lock for the copy,
reads only for the swap); ``compact_if_fragmented`` runs at store open (``store.compact_at_start_free_ratio``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from infersight.store.base import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from infersight.store.duckdb_store import DuckDBStore

log = logging.getLogger("infersight.store")

TMP_SUFFIX = ".compact-tmp"
BAK_SUFFIX = ".bak"
MIN_FREE_BYTES = 32 * 2**20  # at open, never rewrite a file for less than this
_NEW = "_infersight_compacted"
# A config no other connection uses: DuckDB then refuses to share a database this process already
# has open (a DuckDBStore), instead of silently handing us that instance.
_OWN_CONFIG = {"custom_user_agent": "infersight-compact"}
_IN_USE = "stop the gateway/ingest worker first (compaction needs the file to itself)"


@dataclass(frozen=True)
class CompactReport:
    """What a compaction did: file sizes (the ``.wal`` included) and the rows it carried over."""

    path: str
    bytes_before: int
    bytes_after: int
    free_ratio_before: float  # share of the file outside used blocks, after a CHECKPOINT
    tables: dict[str, int] = field(default_factory=dict)  # rows per table, equal before and after
    schema_version: int = 0
    seconds: float = 0.0
    backup: str | None = None  # the kept copy of the old file (keep_backup)

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "saved_bytes": self.saved_bytes, "free_ratio_before": self.free_ratio_before,
                "tables": self.tables, "schema_version": self.schema_version, "seconds": self.seconds,
                "backup": self.backup}


@dataclass(frozen=True)
class Space:
    """A database file's size against its used blocks.

    The free part is measured against the file, not ``free_blocks``: DuckDB truncates free blocks
    at the end of the file on checkpoint, yet after a reopen still counts them in ``free_blocks``.
    """

    block_size: int
    used_blocks: int
    file_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.used_blocks * self.block_size

    @property
    def free_bytes(self) -> int:
        return max(0, self.file_bytes - self.used_bytes)

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.file_bytes if self.file_bytes else 0.0


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return con.execute(sql, params).fetchall()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def file_bytes(path: str) -> int:
    """The database's bytes on disk: the file and its write-ahead log."""
    return sum(os.path.getsize(p) for p in (path, path + ".wal") if os.path.exists(p))


def space(con: duckdb.DuckDBPyConnection, path: str) -> Space:
    """Block size and used blocks of the connection's database, and the size of its file."""
    catalog = _run(con, "SELECT current_database()")[0][0]
    rows = _run(con, "SELECT block_size, used_blocks FROM pragma_database_size() WHERE database_name = ?", [catalog])
    block, used = rows[0]
    return Space(int(block), int(used), os.path.getsize(path))


def _contents(con: duckdb.DuckDBPyConnection, catalog: str) -> tuple[dict[str, int], set[str], int]:
    """Rows per table, the names of views, sequences and macros, and the schema version."""
    tables = _run(con, "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
                       "AND NOT temporary ORDER BY schema_name, table_name", [catalog])
    counts: dict[str, int] = {}
    for schema_name, table in tables:
        name = table if schema_name == "main" else f"{schema_name}.{table}"
        sql = f"SELECT count(*) FROM {_ident(catalog)}.{_ident(schema_name)}.{_ident(table)}"
        counts[name] = int(_run(con, sql)[0][0])
    objects = {f"view {s}.{n}" for s, n in _run(
        con, "SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = ? AND NOT internal", [catalog])}
    objects |= {f"sequence {s}.{n}" for s, n in _run(
        con, "SELECT schema_name, sequence_name FROM duckdb_sequences() WHERE database_name = ?", [catalog])}
    objects |= {f"macro {s}.{n}" for s, n in _run(
        con, "SELECT schema_name, function_name FROM duckdb_functions() WHERE database_name = ? AND NOT internal "
             "AND function_type IN ('macro', 'table_macro')", [catalog])}
    version = 0
    if "schema_version" in counts:
        version = int(_run(con, f"SELECT coalesce(max(version), 0) FROM {_ident(catalog)}.main.schema_version")[0][0])
    return counts, objects, version


def _storage_version(con: duckdb.DuckDBPyConnection, catalog: str) -> str | None:
    tags = _run(con, "SELECT tags FROM duckdb_databases() WHERE database_name = ?", [catalog])[0][0] or {}
    found = re.fullmatch(r"(v\d+\.\d+\.\d+)\+?", str(dict(tags).get("storage_version", "")))
    return found.group(1) if found else None


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_exclusive(path: str) -> duckdb.DuckDBPyConnection:
    """Open ``path`` for compaction, or say clearly who has it."""
    if not os.path.exists(path):
        raise StoreError(f"no DuckDB file at {path}")
    try:
        return duckdb.connect(path, config=_OWN_CONFIG)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" not in text.lower():
            raise StoreUnavailable(f"cannot open the DuckDB file {path}: {text}") from exc
        pid = re.search(r"\(PID (\d+)\)", text)
        holder = f" (PID {pid.group(1)})" if pid else ""
        raise StoreUnavailable(f"the DuckDB file {path} is in use by another process{holder}: {_IN_USE}.") from exc
    except duckdb.ConnectionException as exc:  # a DuckDBStore in this very process has it open
        raise StoreUnavailable(f"the DuckDB file {path} is open in this process: use DuckDBStore.compact() "
                               "instead of compacting it from outside") from exc
    except duckdb.Error as exc:
        raise StoreError(f"cannot open the DuckDB file {path}: {exc}") from exc


def _copy(con: duckdb.DuckDBPyConnection, path: str) -> tuple[str, dict[str, int], int]:
    """Copy the connection's database into a fresh ``<path>.compact-tmp`` and verify it from disk.

    Returns the copy's path, rows per table and schema version. The old file is not modified; on
    any failure the partial copy is removed.
    """
    catalog = _run(con, "SELECT current_database()")[0][0]
    tmp = path + TMP_SUFFIX
    _remove(tmp, tmp + ".wal")  # leftovers of an interrupted run
    need = space(con, path).used_bytes * 11 // 10
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < need:
        raise StoreUnavailable(f"compacting {path} needs about {need / 2**20:.0f} MiB free on its disk; "
                               f"{free / 2**20:.0f} MiB are")
    counts, objects, version = _contents(con, catalog)
    options = f" (STORAGE_VERSION {_literal(v)})" if (v := _storage_version(con, catalog)) else ""
    try:
        _run(con, f"ATTACH {_literal(tmp)} AS {_NEW}{options}")
        try:
            _run(con, f"COPY FROM DATABASE {_ident(catalog)} TO {_NEW}")
        finally:
            _run(con, f"DETACH {_NEW}")  # checkpoints the copy and releases it
        fresh = duckdb.connect(tmp, config=_OWN_CONFIG)  # read back from disk, not from our instance
        try:
            _run(fresh, "CHECKPOINT")
            got = _contents(fresh, _run(fresh, "SELECT current_database()")[0][0])
        finally:
            fresh.close()
        if got != (counts, objects, version):
            raise StoreError(f"compaction of {path} aborted, the copy differs: rows {counts} -> {got[0]}, "
                             f"objects {sorted(objects ^ got[1])}, schema version {version} -> {got[2]}")
        if os.path.exists(tmp + ".wal"):
            raise StoreError(f"compaction of {path} aborted: the copy kept a write-ahead log")
        _fsync(tmp)
    except BaseException:
        _remove(tmp, tmp + ".wal")
        raise
    return tmp, counts, version


def _swap(path: str, tmp: str) -> str:
    """Keep the old file as ``<path>.bak`` and move the copy into ``path`` atomically."""
    if os.path.exists(path + ".wal"):  # it would be replayed into the new file
        raise StoreError(f"compaction of {path} aborted: its write-ahead log was not folded in")
    bak = path + BAK_SUFFIX
    _remove(bak)  # a backup kept by an earlier run
    try:
        try:
            os.link(path, bak)  # costs no space, and path never goes missing
        except OSError:
            shutil.copyfile(path, bak)
        os.replace(tmp, path)
    except BaseException:
        _remove(bak)
        raise
    _fsync(os.path.dirname(os.path.abspath(path)))
    return bak


def _restore(path: str, bak: str) -> None:
    log.error("compaction of %s failed after the swap; restoring the old file from %s", path, bak)
    _remove(path + ".wal")
    os.replace(bak, path)


def _finish(path: str, bak: str, keep_backup: bool) -> str | None:
    if keep_backup:
        return bak
    _remove(bak)
    return None


def _check_swapped(path: str, inode: int, counts: dict[str, int], version: int) -> None:
    """``path`` is the verified copy, and no connection of this process still holds the old database.

    The probe's own config makes DuckDB refuse if an instance of ``path`` is still cached here (a
    cursor someone kept): reopening would then silently get the old, unlinked file back.
    """
    try:
        check = duckdb.connect(path, config=_OWN_CONFIG)
    except duckdb.ConnectionException as exc:
        raise StoreError(f"compaction of {path}: a connection in this process still holds the old file") from exc
    try:
        got = _contents(check, _run(check, "SELECT current_database()")[0][0])
    finally:
        check.close()
    if os.stat(path).st_ino != inode or (got[0], got[2]) != (counts, version):
        raise StoreError(f"compaction of {path}: the swapped-in file does not match its copy")


def _compact_connection(con: duckdb.DuckDBPyConnection, path: str, keep_backup: bool, t0: float) -> CompactReport:
    """Offline compaction through ``con``, the only connection to ``path``; closes it."""
    tmp: str | None = None
    try:
        _run(con, "CHECKPOINT")
        before, ratio = file_bytes(path), space(con, path).free_ratio
        tmp, counts, version = _copy(con, path)
        inode = os.stat(tmp).st_ino
        _run(con, "CHECKPOINT")
        bak = _swap(path, tmp)  # with our lock still on the old file: nobody else can open it meanwhile
    except BaseException:
        con.close()
        if tmp:
            _remove(tmp, tmp + ".wal")
        raise
    con.close()  # the old database is clean (checkpointed, no WAL): closing writes nothing to path
    try:
        _check_swapped(path, inode, counts, version)
    except BaseException:
        _restore(path, bak)
        raise
    return CompactReport(path, before, file_bytes(path), ratio, counts, version,
                         time.monotonic() - t0, _finish(path, bak, keep_backup))


def compact(path: str | os.PathLike[str], keep_backup: bool = False) -> CompactReport:
    """Rewrite the DuckDB file at ``path`` without its free blocks (offline: no process may hold it).

    Raises ``StoreUnavailable`` when another process holds the file (stop it first) or the disk has
    no room for the copy, ``StoreError`` when the copy does not verify; the old file is then intact.
    """
    t0 = time.monotonic()
    p = str(Path(path))
    return _compact_connection(open_exclusive(p), p, keep_backup, t0)


def compact_if_fragmented(path: str | os.PathLike[str], min_free_ratio: float,
                          min_free_bytes: int | None = None) -> CompactReport | None:
    """At store open: compact when free space is at least ``min_free_ratio`` of the file and at
    least ``min_free_bytes`` (default ``MIN_FREE_BYTES``). Never fails the open: a problem is logged
    and the file left as it is (a lock held elsewhere is then reported by the store's own open)."""
    floor = MIN_FREE_BYTES if min_free_bytes is None else min_free_bytes
    p = str(Path(path))
    if not os.path.exists(p):
        return None
    t0 = time.monotonic()
    try:
        con = open_exclusive(p)
    except StoreError:
        return None
    try:
        s = space(con, p)
    except duckdb.Error:
        con.close()
        return None
    if s.free_ratio < min_free_ratio or s.free_bytes < floor:
        con.close()
        return None
    log.info("compacting %s: %.0f%% of it (%.0f MiB) is free blocks", p, 100 * s.free_ratio, s.free_bytes / 2**20)
    try:
        report = _compact_connection(con, p, keep_backup=False, t0=t0)
    except (StoreError, duckdb.Error, OSError) as exc:
        log.warning("compaction of %s at open skipped: %s", p, exc)
        return None
    log.info("compacted %s: %.1f -> %.1f MiB in %.1f s", p, report.bytes_before / 2**20,
             report.bytes_after / 2**20, report.seconds)
    return report


def compact_open_store(store: DuckDBStore, keep_backup: bool = False) -> CompactReport:
    """Compact the file of an open store in place, behind its locks (``DuckDBStore.compact``).

    Writes wait on the write lock for the whole copy (the bus buffers meanwhile, as during retention);
    reads go on against the old file until the swap, for which they wait on the read lock. After the
    swap the store reopens its connections on the new file.
    """
    t0 = time.monotonic()
    path = store.path
    with store._write_lock, _store_errors(path):  # noqa: SLF001 - the store's own maintenance, kept apart
        if store._closed:  # noqa: SLF001
            raise StoreError("the store is closed")
        con = store._write  # noqa: SLF001
        _run(con, "CHECKPOINT")
        before, ratio = file_bytes(path), space(con, path).free_ratio
        tmp, counts, version = _copy(con, path)
        inode = os.stat(tmp).st_ino
        with store._read_lock:  # noqa: SLF001
            try:
                _run(con, "CHECKPOINT")  # nothing was written since, but make sure no WAL is left
                bak = _swap(path, tmp)
            except BaseException:
                _remove(tmp, tmp + ".wal")
                raise
            store._read.close()  # noqa: SLF001
            store._write.close()  # noqa: SLF001
            try:
                _check_swapped(path, inode, counts, version)
                store._connect()  # noqa: SLF001
            except BaseException:
                _reopen_old(store, path, bak)
                raise
    return CompactReport(path, before, file_bytes(path), ratio, counts, version,
                         time.monotonic() - t0, _finish(path, bak, keep_backup))


@contextmanager
def _store_errors(path: str) -> Iterator[None]:
    """DuckDB errors as the store reports them: I/O ones may pass (retry), the rest will not."""
    try:
        yield
    except duckdb.IOException as exc:
        raise StoreUnavailable(f"{path}: {exc}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc


def _reopen_old(store: DuckDBStore, path: str, bak: str) -> None:
    """After a failed swap: put the old file back and reopen it; the store is closed if that fails too."""
    for con in (getattr(store, "_read", None), getattr(store, "_write", None)):
        try:
            if con is not None:
                con.close()
        except duckdb.Error:
            pass
    try:
        _restore(path, bak)
        store._connect()  # noqa: SLF001
    except BaseException:
        store._closed = True  # noqa: SLF001
        log.exception("the store at %s could not be reopened after a failed compaction", path)
        raise
