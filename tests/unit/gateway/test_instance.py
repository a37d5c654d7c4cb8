"""Which engine instance served a request: configured, derived from telemetry targets, or named by a
replica's response header; present on every routed record, errors included."""

from __future__ import annotations

import json
import logging

import orjson
import pytest

from infersight.config import ConfigError
from infersight.gateway.routing import Router, backend_instance, url_origin
from infersight.gateway.upstreams import UpstreamTimeout, UpstreamUnreachable
from infersight.gateway.upstreams.mock import ManualClock, ScriptedResponse
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, usage_chunk

BACKEND = {"name": "vllm-a", "url": "http://10.0.0.5:8000/v1", "models": ["sim-large"]}


def settings_with(make_settings, backend: dict | None = None, targets: list[dict] | None = None):
    overrides: dict = {"backends": [{**BACKEND, **(backend or {})}]}
    if targets is not None:
        overrides["telemetry"] = {"targets": targets}
    return make_settings(**overrides)


def instance_of(settings) -> str:
    return backend_instance(settings.backends[0], settings.telemetry.targets)


# --- the static instance, resolved at start-up ---------------------------------------------------------------


def test_explicit_instance_wins_over_a_matching_target(make_settings) -> None:
    settings = settings_with(make_settings, {"instance": "gpu-host-1"},
                             [{"instance": "other", "kind": "vllm", "url": "http://10.0.0.5:8000/metrics"}])
    assert instance_of(settings) == "gpu-host-1"


def test_default_is_the_engine_target_at_the_same_scheme_host_and_port(make_settings) -> None:
    targets = [
        {"instance": "gpu-host-1", "kind": "vllm", "url": "http://10.0.0.5:8000/metrics", "models": ["sim-large"]},
        {"instance": "gpu-host-1-dcgm", "kind": "dcgm", "url": "http://10.0.0.5:9400/metrics"},
        {"instance": "gpu-host-2", "kind": "vllm", "url": "http://10.0.0.6:8000/metrics"},
    ]
    assert instance_of(settings_with(make_settings, targets=targets)) == "gpu-host-1"


@pytest.mark.parametrize("kind", ["tgi", "sglang"])
def test_every_engine_kind_matches(make_settings, kind: str) -> None:
    settings = settings_with(make_settings, targets=[{"instance": "eng", "kind": kind, "url": "http://10.0.0.5:8000/m"}])
    assert instance_of(settings) == "eng"


def test_host_case_and_default_ports_are_normalised(make_settings) -> None:
    targets = [{"instance": "cloud-llm", "kind": "vllm", "url": "https://llm.example.com:443/metrics"}]
    settings = settings_with(make_settings, {"url": "https://LLM.Example.com/v1"}, targets)
    assert instance_of(settings) == "cloud-llm"


def test_a_dcgm_target_on_the_same_origin_does_not_name_the_engine(make_settings) -> None:
    targets = [{"instance": "gpu", "kind": "dcgm", "url": "http://10.0.0.5:8000/dcgm/metrics"}]
    assert instance_of(settings_with(make_settings, targets=targets)) == "10.0.0.5:8000"


@pytest.mark.parametrize("url", ["https://10.0.0.5:8000/metrics", "http://10.0.0.5:8001/metrics",
                                 "http://10.0.0.50:8000/metrics"])
def test_another_scheme_port_or_host_does_not_match(make_settings, url: str) -> None:
    settings = settings_with(make_settings, targets=[{"instance": "x", "kind": "vllm", "url": url}])
    assert instance_of(settings) == "10.0.0.5:8000"


def test_two_names_at_the_origin_are_ambiguous_and_fall_back_to_host_port(make_settings) -> None:
    targets = [{"instance": "a", "kind": "vllm", "url": "http://10.0.0.5:8000/metrics"},
               {"instance": "b", "kind": "tgi", "url": "http://10.0.0.5:8000/metrics"}]
    assert instance_of(settings_with(make_settings, targets=targets)) == "10.0.0.5:8000"


def test_fallback_is_host_port_with_the_default_port_filled_in(make_settings) -> None:
    assert instance_of(settings_with(make_settings)) == "10.0.0.5:8000"
    cloud = settings_with(make_settings, {"url": "https://user:pw@api.example.com/v1"})
    assert instance_of(cloud) == "api.example.com:443"
    assert url_origin("http://[::1]:8000/v1") == ("http", "[::1]:8000")
    assert url_origin("http://localhost/v1") == ("http", "localhost:80")


def test_router_puts_the_instance_on_every_route_of_the_backend(make_settings) -> None:
    settings = make_settings(backends=[
        {**BACKEND, "models": ["sim-large", "sim-small"], "instance_header": "X-Served-By"},
        {"name": "other", "url": "http://10.0.0.7:9000/v1", "models": ["sim-reasoner"]},
    ])
    router = Router(settings)
    large, small, reasoner = (router.route(m) for m in ("sim-large", "sim-small", "sim-reasoner"))
    assert large is not None and small is not None and reasoner is not None
    assert large.instance == small.instance == "10.0.0.5:8000" and large.instance_header == "x-served-by"
    assert reasoner.instance == "10.0.0.7:9000" and reasoner.instance_header is None


@pytest.mark.parametrize(("backend", "key"), [
    ({"instance": ""}, "backends.0.instance"),
    ({"instance": "x" * 201}, "backends.0.instance"),
    ({"instance_header": "x served by"}, "backends.0.instance_header"),
    ({"instance_header": ""}, "backends.0.instance_header"),
])
def test_bad_instance_settings_are_config_errors(make_settings, backend: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_with(make_settings, backend)
    assert err.value.key == key


# --- through the gateway -------------------------------------------------------------------------------------

STREAM = [(1.0, chat_chunk(role=True)), (2.0, chat_chunk("Hi")), (3.0, chat_chunk(finish="stop")),
          (4.0, usage_chunk(5, 1)), (5.0, DONE)]


def replying(headers: dict[str, str], stream: bool = True):
    if stream:
        return lambda request: ScriptedResponse(headers={"content-type": "text/event-stream", **headers},
                                                chunks=STREAM)
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}]})
    return lambda request: ScriptedResponse(headers={"content-type": "application/json", **headers},
                                            chunks=[(5.0, body)])


async def one_record(settings, handler, body: dict | None = None):
    _, _, bus, client = gateway(settings, handler, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=body or chat_body(stream=True), headers=ACME)
    [record] = bus.records
    return resp, record


async def test_static_instance_on_a_streamed_record(make_settings) -> None:
    _, record = await one_record(settings_with(make_settings, {"instance": "gpu-host-1"}), replying({}))
    assert record.status_code == 200 and record.instance == "gpu-host-1"


@pytest.mark.parametrize("stream", [True, False])
async def test_the_replica_named_by_the_header_wins(make_settings, stream: bool) -> None:
    settings = settings_with(make_settings, {"instance": "lb", "instance_header": "X-Served-By"})
    resp, record = await one_record(settings, replying({"x-served-by": "  replica-3:8000 "}, stream),
                                    chat_body(stream=stream))
    assert record.instance == "replica-3:8000"
    assert "x-served-by" in resp.headers  # read, not removed: the client sees what the engine sent


@pytest.mark.parametrize(("value", "expected"), [
    ("", "lb"), ("   ", "lb"), ("r\x01x", "lb"), ("r" * 300, "r" * 200), ("a" * 199 + " b", "a" * 199),
])
async def test_header_values_are_trimmed_bounded_and_checked(make_settings, value: str, expected: str) -> None:
    settings = settings_with(make_settings, {"instance": "lb", "instance_header": "x-served-by"})
    _, record = await one_record(settings, replying({"x-served-by": value}))
    assert record.instance == expected


async def test_without_the_header_the_static_instance_applies(make_settings) -> None:
    settings = settings_with(make_settings, {"instance": "lb", "instance_header": "x-served-by"})
    _, record = await one_record(settings, replying({"x-other": "replica-9"}))
    assert record.instance == "lb"


async def test_a_header_not_configured_is_not_read(make_settings) -> None:
    _, record = await one_record(settings_with(make_settings, {"instance": "lb"}), replying({"x-served-by": "r1"}))
    assert record.instance == "lb"


async def test_engine_error_responses_still_read_the_header(make_settings) -> None:
    settings = settings_with(make_settings, {"instance": "lb", "instance_header": "x-served-by"})

    def handler(request):
        return ScriptedResponse(status=429, headers={"content-type": "application/json", "x-served-by": "r2"},
                                chunks=[(1.0, b'{"error":{"message":"busy"}}')])

    _, record = await one_record(settings, handler)
    assert (record.status_code, record.instance) == (429, "r2")


@pytest.mark.parametrize(("exc", "status"), [(UpstreamUnreachable("refused"), 502), (UpstreamTimeout("slow"), 504)])
async def test_unreachable_or_timed_out_engine_keeps_the_static_instance(make_settings, exc, status) -> None:
    settings = settings_with(make_settings, {"instance_header": "x-served-by"},
                             [{"instance": "gpu-host-1", "kind": "vllm", "url": "http://10.0.0.5:8000/metrics"}])

    def handler(request):
        raise exc

    resp, record = await one_record(settings, handler)
    assert resp.status_code == status and record.status_code == status and record.instance == "gpu-host-1"


async def test_requests_that_never_routed_have_no_instance(make_settings) -> None:
    _, record = await one_record(settings_with(make_settings), replying({}), chat_body(model="no-such-model"))
    assert record.status_code == 404 and record.instance is None


async def test_access_log_names_the_instance(make_settings, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="infersight.access"):
        await one_record(settings_with(make_settings, {"instance": "gpu-host-1"}), replying({}))
    fields = [r.fields for r in caplog.records if r.name == "infersight.access"]  # type: ignore[attr-defined]
    assert fields and fields[0]["instance"] == "gpu-host-1"
    assert json.dumps(fields[0])  # still one plain JSON line
