"""The simulator as a raw ASGI3 app (no framework: benchmarks run 256 streams on 2 cores).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics``. Per-request test hooks are headers: ``x-sim-fault``
(429, 500, timeout, disconnect) and ``x-sim-timeout-s`` (stall length of the timeout fault).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from infersight.sim import logprobs, wire
from infersight.sim.engine import CONTENT, ModelEngine, Outcome, RequestPlan, Simulator
from infersight.sim.gpu import PRESSURE_SPEC, SCENARIOS, GpuSpec, SimGpu, pressure_profiles
from infersight.sim.metrics import SimMetrics
from infersight.sim.profiles import DEFAULT_PROFILES, FAULT_KINDS, ModelProfile

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_TIMEOUT_S = 30.0
DISCONNECT_AFTER_TOKENS = 3
JSON = (b"content-type", b"application/json")


class SimulatedDisconnect(Exception):
    """Raised mid-response so that uvicorn drops the connection (the ``disconnect`` fault)."""


class _HideSimulatedDisconnect(logging.Filter):
    """Keeps uvicorn's "Exception in ASGI application" log quiet for our deliberate drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info
        return not (exc and isinstance(exc[1], SimulatedDisconnect))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSimulatedDisconnect) for f in logger.filters):
        logger.addFilter(_HideSimulatedDisconnect())


def _body_msg(body: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
    content_type: tuple[bytes, bytes] = JSON,
) -> None:
    hdrs = [content_type, (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send(_body_msg(body, more=False))


async def _error(
    send: Send, status: int, message: str, type_: str, code: str | int | None,
    param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _respond(send, status, wire.error_body(message, type_, code, param), headers)


class SimApp:
    """ASGI3 callable of one simulated engine with its own state and metrics registry."""

    def __init__(self, seed: int = 0, profiles: dict[str, ModelProfile] | None = None,
                 scenario: str = "normal") -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, not {scenario!r}")
        self.scenario = scenario
        self.profiles: dict[str, ModelProfile] = dict(profiles or DEFAULT_PROFILES)
        if scenario == "memory_pressure":
            self.profiles = pressure_profiles(self.profiles)
        self.metrics = SimMetrics(self._gauge_rows)
        self.engines: dict[str, ModelEngine] = {
            name: ModelEngine(name, prof, self.metrics.for_model(name))
            for name, prof in self.profiles.items()
        }
        self.sim = Simulator(seed, self.engines)
        chat_engines = [e for e in self.engines.values() if e.profile.judge is None]
        self.gpu = SimGpu(lambda: [(e.name, e.running, e.kv_usage()) for e in chat_engines],
                          PRESSURE_SPEC if scenario == "memory_pressure" else GpuSpec())
        self.last_headers: dict[str, str] = {}
        self.stats: dict[str, int] = {
            "requests": 0, "client_disconnects": 0, "fault_429": 0, "fault_500": 0,
            "fault_timeout": 0, "fault_disconnect": 0,
        }
        created = int(time.time())
        self._models_body = orjson.dumps({
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": "infersight-sim",
                 "root": name, "parent": None, "max_model_len": prof.max_model_len}
                for name, prof in self.profiles.items()
            ],
        })
        _install_log_filter()

    def _gauge_rows(self) -> list[tuple[str, int, int, float]]:
        return [(n, e.running, e.waiting, e.kv_usage()) for n, e in self.engines.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    _install_log_filter()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.last_headers = headers
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/v1/chat/completions", "/v1/completions"):
            if method != "POST":
                return await _error(send, 405, "Method Not Allowed", "invalid_request_error", 405)
            body = await _read_body(receive)
            if body is None:
                return
            self.stats["requests"] += 1
            try:
                await self._completion(path == "/v1/chat/completions", body, headers, receive, send)
            except wire.BadRequest as e:
                await _error(send, 400, str(e), "invalid_request_error", 400, e.param)
            return
        if method != "GET":
            return await _error(send, 405, "Method Not Allowed", "invalid_request_error", 405)
        if path == "/v1/models":
            await _respond(send, 200, self._models_body)
        elif path == "/health":
            await _respond(send, 200, b"", content_type=(b"content-type", b"text/plain"))
        elif path == "/metrics":
            ctype = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            await _respond(send, 200, self.metrics.exposition(), content_type=ctype)
        elif path == "/dcgm/metrics":  # what a dcgm-exporter beside the engine would serve
            ctype = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            await _respond(send, 200, self.gpu.exposition(), content_type=ctype)
        else:
            await _error(send, 404, f"Not Found: {path}", "invalid_request_error", 404)

    async def _completion(
        self, chat: bool, body: bytes, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise wire.BadRequest(f"Invalid JSON body: {e}") from None
        if not isinstance(req, dict):
            raise wire.BadRequest("The request body must be a JSON object")
        model = req.get("model")
        if not isinstance(model, str):
            raise wire.BadRequest("'model' is required", "model")
        engine = self.engines.get(model)
        if engine is None:
            msg = f"The model `{model}` does not exist."
            return await _error(send, 404, msg, "invalid_request_error", "model_not_found", "model")
        prompt, last_user, tokens = wire.render_chat(req) if chat else wire.render_completion(req)
        max_tokens = _max_tokens(req, chat, len(tokens), engine.profile.max_model_len)
        if req.get("n", 1) not in (1, None):
            raise wire.BadRequest("the simulator supports only n=1", "n")
        stops = wire.stop_sequences(req)
        include_usage = wire.include_usage(req)
        top_k = logprobs.requested(req, chat)
        fault = headers.get("x-sim-fault")
        if fault is not None and fault not in FAULT_KINDS:
            raise wire.BadRequest(f"x-sim-fault must be one of {', '.join(FAULT_KINDS)}")
        stall_s = _float_header(headers, "x-sim-timeout-s", DEFAULT_TIMEOUT_S)
        plan = self.sim.plan(
            model, body, tokens, prompt, last_user, max_tokens, bool(req.get("ignore_eos")),
            reasoning=chat,
        )
        if stops:
            plan.cut_at_stop(stops)
        fault = fault or plan.fault
        if fault is not None:
            self.stats["fault_" + fault] += 1
        if fault == "429":
            msg = "Rate limit reached for requests (simulated)."
            return await _error(send, 429, msg, "requests", "rate_limit_exceeded",
                                headers=[(b"retry-after", b"1")])
        if fault == "500":
            msg = "The server had an error while processing your request (simulated)."
            return await _error(send, 500, msg, "server_error", "internal_error")
        rid = ("chatcmpl-" if chat else "cmpl-") + "%024x" % plan.rng.getrandbits(96)
        sim_headers = [
            (b"x-request-id", rid.encode()),
            (b"x-sim-correct", b"true" if plan.correct else b"false"),
            (b"x-sim-question-id", plan.question.id.encode()),
        ]
        watch = asyncio.ensure_future(receive())
        try:
            if req.get("stream"):
                await self._stream(
                    chat, plan, rid, include_usage, fault, stall_s, sim_headers, watch, send, top_k
                )
            else:
                await self._unary(chat, plan, rid, fault, stall_s, sim_headers, watch, send, top_k)
        finally:
            watch.cancel()

    async def _stream(
        self, chat: bool, plan: RequestPlan, rid: str, include_usage: bool, fault: str | None,
        stall_s: float, sim_headers: list[tuple[bytes, bytes]], watch: asyncio.Future[Any],
        send: Send, top_k: int | None = None,
    ) -> None:
        hdrs = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), *sim_headers]
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        writer = wire.ChunkWriter(rid, int(time.time()), plan.model, chat, include_usage)
        drop_after = min(DISCONNECT_AFTER_TOKENS, len(plan.tokens)) if fault == "disconnect" else -1
        buf: list[bytes] = []
        sent = 0
        answered = [0, 0]  # answer tokens so far, and their characters: logprob positions and offsets

        async def flush() -> None:
            if buf:
                data = b"".join(buf)
                buf.clear()
                await send(_body_msg(data))

        async def on_start() -> None:
            if chat:
                buf.append(writer.role())

        async def on_token(kind: int, text: str) -> None:
            nonlocal sent
            lp = None
            if top_k is not None and kind == CONTENT:
                lp = logprobs.choice_logprobs([text], plan.correct, top_k, chat, *answered)
                answered[0] += 1
                answered[1] += len(text)
            buf.append(writer.token(kind, text, lp))
            sent += 1
            if sent == drop_after:
                await flush()
                raise SimulatedDisconnect(rid)

        out = await self.engines[plan.model].execute(
            plan, stream=True, watch=watch, on_start=on_start, on_token=on_token, flush=flush,
            stall_s=stall_s if fault == "timeout" else 0.0,
        )
        if out.finish_reason == "abort":
            self.stats["client_disconnects"] += 1
            return
        buf.append(writer.finish(out.finish_reason))
        if include_usage:
            buf.append(writer.usage(_usage(plan, out)))
        buf.append(wire.DONE)
        await send(_body_msg(b"".join(buf), more=False))

    async def _unary(
        self, chat: bool, plan: RequestPlan, rid: str, fault: str | None, stall_s: float,
        sim_headers: list[tuple[bytes, bytes]], watch: asyncio.Future[Any], send: Send,
        top_k: int | None = None,
    ) -> None:
        out = await self.engines[plan.model].execute(
            plan, stream=False, watch=watch, stall_s=stall_s if fault == "timeout" else 0.0
        )
        if out.finish_reason == "abort":
            self.stats["client_disconnects"] += 1
            return
        sim_headers = [*sim_headers, *_timing_headers(out)]
        reasoning = plan.reasoning_text if self.profiles[plan.model].is_reasoner else None
        body = wire.full_response(
            rid=rid, created=int(time.time()), model=plan.model, chat=chat,
            content=plan.content_text, reasoning=reasoning, finish_reason=out.finish_reason,
            usage_obj=_usage(plan, out),
            sim={"question_id": plan.question.id, "correct": plan.correct},
            logprobs=None if top_k is None else logprobs.choice_logprobs(
                [t for k, t in plan.tokens if k == CONTENT], plan.correct, top_k, chat),
        )
        if fault != "disconnect":
            return await _respond(send, 200, body, sim_headers)
        # Promise the whole body, deliver half, then drop the connection.
        hdrs = [JSON, (b"content-length", str(len(body)).encode()), *sim_headers]
        await send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await send(_body_msg(body[: len(body) // 2]))
        raise SimulatedDisconnect(rid)


def _timing_headers(out: Outcome) -> list[tuple[bytes, bytes]]:
    """TGI's per-request timing headers (whole milliseconds, truncated as TGI does), so that the
    gateway's engine-timings path runs against the sim. Non-streamed responses only, as in TGI:
    a stream's headers leave before the times are known."""
    return [
        (b"x-queue-time", b"%d" % int(out.queue_s * 1000.0)),
        (b"x-inference-time", b"%d" % int(out.inference_s * 1000.0)),
    ]


def _usage(plan: RequestPlan, out: Outcome) -> dict[str, Any]:
    return wire.usage(
        len(plan.prompt_tokens), out.generated, out.cached_tokens, out.reasoning_generated
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left first."""
    parts: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        parts.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(parts)


def _max_tokens(req: dict[str, Any], chat: bool, n_prompt: int, max_model_len: int) -> int:
    """``max_completion_tokens`` / ``max_tokens`` with vLLM's defaults and context check."""
    value = req.get("max_completion_tokens") if chat else None
    param = "max_completion_tokens"
    if value is None:
        value, param = req.get("max_tokens"), "max_tokens"
    if value is None:
        value = max_model_len - n_prompt if chat else 16  # 16: OpenAI/vLLM completions default
    elif type(value) is not int or value < 1:
        raise wire.BadRequest(f"'{param}' must be a positive integer", param)
    if n_prompt + value > max_model_len or value < 1:
        raise wire.BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {n_prompt + max(value, 0)} tokens ({n_prompt} in the messages, "
            f"{value} in the completion). Please reduce the length of the messages or completion.",
            param,
        )
    return value


def _float_header(headers: dict[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise wire.BadRequest(f"header {name} must be a number") from None
    if value < 0:
        raise wire.BadRequest(f"header {name} must not be negative")
    return value


def create_sim_app(seed: int = 0, profiles: dict[str, ModelProfile] | None = None,
                   scenario: str = "normal") -> SimApp:
    """A fresh simulator app; ``profiles`` replaces the default models when given."""
    return SimApp(seed=seed, profiles=profiles, scenario=scenario)


__all__ = ["SimApp", "SimulatedDisconnect", "create_sim_app"]
