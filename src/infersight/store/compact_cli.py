"""``infersight store compact``: give the DuckDB file's free blocks back to the OS, offline.

DuckDB never shrinks its file (docs/store.md, "Compaction"); this rewrites it into a fresh one and
swaps it in. The file must not be open elsewhere: stop the gateway (embedded shape) or the ingest
worker first. Exit codes: 0 compacted, 2 bad config or not a DuckDB store, 3 the file is in use or
the disk has no room for the copy, 1 the copy did not verify (the old file is intact).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infersight.config import ConfigError, Settings, load_settings
from infersight.store.base import StoreError, StoreUnavailable

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_IN_USE = 0, 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config: store.path or storage.path")
    parser.add_argument("--keep-backup", action="store_true",
                        help="keep the old file as <file>.bak (default: deleted once the new one verifies)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def duckdb_path(settings: Settings) -> str:
    """The DuckDB file the config names (as ``store.factory.open_store`` resolves it)."""
    cfg = settings.store
    if cfg.backend != "duckdb":
        raise ConfigError("is not duckdb: only the embedded DuckDB file needs compacting "
                          "(ClickHouse merges its parts itself)", key="store.backend")
    return str(Path(cfg.path) if cfg.path else Path(settings.storage.path) / "infersight.duckdb")


def _looks_like_duckdb(path: str) -> bool:
    """DuckDB's magic bytes (``DUCK`` at offset 8 of the main header)."""
    with open(path, "rb") as file:
        return file.read(12)[8:12] == b"DUCK"


def run(args: argparse.Namespace) -> int:
    from infersight.store.duckdb_compact import compact  # lazy: duckdb only when the command runs

    try:
        settings = load_settings(args.config)
        path = duckdb_path(settings)
        key = "store.path" if settings.store.path else "storage.path"
        if not Path(path).is_file():
            raise ConfigError(f"there is no DuckDB file at {path}: nothing to compact", path=args.config, key=key)
        if not _looks_like_duckdb(path):  # was: exit 3, as if the file were in use
            raise ConfigError(f"{path} is not a DuckDB database; check {key}", path=args.config, key=key)
        report = compact(path, keep_backup=args.keep_backup)
    except ConfigError as exc:
        if exc.path is None:  # was: store.backend refused without naming the file
            exc = ConfigError(exc.detail, path=args.config, key=exc.key)
        print(f"infersight: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except StoreUnavailable as exc:
        print(f"infersight: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except StoreError as exc:
        print(f"infersight: {exc}; the old file is unchanged", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return EXIT_OK
    mib = 2**20
    print(f"compacted {report.path}: {report.bytes_before / mib:.1f} MiB -> {report.bytes_after / mib:.1f} MiB "
          f"({report.saved_bytes / mib:.1f} MiB freed; {100 * report.free_ratio_before:.0f}% of it was free space) "
          f"in {report.seconds:.1f} s")
    width = max((len(t) for t in report.tables), default=5)
    for table, rows in report.tables.items():
        print(f"  {table:<{width}}  {rows:>12,} rows")
    print(f"  schema version {report.schema_version}")
    if report.backup:
        print(f"old file kept as {report.backup}")
    return EXIT_OK
