"""The prompt_hash key: from the environment, else made once in the data directory and kept."""

from __future__ import annotations

import hashlib
import multiprocessing
import stat
from pathlib import Path

import pytest

from infersight.config import ConfigError
from infersight.gateway.hash_key import KEY_FILE, PROMPT_HASH_KEY_ENV, prompt_hash_key


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROMPT_HASH_KEY_ENV, raising=False)


def test_a_key_is_made_once_private_and_kept_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = prompt_hash_key(data)
    assert len(first) == 32
    path = data / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert prompt_hash_key(data) == first  # a restart hashes as before
    assert prompt_hash_key(tmp_path / "other") != first  # another deployment, another key
    assert [p.name for p in data.iterdir()] == [KEY_FILE]  # no temporary file left


def _key_hex(data: str) -> str:
    return prompt_hash_key(data).hex()


def test_workers_starting_together_share_one_key(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        keys = pool.map(_key_hex, [data] * 8)
    assert len(set(keys)) == 1
    assert bytes.fromhex(keys[0]) == prompt_hash_key(data)


def test_the_environment_key_wins_and_must_not_be_guessable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROMPT_HASH_KEY_ENV, "s3cret-shared-by-every-gateway")
    assert prompt_hash_key(tmp_path) == hashlib.sha256(b"s3cret-shared-by-every-gateway").digest()
    assert not (tmp_path / KEY_FILE).exists()
    monkeypatch.setenv(PROMPT_HASH_KEY_ENV, "short")
    with pytest.raises(ConfigError, match=r"\$INFERSIGHT_PROMPT_HASH_KEY: needs at least 16 characters"):
        prompt_hash_key(tmp_path)


def test_a_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not hex\n")
    with pytest.raises(ConfigError, match="not a key of 64 hex digits; remove it"):
        prompt_hash_key(tmp_path)


def test_check_config_refuses_a_bad_key_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``check-config`` (and ``serve``, before its store process) names the variable or the file,
    and makes no key file of its own."""
    import yaml

    from infersight.cli import main
    from tests.conftest import config_dict

    data = tmp_path / "data"
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(config_dict(data)))
    assert main(["check-config", "--config", str(config)]) == 0
    assert not (data / KEY_FILE).exists()
    monkeypatch.setenv(PROMPT_HASH_KEY_ENV, "short")
    assert main(["check-config", "--config", str(config)]) == 2
    assert f"config error in {config}: $INFERSIGHT_PROMPT_HASH_KEY: needs at least 16" in capsys.readouterr().err
    monkeypatch.delenv(PROMPT_HASH_KEY_ENV)
    data.mkdir(exist_ok=True)
    (data / KEY_FILE).write_text("damaged")
    assert main(["check-config", "--config", str(config)]) == 2
    assert f"storage.path: {data / KEY_FILE} is not a key of 64 hex digits" in capsys.readouterr().err


def test_check_config_and_serve_say_when_gateway_hosts_may_not_share_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """On a Redis bus other gateway hosts may feed the same store; a key each made for itself hashes
    one prompt differently per host, which nothing else would show."""
    import logging

    import yaml

    from infersight.cli import main
    from infersight.config import load_settings
    from infersight.runtime import warn_unshared_hash_key
    from tests.conftest import config_dict

    data = tmp_path / "data"
    config = tmp_path / "gw.yaml"
    memory = config_dict(data)
    config.write_text(yaml.safe_dump(memory))
    assert main(["check-config", "--config", str(config)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "prompt hash key:" in x)
    assert line.strip() == f"prompt hash key: {data / KEY_FILE} (this host's own)"

    redis = {**memory, "bus": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}}
    config.write_text(yaml.safe_dump(redis))
    assert main(["check-config", "--config", str(config)]) == 0
    assert f"unless all share ${PROMPT_HASH_KEY_ENV})" in capsys.readouterr().out
    with caplog.at_level(logging.WARNING, logger="infersight.runtime"):
        warn_unshared_hash_key(load_settings(str(config)))
    assert [r.getMessage() for r in caplog.records if PROMPT_HASH_KEY_ENV in r.getMessage()]

    caplog.clear()
    monkeypatch.setenv(PROMPT_HASH_KEY_ENV, "a-shared-secret-of-the-fleet")
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"prompt hash key: ${PROMPT_HASH_KEY_ENV}" in out and "a-shared-secret" not in out
    with caplog.at_level(logging.WARNING, logger="infersight.runtime"):
        warn_unshared_hash_key(load_settings(str(config)))
    assert not caplog.records
