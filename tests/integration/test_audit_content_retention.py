"""Audit: how long evaluation content (masked prompts and answers) lives, and whether the tenant's
content policy and ``retention.text_days`` hold everywhere it is kept.

Real components throughout: the gateway (``build_gateway``) served on 127.0.0.1 with its own DuckDB
store and retention loop, the simulator as engine, DuckDB and ClickHouse (chdb) stores through the
contract suite's factory, a real redis-server and the ``infersight ingest`` worker as a process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from infersight.config import settings_from_dict
from infersight.evaluation.dead_letters import JsonlDeadLetters, dead_letter_dir
from infersight.model import EvalTask, RequestRecord
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer
from infersight.store.base import RequestFilter, RetentionPolicy
from infersight.store.duckdb_store import DuckDBStore
from tests.conftest import config_dict

UTC = timezone.utc
ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}
OLD_TEXT = "zebra-old-masked-prompt [EMAIL] about order 77"
OLD_ANSWER = "zebra-old-answer"


def wait_for(fn: Callable[[], Any], timeout_s: float = 30.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _settings(data: Path, sim_url: str, acme_content: str, **overrides: Any) -> Any:
    tenants = [
        {"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": acme_content},
        {"id": "globex", "api_keys": ["sk-globex-test"], "sample_rate": 1.0},
    ]
    return settings_from_dict(config_dict(data, sim_url, tenants=tenants,
                                          evaluation={"child_process": False}, **overrides))


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(seed=5).start()
    try:
        yield server
    finally:
        server.stop()


def _serve(settings: Any) -> ThreadedServer:
    return ThreadedServer(build_gateway(settings)).start()


def _old_task(started: datetime, tenant: str = "acme", n: int = 77) -> EvalTask:
    return EvalTask(trace_id=f"{n:032x}", span_id=f"{n:016x}", tenant_id=tenant, model_id="sim-large",
                    started_at=started.isoformat(), prompt_text=OLD_TEXT, completion_text=OLD_ANSWER,
                    sample_reason="random")


def _seed_old_request(data: Path, started: datetime, n: int = 77, tenant: str = "acme") -> None:
    """A request 40 days old (inside requests_days 90) with its masked text (past text_days 30)."""
    data.mkdir(parents=True, exist_ok=True)
    store = DuckDBStore(str(data / "infersight.duckdb"))
    store.migrate()
    store.write_requests([RequestRecord(trace_id=f"{n:032x}", span_id=f"{n:016x}", tenant_id=tenant,
                                        model_id="sim-large", backend="sim", started_at=started.isoformat(),
                                        status_code=200)])
    store.write_rows("request_content", [{
        "trace_id": f"{n:032x}", "span_id": f"{n:016x}", "tenant_id": tenant, "model_id": "sim-large",
        "started_at": started, "prompt_text": OLD_TEXT, "completion_text": OLD_ANSWER, "sample_reason": "random"}])
    store.close()


# -- content policy: a tenant that opts out --------------------------------------------------------------


def test_a_tenant_that_opted_out_no_longer_has_its_text_shown_or_kept(tmp_path: Path, sim: SimServer) -> None:
    """issue 4: "a tenant may opt out: then no content is ever kept or sent, only metadata and
    hashes"; docs/api.md: the story's ``content`` is "present per the tenant's content policy and for
    text_days, else []". acme sends a request while on ``content: sampled`` (its masked text is
    stored), then opts out (``content: none``) and the gateway restarts, running retention at start.
    The story still serves acme's masked prompt and answer, and the rows stay in the store for the
    rest of ``text_days``: opting out neither hides nor forgets what was kept."""
    data = tmp_path / "data"
    gateway = _serve(_settings(data, sim.url, "sampled"))
    try:
        resp = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers=ACME, timeout=30, json={
            "model": "sim-large", "messages": [{"role": "user", "content": "What is the capital of France? "
                                                                          "Mail jo.doe@example.com"}]})
        assert resp.status_code == 200
        trace = resp.headers["x-trace-id"]

        def content() -> list[dict[str, Any]] | None:
            got = httpx.get(f"{gateway.base_url}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
            return got.json()["content"] if got.status_code == 200 and got.json()["content"] else None

        (kept,) = wait_for(content, what="acme's masked text")
        assert "capital of France" in kept["prompt_text"]
    finally:
        gateway.stop()

    gateway = _serve(_settings(data, sim.url, "none"))  # acme opted out; retention runs at start
    try:
        story = httpx.get(f"{gateway.base_url}/api/v1/requests/{trace}", headers=ACME, timeout=10).json()
        assert story["record"]["trace_id"] == trace  # the metadata stays
        assert story["content"] == [], "an opted-out tenant's masked text is still served"
    finally:
        gateway.stop()
    store = DuckDBStore(str(data / "infersight.duckdb"))
    try:
        assert store.content_for(trace) == [], "an opted-out tenant's masked text is still kept"
    finally:
        store.close()


# -- text_days and requests_days ----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["duckdb", "clickhouse"])
def test_request_text_does_not_outlive_its_request(engine: str, tmp_path: Path) -> None:
    """``requests_days: 7`` (a short retention for compliance) with the default ``text_days: 30``:
    retention deletes the request rows after 7 days but keeps their masked prompt and answer in
    ``request_content`` for 30. docs/config.md calls text_days how long "prompt and completion text
    [is] kept (then nulled; the row stays)": text never meant to outlive its row. The orphaned text
    is not even reachable through the story any more (404: no request), yet stays in the store."""
    from tests.contract.conftest import open_backend

    now = datetime(2096, 12, 1, tzinfo=UTC)
    started = now - timedelta(days=10)
    store = open_backend(engine, tmp_path)
    store.migrate()
    try:
        store.write_requests([RequestRecord(trace_id=f"{1:032x}", span_id=f"{1:016x}", tenant_id="acme",
                                            model_id="m1", backend="sim", started_at=started.isoformat(),
                                            status_code=200)])
        store.write_rows("request_content", [{
            "trace_id": f"{1:032x}", "span_id": f"{1:016x}", "tenant_id": "acme", "model_id": "m1",
            "started_at": started, "prompt_text": OLD_TEXT, "completion_text": OLD_ANSWER}])
        removed = store.apply_retention(now, RetentionPolicy(requests_days=7))
        assert removed["requests"] == 1 and store.count_requests(RequestFilter()) == 0
        assert store.content_for(f"{1:032x}") == [], "masked text kept after its request was deleted"
    finally:
        store.close()


# -- a replayed dead letter --------------------------------------------------------------------------------


def test_a_replayed_dead_letter_does_not_bring_back_text_past_text_days(tmp_path: Path, sim: SimServer) -> None:
    """docs/evaluation.md: masked text is kept text_days "then deleted". A request 40 days old
    (text_days 30) whose masked text retention already deleted, and whose eval task sits in the
    eval dead letters: ``infersight deadletter replay --stream evals`` (the documented redrive, the
    gateway running) hands it to the eval sink, which writes the expired text back into
    ``request_content``. The story serves it again, and on DuckDB it stays until the next hourly
    retention pass (the sink drops opted-out tenants' tasks, but not expired ones)."""
    from infersight.cli import main
    from infersight.config import load_settings

    data = tmp_path / "data"
    started = datetime.now(UTC) - timedelta(days=40)
    _seed_old_request(data, started)
    store = DuckDBStore(str(data / "infersight.duckdb"))
    store.apply_retention(datetime.now(UTC), RetentionPolicy())  # the text is gone, as it should be
    assert store.content_for(f"{77:032x}") == []
    store.close()
    JsonlDeadLetters(dead_letter_dir(data))(_old_task(started), "evaluators failed: ValueError; EvalSink refused it 5 times")
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"storage: {{path: '{data}'}}\nbackends: [{{name: sim, url: '{sim.url}/v1', models: [sim-large]}}]\n"
        "tenants: [{id: acme, api_keys: [sk-acme-test], sample_rate: 1.0}]\nadmin_api_keys: [sk-admin-test]\n"
        "evaluation: {child_process: false}\nlogging: {level: warning}\n")
    gateway = ThreadedServer(build_gateway(load_settings(config))).start()
    try:
        # the gateway's retention pass at start drops the dead letter with the text (its sweep), so
        # nothing past text_days is left to hand back; a task that still comes back (a journal
        # replayed after a long outage) is checked without its text (tests/unit/evaluation/test_worker.py)
        wait_for(lambda: JsonlDeadLetters(dead_letter_dir(data)).read() == [], what="the retention pass at start")
        assert main(["deadletter", "replay", "--config", str(config), "--stream", "evals"]) == 0
        got = httpx.get(f"{gateway.base_url}/api/v1/requests/{77:032x}", headers=ADMIN, timeout=10)
        assert got.status_code == 200 and got.json()["content"] == [], "text deleted at text_days came back"
    finally:
        gateway.stop()


