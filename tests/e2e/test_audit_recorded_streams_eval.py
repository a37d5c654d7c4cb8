"""Audit: real recorded provider streams, replayed byte for byte through the gateway with evaluation on.

$INFERSIGHT_EXTDATA/streams holds real SSE bodies recorded from OpenAI, OpenRouter, DeepSeek, Z.ai,
Snowflake and others. A small engine on 127.0.0.1 replays each one as it was recorded (bytes and
content type); the embedded gateway in front of it keeps content for every request (tenant policy
``all``, sample rate 1, guardrail screen on) and judges with a scripted judge on 127.0.0.1. The
official ``openai`` client drives each request; what evaluation stored (the request's story:
record, masked content, eval rows) is compared with what the client actually received.

Only tests that fail because of a defect are kept (see each docstring).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import EXTDATA
from tests.scripted_engine import embedded_gateway

pytestmark = pytest.mark.skipif(not EXTDATA, reason="INFERSIGHT_EXTDATA is not set (CI points it at ../shared/extdata)")

ADMIN = {"authorization": "Bearer sk-admin-test"}
JUDGE_MODEL = "replay-judge"
PACE_S = 0.002  # between 4 KiB writes: an engine streams as it generates, not all at once
DIMENSIONS = ("relevance", "coherence", "factual_fidelity", "no_hallucination", "no_undue_refusal",
              "tone_compliance")


def _streams() -> list[dict[str, Any]]:
    """Every recorded OpenAI-protocol chat stream (Anthropic /v1/messages and Bedrock are other protocols)."""
    if not EXTDATA:
        return []
    root = Path(EXTDATA) / "streams"
    out = []
    for line in (root / "index.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry["kind"] != "sse" or entry["event_names"] or not entry["uri"].endswith("/chat/completions"):
            continue
        request = json.loads((root / (entry["file"] + ".request.json")).read_text())
        body = request.get("body") or request["parsed_body"]
        entry["request"] = json.loads(body) if isinstance(body, str) else body
        entry["raw"] = (root / (entry["file"] + ".sse")).read_bytes()
        out.append(entry)
    return out


STREAMS = _streams()
BY_NAME = {e["file"]: e for e in STREAMS}


class Replay:
    """An engine on 127.0.0.1 that answers with the body named by the request's ``x-replay`` header,
    byte for byte (a recording, or one registered in ``bodies``), then keeps the response open
    ``x-replay-linger`` seconds before ending it; ``chunked``: HTTP/1.1 chunked transfer (as vLLM and
    the clouds send), else HTTP/1.0 ended by close; in 4 KiB writes, paced. Calls for model ``replay-judge`` get fixed scores."""

    def __init__(self, chunked: bool) -> None:
        self.bodies: dict[str, tuple[str, bytes]] = {e["file"]: (e["content_type"], e["raw"]) for e in STREAMS}
        self.judged: list[dict[str, Any]] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if chunked else "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                body = orjson.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                if body.get("model") == JUDGE_MODEL:
                    replay.judged.append(body)
                    scores = {d: {"explanation": "ok", "score": 4} for d in DIMENSIONS}
                    out = orjson.dumps({
                        "id": "j", "object": "chat.completion", "created": 1, "model": JUDGE_MODEL,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(scores)},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                content_type, data = replay.bodies[self.headers["x-replay"]]
                linger = float(self.headers.get("x-replay-linger") or 0)
                self.send_response(200)
                self.send_header("content-type", content_type)
                if chunked:
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(data), 4096):
                        piece = data[i:i + 4096]
                        time.sleep(PACE_S if i else 0.0)
                        self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                        self.wfile.flush()
                    time.sleep(linger)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                self.end_headers()
                for i in range(0, len(data), 4096):
                    time.sleep(PACE_S if i else 0.0)
                    self.wfile.write(data[i:i + 4096])
                    self.wfile.flush()
                time.sleep(linger)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module", params=[("http1", False, False), ("aiohttp", True, True)],
                ids=["http1-close-threads", "aiohttp-chunked-evalprocess"])
def served(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[tuple[str, Replay]]:
    """The embedded gateway (both upstream clients; eval parts on threads or in the eval process) in
    front of the replaying engine, judging with the scripted judge."""
    client, chunked, child = request.param
    replay = Replay(chunked)
    models = sorted({e["request"]["model"] for e in STREAMS})
    tenants = [{"id": "acme", "api_keys": ["sk-acme-test"], "sample_rate": 1.0, "content": "all"}]
    try:
        with embedded_gateway(
            replay.url, tenants, tmp_path_factory.mktemp("recorded") / "data",
            evaluation={"guardrail_scan": True, "child_process": child,
                        "judge": {"url": replay.url, "model": JUDGE_MODEL}},
            backends=[{"name": "recorded", "type": "openai", "url": replay.url, "models": models}],
            upstream={"connect_timeout_s": 2.0, "read_timeout_s": 10.0, "client": client},
        ) as url:
            yield url, replay
    finally:
        replay.stop()


def _wait(fn: Any, timeout_s: float = 20.0, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _drive(url: str, request: dict[str, Any], replay_name: str, linger: float = 0.0,
           whole_body: bool = False) -> tuple[str, dict[str, Any]]:
    """``request`` through the gateway with the official openai client; the trace id and what the
    client received (choice 0's text, finish reason, usage, tool calls). ``whole_body``: the HTTP body
    is read to its end before the events are parsed (the client then never closes early: see the
    first test)."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-acme-test", max_retries=0)
    rest = {k: v for k, v in request.items() if k not in ("model", "messages", "stream")}
    raw = client.chat.completions.with_raw_response.create(
        model=request["model"], messages=request["messages"], stream=True,
        extra_headers={"x-replay": replay_name, "x-replay-linger": str(linger)}, extra_body=rest)
    if whole_body:
        raw.http_response.read()
    got: dict[str, Any] = {"text": "", "finish_reason": None, "usage": None, "tool_calls": 0}
    for chunk in raw.parse():
        got["usage"] = chunk.usage or got["usage"]
        for choice in chunk.choices:
            if choice.index == 0:
                got["text"] += choice.delta.content or ""
                got["tool_calls"] += len(choice.delta.tool_calls or [])
                got["finish_reason"] = choice.finish_reason or got["finish_reason"]
    return raw.headers["x-trace-id"], got


def _story(url: str, trace: str, settle_s: float = 0.5) -> dict[str, Any]:
    """The request's story once its content is written (with the checks, in the same export), and a
    moment more, so a judge still answering adds its rows."""
    def ready() -> dict[str, Any] | None:
        resp = httpx.get(f"{url}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        body = resp.json() if resp.status_code == 200 else None
        return body if body and body["content"] else None

    _wait(ready, what=f"the content of {trace}")
    time.sleep(settle_s)
    return ready()


def _rows(story: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["evaluator"], e["dimension"]): e for e in story["evaluations"]}


# ---- 1. the official client's normal close after [DONE] ------------------------------------------------

@pytest.mark.parametrize("entry", STREAMS, ids=lambda e: e["file"].split("/")[-1])
def test_a_stream_read_to_done_is_not_recorded_as_a_client_disconnect(
        served: tuple[str, Replay], entry: dict[str, Any]) -> None:
    """The official ``openai`` client (``Stream.__stream__``) stops at ``data: [DONE]`` and closes the
    response at once; it does not wait for the end of the HTTP body. The gateway relays ``[DONE]`` as
    soon as it comes but ends its own response only when the engine's body ends (the chunked
    terminator, or the close), and ``_watch_disconnect`` (gateway/proxy.py) treats the client's close
    in between as ``client_disconnected``: the record becomes a 499, and the eval task, which carries
    that error_type, is ``answer_incomplete`` (model/evaluation.py), so only ``pii_leak`` runs: no
    ``empty``/``truncated``/``refusal``/``repetition`` check and no judge, although the client got the
    whole answer. Here the engine ends its body 50 ms after ``[DONE]`` (a cloud's terminator in a later
    TCP segment) and every recorded stream is hit; with no pause at all, on 127.0.0.1, 1 to 7 of 42
    such requests per run were hit, so a share of complete answers leaves stats (as client errors)
    and the quality sample, biased to whatever makes the engine slow to end its body. Fix: once
    ``[DONE]`` is relayed the answer is complete; finish the record then (``flight.done``), or end
    the client's response at ``[DONE]`` and drain the engine's remainder without the client."""
    url, _ = served
    trace, got = _drive(url, entry["request"], entry["file"], linger=0.05)
    assert got["finish_reason"] or got["text"]  # the client read a whole answer, up to [DONE]
    story = _story(url, trace)
    record = story["record"]
    checks = sorted(d for (ev, d) in _rows(story) if ev == "checks")
    assert (record["status_code"], record["error_type"], record["client_disconnected"]) == (200, None, False), \
        (record["status_code"], record["error_type"], checks)
    assert "empty" in checks and ("llm_judge", "relevance") in _rows(story), checks


# ---- 2. a reasoning model's thinking fills the capture before the answer comes --------------------------

def _long_thinking(entry: dict[str, Any], target_bytes: int) -> bytes:
    """The recorded stream with its reasoning events (bytes as recorded) repeated, in place, until
    the body passes ``target_bytes``: the same answer after a longer think."""
    events = entry["raw"].split(b"\n\n")
    thinking = [e for e in events if b'"reasoning":"' in e or b'"reasoning_content":"' in e]
    assert thinking, entry["file"]
    last = max(i for i, e in enumerate(events) if e in thinking)
    size = len(entry["raw"])
    extra: list[bytes] = []
    while size < target_bytes:
        for e in thinking:
            extra.append(e)
            size += len(e) + 2
    return b"\n\n".join(events[:last + 1] + extra + events[last + 1:])


def test_long_reasoning_does_not_push_the_answer_out_of_evaluation(served: tuple[str, Replay]) -> None:
    """The tap keeps the first 1 MiB of the response's raw bytes (``tap.MAX_CAPTURE_BYTES``) and reads
    the answer back from them at the end. A reasoning model streams its thinking first (OpenRouter:
    ``reasoning`` plus ``reasoning_details`` per delta, ~220 bytes per thinking token for Claude
    Sonnet 4.5 in this recording; Z.ai/DeepSeek: ``reasoning_content``) and its answer last, so a
    think of ~5,000 tokens via OpenRouter already fills the capture and the answer is never seen:
    the stored ``completion_text`` is not what the client got (here nothing), ``content_truncated``
    is set, ``empty`` is skipped, and the judge, if it runs, judges no answer. Those are exactly the
    hard questions a team most wants judged. The reasoning itself is not part of the completion the
    checks read (extract.py), so it should not count against the capture: keep only what extract
    needs (content, refusal, tool calls, finish_reason, logprobs) as the bytes arrive, or keep the
    tail rather than the head."""
    url, replay = served
    name = "pydantic-ai/test_openrouter_streaming_reasoning__0"  # Claude Sonnet 4.5 thinking, via OpenRouter
    entry = BY_NAME[name]
    derived = name + "+long-thinking"
    replay.bodies[derived] = (entry["content_type"], _long_thinking(entry, 1_300_000))
    trace, got = _drive(url, entry["request"], derived, whole_body=True)
    assert got["text"] and got["finish_reason"] == "stop"  # the client got the short answer in full
    story = _story(url, trace)
    (content,) = story["content"]
    rows = _rows(story)
    assert (content["completion_text"], content["content_truncated"]) == (got["text"], False), content
    assert (rows.get(("checks", "empty")) or {}).get("label") == "pass", sorted(rows)
    judged = [j for j in replay.judged if any(got["text"] in str(m.get("content")) for m in j["messages"])]
    assert judged, "the judge was never shown the client's answer"


# ---- 3. Snowflake Cortex's `"refusal": ""` on every delta ------------------------------------------------

def _snowflake_tool_turn(entry: dict[str, Any], refusal: bytes) -> bytes:
    """The recorded Snowflake stream as an agent's tool-call turn: its first delta carries a call and
    no text (the shape Cortex streams, ``refusal`` as it sends it: ``""``; OpenAI sends ``null``)."""
    call = b'"tool_calls":[{"index":0,"id":"toolu_1","type":"function","function":{"name":"multiply",' \
           b'"arguments":"{\\"a\\": 15, \\"b\\": 27}"}}]'
    raw = entry["raw"].replace(b'"content":"4","refusal":"","role":"assistant","tool_calls":null',
                               b'"content":"","refusal":' + refusal + b',"role":"assistant",' + call, 1)
    raw = raw.replace(b'"refusal":""', b'"refusal":' + refusal)
    assert b"multiply" in raw
    return raw


def test_an_empty_refusal_field_does_not_make_a_tool_turn_scored_against_the_reference(
        served: tuple[str, Replay]) -> None:
    """Snowflake Cortex's OpenAI-compatible stream (recorded) sends ``"refusal": ""`` in every delta,
    where OpenAI sends ``null``. ``extract._Accumulator`` collects any *string* refusal, and
    ``refused = not text and bool(self.refusal)`` is then true for a list of empty strings: an answer
    with no text is taken for a structured-output refusal. For a tool-call turn that makes
    ``tool_calls_only`` false, so the tap sends the request's ``metadata.reference`` with it and
    ``token_f1``/``rouge_l`` score ``multiply({...})`` against the expected final answer: every
    agent turn on Cortex drags the reference series down, while the same turn from OpenAI (``null``)
    gets no reference rows, as the tap intends ("a turn of tool calls is no answer to it"; the same
    bytes with ``"refusal": null`` pass this test). An empty
    Cortex answer with JSON mode likewise loses its ``invalid_json`` row. Fix: treat only a non-empty
    refusal as one (``refused = not text and any(self.refusal)``)."""
    url, replay = served
    entry = BY_NAME["pydantic-ai/test_snowflake_model_streaming__0"]
    derived = "snowflake-tool-turn"
    replay.bodies[derived] = (entry["content_type"], _snowflake_tool_turn(entry, b'""'))
    request = {**entry["request"], "metadata": {"reference": "15 times 27 is 405."},
               "tools": [{"type": "function", "function": {"name": "multiply", "parameters": {"type": "object"}}}]}
    trace, got = _drive(url, request, derived, whole_body=True)
    assert got["tool_calls"] == 1 and not got["text"]
    story = _story(url, trace)
    (content,) = story["content"]
    assert "multiply" in content["completion_text"]
    reference_rows = sorted(d for (ev, d) in _rows(story) if ev == "reference")
    assert reference_rows == [], reference_rows
