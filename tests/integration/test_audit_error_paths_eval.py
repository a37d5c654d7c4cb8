"""Audit of issue 4 on failed and unusual requests: what the gateway records and evaluates.

Real components: the embedded gateway served by uvicorn on 127.0.0.1 in front of a scripted
OpenAI-compatible engine (a real HTTP server on 127.0.0.1 that can answer with an error status,
stall, break a stream off or send odd bytes), the in-process eval sink and DuckDB, read back
through the query API.

The tenant keeps content for every request (``content: all``) at a random sample rate of 0, so a
record's ``sample_reason`` is the stratified reason alone (``error``, ``guardrail``, ...) and every
record with content gets the deterministic checks (issue 4, part 3).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.test_audit_checks_reference import story
from tests.scripted_engine import embedded_gateway

ADMIN = {"authorization": "Bearer sk-admin-test"}
ACME = {"authorization": "Bearer sk-acme-test"}
TENANTS = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 0.0, "content": "all"}]
READ_TIMEOUT_S = 1.0


# ---- a scripted engine whose replies are functions of the handler ------------------------------------

Reply = Callable[[BaseHTTPRequestHandler], None]


class FlexEngine:
    """Answers a request whose body carries ``case:NAME`` with ``replies[NAME](handler)``."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.bodies: dict[str, list[bytes]] = {}
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                for name, reply in list(engine.replies.items()):
                    if re.search(rb"case:" + re.escape(name.encode()) + rb"(?![\w-])", raw):
                        engine.bodies.setdefault(name, []).append(raw)
                        try:
                            reply(self)
                        except (BrokenPipeError, ConnectionResetError):
                            pass
                        return
                json_reply(200, chat_body("A plain answer."))(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_body(content: Any, finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1_700_000_000, "model": "sim-large",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **extra},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}


def json_reply(status: int, body: Any, content_type: str = "application/json") -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return reply


def sse_reply(events: list[bytes | float], done: bool = True) -> Reply:
    """SSE ``data:`` events (a float is a pause of that many seconds), then ``[DONE]`` unless not ``done``."""
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        for event in events:
            if isinstance(event, float):
                time.sleep(event)
                continue
            h.wfile.write(event if event.startswith(b"data:") or event.startswith(b":") else b"data: " + event + b"\n\n")
            h.wfile.flush()
        if done:
            h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
    return reply


def delta(text: str | None, finish: str | None = None, index: int = 0, obj: str = "chat.completion.chunk",
          **fields: Any) -> bytes:
    if obj == "text_completion":
        choice: dict[str, Any] = {"index": index, "text": text or "", "finish_reason": finish}
    else:
        d = {} if text is None else {"content": text}
        choice = {"index": index, "delta": {**d, **fields}, "finish_reason": finish}
    return orjson.dumps({"id": "chatcmpl-x", "object": obj, "created": 1_700_000_000, "model": "sim-large",
                         "choices": [choice]})


# ---- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine() -> Iterator[FlexEngine]:
    eng = FlexEngine()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def gateway(engine: FlexEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_gateway(engine.url, TENANTS, tmp_path_factory.mktemp("error_paths") / "data",
                          server={"host": "127.0.0.1", "port": 0, "max_body_bytes": 16 * 1024 * 1024},
                          upstream={"connect_timeout_s": 2.0, "read_timeout_s": READ_TIMEOUT_S}) as url:
        yield url


# ---- helpers -----------------------------------------------------------------------------------------

def post(base: str, path: str, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{base}/v1/{path}", json=body, headers=ACME, timeout=timeout)


def chat(base: str, content: str, **extra: Any) -> httpx.Response:
    return post(base, "chat/completions",
                {"model": "sim-large", "messages": [{"role": "user", "content": content}], **extra})


def checks(st: dict[str, Any]) -> dict[str, tuple[Any, Any, Any]]:
    return {e["dimension"]: (e["label"], e["score"], e["explanation"])
            for e in st["evaluations"] if e["evaluator"] == "checks"}


# ---- an engine's stream that is not what the protocol says ------------------------------------------

def test_malformed_sse_event_is_recorded_as_an_engine_error_and_sampled(gateway: str, engine: FlexEngine) -> None:
    """Issue 4: errors are always sampled (``sample_reason=error``). An engine that sends a ``data:``
    event that is not JSON in the middle of its stream (half a chunk, then the rest of the answer
    and ``[DONE]``) broke the protocol: the ``openai`` client raises a JSONDecodeError on that
    event, so the caller's request failed. The gateway drops the event silently when it meters
    the stream (``inspect_chunk`` returns None) and when it reads the answer back (``extract``), so
    the record says success (no ``error_type``), the request is not sampled, and the checks score
    the corrupted text ("The answer  two.", a word missing) as a complete, passing answer."""
    engine.replies["badsse"] = sse_reply([delta("The answer "), b'{"choices": [{"index": 0, "delta": {"content": "is',
                                          delta(" two.", "stop")])
    resp = chat(gateway, "What is it? case:badsse;", stream=True)
    assert resp.status_code == 200
    st = story(gateway, resp.headers["x-trace-id"])
    record = st["record"]
    assert record["error_type"] is not None and record["sample_reason"] == "error", \
        (record["error_type"], record["sample_reason"], checks(st))


def test_non_utf8_byte_in_a_streamed_answer_is_not_an_empty_answer(gateway: str, engine: FlexEngine) -> None:
    """Issue 4 / docs/checks.md: ``empty`` fails when the completion is missing or whitespace. An
    engine that emits one byte that is not UTF-8 in a chunk (llama.cpp-style servers did, splitting a
    multi-byte character across tokens; here latin-1 ``caf\\xe9 au lait``) answered with text, and
    the client received it. ``extract`` drops every event orjson cannot decode, so the whole answer
    is read back as nothing and the model is charged an ``empty`` failure "no completion text on a
    successful response" (and the record has no completion tokens)."""
    engine.replies["latin1"] = sse_reply([
        b'{"choices": [{"index": 0, "delta": {"content": "caf\xe9 au lait, please"}, "finish_reason": null}]}',
        delta(None, "stop")])
    resp = chat(gateway, "Order a drink. case:latin1;", stream=True)
    assert resp.status_code == 200 and b"au lait" in resp.content
    rows = checks(story(gateway, resp.headers["x-trace-id"]))
    assert rows.get("empty", ("pass",))[0] != "fail", rows


def test_streamed_request_answered_with_a_json_body_is_read_back(gateway: str, engine: FlexEngine) -> None:
    """docs/checks.md: the completion is read back from the response the gateway relayed. An engine
    (or a cache in front of it) that answers a ``stream: true`` request with a plain
    ``application/json`` chat completion is relayed as JSON by the proxy, which reads its
    ``finish_reason`` and usage from it (the record has ``finish_reason=stop``, 9 tokens). The tap
    parses the same bytes as SSE because ``record.stream`` is true, finds no ``data:`` line, and the
    complete answer is scored ``empty`` 0.0 "no completion text on a successful response"."""
    engine.replies["jsonforstream"] = json_reply(200, chat_body("The answer is forty-two."))
    resp = chat(gateway, "What is it? case:jsonforstream;", stream=True)
    assert resp.status_code == 200 and "forty-two" in resp.text
    st = story(gateway, resp.headers["x-trace-id"])
    assert st["record"]["finish_reason"] == "stop"
    rows = checks(st)
    assert rows.get("empty", ("pass",))[0] != "fail", rows
    assert [c["completion_text"] for c in st["content"]] == ["The answer is forty-two."]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_legacy_function_call_answer_is_not_an_empty_answer(gateway: str, engine: FlexEngine, stream: bool) -> None:
    """docs/checks.md: tool calls are appended to the completion as ``name(arguments)`` lines "so
    such an answer is not ``empty``". The older form of the same answer, ``functions`` /
    ``message.function_call`` (still accepted by OpenAI's and Azure OpenAI's chat API, and by
    engines that mirror it), comes with ``content: null`` and ``finish_reason=function_call``; the
    reader knows only ``tool_calls``, so every such turn of an agent is scored ``empty`` 0.0 and its
    arguments (which may carry PII) are neither screened nor checked."""
    name = f"fcall{int(stream)}"
    if stream:
        engine.replies[name] = sse_reply([
            delta(None, role="assistant", function_call={"name": "lookup", "arguments": ""}),
            delta(None, function_call={"arguments": '{"order": 7}'}),
            delta(None, "function_call")])
    else:
        engine.replies[name] = json_reply(200, chat_body(None, "function_call",
                                                         function_call={"name": "lookup", "arguments": '{"order": 7}'}))
    functions = [{"name": "lookup", "parameters": {"type": "object", "properties": {"order": {"type": "integer"}}}}]
    resp = chat(gateway, f"Where is order 7? case:{name};", stream=stream, functions=functions)
    assert resp.status_code == 200
    rows = checks(story(gateway, resp.headers["x-trace-id"]))
    assert rows.get("empty", ("pass",))[0] != "fail", rows


def test_engine_error_body_with_status_200_is_an_error_not_an_empty_answer(gateway: str, engine: FlexEngine) -> None:
    """Issue 4: errors are always sampled, and checks score answers. An engine (or a proxy in front
    of it) that reports a failure as ``200`` with an ``{"error": {...}}`` body did not answer. In a
    stream the gateway already treats that object as an engine error (``upstream_stream_error``,
    TGI's string form included); not streamed, ``_observe_json_body`` ignores it: the record is a
    success, the request is not sampled, and the model is charged an ``empty`` failure."""
    engine.replies["err200"] = json_reply(200, {"error": {"message": "model overloaded", "type": "server_error",
                                                          "code": 503}})
    resp = chat(gateway, "Hello? case:err200;")
    st = story(gateway, resp.headers["x-trace-id"])
    rows = checks(st)
    assert rows.get("empty", ("pass",))[0] != "fail", rows
    assert st["record"]["sample_reason"] == "error", (st["record"]["error_type"], st["record"]["sample_reason"])


# ---- a very long prompt -----------------------------------------------------------------------------

def test_multi_megabyte_prompt_does_not_stall_other_streams(gateway: str, engine: FlexEngine) -> None:
    """docs/evaluation.md: the guardrail screen runs on the gateway's event loop for every request
    of a tenant that keeps content, so it must cost microseconds; the issue's target is that
    evaluation does not move the gateway's added TTFT. A 4 MB prompt (the default
    ``server.max_body_bytes``; here a base64 attachment) is screened whole: the injection
    patterns' trigger substrings are found in random base64, so their regexes run over all 4 MB,
    ~0.6 s on the loop (parsing, counting and hashing the same prompt take ~20 ms). Meanwhile
    every other stream on the gateway stops: here a stream ticking every 50 ms sees a gap of
    most of a second."""
    import random

    rnd = random.Random(7)
    blob = "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
                   for _ in range(4_000_000))
    engine.replies["ticker"] = sse_reply([x for _ in range(80) for x in (delta("tick "), 0.05)] + [delta(None, "stop")])
    gaps: list[float] = []
    started = threading.Event()

    def listen() -> None:
        with httpx.stream("POST", f"{gateway}/v1/chat/completions", headers=ACME, timeout=30,
                          json={"model": "sim-large", "stream": True,
                                "messages": [{"role": "user", "content": "Count. case:ticker;"}]}) as r:
            last = None
            for _ in r.iter_raw():
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
                started.set()

    listener = threading.Thread(target=listen)
    listener.start()
    assert started.wait(10)
    time.sleep(0.3)
    resp = chat(gateway, "Summarise this attachment: " + blob)
    assert resp.status_code == 200
    listener.join(30)
    assert max(gaps) < 0.3, f"largest gap between two chunks of another stream: {max(gaps):.3f} s"
