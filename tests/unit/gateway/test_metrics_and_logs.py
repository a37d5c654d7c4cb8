"""The /metrics exposition passes promtool, and logs never carry prompt or completion text."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infersight.gateway.upstreams.mock import ManualClock, ScriptedResponse
from infersight.logs import configure_logging
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, ok_stream, usage_chunk

SECRET_PROMPT = "my card is 4111-1111-1111-1111 zebra-prompt-marker"
SECRET_ANSWER = "zebra-completion-marker"
STREAM = ok_stream(
    (10.0, chat_chunk(role=True)), (20.0, chat_chunk(SECRET_ANSWER)), (30.0, chat_chunk(" ok")),
    (31.0, chat_chunk(finish="stop")), (32.0, usage_chunk(12, 2, cached=4)), (33.0, DONE),
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("INFERSIGHT_REQUIRE_TOOLS"):
            pytest.fail("promtool is required here (apt-get install prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus); .ci/run installs it")
    return path


async def test_metrics_exposition_passes_promtool(settings) -> None:
    tool = promtool()
    _, _, _, client = gateway(settings, STREAM, ManualClock())
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
        await client.post("/v1/chat/completions", json=chat_body(stream=True),
                          headers={**ACME, "x-infersight-use-case": "chat"})
        await client.post("/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer nope"})
        text = (await client.get("/metrics")).text
    result = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    base = {"tenant": "acme", "model": "sim-large", "backend": "sim", "use_case": "chat"}
    # the GenAI histograms carry the two labels their convention requires; infersight's counters do not
    acme = {**base, "gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}
    assert sample(text, "gen_ai_server_time_to_first_token_seconds_count", acme) == 1.0
    assert sample(text, "gen_ai_server_time_to_first_token_seconds_bucket", {**acme, "le": "0.01"}) == 0.0
    assert sample(text, "gen_ai_server_time_to_first_token_seconds_bucket", {**acme, "le": "0.02"}) == 1.0
    assert sample(text, "gen_ai_server_time_per_output_token_seconds_count", acme) == 1.0
    assert sample(text, "gen_ai_server_request_duration_seconds_count", {**acme, "error_type": ""}) == 1.0
    assert sample(text, "gen_ai_client_token_usage_sum", {**acme, "gen_ai_token_type": "input"}) == 12.0
    assert sample(text, "infersight_tokens_total", {**base, "token_type": "cached_input"}) == 4.0
    unauth = {"tenant": "_unauthenticated", "model": "_unknown", "backend": "_unknown", "use_case": "other",
              "status_code": "401", "error_type": "invalid_api_key"}
    assert sample(text, "infersight_requests_total", unauth) == 1.0
    assert "_created" not in text, "created series double the exposition for no use"


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def test_logs_are_json_and_carry_no_content(settings) -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    try:
        body = chat_body(stream=True)
        body["messages"][0]["content"] = SECRET_PROMPT
        _, _, _, client = gateway(settings, STREAM, ManualClock())
        async with client:
            await client.post("/v1/chat/completions", json=body, headers=ACME)
            await client.post("/v1/chat/completions", content=b"{bad " + SECRET_PROMPT.encode(), headers=ACME)
        logging.getLogger("infersight.test").info("with extras", extra={"prompt": SECRET_PROMPT, "tenant_id": "x"})
    finally:
        logging.getLogger().handlers.clear()
    output = stream.getvalue()
    assert "zebra" not in output and "4111" not in output
    lines = [orjson.loads(line) for line in output.splitlines()]
    access = [line for line in lines if line["logger"] == "infersight.access"]
    assert len(access) == 2
    assert access[0]["tenant_id"] == "acme" and access[0]["status_code"] == 200
    assert access[0]["ttft_ms"] == pytest.approx(20.0) and access[1]["status_code"] == 400
    assert lines[-1]["tenant_id"] == "x" and "prompt" not in lines[-1]
