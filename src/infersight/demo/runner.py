"""Runs the demo: simulator + gateway in this process, traffic, and a refreshing table."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from rich.console import Console
from rich.live import Live

from infersight.demo.live import LiveAggregator
from infersight.demo.settings import DEMO_MODELS, DEMO_TENANTS, demo_settings
from infersight.demo.traffic import TrafficGenerator, TrafficProfile
from infersight.logs import configure_logging
from infersight.runtime import build_gateway
from infersight.serving import ThreadedServer
from infersight.sim.server import SimServer


def run_demo(duration_s: float | None, data_dir: str, port: int, seed: int, rps: float) -> int:
    """Returns 0 once the duration has passed or Ctrl-C was pressed; everything is stopped cleanly."""
    configure_logging("warning")
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    sim = SimServer(seed=seed).start()
    settings = demo_settings(sim.url, data_dir, port)
    aggregator = LiveAggregator()
    app = build_gateway(settings, extra_exporters=[aggregator], eval_observers=[aggregator.results],
                        telemetry_observers=[aggregator.telemetry])
    gateway = ThreadedServer(app, port=port)
    try:
        gateway.start()
    except (OSError, RuntimeError) as exc:
        sim.stop()
        console.print(f"[red]infersight demo: could not listen on 127.0.0.1:{port} ({exc}); try --port N[/red]")
        return 1
    console.print(
        f"gateway http://127.0.0.1:{port}/v1 (try: curl -H 'Authorization: Bearer sk-acme-demo' "
        f"http://127.0.0.1:{port}/v1/models) - simulator {sim.url} - store {data_dir}/infersight.duckdb\n"
        f"stats while it runs: curl -H 'Authorization: Bearer sk-admin-demo' "
        f"'http://127.0.0.1:{port}/api/v1/stats?group_by=tenant,model&window=15m'"
    )
    profile = TrafficProfile(tenants=DEMO_TENANTS, models=DEMO_MODELS, rps=rps, seed=seed)
    try:
        asyncio.run(_drive(gateway.url, profile, aggregator, duration_s, console))
    except KeyboardInterrupt:
        pass
    finally:
        gateway.stop()
        sim.stop()
    console.print(aggregator.table("infersight demo: final", final=True))
    console.print(
        f"sent {profile.sent} requests ({profile.failed} answered with an error, by design); "
        f"every request is stored in {data_dir}/infersight.duckdb"
    )
    return 0


async def _drive(
    url: str, profile: TrafficProfile, aggregator: LiveAggregator, duration_s: float | None, console: Console
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    traffic = asyncio.create_task(TrafficGenerator(url, profile).run(stop))
    deadline = time.monotonic() + duration_s if duration_s else None
    with Live(aggregator.table(), console=console, refresh_per_second=2, transient=True) as live:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            live.update(aggregator.table())
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
    await traffic
