"""Audit of bad input to issue 4's configuration and commands, as an operator meets it: real config
files under tmp_path, ``infersight.cli.main`` in-process or as a subprocess where exit statuses and
tracebacks matter, a real redis-server, a real ClickHouse HTTP stand-in (chdb) for ``eval-worker``,
and the admin API on a real socket.

The promise audited (docs/config.md): every config error names the key and the file, exit 2, from
``serve``, ``check-config``, ``ingest`` and ``eval-worker`` alike; never a traceback, never a silent
fallback. And (docs/calibration.md, docs/judge.md, docs/evaluation.md): the eval commands say what
to do on bad input and exit non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infersight.cli import main
from infersight.config import ConfigError, settings_from_dict
from tests.conftest import config_dict
from tests.redis_server import RedisServer, find_redis_server, free_port

BASE = ("backends: [{name: sim, url: 'http://127.0.0.1:9/v1', models: [m1]}]\n"
        "tenants: [{id: acme, api_keys: [sk-acme-audit]}]\n")
JUDGE = "http://127.0.0.1:9/v1"
UNSET_KEY_ENV = "INFERSIGHT_AUDIT_NO_SUCH_JUDGE_KEY"


def gw_config(tmp_path: Path, extra: str = "", *, base: str = BASE, name: str = "gw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(base + f"storage: {{path: '{tmp_path / 'data'}'}}\nlogging: {{level: warning}}\n" + extra)
    return path


def run_cli(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", UNSET_KEY_ENV)}
    proc = subprocess.Popen([sys.executable, "-m", "infersight.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, -9, out, err + "\n<still running: killed by the test>")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis", binary=find_redis_server())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_judge_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET_KEY_ENV, raising=False)


# --- evaluation.* values check-config accepts but that cannot work --------------------------------


@pytest.mark.parametrize(
    ("extra", "base", "key"),
    [
        pytest.param("evaluation: {judge: {url: 'ftp://judge.internal/v1'}}\n", BASE, "evaluation.judge.url",
                     id="judge-url-not-http"),
        pytest.param("evaluation: {judge: {url: 'judge.internal:8000/v1'}}\n", BASE, "evaluation.judge.url",
                     id="judge-url-without-scheme"),
        pytest.param("evaluation: {judge: {url: ''}}\n", BASE, "evaluation.judge.url", id="judge-url-empty"),
        pytest.param(f"evaluation: {{judge: {{url: '{JUDGE}', model: ''}}}}\n", BASE, "evaluation.judge.model",
                     id="judge-model-empty"),
        pytest.param(f"evaluation: {{judge: {{url: '{JUDGE}'}}, breaker: {{budget: 25}}}}\n", BASE,
                     "evaluation.breaker.budget", id="budget-without-judge-prices"),
        pytest.param("bus: {backend: redis, url: 'redis://127.0.0.1:9/0'}\n"
                     "evaluation: {stream: 'infersight:requests'}\n", BASE, "evaluation.stream",
                     id="eval-stream-is-the-requests-stream"),
        pytest.param("evaluation: {sample_rate: yes}\n", BASE, "evaluation.sample_rate", id="sample-rate-yes"),
        pytest.param("", BASE.replace("api_keys: [sk-acme-audit]}", "api_keys: [sk-acme-audit], sample_rate: on}"),
                     "tenants.0.sample_rate", id="tenant-sample-rate-on"),
        pytest.param("evaluation: {max_content_chars: true}\n", BASE, "evaluation.max_content_chars",
                     id="max-content-chars-true"),
    ],
)
def test_check_config_refuses_evaluation_values_that_cannot_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 extra: str, base: str, key: str) -> None:
    """Each of these passed ``check-config`` (``ok``) and ``serve`` started with it:

    - a judge URL that is not http(s) (backends[].url and telemetry URLs are refused; the judge's is
      not): every sampled task then fails its judge call; ``''`` silently disables the judge, which
      only ``null`` is documented to do; an empty model id is sent to the endpoint as is;
    - a ``breaker.budget`` while both judge prices are 0: spend stays 0 for ever and the budget never
      opens the breaker (docs/evaluation.md, "Circuit breaker"), silently;
    - ``evaluation.stream`` equal to ``bus.stream``: eval tasks and request records on one stream, each
      consumer group reading the other's entries as poison;
    - YAML booleans where numbers belong: ``sample_rate: yes`` became 1.0 (judge every request),
      ``max_content_chars: true`` became 1 (every prompt and completion cut to one character)."""
    path = gw_config(tmp_path, extra, base=base)
    assert main(["check-config", "--config", str(path)]) == 2, capsys.readouterr().out
    err = capsys.readouterr().err
    assert f"config error in {path}: {key}" in err, err


# --- a judge key variable that is not set ----------------------------------------------------------


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_check_config_and_serve_name_the_unset_judge_key_variable_and_the_file(tmp_path: Path, command: str) -> None:
    """``check-config`` said ``ok``; ``serve`` started its store process, then exited 3 with the uvicorn
    log line ``the eval process failed to start: ValueError: ...`` that named no file."""
    path = gw_config(tmp_path, f"evaluation: {{judge: {{url: '{JUDGE}', api_key_env: {UNSET_KEY_ENV}}}}}\n")
    port = ["--port", str(free_port())] if command == "serve" else []
    done = run_cli(command, "--config", str(path), *port, timeout_s=60)
    assert done.returncode == 2, (done.stdout + done.stderr)[-2000:]
    assert f"config error in {path}: evaluation.judge.api_key_env" in done.stderr
    assert "Traceback" not in done.stderr


def test_ingest_with_an_unset_judge_key_variable_is_a_config_error_not_a_traceback(tmp_path: Path,
                                                                                    redis_url: str) -> None:
    """Was: a ValueError traceback (exit 1) from ``build_judge``, after the store was migrated and the
    HTTP server started; ``check_judge_rubric`` checks the rubric only, not the key."""
    path = gw_config(tmp_path, f"bus: {{backend: redis, url: '{redis_url}'}}\n"
                               f"evaluation: {{judge: {{url: '{JUDGE}', api_key_env: {UNSET_KEY_ENV}}}}}\n")
    done = run_cli("ingest", "--config", str(path), "--port", str(free_port()), timeout_s=30)
    assert "Traceback" not in done.stderr, done.stderr[:3000]
    assert done.returncode == 2
    assert f"config error in {path}: evaluation.judge.api_key_env" in done.stderr


def test_eval_worker_with_an_unset_judge_key_variable_is_a_config_error_not_a_traceback(tmp_path: Path,
                                                                                         redis_url: str) -> None:
    """Was: a ValueError traceback (exit 1) from ``eval_consumer`` -> ``build_judge``."""
    from tests.unit.store_clickhouse.fake_http import fake_clickhouse

    with fake_clickhouse(str(tmp_path / "ch")) as (ch_url, _):
        path = gw_config(tmp_path, f"bus: {{backend: redis, url: '{redis_url}'}}\n"
                                   f"store: {{backend: clickhouse, url: '{ch_url}'}}\n"
                                   f"evaluation: {{judge: {{url: '{JUDGE}', api_key_env: {UNSET_KEY_ENV}}}}}\n")
        done = run_cli("eval-worker", "--config", str(path), "--port", str(free_port()), timeout_s=30)
    assert "Traceback" not in done.stderr, done.stderr[:3000]
    assert done.returncode == 2
    assert f"config error in {path}: evaluation.judge.api_key_env" in done.stderr


def test_serve_names_the_file_when_evaluation_child_cpus_are_not_on_this_host(tmp_path: Path) -> None:
    """Was: exit 3 after the store process had started, a uvicorn log line ``the eval process failed to
    start: ValueError: evaluation.child_cpus [...]`` that named no file and was no config error."""
    path = gw_config(tmp_path, f"evaluation: {{child_cpus: [{(os.cpu_count() or 1) + 60}]}}\n")
    done = run_cli("serve", "--config", str(path), "--port", str(free_port()), timeout_s=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"config error in {path}: evaluation.child_cpus" in done.stderr


# --- eval calibrate / eval compare -----------------------------------------------------------------


def _golden(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps({"id": f"g{i}", "dataset": "own", "prompt": "q", "response": "a",
                                        "labels": {"relevance": 1 + i % 5}}) + "\n" for i in range(10)))
    return path


def _pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "p1", "prompt": "q", "response_a": "a", "response_b": "b"}) + "\n")
    return path


@pytest.mark.parametrize(
    ("command", "judge", "key"),
    [
        pytest.param("calibrate", "{model: m}", "evaluation.judge.url", id="calibrate-no-judge-url"),
        pytest.param("calibrate", f"{{url: '{JUDGE}', api_key_env: {UNSET_KEY_ENV}}}", "evaluation.judge",
                     id="calibrate-unset-key-env"),
        pytest.param("calibrate", f"{{url: '{JUDGE}', rubric: '/nonexistent/rubric.yaml'}}", "evaluation.judge",
                     id="calibrate-missing-rubric"),
        pytest.param("compare", "{model: m}", "evaluation.judge.url", id="compare-no-judge-url"),
        pytest.param("compare", f"{{url: '{JUDGE}', api_key_env: {UNSET_KEY_ENV}}}", "evaluation.judge",
                     id="compare-unset-key-env"),
    ],
)
def test_eval_commands_name_the_config_file_of_a_judge_they_cannot_build(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, judge: str, key: str) -> None:
    """Was: ``infersight: config error: evaluation.judge.url: is not set: ...`` (and the same for a key
    variable or a rubric): no file named, though the user passed ``--config FILE`` and every config
    error is to name the key and the file (docs/config.md)."""
    path = tmp_path / "judge.yaml"
    path.write_text(f"storage: {{path: '{tmp_path / 'data'}'}}\nevaluation: {{judge: {judge}}}\n")
    argv = (["eval", "calibrate", "--golden", str(_golden(tmp_path))] if command == "calibrate"
            else ["eval", "compare", "--pairs", str(_pairs(tmp_path)), "--rubric", "pairwise"])
    assert main([*argv, "--config", str(path), "--json", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"config error in {path}: {key}" in captured.err, captured.err


@pytest.mark.parametrize("which", ["golden", "scores", "pairs"])
def test_an_input_file_that_is_a_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                which: str) -> None:
    """Was: ``infersight: DIR: file not found`` about a path that is there (a folder), the mistake the
    config loader was fixed for (``is a folder, not a file``): the user looks for a typo, not for the
    file inside the folder."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    golden = _golden(tmp_path)
    argv = {
        "golden": ["eval", "calibrate", "--golden", str(folder), "--scores", str(golden)],
        "scores": ["eval", "calibrate", "--golden", str(golden), "--scores", str(folder)],
        "pairs": ["eval", "compare", "--pairs", str(folder)],
    }[which]
    assert main([*argv, "--json", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(folder) in captured.err and "folder" in captured.err and "file not found" not in captured.err


# --- deadletter --stream evals on the embedded shape -----------------------------------------------


@pytest.mark.parametrize("storage", ["missing", "file"])
@pytest.mark.parametrize("action", [["list", "--json"], ["replay"]])
def test_deadletter_evals_on_a_storage_path_that_holds_nothing_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], storage: str, action: list[str]) -> None:
    """Was: exit 0 with ``no dead letters`` (``"total": 0``) or ``handed back 0 dead letters`` for a
    storage.path that does not exist (a typo, or the config of another host) or that is a file, which
    ``check-config`` and ``serve`` refuse: the operator is told all is well while the dead letters lie
    elsewhere. ``export parquet`` refuses the same mistake (``no store at ...``)."""
    where = tmp_path / "typo-data"
    if storage == "file":
        where.write_text("not a folder")
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + f"storage: {{path: '{where}'}}\n")
    code = main(["deadletter", action[0], "--config", str(path), "--stream", "evals", *action[1:]])
    captured = capsys.readouterr()
    assert code != 0, captured.out
    assert "storage.path" in captured.err and captured.out == ""


# --- admin API: a window the config allowed -------------------------------------------------------


def test_a_forced_window_the_config_allows_is_never_a_bare_500(tmp_path: Path) -> None:
    """``evaluation.max_forced_window_s`` has no upper bound: 10^12 s loads, and then a forced window
    the admin API accepts by that limit is a ``text/plain`` 500 (``ValueError: year 33715 is out of
    range`` formatting ``forced.until``). Either the config refuses the value, naming the key, or the
    API answers in JSON without a 5xx."""
    from tests.integration.test_audit_admin_sampling import ADMIN, URL, gateway

    huge = 10**12
    try:
        settings_from_dict(config_dict(tmp_path / "data", evaluation={"max_forced_window_s": huge}))
    except ConfigError as exc:
        assert exc.key == "evaluation.max_forced_window_s"
        return
    with gateway(tmp_path / "data", max_forced_window_s=huge) as (client, _app):
        got = client.post(f"{URL}/force", json={"tenant": "acme", "duration_s": huge}, headers=ADMIN)
        assert got.status_code < 500, got.text
        assert got.headers["content-type"].startswith("application/json")
        if got.status_code >= 400:
            assert got.json()["error"]["param"] == "duration_s"
