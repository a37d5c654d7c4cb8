"""Config validation: errors name the key and the file; the example config is valid."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from infersight.cli import main
from infersight.config import ConfigError, hash_api_key, load_settings, settings_from_dict
from tests.conftest import config_dict

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def test_example_config_is_valid() -> None:
    settings = load_settings(ROOT / "deploy" / "gateway.example.yaml")
    assert settings.server.port == 8700
    assert [m.name for m in settings.backends[0].models] == ["sim-large", "sim-small", "sim-reasoner"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("backends: [{name: a, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n", "backends.0.url"),
        ("backends: [{name: a, url: ftp://x, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n", "backends.0.url"),
        ("backends: [{name: a, url: http://x, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n"
         "server: {port: 99999}\n", "server.port"),
        ("backends: [{name: a, url: http://x, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n"
         "server: {prot: 1}\n", "server.prot"),
        ("backends: [{name: a, url: http://x, models: [m]}]\ntenants: [{id: t, api_keys: ['sha256:abc']}]\n",
         "tenants.0.api_keys"),
        ("backends: [{name: a, url: http://x, models: [{name: m, tokenizer: {}}]}]\n"
         "tenants: [{id: t, api_keys: [k]}]\n", "backends.0.models.0.tokenizer"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, key) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == key
    assert str(path) in str(err.value) and key in str(err.value)


def test_duplicate_model_and_shared_key_are_refused(tmp_path) -> None:
    dup = write(tmp_path, "backends: [{name: a, url: http://x, models: [m]}, {name: b, url: http://y, models: [m]}]\n"
                          "tenants: [{id: t, api_keys: [k]}]\n")
    with pytest.raises(ConfigError, match="served by both"):
        load_settings(dup)
    shared = write(tmp_path, "backends: [{name: a, url: http://x, models: [m]}]\n"
                             "tenants: [{id: t, api_keys: [k]}, {id: u, api_keys: [k]}]\n")
    with pytest.raises(ConfigError, match="shared by tenants"):
        load_settings(shared)


@pytest.mark.parametrize("extra", ["admin_api_keys: [k]\n", "admin_api_keys: ['sha256:%s']\n" % hashlib.sha256(b"k").hexdigest(),
                                   "server: {metrics_keys: [k]}\n"])
def test_a_tenant_key_is_never_an_admin_or_metrics_key(tmp_path, extra) -> None:
    """A tenant holding the admin or /metrics key would read every tenant's data; the match is by hash,
    so a hashed form of the same key is refused too."""
    path = write(tmp_path, "backends: [{name: a, url: http://x, models: [m]}]\n"
                           "tenants: [{id: t, api_keys: [k]}]\n" + extra)
    with pytest.raises(ConfigError, match="also an API key of tenant 't'") as err:
        load_settings(path)
    assert str(path) in str(err.value)
    load_settings(write(tmp_path, "backends: [{name: a, url: http://x, models: [m]}]\n"
                                  "tenants: [{id: t, api_keys: [other]}]\n" + extra))


def test_invalid_yaml_and_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(write(tmp_path, "backends: [\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.yaml")
    for scalar in ("0\n", "false\n", "- a\n"):  # a scalar or a list: said so, not "field required"
        with pytest.raises(ConfigError, match="top level must be a mapping"):
            load_settings(write(tmp_path, scalar))


def test_keys_are_hashed() -> None:
    assert hash_api_key("sk-x") == hashlib.sha256(b"sk-x").hexdigest()
    assert hash_api_key("sha256:" + "AB" * 32) == "ab" * 32


def test_cli_check_config_reports_clearly(tmp_path, capsys) -> None:
    bad = write(tmp_path, "backends: []\ntenants: [{id: t, api_keys: [k]}]\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "config error in" in err and "backends" in err
    assert main(["check-config", "--config", str(ROOT / "deploy" / "gateway.example.yaml")]) == 0


def test_per_tenant_text_retention_names_real_tenants_and_whole_days(tmp_path) -> None:
    """A typo in a tenant id would silently keep that tenant's text for the global text_days."""
    base = config_dict(tmp_path)
    ok = settings_from_dict({**base, "retention": {"text_days_by_tenant": {"acme": 0, "globex": 7}}})
    assert ok.retention.text_days_by_tenant == {"acme": 0, "globex": 7}
    with pytest.raises(ConfigError, match=r"unknown tenant\(s\) \['acmee'\]"):
        settings_from_dict({**base, "retention": {"text_days_by_tenant": {"acmee": 7}}})
    with pytest.raises(ConfigError, match="retention.text_days_by_tenant.acme"):
        settings_from_dict({**base, "retention": {"text_days_by_tenant": {"acme": -1}}})
