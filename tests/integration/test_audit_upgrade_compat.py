"""Audit of upgrades in place: what an earlier infersight left on disk must still work after the upgrade.

Each test lays down a file in the shape an earlier commit wrote it (read from ``git show <rev>:<path>``;
the commit is named in the docstring), then runs today's code on it: real DuckDB, the real memory bus
and journal, the real ``infersight eval calibrate`` and query API, the real redrive inbox. Expected: no
crash and no silent loss.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from infersight.api.app import QueryApi
from infersight.bus.memory import MemoryBus
from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.evaluation.redrive import INBOX, RedriveInbox
from infersight.gateway.tenancy import TenantDirectory
from infersight.model import EvalTask
from infersight.store.base import StatsQuery
from infersight.store.duckdb_schema import MIGRATIONS, migrate, run
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import CaptureExporter
from tests.unit.api.test_calibrations_api import calibrated
from tests.unit.bus.helpers import make_record

ACME = {"authorization": "Bearer sk-acme-test"}
ADMIN = {"authorization": "Bearer sk-admin-test"}
RECENT = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


async def get(api: QueryApi, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
        return await client.get(path, **kwargs)


# -- the DuckDB store file ---------------------------------------------------------------------------


def test_a_schema_v2_file_written_before_the_6h_and_7d_rollups_still_opens(tmp_path: Path) -> None:
    """Commit 4cd8347 shipped schema step 2 as "request rollups per minute, hour and day": a file it
    migrated holds ``request_rollups_1m``, ``_1h`` and ``_1d`` and records version 2. Commit 8876d65
    then edited step 2 in place to also create ``_6h`` and ``_7d`` instead of adding a step, so
    today's ``migrate`` skips step 2 on that file and step 5 (``to_alpha``) runs ``UPDATE
    request_rollups_6h`` on a table that is not there: the migration fails, the store cannot open,
    and the gateway does not start on its own data."""
    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    migrate(con, MIGRATIONS[:2])
    for table in ("request_rollups_6h", "request_rollups_7d"):  # what 4cd8347's step 2 did not create
        run(con, f"DROP TABLE {table}")
    run(con, "UPDATE schema_version SET description = 'request rollups per minute, hour and day' WHERE version = 2")
    for column in ("instance", "engine_inference_ms", "trace_flags"):  # added by steps 7 and 9
        run(con, f"ALTER TABLE requests DROP COLUMN {column}")
    run(con, "ALTER TABLE eval_results DROP COLUMN use_case")  # added by step 3
    old = make_record(1)
    run(con, "INSERT INTO requests (trace_id, span_id, tenant_id, model_id, backend, started_at, status_code) "
             "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [old.trace_id, old.span_id, old.tenant_id, old.model_id, old.backend, old.started_at, 200])
    con.close()

    store = DuckDBStore(path)
    try:
        store.migrate()
        now = datetime.now(timezone.utc)
        store.write_requests([make_record(2)])
        kept = store.get_requests(old.trace_id)
        stats = store.stats(StatsQuery(since=now - timedelta(days=60), until=now + timedelta(hours=1)))
    finally:
        store.close()
    assert [r["trace_id"] for r in kept] == [old.trace_id]
    assert stats and sum(int(r["requests"]) for r in stats) >= 1


# -- the journal --------------------------------------------------------------------------------------


def test_a_journal_spooled_before_slots_is_replayed_after_the_upgrade(tmp_path: Path) -> None:
    """Up to commit 02d1554 the journal kept its segments, LOCK and checkpoint directly in
    ``<storage.path>/spool/`` (docstring "Layout of directory"). Commit 5cc832e moved them into
    ``spool/slot-NNN/``, and ``Journal`` now claims a slot and adopts only other ``slot-*`` folders:
    segments an earlier gateway left undelivered at the root (a store outage, a SIGKILL) are never
    replayed nor counted, and stay on disk for ever: records silently lost across the upgrade."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "LOCK").write_bytes(b"")
    records = [make_record(i) for i in range(5)]
    (spool / "journal-000000000003.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))

    capture = CaptureExporter()
    bus = MemoryBus([capture], journal_dir=spool, flush_interval_s=0.02)
    bus.start()
    try:
        wait_for(lambda: len(capture.records) >= len(records), timeout_s=3.0)
    finally:
        bus.stop()
    assert sorted(r.trace_id for r in capture.records) == sorted(r.trace_id for r in records), bus.stats()


# -- stored calibration reports -----------------------------------------------------------------------


async def test_a_report_stored_before_the_path_hash_is_replaced_by_a_new_run_on_the_same_golden_file(
        settings: Any, tmp_path: Path, capsys: Any) -> None:
    """Until commit e6abb26 ``eval calibrate`` stored ``calibration/<version>/<golden stem>.json``
    (no ``golden_sha256``). Today's runs store ``<stem>-<8 hex>.json``, and docs/calibration.md says a
    new run of the same version on the same golden file replaces the old report. After the upgrade
    an operator re-runs the gate on the same golden file and it passes, but the old failed report
    stays beside it: /quality keeps saying ``calibrated: false`` for the version, and /calibrations
    lists two reports of one golden file."""
    storage = tmp_path / "data"
    golden = tmp_path / "finance" / "golden.jsonl"  # the file ``calibrated`` writes and calibrates on
    old_dir = storage / "calibration" / "judge-1"
    old_dir.mkdir(parents=True)
    old_report = {  # the shape 60e85ee..e6abb26 wrote: a failed gate on the same golden file
        "evaluator_version": "judge-1", "golden": str(golden), "dataset": "finance", "mode": "scores",
        "scores": None, "created_at": "2026-11-22T10:00:00+00:00", "n_items": 6, "n_scored": 6,
        "missing_scores": 0, "missing_ids": [], "unmatched_scores": 0, "unmatched_ids": [], "duplicate_ids": [],
        "duplicate_score_ids": [], "judge_errors": 0, "bootstrap": {"resamples": 0, "seed": 0, "level": 0.95},
        "dimensions": {"relevance": {"kind": "ordinal", "label": "relevance", "n": 6, "spearman": -0.9,
                                     "kendall": -0.8, "kappa": -0.5, "kappa_ci": None, "bias": 0.0}},
        "gate": {"min_spearman": 0.3, "min_kappa": 0.2, "max_abs_bias": None, "passed": False,
                 "failures": ["relevance: spearman -0.900 < min_spearman 0.300"]},
    }
    (old_dir / "golden.json").write_text(json.dumps(old_report, indent=2) + "\n")

    assert calibrated(tmp_path, storage, "judge-1", "finance", agree=True) == 0  # today's run: passes
    capsys.readouterr()

    store = DuckDBStore(str(tmp_path / "q.duckdb"))
    store.migrate()
    now = datetime.now(timezone.utc)
    store.write_rows("eval_results", [{
        "trace_id": f"{i:032x}", "span_id": f"{i:016x}", "tenant_id": "acme", "model_id": "sim-large",
        "evaluator": "llm_judge", "evaluator_version": "judge-1", "dimension": "relevance", "score": 4.0,
        "evaluated_at": now - timedelta(minutes=i), "request_started_at": now - timedelta(minutes=i)}
        for i in range(3)])
    try:
        api = QueryApi(store, TenantDirectory(settings), calibrations=CalibrationIndex(storage, cache_s=0))
        quality = (await get(api, "/api/v1/quality", params={"window": "1h"}, headers=ACME)).json()["data"]
        listed = (await get(api, "/api/v1/calibrations", params={"evaluator_version": "judge-1"},
                            headers=ADMIN)).json()["data"]
    finally:
        store.close()
    assert {r["evaluator_version"]: r["calibrated"] for r in quality} == {"judge-1": True}
    assert [(r["golden"], r["gate"]["passed"]) for r in listed] == [(str(golden), True)]


# -- the redrive inbox --------------------------------------------------------------------------------


def test_a_redrive_file_claimed_by_an_earlier_version_is_published_once_by_workers_starting_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before commit 9a8dce6 a claimed inbox file was named ``<name>.jsonl.claimed`` (no pid). After
    the upgrade, with ``serve --workers N``, every worker's first poll treats it as a crashed
    owner's file (``_claimant_alive`` is False without a pid) and publishes it in place, without
    claiming it for itself: a worker that starts while a peer is publishing it publishes it again,
    so each task is judged (and paid) twice, and the slower worker's ``unlink`` then raises
    FileNotFoundError out of ``poll``. 9a8dce6's stated point is that a starting worker does not
    publish a live peer's file again."""
    spool = tmp_path / "spool-evals"
    inbox = spool / INBOX
    inbox.mkdir(parents=True)
    tasks = [EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                      started_at=RECENT, status_code=200, prompt_text="q", completion_text="a",
                      sample_reason="random") for i in range(3)]
    (inbox / "00000000000000000001-deadbeef.jsonl.claimed").write_bytes(
        b"".join(orjson.dumps(t.to_dict()) + b"\n" for t in tasks))

    published: list[str] = []
    lock = threading.Lock()
    first_in, release = threading.Event(), threading.Event()

    def slow_publish(task: EvalTask) -> None:  # worker 1: its eval bus takes a moment per task
        first_in.set()
        release.wait(10)
        with lock:
            published.append(task.trace_id)

    def publish(task: EvalTask) -> None:
        with lock:
            published.append(task.trace_id)

    errors: list[BaseException] = []

    def worker_one() -> None:
        try:
            RedriveInbox(spool, slow_publish).poll()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=worker_one)
    thread.start()
    assert first_in.wait(10)
    # workers are processes: worker 2 has a pid of its own (worker 1's, this one, is alive)
    monkeypatch.setattr("infersight.evaluation.redrive.os.getpid", lambda: os.getppid())
    try:
        RedriveInbox(spool, publish).poll()  # worker 2 starts while worker 1 publishes the file
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
    finally:
        release.set()
        thread.join(10)
    assert sorted(published) == sorted(t.trace_id for t in tasks), f"published {len(published)} times"
    assert not errors, errors
