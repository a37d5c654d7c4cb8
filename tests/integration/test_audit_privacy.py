"""Privacy audit: prompts, completions and API keys must not reach logs, error messages or
world-readable files, whatever path they take there.

Each test drives a real component (the YAML config loader, the JSON log formatter as
``configure_logging`` installs it, the masking thread, the write-ahead journal, the eval dead letters,
the JSONL exporter) and fails on the code before the fix it names.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import io
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from infersight.bus.journal import Journal, Position
from infersight.config import ConfigError, load_settings
from infersight.evaluation.dead_letters import JsonlDeadLetters
from infersight.evaluation.masking import MaskingQueue
from infersight.exporters.jsonl import JsonlExporter
from infersight.logs import configure_logging
from infersight.model import EvalTask, RequestRecord

RECENT = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()  # within any text retention

SECRET_KEY = "sk-acme-SECRET-7f3a9c"
SECRET_PROMPT = "my card is 4111 and my zebra password"
SECRET_ANSWER = "the zebra answer to your secret"
SECRET_REFERENCE = "reference zebra text"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Logging as the gateway configures it (JSON lines), into a buffer."""
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common default umask (022): a file created without an explicit mode is world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _task(**overrides: object) -> EvalTask:
    values: dict[str, object] = {
        "trace_id": "ab" * 16, "span_id": "cd" * 8, "tenant_id": "acme", "model_id": "sim-large",
        "started_at": RECENT, "prompt_text": SECRET_PROMPT, "completion_text": SECRET_ANSWER,
        "reference": SECRET_REFERENCE,
    }
    values.update(overrides)
    return EvalTask(**values)  # type: ignore[arg-type]


def _record(i: int) -> RequestRecord:
    return RequestRecord(trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme", model_id="sim-large",
                         backend="sim", started_at=RECENT, status_code=200)


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


# -- API keys ---------------------------------------------------------------------------------------


def test_yaml_config_error_never_quotes_an_api_key(tmp_path: Path) -> None:
    """PyYAML's error text shows the offending line: a broken quote next to a tenant key printed the
    key in the start-up error. The error must keep the place (line, column), not the line's text."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "backends:\n  - {name: sim, url: 'http://127.0.0.1:9/v1', models: [m]}\n"
        f"tenants:\n  - id: acme\n    api_keys: [\"{SECRET_KEY}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert SECRET_KEY not in message and "SECRET" not in message
    assert "invalid YAML" in message and "line 5" in message and str(config) in message


# -- logs -------------------------------------------------------------------------------------------


def test_log_formatter_drops_content_nested_in_extras(json_log: io.StringIO) -> None:
    """The second line of defence looked only at top-level names: an eval task (or a body) passed
    whole under ``fields`` went out, and ``reference`` (the client's reference answer) was no content
    name at all."""
    log = logging.getLogger("infersight.test.privacy")
    log.error("task failed", extra={"fields": {"trace_id": "ab" * 16, "task": _task().to_dict()}})
    log.error("body refused", extra={"body_json": {"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}]}})
    log.error("with reference", extra={"reference": SECRET_REFERENCE, "tenant_id": "acme"})
    output = json_log.getvalue()
    assert "zebra" not in output and "4111" not in output
    lines = [orjson.loads(line) for line in output.splitlines()]
    assert lines[0]["trace_id"] == "ab" * 16 and lines[0]["task"]["tenant_id"] == "acme"  # identity stays
    assert lines[1]["body_json"]["model"] == "m"
    assert lines[2]["tenant_id"] == "acme"


def test_log_formatter_withholds_exception_messages(json_log: io.StringIO, tmp_path: Path) -> None:
    """``log.exception`` wrote the exception's message: a pydantic error quotes the value it refused
    (a body, a prompt), an engine's 400 body or a DuckDB conversion error quote theirs. The traceback
    keeps its frames and types; only messages of OS errors (errno, file name) are kept."""
    log = logging.getLogger("uvicorn.error")  # e.g. "Exception in ASGI application", with the traceback
    try:
        TypeAdapter(int).validate_python(SECRET_PROMPT)
    except ValidationError:
        log.exception("Exception in ASGI application")
    try:
        try:
            raise ValueError(f"engine said 400: {SECRET_ANSWER}")
        except ValueError as inner:
            raise RuntimeError("relay failed") from inner
    except RuntimeError:
        log.exception("chained")
    missing = tmp_path / "no-such-spool"
    try:
        missing.read_bytes()
    except OSError:
        log.exception("spool unreadable")
    output = json_log.getvalue()
    assert "zebra" not in output and "4111" not in output
    first, chained, oserror = (orjson.loads(line) for line in output.splitlines())
    assert "ValidationError" in first["exc"] and "test_log_formatter_withholds_exception_messages" in first["exc"]
    assert "ValueError" in chained["exc"] and "RuntimeError" in chained["exc"]
    assert "FileNotFoundError" in oserror["exc"] and "no-such-spool" in oserror["exc"]  # OS errors keep theirs


def test_in_process_masking_failure_logs_no_raw_text(caplog: pytest.LogCaptureFixture) -> None:
    """With ``evaluation.child_process: false`` the masking thread logged a failed mask with
    ``log.exception``: the masker's error can quote the raw (unmasked) text it failed on. The eval
    process already drops that message; the in-process path must too, whatever the log handler."""
    published: list[EvalTask] = []

    class ListBus:
        def publish(self, task: EvalTask) -> None:
            published.append(task)

    def failing_mask(text: str, max_chars: int) -> tuple[str, dict[str, int], bool]:
        raise ValueError(f"recognizer failed on {text!r}")

    masking = MaskingQueue(ListBus(), None, mask=failing_mask)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    masking.start()
    try:
        masking.submit(_task())
        deadline = time.monotonic() + 5
        while masking.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        masking.stop()
    assert masking.dropped == 1 and not published
    failed = [r for r in caplog.records if r.getMessage() == "masking failed; eval task dropped"]
    assert len(failed) == 1 and failed[0].fields == {"trace_id": "ab" * 16, "error": "ValueError"}  # type: ignore[attr-defined]
    assert "zebra" not in caplog.text and "4111" not in caplog.text  # the plain handler: traceback included


# -- files ------------------------------------------------------------------------------------------


def test_adopted_journal_segment_stays_private(tmp_path: Path, usual_umask: None) -> None:
    """Journal segments are 0600, but the undelivered tail of a departed process's checkpointed
    segment was copied with ``write_bytes`` (0644 under umask 022): anyone on the host could read it."""
    root = tmp_path / "spool-evals"
    keeper = Journal(root)  # holds slot-000, so the next journal takes slot-001
    departed = Journal(root)
    seq, _, end, _ = departed.append(_record(1))
    departed.append(_record(2))
    departed.checkpoint(Position(seq, end, 1))  # the first record was delivered, the second was not
    departed.close()
    keeper.close()
    adopter = Journal(root)  # slot-000 again; adopts slot-001's undelivered tail
    try:
        segments = sorted(adopter.directory.glob("journal-*.jsonl"))
        assert segments, "the departed process's tail was adopted"
        assert [r.trace_id for s in adopter.pending() for r in adopter.read(s)] == [f"{2:032x}"]
        for segment in segments:
            assert _private(segment), f"{segment.name} is {oct(stat.S_IMODE(segment.stat().st_mode))}"
    finally:
        adopter.close()


def test_eval_dead_letters_are_private(tmp_path: Path, usual_umask: None) -> None:
    """Dead eval tasks carry (masked) prompts and completions: 0600 like the journal, not 0644."""
    letters = JsonlDeadLetters(tmp_path / "spool-evals" / "dead-letter")
    letters(_task(prompt_text="[EMAIL] asked", completion_text="an answer", reference=None), "evaluators failed")
    assert letters.read()[0]["reason"] == "evaluators failed"
    assert _private(letters.path), oct(stat.S_IMODE(letters.path.stat().st_mode))


def test_jsonl_records_file_is_private(tmp_path: Path, usual_umask: None) -> None:
    """The JSONL exporter's files hold every tenant's records: 0600 like the journal they come from."""
    exporter = JsonlExporter(tmp_path)
    exporter.export([_record(1), _record(2)])
    exporter.shutdown()
    files = list((tmp_path / "records").glob("records-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_bytes().splitlines()) == 2
    assert _private(files[0]), oct(stat.S_IMODE(files[0].stat().st_mode))
