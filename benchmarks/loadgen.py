"""Load generator for the gateway benchmark; runs as its own process.

Two modes, both streaming ``/v1/chat/completions`` through one pooled aiohttp session:

- ``closed`` (default): a closed loop of ``--concurrency`` workers. Each worker sends a request,
  reads the stream to ``[DONE]``, and sends the next. After ``--warmup`` seconds it prints
  ``MEASURE_START`` on stdout, after ``--duration`` more it prints ``MEASURE_END``; only requests
  that *finish* inside that window are counted. Requests still in flight at the end are allowed
  to finish (not counted) so the next cell does not start with a disconnect storm.
- ``hold``: opens ``--concurrency`` streams at once, reads each to the end, prints
  ``ALL_OPEN`` when every stream has its response headers and ``ALL_DONE`` when all finished.

Per request the client measures TTFT (send -> first SSE chunk whose ``delta.content`` is
non-empty) and total latency (send -> ``[DONE]``). Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

DONE = b"data: [DONE]"
SAMPLES: list[str] = []  # tails of a few truncated streams, for the report


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _has_content(line: bytes) -> bool:
    """True for an SSE data line whose first choice carries non-empty delta content."""
    if not line.startswith(b"data:") or b"content" not in line:
        return False
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return False
    try:
        obj = orjson.loads(payload)
        choices = obj.get("choices") or []
        return bool(choices and (choices[0].get("delta") or {}).get("content"))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return False


class Stats:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.errors: dict[str, int] = {}
        self.measuring = False
        self.window_end = float("inf")

    def error(self, kind: str) -> None:
        if self.measuring:
            self.errors[kind] = self.errors.get(kind, 0) + 1


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                      on_open: Callable[[], None] | None = None) -> tuple[float, float] | str:
    """One streamed request; (ttft_s, total_s) or an error kind."""
    t0 = time.perf_counter()
    ttft = None
    tail = b""
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                return f"http_{resp.status}"
            if on_open is not None:
                on_open()
            buf = b""
            async for chunk in resp.content.iter_any():
                if ttft is None:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for i, line in enumerate(lines):
                        if _has_content(line):
                            ttft = time.perf_counter() - t0
                            # the rest of this read may already hold the end of the stream
                            tail = b"\n".join([*lines[i + 1:], buf])[-400:]
                            break
                    continue
                tail = (tail + chunk)[-400:]
            if ttft is None:
                return "no_content"
            if DONE not in tail:
                if len(SAMPLES) < 5:
                    SAMPLES.append(tail.decode("utf-8", "replace"))
                return "no_done"
            return ttft, time.perf_counter() - t0
    except asyncio.CancelledError:
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return type(exc).__name__


async def closed_loop(args: argparse.Namespace, session: aiohttp.ClientSession, body: bytes,
                      headers: dict[str, str]) -> Stats:
    stats = Stats()
    stop = False
    done = 0  # completions since the start, warm-up included

    async def worker() -> None:
        nonlocal done
        while not stop:
            result = await one_request(session, args.url, body, headers)
            done += 1
            now = time.perf_counter()
            if not stats.measuring or now > stats.window_end:
                continue
            if isinstance(result, str):
                stats.error(result)
            else:
                stats.ttft.append(result[0])
                stats.total.append(result[1])

    async def wait_until(min_s: float, max_s: float, enough: Callable[[], bool]) -> None:
        t0 = time.perf_counter()
        await asyncio.sleep(min_s)
        while not enough() and time.perf_counter() - t0 < max_s:
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    # Warm-up lasts --warmup seconds and, for slow targets, until every worker finished a request
    # (so the window starts in steady state, not in the first synchronised wave).
    await wait_until(args.warmup, args.warmup_max, lambda: done >= args.concurrency)
    stats.measuring = True
    start = time.perf_counter()
    print("MEASURE_START", flush=True)
    await wait_until(args.duration, args.max_window, lambda: len(stats.total) >= args.min_requests)
    stats.window_end = time.perf_counter()
    print("MEASURE_END", flush=True)
    stop = True
    stats.window_s = stats.window_end - start  # type: ignore[attr-defined]
    _, pending = await asyncio.wait(tasks, timeout=args.drain)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return stats


async def hold(args: argparse.Namespace, session: aiohttp.ClientSession, body: bytes,
               headers: dict[str, str]) -> Stats:
    stats = Stats()
    stats.measuring = True
    opened = 0

    def on_open() -> None:
        nonlocal opened
        opened += 1
        if opened == args.concurrency:
            print("ALL_OPEN", flush=True)

    results = await asyncio.gather(*(one_request(session, args.url, body, headers, on_open)
                                     for _ in range(args.concurrency)))
    for r in results:
        if isinstance(r, str):
            stats.error(r)
        else:
            stats.ttft.append(r[0])
            stats.total.append(r[1])
    return stats


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    payload = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Say something about the planets."}],
        "stream": True,
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
    }
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json"}
    if args.key:
        headers["authorization"] = f"Bearer {args.key}"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        if args.mode == "closed":
            stats = await closed_loop(args, session, body, headers)
            window = stats.window_s  # type: ignore[attr-defined]
        else:
            stats = await hold(args, session, body, headers)
            window = time.perf_counter() - t0
            print("ALL_DONE", flush=True)
    return {"ttft_s": stats.ttft, "total_s": stats.total, "errors": stats.errors, "window_s": window,
            "concurrency": args.concurrency, "error_samples": SAMPLES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="full chat completions URL")
    p.add_argument("--key", default="", help="bearer token")
    p.add_argument("--model", default="sim-bench")
    p.add_argument("--mode", choices=("closed", "hold"), default="closed")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--warmup-max", type=float, default=60.0, help="cap on the adaptive warm-up")
    p.add_argument("--duration", type=float, default=8.0, help="minimum measured seconds")
    p.add_argument("--min-requests", type=int, default=0, help="extend the window until this many finished")
    p.add_argument("--max-window", type=float, default=30.0, help="cap on the extended window")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to let in-flight requests finish")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", required=True, help="JSON results file")
    return p.parse_args(argv)


def run_to_file(main_async_fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a load generator's coroutine on uvloop (when installed) and write its result to ``args.out``."""
    raise_fd_limit()
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(main_async_fn(args))
    with open(args.out, "wb") as f:
        f.write(orjson.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_to_file(main_async, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
