"""Runs the demo: simulator + gateway in this process, traffic, and a refreshing table."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live

from infersight.demo import traffic as traffic_module
from infersight.demo.live import LiveAggregator
from infersight.demo.settings import DEMO_MODELS, DEMO_TENANTS, demo_settings
from infersight.demo.traffic import TrafficGenerator, TrafficProfile
from infersight.logs import configure_logging
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer


class StopRequests:
    """Ctrl-C and SIGTERM for the whole run, startup and shutdown included, not only while traffic flows.

    The first one asks the demo to stop; later ones (a second Ctrl-C while it drains, a supervisor's
    repeated SIGTERM) are ignored, so the store is still flushed, the eval process stopped and the final
    table printed, instead of a KeyboardInterrupt or a kill halfway through the shutdown.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._wake: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def on_request(self, wake: Callable[[], None] | None) -> None:
        """``wake`` is called (in the main thread) when a stop is asked for; None to forget it."""
        self._wake = wake
        if wake is not None and self.requested.is_set():
            wake()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()
        if self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._wake()

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_demo(duration_s: float | None, data_dir: str, port: int, seed: int, rps: float) -> int:
    """Returns 0 once the duration has passed or Ctrl-C/SIGTERM was received, after a clean stop; 1 when
    the port is taken."""
    configure_logging("warning")
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    since = datetime.now(timezone.utc)  # the journals may replay older records: not this run's
    with StopRequests() as stops:
        sim = SimServer(seed=seed).start()
        try:
            return _run(sim, duration_s, data_dir, port, seed, rps, since, console, stops)
        finally:
            sim.stop()


def _say(console: Console, text: str) -> None:
    """One plain line: no markup (paths may hold brackets), soft-wrapped so commands copy whole."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _run(sim: SimServer, duration_s: float | None, data_dir: str, port: int, seed: int, rps: float,
         since: datetime, console: Console, stops: StopRequests) -> int:
    settings = demo_settings(sim.url, data_dir, port)
    aggregator = LiveAggregator(since, content_off=[t["id"] for t in DEMO_TENANTS if t.get("content") == "none"])
    app = build_gateway(settings, extra_exporters=[aggregator], eval_observers=[aggregator.results],
                        telemetry_observers=[aggregator.telemetry])
    gateway = ThreadedServer(app, port=port)
    try:
        gateway.start()
    except (OSError, RuntimeError) as exc:
        # Only a bind error is about the port; a start that failed or timed out is not cured by another.
        message = (f"could not listen on 127.0.0.1:{port} ({exc}); try --port N" if isinstance(exc, OSError)
                   else f"the gateway did not start ({exc})")
        Console(stderr=True).print(f"infersight demo: {message}", style="red", markup=False, highlight=False,
                                   soft_wrap=True)
        return 1
    store = f"{data_dir}/infersight.duckdb"
    _say(console, f"gateway http://127.0.0.1:{port}/v1 (try: curl -H 'Authorization: Bearer sk-acme-demo' "
                  f"http://127.0.0.1:{port}/v1/models) - simulator {sim.url} - store {store}")
    _say(console, f"stats while it runs: curl -H 'Authorization: Bearer sk-admin-demo' "
                  f"'http://127.0.0.1:{port}/api/v1/stats?group_by=tenant,model&window=15m'")
    _say(console, f"the worst judged answers: curl -H 'Authorization: Bearer sk-admin-demo' "
                  f"'http://127.0.0.1:{port}/api/v1/evaluations?evaluator=llm_judge&max_score=2'")
    profile = TrafficProfile(tenants=DEMO_TENANTS, models=DEMO_MODELS, rps=rps, seed=seed)
    try:
        asyncio.run(_drive(gateway.url, profile, aggregator, duration_s, console, stops))
    finally:
        gateway.stop()  # flushes the bus, the eval and telemetry sinks into the store
    console.print(aggregator.table("infersight demo: final", final=True))
    cut = (f"; {profile.cut_off} cut off by the stop, recorded as client disconnects"
           if profile.cut_off else "")
    _say(console, f"sent {profile.sent} requests ({profile.failed} answered with an error, by design{cut}); "
                  f"every request is stored in {store}")
    return 0


PROGRESS_S = 10.0  # piped output gets a progress line this often: the live table only draws on a terminal


async def _drive(url: str, profile: TrafficProfile, aggregator: LiveAggregator, duration_s: float | None,
                 console: Console, stops: StopRequests) -> None:
    """Traffic and the live table until the deadline or a stop request, then the drain, still on screen."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stops.on_request(lambda: loop.call_soon_threadsafe(stop.set))
    traffic = asyncio.create_task(TrafficGenerator(url, profile).run(stop))
    started = time.monotonic()
    deadline = started + duration_s if duration_s else None
    next_progress = started + PROGRESS_S
    try:
        with Live(aggregator.table(), console=console, refresh_per_second=2, transient=True) as live:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                live.update(aggregator.table())
                now = time.monotonic()
                if not console.is_terminal and now >= next_progress:  # piped (a CI log): no live table
                    next_progress += PROGRESS_S
                    _say(live.console, f"{now - started:.0f} s: sent {profile.sent} requests, {profile.failed} "
                                       f"answered with an error, {profile.in_flight} in flight")
                if deadline is not None and now >= deadline:
                    stop.set()
            _say(live.console, f"stopping: waiting up to {traffic_module.DRAIN_S:.0f} s for {profile.in_flight} "
                               "answers in flight, then flushing the store (further Ctrl-C is ignored)")
            while not traffic.done():
                await asyncio.wait({traffic}, timeout=0.5)
                live.update(aggregator.table())
    finally:
        stops.on_request(None)
    await traffic
