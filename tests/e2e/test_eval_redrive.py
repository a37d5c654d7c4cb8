"""Embedded eval dead letters, end to end: `infersight deadletter list|replay --stream evals` against
a running gateway (its eval process, and its own threads), whose eval bus picks the tasks up live."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from infersight.evaluation.dead_letters import JsonlDeadLetters, dead_letter_dir
from infersight.model import EvalTask
from tests.e2e.test_evaluation import ADMIN, stack  # noqa: F401 - the fixture: a gateway in both shapes
from tests.integration.test_audit_cli import run_cli

RECENT = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()  # within any text retention


def _task(i: int) -> EvalTask:
    return EvalTask(trace_id=f"dead{i:028x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                    use_case="chat", api="chat", started_at=RECENT, status_code=200,
                    finish_reason="stop", prompt_text="What is 2 + 2?", completion_text="",
                    sample_reason="random")


def test_dead_letters_are_listed_and_handed_back_to_a_running_gateway(stack: tuple[str, Any],
                                                                     tmp_path: Path) -> None:
    url, app = stack
    storage = Path(app.settings.storage.path)
    config = tmp_path / "same.yaml"  # the CLI reads the running gateway's storage.path from its config
    config.write_text(yaml.safe_dump({"storage": {"path": str(storage)}, "logging": {"level": "warning"},
                                      "backends": [{"name": "sim", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
                                      "tenants": [{"id": "acme", "api_keys": ["sk-x"]}]}))
    dead = JsonlDeadLetters(dead_letter_dir(storage))
    for i in range(3):
        dead(_task(i), "evaluators failed 5 times: ValueError")

    listed = run_cli("deadletter", "list", "--stream", "evals", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    body = orjson.loads(listed.stdout)
    assert body["total"] == 3 and body["by_kind"] == {"max_deliveries": 3}
    assert "2 + 2" not in listed.stdout  # ids and reasons, never the text
    table = run_cli("deadletter", "list", "--stream", "evals", "--config", str(config))
    assert "3 dead letters" in table.stdout and _task(0).trace_id in table.stdout

    replay = run_cli("deadletter", "replay", "--stream", "evals", "--config", str(config), "--limit", "2")
    assert replay.returncode == 0, replay.stderr
    assert "handed back 2 dead letters" in replay.stdout

    api = httpx.Client(base_url=url, headers=ADMIN, timeout=10)
    deadline = time.monotonic() + 30
    traces: set[str] = set()
    while time.monotonic() < deadline and len(traces) < 2:
        rows = api.get("/api/v1/evaluations", params={"evaluator": "checks", "dimension": "empty"}).json()["data"]
        traces = {r["trace_id"] for r in rows if r["trace_id"].startswith("dead")}
        time.sleep(0.2)
    assert traces == {_task(0).trace_id, _task(1).trace_id}  # the oldest two, evaluated by the live gateway
    empty = api.get("/api/v1/evaluations", params={"dimension": "empty", "failed": "true"}).json()["data"]
    assert {r["trace_id"] for r in empty} >= traces  # their completions are empty: the check says so
    left = orjson.loads(run_cli("deadletter", "list", "--stream", "evals", "--config", str(config),
                                "--json").stdout)
    assert left["total"] == 1 and left["entries"][0]["trace_id"] == _task(2).trace_id


@pytest.mark.parametrize("action", ["list", "replay"])
def test_requests_stream_on_the_memory_bus_still_says_what_to_do(tmp_path: Path, action: str) -> None:
    config = tmp_path / "memory.yaml"
    config.write_text(yaml.safe_dump({"storage": {"path": str(tmp_path / "data")},
                                      "backends": [{"name": "sim", "url": "http://127.0.0.1:9/v1", "models": ["m"]}],
                                      "tenants": [{"id": "acme", "api_keys": ["sk-x"]}]}))
    done = run_cli("deadletter", action, "--config", str(config))
    assert done.returncode == 2 and "bus.backend" in done.stderr and "--stream evals" in done.stderr
