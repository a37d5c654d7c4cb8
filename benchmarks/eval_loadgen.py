"""Open-loop load generator for the evaluation benchmark; runs as its own process.

Requests are *sent on a fixed schedule* (``--rate`` per second: one every 1/rate s, or Poisson
arrivals with ``--arrivals poisson``) whatever the responses do, so a slow target faces the same
offered load as a fast one and queues up instead of being offered less (no coordinated omission).
Prompts cycle through the simulator's question bank (``infersight.sim.questions``), so the
simulated LLM judge can score the answers.

Timeline: ``--warmup`` seconds of load, then ``MEASURE_START`` on stdout, ``--duration`` seconds
of load, ``MEASURE_END``; then no new requests, and the ones in flight get ``--drain`` seconds to
finish. A request counts when it was *scheduled* inside the window. Per request, as in
``loadgen.py`` (whose request code this reuses): TTFT = send -> first SSE chunk with non-empty
``delta.content``; total = send -> ``[DONE]``. Also recorded: how late each send was against its
schedule (the client's own saturation) and the most requests in flight at once.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import SAMPLES, one_request, run_to_file  # noqa: E402


def bank_bodies(model: str, max_tokens: int, ignore_eos: bool) -> list[bytes]:
    from infersight.sim.questions import QUESTION_BANK

    return [orjson.dumps({
        "model": model,
        "messages": [{"role": "user", "content": q.question}],
        "stream": True,
        "max_tokens": max_tokens,
        "ignore_eos": ignore_eos,
    }) for q in QUESTION_BANK]


async def open_loop(args: argparse.Namespace, session: aiohttp.ClientSession, bodies: list[bytes],
                    headers: dict[str, str]) -> dict[str, object]:
    rng = random.Random(args.seed)
    ttft: list[float] = []
    total: list[float] = []
    late: list[float] = []
    errors: dict[str, int] = {}
    in_flight = 0
    max_in_flight = 0
    sent_in_window = 0
    tasks: set[asyncio.Task[None]] = set()

    async def fire(body: bytes, scheduled: float, counted: bool) -> None:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        if counted:
            late.append(time.perf_counter() - scheduled)
        try:
            result = await one_request(session, args.url, body, headers)
        finally:
            in_flight -= 1
        if not counted:
            return
        if isinstance(result, str):
            errors[result] = errors.get(result, 0) + 1
        else:
            ttft.append(result[0])
            total.append(result[1])

    t0 = time.perf_counter()
    start, end = t0 + args.warmup, t0 + args.warmup + args.duration
    next_at, i = t0, 0
    measuring = False
    while next_at < end:
        now = time.perf_counter()
        if not measuring and now >= start:
            measuring = True
            print("MEASURE_START", flush=True)
        if next_at > now:
            await asyncio.sleep(next_at - now)
            continue
        counted = next_at >= start
        sent_in_window += counted
        task = asyncio.create_task(fire(bodies[i % len(bodies)], next_at, counted))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        gap = rng.expovariate(args.rate) if args.arrivals == "poisson" else 1.0 / args.rate
        next_at += gap
        if next_at <= time.perf_counter():
            await asyncio.sleep(0)  # behind schedule: catch up, but let the requests run too
    now = time.perf_counter()
    if now < end:
        await asyncio.sleep(end - now)
    if not measuring:
        print("MEASURE_START", flush=True)
    print("MEASURE_END", flush=True)
    in_flight_at_end = in_flight
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=args.drain)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            errors["not_finished_in_drain"] = errors.get("not_finished_in_drain", 0) + len(pending)
    return {"ttft_s": ttft, "total_s": total, "errors": errors, "window_s": args.duration,
            "rate": args.rate, "arrivals": args.arrivals, "sent_in_window": sent_in_window,
            "sent_total": i, "send_late_s": late, "max_in_flight": max_in_flight,
            "in_flight_at_end": in_flight_at_end, "concurrency": max_in_flight, "error_samples": SAMPLES}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    bodies = bank_bodies(args.model, args.max_tokens, not args.no_ignore_eos)
    headers = {"content-type": "application/json"}
    if args.key:
        headers["authorization"] = f"Bearer {args.key}"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        return await open_loop(args, session, bodies, headers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="full chat completions URL")
    p.add_argument("--key", default="", help="bearer token")
    p.add_argument("--model", default="sim-bench")
    p.add_argument("--rate", type=float, required=True, help="requests per second offered")
    p.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform")
    p.add_argument("--seed", type=int, default=1, help="seed of the Poisson arrivals")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    p.add_argument("--drain", type=float, default=15.0, help="seconds to let in-flight requests finish")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--no-ignore-eos", action="store_true", help="let the simulator stop at its natural length")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", required=True, help="JSON results file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_to_file(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
