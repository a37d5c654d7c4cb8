"""A scripted OpenAI-compatible engine on 127.0.0.1, and the embedded gateway in front of it.

The audit tests of content handling need answers no simulator gives (tool calls, refusals, several
choices, a stream the engine breaks off): each test registers a reply under a marker, ``case:NAME``,
which its request carries anywhere in its body; any other request gets a plain answer.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from infersight.config import settings_from_dict
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from tests.conftest import config_dict


def chat_reply(choices: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat completion with these ``choices`` (see ``message``) and a fixed usage."""
    return {
        "id": "chatcmpl-audit", "object": "chat.completion", "created": 1_700_000_000, "model": "sim-large",
        "choices": choices,
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }


def message(content: Any, finish_reason: str = "stop", index: int = 0, **extra: Any) -> dict[str, Any]:
    """One choice of a chat completion: an assistant message with ``content`` and ``extra`` fields."""
    return {"index": index, "message": {"role": "assistant", "content": content, **extra},
            "finish_reason": finish_reason}


def chunk(choices: list[dict[str, Any]], obj: str = "chat.completion.chunk") -> bytes:
    """One streamed chunk's JSON payload."""
    return orjson.dumps({"id": "chatcmpl-audit", "object": obj, "created": 1_700_000_000,
                         "model": "sim-large", "choices": choices})


class Scripted:
    """One scripted answer: a JSON body, or SSE ``data:`` payloads (then ``[DONE]`` unless ``cut``)."""

    def __init__(self, body: dict[str, Any] | None = None, events: list[bytes] | None = None,
                 cut: bool = False) -> None:
        self.body, self.events, self.cut = body, events, cut


class ScriptedEngine:
    """Answers with the reply registered (``replies[NAME]``: a ``Scripted``, or a JSON body) for the
    marker ``case:NAME`` found in the request body; a plain text answer otherwise."""

    def __init__(self) -> None:
        self.replies: dict[str, Scripted | dict[str, Any]] = {}
        self.received: list[bytes] = []  # every request body, as the engine got it
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a streamed answer ends when the connection closes

            def log_message(self, *args: Any) -> None:  # quiet
                return None

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                engine.received.append(raw)
                self._answer(engine.reply_for(raw))

            def _answer(self, reply: Scripted) -> None:
                if reply.events is None:
                    body = orjson.dumps(reply.body)
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for event in reply.events:
                    self.wfile.write(b"data: " + event + b"\n\n")
                    self.wfile.flush()
                if not reply.cut:
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply_for(self, raw: bytes) -> Scripted:
        for name, scripted in list(self.replies.items()):
            if re.search(rb"case:" + re.escape(name.encode()) + rb"(?![\w-])", raw):
                return scripted if isinstance(scripted, Scripted) else Scripted(body=scripted)
        return Scripted(body=chat_reply([message("A plain answer.")]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> ScriptedEngine:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    """A module's scripted engine (import the fixture: ``from tests.scripted_engine import engine``)."""
    eng = ScriptedEngine().start()
    yield eng
    eng.stop()


@contextmanager
def embedded_gateway(engine_url: str, tenants: list[dict[str, Any]], data: Path,
                     evaluation: dict[str, Any] | None = None, **sections: Any) -> Iterator[str]:
    """The embedded shape on threads (2 vCPUs): gateway, in-process masking and eval sink, DuckDB;
    yields its base URL. ``evaluation``: settings added to the section's (a judge); ``sections``:
    more config sections (``server``, ``upstream``, ...)."""
    settings = settings_from_dict(config_dict(
        data, engine_url, tenants=tenants,
        store={"child_process": False},
        evaluation={"child_process": False, "mask_linger_s": 0.0, "flush_interval_s": 0.05, **(evaluation or {})},
        logging={"level": "warning", "access_log": False},
        **sections,
    ))
    server = ThreadedServer(build_gateway(settings)).start()
    try:
        yield server.base_url
    finally:
        server.stop()


ADMIN = {"authorization": "Bearer sk-admin-test"}


def tenant_client(url: str, api_key: str = "sk-acme-test") -> openai.OpenAI:
    """The official client against the embedded gateway, as a tenant (no retries: one request each)."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


def evaluated_story(url: str, trace: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """The request's story (``GET /api/v1/requests/{trace}``) once its content row and check rows
    are written."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = httpx.get(f"{url}/api/v1/requests/{trace}", headers=ADMIN, timeout=10)
        if resp.status_code == 200:
            body = resp.json()
            if body["content"] and any(e["evaluator"] == "checks" for e in body["evaluations"]):
                return body
        time.sleep(0.05)
    raise AssertionError(f"story of {trace} incomplete: {body}")


def story_checks(story: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The deterministic checks of a story, by dimension."""
    return {e["dimension"]: e for e in story["evaluations"] if e["evaluator"] == "checks"}


def story_hits(story: dict[str, Any]) -> list[str]:
    """The guardrail hits stored with a story's content."""
    [content] = story["content"]
    return [h for h in (content["guardrail_hits"] or "").split(",") if h]


def chat_story(url: str, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """One chat request as the tenant through the official client (a stream read to its end), then
    its evaluated story."""
    raw = tenant_client(url).chat.completions.with_raw_response.create(model="sim-large", messages=messages, **kw)
    parsed = raw.parse()
    if kw.get("stream"):
        list(parsed)
    return evaluated_story(url, raw.headers["x-trace-id"])
