"""Synthetic multi-tenant traffic: Poisson arrivals, weighted tenants, mixed models and use cases.

Questions come from the simulator's bank, so a later quality check can know the right answer. A small
share of requests asks the simulator for a fault (429, 500, disconnect) so errors show up too, and
some ask for token logprobs, so the gateway's low-confidence sampling has something to read.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from infersight.sim.questions import QUESTION_BANK

DRAIN_S = 10.0  # once stopped, how long answers still in flight may take before the demo hangs up


@dataclass
class TrafficProfile:
    tenants: list[dict[str, Any]]  # id, api_keys, use_cases, weight
    models: list[str]
    rps: float = 20.0
    stream_share: float = 0.7
    fault_share: float = 0.03
    logprobs_share: float = 0.3  # asks for token logprobs: wrong answers then sample as low_confidence
    max_in_flight: int = 200
    seed: int = 7
    faults: tuple[str, ...] = ("429", "500", "disconnect")
    sent: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)  # answered with an error (the faults asked for)
    cut_off: int = field(default=0, init=False)  # hung up on by the stop: the gateway records a disconnect
    in_flight: int = field(default=0, init=False)


class TrafficGenerator:
    def __init__(self, base_url: str, profile: TrafficProfile) -> None:
        self.base_url = base_url.rstrip("/")
        self.profile = profile
        self.rng = random.Random(profile.seed)
        self._weights = [t.get("weight", 1) for t in profile.tenants]

    def _request(self) -> tuple[dict[str, str], dict[str, Any], str]:
        p, rng = self.profile, self.rng
        tenant = rng.choices(p.tenants, weights=self._weights)[0]
        model = rng.choice(p.models)
        question = rng.choice(QUESTION_BANK)
        stream = rng.random() < p.stream_share
        headers = {
            "authorization": f"Bearer {tenant['api_keys'][0]}",
            "x-infersight-use-case": rng.choice(tenant["use_cases"]),
            "x-infersight-request-type": "interactive",
        }
        if rng.random() < p.fault_share:
            headers["x-sim-fault"] = rng.choice(p.faults)
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant. Answer the question."},
                {"role": "user", "content": question.question},
            ],
            "max_tokens": rng.choice([96, 256, 512]),  # some answers are cut: the truncated check sees them
            "stream": stream,
        }
        if rng.random() < p.logprobs_share:
            body.update(logprobs=True, top_logprobs=5)
        return headers, body, "/chat/completions"

    async def _one(self, session: aiohttp.ClientSession, slots: asyncio.Semaphore) -> None:
        headers, body, path = self._request()
        self.profile.in_flight += 1
        try:
            async with session.post(self.base_url + path, json=body, headers=headers) as resp:
                tail = b""
                async for chunk in resp.content.iter_any():
                    tail = (tail + chunk)[-4096:]  # an in-band error is the stream's last event
                # a stream cut mid-answer is a 200 whose last event is the gateway's in-band error
                if resp.status >= 400 or b'data: {"error"' in tail:
                    self.profile.failed += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.profile.failed += 1
        finally:
            self.profile.in_flight -= 1
            slots.release()

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set; waits for in-flight requests (bounded) before returning."""
        slots = asyncio.Semaphore(self.profile.max_in_flight)
        timeout = aiohttp.ClientTimeout(total=60)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.rng.expovariate(self.profile.rps))
                except asyncio.TimeoutError:
                    pass
                if stop.is_set():
                    break
                await slots.acquire()
                self.profile.sent += 1
                task = asyncio.create_task(self._one(session, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
                # Hang up on the rest here, counted, rather than by closing the session under them.
                self.profile.cut_off = len(pending)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
