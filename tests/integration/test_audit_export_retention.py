"""Audit of the Parquet export and of retention: bugs a platform team would hit, and the gaps around them.

Real engines throughout: DuckDB, ClickHouse embedded through chdb (the contract suite's factory),
pyarrow and DuckDB reading the exported folder back, and real child processes where a crash or a
second process is the point. Store times lie in 2096 where ClickHouse is involved (its TTL judges
rows by the wall clock at insert, docs/store.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from infersight.export.parquet import export_parquet, window_key
from infersight.model import RequestRecord
from infersight.store.base import Page, RequestFilter, RetentionPolicy, StatsQuery, Store, StoreUnavailable
from infersight.store.clickhouse_store import ClickHouseStore
from infersight.store.duckdb_store import DuckDBStore
from tests.contract.conftest import open_backend
from tests.contract.test_store import full_record, rec

UTC = timezone.utc
T0 = datetime(2096, 11, 20, tzinfo=UTC)  # a midnight
PARTITION_COLUMNS = ("date", "tenant", "model")
ROOT = Path(__file__).resolve().parents[2]


def duckdb_store(path: Path) -> DuckDBStore:
    store = DuckDBStore(str(path))
    store.migrate()
    return store


def hourly(n: int, start: datetime, tenant: str = "acme", first: int = 1) -> list[RequestRecord]:
    return [rec(first + i, start + timedelta(hours=i), tenant=tenant, total_ms=100.0 + i, prompt_tokens=i)
            for i in range(n)]


def visible(out: Path) -> list[dict[str, Any]]:
    """What a reader sees: every row under ``out`` through DuckDB's ``**/*.parquet`` glob."""
    if not any(out.rglob("*.parquet")):
        return []
    return duckdb.sql(f"SELECT trace_id, tenant_id FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true) "
                      "ORDER BY trace_id").to_arrow_table().to_pylist()


def exported_ids(out: Path) -> list[str]:
    """Trace ids of the rows pyarrow's dataset reader finds (it skips dot folders, DuckDB does not)."""
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table(columns=["trace_id"])
    return sorted(table.column("trace_id").to_pylist())


class FailingPages:
    """A real store whose ``list_requests`` calls ``on_page`` before each page: a reader's look at the
    folder mid-run, or an outage (``StoreUnavailable``), which no real engine produces on cue."""

    def __init__(self, store: Store, on_page: Callable[[int], None]) -> None:
        self.store, self.on_page, self.pages = store, on_page, 0

    def list_requests(self, flt: RequestFilter, limit: int = 100, cursor: str | None = None) -> Page:
        self.pages += 1
        self.on_page(self.pages)
        return self.store.list_requests(flt, limit=limit, cursor=cursor)


def paged(store: Store, on_page: Callable[[int], None]) -> Store:
    """``store`` with ``on_page`` called before each page (only ``list_requests`` is what the export uses)."""
    return cast(Store, FailingPages(store, on_page))


# -- export: the tenant filter --------------------------------------------------------------------------


def test_an_empty_tenant_filter_is_refused_and_the_full_export_stays(tmp_path: Path, capsys: Any) -> None:
    """Was: ``tenant_id=""`` (``--tenant "$TENANT"`` with the variable unset, in a daily job) hashed to
    the same ``<window>`` as the all-tenant export, matched no row, and so "replaced" that export: the
    day's complete files were deleted and nothing written (rows=0, replaced=N). Now the API raises
    and the CLI says what to pass; the earlier export is untouched."""
    from infersight.cli import main

    data = tmp_path / "data"
    data.mkdir()
    store = duckdb_store(data / "infersight.duckdb")
    store.write_requests(hourly(24, T0) + hourly(24, T0, tenant="globex", first=100))
    out = tmp_path / "out"
    day = (T0, T0 + timedelta(days=1))
    full = export_parquet(store, *day, out)
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    assert full.rows == 48 and before
    with pytest.raises(ValueError, match="tenant_id is empty"):
        export_parquet(store, *day, out, tenant_id="")
    store.close()
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before

    config = tmp_path / "gw.yaml"
    config.write_text("backends: [{name: a, url: 'http://127.0.0.1:9/v1', models: [m]}]\n"
                      f"tenants: [{{id: acme, api_keys: [k]}}]\nstorage: {{path: '{data}'}}\n")
    with pytest.raises(SystemExit) as exc:
        main(["export", "parquet", "--config", str(config), "--since", day[0].isoformat(),
              "--until", day[1].isoformat(), "--tenant", "", "--out", str(out)])
    assert "--tenant is empty" in str(exc.value) and "leave --tenant out" in str(exc.value)
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    assert len(visible(out)) == 48


# -- export: crash safety ---------------------------------------------------------------------------------


def test_a_run_in_progress_is_invisible_until_it_is_whole(tmp_path: Path) -> None:
    """Was: each chunk of a run was written straight to its final ``*.parquet`` name, so a reader
    during a re-export saw the earlier export plus the chunks written so far (rows twice). Now the
    run stages its files out of sight and renames them in at the end: at every page the folder
    reads back as exactly the earlier export, and afterwards as exactly the new one."""
    store = duckdb_store(tmp_path / "s.duckdb")
    store.write_requests(hourly(40, T0))
    out = tmp_path / "out"
    window = (T0, T0 + timedelta(days=2))
    export_parquet(store, *window, out)
    earlier = visible(out)
    assert len(earlier) == 40
    seen: list[list[dict[str, Any]]] = []
    store.write_requests(hourly(8, T0 + timedelta(days=1, hours=16), first=500))  # a late replay: 8 more rows
    again = export_parquet(paged(store, lambda _: seen.append(visible(out))), *window, out, page_rows=5, chunk_rows=10)
    store.close()
    assert again.rows == 48 and again.files >= 4 and len(seen) == 10
    assert all(rows == earlier for rows in seen)  # chunks already written stayed out of sight
    assert len(visible(out)) == 48 and exported_ids(out) == [r["trace_id"] for r in visible(out)]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # the staging folder is gone


def test_a_failed_re_export_leaves_the_earlier_export_exactly(tmp_path: Path) -> None:
    """Was: a run that failed midway (the store went away on page 4) left the chunks it had written
    as complete-looking ``*.parquet`` files beside the earlier export, so readers counted those rows
    twice until someone ran it again. Now the failure removes its staged files and the earlier
    export reads back unchanged."""
    store = duckdb_store(tmp_path / "s.duckdb")
    store.write_requests(hourly(30, T0))
    out = tmp_path / "out"
    export_parquet(store, None, None, out)
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}

    def outage(page: int) -> None:
        if page == 4:
            raise StoreUnavailable("clickhouse went away")

    with pytest.raises(StoreUnavailable):
        export_parquet(paged(store, outage), None, None, out, page_rows=4, chunk_rows=4)
    store.close()
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    assert len(visible(out)) == 30
    assert [p for p in out.rglob("*") if p.is_file() and p not in before] == []  # no leftovers at all


KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from infersight.export.parquet import export_parquet
    from infersight.store.duckdb_store import DuckDBStore
    store = DuckDBStore(sys.argv[1])
    inner = store.list_requests
    calls = []
    def list_requests(flt, limit=100, cursor=None):
        calls.append(1)
        if len(calls) == 5:  # two chunks are on disk by now
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(flt, limit=limit, cursor=cursor)
    store.list_requests = list_requests
    export_parquet(store, None, None, sys.argv[2], page_rows=4, chunk_rows=8)
""")


def test_a_killed_export_leaves_nothing_a_reader_picks_up(tmp_path: Path) -> None:
    """Fills a gap (crash safety, with a real SIGKILL): the files a killed run had written are not
    seen by pyarrow or by DuckDB's ``**/*.parquet`` glob, the earlier export reads back whole, and
    the next successful run of the window removes the dead run's staging folder."""
    db = tmp_path / "s.duckdb"
    store = duckdb_store(db)
    store.write_requests(hourly(30, T0))
    out = tmp_path / "out"
    export_parquet(store, None, None, out)
    store.close()
    earlier = visible(out)
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(db), str(out)], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert visible(out) == earlier and len(exported_ids(out)) == 30  # no reader sees the killed run's chunks
    assert len([p for p in out.rglob("*") if p.is_file() and ".staging-" in str(p)]) >= 2  # though it wrote them
    store = duckdb_store(db)
    rerun = export_parquet(store, None, None, out)
    store.close()
    assert rerun.rows == 30 and rerun.replaced >= 1
    assert visible(out) == earlier
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]


# -- export: windows and time zones -------------------------------------------------------------------------


def test_adjacent_windows_in_any_offset_export_each_row_once(tmp_path: Path) -> None:
    """Fills a gap: rows at exactly a window's start and end (local midnights of UTC+05:30, and UTC
    midnight inside a window) land in exactly one of two adjacent windows; ``date=`` is the UTC day;
    the same window spelt in another offset is the same export, so it replaces rather than doubles."""
    ist = timezone(timedelta(hours=5, minutes=30))
    day1 = datetime(2096, 11, 20, tzinfo=ist)
    day2, day3 = day1 + timedelta(days=1), day1 + timedelta(days=2)
    stamps = [day1, day1 + timedelta(microseconds=1), day2 - timedelta(microseconds=1), day2,
              T0 + timedelta(days=1), day3 - timedelta(microseconds=1), day3]  # day3: outside both
    store = duckdb_store(tmp_path / "s.duckdb")
    store.write_requests([rec(i + 1, t) for i, t in enumerate(stamps)])
    out = tmp_path / "out"
    first = export_parquet(store, day1, day2, out)
    second = export_parquet(store, day2, day3, out)
    assert (first.rows, second.rows) == (3, 3)
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    got = sorted(zip(table.column("started_at").to_pylist(), table.column("date").to_pylist(), strict=True))
    assert got == [(t.astimezone(UTC), t.astimezone(UTC).date().isoformat()) for t in sorted(stamps[:-1])]
    assert window_key(day1, day2, None) == window_key(day1.astimezone(UTC), day2.astimezone(UTC), None)
    again = export_parquet(store, day1.astimezone(UTC), day2.astimezone(UTC), out)  # the same window in UTC
    store.close()
    assert again.replaced == first.files
    assert len(exported_ids(out)) == 6 == len(set(exported_ids(out)))


# -- export: what reads back --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["duckdb", "clickhouse"])
def test_the_export_reads_back_as_the_store_has_it(engine: str, tmp_path: Path) -> None:
    """Fills a gap: every column of every row, read back with pyarrow and DuckDB, equals what the
    store returns (DuckDB and ClickHouse): times stay tz-aware UTC instants with microseconds, null
    ints stay null int64 (not float NaN), large and non-ASCII strings arrive whole."""
    store = open_backend(engine, tmp_path)
    store.migrate()
    big = "x" * 1_000_000 + " ✓ 日本語"
    sparse = rec(2, T0 + timedelta(hours=1, microseconds=7), prompt_text=big, ttft_ms=None, prompt_tokens=None)
    store.write_requests([full_record(), sparse, rec(3, T0 - timedelta(seconds=1), model="openai/gpt-4o")])
    rows = sorted(store.list_requests(RequestFilter(), limit=10).data, key=lambda r: r["trace_id"])
    out = tmp_path / "out"
    assert export_parquet(store, None, None, out).rows == 3
    store.close()

    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("prompt_tokens").type == pa.int64()
    assert table.schema.field("stream").type == pa.bool_()
    back = sorted(table.drop_columns(list(PARTITION_COLUMNS)).to_pylist(), key=lambda r: r["trace_id"])
    assert back == rows
    assert back[0]["prompt_tokens"] is None and back[0]["prompt_text"] == big  # sparse: trace_id 0...02

    frame = duckdb.sql(f"SELECT * EXCLUDE (date, tenant, model) FROM read_parquet('{out}/**/*.parquet', "
                       "hive_partitioning=true) ORDER BY trace_id")
    types = dict(zip(frame.columns, (str(t) for t in frame.types), strict=True))
    assert types["started_at"] == "TIMESTAMP WITH TIME ZONE" and types["prompt_tokens"] == "BIGINT"
    assert frame.to_arrow_table().to_pylist() == rows  # tz-aware instants compare equal


# -- retention: rollups and stats ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["duckdb", "clickhouse"])
def test_stats_count_every_stored_request_when_rollups_days_is_shorter(engine: str, tmp_path: Path) -> None:
    """Was: with ``rollups_days`` below ``requests_days`` (rollups 30 days, raw rows 90), retention
    deleted the rollups of requests it kept, and stats over that window, which read the rollups,
    said 0 requests while 50 were stored and listed. Now request rollups are kept at least
    ``requests_days``: stats over any window retention left whole agree with the raw rows."""
    now = datetime(2096, 12, 1, tzinfo=UTC)
    store = open_backend(engine, tmp_path)
    store.migrate()
    store.write_requests(hourly(50, now - timedelta(days=60)))
    policy = RetentionPolicy(requests_days=90, rollups_days=30)
    window = StatsQuery(since=now - timedelta(days=70), until=now - timedelta(days=50))
    try:
        removed = store.apply_retention(now, policy)
        (row,) = store.stats(window)
        assert row["source"].startswith("rollup_")
        assert row["requests"] == store.count_requests(RequestFilter(since=window.since, until=window.until)) == 50
        assert removed["requests"] == 0 and removed["request_rollups_1m"] == 0
        later = now + timedelta(days=40)  # now the requests go, and their rollups with them
        gone = store.apply_retention(later, policy)
        assert (gone["requests"], gone["request_rollups_1m"]) == (50, 50)
        assert set(store.apply_retention(later, policy).values()) == {0}
    finally:
        store.close()


def test_clickhouse_ttl_keeps_request_rollups_as_long_as_requests(tmp_path: Path) -> None:
    """Was: the rollup tables' TTL on a ClickHouse server said ``rollups_days`` alone, so with
    rollups 30 days and requests 90 a background merge removed rollups of stored requests, and stats
    read 0 for them. The TTL now keeps them ``max(rollups_days, requests_days)`` days (the engine's
    own TTL, forced by OPTIMIZE FINAL, on the wall clock: hence times relative to now here)."""
    policy = RetentionPolicy(requests_days=90, rollups_days=30)
    store = ClickHouseStore.embedded(str(tmp_path / "chdb"), retention=policy, ttl_merges=True)
    try:
        store.migrate()
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        store.write_requests(hourly(24, now - timedelta(days=60)))
        for name in ("request_rollups_1m", "request_rollups_1h", "request_rollups_1d", "request_rollups_7d"):
            store._exec.command(f"OPTIMIZE TABLE infersight.{name} FINAL")
        since, until = now - timedelta(days=70), now - timedelta(days=50)
        (row,) = store.stats(StatsQuery(since=since, until=until))
        assert row["requests"] == store.count_requests(RequestFilter(since=since, until=until)) == 24
    finally:
        store.close()


@pytest.mark.parametrize("engine", ["duckdb", "clickhouse"])
def test_retention_on_an_empty_store_touches_nothing(engine: str, tmp_path: Path) -> None:
    """Fills a gap: the first retention run of a fresh install (before any traffic) succeeds on both
    engines and reports every table, all zero."""
    store = open_backend(engine, tmp_path)
    store.migrate()
    try:
        removed = store.apply_retention(datetime(2096, 12, 1, tzinfo=UTC), RetentionPolicy(text_days=0))
    finally:
        store.close()
    assert {"requests", "eval_results", "telemetry", "cost_lines", "request_content", "requests_text",
            "request_rollups_1m", "request_rollups_7d", "correlation_rollups_1h"} <= set(removed)
    assert set(removed.values()) == {0}


# -- retention: one process deletes ------------------------------------------------------------------------


RETENTION_CHILD = textwrap.dedent("""
    import logging, sys, time
    from infersight.retention import RetentionLoop
    from infersight.runtime_telemetry import FileLeader
    from infersight.store.base import RetentionPolicy
    from infersight.store.duckdb_store import DuckDBStore
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    store = DuckDBStore(sys.argv[1])
    store.migrate()
    loop = RetentionLoop(store, RetentionPolicy(), interval_s=0.05, leader=FileLeader(sys.argv[2]))
    loop.start()
    print("started", flush=True)
    time.sleep(120)
""")


def test_only_one_process_runs_retention_and_another_takes_over_when_it_dies(tmp_path: Path) -> None:
    """Fills a gap: two processes with a retention loop on one lock file (``FileLeader``, as
    ``--workers N`` wires it). While the first lives, the second never deletes; once the first is
    SIGKILLed (the kernel drops its flock, no clean release), the second takes over."""
    lock = tmp_path / "retention.lock"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "a.log", tmp_path / "b.log"]

    def runs(log: Path) -> int:
        return log.read_text().count("retention applied") if log.exists() else 0

    def wait_for(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    try:
        for name, log in zip("ab", logs, strict=True):
            with log.open("wb") as f:
                procs.append(subprocess.Popen([sys.executable, "-u", "-c", RETENTION_CHILD,
                                               str(tmp_path / f"{name}.duckdb"), str(lock)],
                                              cwd=ROOT,
                                              stdout=f, stderr=subprocess.STDOUT))
            wait_for(lambda log=log: "started" in (log.read_text() if log.exists() else ""), f"{name} to start")
        wait_for(lambda: runs(logs[0]) >= 3, "the leader's rounds")
        wait_for(lambda: "started" in logs[1].read_text(), "b")
        assert runs(logs[1]) == 0  # b has seen a's lock at every round so far
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        wait_for(lambda: runs(logs[1]) >= 2, "b to take over")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


RETENTION_KILLED = textwrap.dedent("""
    import sys
    from datetime import datetime, timezone
    from infersight.store.base import RetentionPolicy
    from infersight.store.duckdb_store import DuckDBStore
    store = DuckDBStore(sys.argv[1])
    print("go", flush=True)
    store.apply_retention(datetime.fromisoformat(sys.argv[2]), RetentionPolicy(requests_days=30, text_days=7))
    print("done", flush=True)
""")


def test_a_retention_run_killed_midway_is_finished_by_the_next(tmp_path: Path) -> None:
    """Fills a gap: the process running retention on DuckDB is SIGKILLed while it works (folding
    rollups, deleting, nulling text: whatever it had reached). The file opens again, and the next
    run leaves exactly what one whole run leaves: recent rows whole, old rows gone, text past
    ``text_days`` nulled and its content rows deleted, stats over the kept days equal to the rows."""
    now = datetime(2096, 12, 1, tzinfo=UTC)
    db = tmp_path / "s.duckdb"
    store = duckdb_store(db)
    minute = timedelta(minutes=1)
    store.write_requests([rec(i + 1, now - timedelta(days=60) + i * 4 * minute, prompt_text="p", completion_text="c")
                          for i in range(20_000)])  # 60 to ~4.5 days ago
    store.write_rows("request_content", [{"trace_id": f"{i + 1:032x}", "span_id": f"{i + 1:016x}", "tenant_id": "acme",
                                          "model_id": "m1", "started_at": now - timedelta(days=60) + i * 4 * minute,
                                          "prompt_text": "[EMAIL] asks"} for i in range(0, 20_000, 10)])
    store.close()
    proc = subprocess.Popen([sys.executable, "-c", RETENTION_KILLED, str(db), now.isoformat()], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"go"
        time.sleep(0.2)  # into the run (if it already finished, the rerun below must still agree)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    store = duckdb_store(db)
    try:
        store.apply_retention(now, RetentionPolicy(requests_days=30, text_days=7))
        ages = [timedelta(days=60) - i * 4 * minute for i in range(20_000)]
        kept = [a for a in ages if a <= timedelta(days=30)]
        with_text = [a for a in ages if a <= timedelta(days=7)]
        assert store.count_requests(RequestFilter()) == len(kept)
        texts = store.count_requests(RequestFilter(since=now - timedelta(days=7)))
        assert texts == len(with_text)
        old = store.list_requests(RequestFilter(until=now - timedelta(days=7)), limit=5).data
        assert old and all(r["prompt_text"] is None and r["completion_text"] is None for r in old)
        new = store.list_requests(RequestFilter(since=now - timedelta(days=7)), limit=5).data
        assert new and all(r["prompt_text"] == "p" for r in new)
        assert [i for i in range(0, 20_000, 10) if store.content_for(f"{i + 1:032x}")] == [
            i for i in range(0, 20_000, 10) if ages[i] <= timedelta(days=7)]
        window = StatsQuery(since=now - timedelta(days=28), until=now - timedelta(days=1))
        (row,) = store.stats(window)
        assert row["requests"] == store.count_requests(RequestFilter(since=window.since, until=window.until))
        assert set(store.apply_retention(now, RetentionPolicy(requests_days=30, text_days=7)).values()) == {0}
    finally:
        store.close()
