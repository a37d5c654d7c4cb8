"""Audit: prompts and completions never reach logs, whatever process writes them.

docs/evaluation.md: "prompts and completions never reach logs"; src/infersight/logs.py keeps
exception messages out of log lines because "a message can quote a body, a prompt or a value", and
judge_client.config_hint exists because "a server's body may quote the request". The judge commands
(`infersight eval calibrate`, `infersight eval compare`) run the same judge client against human-
labelled or production prompts; their stderr is their log. Each test runs the real command in a
subprocess against a real OpenAI-compatible judge on 127.0.0.1 (``FakeJudge``) that misbehaves the
way real endpoints do (a 5xx or 4xx body echoing the request, a reply quoting the answer) and greps
every captured stream for marker strings and PII carried by the prompts and answers.

Probed and held up (no test kept): `infersight serve` at logging.level debug in its three shapes
(eval process + store process, eval process only, all in-process) and the scale-out shape
(`serve` + `ingest` on a real Redis, `deadletter list --stream evals`), with markers, an e-mail and a
card number in prompts, scripted completions and metadata.reference, and a judge answering 500/400
bodies quoting the prompt, 200 error objects quoting it, and invalid JSON quoting the answer: no
marker in any log line, /healthz or /metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.test_audit_eval_owner import judges  # noqa: F401 (the fixture)
from tests.integration.bus.test_audit_eval_scale import Reply, verdict

PROMPT_MARK = "zqxPROMPTmark7731"
ANSWER_MARK = "zqxANSWERmark7731"
EMAIL = "jane.zqx@example.org"
CARD = "4111 1111 1111 1111"
SECRETS = (PROMPT_MARK, ANSWER_MARK, EMAIL, CARD, "zqx")


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def _chat(content: str) -> Reply:
    return 200, {"id": "x", "object": "chat.completion", "model": "judge",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


def _user_text(body: dict[str, Any]) -> str:
    """The judge prompt's last user turn: where the rubric put the question and the answer."""
    return str(body["messages"][-1]["content"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run([sys.executable, "-m", "infersight.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def _judge_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "judge.yaml"
    config.write_text(json.dumps({"evaluation": {"judge": {"url": url, "model": "judge", "max_retries": 0,
                                                           "timeout_s": 5.0}}}))
    return config


def _golden(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps({
        "id": f"item-{i}", "dataset": "ops", "task": "qa",
        "prompt": f"{PROMPT_MARK} {i}: my mail is {EMAIL}, card {CARD}; case:{'bad' if i == 1 else 'ok'}",
        "response": f"{ANSWER_MARK} {i}: noted {EMAIL}", "reference": None,
        "labels": {"relevance": 1 + i % 5}, "label_scale": "1-5"}) + "\n" for i in range(n)))
    return path


# -- infersight eval calibrate ----------------------------------------------------------------------


def test_calibrate_never_prints_the_prompt_a_failing_judge_echoes(tmp_path: Path, judges: Any) -> None:
    """A judge endpoint that is down answers 500 with a body echoing the request (proxies, some
    servers' error pages do). The judge client keeps the first 300 bytes of that body in the
    JudgeError message, and `eval calibrate` prints the message on stderr ("the judge failed on all N
    items (first error: JudgeError: ... HTTP 500 from the judge endpoint: {body})"): the golden
    prompt, the answer, the e-mail and the card number end up in the CI log. It must say what failed
    (the reason, the status) without the body."""
    server = judges(lambda body, n: (500, {"error": {"message": "worker crashed on input: " + _user_text(body)}}))
    result = _cli("eval", "calibrate", "--config", str(_judge_config(tmp_path, server.url)),
                  "--golden", str(_golden(tmp_path)), "--json", "--no-progress", "--bootstrap", "0",
                  "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]  # the judge failed on every item
    assert "judge failed" in result.stderr
    assert _leaks(result.stderr + result.stdout) == [], result.stderr[-2000:]


def test_calibrate_warning_for_one_failed_item_does_not_quote_it(tmp_path: Path, judges: Any) -> None:
    """One item the judge endpoint refuses with a 400 whose message quotes the offending input (as
    OpenAI-compatible servers do for content they reject), the others judged: the run completes
    and warns "judge failed on item-1: JudgeError: HTTP 400 from the judge endpoint: {body}", i.e.
    that item's prompt and PII, on stderr."""
    def answer(body: dict[str, Any], n: int) -> Reply:
        text = _user_text(body)
        if "case:bad" in text:
            return 400, {"error": {"message": "input rejected: " + text, "type": "invalid_request_error"}}
        return verdict()

    server = judges(answer)
    result = _cli("eval", "calibrate", "--config", str(_judge_config(tmp_path, server.url)),
                  "--golden", str(_golden(tmp_path)), "--json", "--no-progress", "--bootstrap", "0",
                  "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["judge_errors"] == 1
    assert "judge failed on item-1" in result.stderr
    assert _leaks(result.stderr + result.stdout) == [], result.stderr[-2000:]


# -- infersight eval compare ------------------------------------------------------------------------


def test_compare_does_not_print_an_answer_the_judge_quoted_as_its_winner(tmp_path: Path, judges: Any) -> None:
    """A pairwise judge reply whose "winner" is not A, B or tie but a piece of the text it read (a
    model that quotes the better answer instead of naming it). The parse error keeps the first 40
    characters of that value (``judge_parse.extract_winner``), the JudgeError carries it, and
    `eval compare` prints it on stderr: the prompt and the e-mail of the pair."""
    def answer(body: dict[str, Any], n: int) -> Reply:
        text = _user_text(body)
        start = text.find(PROMPT_MARK)
        return _chat(json.dumps({"winner": text[start:start + 60], "explanation": "the first one"}))

    server = judges(answer)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({
        "id": f"p{i}", "prompt": f"{PROMPT_MARK} {EMAIL} {i}", "response_a": f"{ANSWER_MARK} a{i}",
        "response_b": f"{ANSWER_MARK} b{i}"}) + "\n" for i in range(2)))
    result = _cli("eval", "compare", "--config", str(_judge_config(tmp_path, server.url)), "--pairs", str(pairs),
                  "--json", "--no-progress", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]  # every pair failed: an invalid reply each time
    assert "judge failed" in result.stderr
    assert _leaks(result.stderr + result.stdout) == [], result.stderr[-2000:]
