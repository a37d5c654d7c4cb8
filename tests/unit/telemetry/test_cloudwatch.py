"""CloudWatchImporter at the transport seam: a real botocore CloudWatch client under ``Stubber``.

Stubber checks every request against the expected parameters and the service model, and every
canned answer against the GetMetricData output shape, so no real AWS call can happen and both
the request we build and the answers we parse have AWS's real shapes. Answers live in
``tests/data/cloudwatch/`` (metric names and units from ``extdata/aws/aws_metrics_reference.json``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("botocore")
from botocore.session import get_session  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from infersight.telemetry.cloudwatch import (  # noqa: E402
    BEDROCK_METRICS,
    SAGEMAKER_VARIANT_METRICS,
    BedrockModel,
    CloudWatchImporter,
    SageMakerInferenceComponent,
    SageMakerVariant,
    cloudwatch_client,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "cloudwatch"
LOGGER = "infersight.telemetry.cloudwatch"


def at(hhmmss: str) -> datetime:
    return datetime.fromisoformat(f"2024-05-01T{hhmmss}+00:00")


NOW = at("12:10:30").timestamp()  # window: 12:00 (lookback 600 s) to 12:08 (settle 120 s, aligned)


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region, and no shared config: nothing here may find real AWS."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def client() -> Iterator[Any]:
    return get_session().create_client("cloudwatch", region_name="us-east-1")


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def pages(name: str) -> list[dict[str, Any]]:
    """A recorded answer, timestamps parsed to aware datetimes as botocore hands them over."""
    out = json.loads((DATA / name).read_text())["pages"]
    for page in out:
        for result in page["MetricDataResults"]:
            result["Timestamps"] = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in result["Timestamps"]]
    return out


def expected(importer: CloudWatchImporter, start: str, end: str, ids: list[str] | None = None,
             token: str | None = None) -> dict[str, Any]:
    queries = [q for q in importer.queries if ids is None or q.id in ids]
    params: dict[str, Any] = {"MetricDataQueries": [q.request(importer.period_s) for q in queries],
                              "StartTime": at(start), "EndTime": at(end), "ScanBy": "TimestampAscending"}
    if token:
        params["NextToken"] = token
    return params


def table(samples: list[Any]) -> dict[tuple[str, str | None, str], float]:
    out: dict[tuple[str, str | None, str], float] = {}
    for s in samples:
        key = (s.metric, s.model_id, s.ts)
        assert key not in out, f"duplicate sample {key}"
        out[key] = s.value
    return out


def test_variant_request_pagination_and_units(client: Any, stub: Stubber) -> None:
    imp = CloudWatchImporter(client, [SageMakerVariant("llama3-8b-prod", gpus_per_instance=4, model_id="llama-3-8b")],
                             clock=lambda: NOW, lookback_s=600)
    first, second = pages("sagemaker_variant_pages.json")
    stub.add_response("get_metric_data", first, expected(imp, "12:00:00", "12:08:00"))
    stub.add_response("get_metric_data", second, expected(imp, "12:00:00", "12:08:00", token=first["NextToken"]))
    samples = imp.collect()

    q = imp.queries
    assert [(x.spec.namespace, x.spec.name, x.spec.stat) for x in q] == [
        ("/aws/sagemaker/Endpoints", "GPUUtilization", "Average"),
        ("/aws/sagemaker/Endpoints", "GPUMemoryUtilization", "Average"),
        ("AWS/SageMaker", "ModelLatency", "Average"), ("AWS/SageMaker", "OverheadLatency", "Average"),
        ("AWS/SageMaker", "Invocations", "Sum"), ("AWS/SageMaker", "Invocation4XXErrors", "Sum"),
        ("AWS/SageMaker", "Invocation5XXErrors", "Sum")]
    assert q[0].request(60)["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "EndpointName", "Value": "llama3-8b-prod"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    assert {(s.source, s.instance, s.gpu, s.model_id) for s in samples} == {("sagemaker", "llama3-8b-prod", None,
                                                                              "llama-3-8b")}
    got = table(samples)
    ts = [at(f"12:0{i}:00").isoformat() for i in range(4)]
    # GPUUtilization is 0-100 x GPUs: 250% on 4 GPUs is 62.5% busy; pages 1 and 2 are merged in time order
    assert [got[("gpu_utilization", "llama-3-8b", t)] for t in ts] == pytest.approx([0.625, 0.65625, 0.7525, 0.72])
    assert got[("gpu_memory_utilization", "llama-3-8b", ts[1])] == pytest.approx(0.79)
    # microseconds -> milliseconds
    assert [got[("model_latency_ms", "llama-3-8b", t)] for t in ts[:3]] == pytest.approx([152.34, 149.875, 201.004])
    assert got[("overhead_latency_ms", "llama-3-8b", ts[1])] == pytest.approx(3.9805)
    # Sum per 60 s period -> per second
    assert got[("invocations_per_s", "llama-3-8b", ts[0])] == pytest.approx(20.0)
    assert got[("invocations_per_s", "llama-3-8b", ts[1])] == pytest.approx(21.9)
    assert got[("errors_4xx_per_s", "llama-3-8b", ts[0])] == pytest.approx(0.1)
    assert not [k for k in got if k[0] == "errors_5xx_per_s"]
    assert len(samples) == 4 + 2 + 3 + 2 + 2 + 2
    assert set(imp.watermarks().values()) == {at("12:08:00").isoformat()}


def test_later_calls_ask_only_for_new_periods(client: Any, stub: Stubber) -> None:
    now = [NOW]
    imp = CloudWatchImporter(client, [BedrockModel("anthropic.claude-3-haiku-20240307-v1:0")],
                             clock=lambda: now[0], lookback_s=600)
    answer = pages("bedrock.json")[0]
    for r in answer["MetricDataResults"]:  # all Complete for this test
        r.pop("Messages", None)
        r["StatusCode"] = "Complete"
    stub.add_response("get_metric_data", answer, expected(imp, "12:00:00", "12:08:00"))
    assert len(imp.collect()) == 6
    assert imp.collect() == []  # same minute: the window is empty, so no call at all
    now[0] += 75  # 12:11:45 -> the 12:08 period has settled
    stub.add_response("get_metric_data", {"MetricDataResults": [
        {"Id": "q1_invocations", "Label": "Invocations", "StatusCode": "Complete",
         "Timestamps": [at("12:08:00")], "Values": [30.0]}]}, expected(imp, "12:08:00", "12:09:00"))
    (sample,) = imp.collect()
    assert (sample.metric, sample.ts, sample.value) == ("invocations_per_s", at("12:08:00").isoformat(), 0.5)


def test_inference_components_on_one_endpoint_stay_apart(client: Any, stub: Stubber) -> None:
    targets = [SageMakerInferenceComponent("llm-shared", "ic-llama", model_id="llama-3-70b"),
               SageMakerInferenceComponent("llm-shared", "ic-mistral")]
    imp = CloudWatchImporter(client, targets, clock=lambda: NOW, lookback_s=600)
    stub.add_response("get_metric_data", pages("inference_components.json")[0], expected(imp, "12:00:00", "12:08:00"))
    samples = imp.collect()

    dims = {q.id: q.request(60)["MetricStat"]["Metric"] for q in imp.queries}
    assert dims["q0_gpuutilizationnormalized"] == {"Namespace": "/aws/sagemaker/InferenceComponents",
                                                   "MetricName": "GPUUtilizationNormalized",
                                                   "Dimensions": [{"Name": "InferenceComponentName",
                                                                   "Value": "ic-llama"}]}
    assert dims["q9_modellatency"]["Namespace"] == "AWS/SageMaker"
    assert dims["q9_modellatency"]["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "ic-mistral"}]
    assert {s.instance for s in samples} == {"llm-shared"}
    got = table(samples)
    t6, t7 = at("12:06:00").isoformat(), at("12:07:00").isoformat()
    # explicit model_id wins; otherwise the component's name
    assert got[("gpu_utilization", "llama-3-70b", t6)] == pytest.approx(0.91)
    assert got[("gpu_utilization", "ic-mistral", t6)] == pytest.approx(0.22)
    assert got[("gpu_memory_utilization", "ic-mistral", t7)] == pytest.approx(0.40)
    assert got[("model_latency_ms", "llama-3-70b", t7)] == pytest.approx(790.5)
    assert got[("model_latency_ms", "ic-mistral", t7)] == pytest.approx(198.0)
    assert got[("invocations_per_s", "llama-3-70b", t6)] == pytest.approx(5.0)
    assert got[("invocations_per_s", "ic-mistral", t6)] == pytest.approx(1.0)
    assert got[("errors_5xx_per_s", "llama-3-70b", t6)] == pytest.approx(0.05)
    assert ("errors_5xx_per_s", "ic-mistral", t6) not in got
    assert {s.model_id for s in samples} == {"llama-3-70b", "ic-mistral"}  # never a blended endpoint figure


def test_bedrock_units_and_internal_error_retried_alone(client: Any, stub: Stubber,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    now = [NOW]
    imp = CloudWatchImporter(client, [BedrockModel(model)], clock=lambda: now[0], lookback_s=600)
    stub.add_response("get_metric_data", pages("bedrock.json")[0], expected(imp, "12:00:00", "12:08:00"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        samples = imp.collect()
    assert {(s.source, s.instance, s.model_id, s.gpu) for s in samples} == {("bedrock", "bedrock:us-east-1", model, None)}
    got = table(samples)
    t6 = at("12:06:00").isoformat()
    assert got[("invocation_latency_ms", model, t6)] == pytest.approx(1843.2)  # already milliseconds
    assert got[("input_tokens_per_s", model, t6)] == pytest.approx(1024.0)
    assert got[("invocations_per_s", model, t6)] == pytest.approx(0.7)
    assert not [k for k in got if k[0] == "output_tokens_per_s"]
    assert [r.getMessage() for r in caplog.records] == [
        "CloudWatch returned InternalError for AWS/Bedrock OutputTokenCount "
        "{'ModelId': 'anthropic.claude-3-haiku-20240307-v1:0'}; retrying next round"]
    # next round: the failed query, never read, asks alone from now - lookback; the others from 12:08
    now[0] += 60
    stub.add_response("get_metric_data", {"MetricDataResults": [
        {"Id": "q3_outputtokencount", "StatusCode": "Complete", "Timestamps": [at("12:07:00")], "Values": [9000.0]}]},
        expected(imp, "12:01:00", "12:09:00", ids=["q3_outputtokencount"]))
    stub.add_response("get_metric_data", {"MetricDataResults": []},
                      expected(imp, "12:08:00", "12:09:00", ids=["q0_invocationlatency", "q1_invocations",
                                                                 "q2_inputtokencount"]))
    (sample,) = imp.collect()
    assert (sample.metric, sample.value) == ("output_tokens_per_s", 150.0)
    assert set(imp.watermarks().values()) == {at("12:09:00").isoformat()}


def test_unknown_gpu_count_keeps_the_sum_under_its_own_name(client: Any, stub: Stubber) -> None:
    imp = CloudWatchImporter(client, [SageMakerVariant("ep", "v1")], clock=lambda: NOW, lookback_s=600)
    stub.add_response("get_metric_data", {"MetricDataResults": [
        {"Id": "q0_gpuutilization", "StatusCode": "Complete", "Timestamps": [at("12:05:00")], "Values": [250.0]},
        {"Id": "q1_gpumemoryutilization", "StatusCode": "Complete", "Timestamps": [at("12:05:00")],
         "Values": [90.0]}]}, expected(imp, "12:00:00", "12:08:00"))
    got = {(s.metric, s.model_id): s.value for s in imp.collect()}
    assert got == {("gpu_utilization_sum", "v1"): 2.5, ("gpu_memory_utilization_sum", "v1"): 0.9}


def test_failed_call_logs_once_keeps_watermarks_and_recovers(client: Any, stub: Stubber,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    imp = CloudWatchImporter(client, [BedrockModel("m")], clock=lambda: NOW, lookback_s=600)
    for _ in range(3):
        stub.add_client_error("get_metric_data", "Throttling", "Rate exceeded", 400,
                              expected_params=expected(imp, "12:00:00", "12:08:00"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert [imp.collect() for _ in range(3)] == [[], [], []]
    assert len(caplog.records) == 1 and "Throttling" in caplog.records[0].getMessage()
    assert imp.watermarks() == {}
    stub.add_response("get_metric_data", {"MetricDataResults": []}, expected(imp, "12:00:00", "12:08:00"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert imp.collect() == []
    assert caplog.records[-1].getMessage() == "CloudWatch GetMetricData works again"
    assert len(imp.watermarks()) == 4


def test_page_cap_moves_on_only_past_what_arrived(client: Any, stub: Stubber) -> None:
    imp = CloudWatchImporter(client, [BedrockModel("m")], clock=lambda: NOW, lookback_s=600, max_pages=1)
    stub.add_response("get_metric_data", {"NextToken": "more", "MetricDataResults": [
        {"Id": "q1_invocations", "StatusCode": "PartialData", "Timestamps": [at("12:00:00"), at("12:01:00")],
         "Values": [6.0, 12.0]}]}, expected(imp, "12:00:00", "12:08:00"))
    assert [s.value for s in imp.collect()] == [0.1, 0.2]
    assert imp.watermarks() == {"q1_invocations": at("12:02:00").isoformat()}


def test_query_ids_follow_aws_rules_and_requests_hold_at_most_500(client: Any, stub: Stubber) -> None:
    targets = [BedrockModel(f"us.vendor.model-{i}:0") for i in range(130)]  # 520 queries
    imp = CloudWatchImporter(client, targets, clock=lambda: NOW, lookback_s=600)
    ids = [q.id for q in imp.queries]
    assert len(ids) == len(set(ids)) == 520
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9_]{0,254}", i) for i in ids)
    stub.add_response("get_metric_data", {"MetricDataResults": []}, expected(imp, "12:00:00", "12:08:00", ids[:500]))
    stub.add_response("get_metric_data", {"MetricDataResults": []}, expected(imp, "12:00:00", "12:08:00", ids[500:]))
    assert imp.collect() == []


def test_metric_names_and_units_match_the_aws_reference() -> None:
    extdata = os.environ.get("INFERSIGHT_EXTDATA")
    if not extdata:
        pytest.skip("INFERSIGHT_EXTDATA is not set (CI points it at ../shared/extdata)")
    ref = json.loads((Path(extdata) / "aws" / "aws_metrics_reference.json").read_text())
    sm = {m["metric"]: m for m in ref["sagemaker"]["metrics"]}
    unit_for_scale = {"us_to_ms": {"Microseconds"}, "gpu_percent": {"Percent"}, "per_s": {"None"}}
    for spec in SAGEMAKER_VARIANT_METRICS:
        entry = sm[spec.name]
        assert spec.namespace in ref["sagemaker"]["namespaces"]
        assert entry["unit"] in unit_for_scale[spec.scale], spec.name
        assert entry["valid_statistics"] is None or spec.stat in entry["valid_statistics"], spec.name
    bedrock = {m["metric"]: m for m in ref["bedrock"]["metrics"]}
    assert {s.namespace for s in BEDROCK_METRICS} == {ref["bedrock"]["namespace"]}
    assert "ModelId" in ref["bedrock"]["dimension"]
    for spec in BEDROCK_METRICS:
        unit = bedrock[spec.name]["unit"]
        assert (unit == "MilliSeconds") if spec.scale == "none" else unit.startswith("SampleCount"), spec.name


def test_cloudwatch_client_builds_a_boto3_client() -> None:
    pytest.importorskip("boto3")
    c = cloudwatch_client("eu-west-1")
    assert (c.meta.service_model.service_name, c.meta.region_name) == ("cloudwatch", "eu-west-1")
    assert CloudWatchImporter(c, [BedrockModel("m")]).queries[0].instance == "bedrock:eu-west-1"


def test_period_must_be_whole_minutes(client: Any) -> None:
    with pytest.raises(ValueError, match="multiple of 60"):
        CloudWatchImporter(client, [], period_s=30)


def test_every_emitted_name_is_listed() -> None:
    from infersight.telemetry.cloudwatch import METRICS, SAGEMAKER_COMPONENT_METRICS

    names = {s.metric for s in (*SAGEMAKER_VARIANT_METRICS, *SAGEMAKER_COMPONENT_METRICS, *BEDROCK_METRICS)}
    names |= {f"{s.metric}_sum" for s in SAGEMAKER_VARIANT_METRICS if s.scale == "gpu_percent"}
    assert names == set(METRICS)
