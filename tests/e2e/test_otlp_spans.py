"""With tracing.otlp_endpoint set, each request through the gateway becomes one GenAI span."""

from __future__ import annotations

import time

import httpx

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer
from tests.conftest import config_dict
from tests.unit.test_otlp import Receiver, receiver  # noqa: F401 - the fixture


def test_gateway_exports_genai_spans(tmp_path, receiver: Receiver) -> None:  # noqa: F811
    sim = SimServer(seed=5).start()
    tracing = {"otlp_endpoint": receiver.endpoint, "service_name": "gw-test"}
    settings = settings_from_dict(config_dict(tmp_path / "data", sim.url, tracing=tracing))
    gateway = ThreadedServer(build_gateway(settings)).start()
    try:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        resp = httpx.post(
            gateway.url + "/chat/completions",
            json={"model": "sim-small", "messages": [{"role": "user", "content": "secret-zebra"}], "stream": True,
                  "max_tokens": 8},
            headers={"authorization": "Bearer sk-acme-test", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            timeout=10,
        )
        assert resp.status_code == 200
    finally:
        gateway.stop()  # the lifespan shutdown flushes the bus, and with it the span exporter
        sim.stop()
    deadline = time.monotonic() + 5
    while not receiver.bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    [body] = receiver.bodies
    [resource_spans] = body["resourceSpans"]
    service = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}["service.name"]
    assert service == {"stringValue": "gw-test"}
    [span] = resource_spans["scopeSpans"][0]["spans"]
    assert span["traceId"] == trace_id and span["parentSpanId"] == "00f067aa0ba902b7"
    assert span["name"] == "chat sim-small"
    attributes = {a["key"]: a["value"] for a in span["attributes"]}
    assert attributes["gen_ai.request.model"] == {"stringValue": "sim-small"}
    assert attributes["infersight.tenant_id"] == {"stringValue": "acme"}
    assert "secret-zebra" not in receiver.raw[0].decode()
