"""Judge call pacing: the Pacer's schedule, and LLMJudge's calls over real HTTP spaced by it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from infersight.config import ConfigError, load_settings
from infersight.evaluation.judge_client import AiohttpTransport
from infersight.evaluation.llm_judge import LLMJudge
from infersight.evaluation.pacing import Pacer
from infersight.evaluation.settings import JudgeSettings
from infersight.sim.judge import sim_judge_profile
from infersight.sim.questions import QUESTION_BANK
from infersight.sim.server import SimServer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_a_burst_of_callers_is_spread_one_interval_apart() -> None:
    t = FakeTime()
    pacer = Pacer(4.0, clock=t.clock, sleep=t.sleep)
    waits = [await pacer.wait() for _ in range(5)]  # five callers in the same instant
    assert waits == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert t.slept == pytest.approx([0.25, 0.5, 0.75, 1.0])


async def test_an_idle_pacer_lets_the_next_call_start_at_once_and_gives_no_burst_credit() -> None:
    t = FakeTime()
    pacer = Pacer(2.0, clock=t.clock, sleep=t.sleep)
    assert await pacer.wait() == 0.0
    t.now += 10.0  # idle for 20 intervals
    assert await pacer.wait() == 0.0
    assert await pacer.wait() == pytest.approx(0.5)  # idle time is not saved up for a burst


async def test_no_rate_means_no_pacing() -> None:
    t = FakeTime()
    pacer = Pacer(None, clock=t.clock, sleep=t.sleep)
    assert [await pacer.wait() for _ in range(3)] == [0.0, 0.0, 0.0] and t.slept == []
    with pytest.raises(ValueError):
        Pacer(0.0)


def test_the_setting_is_validated_with_its_key_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "infersight.yaml"
    cfg.write_text("evaluation:\n  judge: {url: 'http://127.0.0.1:9/v1', max_calls_per_s: 0}\n")
    with pytest.raises(ConfigError, match="max_calls_per_s"):
        load_settings(cfg)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, profiles={"sim-judge": sim_judge_profile(2.0)}) as server:
        yield server


class RecordingTransport(AiohttpTransport):
    """The real HTTP transport, noting when each call leaves."""

    def __init__(self) -> None:
        super().__init__(pool_size=8)
        self.started: list[float] = []

    async def post(self, url, headers, body, timeout_s):  # type: ignore[no-untyped-def]
        self.started.append(time.monotonic())
        return await super().post(url, headers, body, timeout_s)


async def _score_all(judge: LLMJudge, n: int) -> None:
    qs = QUESTION_BANK[:n]
    verdicts = await asyncio.gather(*(judge.score(q.question, q.correct) for q in qs))
    assert all(v.scores for v in verdicts)


async def test_judge_calls_leave_no_closer_than_the_configured_rate(sim: SimServer) -> None:
    transport = RecordingTransport()
    settings = JudgeSettings(url=sim.url, model="sim-judge", concurrency=8, max_calls_per_s=20.0)
    async with LLMJudge.from_settings(settings, transport=transport) as judge:
        await _score_all(judge, 6)  # six tasks handed over at once, as a flush does
    started = sorted(transport.started)
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert len(started) == 6
    # 1/20 s apart on the wire; the margins absorb a late first call on a busy host, never an early one
    assert started[-1] - started[0] >= 5 * 0.05 - 0.05
    assert min(gaps) >= 0.05 / 2


async def test_without_a_rate_the_same_calls_leave_together(sim: SimServer) -> None:
    transport = RecordingTransport()
    settings = JudgeSettings(url=sim.url, model="sim-judge", concurrency=8)
    async with LLMJudge.from_settings(settings, transport=transport) as judge:
        await _score_all(judge, 6)
    assert len(transport.started) == 6
    assert transport.started[-1] - transport.started[0] < 0.25  # paced at 20/s they would span 0.25 s
