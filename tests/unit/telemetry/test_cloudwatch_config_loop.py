"""Configured CloudWatch targets through the telemetry collector, end to end.

config -> TelemetryCollector -> CloudWatchPoller (one importer per region, real boto3 clients under
botocore's ``Stubber``, the recorded answers of test_cloudwatch.py) -> MemoryBus -> TelemetrySink ->
DuckDB. No AWS call can happen: Stubber answers every call, and the credentials are dummies.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
from botocore.stub import Stubber  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from infersight.config import settings_from_dict  # noqa: E402
from infersight.model.telemetry import TelemetrySample  # noqa: E402
from infersight.runtime_telemetry import wire_telemetry  # noqa: E402
from infersight.store.duckdb_store import DuckDBStore  # noqa: E402
from infersight.telemetry.cloudwatch import cloudwatch_client  # noqa: E402
from infersight.telemetry.cloudwatch_loop import default_client_factory  # noqa: E402
from infersight.telemetry.collector import TelemetryCollector, TelemetryMetrics  # noqa: E402
from infersight.telemetry.settings import TelemetrySettings  # noqa: E402
from tests.conftest import config_dict  # noqa: E402
from tests.unit.telemetry.test_cloudwatch import NOW, _no_aws, at, expected, pages  # noqa: E402, F401

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
VARIANT = {"instance": "llama3-8b-prod", "kind": "sagemaker", "region": "us-east-1", "endpoint": "llama3-8b-prod",
           "models": ["llama-3-8b"], "gpus_per_instance": 4}
BEDROCK = {"instance": "bedrock-eu", "kind": "bedrock", "region": "eu-west-1", "bedrock_model_id": HAIKU,
           "models": ["claude-haiku"]}
CLOUDWATCH = {"lookback_s": 600}  # as test_cloudwatch: the first window is 12:00 to 12:08
LOGGER = "infersight.telemetry"


def failures(registry: CollectorRegistry, instance: str, kind: str) -> float:
    return registry.get_sample_value("infersight_telemetry_scrape_failures_total",
                                     {"instance": instance, "kind": kind}) or 0.0


@pytest.fixture
def clients() -> Iterator[dict[str, tuple[Any, Stubber]]]:
    """Real boto3 CloudWatch clients (as the default factory builds them), one per region, stubbed."""
    out: dict[str, tuple[Any, Stubber]] = {}
    for region in ("us-east-1", "eu-west-1"):
        client = cloudwatch_client(region)
        out[region] = (client, Stubber(client).__enter__())
    yield out
    for _, stub in out.values():
        stub.__exit__(None, None, None)


def wait_until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_configured_targets_land_in_duckdb(tmp_path: Path, clients: dict[str, tuple[Any, Stubber]]) -> None:
    store = DuckDBStore(str(tmp_path / "infersight.duckdb"))
    store.migrate()
    registry = CollectorRegistry()
    seen: list[TelemetrySample] = []
    settings = settings_from_dict(config_dict(tmp_path / "data", telemetry={
        "interval_s": 0.5, "timeout_s": 0.5, "cloudwatch": CLOUDWATCH, "targets": [VARIANT, BEDROCK]}))
    wiring = wire_telemetry(settings, store, registry, observers=[seen.extend],
                            cloudwatch_client=lambda region: clients[region][0])
    assert wiring is not None
    poller = wiring.collector.cloudwatch
    assert poller is not None
    poller.clock = lambda: NOW  # before the importers are built: they read the time through it
    us, eu = poller.importer("us-east-1"), poller.importer("eu-west-1")
    assert (us.period_s, us.lookback_s, us.settle_s) == (60, 600, 120)
    first, second = pages("sagemaker_variant_pages.json")
    stub_us, stub_eu = clients["us-east-1"][1], clients["eu-west-1"][1]
    stub_us.add_response("get_metric_data", first, expected(us, "12:00:00", "12:08:00"))
    stub_us.add_response("get_metric_data", second, expected(us, "12:00:00", "12:08:00", token=first["NextToken"]))
    stub_eu.add_response("get_metric_data", pages("bedrock.json")[0], expected(eu, "12:00:00", "12:08:00"))

    asyncio.run(wiring.start())
    try:
        wait_until(lambda: wiring.collector.cloudwatch_rounds >= 1)
    finally:
        asyncio.run(wiring.stop())
    stub_us.assert_no_pending_responses()
    stub_eu.assert_no_pending_responses()
    assert wiring.collector.cloudwatch_rounds == 1  # the next poll is 60 s away

    llama = store.telemetry_around("llama-3-8b", at("12:04:00"), timedelta(minutes=10))
    haiku = store.telemetry_around("claude-haiku", at("12:04:00"), timedelta(minutes=10))
    store.close()
    assert {(r["source"], r["instance"], r["gpu"]) for r in llama} == {("sagemaker", "llama3-8b-prod", None)}
    assert len(llama) == 15  # every datapoint of both pages, as the importer's own test reads them
    gpu = sorted((r["ts"], r["value"]) for r in llama if r["metric"] == "gpu_utilization")
    assert [v for _, v in gpu] == pytest.approx([0.625, 0.65625, 0.7525, 0.72])  # 0-100 x 4 GPUs -> 0-1
    assert {(r["source"], r["instance"]) for r in haiku} == {("bedrock", "bedrock-eu")}
    assert {r["metric"] for r in haiku} == {"invocation_latency_ms", "invocations_per_s", "input_tokens_per_s"}
    assert len(seen) == len(llama) + len(haiku)
    sources = {s: registry.get_sample_value("infersight_telemetry_samples_total", {"source": s})
               for s in ("sagemaker", "bedrock")}
    assert sources == {"sagemaker": 15.0, "bedrock": float(len(haiku))}
    # bedrock.json marks OutputTokenCount InternalError: that target failed this poll (retried next time)
    assert failures(registry, "bedrock-eu", "bedrock") == 1
    assert failures(registry, "llama3-8b-prod", "sagemaker") == 0
    assert wiring.collector.down == {("bedrock-eu", "bedrock"): "OutputTokenCount: InternalError"}


def test_failed_polls_are_counted_logged_once_and_recover(clients: dict[str, tuple[Any, Stubber]],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    published: list[TelemetrySample] = []
    settings = TelemetrySettings(cloudwatch=CLOUDWATCH, targets=[
        VARIANT, {**VARIANT, "endpoint": "other", "models": ["other"]}])
    client, stub = clients["us-east-1"]
    collector = TelemetryCollector(settings, published.append, TelemetryMetrics(registry), clock=lambda: NOW,
                                   cloudwatch_client=lambda region: client)
    importer = collector.cloudwatch.importer("us-east-1")  # type: ignore[union-attr]
    for _ in range(2):
        stub.add_client_error("get_metric_data", "Throttling", "Rate exceeded", 400,
                              expected_params=expected(importer, "12:00:00", "12:08:00"))
    stub.add_response("get_metric_data", {"MetricDataResults": [
        {"Id": "q2_modellatency", "StatusCode": "Complete", "Timestamps": [at("12:05:00")], "Values": [2000.0]}]},
        expected(importer, "12:00:00", "12:08:00"))
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def rounds(n: int) -> list[list[TelemetrySample]]:
        return [await collector.cloudwatch_round() for _ in range(n)]

    assert asyncio.run(rounds(2)) == [[], []]
    # two targets of one instance and kind: one failure per poll, like one failed scrape
    assert failures(registry, "llama3-8b-prod", "sagemaker") == 2
    assert collector.down == {("llama3-8b-prod", "sagemaker"): "GetMetricData failed (ClientError)"}
    (got,) = asyncio.run(rounds(1))
    stub.assert_no_pending_responses()
    assert [(s.metric, s.model_id, s.value) for s in got] == [("model_latency_ms", "llama-3-8b", 2.0)]
    assert published == got and collector.down == {}
    down = [r for r in caplog.records if r.getMessage().startswith("telemetry target down")]
    assert [(r.fields["instance"], r.fields["kind"], r.fields["region"]) for r in down] == [
        ("llama3-8b-prod", "sagemaker", "us-east-1")]
    assert [r.getMessage() for r in caplog.records if "Throttling" in r.getMessage()] == [
        "CloudWatch GetMetricData failed (ClientError: An error occurred (Throttling) when calling the "
        "GetMetricData operation: Rate exceeded); retrying next round"]
    assert any(r.getMessage() == "telemetry target answers again" for r in caplog.records)


def test_without_boto3_one_line_and_the_targets_stand_down(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    registry = CollectorRegistry()
    settings = TelemetrySettings(targets=[VARIANT, BEDROCK])
    collector = TelemetryCollector(settings, lambda s: pytest.fail("nothing to publish"), TelemetryMetrics(registry))
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def rounds() -> list[list[TelemetrySample]]:
        return [await collector.cloudwatch_round() for _ in range(3)]

    assert asyncio.run(rounds()) == [[], [], []]  # never raises
    assert [r.getMessage() for r in caplog.records] == [
        "2 CloudWatch target(s) (kinds sagemaker, bedrock) stand down: "
        "CloudWatch import needs boto3: pip install 'infersight[aws]'"]
    assert collector.down == {} and failures(registry, "bedrock-eu", "bedrock") == 0
    assert collector.cloudwatch is not None and collector.cloudwatch.importers == {}


def test_a_client_that_cannot_be_built_counts_and_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    calls: list[str] = []

    def factory(region: str) -> Any:
        calls.append(region)
        raise ValueError("no credentials profile 'prod'")

    collector = TelemetryCollector(TelemetrySettings(targets=[BEDROCK]), lambda s: None, TelemetryMetrics(registry),
                                   cloudwatch_client=factory)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    asyncio.run(collector.cloudwatch_round())
    asyncio.run(collector.cloudwatch_round())
    assert calls == ["eu-west-1", "eu-west-1"] and failures(registry, "bedrock-eu", "bedrock") == 2
    assert [r.getMessage() for r in caplog.records if r.name.endswith("cloudwatch")] == [
        "CloudWatch client failed (ValueError: no credentials profile 'prod') for region eu-west-1; "
        "retrying next poll"]


def test_the_default_factory_bounds_every_call() -> None:
    client = default_client_factory(7.0)("ap-southeast-2")
    assert (client.meta.region_name, client.meta.config.connect_timeout, client.meta.config.read_timeout) == (
        "ap-southeast-2", 7.0, 7.0)
    assert client.meta.config.retries["mode"] == "standard"


def test_stop_does_not_wait_for_a_hung_poll() -> None:
    class Hung:
        meta = None

        def get_metric_data(self, **kwargs: Any) -> dict[str, Any]:
            time.sleep(30)
            return {}

    collector = TelemetryCollector(TelemetrySettings(targets=[BEDROCK]), lambda s: None,
                                   cloudwatch_client=lambda region: Hung()).start()
    time.sleep(0.3)  # the first poll is in flight, blocked in get_metric_data
    started = time.monotonic()
    collector.stop()
    assert time.monotonic() - started < 2.0
    assert collector.cloudwatch_rounds == 0
