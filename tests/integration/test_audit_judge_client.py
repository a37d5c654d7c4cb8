"""Audit of the LLM judge's HTTP client against endpoints that behave like real ones: rate limits
with ``Retry-After`` in its every form, error objects in a 200, partial usage, a key echoed back, a
body that stalls, a redirect, JSON mode refused under concurrency, and our own gateway's errors.

Each test that proves a bug says in its docstring what happened before the fix; the others fill
gaps. The judge is a scripted OpenAI-compatible endpoint on 127.0.0.1 (``ThreadedServer``); bad
replies to a judge that answers badly are covered in ``test_audit_evaluation.py``, not repeated here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import orjson
import pytest

from infersight.evaluation.judge_client import AiohttpTransport, JudgeClient, TransientError
from infersight.evaluation.llm_judge import MAX_BACKOFF_S, JudgeError, LLMJudge
from infersight.evaluation.rubric import DIMENSION_NAMES, load_rubric
from infersight.evaluation.settings import JudgeSettings
from infersight.gateway import errors as gateway_errors
from infersight.serving import ThreadedServer

Reply = tuple[int, dict[str, str], bytes]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Raw = Callable[[Send], Awaitable[None]]
"""A step that writes the ASGI response itself (a body that stalls half-way)."""
Step = Reply | Callable[[dict[str, Any], dict[str, str]], Reply] | Raw


class Endpoint:
    """ASGI app: ``scripts[model]`` is consumed one step per request (the last step repeats).

    Requests are kept with their headers; a request without a JSON body (a redirected GET) is
    answered from the script of model ``""``.
    """

    def __init__(self) -> None:
        self.scripts: dict[str, list[Step]] = {}
        self.requests: dict[str, list[tuple[dict[str, Any], dict[str, str]]]] = {}

    def script(self, model: str, *steps: Step) -> str:
        self.scripts[model], self.requests[model] = list(steps), []
        return model

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = "startup" if message["type"] == "lifespan.startup" else "shutdown"
                await send({"type": f"lifespan.{done}.complete"})
                if done == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body) if body else {}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        model = request.get("model", "")
        self.requests[model].append((request, headers))
        steps = self.scripts[model]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if not isinstance(step, tuple) and asyncio.iscoroutinefunction(step):
            await step(send)
            return
        status, extra, payload = step(request, headers) if callable(step) else step  # type: ignore[operator]
        raw_headers = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


def chat(content: str, *, usage: Any = None, finish_reason: str = "stop") -> Reply:
    body: dict[str, Any] = {
        "id": "c1", "object": "chat.completion", "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }
    if usage != "absent":
        body["usage"] = {"prompt_tokens": 100, "completion_tokens": 20} if usage is None else usage
    return 200, {}, orjson.dumps(body)


GOOD_JSON = orjson.dumps({d: {"explanation": "fine", "score": 4} for d in DIMENSION_NAMES}).decode()
GOOD = chat(GOOD_JSON)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    app = Endpoint()
    with ThreadedServer(app) as server:
        yield app, server.url


def judge(url: str, model: str, rubric: str = "default", **kw: Any) -> LLMJudge:
    settings = JudgeSettings(url=url, model=model, input_price_per_1m=1.0, output_price_per_1m=4.0, **kw)
    return LLMJudge.from_settings(settings, rubric=rubric, backoff_s=0.01)


async def client_error(url: str, model: str) -> TransientError:
    """The TransientError one raw call to ``model`` raises (what the retry policy is handed)."""
    client = JudgeClient(url, None, AiohttpTransport(), timeout_s=5.0)
    try:
        with pytest.raises(TransientError) as err:
            await client.chat({"model": model, "messages": []})
    finally:
        await client.transport.aclose()
    return err.value


# --- rate limits ---------------------------------------------------------------------------------------


async def test_retry_after_as_an_http_date_or_in_ms_is_read(endpoint) -> None:
    """Was: ``Retry-After: <HTTP-date>`` (RFC 9110's other form, sent by CDNs and some proxies) failed
    ``float()`` and was dropped: the judge came back after its own 10 ms backoff and was refused
    again, burning its retries. ``retry-after-ms`` (Azure OpenAI) was ignored too."""
    app, url = endpoint
    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    app.script("date", (429, {"retry-after": soon}, b'{"error": {"message": "slow down"}}'))
    assert 25.0 <= (await client_error(url, "date")).retry_after <= 31.0  # type: ignore[operator]
    app.script("ms", (429, {"retry-after-ms": "1500"}, b"{}"))
    assert (await client_error(url, "ms")).retry_after == pytest.approx(1.5)
    app.script("past", (503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"{}"))
    assert (await client_error(url, "past")).retry_after == 0.0
    app.script("junk", (429, {"retry-after": "soon-ish"}, b"{}"))
    assert (await client_error(url, "junk")).retry_after is None


async def test_an_hour_long_retry_after_is_capped(endpoint) -> None:
    app, url = endpoint
    later = format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)
    for model, headers in (("hour-date", {"retry-after": later}), ("hour-num", {"retry-after": "3600"}),
                           ("hour-inf", {"retry-after": "1e400"})):
        app.script(model, (429, headers, b"{}"))
        retry_after = (await client_error(url, model)).retry_after
        async with judge(url, model) as j:
            assert j._backoff(0, retry_after) <= MAX_BACKOFF_S + j.backoff_s / 2


async def test_an_openai_error_object_in_a_200_keeps_its_kind_and_rate_limit_label(endpoint) -> None:
    """Was: a 200 whose body is ``{"error": {...}}`` (proxies that report upstream errors so) failed as
    ``server_error`` "not a chat completion" and a rate limit was not labelled ``rate_limited``. The
    error's type and code are kept; its message is not (it may quote the request, and the CLIs
    print these errors)."""
    app, url = endpoint
    error = {"error": {"message": "Rate limit reached for gpt-4o-mini on requests per min", "type": "requests",
                       "code": "rate_limit_exceeded"}}
    app.script("err200", (200, {}, orjson.dumps(error)))
    async with judge(url, "err200", max_retries=1) as j:
        with pytest.raises(JudgeError) as err:
            await j.score("What is 2+2?", "4")
    assert err.value.reason == "rate_limited" and err.value.attempts == 2
    assert "requests / rate_limit_exceeded" in str(err.value) and "Rate limit reached" not in str(err.value)


# --- usage and cost ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        pytest.param({"prompt_tokens": 100, "total_tokens": 130}, (100, 30), id="no-completion"),
        pytest.param({"completion_tokens": 30, "total_tokens": 130}, (100, 30), id="no-prompt"),
        pytest.param({"prompt_tokens": 100, "completion_tokens": None, "total_tokens": 130}, (100, 30), id="null"),
    ],
)
async def test_a_missing_part_of_usage_is_total_minus_the_other(endpoint, usage: dict[str, Any],
                                                                tokens: tuple[int, int]) -> None:
    """Was: usage with only ``prompt_tokens`` and ``total_tokens`` read the completion as 0 tokens,
    so the judge's output (4x the input price here) was costed at nothing."""
    app, url = endpoint
    model = app.script(f"usage-{tokens}-{sorted(usage)}", chat(GOOD_JSON, usage=usage))
    async with judge(url, model) as j:
        v = await j.score("What is 2+2?", "4")
    assert (v.prompt_tokens, v.completion_tokens) == tokens
    assert v.cost == pytest.approx((100 * 1.0 + 30 * 4.0) / 1e6)


async def test_a_judge_that_reports_no_usage_is_warned_about_not_costed_silently(
    endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: no ``usage`` at all gave judge_cost 0 with no sign anywhere that tokens had been spent.
    Cost is still not invented, but the undercount is logged, once per judge."""
    app, url = endpoint
    app.script("no-usage", chat(GOOD_JSON, usage="absent"))
    with caplog.at_level(logging.WARNING, logger="infersight.evaluation.llm_judge"):
        async with judge(url, "no-usage") as j:
            first = await j.score("What is 2+2?", "4")
            await j.score("What is 3+3?", "6")
    assert first.cost == 0.0 and first.total_tokens == 0
    warnings = [r for r in caplog.records if "no token usage" in r.getMessage()]
    assert len(warnings) == 1 and "no-usage" in warnings[0].getMessage()


async def test_a_reply_cut_at_max_tokens_is_reasked_and_each_attempt_is_counted(endpoint) -> None:
    app, url = endpoint
    cut = chat(GOOD_JSON[:150], usage={"prompt_tokens": 100, "completion_tokens": 400}, finish_reason="length")
    app.script("cut", cut, GOOD)
    async with judge(url, "cut", max_tokens=400) as j:
        v = await j.score("What is 2+2?", "4")
    assert v.attempts == 2 and (v.prompt_tokens, v.completion_tokens) == (200, 420)
    assert v.cost == pytest.approx((200 * 1.0 + 420 * 4.0) / 1e6)
    corrective = app.requests["cut"][1][0]["messages"][-1]["content"]
    assert "cut at max_tokens=400" in corrective


# --- timeouts ------------------------------------------------------------------------------------------


async def test_a_body_that_stalls_half_way_is_a_timeout_retried_then_an_error(endpoint) -> None:
    app, url = endpoint

    async def stall(send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"5000")]})
        await send({"type": "http.response.body", "body": GOOD_JSON.encode()[:100], "more_body": True})
        await asyncio.sleep(1.0)  # past the judge's timeout; the client has hung up by then

    app.script("stall", stall)
    async with judge(url, "stall", timeout_s=0.2, max_retries=1) as j:
        with pytest.raises(JudgeError) as err:
            await j.score("What is 2+2?", "4")
    e = err.value
    assert e.reason == "timeout" and e.attempts == 2 and len(app.requests["stall"]) == 2
    assert (e.prompt_tokens, e.completion_tokens, e.cost) == (0, 0, 0.0)


# --- the key -------------------------------------------------------------------------------------------


async def test_a_key_echoed_in_an_error_body_is_not_in_the_error(endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: a 401 body that echoes the Authorization header (some proxies do) went verbatim into
    JudgeError's message, and from there into logs and ``_error`` rows."""
    app, url = endpoint
    key = "sk-judge-secret-0123456789"
    monkeypatch.setenv("AUDIT_JUDGE_KEY", key)

    def echo(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 401, {}, orjson.dumps({"error": {"message": f"Invalid key: {headers['authorization']}"}})

    def echo_200(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        return 200, {}, orjson.dumps({"error": {"message": f"key {headers['authorization']} over quota"}})

    for model, step in (("echo", echo), ("echo-200", echo_200)):
        app.script(model, step)
        async with judge(url, model, api_key_env="AUDIT_JUDGE_KEY", max_retries=0) as j:
            with pytest.raises(JudgeError) as err:
                await j.score("What is 2+2?", "4")
        assert app.requests[model][0][1]["authorization"] == f"Bearer {key}"  # it was sent, to the judge
        assert key not in str(err.value) and "Invalid key" not in str(err.value)


async def test_the_key_does_not_follow_a_redirect_to_another_origin(endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    app, url = endpoint
    other = Endpoint()
    other.script("", (200, {}, b"{}"))
    other.script("redirected", GOOD)
    monkeypatch.setenv("AUDIT_JUDGE_KEY", "sk-judge-secret-redirect")
    with ThreadedServer(other) as elsewhere:
        app.script("redirected", (307, {"location": elsewhere.url + "/chat/completions"}, b""))
        async with judge(url, "redirected", api_key_env="AUDIT_JUDGE_KEY") as j:
            v = await j.score("What is 2+2?", "4")
    assert v.attempts == 1 and app.requests["redirected"][0][1]["authorization"].endswith("redirect")
    (_, forwarded), = other.requests["redirected"]
    assert "authorization" not in forwarded and forwarded["x-infersight-request-type"] == "eval"


# --- JSON mode refused ---------------------------------------------------------------------------------


async def test_json_mode_refused_falls_back_for_every_call_in_flight_even_with_no_retries(endpoint) -> None:
    """Was: the fallback without ``response_format`` used up a retry, so with ``max_retries: 0`` the
    first call failed; and calls already in flight when the first rejection cleared the JSON-mode
    flag raised ``http_error`` instead of falling back: a flush's worth of lost evaluations."""
    app, url = endpoint

    def no_json_mode(request: dict[str, Any], headers: dict[str, str]) -> Reply:
        if "response_format" in request:
            return 400, {}, b'{"error": {"message": "response_format is not supported", "param": "response_format"}}'
        return GOOD

    app.script("no-json-mode", no_json_mode)
    async with judge(url, "no-json-mode", max_retries=0, concurrency=4) as j:
        verdicts = await asyncio.gather(*(j.score(f"What is {i}+{i}?", str(2 * i)) for i in range(4)))
    assert [v.scores["relevance"] for v in verdicts] == [4.0] * 4
    assert all(v.attempts == 2 and v.prompt_tokens == 100 for v in verdicts)
    sent = [r for r, _ in app.requests["no-json-mode"]]
    assert len(sent) == 8 and sum("response_format" in r for r in sent) == 4


# --- our own gateway's error shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "requests", "reason"),
    [
        pytest.param(gateway_errors.upstream_unreachable("openai"), 2, None, id="502-unreachable"),
        pytest.param(gateway_errors.upstream_timeout("openai"), 2, None, id="504-timeout"),
        pytest.param(gateway_errors.unknown_key(), 1, "http_error", id="401-key"),
        pytest.param(gateway_errors.unknown_model("gpt-4o-mini"), 1, "http_error", id="404-model"),
        pytest.param(gateway_errors.body_too_large(1 << 20), 1, "http_error", id="413-too-large"),
    ],
)
async def test_the_gateways_own_errors_are_retried_or_final(endpoint, error: gateway_errors.GatewayError,
                                                           requests: int, reason: str | None) -> None:
    app, url = endpoint
    model = app.script(f"gw-{error.status}-{error.code}", (error.status, {}, error.body()), GOOD)
    async with judge(url, model) as j:
        if reason is None:
            v = await j.score("What is 2+2?", "4")
            assert v.attempts == 2 and v.prompt_tokens == 100
        else:
            with pytest.raises(JudgeError) as err:
                await j.score("What is 2+2?", "4")
            assert err.value.reason == reason and error.code in str(err.value)  # its code, not its message
    assert len(app.requests[model]) == requests


# --- the prompt ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rubric", ["default", "pairwise"])
async def test_the_rubrics_few_shot_examples_are_sent_before_the_task(endpoint, rubric: str) -> None:
    app, url = endpoint
    loaded = load_rubric(rubric)
    reply = chat('{"explanation": "same", "winner": "A"}') if rubric == "pairwise" else GOOD
    model = app.script(f"shots-{rubric}", reply)
    async with judge(url, model, rubric=rubric) as j:
        if rubric == "pairwise":
            p = await j.compare("What is 2+2?", "4", "5")
            assert (p.winner, p.consistent, p.prompt_tokens) == ("tie", False, 200)  # always "A" is no win
        else:
            await j.score("What is 2+2?", "4")
    messages = app.requests[model][0][0]["messages"]
    assert loaded.examples and len(messages) == 2 + 2 * len(loaded.examples)
    assert [m["role"] for m in messages] == ["system", *["user", "assistant"] * len(loaded.examples), "user"]
    for ex, (question, answer) in zip(loaded.examples, zip(messages[1:-1:2], messages[2:-1:2], strict=True),
                                      strict=True):
        assert ex.question in question["content"]
        shown = orjson.loads(answer["content"])
        assert (shown["winner"] == ex.winner) if rubric == "pairwise" else set(shown) == set(loaded.dimension_names)
    assert "What is 2+2?" in messages[-1]["content"]
