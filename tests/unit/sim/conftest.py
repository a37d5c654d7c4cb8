"""Shared fixtures: fast profiles so the sim suite stays well under 20 s."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from infersight.sim.profiles import ModelProfile
from infersight.sim.server import SimServer

FAST = ModelProfile(
    ttft_base_ms=5.0, prefill_ms_per_token=0.0, decode_ms_per_token=1.0, jitter_ms=0.5,
    max_num_seqs=16, p_correct=0.5, typical_output_tokens=20,
)
PREFILL_HEAVY = ModelProfile(  # 0.5 ms per uncached prompt token: cache hits are visible
    ttft_base_ms=5.0, prefill_ms_per_token=0.5, decode_ms_per_token=1.0, typical_output_tokens=5,
)
ONE_SLOT = ModelProfile(  # one running sequence; the rest queue
    ttft_base_ms=5.0, prefill_ms_per_token=0.0, decode_ms_per_token=3.0, max_num_seqs=1,
    typical_output_tokens=20,
)
SLOW = ModelProfile(  # long enough to scrape /metrics mid-flight
    ttft_base_ms=5.0, prefill_ms_per_token=0.0, decode_ms_per_token=15.0, max_num_seqs=3,
    typical_output_tokens=40,
)
THINKER = ModelProfile(
    ttft_base_ms=5.0, prefill_ms_per_token=0.0, decode_ms_per_token=1.0,
    typical_output_tokens=15, typical_reasoning_tokens=12,
)
TEST_PROFILES: dict[str, ModelProfile] = {
    "fast": FAST, "prefill": PREFILL_HEAVY, "one-slot": ONE_SLOT, "slow": SLOW,
    "thinker": THINKER,
}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(seed=7, profiles=TEST_PROFILES) as server:
        yield server


@pytest.fixture
def client(sim: SimServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url, api_key="sim", max_retries=0, timeout=10) as c:
        yield c



@pytest.fixture
def make_sim() -> Iterator[Callable[[int], SimServer]]:
    """Factory for more (unstarted) sims with the test profiles; started ones are stopped after."""
    made: list[SimServer] = []

    def make(seed: int) -> SimServer:
        made.append(SimServer(seed=seed, profiles=TEST_PROFILES))
        return made[-1]

    yield make
    for server in made:
        server.stop()
