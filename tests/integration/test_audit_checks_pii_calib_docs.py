"""Audit of docs/checks.md, docs/pii.md, docs/calibration.md and the quality, evaluations and
calibrations endpoints of docs/api.md, claim by claim.

Real components: the gateway served on 127.0.0.1 in front of a scripted OpenAI-compatible engine
(tests/scripted_engine.py), the in-process masking and eval sink, the embedded DuckDB store read
back through the query API, and the real ``infersight eval calibrate`` command.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_audit_content_checks import checks_of
from tests.scripted_engine import ScriptedEngine, chat_reply, embedded_gateway, engine, message  # noqa: F401

ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}

TENANTS = [
    {"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"},
    {"id": "initech", "api_keys": ["sk-initech-test"], "sample_rate": 1.0, "content": "all"},
]


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("checks_docs") / "data") as url:
        yield url


def answered(base: str, engine: ScriptedEngine, case: str, completion: str, **extra: Any) -> str:
    """Send a chat whose scripted answer is ``completion``; returns the trace id."""
    engine.replies[case] = chat_reply([message(completion)])
    body = {"model": "sim-large", "messages": [{"role": "user", "content": f"case:{case} please answer"}], **extra}
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, headers=ACME, timeout=20)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-trace-id"]


# ---- docs/checks.md --------------------------------------------------------------------------------


def test_the_documented_partial_refusal_example_is_a_partial_refusal(gateway: str, engine: ScriptedEngine) -> None:
    """docs/checks.md: 'A refusal followed by a pivot ... and at least 80 more characters is a
    partial refusal: label fail, score 0.5 ("I can't draw charts; however, here is a table")'."""
    answer = ("I can't draw charts; however, here is a table with the quarterly revenue you asked for, "
              "laid out by region and by quarter so that you can compare them.")
    by = checks_of(gateway, answered(gateway, engine, "draw-charts", answer))
    assert (by["refusal"]["label"], by["refusal"]["score"]) == ("fail", 0.5), by["refusal"]["explanation"]


def test_a_zero_matrix_in_an_answer_is_not_a_degeneration_loop(gateway: str, engine: ScriptedEngine) -> None:
    """docs/checks.md: numbers repeat legitimately (tables, IP addresses, arrays), so a repeated unit
    without an alphabetic word is no loop; the 3-gram signal is meant for 'about three copies of the
    same passage'. A model asked for a 5x5 zero matrix answers with 25 zeros."""
    answer = "Here is the 5x5 zero matrix:\n0 0 0 0 0\n0 0 0 0 0\n0 0 0 0 0\n0 0 0 0 0\n0 0 0 0 0"
    by = checks_of(gateway, answered(gateway, engine, "zero-matrix", answer))
    assert by["repetition"]["label"] == "pass", by["repetition"]["explanation"]


def test_a_template_the_model_writes_is_not_a_pii_leak(gateway: str, engine: ScriptedEngine) -> None:
    """docs/checks.md, pii_leak: PII 'shows up as typed placeholders' because the gateway masked it.
    A model asked for an e-mail template writes bracketed fields itself; nothing was masked (no
    ``pii_completion:*`` hit), no PII reached the client, yet the answer is scored a PII leak."""
    answer = ("Subject: Your refund\n\nDear customer,\n\nYour refund has been approved. If you have any "
              "questions, write to [EMAIL] or call us at [PHONE].\n\nKind regards,\nThe support team")
    trace = answered(gateway, engine, "template", answer)
    by = checks_of(gateway, trace)
    story = httpx.get(f"{gateway}/api/v1/requests/{trace}", headers=ADMIN, timeout=10).json()
    hits = story["content"][0]["guardrail_hits"] or ""
    assert "pii_completion" not in hits  # the gateway's masker found no PII in the answer
    assert by["pii_leak"]["label"] == "pass", by["pii_leak"]["explanation"]


def test_a_long_json_label_list_cut_by_the_gateway_is_not_a_loop(gateway: str, engine: ScriptedEngine) -> None:
    """docs/checks.md, repetition: a completion that is a JSON object or array is data ('identical
    labels and records repeat by design'), so only its string values are checked. The gateway keeps
    the first 2,000 characters; a batch-labelling answer longer than that is stored cut, no longer
    parses, and its repeated labels are then read as a degeneration loop. invalid_json already
    knows that 'the cut may be what broke it'; repetition does not."""
    labels = ["positive", "negative", "positive", "positive", "neutral"] * 120
    answer = '{"labels": [' + ", ".join(f'"{x}"' for x in labels) + "]}"
    assert len(answer) > 2000
    trace = answered(gateway, engine, "label-batch", answer, response_format={"type": "json_object"})
    by = checks_of(gateway, trace)
    assert by["invalid_json"]["label"] == "pass", by["invalid_json"]  # the gateway saw the whole, valid answer
    assert by["repetition"]["label"] == "pass", by["repetition"]["explanation"]
