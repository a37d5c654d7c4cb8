"""Bad input, from clients, engines and users: a clear error, never a 500 or a traceback, nothing lost.

Gateway cases run in-process (ASGI + ``MockTransport``), one through uvicorn on 127.0.0.1 (what it
refuses to send matters there); CLI cases call ``infersight.cli.main``. Each test's docstring says what
went wrong before the fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from infersight.cli import build_parser, main
from infersight.config import ConfigError, load_settings, settings_from_dict
from infersight.gateway.upstreams import UpstreamDisconnected, UpstreamTimeout
from infersight.gateway.upstreams.mock import ManualClock, MockTransport, ScriptedResponse
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.store.arrow import records_to_arrow
from tests.conftest import DirectBus, config_dict
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, sse

JSON = {"content-type": "application/json"}


def answer(**extra: Any) -> bytes:
    """A non-streamed chat completion, with ``extra`` merged into its top level."""
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "model": "sim-large",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                                         "finish_reason": "stop"}]}
    body.update(extra)
    return orjson.dumps(body)


def openai_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    return error


# --- engine output that must not break the request or its record ------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_negative_usage_from_engine_is_not_a_500(settings, stream: bool) -> None:
    """Was: Counter.inc(-5) raised in the metrics: a 500 (a stream cut before its end), the record lost."""
    usage = {"prompt_tokens": -5, "completion_tokens": -1, "total_tokens": -6}
    if stream:
        chunks = [(1.0, chat_chunk("Paris")), (2.0, chat_chunk(finish="stop")),
                  (3.0, sse({"id": "c", "choices": [], "usage": usage})), (3.0, DONE)]
        script = ScriptedResponse(chunks=chunks)
    else:
        script = ScriptedResponse(headers=JSON, chunks=[(1.0, answer(usage=usage))])
    _, _, bus, client = gateway(settings, lambda request: script, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=stream), headers=ACME)
    assert resp.status_code == 200 and "Paris" in resp.text
    [record] = bus.records
    assert record.status_code == 200
    assert record.prompt_tokens is not None and record.prompt_tokens >= 0  # the gateway's estimate instead
    assert record.token_source == "estimate"


@pytest.mark.parametrize(
    ("stream", "payload"),
    [
        (True, {"finish_reason": {"type": "stop"}}),
        (False, {"finish_reason": 7}),
        (False, {"usage": {"prompt_tokens": 18446744073709551615, "completion_tokens": 1e300}}),
    ],
    ids=["finish_reason-object", "finish_reason-number", "usage-beyond-int64"],
)
async def test_engine_values_the_store_cannot_hold_stay_out_of_the_record(settings, stream, payload) -> None:
    """Was: the record carried them, the store refused its batch on every retry (StoreError), and the
    embedded bus retried that batch forever, so no later record reached the store either."""
    if stream:
        last = {"id": "c", "choices": [{"index": 0, "delta": {}, **payload}]}
        script = ScriptedResponse(chunks=[(1.0, chat_chunk("Paris")), (2.0, sse(last)), (3.0, DONE)])
    else:
        body = orjson.loads(answer())
        if "finish_reason" in payload:
            body["choices"][0].update(payload)
        else:
            body.update(payload)
        script = ScriptedResponse(headers=JSON, chunks=[(1.0, orjson.dumps(body))])
    _, _, bus, client = gateway(settings, lambda request: script, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=stream), headers=ACME)
    assert resp.status_code == 200
    [record] = bus.records
    assert record.finish_reason is None or isinstance(record.finish_reason, str)
    assert records_to_arrow([record]).num_rows == 1  # the store's ingest format takes it


def test_odd_engine_headers_do_not_fail_the_response(settings) -> None:
    """Through uvicorn, as served. Was a bare 500 ("Internal Server Error", not JSON) for header values
    the aiohttp client hands over: UTF-8 (UnicodeEncodeError) or with a control character (uvicorn
    refuses to send it); the record said status 200 although the client got a 500."""
    headers = {**JSON, "x-note": "\u2603", "x-raw": "caf\udce9", "x-ctl": "a\x01b", "x-ok": "fine"}
    script = ScriptedResponse(headers=headers, chunks=[(1.0, answer())])
    bus = DirectBus()
    app = build_gateway(settings, transport=MockTransport(lambda request: script), bus=bus)
    with ThreadedServer(app) as server:
        resp = httpx.post(server.url + "/chat/completions", json=chat_body(), headers=ACME, timeout=10)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Paris"
    raw = dict(resp.headers.raw)
    assert raw[b"x-note"] == "\u2603".encode() and raw[b"x-raw"] == b"caf\xe9"  # the engine's own bytes
    assert raw[b"x-ok"] == b"fine" and b"x-ctl" not in raw  # the one header HTTP cannot carry
    [record] = bus.records
    assert record.status_code == 200


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [(UpstreamTimeout("slow"), 504, "upstream_timeout"), (UpstreamDisconnected("cut"), 502, "upstream_unreachable")],
)
async def test_engine_body_that_stalls_or_breaks_after_headers(settings, exc, status, code) -> None:
    """A non-streamed answer cut after its headers: an OpenAI error, and a record (a gap in the suite)."""
    script = ScriptedResponse(headers=JSON, chunks=[(1.0, b'{"id": "chat')], raise_after=exc)
    _, _, bus, client = gateway(settings, lambda request: script, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=ACME)
    openai_error(resp, status, code)
    [record] = bus.records
    assert (record.status_code, record.error_type) == (status, code)


# --- the evaluation tap must never fail a request ---------------------------------------------------


async def tapped(tmp_path: Path, script: ScriptedResponse, body: dict[str, Any],
                 content: str = "sampled") -> tuple[httpx.Response, DirectBus]:
    tenants = [{"id": "acme", "api_keys": ["sk-acme-test"], "content": content}]
    settings = settings_from_dict(config_dict(tmp_path / "data", tenants=tenants,
                                              evaluation={"child_process": False, "mask_linger_s": 0}))
    bus = DirectBus()
    app = build_gateway(settings, transport=MockTransport(lambda request: script), bus=bus, eval_bus=DirectBus())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        await app.on_startup[0]()
        try:
            resp = await client.post("/v1/chat/completions", json=body, headers=ACME)
        finally:
            await app.on_shutdown[-1]()
    return resp, bus


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_response_format_with_engine_400_is_relayed_and_recorded(tmp_path, stream) -> None:
    """Was: the engine's 400 is sampled (error), the tap's ``fmt.get("type") in frozenset`` raised
    TypeError on a list, and the client got a 500 instead of the engine's 400; the record was lost."""
    engine_error = orjson.dumps({"error": {"message": "response_format.type: invalid", "type": "BadRequestError",
                                           "param": None, "code": 400}})
    script = ScriptedResponse(status=400, headers=JSON, chunks=[(1.0, engine_error)])
    body = chat_body(stream=stream, response_format={"type": ["json_object"]})
    resp, bus = await tapped(tmp_path, script, body)
    assert resp.status_code == 400 and resp.content == engine_error
    [record] = bus.records
    assert (record.status_code, record.error_type) == (400, "upstream_400")


async def test_overflowing_logprobs_from_engine_do_not_fail_the_stream(tmp_path) -> None:
    """Was: math.exp(1000) in the tap's entropy raised OverflowError before the last chunk: the
    stream was cut without its end, and the record was lost."""
    logprobs = {"content": [{"token": "P", "logprob": 0.0,
                             "top_logprobs": [{"token": "P", "logprob": 1000.0}, {"token": "L", "logprob": 0.0}]}]}
    first = orjson.loads(chat_chunk("Paris")[6:])
    first["choices"][0]["logprobs"] = logprobs
    script = ScriptedResponse(chunks=[(1.0, sse(first)), (2.0, chat_chunk(finish="stop")), (3.0, DONE)])
    resp, bus = await tapped(tmp_path, script, chat_body(stream=True, logprobs=True, top_logprobs=2), content="all")
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    [record] = bus.records
    assert record.status_code == 200 and record.finish_reason == "stop"


# --- client input the gateway itself interprets ----------------------------------------------------


@pytest.mark.parametrize("options", ["yes", [1], {"include_usage": "yes"}])
async def test_malformed_stream_options_are_refused(settings, options) -> None:
    """Was: silently replaced by ``{"include_usage": true}`` (and the usage chunk hidden from a client
    that had asked for it), so the client's mistake never surfaced."""
    _, transport, bus, client = gateway(settings, lambda request: ScriptedResponse(), ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True, stream_options=options),
                                 headers=ACME)
    error = openai_error(resp, 400, "invalid_value")
    assert error["param"] == "stream_options"
    assert not transport.requests
    [record] = bus.records
    assert (record.status_code, record.error_type) == (400, "invalid_value")


async def test_content_parts_and_null_stream_options_pass_through(settings) -> None:
    """Valid OpenAI input the gateway must not refuse: content parts, ``stream_options: null``."""
    body = chat_body(stream=True, stream_options=None)
    body["messages"][0]["content"] = [{"type": "text", "text": "What is this?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    script = ScriptedResponse(chunks=[(1.0, chat_chunk("A cat")), (2.0, chat_chunk(finish="stop")), (3.0, DONE)])
    _, transport, bus, client = gateway(settings, lambda request: script, ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", json=body, headers=ACME)
    assert resp.status_code == 200 and "A cat" in resp.text
    sent = orjson.loads(transport.requests[0].body)
    assert sent["messages"] == body["messages"] and sent["stream_options"] == {"include_usage": True}
    [record] = bus.records
    assert record.status_code == 200 and record.prompt_tokens_estimated


@pytest.mark.parametrize("encoding", ["gzip", "br", "GZIP "])
async def test_a_compressed_body_is_a_415_that_says_so(settings, encoding) -> None:
    """Was: a gzip body was read as text and refused as "not valid UTF-8", which sends a client author
    looking for an encoding bug in their JSON."""
    import gzip

    _, transport, bus, client = gateway(settings, lambda request: ScriptedResponse(), ManualClock())
    async with client:
        resp = await client.post("/v1/chat/completions", content=gzip.compress(orjson.dumps(chat_body())),
                                 headers={**ACME, "content-type": "application/json", "content-encoding": encoding})
        plain = await client.post("/v1/chat/completions", json=chat_body(),
                                  headers={**ACME, "content-encoding": "identity"})
    error = openai_error(resp, 415, "unsupported_content_encoding")
    assert encoding.strip() in error["message"] and "uncompressed" in error["message"]
    assert plain.status_code == 200 and len(transport.requests) == 1  # identity is no encoding
    assert [(r.status_code, r.error_type) for r in bus.records][0] == (415, "unsupported_content_encoding")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/v1/chat/completions", "POST"), ("HEAD", "/v1/completions", "POST"), ("POST", "/healthz", "GET"),
     ("DELETE", "/v1/models", "GET")],
)
async def test_method_not_allowed_says_which_methods_are(settings, method, path, allow) -> None:
    """Was: 405 without ``Allow`` (RFC 9110 requires it), so a client could not tell what to use."""
    _, _, _, client = gateway(settings, lambda request: ScriptedResponse(), ManualClock())
    async with client:
        resp = await client.request(method, path, headers=ACME)
    assert resp.status_code == 405 and resp.headers["allow"] == allow
    if method != "HEAD":
        openai_error(resp, 405, "method_not_allowed")


# --- config files ----------------------------------------------------------------------------------

GOOD = "backends: [{name: a, url: http://x/v1, models: [m]}]\ntenants: [{id: t, api_keys: [k]}]\n"


def write(tmp_path: Path, data: str | bytes, name: str = "gw.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_config_that_is_not_utf8_is_a_config_error(tmp_path, capsys) -> None:
    """Was: a UnicodeDecodeError traceback."""
    path = write(tmp_path, b"\xff\xfe" + GOOD.encode("utf-16-le"))
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config error in {path}" in err and "UTF-8" in err and "Traceback" not in err


def test_duplicate_yaml_key_is_refused_not_silently_dropped(tmp_path) -> None:
    """Was: the second ``tenants:`` replaced the first without a word (acme's key stopped working)."""
    path = write(tmp_path, GOOD + "tenants: [{id: u, api_keys: [j]}]\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "tenants" and str(path) in str(err.value) and "line 3" in str(err.value)


def test_nested_duplicate_yaml_key_names_its_path(tmp_path) -> None:
    path = write(tmp_path, GOOD + "server:\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "server.port"


@pytest.mark.parametrize(
    ("extra", "key"),
    [("", "tenants.0.api_keys"), ("admin_api_keys: ['sha256:abc']\n", "admin_api_keys")],
)
def test_sha256_key_that_is_not_hex_is_refused(tmp_path, extra, key) -> None:
    """Was: accepted, and no presented key could ever match it (a tenant or an admin locked out,
    silently); admin keys were not checked at all."""
    text = GOOD + extra if extra else GOOD.replace("[k]", "['sha256:" + "z" * 64 + "']")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == key and str(path) in str(err.value)
    ok = write(tmp_path, GOOD.replace("[k]", "['sha256:" + hashlib.sha256(b"k").hexdigest().upper() + "']"), "ok.yaml")
    assert load_settings(ok).tenants[0].api_keys


def test_missing_tokenizer_names_the_file_and_the_full_key(tmp_path, capsys) -> None:
    """Was: ``config error: tokenizer.tokenizer_json: ...``: neither the config file nor which model."""
    text = GOOD.replace("models: [m]", "models: [m, {name: n, tokenizer: {tokenizer_json: /nonexistent/t.json}}]")
    path = write(tmp_path, text)
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config error in {path}: backends.0.models.1.tokenizer.tokenizer_json:" in err
    assert "/nonexistent/t.json" in err


# --- command-line arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--config", "x.yaml", "--workers", "-3"],  # was: a supervisor of no workers, forever
        ["serve", "--config", "x.yaml", "--workers", "0"],  # was: silently server.workers
        ["serve", "--config", "x.yaml", "--port", "70000"],  # was: "running on :70000", another port bound
        ["sim", "--port", "-1"],
        ["sim", "--fault-rate", "5"],
        ["demo", "--rps", "0"],
        ["demo", "--duration", "-1"],
    ],
)
def test_out_of_range_arguments_are_usage_errors(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and argv[-2] in err


def test_export_from_a_storage_path_without_a_store(tmp_path, capsys) -> None:
    """Was: a duckdb CatalogException traceback, and an empty DuckDB file left at the (mistyped) path."""
    data = tmp_path / "typo"
    path = write(tmp_path, GOOD + f"storage: {{path: {data}}}\n")
    rc = main(["export", "parquet", "--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert str(data / "infersight.duckdb") in err and "storage.path" in err
    assert not data.exists()


def test_export_with_since_after_until(tmp_path) -> None:
    """Was: ``exported 0 requests``, as if the window had been empty."""
    path = write(tmp_path, GOOD + f"storage: {{path: {tmp_path / 'data'}}}\n")
    with pytest.raises(SystemExit, match="--since must be before --until"):
        main(["export", "parquet", "--config", str(path), "--out", str(tmp_path / "out"),
              "--since", "2026-02-01", "--until", "2026-01-01"])


def test_export_into_a_file_says_what_to_do(tmp_path) -> None:
    """Was: an OSError traceback when --out names an existing file (or a folder one cannot write)."""
    from infersight.model import RequestRecord
    from infersight.store.duckdb_store import DuckDBStore

    data = tmp_path / "data"
    data.mkdir()
    store = DuckDBStore(str(data / "infersight.duckdb"))
    store.migrate()
    store.write_requests([RequestRecord(trace_id="ab" * 16, span_id="cd" * 8, tenant_id="acme", model_id="m",
                                        backend="sim", started_at="2026-11-20T10:00:00+00:00", status_code=200)])
    store.close()
    path = write(tmp_path, GOOD + f"storage: {{path: {data}}}\n")
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot write the export under --out .*pass a folder you can write to"):
        main(["export", "parquet", "--config", str(path), "--out", str(out),
              "--since", "2026-11-01", "--until", "2026-12-01"])
