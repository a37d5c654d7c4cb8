"""OpenAI API compatibility as real clients see it, and what the gateway records for each shape.

The official ``openai`` client talks to a real gateway on 127.0.0.1 (uvicorn) where the client's view
matters; engine quirks come from ``MockTransport`` scripts of the shapes real engines send. Timing
checks run in-process with a ``ManualClock``. Each test's docstring says what went wrong before the fix.
"""

from __future__ import annotations

import time

from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest

from infersight.config import Settings
from infersight.gateway.upstreams import UpstreamDisconnected, UpstreamTimeout
from infersight.gateway.upstreams.mock import ManualClock, MockTransport, ScriptedResponse
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer
from tests.conftest import DirectBus
from tests.unit.gateway.helpers import ACME, DONE, chat_body, chat_chunk, gateway, sse, usage_chunk
from tests.unit.sim.conftest import TEST_PROFILES

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Served:
    """A gateway on 127.0.0.1 whose engine is a ``MockTransport`` script; records land in ``bus``."""

    def __init__(self, settings: Settings, handler: Callable[[Any], ScriptedResponse]) -> None:
        self.bus = DirectBus()
        self.server = ThreadedServer(build_gateway(settings, transport=MockTransport(handler), bus=self.bus))

    def client(self, key: str = "sk-acme-test") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.url, api_key=key, max_retries=0, timeout=10)

    def records(self, n: int, timeout_s: float = 10.0) -> list[Any]:
        """The bus's records once there are ``n``: a client that raises on an error event leaves
        before the gateway's request ends and publishes its record (a race CI once lost)."""
        deadline = time.monotonic() + timeout_s
        while len(self.bus.records) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.bus.records)


@pytest.fixture
def served(settings: Settings) -> Iterator[Callable[[Callable[[Any], ScriptedResponse]], Served]]:
    started: list[Served] = []

    def start(handler: Callable[[Any], ScriptedResponse]) -> Served:
        started.append(Served(settings, handler))
        started[-1].server.start()
        return started[-1]

    yield start
    for one in started:
        one.server.stop()


# --- an engine that breaks mid-stream ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"), [(UpstreamDisconnected("engine went away"), "upstream_disconnected"),
                      (UpstreamTimeout("engine stalled"), "upstream_timeout")],
)
def test_engine_cut_mid_event_reaches_the_openai_client_as_an_api_error(served, exc, code) -> None:
    """Was: the half event the engine had sent was glued to the gateway's in-band error event, so the
    client parsed one broken JSON line: ``json.JSONDecodeError`` instead of ``openai.APIError``."""
    half = chat_chunk("ris")[:25]  # the engine died inside this event
    script = ScriptedResponse(chunks=[(1.0, chat_chunk(role=True)), (2.0, chat_chunk("Pa")), (3.0, half)],
                              raise_after=exc)
    gw = served(lambda request: script)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in gw.client().chat.completions.create(model="sim-large", messages=QUESTION, stream=True):
            seen.append(chunk.choices[0].delta.content or "")
    assert not isinstance(raised.value, openai.APIStatusError)  # in-band: the status was a 200
    assert raised.value.body["code"] == code and "".join(seen) == "Pa"
    [record] = gw.records(1)
    assert record.status_code == 200 and record.error_type == code


# --- in-stream errors in engines' own shapes ---------------------------------------------------------


def test_tgi_string_error_event_is_recorded_as_a_stream_error(served) -> None:
    """TGI before 2.1 ends a failing chat stream with ``data:{"error":"...","error_type":"..."}`` and
    then ``data: [DONE]``. The openai client raises on it; the record said success (only a dict
    ``error`` was looked at), so stats and evaluation's error sampling never saw the failure."""
    tgi_error = b'data:{"error":"Request failed during generation: Server error: CUDA out of memory",' \
                b'"error_type":"generation"}\n\n'
    script = ScriptedResponse(chunks=[(1.0, chat_chunk(role=True)), (2.0, chat_chunk("Pa")), (3.0, tgi_error),
                                      (4.0, DONE)])
    gw = served(lambda request: script)
    with pytest.raises(openai.APIError) as raised:
        list(gw.client().chat.completions.create(model="sim-large", messages=QUESTION, stream=True))
    assert "CUDA out of memory" in raised.value.body  # the client's view: the engine's string, relayed
    [record] = gw.records(1)
    assert record.status_code == 200 and record.error_type == "upstream_stream_error"


def test_a_dict_error_event_is_still_recorded_and_normal_streams_are_not_errors(settings) -> None:
    """The fix must keep what worked: OpenAI's dict shape is an error, a clean stream is not."""
    import asyncio

    async def run(chunks: list[tuple[float, bytes]]) -> Any:
        _, _, bus, client = gateway(settings, lambda request: ScriptedResponse(chunks=chunks), ManualClock())
        async with client:
            await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=ACME)
        return bus.records[0]

    failed = asyncio.run(run([(1.0, chat_chunk("Pa")), (2.0, sse({"error": {"message": "boom", "type": "x"}})),
                              (3.0, DONE)]))
    fine = asyncio.run(run([(1.0, chat_chunk("Pa")), (2.0, chat_chunk(finish="stop")), (3.0, DONE)]))
    assert failed.error_type == "upstream_stream_error" and fine.error_type is None


# --- n > 1 streams -----------------------------------------------------------------------------------


def choice_chunk(index: int, content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "sim-large",
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]})


@pytest.mark.parametrize("n", [2, 3])
async def test_n_choices_stream_measures_inter_token_latency_per_choice(settings, n: int) -> None:
    """With ``n`` > 1 the engine sends one chunk per choice per decode step, 10 ms apart. ITL was
    taken between consecutive chunks of any choice: gaps of 0 between the choices of one step, so
    p50 was 0 ms (n=3) or the mean halved (n=2), and TPOT was divided by ``n``. It must be per choice."""
    chunks: list[tuple[float, bytes]] = [(4.0, choice_chunk(i, "")) for i in range(n)]  # role-like, no output
    for step in range(4):
        chunks.extend((5.0 + 10.0 * step, choice_chunk(i, f" t{step}")) for i in range(n))
    chunks.extend((40.0, choice_chunk(i, finish="stop")) for i in range(n))
    chunks += [(41.0, usage_chunk(12, 4 * n)), (41.0, DONE)]
    clock = ManualClock()
    app, _, bus, client = gateway(settings, lambda request: ScriptedResponse(chunks=chunks), clock)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True, n=n), headers=ACME)
    assert resp.status_code == 200
    assert resp.text.count('"index":%d' % (n - 1)) == 6  # every choice's chunks reach the client
    [record] = bus.records
    assert record.ttft_ms == pytest.approx(5.0)  # the first output of any choice
    assert record.completion_tokens == 4 * n and record.token_source == "backend"
    assert record.itl_ms_mean == pytest.approx(10.0) and record.itl_ms_p50 == pytest.approx(10.0)
    assert record.itl_ms_p99 == pytest.approx(10.0)
    # Aggregate decode rate over all choices: (4n - 1) tokens in 30 ms.
    assert record.output_tokens_per_s == pytest.approx((4 * n - 1) / 0.030)
    labels = {"tenant": "acme", "model": "sim-large", "backend": "sim", "use_case": "other",
              "gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai"}
    tpot = app.metrics.registry.get_sample_value("gen_ai_server_time_per_output_token_seconds_sum", labels)
    assert tpot == pytest.approx(0.010)  # one sequence's time per token, not the step divided by n


async def test_n_choices_stream_without_usage_counts_every_choice(settings) -> None:
    """The estimate for an engine that sends no usage counts the output chunks of all choices."""
    chunks = [(5.0 + 10.0 * s, choice_chunk(i, f" t{s}")) for s in range(3) for i in range(2)]
    chunks += [(30.0, choice_chunk(0, finish="stop")), (30.0, choice_chunk(1, finish="length")), (31.0, DONE)]
    _, _, bus, client = gateway(settings, lambda request: ScriptedResponse(chunks=chunks), ManualClock())
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(stream=True, n=2), headers=ACME)
    [record] = bus.records
    assert record.token_source == "estimate" and record.completion_tokens == 6
    assert record.ttft_ms == pytest.approx(5.0) and record.itl_ms_p50 == pytest.approx(10.0)


# --- tool calls --------------------------------------------------------------------------------------


def test_tool_call_only_stream_through_the_openai_client(served) -> None:
    """A stream of only ``tool_calls`` deltas: the client assembles the call, the record has TTFT on the
    first tool-call delta, the estimate counts the deltas, and ``finish_reason`` is ``tool_calls``."""

    def delta(**d: Any) -> bytes:
        return sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "sim-large",
                    "choices": [{"index": 0, "delta": d, "finish_reason": None}]})

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_capital", "arguments": ""}}
    chunks = [(1.0, chat_chunk(role=True, content=None)), (20.0, delta(content=None, tool_calls=[call])),
              (30.0, delta(tool_calls=[{"index": 0, "function": {"arguments": '{"country": '}}])),
              (40.0, delta(tool_calls=[{"index": 0, "function": {"arguments": '"France"}'}}])),
              (41.0, chat_chunk(finish="tool_calls")), (42.0, DONE)]
    gw = served(lambda request: ScriptedResponse(chunks=chunks))
    parts = list(gw.client().chat.completions.create(model="sim-large", messages=QUESTION, stream=True,
                                                     tools=[{"type": "function", "function": {
                                                         "name": "get_capital", "parameters": {"type": "object"}}}]))
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in parts if c.choices and c.choices[0].delta.tool_calls)
    assert orjson.loads(arguments) == {"country": "France"}
    [record] = gw.records(1)
    assert record.finish_reason == "tool_calls" and record.error_type is None
    assert record.completion_tokens == 3 and record.token_source == "estimate"
    assert record.ttft_ms is not None and record.ttft_ms >= 15.0  # not the role chunk at 1 ms


# --- /v1/models/{model} ------------------------------------------------------------------------------


def test_openai_client_retrieves_one_model(served) -> None:
    """``client.models.retrieve(id)`` is ``GET /v1/models/{id}``; it was a 404 ``unknown_url`` for every
    model, so tools that check a model before using it failed against the gateway."""
    gw = served(lambda request: ScriptedResponse())
    model = gw.client().models.retrieve("sim-large")
    assert model.id == "sim-large" and model.object == "model" and model.owned_by == "sim"
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client().models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        gw.client("sk-wrong").models.retrieve("sim-large")
    assert gw.bus.records == []  # not an inference request


# --- pass-through of what the OpenAI API accepts -----------------------------------------------------


def test_openai_request_fields_reach_the_engine_untouched(served) -> None:
    """``max_completion_tokens``, ``logprobs``, ``response_format``, ``user``, ``seed``, non-ASCII and unknown
    fields: byte for byte for a non-streamed request; a stream gets only ``include_usage`` added."""
    answer = orjson.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "sim-large",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "巴黎 ✓"},
                                        "logprobs": None, "finish_reason": "content_filter"}],
                           "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    stream = [(1.0, chat_chunk("巴黎")), (2.0, chat_chunk(finish="content_filter")), (3.0, usage_chunk(9, 1)),
              (4.0, DONE)]

    def handler(request: Any) -> ScriptedResponse:
        if orjson.loads(request.body).get("stream"):
            return ScriptedResponse(chunks=stream)
        return ScriptedResponse(headers={"content-type": "application/json; charset=utf-8"}, chunks=[(1.0, answer)])

    gw = served(handler)
    fields: dict[str, Any] = dict(
        max_completion_tokens=7, logprobs=True, top_logprobs=2, response_format={"type": "json_object"},
        user="user-42", seed=1234, stop=["\n\n"], extra_body={"guided_choice": ["a", "b"], "x_vendor": {"k": [1]}},
    )
    messages = [{"role": "user", "content": "Quelle est la capitale de la Chine ? 首都は 🚀"}]
    reply = gw.client().chat.completions.create(model="sim-large", messages=messages, **fields)
    assert reply.choices[0].message.content == "巴黎 ✓" and reply.choices[0].finish_reason == "content_filter"
    chunks = list(gw.client().chat.completions.create(model="sim-large", messages=messages, stream=True, **fields))
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == ["巴黎"]
    assert all(c.usage is None for c in chunks)
    plain, streamed = (orjson.loads(r.body) for r in gw.server.app.transport.requests)
    for sent in (plain, streamed):
        assert sent["messages"] == messages and sent["guided_choice"] == ["a", "b"] and sent["x_vendor"] == {"k": [1]}
        assert (sent["max_completion_tokens"], sent["seed"], sent["user"], sent["top_logprobs"]) == (7, 1234, "user-42", 2)
    assert streamed["stream_options"] == {"include_usage": True}
    first, second = gw.records(2)
    assert first.finish_reason == second.finish_reason == "content_filter"
    assert (first.completion_tokens, second.completion_tokens) == (3, 1)


# --- the simulator -----------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(seed=3, profiles=TEST_PROFILES) as server:
        yield server


@pytest.mark.parametrize("stop", [".", ["zzz", "."]])
def test_sim_honours_stop(sim: SimServer, stop: str | list[str]) -> None:
    """Every sim answer starts with a sentence ending in ``.``; with ``stop: "."`` the answer must end
    before it with ``finish_reason: stop``, streamed or not. The sim ignored ``stop``: the whole answer,
    ``.`` and all, and ``finish_reason: length`` at ``max_tokens``."""
    client = openai.OpenAI(base_url=sim.url, api_key="sim", max_retries=0, timeout=10)
    reply = client.chat.completions.create(model="fast", messages=QUESTION, max_tokens=60, stop=stop)
    text = reply.choices[0].message.content or ""
    assert text and "." not in text and reply.choices[0].finish_reason == "stop"
    assert 0 < reply.usage.completion_tokens < 15
    chunks = list(client.chat.completions.create(model="fast", messages=QUESTION, max_tokens=60, stop=stop,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed and "." not in streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens < 15
    legacy = client.completions.create(model="fast", prompt="What is the capital of France?", max_tokens=60, stop=stop)
    assert "." not in legacy.choices[0].text and legacy.choices[0].finish_reason == "stop"


def test_sim_refuses_a_malformed_stop(sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.url, api_key="sim", max_retries=0, timeout=10)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fast", messages=QUESTION, max_tokens=5, extra_body={"stop": 3})
    assert bad.value.body["param"] == "stop"
