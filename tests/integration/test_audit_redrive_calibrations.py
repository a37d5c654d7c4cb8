"""Audit of two new features: replaying embedded eval dead letters (``infersight deadletter ... --stream
evals`` on the memory bus, the redrive inbox) and calibration in the query API (``/calibrations``,
``/quality``'s ``calibrated``).

Each test here pins a defect found in review and fixed with it (the docstrings say what it was). Real
files, the real CLI in-process (``infersight.cli.main``), real DuckDB, the real ASGI app over httpx.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from infersight.api.app import QueryApi
from infersight.cli import main
from infersight.evaluation.calibration_status import CalibrationIndex
from infersight.evaluation.dead_letters import FILE_NAME, JsonlDeadLetters, dead_letter_dir, spool_dir
from infersight.evaluation.redrive import INBOX, RedriveInbox, read_dead_letters
from infersight.gateway.tenancy import TenantDirectory
from infersight.model import EvalTask
from infersight.store.duckdb_store import DuckDBStore
from tests.unit.api.test_calibrations_api import calibrated

RECENT = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()  # within any text retention

SECRET = "my card is 4111 and my name is Alice Quux"


def task(i: int) -> EvalTask:
    return EvalTask(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", api="chat", started_at=RECENT, status_code=200,
                    prompt_text=f"{SECRET} {i}", completion_text=f"answer {i}", sample_reason="random")


def gateway_config(tmp_path: Path, storage: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text("backends: [{name: sim, url: 'http://127.0.0.1:9/v1', models: [sim-large]}]\n"
                    "tenants: [{id: acme, api_keys: [sk-acme-x]}]\nlogging: {level: warning}\n"
                    f"storage: {{path: '{storage}'}}\n")
    return path


def deadletter(*argv: str) -> int:
    return main(["deadletter", *argv, "--stream", "evals"])


# -- dead letters -----------------------------------------------------------------------------------


def test_a_poison_line_that_is_json_but_not_an_object_does_not_wedge_the_redrive_inbox(tmp_path: Path) -> None:
    """``replay --include-poison`` hands a poison line over as it was. A line that is JSON but not an
    object (``[1, 2]``, ``null``, ``7``: a corrupted or hand-edited dead-letter file) makes
    ``EvalTask.from_dict`` raise AttributeError, which ``RedriveInbox._publish_file`` does not catch
    (only JSONDecodeError, TypeError, ValueError). The file is renamed back and the error re-raised:
    every ``POLL_S`` the Periodic publishes the good tasks before that line again (the judge is paid
    each time), and every later inbox file, sorted after it, is never published."""
    storage = tmp_path / "data"
    dead = JsonlDeadLetters(dead_letter_dir(storage))
    dead(task(1), "evaluators failed 5 times: ValueError")
    with (dead_letter_dir(storage) / FILE_NAME).open("ab") as f:
        f.write(b"[1, 2]\n")
    config = gateway_config(tmp_path, storage)
    assert deadletter("replay", "--config", str(config), "--include-poison") == 0
    dead(task(2), "evaluators failed 5 times: ValueError")  # dead-lettered later, handed back later
    assert deadletter("replay", "--config", str(config)) == 0

    published: list[EvalTask] = []
    inbox = RedriveInbox(spool_dir(storage), published.append)
    errors = []
    for _ in range(3):  # three rounds of the gateway's poller (Periodic logs and goes on)
        try:
            inbox.poll()
        except Exception as exc:  # noqa: BLE001
            errors.append(type(exc).__name__)
    # was: (['AttributeError'] * 3, task 1 three times, task 2 never)
    assert (errors, [t.trace_id for t in published]) == ([], [task(1).trace_id, task(2).trace_id])
    assert list((spool_dir(storage) / INBOX).iterdir()) == []


def test_reason_filter_matches_the_kind_case_insensitively_as_over_redis(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """docs/bus.md: ``--reason R`` keeps entries whose kind is R or whose reason contains R
    (case-insensitive); the Redis version lowercases R before comparing it with the kind.
    ``redrive._matches`` compares the kind case-sensitively: ``--reason MAX_DELIVERIES`` finds none."""
    storage = tmp_path / "data"
    dead = JsonlDeadLetters(dead_letter_dir(storage))
    dead(task(1), "evaluators failed 5 times: ValueError")
    dead(task(2), "evaluators failed 5 times: KeyError")
    config = gateway_config(tmp_path, storage)
    capsys.readouterr()
    assert deadletter("list", "--config", str(config), "--reason", "max_deliveries", "--json") == 0
    assert orjson.loads(capsys.readouterr().out)["total"] == 2
    assert deadletter("list", "--config", str(config), "--reason", "MAX_DELIVERIES", "--json") == 0
    assert orjson.loads(capsys.readouterr().out)["total"] == 2


def test_a_dry_run_changes_nothing_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--dry-run`` "changes nothing" (docs/bus.md), yet ``hand_back`` takes the lock first and
    ``dead_letters.locked`` creates ``<storage.path>/spool-evals/dead-letter/.lock`` and every folder
    above it: a dry run against a config whose storage.path is wrong (or not created yet) makes it."""
    storage = tmp_path / "not-there"
    config = gateway_config(tmp_path, storage)
    assert deadletter("replay", "--config", str(config), "--dry-run") == 2  # no gateway's data there: said so
    assert "storage.path" in capsys.readouterr().err
    assert not storage.exists()
    storage.mkdir()  # a gateway's folder with no eval dead letters yet
    assert deadletter("replay", "--config", str(config), "--dry-run") == 0
    assert "would hand back 0 dead letters" in capsys.readouterr().out
    assert [p.name for p in storage.iterdir()] == []


def test_an_unreadable_dead_letter_file_is_a_message_not_a_traceback(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The file is 0600 and owned by the gateway's user; an operator running the CLI as someone else
    gets EACCES. ``run_local`` catches nothing, so ``infersight.cli.main`` (which promises never to print
    a traceback) lets PermissionError escape. The test runs as root, who bypasses file modes, so the
    EACCES that a non-root operator gets is injected for that one file."""
    storage = tmp_path / "data"
    dead = JsonlDeadLetters(dead_letter_dir(storage))
    dead(task(1), "evaluators failed 5 times: ValueError")
    target = dead_letter_dir(storage) / FILE_NAME
    target.chmod(0)
    real_read = pathlib.Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    config = gateway_config(tmp_path, storage)
    for action in ("list", "replay"):
        try:
            code = deadletter(action, "--config", str(config))
        except PermissionError as exc:
            pytest.fail(f"`deadletter {action} --stream evals` raised {exc!r} instead of exiting with a message")
        err = capsys.readouterr().err
        assert code != 0 and str(target) in err and "Traceback" not in err


def test_a_listed_dead_letter_does_not_carry_the_text_in_its_repr(tmp_path: Path) -> None:
    """``redis_deadletter.DeadLetter`` keeps its payload out of repr (``field(repr=False)``, "never
    print it"); ``redrive.LocalDeadLetter.raw`` (the whole line, prompt and completion included) is in
    its repr, so a log line or an error message that formats a letter prints tenant text."""
    JsonlDeadLetters(dead_letter_dir(tmp_path))(task(1), "evaluators failed 5 times: ValueError")
    letter = read_dead_letters(dead_letter_dir(tmp_path))[0]
    assert "Alice Quux" not in repr(letter)


# -- calibrations -----------------------------------------------------------------------------------

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}
WINDOW = {"since": (NOW - timedelta(hours=1)).isoformat(), "until": (NOW + timedelta(hours=1)).isoformat()}


def judged(version: str, tag: str) -> list[dict[str, Any]]:
    return [{"trace_id": f"{tag}{i:031x}", "span_id": f"{i:016x}", "tenant_id": "acme", "model_id": "sim-large",
             "evaluator": "llm_judge", "evaluator_version": version, "dimension": "relevance", "score": 4.0,
             "evaluated_at": NOW - timedelta(minutes=i), "request_started_at": NOW - timedelta(minutes=i)}
            for i in range(3)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    db = DuckDBStore(str(tmp_path / "q.duckdb"))
    db.migrate()
    yield db
    db.close()


async def get(api: QueryApi, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api") as client:
        return await client.get(path, **kwargs)


async def test_versions_that_differ_only_in_characters_mapped_to_underscore_keep_their_own_reports(
        settings: Any, tmp_path: Path, store: DuckDBStore, capsys: pytest.CaptureFixture[str]) -> None:
    """``calibration._segment`` maps every character outside ``A-Za-z0-9._-`` to '_' and nothing else
    tells the folders apart: ``judge/1`` and ``judge:1`` share ``calibration/judge_1/``, so calibrating
    one on a golden file silently replaces the other's report (``report_path`` is the same file).
    ``standing()`` itself matches the version stored inside the report, so the one left is right; the
    one overwritten reads ``calibrated: null`` (never calibrated) and is gone from /calibrations."""
    storage = tmp_path / "data"
    assert calibrated(tmp_path, storage, "judge/1", "finance", agree=True) == 0
    assert calibrated(tmp_path, storage, "judge:1", "finance", agree=False) == 0
    capsys.readouterr()
    store.write_rows("eval_results", [*judged("judge/1", "a"), *judged("judge:1", "b")])
    api = QueryApi(store, TenantDirectory(settings), calibrations=CalibrationIndex(storage, cache_s=0))
    rows = (await get(api, "/api/v1/quality", params=WINDOW, headers=ACME)).json()["data"]
    assert {r["evaluator_version"]: r["calibrated"] for r in rows} == {"judge/1": True, "judge:1": False}
    listed = (await get(api, "/api/v1/calibrations", headers=ADMIN)).json()["data"]
    assert sorted(r["evaluator_version"] for r in listed) == ["judge/1", "judge:1"]


@pytest.mark.parametrize("content", [
    pytest.param("[" * 100_000 + "]" * 100_000, id="deeply-nested: RecursionError is not ValueError"),
    pytest.param(json.dumps({"evaluator_version": "judge-x", "dimensions": {}, "n_items": 10**30,
                             "gate": {"passed": True}}), id="integer-beyond-64-bit: orjson cannot answer it"),
])
async def test_a_malformed_report_file_is_skipped_not_a_500(settings: Any, tmp_path: Path, store: DuckDBStore,
                                                            content: str) -> None:
    """``load_calibrations`` skips files that raise OSError or ValueError only. A JSON file nested too
    deeply raises RecursionError from ``json.loads``: every /quality (tenant keys included) and
    /calibrations answers 500 for as long as the file is there. A report with an integer beyond 64 bits
    loads, and then /calibrations cannot serialise it (orjson TypeError): 500 for admins."""
    storage = tmp_path / "data"
    (storage / "calibration" / "judge-x").mkdir(parents=True)
    (storage / "calibration" / "judge-x" / "golden-00000000.json").write_text(content)
    store.write_rows("eval_results", judged("judge-x", "x"))
    api = QueryApi(store, TenantDirectory(settings), calibrations=CalibrationIndex(storage, cache_s=0))
    quality = await get(api, "/api/v1/quality", params=WINDOW, headers=ACME)
    listed = await get(api, "/api/v1/calibrations", headers=ADMIN)
    assert (quality.status_code, listed.status_code) == (200, 200), (quality.text, listed.text)
