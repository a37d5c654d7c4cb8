"""Routing, tenancy and header hygiene, as a platform team meets them in production.

A real gateway (uvicorn, the configured upstream client) in front of a small scripted engine served
with ``ThreadedServer`` on 127.0.0.1, which records the headers it received and answers with headers
the test chooses. Clients are the official ``openai`` client, or raw ``httpx`` / a raw socket where a
request must carry what the SDK never sends (duplicate or odd headers). Each test's docstring says what
went wrong before the fix.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from tests.conftest import DirectBus, config_dict

ACME_KEY = "sk-acme-test"
BACKEND_KEY = "sk-backend-secret-0123456789"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "sim-large",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})


class Engine:
    """An OpenAI-style engine answering every POST with ``status``, ``body`` and ``headers``; it keeps
    the raw headers of each request it received (names as bytes, values as bytes, duplicates kept)."""

    def __init__(self) -> None:
        self.received: list[list[tuple[bytes, bytes]]] = []
        self.status = 200
        self.body = ANSWER
        self.headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        self.received.append(list(scope["headers"]))
        headers = [(b"content-type", b"application/json"), *self.headers]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def last(self, name: bytes) -> list[bytes]:
        """Every value of one header in the last request."""
        return [v for k, v in self.received[-1] if k == name]


class Stack:
    def __init__(self, engine: Engine, gateway_url: str, bus: DirectBus) -> None:
        self.engine, self.url, self.bus = engine, gateway_url, bus

    def client(self, key: str = ACME_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=10)

    def post(self, headers: list[tuple[bytes, bytes]] | dict[str, str], model: str = "sim-large") -> httpx.Response:
        body = orjson.dumps({"model": model, "messages": QUESTION})
        return httpx.post(self.url + "/chat/completions", content=body, headers=headers, timeout=10)


@pytest.fixture(params=["http1", "aiohttp"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Engine + gateway, once per upstream client; the backend's own key comes from ``api_key_env``."""
    monkeypatch.setenv("AUDIT_BACKEND_KEY", BACKEND_KEY)
    engine = Engine()
    with ThreadedServer(engine) as upstream:
        backends = [{"name": "sim", "url": upstream.url, "api_key_env": "AUDIT_BACKEND_KEY",
                     "models": ["sim-large", "org/model:tag"]}]
        settings = settings_from_dict(config_dict(tmp_path / "data", backends=backends,
                                                  upstream={"client": request.param, "connect_timeout_s": 2.0,
                                                            "read_timeout_s": 5.0}))
        bus = DirectBus()
        with ThreadedServer(build_gateway(settings, bus=bus, store=None)) as gw:
            yield Stack(engine, gw.url, bus)


def bearer(key: str = ACME_KEY) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + key.encode())


# --- hop-by-hop headers ---------------------------------------------------------------------------------


def test_hop_by_hop_and_connection_named_request_headers_stay_at_the_gateway(stack: Stack) -> None:
    """Was: only a fixed list was dropped, so a header the client named in ``Connection`` (RFC 9110
    7.6.1: meant for the next hop only), ``Trailer`` and ``Proxy-*`` fields other than
    ``proxy-authorization`` reached the engine. The tenant's key never does; the backend's key does."""
    response = stack.post([bearer(), (b"connection", b"keep-alive, X-Hop-Only"), (b"x-hop-only", b"1"),
                           (b"trailer", b"x-checksum"), (b"proxy-token", b"front-proxy-secret"),
                           (b"te", b"trailers"), (b"x-custom", b"kept")])
    assert response.status_code == 200
    sent = {k for k, _ in stack.engine.received[-1]}
    assert not sent & {b"x-hop-only", b"trailer", b"proxy-token", b"te"}
    assert stack.engine.last(b"x-custom") == [b"kept"]
    assert stack.engine.last(b"authorization") == [b"Bearer " + BACKEND_KEY.encode()]
    assert not any(ACME_KEY.encode() in v for _, v in stack.engine.received[-1])


def test_credentials_under_other_header_names_stay_at_the_gateway(stack: Stack) -> None:
    """Was: only ``authorization`` was held back, so a key a client also sent as ``api-key`` (what
    Azure OpenAI's clients send) or ``x-api-key`` reached the engine, and its logs."""
    response = stack.post([bearer(), (b"api-key", ACME_KEY.encode()), (b"x-api-key", b"sk-other-secret"),
                           (b"x-custom", b"kept")])
    assert response.status_code == 200
    sent = {k for k, _ in stack.engine.received[-1]}
    assert not sent & {b"api-key", b"x-api-key"}
    assert stack.engine.last(b"x-custom") == [b"kept"]
    assert not any(secret in v for _, v in stack.engine.received[-1]
                   for secret in (ACME_KEY.encode(), b"sk-other-secret"))


def test_non_ascii_request_header_bytes_reach_the_engine_as_sent(stack: Stack, caplog: pytest.LogCaptureFixture,
                                                                  request: pytest.FixtureRequest) -> None:
    """Was: with ``upstream.client: aiohttp`` a UTF-8 value ("café ☕") reached the engine double-encoded
    (read as latin-1, written as UTF-8). A value that is not UTF-8 goes as sent over http1; aiohttp
    cannot write it, so there it is left out with a warning that names the header, never its value."""
    value = "café ☕".encode()
    response = stack.post([bearer(), (b"x-user-name", value), (b"x-latin", b"\xe9t\xe9")])
    assert response.status_code == 200, response.text
    assert stack.engine.last(b"x-user-name") == [value]
    if request.node.callspec.params["stack"] == "http1":
        assert stack.engine.last(b"x-latin") == [b"\xe9t\xe9"]
    else:
        assert stack.engine.last(b"x-latin") == []
        warned = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
        assert warned and warned[0].fields["header"] == "x-latin"  # type: ignore[attr-defined]


def test_hop_by_hop_and_engine_private_response_headers_stay_at_the_gateway(stack: Stack) -> None:
    """Was: the engine's ``Connection``-named headers, ``Trailer``, ``Upgrade`` and ``Proxy-Authenticate``
    (a challenge from a proxy in front of the engine, meant for the gateway) reached the client. End-to-end
    headers such as rate-limit hints still do; ``Set-Cookie``, ``Server`` and the engine's ``x-trace-id``
    never did (the gateway's own trace id is sent), and must not start to."""
    stack.engine.headers = [(b"connection", b"X-Engine-Hop"), (b"x-engine-hop", b"v"), (b"trailer", b"x-checksum"),
                            (b"upgrade", b"h2c"), (b"proxy-authenticate", b'Basic realm="lb"'),
                            (b"set-cookie", b"lb=replica-3"), (b"x-trace-id", b"f" * 32),
                            (b"x-ratelimit-remaining-requests", b"99")]
    raw = stack.client().chat.completions.with_raw_response.create(model="sim-large", messages=QUESTION)
    assert raw.parse().choices[0].message.content == "Paris"
    names = {k.lower() for k in raw.headers.keys()}
    assert not names & {"x-engine-hop", "trailer", "upgrade", "proxy-authenticate", "set-cookie"}
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-trace-id"] == stack.bus.records[-1].trace_id != "f" * 32
    assert raw.headers.get("server") != "uvicorn-engine"


def test_repeated_client_headers_are_joined_not_lost(stack: Stack) -> None:
    """Was: headers went through a dict, so of ``x-tags: a`` and ``x-tags: b`` only the last reached
    the engine. A repeated list field is one comma-joined field (RFC 9110 5.3)."""
    assert stack.post([bearer(), (b"x-tags", b"team-a"), (b"x-tags", b"batch")]).status_code == 200
    assert stack.engine.last(b"x-tags") == [b"team-a, batch"]


# --- which key is it? -----------------------------------------------------------------------------------


def test_two_different_authorization_headers_are_refused_everywhere(stack: Stack) -> None:
    """Was: the proxy used the last ``Authorization`` and ``/v1/models`` the first, so ``Bearer wrong``
    then ``Bearer <acme>`` was served as acme on one route and refused on the other (and a front proxy
    checking the first would see another caller than the gateway billed). Now a 400 in the OpenAI shape,
    recorded; the same value twice is harmless and served."""
    twice = [bearer("sk-wrong"), bearer()]
    response = stack.post(twice)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_header" and error["param"] == "authorization"
    assert ACME_KEY not in response.text and "sk-wrong" not in response.text
    assert stack.engine.received == []
    assert stack.bus.records[-1].status_code == 400 and stack.bus.records[-1].error_type == "invalid_header"
    models = httpx.get(stack.url + "/models", headers=twice, timeout=10)
    assert models.status_code == 400 and models.json()["error"]["code"] == "invalid_header"
    assert stack.post([bearer(), bearer()]).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_engine_refusing_the_backend_key_is_a_502_that_never_shows_it(stack: Stack, stream: bool) -> None:
    """Was: the engine's 401 was relayed as is. The ``openai`` client raised ``AuthenticationError``
    (the tenant's own key looked wrong, though it was the gateway's), and an OpenAI-style body, "Incorrect
    API key provided: sk-...", put the backend's key in the tenant's hands. Now a 502
    ``upstream_auth_failed`` naming the backend, recorded."""
    stack.engine.status = 401
    stack.engine.headers = [(b"www-authenticate", b'Bearer realm="engine"')]
    stack.engine.body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {BACKEND_KEY}.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}})
    with pytest.raises(openai.InternalServerError) as raised:
        stack.client().chat.completions.create(model="sim-large", messages=QUESTION, stream=stream)
    error = raised.value
    assert error.status_code == 502 and error.body["code"] == "upstream_auth_failed"
    assert "'sim'" in error.body["message"]
    shown = error.response.text + str(error.response.headers)
    assert BACKEND_KEY not in shown and "www-authenticate" not in {k.lower() for k in error.response.headers}
    record = stack.bus.records[-1]
    assert record.status_code == 502 and record.error_type == "upstream_auth_failed" and record.tenant_id == "acme"


def test_engine_answers_arrive_uncompressed_whatever_the_upstream_client(stack: Stack) -> None:
    """Was (aiohttp): the client added ``Accept-Encoding: gzip, deflate`` of its own, though the gateway
    drops the client's to read the engine in clear; an engine (or nginx before it) that compresses then
    sent gzip, the gateway measured nothing in it and relayed it without its ``Content-Encoding``: the
    ``openai`` client got binary garbage instead of the answer."""

    class Gzipping(Engine):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and b"gzip" in dict(scope["headers"]).get(b"accept-encoding", b""):
                self.body, self.headers = gzip.compress(ANSWER), [(b"content-encoding", b"gzip")]
            await super().__call__(scope, receive, send)

    stack.engine.__class__ = Gzipping
    reply = stack.client().chat.completions.create(model="sim-large", messages=QUESTION)
    assert reply.choices[0].message.content == "Paris"
    assert stack.engine.last(b"accept-encoding") == []
    assert stack.bus.records[-1].completion_tokens == 1 and stack.bus.records[-1].token_source == "backend"


# --- routing --------------------------------------------------------------------------------------------


def test_model_names_with_slash_and_colon_route_and_names_are_exact(stack: Stack) -> None:
    """Gap: ``org/model:tag`` (Hugging Face ids, Ollama tags) is served and retrievable as
    ``GET /v1/models/org/model:tag``; names are case-sensitive, as the engine's are: another case is a
    404 ``model_not_found``, not some other model."""
    client = stack.client()
    assert client.models.retrieve("org/model:tag").id == "org/model:tag"
    assert client.chat.completions.create(model="org/model:tag", messages=QUESTION).choices[0].message.content
    assert stack.bus.records[-1].model_id == "org/model:tag" and stack.bus.records[-1].backend == "sim"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="SIM-LARGE", messages=QUESTION)
    assert missing.value.body["code"] == "model_not_found"
    assert {m.id for m in client.models.list()} == {"sim-large", "org/model:tag"}


def test_client_trace_ids_are_never_echoed_raw(stack: Stack) -> None:
    """Gap: a 10 KB or non-hex ``x-trace-id`` is not a trace id: the answer (and the engine) get a fresh
    32-hex one, never the client's text back."""
    for value in ("x" * 10_000, "abc\u00e9" * 8, "1" * 31):
        response = stack.post([bearer(), (b"x-trace-id", value.encode("latin-1"))])
        echoed = response.headers["x-trace-id"]
        assert response.status_code == 200 and len(echoed) == 32 and int(echoed, 16)
        assert stack.engine.last(b"x-trace-id") == [echoed.encode()]
