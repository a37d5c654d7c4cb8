"""The ``telemetry:`` config section: defaults, and errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from infersight.config import ConfigError, Settings, load_settings

BASE = "backends: [{name: a, url: http://x/v1, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n"


def load(tmp_path: Path, telemetry: str) -> Settings:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + "telemetry:\n" + telemetry)
    return load_settings(path)


def test_defaults_run_no_collector(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE)
    cfg = load_settings(path).telemetry
    assert (cfg.interval_s, cfg.timeout_s, cfg.targets) == (10.0, 5.0, [])


def test_a_full_section_is_read(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
  interval_s: 2
  timeout_s: 1.5
  targets:
    - {instance: gpu-0, kind: vllm, url: "http://10.0.0.5:8000/metrics", models: [llama-3-8b]}
    - {instance: gpu-0, kind: dcgm, url: "http://10.0.0.5:9400/metrics"}
    - instance: this-host
      kind: nvml
      process_models: {4242: llama-3-8b, "9999": qwen, "vllm serve qwen": qwen}
""").telemetry
    assert cfg.interval_s == 2 and cfg.timeout_s == 1.5
    assert [t.kind for t in cfg.targets] == ["vllm", "dcgm", "nvml"]
    assert cfg.targets[0].models == ["llama-3-8b"] and cfg.targets[1].models == []
    # a YAML number is a pid; a quoted one, like any string, a command-line substring
    assert cfg.targets[2].process_models == {4242: "llama-3-8b", "9999": "qwen", "vllm serve qwen": "qwen"}


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ("  targets: [{instance: a, kind: vllm}]\n", "telemetry.targets.0", "url is required for kind vllm"),
        ("  targets: [{instance: a, kind: dcgm, url: 'ftp://x/metrics'}]\n", "telemetry.targets.0.url", "http://"),
        ("  targets: [{instance: a, kind: prometheus, url: 'http://x/metrics'}]\n", "telemetry.targets.0.kind",
         "vllm"),
        ("  targets: [{instance: a, kind: vllm, url: 'http://x/metrics', modles: [m]}]\n",
         "telemetry.targets.0.modles", "Extra inputs"),
        ("  targets: [{kind: vllm, url: 'http://x/metrics'}]\n", "telemetry.targets.0.instance", "required"),
        ("  targets: [{instance: a, kind: nvml, url: 'http://x/metrics'}]\n", "telemetry.targets.0", "remove url"),
        ("  targets: [{instance: a, kind: nvml, models: [m]}]\n", "telemetry.targets.0", "process_models"),
        ("  targets: [{instance: a, kind: tgi, url: 'http://x/metrics', process_models: {1: m}}]\n",
         "telemetry.targets.0", "only read by kind nvml"),
        ("  targets: [{instance: a, kind: vllm, url: 'http://x/m'}, {instance: a, kind: vllm, url: 'http://y/m'}]\n",
         "telemetry", "instance 'a' and kind vllm"),
        ("  targets: [{instance: a, kind: nvml}, {instance: b, kind: nvml}]\n", "telemetry", "at most one"),
        ("  interval_s: 5\n  timeout_s: 6\n", "telemetry", "must not exceed interval_s"),
        ("  interval_s: 0\n", "telemetry.interval_s", "greater than or equal"),
        ("  intervall_s: 5\n", "telemetry.intervall_s", "Extra inputs"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, section: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, section)
    assert info.value.key == key
    assert "gw.yaml" in str(info.value) and says in str(info.value)
