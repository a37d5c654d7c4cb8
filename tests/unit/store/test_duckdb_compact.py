"""DuckDB compaction: the file shrinks, nothing is lost, and a file in use is refused clearly."""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from infersight.config import settings_from_dict
from infersight.model import RequestRecord
from infersight.store import compact_cli, duckdb_compact, schema
from infersight.store.base import RequestFilter, RetentionPolicy, StatsQuery, StoreError, StoreUnavailable
from infersight.store.duckdb_compact import compact, compact_if_fragmented
from infersight.store.duckdb_store import DuckDBStore
from infersight.store.factory import open_store
from tests.conftest import config_dict

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
HOLD = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
SCRATCH_ROWS = 1_000_000  # ~7 MiB of doubles: dropped, it leaves free blocks in the middle of the file


def records(n: int, first: int, rng: random.Random) -> list[RequestRecord]:
    """Realistic-width records (random ids and hashes), 10 s apart from ``first``."""
    return [RequestRecord(
        trace_id=rng.randbytes(16).hex(), span_id=rng.randbytes(8).hex(), tenant_id=f"t{rng.randrange(8)}",
        model_id=f"m{rng.randrange(3)}", backend="sim", started_at=(T0 + timedelta(seconds=10 * (first + i))).isoformat(),
        status_code=200 if rng.random() < 0.95 else 500, ttft_ms=rng.random() * 300, total_ms=rng.random() * 3000,
        prompt_tokens=rng.randrange(2000), completion_tokens=rng.randrange(500), prompt_hash=rng.randbytes(32).hex(),
    ) for i in range(n)]


def fill(store: DuckDBStore, n: int = 6000, batch: int = 2000, seed: int = 1) -> None:
    rng = random.Random(seed)
    for first in range(0, n, batch):
        store.write_requests(records(batch, first, rng))
    store.write_rows("telemetry", [{"ts": T0 + timedelta(seconds=i), "source": "nvml", "instance": "h1",
                                    "metric": "gpu_util", "value": float(i)} for i in range(500)])
    store.compact_rollups()


def fragment(path: str) -> None:
    """Leave free blocks between the store's data: a big table written first, dropped last."""
    con = duckdb.connect(path)
    try:
        con.execute(f"CREATE TABLE scratch AS SELECT random() AS x FROM range({SCRATCH_ROWS})").fetchall()
        con.execute("CHECKPOINT").fetchall()
    finally:
        con.close()


def drop_scratch(path: str) -> None:
    con = duckdb.connect(path)
    try:
        con.execute("DROP TABLE scratch").fetchall()
        con.execute("CHECKPOINT").fetchall()
    finally:
        con.close()


def snapshot(store: DuckDBStore) -> dict[str, Any]:
    """What a reader sees: counts, a page of rows, stats, the schema version."""
    flt = RequestFilter()
    return {"count": store.count_requests(flt), "page": store.list_requests(flt, limit=50).data,
            "stats": store.stats(StatsQuery(since=T0, until=T0 + timedelta(days=2), group_by=("model_id",))),
            "version": store.schema_version()}


@pytest.fixture(scope="module")
def fragmented_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """Built once: a closed store file with ~7 MiB of free blocks and 6,000 requests, and what it reads back."""
    path = str(tmp_path_factory.mktemp("template") / "infersight.duckdb")
    fragment(path)
    store = DuckDBStore(path)
    store.migrate()
    fill(store)
    seen = snapshot(store)
    store.close()
    drop_scratch(path)
    return path, seen


@pytest.fixture
def fragmented(fragmented_template: tuple[str, dict[str, Any]], tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A fresh copy of the template for one test."""
    template, seen = fragmented_template
    path = str(tmp_path / "store" / "infersight.duckdb")
    os.makedirs(os.path.dirname(path))
    shutil.copyfile(template, path)
    return path, seen


def test_compact_shrinks_the_file_and_keeps_every_row(fragmented: tuple[str, dict[str, Any]]) -> None:
    path, seen = fragmented
    before = os.path.getsize(path)
    report = compact(path)
    assert report.bytes_before == before and report.bytes_after == os.path.getsize(path)
    assert report.bytes_after < 0.6 * before and report.free_ratio_before > 0.4
    assert report.tables["requests"] == 6000 and report.tables["telemetry"] == 500
    assert report.tables["schema_version"] == schema.SCHEMA_VERSION and report.schema_version == schema.SCHEMA_VERSION
    assert report.backup is None
    assert sorted(os.listdir(os.path.dirname(path))) == ["infersight.duckdb"]  # no .bak, .wal or temp file left

    store = DuckDBStore(path)
    try:
        assert store.migrate() == schema.SCHEMA_VERSION  # a no-op: the version rows came along
        assert snapshot(store) == seen
        assert store.write_requests(records(10, 0, random.Random(1))) == 0  # still deduplicated
        assert store.write_requests(records(100, 10_000, random.Random(2))) == 100
        assert store.count_requests(RequestFilter()) == 6100
    finally:
        store.close()


def test_compact_keeps_sequences_views_and_macros(fragmented: tuple[str, dict[str, Any]]) -> None:
    path, _ = fragmented
    con = duckdb.connect(path)
    try:
        for sql in ("CREATE SEQUENCE ids START 10", "SELECT nextval('ids')", "SELECT nextval('ids')",
                    "CREATE VIEW ok_requests AS SELECT * FROM requests WHERE status_code < 400",
                    "CREATE MACRO twice(x) AS 2 * x"):
            con.execute(sql).fetchall()
        ok = con.execute("SELECT count(*) FROM ok_requests").fetchall()[0][0]
    finally:
        con.close()
    compact(path)
    con = duckdb.connect(path)
    try:
        assert con.execute("SELECT nextval('ids')").fetchall()[0][0] > 11  # continues, never repeats
        assert con.execute("SELECT count(*) FROM ok_requests").fetchall()[0][0] == ok
        assert con.execute("SELECT twice(21)").fetchall()[0][0] == 42
    finally:
        con.close()


def test_compact_can_keep_the_old_file(fragmented: tuple[str, dict[str, Any]]) -> None:
    path, _ = fragmented
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    report = compact(path, keep_backup=True)
    assert report.backup == path + ".bak"
    assert hashlib.sha256(Path(report.backup).read_bytes()).hexdigest() == digest
    assert os.path.getsize(path) < os.path.getsize(report.backup)


def test_a_copy_that_does_not_verify_leaves_the_old_file(fragmented: tuple[str, dict[str, Any]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = fragmented
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    real = duckdb_compact._contents
    calls: list[int] = []

    def lossy(con: duckdb.DuckDBPyConnection, catalog: str) -> tuple[dict[str, int], set[str], int]:
        counts, objects, version = real(con, catalog)
        calls.append(1)
        if len(calls) == 2:  # the copy, read back from disk
            counts["requests"] -= 1
        return counts, objects, version

    monkeypatch.setattr(duckdb_compact, "_contents", lossy)
    with pytest.raises(StoreError, match="the copy differs"):
        compact(path)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    assert sorted(os.listdir(os.path.dirname(path))) == ["infersight.duckdb"]


def test_compact_refuses_a_file_another_process_holds(tmp_path: Path) -> None:
    path = str(tmp_path / "held.duckdb")
    DuckDBStore(path).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreUnavailable) as err:
            compact(path)
        message = str(err.value)
        assert path in message and f"PID {holder.pid}" in message
        assert "stop the gateway/ingest worker first" in message
        assert compact_if_fragmented(path, 0.01, 0) is None  # at open: left to the store's own error
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert not os.path.exists(path + duckdb_compact.TMP_SUFFIX)


def test_compact_refuses_a_file_this_process_has_open(tmp_path: Path) -> None:
    path = str(tmp_path / "open.duckdb")
    store = DuckDBStore(path)
    try:
        store.migrate()
        with pytest.raises(StoreUnavailable, match=r"open in this process: use DuckDBStore.compact\(\)"):
            compact(path)
        assert store.count_requests(RequestFilter()) == 0
    finally:
        store.close()


def test_compact_at_open_only_past_the_threshold(fragmented: tuple[str, dict[str, Any]]) -> None:
    path, _ = fragmented
    size = os.path.getsize(path)
    assert compact_if_fragmented(path, 0.95, 0) is None  # ~50% free: below the ratio
    assert compact_if_fragmented(path, 0.3) is None  # ~7 MiB free: below the 32 MiB floor
    assert os.path.getsize(path) == size
    report = compact_if_fragmented(path, 0.3, min_free_bytes=1 << 20)
    assert report is not None and report.bytes_after == os.path.getsize(path) < size
    assert compact_if_fragmented(path, 0.3, 0) is None  # nothing left to give back


def test_open_store_compacts_when_configured(fragmented: tuple[str, dict[str, Any]], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, seen = fragmented
    monkeypatch.setattr(duckdb_compact, "MIN_FREE_BYTES", 1 << 20)
    size = os.path.getsize(path)
    settings = settings_from_dict(config_dict(tmp_path / "data", store={"path": path, "compact_at_start_free_ratio": 0.3}))
    store = open_store(settings)
    try:
        assert os.path.getsize(path) < 0.6 * size
        assert isinstance(store, DuckDBStore) and snapshot(store) == seen
    finally:
        store.close()


def test_the_store_compacts_itself_while_writes_and_reads_go_on(fragmented: tuple[str, dict[str, Any]]) -> None:
    path, seen = fragmented
    size = os.path.getsize(path)
    store = DuckDBStore(path)
    errors: list[BaseException] = []
    started = threading.Event()
    batches = [records(200, 20_000 + 200 * b, random.Random(100 + b)) for b in range(15)]

    def write() -> None:
        try:
            for batch in batches:
                started.set()
                assert store.write_requests(batch) == len(batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(30):
                store.count_requests(RequestFilter())
                store.list_requests(RequestFilter(), limit=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    try:
        for t in threads:
            t.start()
        started.wait(10)
        report = store.compact()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        assert report.tables["telemetry"] == 500 and report.bytes_after < 0.6 * size
        assert store.count_requests(RequestFilter()) == 6000 + 3000
        assert store.schema_version() == seen["version"]
        assert store.write_requests(records(5, 40_000, random.Random(9))) == 5
    finally:
        store.close()
    assert not os.path.exists(path + ".bak") and not os.path.exists(path + duckdb_compact.TMP_SUFFIX)
    again = DuckDBStore(path)
    try:
        assert again.count_requests(RequestFilter()) == 9005
    finally:
        again.close()


def test_a_swap_that_cannot_reopen_cleanly_is_rolled_back(fragmented: tuple[str, dict[str, Any]]) -> None:
    """Another connection of this process keeps the old database alive (DuckDB caches one instance per
    path): reopening the path would hand it back, so the old file is restored and the store goes on."""
    path, seen = fragmented
    store = DuckDBStore(path)
    kept = duckdb.connect(path)  # the same instance as the store's
    try:
        with pytest.raises(StoreError, match="still holds the old file"):
            store.compact()
        assert snapshot(store) == seen
        assert store.write_requests(records(10, 50_000, random.Random(5))) == 10
        assert sorted(os.listdir(os.path.dirname(path))) == ["infersight.duckdb", "infersight.duckdb.wal"]
    finally:
        kept.close()
        store.close()
    again = DuckDBStore(path)
    try:
        assert again.count_requests(RequestFilter()) == seen["count"] + 10
    finally:
        again.close()


def test_the_store_compacts_after_retention(tmp_path: Path) -> None:
    """Deleted rows inside kept row groups are not free blocks, yet the copy leaves them out too."""
    store = DuckDBStore(str(tmp_path / "r.duckdb"))
    try:
        store.migrate()
        fill(store, n=8000)
        store.apply_retention(T0 + timedelta(days=1, hours=12), RetentionPolicy(requests_days=1))
        kept = store.count_requests(RequestFilter())
        report = store.compact()
        assert 0 < kept < 8000 and report.tables["requests"] == kept
        assert report.bytes_after < report.bytes_before
        assert store.count_requests(RequestFilter()) == kept
    finally:
        store.close()


def test_a_closed_store_does_not_compact(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "c.duckdb"))
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.compact()


# -- the CLI --------------------------------------------------------------------------------------

def _args(config: Path, **extra: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compact_cli.add_arguments(parser)
    return parser.parse_args(["--config", str(config), *(f"--{k.replace('_', '-')}" for k, v in extra.items() if v)])


def _config(tmp_path: Path, **store: Any) -> Path:
    file = tmp_path / "infersight.yaml"
    file.write_text(yaml.safe_dump(config_dict(tmp_path / "data", store=store) if store else config_dict(tmp_path / "data")))
    return file


def test_cli_compacts_the_configured_file(fragmented: tuple[str, dict[str, Any]], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = fragmented
    config = _config(tmp_path, path=path)
    assert compact_cli.run(_args(config, keep_backup=True)) == compact_cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"compacted {path}" in out and "requests" in out and "6,000 rows" in out and ".bak" in out


def test_cli_says_to_stop_the_owner_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    path = tmp_path / "data" / "infersight.duckdb"
    path.parent.mkdir(parents=True)
    DuckDBStore(str(path)).close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert compact_cli.run(_args(config)) == compact_cli.EXIT_IN_USE
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert "stop the gateway/ingest worker first" in capsys.readouterr().err


def test_cli_refuses_clickhouse_and_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compact_cli.run(_args(_config(tmp_path))) == compact_cli.EXIT_INPUT
    assert "no DuckDB file" in capsys.readouterr().err
    clickhouse = _config(tmp_path, backend="clickhouse", url="http://127.0.0.1:8123")
    assert compact_cli.run(_args(clickhouse)) == compact_cli.EXIT_INPUT
    assert "store.backend" in capsys.readouterr().err
