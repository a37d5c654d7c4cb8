"""CloudWatch targets in the ``telemetry:`` config: the shapes that load, what they become for the
importer, and start-up errors that name the key and what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from infersight.config import ConfigError, Settings, load_settings
from infersight.telemetry.cloudwatch import BedrockModel, SageMakerInferenceComponent, SageMakerVariant
from infersight.telemetry.cloudwatch_loop import CloudWatchPoller, importer_target

BASE = "backends: [{name: a, url: http://x/v1, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


def load(tmp_path: Path, telemetry: str) -> Settings:
    path = tmp_path / "gw.yaml"
    path.write_text(BASE + "telemetry:\n" + telemetry)
    return load_settings(path)


def test_the_documented_shapes_load_and_map_to_importer_targets(tmp_path: Path) -> None:
    cfg = load(tmp_path, f"""
  cloudwatch: {{interval_s: 120, period_s: 300, settle_s: 180, lookback_s: 7200, timeout_s: 10}}
  targets:
    - {{instance: my-endpoint, kind: sagemaker, region: us-east-1, endpoint: my-endpoint, variant: AllTraffic,
       models: [llama-3-8b], gpus_per_instance: 1}}
    - {{instance: my-endpoint, kind: sagemaker, region: us-east-1, inference_component: ic-llama,
       models: [llama-3-70b]}}
    - {{instance: bedrock-us-east-1, kind: bedrock, region: us-east-1, bedrock_model_id: "{HAIKU}",
       models: [claude-haiku]}}
    - {{instance: other, kind: sagemaker, region: eu-west-1, endpoint: ep2}}
    - {{instance: gpu-0, kind: vllm, url: "http://10.0.0.5:8000/metrics"}}
""").telemetry
    cw = cfg.cloudwatch
    assert (cw.interval_s, cw.period_s, cw.settle_s, cw.lookback_s, cw.timeout_s) == (120, 300, 180, 7200, 10)
    assert [importer_target(t) for t in cfg.targets[:4]] == [
        SageMakerVariant("my-endpoint", "AllTraffic", model_id="llama-3-8b", gpus_per_instance=1,
                         instance="my-endpoint"),
        SageMakerInferenceComponent("my-endpoint", "ic-llama", model_id="llama-3-70b", instance="my-endpoint"),
        BedrockModel(HAIKU, model_label="claude-haiku", instance="bedrock-us-east-1"),
        SageMakerVariant("ep2", "AllTraffic", instance="other"),  # variant defaults to AllTraffic
    ]
    assert [t.cloudwatch_model() for t in cfg.targets[:4]] == ["llama-3-8b", "llama-3-70b", "claude-haiku",
                                                               "AllTraffic"]
    poller = CloudWatchPoller(cfg, client_factory=lambda region: pytest.fail("built before the first poll"))
    assert {r: [t.instance for t, _ in ts] for r, ts in poller.by_region.items()} == {
        "us-east-1": ["my-endpoint", "my-endpoint", "bedrock-us-east-1"], "eu-west-1": ["other"]}


def test_cloudwatch_defaults_poll_far_less_often_than_the_scrapes(tmp_path: Path) -> None:
    section = "  targets: [{instance: b, kind: bedrock, region: us-west-2, bedrock_model_id: m}]\n"
    cfg = load(tmp_path, section).telemetry
    cw = cfg.cloudwatch
    assert (cw.interval_s, cw.period_s, cw.settle_s, cw.lookback_s) == (60, 60, 120, 3600)
    assert cfg.interval_s == 10


def test_several_components_of_one_endpoint_share_an_instance(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
  targets:
    - {instance: shared, kind: sagemaker, region: us-east-1, inference_component: ic-a}
    - {instance: shared, kind: sagemaker, region: us-east-1, inference_component: ic-b}
""").telemetry
    assert [t.cloudwatch_model() for t in cfg.targets] == ["ic-a", "ic-b"]


SM = "instance: a, kind: sagemaker, region: us-east-1"


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ("  targets: [{instance: a, kind: sagemaker, endpoint: e}]\n", "telemetry.targets.0",
         "region is required for kind sagemaker"),
        ("  targets: [{instance: a, kind: bedrock, bedrock_model_id: m}]\n", "telemetry.targets.0",
         "region is required for kind bedrock"),
        ("  targets: [{instance: a, kind: sagemaker, region: us-east1, endpoint: e}]\n",
         "telemetry.targets.0.region", "not an AWS region name"),
        (f"  targets: [{{{SM}}}]\n", "telemetry.targets.0", "needs endpoint (with variant, default AllTraffic) or "
                                                            "inference_component"),
        (f"  targets: [{{{SM}, endpoint: e, inference_component: c}}]\n", "telemetry.targets.0", "not both"),
        (f"  targets: [{{{SM}, inference_component: c, variant: v}}]\n", "telemetry.targets.0",
         "variant is only read with endpoint"),
        (f"  targets: [{{{SM}, inference_component: c, gpus_per_instance: 2}}]\n", "telemetry.targets.0",
         "gpus_per_instance is only read with endpoint"),
        (f"  targets: [{{{SM}, endpoint: e, gpus_per_instance: 0}}]\n", "telemetry.targets.0.gpus_per_instance",
         "greater than or equal to 1"),
        (f"  targets: [{{{SM}, endpoint: e, bedrock_model_id: m}}]\n", "telemetry.targets.0",
         "bedrock_model_id is only read by kind bedrock"),
        (f"  targets: [{{{SM}, endpoint: e, url: 'http://x/metrics'}}]\n", "telemetry.targets.0",
         "reads CloudWatch, not a metrics page: remove url"),
        (f"  targets: [{{{SM}, endpoint: e, models: [a, b]}}]\n", "telemetry.targets.0", "one model per target"),
        (f"  targets: [{{{SM}, endpoint: e, process_models: {{1: m}}}}]\n", "telemetry.targets.0",
         "only read by kind nvml"),
        ("  targets: [{instance: a, kind: bedrock, region: us-east-1}]\n", "telemetry.targets.0",
         "bedrock_model_id is required for kind bedrock"),
        ("  targets: [{instance: a, kind: bedrock, region: us-east-1, bedrock_model_id: m, endpoint: e}]\n",
         "telemetry.targets.0.endpoint", "endpoint: only read by kind sagemaker, not bedrock"),
        ("  targets: [{instance: a, kind: vllm, url: 'http://x/metrics', region: us-east-1}]\n",
         "telemetry.targets.0.region", "region: only read by kinds sagemaker and bedrock, not vllm"),
        ("  targets: [{instance: a, kind: sagemaker, region: us-east-1, endpoint: e, varient: v}]\n",
         "telemetry.targets.0.varient", "Extra inputs"),
        (f"  targets: [{{{SM}, endpoint: e}}, {{instance: b, kind: sagemaker, region: us-east-1, endpoint: e, "
         "variant: AllTraffic}]\n", "telemetry", "read the same CloudWatch metrics (kind sagemaker, region us-east-1, "
                                                 "endpoint e, variant AllTraffic)"),
        (f"  targets: [{{{SM}, inference_component: c1, models: [m]}}, {{{SM}, inference_component: c2, "
         "models: [m]}]\n", "telemetry", "instance 'a' report model 'm': their samples would collide"),
        ("  cloudwatch: {period_s: 90}\n", "telemetry.cloudwatch.period_s", "multiple of 60"),
        ("  cloudwatch: {interval_s: 5}\n", "telemetry.cloudwatch.interval_s", "greater than or equal to 10"),
        ("  cloudwatch: {lookback_s: 120}\n", "telemetry.cloudwatch", "at least settle_s + period_s (180)"),
        ("  cloudwatch: {intervall_s: 60}\n", "telemetry.cloudwatch.intervall_s", "Extra inputs"),
    ],
)
def test_errors_name_the_key_and_what_is_missing(tmp_path: Path, section: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, section)
    assert info.value.key == key
    assert "gw.yaml" in str(info.value) and says in str(info.value)
